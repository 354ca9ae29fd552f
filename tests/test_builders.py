"""The DeepFashion, Market-1501 and own-folder TFDS builders on small fake manual folders."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import build
from input_pipeline import manual_data
from pidm_jax import pose


def _keypoints(seed, width, height):
  """Random (18, 2) keypoints inside a width x height frame with two missing joints."""
  rng = np.random.default_rng(seed)
  kp = np.stack([rng.uniform(0, width - 1, 18), rng.uniform(0, height - 1, 18)], 1).round(2)
  kp[[3, 16]] = -1
  return kp


def _image(seed, width, height):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _save_image(path, seed, width, height):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(_image(seed, width, height)).save(path)


def _stretched(path, height, width):
  with Image.open(path) as img:
    return np.asarray(img.convert("RGB").resize((width, height), Image.BICUBIC))


def _write_csv_annotation(path, keypoints):
  with open(path, "w") as f:
    f.write("name:keypoints_y:keypoints_x\n")
    for name, kp in keypoints.items():
      f.write(f"{name}:{json.dumps(kp[:, 1].tolist())}:{json.dumps(kp[:, 0].tolist())}\n")


def _build(name, tmp_path, manual_dir):
  b = build.build(name, str(tmp_path / "data"), str(manual_dir))
  split = lambda s: tfds.data_source(name, split=s, data_dir=str(tmp_path / "data"), download=False)
  return b, split


def _text(value):
  return value.decode() if isinstance(value, bytes) else value


# ----------------------------------------------------------------------------------------------
# DeepFashion


PIDM_NAMES = [
    f"img/WOMEN/Dresses/id_0000{p}00{p}/0{k}_{k + 1}_front.jpg" for p in (1, 2) for k in range(3)
]


def _pidm_folder(root):
  """Six images of two people; pose txt files in the 256x256 padded frame; pair lists."""
  for i, name in enumerate(PIDM_NAMES):
    _save_image(str(root / name), i, 30 + i, 44)
    kp_path = root / name.replace("img/", "pose/").replace(".jpg", ".txt")
    os.makedirs(kp_path.parent, exist_ok=True)
    np.savetxt(kp_path, _keypoints(i, 256, 256), fmt="%.2f")
  n = PIDM_NAMES
  (root / "train_pairs.txt").write_text(f"{n[0]},{n[1]},{n[2]}\n{n[3]},{n[4]}\n\n")
  (root / "test_pairs.txt").write_text(f"{n[5]},{n[3]}\n")


def test_deep_fashion_pidm_layout(tmp_path):
  manual = tmp_path / "manual"
  _pidm_folder(manual)
  _, split = _build("deep_fashion/res256", tmp_path, manual)
  train, test = split("train"), split("test")
  # One record per (target, source) listed, in file order; ids with .png as the official keys.
  png = lambda i: PIDM_NAMES[i].replace(".jpg", ".png")
  got = [
      (_text(r["source_id"]), _text(r["target_id"]), _text(r["person_id"]))
      for r in (train[i] for i in range(len(train)))
  ]
  assert got == [
      (png(1), png(0), "id_00001001"),
      (png(2), png(0), "id_00001001"),
      (png(4), png(3), "id_00002002"),
  ]
  assert len(test) == 1 and _text(test[0]["source_id"]) == png(3)
  record = train[2]
  assert record["source_image"].shape == (256, 256, 3) and record["source_image"].dtype == np.uint8
  np.testing.assert_array_equal(
      record["source_image"], _stretched(manual / PIDM_NAMES[4], 256, 256)
  )
  np.testing.assert_array_equal(
      record["target_image"], _stretched(manual / PIDM_NAMES[3], 256, 256)
  )
  # x' = (x - 40) * 256 / 176, y' = y; missing joints stay -1.
  expected = pose.deepfashion_to_frame(_keypoints(3, 256, 256), 256, 256).astype(np.float32)
  np.testing.assert_allclose(record["target_keypoints"], expected, rtol=0, atol=1e-4)
  assert np.all(record["target_keypoints"][[3, 16]] == -1)


def test_deep_fashion_gfla_layout(tmp_path):
  manual = tmp_path / "manual"
  names = [
      "fashionWOMENDressesid0000100101_1front.jpg",
      "fashionWOMENDressesid0000100102_2side.jpg",
      "fashionMENTeesid0000200201_1front.jpg",
  ]
  annotations = {}
  for i, name in enumerate(names):
    _save_image(str(manual / "train" / name), i, 176, 256)
    annotations[name] = _keypoints(10 + i, 176, 256)
  _write_csv_annotation(manual / "fasion-annotation-train.csv", annotations)
  # GFLA's pair files carry a pandas index column.
  (manual / "fasion-pairs-train.csv").write_text(
      f",from,to\n0,{names[0]},{names[1]}\n1,{names[1]},{names[0]}\n2,{names[2]},{names[2]}\n"
  )
  b, split = _build("deep_fashion/res256", tmp_path, manual)
  assert list(b.info.splits) == ["train"]
  train = split("train")
  assert len(train) == 3
  r = train[0]
  assert (_text(r["source_id"]), _text(r["target_id"]), _text(r["person_id"])) == (
      names[0],
      names[1],
      "id_00001001",
  )
  np.testing.assert_array_equal(
      r["source_image"], _stretched(manual / "train" / names[0], 256, 256)
  )
  # 256x176 frame -> 256x256: x * 256 / 176.
  kp = annotations[names[1]]
  expected = np.where(kp == -1, -1, kp * [256 / 176, 1.0])
  np.testing.assert_allclose(r["target_keypoints"], expected, rtol=0, atol=1e-4)


def test_deep_fashion_lists_missing_images_and_keypoints(tmp_path):
  manual = tmp_path / "manual"
  _pidm_folder(manual)
  extra = [f"img/MEN/Tees/id_0000900{i}/01_1_front.jpg" for i in range(7)]
  with open(manual / "train_pairs.txt", "a") as f:
    f.write(f"{PIDM_NAMES[0]},{','.join(extra)}\n")
  os.remove(manual / PIDM_NAMES[5].replace("img/", "pose/").replace(".jpg", ".txt"))
  with pytest.raises(manual_data.BuildError) as info:
    build.build("deep_fashion/res256", str(tmp_path / "data"), str(manual))
  message = str(info.value)
  assert "7 missing images" in message and "... and 2 more" in message
  assert extra[0] in message and extra[6] not in message
  assert not os.path.isdir(tmp_path / "data" / "deep_fashion" / "res256" / "1.0.0")


def test_deep_fashion_missing_keypoint_file(tmp_path):
  manual = tmp_path / "manual"
  _pidm_folder(manual)
  os.remove(manual / PIDM_NAMES[1].replace("img/", "pose/").replace(".jpg", ".txt"))
  with pytest.raises(manual_data.BuildError, match=r"1 missing keypoint files: .*01_2_front\.txt"):
    build.build("deep_fashion/res256", str(tmp_path / "data"), str(manual))


def test_deep_fashion_unreadable_image_stops_the_build(tmp_path):
  manual = tmp_path / "manual"
  _pidm_folder(manual)
  (manual / PIDM_NAMES[4]).write_bytes(b"not an image")
  with pytest.raises(
      manual_data.BuildError,
      match=r"1 unreadable images: .*id_00002002/01_2_front\.jpg \(UnidentifiedImageError\)",
  ):
    build.build("deep_fashion/res256", str(tmp_path / "data"), str(manual))
  assert not os.path.isdir(tmp_path / "data" / "deep_fashion" / "res256" / "1.0.0")


def test_deep_fashion_unknown_layout(tmp_path):
  (tmp_path / "manual").mkdir()
  (tmp_path / "manual" / "pairs.csv").write_text("from,to\n")
  with pytest.raises(manual_data.BuildError, match="neither train_pairs.txt"):
    build.build("deep_fashion/res256", str(tmp_path / "data"), str(tmp_path / "manual"))


# ----------------------------------------------------------------------------------------------
# Market-1501


def test_market1501(tmp_path):
  manual = tmp_path / "manual"
  names = [
      "0002_c1s1_000451_03.jpg",
      "0002_c2s1_000301_01.jpg",
      "0007_c1s6_028546_01.jpg",
      "0007_c3s3_077419_03.jpg",
  ]
  annotations = {}
  for i, name in enumerate(names):
    _save_image(str(manual / "bounding_box_test" / name), i, 64, 128)
    annotations[name] = _keypoints(20 + i, 64, 128)
  _write_csv_annotation(manual / "market-annotation-test.csv", annotations)
  (manual / "market-pairs-test.csv").write_text(
      f"from,to\n{names[0]},{names[1]}\n{names[2]},{names[3]}\n{names[3]},{names[2]}\n"
  )
  _, split = _build("market1501/res128x64", tmp_path, manual)
  test = split("test")
  assert [(_text(r["target_id"]), _text(r["person_id"])) for r in (test[i] for i in range(3))] == [
      (names[1], "0002"),
      (names[3], "0007"),
      (names[2], "0007"),
  ]
  r = test[1]
  assert r["source_image"].shape == (128, 64, 3)
  with Image.open(manual / "bounding_box_test" / names[2]) as img:
    np.testing.assert_array_equal(r["source_image"], np.asarray(img.convert("RGB")))
  np.testing.assert_allclose(r["source_keypoints"], annotations[names[2]], rtol=0, atol=1e-4)


def test_market1501_lists_pairs_without_keypoints(tmp_path):
  manual = tmp_path / "manual"
  names = ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg"]
  for i, name in enumerate(names):
    _save_image(str(manual / "train" / name), i, 64, 128)
  _write_csv_annotation(manual / "market-annotation-train.csv", {names[0]: _keypoints(0, 64, 128)})
  (manual / "market-pairs-train.csv").write_text(
      f"from,to\n{names[0]},{names[1]}\n{names[0]},0009_c1s1_000001_01.jpg\n"
  )
  with pytest.raises(manual_data.BuildError) as info:
    build.build("market1501/res128x64", str(tmp_path / "data"), str(manual))
  message = str(info.value)
  assert "1 missing images" in message and "0009_c1s1_000001_01.jpg" in message
  assert "2 images without keypoints in market-annotation-train.csv" in message
  assert names[1] in message


# ----------------------------------------------------------------------------------------------
# Own folder


def _own_folder(root):
  """Images of several sizes with .txt / .json / .npy keypoints in their own pixel frames."""
  specs = {
      "alice/front.png": (40, 60),
      "alice/back.jpg": (30, 50),
      "bob/a.png": (64, 64),
      "bob/b.png": (20, 36),
  }
  keypoints = {}
  for i, (name, (w, h)) in enumerate(specs.items()):
    _save_image(str(root / "images" / name), 30 + i, w, h)
    keypoints[name] = kp = _keypoints(30 + i, w, h)
    stem = root / "keypoints" / os.path.splitext(name)[0]
    os.makedirs(stem.parent, exist_ok=True)
    if i % 3 == 0:
      np.savetxt(f"{stem}.txt", kp)
    elif i % 3 == 1:
      flat = np.concatenate([kp, np.where(kp[:, :1] == -1, 0.0, 0.9)], 1).reshape(-1)
      with open(f"{stem}.json", "w") as f:
        json.dump({"people": [{"pose_keypoints_2d": flat.tolist()}]}, f)
    else:
      np.save(f"{stem}.npy", kp)
  (root / "train_pairs.csv").write_text(
      "from,to\nalice/front.png,alice/back.jpg\nbob/a.png,bob/b.png\nbob/b.png,bob/a.png\n"
  )
  (root / "test_pairs.txt").write_text("alice/back.jpg,alice/front.png\n")
  return specs, keypoints


def test_person_folder(tmp_path):
  manual = tmp_path / "manual"
  specs, keypoints = _own_folder(manual)
  b, split = _build("person_folder/res64", tmp_path, manual)
  assert sorted(b.info.splits) == ["test", "train"]
  train = split("train")
  assert len(train) == 3 and len(split("test")) == 1
  for i, (source, target) in enumerate(
      [
          ("alice/front.png", "alice/back.jpg"),
          ("bob/a.png", "bob/b.png"),
          ("bob/b.png", "bob/a.png"),
      ]
  ):
    r = train[i]
    assert (_text(r["source_id"]), _text(r["target_id"])) == (source, target)
    assert _text(r["person_id"]) == target.split("/")[0]
    np.testing.assert_array_equal(r["target_image"], _stretched(manual / "images" / target, 64, 64))
    w, h = specs[target]
    expected = pose.scale_keypoints(keypoints[target], (h, w), (64, 64))
    np.testing.assert_allclose(r["target_keypoints"], expected, rtol=0, atol=1e-4)


def test_person_folder_lists_unknown_images_and_bad_keypoints(tmp_path):
  manual = tmp_path / "manual"
  _own_folder(manual)
  with open(manual / "train_pairs.csv", "a") as f:
    f.write("alice/front.png,carol/x.png\nnobody.png,bob/a.png\n")
  (manual / "keypoints" / "bob" / "a.txt").write_text("1 2\n3 4\n")
  with pytest.raises(manual_data.BuildError) as info:
    build.build("person_folder/res64", str(tmp_path / "data"), str(manual))
  message = str(info.value)
  assert "2 pairs naming an unknown image" in message
  assert "carol/x.png" in message and "nobody.png" in message
  assert "images with several keypoint files" in message  # bob/a.npy and bob/a.txt


def test_person_folder_malformed_keypoints(tmp_path):
  manual = tmp_path / "manual"
  _own_folder(manual)
  (manual / "keypoints" / "alice" / "front.txt").write_text("1 2\n3 4\n")
  with pytest.raises(manual_data.BuildError, match=r"1 malformed keypoint files: .*front\.txt"):
    build.build("person_folder/res64", str(tmp_path / "data"), str(manual))


def test_pair_file_readers(tmp_path):
  (tmp_path / "p.txt").write_text("t.jpg,s1.jpg,s2.jpg\n\nu.jpg,v.jpg\n")
  assert manual_data.read_pairs_txt(tmp_path / "p.txt") == [
      ("s1.jpg", "t.jpg"),
      ("s2.jpg", "t.jpg"),
      ("v.jpg", "u.jpg"),
  ]
  (tmp_path / "bad.txt").write_text("t.jpg\n")
  with pytest.raises(manual_data.BuildError, match="bad.txt line 1"):
    manual_data.read_pairs_txt(tmp_path / "bad.txt")
  (tmp_path / "bad.csv").write_text("source,target\na,b\n")
  with pytest.raises(manual_data.BuildError, match="'from' and 'to'"):
    manual_data.read_pairs_csv(tmp_path / "bad.csv")
