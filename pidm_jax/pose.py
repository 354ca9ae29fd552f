"""Keypoints and the 20-channel PIDM pose map.

Keypoints are always an (18, 2) array of (x, y) pixel coordinates in the OpenPose COCO-18 joint
order (``JOINT_NAMES``); a missing joint is -1 in both coordinates. Pixel centres sit at integer
coordinates, as OpenCV draws them.

The pose map (``pose_map``) is the network's pose input: an (H, W, 20) float32 array in [0, 1]
whose first 3 channels are an RGB skeleton drawing and whose other 17 channels are L1 distance maps
to each limb. It reproduces the official PIDM renderer bit for bit for the same float64 keypoints:
the same OpenCV primitives in the same order, the same integer truncations and the same dtypes at
each step.

This module also reads the keypoint file formats found in the wild (PIDM/NTED text files, PATN/GFLA
CSV, OpenPose JSON, numpy arrays) and applies the geometric transforms of the augmentation (scale,
crop, horizontal flip) to an image and its keypoints together.
"""

from __future__ import annotations

import json
import math
import os
import threading
from typing import Mapping

import cv2
import numpy as np
from PIL import Image

from pidm_jax import encoding

NUM_KEYPOINTS = 18
NUM_LIMBS = 17
POSE_CHANNELS = 3 + NUM_LIMBS
MISSING = -1.0

JOINT_NAMES = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)

# The official colour of joint i and of limb i, as written in the reference code. It draws them on a
# canvas that it later converts from BGR to RGB, so these triples are BGR.
COLORS_BGR = (
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 170),
    (255, 0, 85),
)

# The 17 limbs that are drawn, as (joint, joint) index pairs, in drawing order.
LIMBS = (
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
)

# Right/left joint pairs of COCO-18, swapped by a flip that keeps joint semantics.
LEFT_RIGHT_PAIRS = ((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (14, 15), (16, 17))

JOINT_RADIUS = 4
LIMB_HALF_WIDTH = 4
_BLEND_OLD, _BLEND_NEW = 0.4, 0.6
_DIST_DIVISOR = 3

# OpenPose BODY_25 index of each COCO-18 joint (BODY_25 adds mid-hip at 8 and six foot joints).
_BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)


# ----------------------------------------------------------------------------------------------
# Pose map


def _check_size(height: int, width: int) -> tuple[int, int]:
  h, w = int(height), int(width)
  if h != height or w != width or h <= 0 or w <= 0:
    raise ValueError(
        f"pose map size must be two positive integers, got height={height!r}, " f"width={width!r}"
    )
  return h, w


def _as_keypoints(keypoints, name: str = "keypoints") -> np.ndarray:
  """Returns ``keypoints`` as a float64 (18, 2) array; raises ValueError naming what is wrong."""
  kp = np.asarray(keypoints)
  if kp.shape != (NUM_KEYPOINTS, 2):
    raise ValueError(f"{name}: expected shape ({NUM_KEYPOINTS}, 2) of (x, y), got {kp.shape}")
  if not np.issubdtype(kp.dtype, np.number) or np.issubdtype(kp.dtype, np.complexfloating):
    raise ValueError(f"{name}: expected real numbers, got dtype {kp.dtype}")
  kp = kp.astype(np.float64)
  if not np.all(np.isfinite(kp)):
    raise ValueError(
        f"{name}: expected finite coordinates (-1 for a missing joint), " "got NaN/inf"
    )
  return kp


def _limb_polygon(kp, limb: int) -> np.ndarray | None:
  """The official ellipse polygon of limb ``limb``; None if one of its joints is missing.

  The official code works on float64 numbers: centre = (int(mean x), int(mean y)), half axes
  (int(length / 2), 4), angle int(degrees(atan2(dy, dx))), sampled every degree. ``kp`` holds
  (x, y) float64 pairs: Python floats (faster) give the same results as NumPy float64 scalars,
  as both round each operation the same way and both compute ``**`` with the C library's pow.
  """
  a, b = LIMBS[limb]
  (xa, ya), (xb, yb) = kp[a], kp[b]
  if MISSING in (xa, ya, xb, yb):
    return None
  dx, dy = xa - xb, ya - yb
  length = (dy**2 + dx**2) ** 0.5
  angle = math.degrees(math.atan2(dy, dx))
  centre = (int((xa + xb) / 2), int((ya + yb) / 2))
  return cv2.ellipse2Poly(centre, (int(length / 2), LIMB_HALF_WIDTH), int(angle), 0, 360, 1)


def _blend_luts() -> tuple[np.ndarray, ...]:
  """Per limb, a (256, 1, 3) table: canvas value v -> addWeighted(v, 0.4, colour, 0.6, 0).

  The blend is elementwise, so looking it up gives what cv2.addWeighted gives on the whole canvas.
  """
  values = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)
  luts = []
  for colour in COLORS_BGR[:NUM_LIMBS]:
    painted = np.empty_like(values)
    painted[:] = colour
    luts.append(cv2.addWeighted(values, _BLEND_OLD, painted, _BLEND_NEW, 0))
  return tuple(luts)


_BLEND_LUTS = _blend_luts()


def _distance_dtype(height: int, width: int):
  """An integer dtype that holds every L1 distance inside a ``height`` x ``width`` image."""
  return np.uint16 if height + width <= np.iinfo(np.uint16).max else np.int32


def _limb_distance_map(
    mask: np.ndarray, box: tuple[int, int, int, int], dist: np.ndarray, out: np.ndarray
) -> None:
  """Writes uint8(min(floor(d / 3), 255)) into ``out`` (H, W), d the L1 distance to the mask.

  ``mask`` (nonzero = limb) covers the rectangle ``box`` = (x0, y0, x1, y1) of the image and
  holds every limb pixel. The official code runs cv2.distanceTransform (DIST_L1: the exact L1
  distance) on the whole image; here it runs on the rectangle only, and the rest follows exactly:
  for a pixel p outside it, with c(p) = p clamped into the rectangle, |p - s| = |p - c(p)| +
  |c(p) - s| for every limb pixel s, so d(p) = |p - c(p)|_1 + d(c(p)). ``dist`` is (H, W)
  integer scratch space.
  """
  x0, y0, x1, y1 = box
  height, width = dist.shape
  inner = cv2.distanceTransform(cv2.bitwise_not(mask), cv2.DIST_L1, 3).astype(dist.dtype)
  ramp = np.arange(max(height, width) + 1, dtype=dist.dtype)
  rows = dist[y0:y1]
  rows[:, x0:x1] = inner
  np.add(inner[:, :1], ramp[x0:0:-1], out=rows[:, :x0])
  np.add(inner[:, -1:], ramp[1 : width - x1 + 1], out=rows[:, x1:])
  np.add(rows[0], ramp[y0:0:-1, None], out=dist[:y0])
  np.add(rows[-1], ramp[1 : height - y1 + 1, None], out=dist[y1:])
  # uint8(d / 3) = floor(d / 3) = round(|(d - 1) / 3|), saturated to 255, in one pass.
  cv2.convertScaleAbs(dist, dst=out, alpha=1.0 / _DIST_DIVISOR, beta=-1.0 / _DIST_DIVISOR)


_SCRATCH = threading.local()


def _scratch(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """This thread's reusable work arrays for maps of one size: the channel-major planes
  (20, H * W) uint8 and the distances (H, W). Fresh large arrays cost page faults on every call;
  each thread (grain reads with several) keeps its own."""
  cache = getattr(_SCRATCH, "arrays", None)
  if cache is None or cache[0] != (height, width):
    cache = (
        (height, width),
        np.empty((POSE_CHANNELS, height * width), np.uint8),
        np.empty((height, width), _distance_dtype(height, width)),
    )
    _SCRATCH.arrays = cache
  return cache[1], cache[2]


def _render(
    kp: np.ndarray, height: int, width: int, out: np.ndarray | None = None, mirror: bool = False
) -> np.ndarray:
  """The uint8 pose map (H, W, 20) in the official channel order (mirrored left-right after
  drawing with ``mirror``).

  Follows the official renderer step by step, with shortcuts that give identical results (the
  tests compare with a literal transcription): each limb's ellipse is rasterised only in a
  rectangle around it (its polygon moved by whole pixels, so the same pixels are filled; the
  rectangle reaches the image edge wherever the polygon does, so OpenCV clips it the same way);
  the 0.4/0.6 blend of the canvas with its painted copy is looked up, and only inside the ellipse
  (elsewhere the copy equals the canvas and the blend is the identity); distances are computed in
  the rectangle and extended (``_limb_distance_map``); a limb without any pixel in the image gets
  the constant 255 (its distance transform is FLT_MAX everywhere, clipped to 255). (The official
  code also blends each limb mask with itself: a 0/255 mask stays unchanged.)
  """
  kp = kp.tolist()
  canvas = np.zeros((height, width, 3), np.uint8)
  for joint, (x, y) in enumerate(kp):
    if x == MISSING or y == MISSING:
      continue
    cv2.circle(canvas, (int(x), int(y)), JOINT_RADIUS, COLORS_BGR[joint], thickness=-1)
  # Channel-major while drawing (each map one contiguous row); transposed once at the end.
  planes, dist = _scratch(height, width)
  for limb in range(NUM_LIMBS):
    polygon = _limb_polygon(kp, limb)
    drawn = False
    if polygon is not None:
      # A box around the polygon's vertices, with a margin, holds every filled pixel.
      px, py, pw, ph = cv2.boundingRect(polygon)
      x0, y0 = max(px - 2, 0), max(py - 2, 0)
      x1, y1 = min(px + pw + 2, width), min(py + ph + 2, height)
      if x0 < x1 and y0 < y1:
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillConvexPoly(mask, polygon - np.array([x0, y0], np.int32), 255)
        drawn = cv2.countNonZero(mask) > 0
    if drawn:
      old = canvas[y0:y1, x0:x1]
      blended = cv2.LUT(old, _BLEND_LUTS[limb])
      canvas[y0:y1, x0:x1] = cv2.copyTo(blended, mask, old.copy())
    limb_map = planes[3 + limb].reshape(height, width)
    if drawn:
      _limb_distance_map(mask, (x0, y0, x1, y1), dist, limb_map)
    else:
      limb_map.fill(255)
  for channel in range(3):  # BGR -> RGB
    planes[channel] = canvas[..., 2 - channel].reshape(-1)
  if mirror:  # every row of every channel reversed, in place
    rows = planes.reshape(POSE_CHANNELS * height, width)
    cv2.flip(rows, 1, dst=rows)
  if out is None:
    out = np.empty((height, width, POSE_CHANNELS), np.uint8)
  cv2.transpose(planes, dst=out.reshape(height * width, POSE_CHANNELS))
  return out


def pose_map_uint8(
    keypoints, height: int, width: int, *, mirror: bool = False, out: np.ndarray | None = None
) -> np.ndarray:
  """The official 20-channel pose map as the uint8 values it is made of: (height, width, 20).

  ``pose_map`` is this divided by 255 in float32; the input pipeline carries this form and the
  model's step converts it (``pidm_jax.encoding.pose_to_float``). Arguments as ``pose_map``;
  ``mirror`` returns the rendered map mirrored left-right (``[:, ::-1]``, as the official flip
  augmentation does, but contiguous and cheaper); ``out``, a C-contiguous uint8 (height, width,
  20) array, receives the map (and is returned) instead of a new array.
  """
  h, w = _check_size(height, width)
  if out is not None and (
      not isinstance(out, np.ndarray)
      or out.dtype != np.uint8
      or out.shape != (h, w, POSE_CHANNELS)
      or not out.flags.c_contiguous
  ):
    raise ValueError(
        f"out: expected a C-contiguous uint8 array of shape {(h, w, POSE_CHANNELS)}"
        f", got {getattr(out, 'dtype', type(out))} {getattr(out, 'shape', '')}"
    )
  return _render(_as_keypoints(keypoints), h, w, out=out, mirror=bool(mirror))


def pose_map(keypoints, height: int, width: int) -> np.ndarray:
  """Renders the official 20-channel PIDM pose map.

  Args:
    keypoints: (18, 2) (x, y) in the output frame (pixels of the ``height`` x ``width`` image), -1
      for a missing joint. Non-integer coordinates are fine; they are used as float64, like the
      official code, which reads them with ``np.loadtxt``.
    height, width: size of the map.

  Returns:
    (height, width, 20) float32 in [0, 1]. Channels 0-2: RGB skeleton (joint circles of radius 4,
    then each limb's ellipse blended 0.4 old / 0.6 new onto the canvas), divided by 255. Channels
    3-19: for each of the 17 limbs, the L1 distance (OpenCV DIST_L1) to the limb's ellipse,
    divided by 3, truncated to uint8 and divided by 255; a limb with a missing end gives a map of
    1.0.
  """
  # float32 division, as the official uint8 -> float tensor conversion.
  return encoding.pose_to_float(pose_map_uint8(keypoints, height, width))


# ----------------------------------------------------------------------------------------------
# Keypoint transforms


def _missing(kp: np.ndarray) -> np.ndarray:
  """(18,) bool: joints with a -1 coordinate."""
  return np.any(kp == MISSING, axis=-1)


def _finish(kp64: np.ndarray, missing: np.ndarray, like: np.ndarray) -> np.ndarray:
  kp64[missing] = MISSING
  dtype = like.dtype if np.issubdtype(like.dtype, np.floating) else np.float64
  return kp64.astype(dtype)


def deepfashion_to_frame(
    keypoints,
    height: int = 256,
    width: int = 256,
    scaled_size: tuple[int, int] | None = None,
    crop_offset: tuple[int, int] = (0, 0),
) -> np.ndarray:
  """Maps DeepFashion keypoints (256x256 padded frame, person in columns 40..216) to an image.

  Without augmentation x' = (x - 40) * W / 176 and y' = y * H / 256 for an image of ``height`` x
  ``width`` (the official stretched 256x256 frame by default). ``scaled_size`` (new_h, new_w) and
  ``crop_offset`` (x, y) add the official scale-and-crop augmentation in the same float64
  expression the official code uses, so pose maps drawn from the result match it exactly. Missing
  joints stay -1.
  """
  src = np.asarray(keypoints)
  kp = _as_keypoints(src)
  missing = _missing(kp)
  scale_w = 1.0 / 176.0 * width
  scale_h = 1.0 / 256.0 * height
  if scaled_size is not None:
    new_h, new_w = scaled_size
    scale_w = scale_w / width * new_w
    scale_h = scale_h / height * new_h
  out = np.empty_like(kp)
  out[:, 0] = (kp[:, 0] - 40) * scale_w - crop_offset[0]
  out[:, 1] = kp[:, 1] * scale_h - crop_offset[1]
  return _finish(out, missing, src)


def scale_keypoints(keypoints, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
  """Keypoints of an image resized from ``from_size`` to ``to_size`` ((h, w)): x * new_w / w."""
  src = np.asarray(keypoints)
  kp = _as_keypoints(src)
  missing = _missing(kp)
  out = kp * np.array([to_size[1] / from_size[1], to_size[0] / from_size[0]])
  return _finish(out, missing, src)


def crop_keypoints(keypoints, offset: tuple[int, int]) -> np.ndarray:
  """Keypoints of an image cropped at ``offset`` (x, y): subtracts the offset."""
  src = np.asarray(keypoints)
  kp = _as_keypoints(src)
  missing = _missing(kp)
  return _finish(kp - np.array(offset, np.float64), missing, src)


def flip_keypoints(keypoints, width: int, swap_left_right: bool = False) -> np.ndarray:
  """Keypoints of an image mirrored left-right: x' = width - 1 - x.

  ``swap_left_right`` also exchanges the left and right joints, so that joint 2 stays the right
  shoulder of the mirrored person. The official training code does not swap (default False).
  """
  src = np.asarray(keypoints)
  kp = _as_keypoints(src)
  missing = _missing(kp)
  out = kp.copy()
  out[:, 0] = (width - 1) - kp[:, 0]
  if swap_left_right:
    order = np.arange(NUM_KEYPOINTS)
    for r, l in LEFT_RIGHT_PAIRS:
      order[r], order[l] = l, r
    out, missing = out[order], missing[order]
  return _finish(out, missing, src)


def _check_image(image, name: str = "image") -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.dtype != np.uint8:
    raise ValueError(
        f"{name}: expected a uint8 (H, W, C) array, got {image.dtype} " f"{image.shape}"
    )
  return image


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes a uint8 HWC image to ``size`` (h, w) with PIL bicubic, as the official code does."""
  image = _check_image(image)
  h, w = size
  if image.shape[2] == 1:
    return np.asarray(Image.fromarray(image[..., 0]).resize((w, h), Image.BICUBIC))[..., None]
  return np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))


def scale_crop(
    image: np.ndarray, keypoints, scaled_size: tuple[int, int], crop_offset: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
  """Resizes an image to ``scaled_size`` (h, w) and crops its own size at ``crop_offset`` (x, y).

  The keypoints get the same transform. Resizing is PIL bicubic (the official choice).
  """
  image = _check_image(image)
  h, w = image.shape[:2]
  new_h, new_w = scaled_size
  x0, y0 = crop_offset
  if not (0 <= x0 <= new_w - w and 0 <= y0 <= new_h - h):
    raise ValueError(
        f"crop_offset {crop_offset} does not fit a {w}x{h} crop in a " f"{new_w}x{new_h} image"
    )
  if (new_h, new_w) != (h, w):
    image = resize_image(image, (new_h, new_w))
  image = np.ascontiguousarray(image[y0 : y0 + h, x0 : x0 + w])
  keypoints = crop_keypoints(scale_keypoints(keypoints, (h, w), (new_h, new_w)), (x0, y0))
  return image, keypoints


def random_scale_crop_params(
    height: int, width: int, rng: np.random.Generator, max_scale: float = 0.05
) -> tuple[tuple[int, int], tuple[int, int]]:
  """Draws the official augmentation: s ~ U[0, max_scale), size (floor(h(1+s)), floor(w(1+s))).

  Returns (scaled_size (h, w), crop_offset (x, y)) with the offset uniform over the integers
  [0, new - old]. Draws s, x, y from ``rng`` in that order.
  """
  s = rng.uniform(0.0, max_scale) if max_scale > 0 else 0.0
  new_w = int(width * (1.0 + s))
  new_h = int(height * (1.0 + s))
  x0 = int(rng.integers(0, max(0, new_w - width), endpoint=True))
  y0 = int(rng.integers(0, max(0, new_h - height), endpoint=True))
  return (new_h, new_w), (x0, y0)


# ----------------------------------------------------------------------------------------------
# Keypoint files


def _fail(path, expected: str, got: str) -> ValueError:
  return ValueError(f"{os.fspath(path)}: expected {expected}, got {got}")


def _to_keypoints(values, path, expected: str, dtype) -> np.ndarray:
  try:
    kp = np.asarray(values, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise _fail(path, expected, f"non-numeric values ({e})") from None
  if kp.shape != (NUM_KEYPOINTS, 2):
    raise _fail(path, expected, f"shape {kp.shape}")
  if not np.all(np.isfinite(kp)):
    raise _fail(path, expected, "NaN or infinite values")
  return kp.astype(dtype)


def read_keypoints_txt(path, dtype=np.float32) -> np.ndarray:
  """Reads a PIDM/NTED keypoint file: 18 lines of ``x y`` (whitespace separated), -1 missing."""
  expected = f"{NUM_KEYPOINTS} lines of 'x y'"
  try:
    with open(path, encoding="utf-8") as f:
      rows = [line.split() for line in f if line.strip()]
  except UnicodeDecodeError:
    raise _fail(path, expected, "a binary file") from None
  if len(rows) != NUM_KEYPOINTS or any(len(r) != 2 for r in rows):
    raise _fail(path, expected, f"{len(rows)} lines of {sorted({len(r) for r in rows})} values")
  return _to_keypoints(rows, path, expected, dtype)


def read_keypoints_csv(path, dtype=np.float32) -> dict[str, np.ndarray]:
  """Reads a PATN/GFLA annotation CSV: ``name:[y0, ..., y17]:[x0, ..., x17]`` per line.

  An optional header line ``name:keypoints_y:keypoints_x`` is skipped. Returns a dict
  name -> (18, 2) (x, y).
  """
  out: dict[str, np.ndarray] = {}
  expected = f"'name:[{NUM_KEYPOINTS} y values]:[{NUM_KEYPOINTS} x values]' per line"
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      line = line.strip()
      header = number == 1 and line.replace(" ", "") == "name:keypoints_y:keypoints_x"
      if not line or header:
        continue
      where = f"{os.fspath(path)} line {number}"
      parts = line.split(":")
      if len(parts) != 3:
        raise _fail(where, expected, repr(line[:80]))
      name = parts[0].strip()
      try:
        ys, xs = json.loads(parts[1]), json.loads(parts[2])
      except json.JSONDecodeError:
        raise _fail(where, expected, repr(line[:80])) from None
      if not (isinstance(ys, list) and isinstance(xs, list)) or len(ys) != len(xs):
        raise _fail(where, expected, repr(line[:80]))
      if name in out:
        raise ValueError(f"{where}: image {name!r} is listed twice")
      out[name] = _to_keypoints(list(zip(xs, ys)), where, expected, dtype)
  return out


def choose_person(people) -> int:
  """The index of the most complete skeleton among (18, 2) keypoint arrays (most joints found);
  on a tie, the one whose found joints span the largest box (the nearest person, usually)."""

  def score(kp):
    kp = np.asarray(kp, np.float64)
    found = kp[np.all(kp != MISSING, axis=-1)]
    area = float(np.prod(found.max(0) - found.min(0))) if len(found) > 1 else 0.0
    return (len(found), area)

  scores = [score(kp) for kp in people]
  return max(range(len(people)), key=lambda i: (scores[i], -i))


def read_openpose_json(
    path, threshold: float = 0.05, dtype=np.float32, person: int | None = None
) -> np.ndarray:
  """Reads one person of an OpenPose JSON file (COCO-18 or BODY_25 ``pose_keypoints_2d``):
  ``person`` (0-based), by default the most complete skeleton (``choose_person``).

  BODY_25 joints are mapped to the 18 COCO joints (mid-hip and feet dropped). A joint with
  confidence below ``threshold`` (OpenPose writes 0 for undetected joints) is missing (-1).
  """
  people = read_openpose_people(path, threshold, dtype)
  if person is None:
    return people[choose_person(people)]
  if not 0 <= person < len(people):
    raise _fail(path, f"a person {person} (0-based)", f"{len(people)} person(s)")
  return people[person]


def read_openpose_people(path, threshold: float = 0.05, dtype=np.float32) -> list[np.ndarray]:
  """Every person of an OpenPose JSON file as (18, 2) keypoints, in the file's order."""
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise _fail(path, "OpenPose JSON", f"invalid JSON ({e})") from None
  people = data.get("people") if isinstance(data, Mapping) else None
  if not people or not isinstance(people, list):
    raise _fail(path, "an OpenPose JSON with at least one entry in 'people'", "no person")
  return [_openpose_person(path, person, k, threshold, dtype) for k, person in enumerate(people)]


def _openpose_person(path, person, k: int, threshold: float, dtype) -> np.ndarray:
  if not isinstance(person, Mapping):
    raise _fail(path, "an object per person in 'people'", repr(person)[:80])
  values = person.get("pose_keypoints_2d", person.get("pose_keypoints"))
  if values is None:
    raise _fail(path, f"'pose_keypoints_2d' in person {k}", f"keys {sorted(person)}")
  try:
    values = np.asarray(values, dtype=np.float64)
  except (TypeError, ValueError):
    raise _fail(path, "numeric pose_keypoints_2d", "non-numeric values") from None
  if values.shape == (NUM_KEYPOINTS * 3,):
    joints = values.reshape(NUM_KEYPOINTS, 3)
  elif values.shape == (25 * 3,):
    joints = values.reshape(25, 3)[list(_BODY25_TO_COCO18)]
  else:
    raise _fail(
        path, "18*3 (COCO-18) or 25*3 (BODY_25) pose_keypoints_2d values", f"shape {values.shape}"
    )
  kp = joints[:, :2].copy()
  kp[joints[:, 2] < threshold] = MISSING
  return _to_keypoints(kp, path, "finite coordinates", dtype)


def read_keypoints(path, dtype=np.float32) -> np.ndarray:
  """Reads one image's keypoints: ``.txt`` (PIDM/NTED), ``.json`` (OpenPose), ``.npy`` (18, 2)."""
  ext = os.path.splitext(os.fspath(path))[1].lower()
  if ext == ".txt":
    return read_keypoints_txt(path, dtype)
  if ext == ".json":
    return read_openpose_json(path, dtype=dtype)
  if ext == ".npy":
    try:
      array = np.load(path, allow_pickle=False)
    except ValueError as e:
      raise _fail(
          path, f"a numpy ({NUM_KEYPOINTS}, 2) array", f"an unreadable file ({e})"
      ) from None
    if array.dtype.kind not in "iuf":
      raise _fail(path, f"a numeric ({NUM_KEYPOINTS}, 2) array", f"dtype {array.dtype}")
    return _to_keypoints(array, path, f"a numpy ({NUM_KEYPOINTS}, 2) array of (x, y)", dtype)
  raise ValueError(
      f"{os.fspath(path)}: unknown keypoint file type {ext!r}; expected .txt "
      "(18 lines of 'x y'), .json (OpenPose) or .npy ((18, 2) array); a PATN/GFLA "
      ".csv holds many images: use read_keypoints_csv"
  )
