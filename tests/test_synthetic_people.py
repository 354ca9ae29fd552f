"""Tests for the synthetic_people TFDS builder and its procedural person renderer."""

import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline.synthetic import person
from input_pipeline.synthetic_people import (
    SyntheticPeople,
    SyntheticPeopleConfig,
    identity_images,
)

SIZE = 64
CONFIG = SyntheticPeopleConfig(
    name="tiny",
    resolution=SIZE,
    train_identities=6,
    test_identities=3,
    poses_per_identity=3,
    seed=5,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = SyntheticPeople(config=CONFIG, data_dir=data_dir)
  builder.download_and_prepare()
  splits = {
      split: tfds.data_source("synthetic_people/tiny", data_dir=data_dir, split=split)
      for split in ("train", "test")
  }
  return builder, {
      split: [source[i] for i in range(len(source))] for split, source in splits.items()
  }


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _body_mask(image: np.ndarray) -> np.ndarray:
  """Pixels that differ from the background, estimated per row from the left border column."""
  background = image[:, :1].astype(np.int32)
  return np.abs(image.astype(np.int32) - background).max(-1) > 30


def test_sizes_files_and_layout(built):
  builder, records = built
  assert builder.info.file_format.value == "array_record"
  assert len(records["train"]) == 6 * 3 and len(records["test"]) == 3 * 3  # 3 pairs per identity
  for record in records["train"] + records["test"]:
    for key in ("source_image", "target_image"):
      assert record[key].shape == (SIZE, SIZE, 3) and record[key].dtype == np.uint8
    for key in ("source_keypoints", "target_keypoints"):
      assert record[key].shape == (18, 2) and record[key].dtype == np.float64


def test_pairs_are_one_identity_in_two_poses_and_splits_are_disjoint(built):
  _, records = built
  people = {}
  for split, recs in records.items():
    people[split] = {_text(r["person_id"]) for r in recs}
    for r in recs:
      pid, src, tgt = _text(r["person_id"]), _text(r["source_id"]), _text(r["target_id"])
      assert src.startswith(pid + "/") and tgt.startswith(pid + "/") and src != tgt
  assert len(people["train"]) == 6 and len(people["test"]) == 3
  assert not people["train"] & people["test"]


def test_every_keypoint_lands_on_the_drawn_body(built):
  _, records = built
  for r in records["train"] + records["test"]:
    for side in ("source", "target"):
      image, kp = r[f"{side}_image"], r[f"{side}_keypoints"]
      body = _body_mask(image)
      present = (kp != -1).all(-1)
      assert ((kp == -1).all(-1) == ~present).all()  # missing = -1 in both coordinates
      assert present.sum() >= 11, (_text(r[f"{side}_id"]), present)
      assert present[[1, 2, 5, 8, 11]].all()  # neck, shoulders, hips always visible
      for x, y in kp[present]:
        assert 0 <= x <= SIZE - 1 and 0 <= y <= SIZE - 1
        assert body[int(round(y)), int(round(x))], (_text(r[f"{side}_id"]), x, y)
      # Most of the image is background: the person does not fill the frame.
      assert 0.05 < body.mean() < 0.6


def test_records_hold_the_rendered_images_and_exact_keypoints(built):
  _, records = built
  r = records["train"][0]
  person_id = _text(r["person_id"])
  index = int(person_id.split("_")[1])
  _, views = identity_images(CONFIG, "train", index)
  a = int(_text(r["source_id"]).rsplit("_", 1)[1])
  b = int(_text(r["target_id"]).rsplit("_", 1)[1])
  np.testing.assert_array_equal(r["source_image"], views[a][0])
  np.testing.assert_array_equal(r["target_image"], views[b][0])
  np.testing.assert_array_equal(r["source_keypoints"], views[a][1])
  np.testing.assert_array_equal(r["target_keypoints"], views[b][1])


def test_pose_visibly_changes_between_source_and_target(built):
  _, records = built
  for r in records["train"]:
    src, tgt = r["source_keypoints"], r["target_keypoints"]
    both = (src != -1).all(-1) & (tgt != -1).all(-1)
    moved = np.linalg.norm(src[both] - tgt[both], axis=-1)
    assert moved.mean() > 1.5, moved
    changed = np.abs(r["source_image"].astype(int) - r["target_image"].astype(int)).max(-1) > 40
    assert changed.mean() > 0.02


def test_same_person_looks_alike_and_identities_differ():
  # Colours are per identity: every pose of one identity shows the same top colour.
  rng = np.random.default_rng(0)
  looks = [person.sample_appearance(rng) for _ in range(20)]
  assert len({look.top for look in looks}) == 20
  look = looks[0]
  plain = dict(vars(look), top_pattern="plain", sleeves="long")
  plain = person.Appearance(**plain)
  for _ in range(4):
    # Any pose with the arms held away from the torso (so that no hand covers its centre).
    pose = dataclasses.replace(person.sample_pose(rng), shoulder=(70, 70), elbow=(0, 0))
    image, kp = person.render(plain, pose, 96, 96, rng)
    torso = ((kp[2] + kp[5] + kp[8] + kp[11]) / 4).round().astype(int)
    np.testing.assert_allclose(image[torso[1], torso[0]], np.round(plain.top), atol=1)


def test_identity_images_are_deterministic_and_splits_differ():
  a = identity_images(CONFIG, "train", 2)
  b = identity_images(CONFIG, "train", 2)
  c = identity_images(CONFIG, "test", 2)
  assert a[0] == "train_00002" and c[0] == "test_00002"
  for (ia, ka), (ib, kb) in zip(a[1], b[1]):
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(ka, kb)
  assert not np.array_equal(a[1][0][0], c[1][0][0])
  with pytest.raises(ValueError, match="split"):
    identity_images(CONFIG, "validation", 0)


@pytest.mark.parametrize("size", [32, 256])
def test_renderer_other_resolutions(size):
  rng = np.random.default_rng(1)
  look = person.sample_appearance(rng)
  for _ in range(3):
    image, kp = person.render(look, person.sample_pose(rng), size, size, rng)
    body = _body_mask(image)
    present = (kp != -1).all(-1)
    for x, y in kp[present]:
      assert body[int(round(y)), int(round(x))]


def test_config_validation():
  with pytest.raises(ValueError, match="poses_per_identity"):
    SyntheticPeopleConfig(name="bad", poses_per_identity=1)
  with pytest.raises(ValueError, match="resolution"):
    SyntheticPeopleConfig(name="bad", resolution=8)
  with pytest.raises(ValueError, match="build and pattern_scale"):
    SyntheticPeopleConfig(name="bad", build=0.0)
  with pytest.raises(ValueError, match="build and pattern_scale"):
    person.restyled(person.sample_appearance(np.random.default_rng(0)), pattern_scale=-1)
  assert {c.name: c.resolution for c in SyntheticPeople.BUILDER_CONFIGS} == {
      "res64": 64,
      "res256": 256,
      "studio64": 64,
      "studio32": 32,
  }


def test_studio_options_share_the_background_and_widen_the_body():
  studio = dataclasses.replace(
      CONFIG, name="studio", background="per_identity", build=1.5, pattern_scale=1.6
  )
  _, views = identity_images(studio, "train", 1)
  _, plain_views = identity_images(CONFIG, "train", 1)
  corners = lambda im: im[[0, 0, -1, -1], [0, -1, 0, -1]].astype(int)
  # One background for every view of an identity (the corners are always background here) ...
  assert all(np.array_equal(corners(views[0][0]), corners(v[0])) for v in views[1:])
  # ... where the default set draws a slightly different one per image.
  assert not all(np.array_equal(corners(plain_views[0][0]), corners(v[0])) for v in plain_views[1:])
  fixed = dataclasses.replace(studio, name="fixed", background="fixed")
  backgrounds = {
      tuple(corners(im).ravel())
      for i in range(3)
      for im, _ in identity_images(fixed, "train", i)[1]
  }
  assert len(backgrounds) == 1  # one background for the whole set
  with pytest.raises(ValueError, match="background must be one of"):
    dataclasses.replace(CONFIG, name="bad", background="random")
  # Wider limbs, shoulders and hips: more body pixels on average.
  area = lambda cfg: np.mean(
      [_body_mask(im).mean() for i in range(4) for im, _ in identity_images(cfg, "train", i)[1]]
  )
  assert area(studio) > 1.2 * area(CONFIG)
  look = person.sample_appearance(np.random.default_rng(3))
  wide = person.restyled(look, build=1.5, pattern_scale=2.0)
  assert wide.arm_width == 1.5 * look.arm_width and wide.top_period == 2.0 * look.top_period
  assert wide.top == look.top and wide.torso == look.torso
  assert person.restyled(look) == look
  with pytest.raises(ValueError, match="backdrop"):
    person.render(
        look,
        person.sample_pose(np.random.default_rng(0)),
        32,
        32,
        np.random.default_rng(0),
        backdrop=np.zeros((16, 16, 3), np.float32),
    )
