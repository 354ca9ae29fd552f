"""Poses from photos (pidm_jax.keypoints): BlazePose through LiteRT on photographs that installed
packages ship (scikit-image's astronaut, an upper-body portrait, and cameraman, a greyscale
three-quarter figure), the 33 -> 18 mapping, the OpenPose JSON round trip, the photo formats,
the errors and the command. The estimator's tests skip when the [pose] extra is not installed."""

import hashlib

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from pidm_jax import inference
from pidm_jax import keypoints as kp_lib
from pidm_jax import pose as pose_lib

skimage_data = pytest.importorskip("skimage.data")
J = {name: i for i, name in enumerate(pose_lib.JOINT_NAMES)}


def _litert():
  return pytest.importorskip("ai_edge_litert", reason="the [pose] extra is not installed")


@pytest.fixture(scope="module")
def estimator():
  _litert()
  return kp_lib.estimator()


def _found(kp, name):
  return bool(np.all(kp[J[name]] != pose_lib.MISSING))


def test_the_models_are_the_files_mediapipe_ships():
  readme = open(os.path.join(kp_lib.MODEL_DIR, "README.md"), encoding="utf-8").read()
  listed = dict((name, digest) for digest, name in re.findall(r"([0-9a-f]{64})  (\S+)", readme))
  assert set(listed) == {kp_lib.DETECTOR_FILE, kp_lib.LANDMARK_FILE}
  for name, digest in listed.items():
    with open(os.path.join(kp_lib.MODEL_DIR, name), "rb") as f:
      assert hashlib.sha256(f.read()).hexdigest() == digest, name


def test_detector_anchors():
  anchors = kp_lib.ssd_anchors()
  assert anchors.shape == (2254, 2)  # 28*28*2 + 14*14*2 + 7*7*6, the detector's output count
  assert anchors.min() > 0 and anchors.max() < 1
  assert np.allclose(anchors[0], [0.5 / 28, 0.5 / 28]) and np.allclose(anchors[-1], [6.5 / 7] * 2)


def test_blazepose_to_coco18_mapping():
  landmarks = np.stack([np.arange(33) * 3.0 + 1, np.arange(33) * 2.0 + 5], axis=-1)
  visibility = np.full(33, 0.9)
  visibility[16] = 0.2  # right wrist: under the threshold
  landmarks[27] = [500.0, 50.0]  # left ankle: outside a 100 x 200 (H x W) photo
  kp, conf = kp_lib.to_coco18(landmarks, visibility, (100, 200), threshold=0.5)
  assert kp.shape == (18, 2) and conf.shape == (18,)
  for joint, index in enumerate(kp_lib.BLAZEPOSE_TO_COCO18):
    if index is None or joint in (J["right_wrist"], J["left_ankle"]):
      continue
    assert np.array_equal(kp[joint], landmarks[index]), pose_lib.JOINT_NAMES[joint]
  assert np.array_equal(kp[J["neck"]], (landmarks[11] + landmarks[12]) / 2)
  assert np.all(kp[J["right_wrist"]] == pose_lib.MISSING) and conf[J["right_wrist"]] == 0.2
  assert np.all(kp[J["left_ankle"]] == pose_lib.MISSING)
  # the person's right is BlazePose's right: right shoulder 12, left eye 2, right ear 8
  assert kp_lib.BLAZEPOSE_TO_COCO18[J["right_shoulder"]] == 12
  assert kp_lib.BLAZEPOSE_TO_COCO18[J["left_eye"]] == 2
  assert kp_lib.BLAZEPOSE_TO_COCO18[J["right_ear"]] == 8
  visibility[11] = 0.1  # a shoulder missing: the neck too
  kp, conf = kp_lib.to_coco18(landmarks, visibility, (100, 200), threshold=0.5)
  assert np.all(kp[J["neck"]] == pose_lib.MISSING) and conf[J["neck"]] == pytest.approx(0.1)
  with pytest.raises(ValueError, match="expected \\(33, 2\\) landmarks"):
    kp_lib.to_coco18(landmarks[:18], visibility[:18], (100, 200), 0.5)


def test_openpose_json_round_trip(tmp_path):
  kp = np.array([[10.25, 20.5]] * 18)
  kp[[4, 10]] = pose_lib.MISSING
  conf = np.linspace(0.5, 1.0, 18)
  path = tmp_path / "p_keypoints.json"
  path.write_text(json.dumps(kp_lib.openpose_json(kp, conf)))
  back = pose_lib.read_openpose_json(str(path), threshold=0.05)
  assert np.array_equal(back, kp.astype(np.float32))
  values = json.loads(path.read_text())["people"][0]["pose_keypoints_2d"]
  assert len(values) == 54 and values[12:15] == [0.0, 0.0, 0.0]


def test_upper_body_portrait(estimator):
  image = skimage_data.astronaut()
  people = estimator.estimate(image)
  assert len(people) == 1
  kp = people[0].keypoints
  h, w = image.shape[:2]
  for name in ("nose", "neck", "right_eye", "left_eye", "right_ear", "left_ear"):
    assert _found(kp, name), name
    assert 0 <= kp[J[name], 0] < w and 0 <= kp[J[name], 1] < h
  assert _found(kp, "right_shoulder") and _found(kp, "left_shoulder")
  # eyes above the nose above the neck; facing the camera, her right is the image's left
  assert kp[J["right_eye"], 1] < kp[J["nose"], 1] < kp[J["neck"], 1]
  assert kp[J["left_eye"], 1] < kp[J["nose"], 1]
  assert kp[J["right_shoulder"], 0] < kp[J["neck"], 0] < kp[J["left_shoulder"], 0]
  assert kp[J["right_eye"], 0] < kp[J["left_eye"], 0]
  # the head on the face (the portrait's face spans about x 150-300, y 60-200)
  assert 150 < kp[J["nose"], 0] < 300 and 60 < kp[J["nose"], 1] < 200
  # hips and legs are below the frame: missing, not guessed inside it
  for name in ("right_hip", "left_hip", "right_knee", "left_knee", "right_ankle", "left_ankle"):
    assert not _found(kp, name), name


def test_greyscale_figure_and_photo_formats(estimator, tmp_path):
  grey = skimage_data.camera()
  Image.fromarray(grey).save(tmp_path / "camera.png")  # mode L
  photo = kp_lib.load_photo(tmp_path / "camera.png")
  assert photo.shape == (512, 512, 3) and photo.dtype == np.uint8
  kp = kp_lib.choose(estimator.estimate(photo), None, "camera").keypoints
  assert _found(kp, "neck") and _found(kp, "nose")
  assert _found(kp, "right_hip") or _found(kp, "left_hip")
  hips = [kp[J[n], 1] for n in ("right_hip", "left_hip") if _found(kp, n)]
  assert kp[J["nose"], 1] < kp[J["neck"], 1] < min(hips)  # head above neck above hips

  rgb = skimage_data.astronaut()
  ref = estimator.estimate(rgb)[0].keypoints
  found = np.all(ref != pose_lib.MISSING, axis=-1)
  Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
  Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
  for name in ("rgba.png", "cmyk.jpg"):
    kp = estimator.estimate(kp_lib.load_photo(tmp_path / name))[0].keypoints
    assert np.abs(kp[found] - ref[found]).max() < 8, name
  # stored rotated 90 degrees with the EXIF orientation that turns it upright again
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 CW to display
  Image.fromarray(np.rot90(rgb, 1)).save(tmp_path / "exif.jpg", exif=exif, quality=95)
  upright = kp_lib.load_photo(tmp_path / "exif.jpg")
  assert upright.shape == rgb.shape
  kp = estimator.estimate(upright)[0].keypoints
  assert np.abs(kp[found] - ref[found]).max() < 8


def test_errors_name_the_photo(estimator, tmp_path):
  (tmp_path / "notes.jpg").write_text("not an image")
  with pytest.raises(kp_lib.PhotoError, match="notes.jpg: not a readable image"):
    kp_lib.load_photo(tmp_path / "notes.jpg")
  with pytest.raises(kp_lib.PhotoError, match="missing.png: file not found"):
    kp_lib.load_photo(tmp_path / "missing.png")
  blank = np.full((256, 256, 3), 128, np.uint8)
  with pytest.raises(kp_lib.PhotoError, match="blank.png: no person found"):
    kp_lib.choose(estimator.estimate(blank), None, "blank.png")
  people = estimator.estimate(skimage_data.astronaut())
  with pytest.raises(kp_lib.PhotoError, match="--person=3, but 1 person"):
    kp_lib.choose(people, 3, "astronaut.png")
  with pytest.raises(ValueError, match="expected \\(H, W, 3\\) uint8"):
    estimator.estimate(np.zeros((64, 64), np.uint8))


def test_several_people_largest_first(estimator, tmp_path):
  big = skimage_data.astronaut()
  mirrored = np.ascontiguousarray(big[:, ::-1])
  small = np.asarray(Image.fromarray(mirrored).resize((384, 384)))
  for big_left in (False, True):
    canvas = np.full((512, 896, 3), 255, np.uint8)
    if big_left:
      canvas[:, :512], canvas[128:, 512:] = big, small
    else:
      canvas[:, 384:], canvas[128:, :384] = big, small
    people = estimator.estimate(canvas)
    assert len(people) == 2
    assert people[0].area > people[1].area
    noses = [p.keypoints[J["nose"], 0] for p in people]
    assert (noses[0] < 512 < noses[1]) if big_left else (noses[1] < 384 < noses[0])

  Image.fromarray(canvas).save(tmp_path / "two.png")
  out = tmp_path / "out"
  assert kp_lib.main([str(tmp_path / "two.png"), f"--out={out}", "--overlay"]) == 0
  first = pose_lib.read_openpose_json(str(out / "two_keypoints.json"))
  assert first[J["nose"], 0] < 512  # the larger person
  overlay = np.asarray(Image.open(out / "two_overlay.png"))
  assert overlay.shape == canvas.shape and np.any(overlay != canvas)
  assert kp_lib.main([str(tmp_path / "two.png"), f"--out={out}", "--person=1"]) == 0
  second = pose_lib.read_openpose_json(str(out / "two_keypoints.json"))
  assert second[J["nose"], 0] > 512


def test_command_reports_each_photo(estimator, tmp_path, capsys):
  Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.jpg")
  (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
  out = tmp_path / "out"
  status = kp_lib.main([str(tmp_path / "astronaut.jpg"), str(tmp_path / "bad.png"), f"--out={out}"])
  assert status == 1  # one photo failed; the other was still written
  said = capsys.readouterr()
  assert "astronaut.jpg:" in said.out and "/18 joints" in said.out
  assert "bad.png: not a readable image" in said.err
  assert sorted(os.listdir(out)) == ["astronaut_keypoints.json"]


def test_a_photo_as_the_target_pose_of_sample(estimator, tmp_path):
  image = skimage_data.astronaut()[:, 64:448]  # 512 x 384
  Image.fromarray(image).save(tmp_path / "pose.png")
  ref = estimator.estimate(image)[0].keypoints
  for resize in ("stretch", "pad"):
    (pose,) = inference.read_poses(str(tmp_path / "pose.png"), (64, 32), resize=resize)
    place = inference.placement(image.shape[:2], (64, 32), resize)
    assert pose.placement == place and pose.name == "pose"
    found = np.all(ref != pose_lib.MISSING, axis=-1)
    expected = ref[found] * [place.scale_x, place.scale_y] + [place.offset_x, place.offset_y]
    other = inference.placement((100, 100), (64, 32), "stretch")  # a source's, not the photo's
    for frame in inference.POSE_FRAMES:  # the run's pose_frame does not move it
      placed = inference._network_keypoints(pose, (64, 32), frame, other)
      assert np.allclose(placed[found], expected), frame
      assert np.all(placed[~found] == pose_lib.MISSING)
    rendered = inference.render_pose(pose, (64, 32), "deepfashion", other)
    assert rendered.shape == (64, 32, pose_lib.POSE_CHANNELS) and rendered.max() > 0


def test_without_the_extra_one_line_says_how_to_install(monkeypatch, tmp_path, capsys):
  import builtins  # pylint: disable=import-outside-toplevel

  real_import = builtins.__import__

  def no_litert(name, *args, **kwargs):
    if name.startswith("ai_edge_litert"):
      raise ImportError("No module named 'ai_edge_litert'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_litert)
  monkeypatch.setattr(kp_lib, "_ESTIMATORS", {})
  with pytest.raises(kp_lib.MissingExtra, match=re.escape('pip install -e ".[pose]"')):
    kp_lib.PoseEstimator()
  with pytest.raises(SystemExit) as exit_info:
    kp_lib.main(["photo.jpg", f"--out={tmp_path}"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ['error: poses from photos need the optional extra: pip install -e ".[pose]"']
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "p.png")
  with pytest.raises(inference.InputError, match="pose photo .*p.png: poses from photos need"):
    inference.read_poses(str(tmp_path / "p.png"), (64, 32))


def test_command_flags():
  with pytest.raises(SystemExit) as exit_info:
    kp_lib.parse_args(["a.jpg"])
  assert exit_info.value.code == 2
  with pytest.raises(SystemExit):
    kp_lib.parse_args(["--out=x"])
  with pytest.raises(SystemExit):
    kp_lib.parse_args(["a.jpg", "--out=x", "--threshold=1.5"])
  photos, flags = kp_lib.parse_args(["a.jpg", "b.png", "--out=x", "--person=1", "--overlay"])
  assert photos == ["a.jpg", "b.png"] and flags.person == 1 and flags.overlay
