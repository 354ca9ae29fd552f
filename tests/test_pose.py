"""Tests for pidm_jax.pose: the 20-channel pose map, keypoint transforms and keypoint readers."""

import hashlib
import json

import numpy as np
import pytest

from pidm_jax import pose

MISSING = -1.0


def _all_missing():
  return np.full((18, 2), MISSING)


def _only(joints: dict) -> np.ndarray:
  kp = _all_missing()
  for j, xy in joints.items():
    kp[j] = xy
  return kp


def _rgb(colour_bgr):
  return np.array(colour_bgr[::-1], np.float32) / np.float32(255)


def _blend(old, new):
  # 0.4 old + 0.6 new, rounded: (2 old + 3 new) / 5 is never a tie, so plain rounding is exact.
  return np.floor((2 * np.asarray(old) + 3 * np.asarray(new)) / 5 + 0.5)


# A skeleton with non-integer coordinates and two missing joints, in a 48 x 64 (W x H) frame.
SKELETON = np.array(
    [
        [31.5, 10.2],
        [32.0, 17.7],
        [25.3, 18.1],
        [21.0, 27.9],
        [19.6, 36.4],
        [38.8, 17.5],
        [43.1, 27.0],
        [45.9, 35.2],
        [27.4, 38.0],
        [26.9, 50.3],
        [26.0, 61.7],
        [36.6, 38.2],
        [-1, -1],
        [38.2, 61.0],
        [29.9, 8.8],
        [33.4, 8.6],
        [-1, -1],
        [35.7, 9.9],
    ]
)


def test_shape_dtype_range_and_determinism():
  a = pose.pose_map(SKELETON, 64, 48)
  b = pose.pose_map(SKELETON.astype(np.float32), 64, 48)
  assert a.shape == (64, 48, 20) and a.dtype == np.float32
  assert a.min() >= 0.0 and a.max() <= 1.0
  np.testing.assert_array_equal(a, b)
  # Every value is a uint8 divided by 255 in float32.
  u = np.round(a * 255).astype(np.uint8)
  np.testing.assert_array_equal(u / np.float32(255), a)


def test_matches_output_verified_against_the_official_renderer():
  # Digest of the official renderer's output (PyTorch code, run once outside this repository) for
  # SKELETON at 64 x 48; pose_map was checked bit-exact against it on 1500 random skeletons.
  a = pose.pose_map(SKELETON, 64, 48)
  digest = hashlib.sha256(a.tobytes()).hexdigest()
  assert digest == "8bdaac9c2de4fc243dbfd83e7e3f44cc1f562f6ed9263d8dfb7c3c4331c8e90a"


def test_lone_joint_circle_colour_and_truncated_centre():
  # Neck alone at a non-integer position: circle of radius 4 centred at (int x, int y) = (30, 20).
  m = pose.pose_map(_only({1: (30.9, 20.7)}), 48, 64)
  neck = _rgb(pose.COLORS_BGR[1])
  np.testing.assert_array_equal(m[20, 30, :3], neck)
  np.testing.assert_array_equal(m[20, 34, :3], neck)  # 4 right of the truncated centre
  np.testing.assert_array_equal(m[20, 35, :3], 0.0)  # 5 right: outside
  np.testing.assert_array_equal(m[20, 26, :3], neck)
  np.testing.assert_array_equal(m[20, 25, :3], 0.0)
  np.testing.assert_array_equal(m[24, 30, :3], neck)
  np.testing.assert_array_equal(m[25, 30, :3], 0.0)
  # Nothing else is drawn (OpenCV's radius-4 disc has 49 pixels) and no limb exists.
  drawn = m[..., :3].any(-1)
  assert np.count_nonzero(drawn) == 49
  np.testing.assert_array_equal(m[drawn, :3], np.broadcast_to(neck, (49, 3)))
  np.testing.assert_array_equal(m[..., 3:], 1.0)


def test_joint_colours_after_limb_blending():
  # Neck (1) and right shoulder (2) joined by limb 0, drawn in colour 0 over the two circles.
  m = pose.pose_map(_only({1: (40, 30), 2: (20, 30)}), 64, 64)
  c_neck, c_shoulder, c_limb = (np.array(pose.COLORS_BGR[i][::-1]) for i in (1, 2, 0))
  np.testing.assert_array_equal(m[30, 40, :3] * 255, _blend(c_neck, c_limb))
  np.testing.assert_array_equal(m[30, 20, :3] * 255, _blend(c_shoulder, c_limb))
  # Middle of the limb: black canvas blended with the limb colour.
  np.testing.assert_array_equal(m[30, 30, :3] * 255, _blend(0, c_limb))
  # Circle pixels outside the limb ellipse (it is 4 px thick around y = 30) keep the joint colour.
  np.testing.assert_array_equal(m[26, 40, :3] * 255, c_neck)
  # Far away: black.
  np.testing.assert_array_equal(m[55, 5, :3], 0.0)
  np.testing.assert_array_equal(m[5, 60, :3], 0.0)


def test_distance_map_along_a_line_away_from_a_limb():
  # A horizontal limb 0 from (100, 100) to (140, 100): an ellipse with half axes (20, 4).
  m = pose.pose_map(_only({1: (140, 100), 2: (100, 100)}), 256, 256)
  dist = m[..., 3]
  # The map is 0 within L1 distance 2 of the ellipse (y 100 +- 4, x 120 +- 20).
  near = np.argwhere(dist == 0)
  assert near[:, 0].min() == 96 - 2 and near[:, 0].max() == 104 + 2
  assert near[:, 1].min() == 100 - 2 and near[:, 1].max() == 140 + 2
  # Straight up from the top of the ellipse, the L1 distance is k; the map is floor(k / 3) / 255.
  for k in range(1, 97):
    expected = np.float32(k // 3) / np.float32(255)
    assert dist[96 - k, 120] == expected, k
  # Right of the ellipse's tip (140, 100) along its axis, the L1 distance is i.
  for i in range(1, 116):
    assert dist[100, 140 + i] == np.float32(i // 3) / np.float32(255), i
  # Off the axis, at (140 + i, 80): at most i + 20 (to the tip), at least i + 16 (the ellipse lies
  # in x <= 140, y >= 96).
  for i in range(1, 100):
    assert (i + 16) // 3 <= dist[80, 140 + i] * 255 <= (i + 20) // 3, i
  # The other 16 limbs are missing: constant 1.0.
  np.testing.assert_array_equal(m[..., 4:], 1.0)


def test_missing_joint_makes_its_limbs_missing():
  kp = SKELETON.copy()
  kp[3] = MISSING  # right elbow: limbs (2, 3) and (3, 4) are indices 2 and 3
  m = pose.pose_map(kp, 64, 48)
  np.testing.assert_array_equal(m[..., 3 + 2], 1.0)
  np.testing.assert_array_equal(m[..., 3 + 3], 1.0)
  assert (m[..., 3 + 4] < 1.0).all()  # limb (5, 6) is present
  # A joint with only one coordinate -1 is missing too.
  kp[4] = (19.6, MISSING)
  np.testing.assert_array_equal(pose.pose_map(kp, 64, 48)[..., 3 + 3], 1.0)


def test_limb_outside_the_image_gives_a_constant_map():
  m = pose.pose_map(_only({1: (-300, -200), 2: (-250, -200)}), 32, 32)
  np.testing.assert_array_equal(m[..., 3], 1.0)
  np.testing.assert_array_equal(m[..., :3], 0.0)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((17, 2)),
        np.zeros((18, 3)),
        np.zeros(36),
        np.full((18, 2), np.nan),
        np.array([["a", "b"]] * 18),
    ],
)
def test_pose_map_rejects_bad_keypoints(bad):
  with pytest.raises(ValueError, match="keypoints"):
    pose.pose_map(bad, 32, 32)


def test_pose_map_rejects_bad_size():
  with pytest.raises(ValueError, match="size"):
    pose.pose_map(SKELETON, 0, 32)


# ---------------------------------------------------------------------------------------------
# The official renderer, transcribed step by step from its description (no shortcuts), and the
# fast renderer checked against it.


def _official_pose_map(kp, height, width):
  """The official 20-channel map for float64 keypoints, written the slow, literal way: full-size
  canvas copies and blends, a full-size mask per limb, cv2.distanceTransform on the whole image."""
  import math

  import cv2

  canvas = np.zeros((height, width, 3), np.uint8)
  for i in range(18):
    x, y = kp[i]
    if x == -1 or y == -1:
      continue
    cv2.circle(canvas, (int(x), int(y)), 4, pose.COLORS_BGR[i], thickness=-1)
  joints = []
  for i, (a, b) in enumerate(pose.LIMBS):
    cur_canvas = canvas.copy()
    xs, ys = kp[[a, b], 0], kp[[a, b], 1]
    if -1 in xs or -1 in ys:
      joints.append(np.zeros((height, width), np.uint8))
      continue
    length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
    angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
    polygon = cv2.ellipse2Poly(
        (int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), 4), int(angle), 0, 360, 1
    )
    cv2.fillConvexPoly(cur_canvas, polygon, pose.COLORS_BGR[i])
    canvas = cv2.addWeighted(canvas, 0.4, cur_canvas, 0.6, 0)
    joint = np.zeros((height, width), np.uint8)
    cv2.fillConvexPoly(joint, polygon, 255)
    joints.append(cv2.addWeighted(joint, 0.4, joint, 0.6, 0))
  rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
  channels = [rgb[..., c] for c in range(3)]
  for joint in joints:
    dist = cv2.distanceTransform(255 - joint, cv2.DIST_L1, 3)
    channels.append(np.clip(dist / 3, 0, 255).astype(np.uint8))
  return np.stack(channels, axis=-1).astype(np.float32) / np.float32(255)


def _random_skeleton(rng, height, width):
  """Non-integer joints, some off the image (limbs cut by its edges), some missing, some
  limbs degenerate (both ends on one pixel) or longer than the image."""
  kp = np.stack(
      [rng.uniform(-0.3 * width, 1.3 * width, 18), rng.uniform(-0.3 * height, 1.3 * height, 18)],
      axis=1,
  )
  kind = rng.integers(0, 8)
  if kind == 0:  # a compact, fully visible figure
    kp = np.stack([rng.uniform(0, width - 1, 18), rng.uniform(0, height - 1, 18)], axis=1)
  elif kind == 1:  # integer coordinates, two joints on the same spot
    kp = np.round(kp)
    kp[2] = kp[1]
  elif kind == 2:  # far away: limbs that cross the image from outside
    kp *= rng.uniform(2, 4)
  kp[rng.random(18) < 0.15] = MISSING
  return kp


@pytest.mark.parametrize(
    "height,width", [(64, 48), (256, 256), (256, 176), (128, 64), (37, 23), (5, 300)]
)
def test_fast_renderer_matches_the_literal_transcription(height, width):
  rng = np.random.default_rng(height * 1000 + width)
  for _ in range(60 if height * width <= 64 * 64 else 25):
    kp = _random_skeleton(rng, height, width)
    expected = _official_pose_map(kp, height, width)
    np.testing.assert_array_equal(pose.pose_map(kp, height, width), expected, err_msg=str(kp))


def test_uint8_map_mirror_and_out():
  u8 = pose.pose_map_uint8(SKELETON, 64, 48)
  assert u8.dtype == np.uint8 and u8.shape == (64, 48, 20) and u8.flags.c_contiguous
  np.testing.assert_array_equal(u8 / np.float32(255), pose.pose_map(SKELETON, 64, 48))
  mirrored = pose.pose_map_uint8(SKELETON, 64, 48, mirror=True)
  assert mirrored.flags.c_contiguous
  np.testing.assert_array_equal(mirrored, u8[:, ::-1])
  out = np.zeros((64, 48, 20), np.uint8)
  assert pose.pose_map_uint8(SKELETON, 64, 48, out=out) is out
  np.testing.assert_array_equal(out, u8)
  # A map of another size in the same thread (its work arrays change size), then this one again.
  np.testing.assert_array_equal(
      pose.pose_map(SKELETON, 80, 56), _official_pose_map(SKELETON, 80, 56)
  )
  np.testing.assert_array_equal(pose.pose_map_uint8(SKELETON, 64, 48), u8)
  with pytest.raises(ValueError, match="out: expected a C-contiguous uint8"):
    pose.pose_map_uint8(SKELETON, 64, 48, out=np.zeros((64, 48, 20), np.float32))


def test_literal_transcription_matches_the_official_digest():
  digest = hashlib.sha256(_official_pose_map(SKELETON, 64, 48).tobytes()).hexdigest()
  assert digest == "8bdaac9c2de4fc243dbfd83e7e3f44cc1f562f6ed9263d8dfb7c3c4331c8e90a"


# ---------------------------------------------------------------------------------------------
# Transforms


def _dots(h, w, kp):
  """An image with a 3x3 white square at each present integer keypoint."""
  img = np.zeros((h, w, 3), np.uint8)
  for x, y in kp:
    if x != MISSING:
      img[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] = 255
  return img


def _centroid(img, x, y, r=4):
  x, y = int(round(x)), int(round(y))
  patch = img[y - r : y + r + 1, x - r : x + r + 1, 0].astype(np.float64)
  ys, xs = np.mgrid[y - r : y + r + 1, x - r : x + r + 1]
  return (patch * xs).sum() / patch.sum(), (patch * ys).sum() / patch.sum()


KP_DOTS = _only({0: (20, 30), 1: (50, 12), 4: (33, 70), 9: (60, 55)})


def test_scale_crop_keeps_image_and_keypoints_together():
  img = _dots(80, 72, KP_DOTS)
  out, kp = pose.scale_crop(img, KP_DOTS, (83, 75), (2, 1))
  assert out.shape == img.shape and kp.shape == (18, 2)
  for j in (0, 1, 4, 9):
    cx, cy = _centroid(out, *kp[j])
    assert abs(cx - kp[j, 0]) < 0.3 and abs(cy - kp[j, 1]) < 0.3, (j, cx, cy, kp[j])
  assert (kp[[2, 3, 5]] == MISSING).all()


def _random_scale_crop(img, kp, rng, max_scale=0.05):
  """The training augmentation of one image, as PairTransform draws and applies it."""
  scaled_size, offset = pose.random_scale_crop_params(img.shape[0], img.shape[1], rng, max_scale)
  return pose.scale_crop(img, kp, scaled_size, offset)


def test_random_scale_crop_is_deterministic_and_consistent():
  img = _dots(80, 72, KP_DOTS)
  a = _random_scale_crop(img, KP_DOTS, np.random.default_rng(3), max_scale=0.05)
  b = _random_scale_crop(img, KP_DOTS, np.random.default_rng(3), max_scale=0.05)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  for seed in range(20):
    (nh, nw), (x0, y0) = pose.random_scale_crop_params(80, 72, np.random.default_rng(seed))
    assert 80 <= nh <= 83 and 72 <= nw <= 75 and 0 <= x0 <= nw - 72 and 0 <= y0 <= nh - 80
    out, kp = _random_scale_crop(img, KP_DOTS, np.random.default_rng(seed))
    assert out.shape == img.shape
    for j in (0, 1, 4, 9):
      cx, cy = _centroid(out, *kp[j])
      assert abs(cx - kp[j, 0]) < 0.3 and abs(cy - kp[j, 1]) < 0.3, (seed, j)
  # max_scale 0 is the identity.
  out, kp = _random_scale_crop(img, KP_DOTS, np.random.default_rng(0), max_scale=0.0)
  np.testing.assert_array_equal(out, img)
  np.testing.assert_array_equal(kp, KP_DOTS)


def test_flip_keypoints_moves_with_the_mirrored_pixels():
  img = np.zeros((10, 16, 3), np.uint8)
  img[3, 2] = 200
  kp = _only({2: (2, 3), 5: (9, 4)})
  out, fk = img[:, ::-1], pose.flip_keypoints(kp, 16)  # as PairTransform mirrors a pair
  assert out[3, 13, 0] == 200 and tuple(fk[2]) == (13, 3) and tuple(fk[5]) == (6, 4)
  assert (fk[0] == MISSING).all()
  swapped = pose.flip_keypoints(kp, 16, swap_left_right=True)
  assert tuple(swapped[5]) == (13, 3) and tuple(swapped[2]) == (6, 4)  # right <-> left shoulder
  np.testing.assert_array_equal(pose.flip_keypoints(pose.flip_keypoints(kp, 16), 16), kp)


def test_keypoint_dtype_is_kept():
  kp32 = KP_DOTS.astype(np.float32)
  assert pose.scale_keypoints(kp32, (80, 72), (84, 75)).dtype == np.float32
  assert pose.crop_keypoints(KP_DOTS, (1, 2)).dtype == np.float64


def test_deepfashion_frame_conversion():
  kp = _only({0: (40, 0), 1: (216, 256), 2: (128, 128)})
  out = pose.deepfashion_to_frame(kp, 256, 256)
  np.testing.assert_allclose(out[0], (0, 0))
  np.testing.assert_allclose(out[1], (256, 256))
  np.testing.assert_allclose(out[2], (88 * 256 / 176, 128))
  assert (out[3:] == MISSING).all()
  np.testing.assert_allclose(pose.deepfashion_to_frame(kp, 512, 352)[1], (352, 512))
  # With the augmentation's scale and crop.
  aug = pose.deepfashion_to_frame(kp, 256, 256, scaled_size=(268, 268), crop_offset=(5, 7))
  np.testing.assert_allclose(aug[2], (88 * 268 / 176 - 5, 128 * 268 / 256 - 7))
  assert (aug[3:] == MISSING).all()


# ---------------------------------------------------------------------------------------------
# Readers


def _kp_values():
  rng = np.random.default_rng(0)
  kp = rng.integers(0, 200, (18, 2)).astype(np.float64)
  kp[[3, 16]] = MISSING
  return kp


def test_read_keypoints_txt(tmp_path):
  kp = _kp_values()
  path = tmp_path / "a.txt"
  np.savetxt(path, kp)
  got = pose.read_keypoints_txt(path)
  assert got.dtype == np.float32 and got.shape == (18, 2)
  np.testing.assert_array_equal(got, kp)
  np.testing.assert_array_equal(pose.read_keypoints(path), kp)
  assert pose.read_keypoints_txt(path, dtype=np.float64).dtype == np.float64


@pytest.mark.parametrize(
    "content, what",
    [
        ("1 2\n" * 17, "18 lines"),
        ("1 2 3\n" * 18, "18 lines"),
        ("1 2\n" * 17 + "1 x\n", "non-numeric"),
        ("1 2\n" * 17 + "1 nan\n", "NaN"),
        (b"\x89PNG\r\n\x1a\n\xff\xfe", "binary"),
    ],
)
def test_read_keypoints_txt_malformed(tmp_path, content, what):
  path = tmp_path / "bad.txt"
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content)
  with pytest.raises(ValueError, match=f"bad.txt.*{what}"):
    pose.read_keypoints_txt(path)


def test_read_keypoints_csv(tmp_path):
  kp = _kp_values()
  ys = ", ".join(str(int(v)) for v in kp[:, 1])
  xs = ", ".join(str(int(v)) for v in kp[:, 0])
  path = tmp_path / "annotation.csv"
  path.write_text(
      f"name:keypoints_y:keypoints_x\nimg1.jpg: [{ys}]: [{xs}]\n\n" f"img2.jpg:[{xs}]:[{ys}]\n"
  )
  got = pose.read_keypoints_csv(path)
  assert sorted(got) == ["img1.jpg", "img2.jpg"]
  assert got["img1.jpg"].dtype == np.float32
  np.testing.assert_array_equal(got["img1.jpg"], kp)
  np.testing.assert_array_equal(got["img2.jpg"], kp[:, ::-1])


@pytest.mark.parametrize(
    "line, what",
    [
        ("img.jpg: [1, 2]: [3, 4]", "shape"),
        ("img.jpg: [1, 2, 3]", "per line"),
        ("img.jpg: [1, 2, x]: [3, 4, 5]", "per line"),
        ("img.jpg: [1, 2, 3]: [3, 4]", "per line"),
        ('img.jpg: ["a"' + ", 1" * 17 + "]: [1" + ", 1" * 17 + "]", "non-numeric"),
    ],
)
def test_read_keypoints_csv_malformed(tmp_path, line, what):
  path = tmp_path / "bad.csv"
  path.write_text("name:keypoints_y:keypoints_x\n" + line + "\n")
  with pytest.raises(ValueError, match=f"bad.csv line 2.*{what}"):
    pose.read_keypoints_csv(path)


def test_read_keypoints_csv_duplicate(tmp_path):
  row = "a.jpg: [" + ", ".join(["1"] * 18) + "]: [" + ", ".join(["2"] * 18) + "]\n"
  path = tmp_path / "dup.csv"
  path.write_text(row + row)
  with pytest.raises(ValueError, match="dup.csv line 2.*a.jpg.*twice"):
    pose.read_keypoints_csv(path)


def _openpose(tmp_path, name, joints, key="pose_keypoints_2d", people=None):
  path = tmp_path / name
  body = people if people is not None else [{key: joints}]
  path.write_text(json.dumps({"version": 1.3, "people": body}))
  return path


def test_read_openpose_coco18(tmp_path):
  kp = _kp_values()
  conf = np.full(18, 0.9)
  conf[[3, 16]] = 0.0  # undetected
  conf[7] = 0.04  # below the threshold
  values = np.concatenate([np.where(kp == MISSING, 0, kp), conf[:, None]], 1).ravel().tolist()
  path = _openpose(tmp_path, "a.json", values)
  got = pose.read_openpose_json(path)
  expected = kp.copy()
  expected[7] = MISSING
  np.testing.assert_array_equal(got, expected)
  np.testing.assert_array_equal(pose.read_keypoints(path), expected)
  np.testing.assert_array_equal(pose.read_openpose_json(path, threshold=0.01)[7], kp[7])
  # The older key name and a second person with no joint found (not chosen).
  path2 = _openpose(
      tmp_path, "b.json", None, people=[{"pose_keypoints": [0] * 54}, {"pose_keypoints": values}]
  )
  np.testing.assert_array_equal(pose.read_openpose_json(path2), expected)
  np.testing.assert_array_equal(pose.read_openpose_json(path2, person=0), np.full((18, 2), -1))
  with pytest.raises(ValueError, match="person 2"):
    pose.read_openpose_json(path2, person=2)


def test_choose_person_most_complete_then_largest():
  small = np.stack([np.arange(18.0), np.arange(18.0)], 1)  # 18 joints in a 17 x 17 box
  large = small * 5  # 18 joints, 85 x 85
  partial = large.copy()
  partial[0] = MISSING  # 17 joints
  assert pose.choose_person([partial, small]) == 1  # more joints beats size
  assert pose.choose_person([small, large, partial]) == 1  # a tie: the larger box
  assert pose.choose_person([small, small.copy()]) == 0  # a full tie: the first


def test_read_openpose_body25(tmp_path):
  body25 = np.zeros((25, 3))
  body25[:, 0] = np.arange(25) * 10  # x encodes the BODY_25 index
  body25[:, 1] = 5
  body25[:, 2] = 0.8
  body25[15, 2] = 0.0  # right eye undetected
  got = pose.read_openpose_json(_openpose(tmp_path, "b25.json", body25.ravel().tolist()))
  coco_from_body25 = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
  expected = np.stack([np.array(coco_from_body25) * 10.0, np.full(18, 5.0)], 1)
  expected[14] = MISSING  # COCO right eye = BODY_25 15
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "text, what",
    [
        ('{"people": []}', "no person"),
        ('{"people": [{"pose_keypoints_2d": [1, 2, 3]}]}', "BODY_25"),
        ('{"people": [{"face_keypoints_2d": []}]}', "pose_keypoints_2d"),
        ('{"people": [{"pose_keypoints_2d": ["a", "b", "c"]}]}', "numeric"),
        ("{not json", "invalid JSON"),
        ('{"people": [[1, 2, 3]]}', "object per person"),
    ],
)
def test_read_openpose_malformed(tmp_path, text, what):
  path = tmp_path / "bad.json"
  path.write_text(text)
  with pytest.raises(ValueError, match=f"bad.json.*{what}"):
    pose.read_openpose_json(path)


def test_read_keypoints_npy_and_unknown(tmp_path):
  kp = _kp_values()
  np.save(tmp_path / "a.npy", kp)
  np.testing.assert_array_equal(pose.read_keypoints(tmp_path / "a.npy"), kp)
  np.save(tmp_path / "bad.npy", np.zeros((18, 3)))
  with pytest.raises(ValueError, match=r"bad.npy.*\(18, 2\).*\(18, 3\)"):
    pose.read_keypoints(tmp_path / "bad.npy")
  (tmp_path / "k.csv").write_text("")
  with pytest.raises(ValueError, match="k.csv.*read_keypoints_csv"):
    pose.read_keypoints(tmp_path / "k.csv")
