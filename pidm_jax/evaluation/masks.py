"""Market-1501 body masks for Mask-SSIM and Mask-LPIPS, from the target keypoints.

As in the PATN/GFLA/PIDM metric scripts: in the 128x64 frame of the annotation CSV, fill a polygon
of half-width 4 around every limb of a 23-limb list (both joints present), a disc of radius 4 at
every present joint, then close the mask with a 5x5 dilation followed by a 5x5 erosion. Keypoints
come from the PATN/GFLA CSV (`name:[y0, ..., y17]:[x0, ..., x17]`, -1 for a missing joint); the
mask of a pair is the one of its ground-truth (target) image, looked up by file name.

Needs scikit-image (its `polygon`/`disk` rasterisation and morphology, as the original scripts).
"""

from __future__ import annotations

import os

import numpy as np

from pidm_jax import pose

MARKET_SIZE = (128, 64)
MISSING = -1
# 1-based joint pairs of the original scripts (OpenPose COCO-18 order).
_LIMBS_1_BASED = (
    (2, 3),
    (2, 6),
    (3, 4),
    (4, 5),
    (6, 7),
    (7, 8),
    (2, 9),
    (9, 10),
    (10, 11),
    (2, 12),
    (12, 13),
    (13, 14),
    (2, 1),
    (1, 15),
    (15, 17),
    (1, 16),
    (16, 18),
    (2, 17),
    (2, 18),
    (9, 12),
    (12, 6),
    (9, 3),
    (17, 18),
)
MASK_LIMBS = tuple((a - 1, b - 1) for a, b in _LIMBS_1_BASED)


def read_annotation_csv(path) -> dict[str, np.ndarray]:
  """Reads a PATN/GFLA keypoint CSV into {image name: (18, 2) float64 (y, x)} (-1 = missing).

  Parsing (and its errors, which name the file and line) is `pidm_jax.pose.read_keypoints_csv`;
  this only reorders its (x, y) columns to the (row, column) order the mask drawing uses.
  """
  table = pose.read_keypoints_csv(path, dtype=np.float64)
  return {name: kp[:, ::-1].copy() for name, kp in table.items()}


def body_mask(keypoints_yx, size: tuple[int, int] = MARKET_SIZE, radius: int = 4) -> np.ndarray:
  """Boolean (H, W) body mask from (18, 2) (y, x) keypoints, -1 marking a missing joint."""
  try:
    from skimage.draw import disk, polygon
    from skimage.morphology import dilation, erosion
  except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError("Market-1501 masks need scikit-image (pip install scikit-image)") from err
  kp = np.asarray(keypoints_yx, np.float64)
  mask = np.zeros(size, dtype=bool)
  present = ~np.any(kp == MISSING, axis=-1)
  for a, b in MASK_LIMBS:
    if not (present[a] and present[b]):
      continue
    normal = kp[a] - kp[b]
    normal = np.array([-normal[1], normal[0]])
    length = np.linalg.norm(normal)
    if length == 0:
      continue  # both joints at one point: the joint discs cover it
    normal = radius * normal / length
    corners = np.array([kp[a] + normal, kp[a] - normal, kp[b] - normal, kp[b] + normal])
    rr, cc = polygon(corners[:, 0], corners[:, 1], shape=size)
    mask[rr, cc] = True
  for joint in np.flatnonzero(present):
    rr, cc = disk((kp[joint, 0], kp[joint, 1]), radius, shape=size)
    mask[rr, cc] = True
  footprint = np.ones((5, 5), dtype=bool)
  return erosion(dilation(mask, footprint), footprint)


def check_annotations(
    ground_truth_files, table: dict[str, np.ndarray], csv_path, size: tuple[int, int]
) -> None:
  """Checks that masks can be drawn for every ground-truth file before any work is done.

  Raises:
    ValueError: the evaluation size is not the 128x64 annotation frame, or some ground-truth
      names are not in the CSV (first few listed, with the count).
  """
  if tuple(size) != MARKET_SIZE:
    raise ValueError(
        f"Market-1501 masks are drawn in the {MARKET_SIZE[0]}x{MARKET_SIZE[1]} annotation frame; "
        f"evaluate at --size {MARKET_SIZE[0]}x{MARKET_SIZE[1]} (got {size[0]}x{size[1]})"
    )
  names = sorted({os.path.basename(p) for p in ground_truth_files} - set(table))
  if names:
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
    raise ValueError(
        f"{len(names)} ground-truth image(s) have no keypoints in "
        f"{os.fspath(csv_path)}: {shown}"
    )


def masks_for(
    ground_truth_files, table: dict[str, np.ndarray], size: tuple[int, int] = MARKET_SIZE
) -> np.ndarray:
  """Float32 body masks (N, H, W, 1) of ground-truth files, by file name in `table`."""
  return np.stack(
      [body_mask(table[os.path.basename(p)], size)[..., None] for p in ground_truth_files]
  ).astype(np.float32)
