"""How images and pose maps travel from the input pipeline to the model, and the one conversion.

The input pipeline hands over uint8 arrays: images as their stored RGB pixels, pose maps as the
official renderer's uint8 values (``pidm_jax.pose.pose_map_uint8``; every pose-map value is k / 255
for an integer k). The model takes float32: images in [-1, 1] as the official ToTensor +
Normalize(0.5, 0.5) gives them ((k / 255 - 0.5) / 0.5, each step in float32), pose maps in [0, 1]
(k / 255 in float32). uint8 is a quarter of the host memory traffic and host -> device transfer of
float32, and the conversion runs on the accelerator, inside the jitted step.

On the device the conversion looks the value up in a 256-entry float32 table computed once with
NumPy's IEEE arithmetic, so it is bit-exact with the official values on every backend. Computing it
there instead would not be: XLA rewrites ``x / 255`` into ``x * (1 / 255)``, which differs in the
last bit for 126 of the 256 values (and regroups multiplications by constants).

Floating-point arrays are taken to be in the model's range already and are returned unchanged, so
batches made by hand in float32 (tests, benchmarks, other data) are accepted as before.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np

IMAGE_KEYS = ("source_image", "target_image")
POSE_KEYS = ("source_pose", "target_pose")
# What the model reads of a pair (the training step needs every one of them).
MODEL_INPUT_KEYS = IMAGE_KEYS + POSE_KEYS


def _image_formula(pixels: np.ndarray) -> np.ndarray:
  """The official normalisation in float32: ToTensor (x / 255) then Normalize ((t - 0.5) / 0.5)."""
  t = np.divide(pixels, np.float32(255), dtype=np.float32)
  t -= np.float32(0.5)
  t /= np.float32(0.5)
  return t


def _pose_formula(values: np.ndarray) -> np.ndarray:
  """The official uint8 -> float tensor conversion of a pose map: x / 255 in float32."""
  return np.divide(values, np.float32(255), dtype=np.float32)


# The value of each uint8 code, for the lookup on the device.
_TABLES = {
    "image": _image_formula(np.arange(256, dtype=np.uint8)),
    "pose": _pose_formula(np.arange(256, dtype=np.uint8)),
}


def _convert(x, formula, kind: str, what: str):
  dtype = np.dtype(x.dtype)
  if np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16":
    return x
  if dtype != np.uint8:
    raise ValueError(
        f"{what}: expected uint8 values (or floating-point values already in the "
        f"model's range), got dtype {dtype}"
    )
  if isinstance(x, (np.ndarray, np.generic)):
    return formula(x)
  return _device_lookup(kind)(x)


@functools.cache
def _device_lookup(kind: str):
  """A jitted ``x -> table[x]`` with the table a constant of the program: it runs where ``x``
  lives, keeps its sharding (also across processes) and is inlined into an enclosing jit."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  table = _TABLES[kind]
  return jax.jit(lambda x: jnp.take(jnp.asarray(table), x, axis=0, mode="clip"))


def image_to_float(image, what: str = "image"):
  """uint8 RGB pixels -> float32 in [-1, 1], bit-identical to the official ToTensor + Normalize.

  Takes a NumPy array (converted on the host) or a ``jax.Array`` / tracer (converted where it
  lives, e.g. inside a jitted step); floating-point input is returned unchanged.
  """
  return _convert(image, _image_formula, "image", what)


def pose_to_float(pose_map, what: str = "pose map"):
  """uint8 pose map -> float32 in [0, 1] (x / 255, bit-identical to the official tensor).

  NumPy or JAX input as in ``image_to_float``; floating-point input is returned unchanged.
  """
  return _convert(pose_map, _pose_formula, "pose", what)


def to_model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
  """A copy of ``batch`` with its images (``IMAGE_KEYS``) and pose maps (``POSE_KEYS``) converted
  to the model's float32 inputs; other entries (keypoints, mask, index) are kept as they are."""
  out = dict(batch)
  for key in IMAGE_KEYS:
    if key in out:
      out[key] = image_to_float(out[key], f"batch[{key!r}]")
  for key in POSE_KEYS:
    if key in out:
      out[key] = pose_to_float(out[key], f"batch[{key!r}]")
  return out


# ------------------------------------------------------------------------------------------------
# Back to pixels: model-range images and pose maps -> uint8 pictures (files, grids, metrics)

ROUNDINGS = ("round", "truncate")


def image_to_uint8(image, rounding: str = "round") -> np.ndarray:
  """Images in [-1, 1] -> uint8 RGB pixels (clipped to [-1, 1] first); uint8 input is returned as
  it is.

  ``rounding``:
    "round": round((x + 1) * 127.5), the inverse of ``image_to_float`` (stored pixels come back
      exactly): grids, sample.py's files.
    "truncate": uint8(255 * ((x + 1) / 2)) in float32, as the official ``gen.py`` saves samples
      (the evaluation protocol's files).
  """
  if rounding not in ROUNDINGS:
    raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
  x = np.asarray(image)
  if x.dtype == np.uint8:
    return x
  x = np.clip(x.astype(np.float32), -1.0, 1.0)
  if rounding == "truncate":
    return (np.float32(255) * ((x + np.float32(1)) / np.float32(2))).astype(np.uint8)
  return np.round((x + np.float32(1)) * np.float32(127.5)).astype(np.uint8)


def pose_to_skeleton(pose_map) -> np.ndarray:
  """A pose map (uint8, or float in [0, 1]) -> its RGB skeleton picture (channels 0-2) as uint8."""
  rgb = np.asarray(pose_map)[..., :3]
  if rgb.dtype == np.uint8:
    return rgb
  return np.round(np.clip(rgb.astype(np.float32), 0.0, 1.0) * np.float32(255)).astype(np.uint8)


def mask_to_uint8(mask) -> np.ndarray:
  """A mask in [0, 1] of shape (..., 1) -> a grey RGB uint8 picture (..., 3)."""
  m = np.round(np.clip(np.asarray(mask, np.float32), 0.0, 1.0) * np.float32(255)).astype(np.uint8)
  return np.repeat(m, 3, axis=-1)


def grid(rows) -> np.ndarray:
  """uint8 RGB tiles of one size laid out in rows (a row may be shorter; ``None`` leaves a tile
  white) -> one uint8 (rows * H, columns * W, 3) picture."""
  tiles = [t for row in rows for t in row if t is not None]
  if not tiles:
    raise ValueError("grid: no tiles")
  height, width = tiles[0].shape[:2]
  for t in tiles:
    if t.shape != (height, width, 3) or t.dtype != np.uint8:
      raise ValueError(
          f"grid: every tile must be uint8 of shape {(height, width, 3)}, got "
          f"{t.dtype} {t.shape}"
      )
  cols = max(len(r) for r in rows)
  out = np.full((len(rows) * height, cols * width, 3), 255, np.uint8)
  for i, row in enumerate(rows):
    for j, tile in enumerate(row):
      if tile is not None:
        out[i * height : (i + 1) * height, j * width : (j + 1) * width] = tile
  return out
