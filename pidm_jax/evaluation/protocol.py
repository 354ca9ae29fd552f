"""The evaluation protocol's file handling: listing, matching generated to ground truth, resizing.

* Sizes are written `HxW` (`256x176` = 256 high, 176 wide, the DeepFashion protocol; `128x64` for
  Market-1501).
* Matching: the official PIDM/GFLA naming saves an output as `<source>_2_<target>_vis.png`; its
  ground truth is the file whose stem is `<target>` (GFLA, Market-1501) or `deep<target>` (PIDM's
  DeepFashion folders, whose outputs are named `fashion...` and ground truths `deepfashion...`).
  Any other generated file is matched to the ground-truth file with the same stem.
* Resizing: as the official metric script does for FID and LPIPS, each image is converted to float32
  and resized with OpenCV's bilinear `cv2.resize` to W x H (no rounding back to uint8). Images
  already at the size are left as they are.
"""

from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
GROUND_TRUTH_PREFIXES = ("", "deep")


class MatchError(ValueError):
  """Generated files that have no ground truth (or ambiguous ones)."""


def parse_size(text: str) -> tuple[int, int]:
  """'256x176' -> (256, 176) as (height, width)."""
  parts = str(text).lower().split("x")
  if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
    raise ValueError(
        f"size must be HEIGHTxWIDTH with positive integers, e.g. 256x176; got {text!r}"
    )
  return int(parts[0]), int(parts[1])


def resize_rule(size: tuple[int, int]) -> str:
  """A string naming the resize the protocol applies (part of the FID statistics cache key)."""
  return f"cv2.resize INTER_LINEAR float32 to {size[0]}x{size[1]} (HxW)"


def list_images(folder) -> list[str]:
  """Sorted image files (by extension) directly inside `folder`.

  Raises:
    FileNotFoundError: `folder` is not a directory.
    ValueError: it holds no image files.
  """
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"image folder not found: {folder}")
  files = sorted(
      os.path.join(folder, name)
      for name in os.listdir(folder)
      if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, name))
  )
  if not files:
    raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
  return files


def target_stem(generated_name: str) -> str | None:
  """'<src>_2_<tgt>_vis.png' -> '<tgt>'; None for names not in the official format."""
  stem = os.path.splitext(os.path.basename(generated_name))[0]
  if "_2_" not in stem or not stem.endswith("_vis"):
    return None
  return stem.split("_2_")[-1][: -len("_vis")]


@dataclasses.dataclass(frozen=True)
class Pair:
  """One generated image and its ground truth."""

  generated: str
  ground_truth: str


def _summary(items, limit=5) -> str:
  shown = ", ".join(items[:limit])
  return shown + (f", ... ({len(items)} in all)" if len(items) > limit else f" ({len(items)})")


def match_pairs(generated_dir, ground_truth_dir) -> list[Pair]:
  """Matches every generated image to its ground truth by name (see the module docstring).

  Ground-truth files without a generated counterpart are allowed (one target can have several
  sources, and a subset may be evaluated); a generated file without a ground truth is not.

  Raises:
    MatchError: listing the first few unmatched (or ambiguously matched) generated files and how
      many there are.
  """
  generated = list_images(generated_dir)
  by_stem: dict[str, list[str]] = {}
  for path in list_images(ground_truth_dir):
    by_stem.setdefault(os.path.splitext(os.path.basename(path))[0], []).append(path)
  pairs, missing, ambiguous = [], [], []
  for path in generated:
    name = os.path.basename(path)
    target = target_stem(name)
    if target is None:
      candidates = [os.path.splitext(name)[0]]
    else:
      candidates = [prefix + target for prefix in GROUND_TRUTH_PREFIXES]
    found = [p for stem in candidates for p in by_stem.get(stem, [])]
    if not found:
      missing.append(name)
    elif len(found) > 1:
      ambiguous.append(f"{name} -> {', '.join(os.path.basename(p) for p in found)}")
    else:
      pairs.append(Pair(path, found[0]))
  problems = []
  if missing:
    problems.append(
        f"{len(missing)} generated file(s) in {os.fspath(generated_dir)} have no ground truth in "
        f"{os.fspath(ground_truth_dir)} (looked for the same stem, or for '<src>_2_<tgt>_vis' "
        f"names the stem '<tgt>' or 'deep<tgt>'): {_summary(missing)}"
    )
  if ambiguous:
    problems.append(
        f"{len(ambiguous)} generated file(s) match several ground-truth files: "
        f"{_summary(ambiguous)}"
    )
  if problems:
    raise MatchError("; ".join(problems))
  return pairs


def load_image(path) -> np.ndarray:
  """Reads an image file as uint8 RGB (H, W, 3); greyscale and RGBA are converted to RGB.

  Raises:
    ValueError: the file cannot be decoded as an image.
  """
  try:
    with Image.open(path) as img:
      return np.asarray(img.convert("RGB"), dtype=np.uint8)
  except (OSError, ValueError) as err:
    raise ValueError(f"cannot read image {os.fspath(path)}: {err}") from err


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """float32 [0, 255] image of shape (H, W, 3): `cv2.resize(image.astype(float32), (W, H))`."""
  image = image.astype(np.float32)
  if image.shape[:2] == tuple(size):
    return image
  return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def load_resized(path, size: tuple[int, int]) -> np.ndarray:
  """`resize(load_image(path), size)`."""
  return resize(load_image(path), size)
