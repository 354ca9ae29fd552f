"""InceptionV3 pool3 (2048-d) features for FID, in Flax NNX (NHWC), with two weight sets.

* `pt_inception`: the TF-FID network (Inception 2015-12-05) that pytorch-fid ships as
  `pt_inception-2015-12-05-*.pth`. Its blocks differ from torchvision's: the average pools of the
  A, C and first E blocks exclude padding (`count_include_pad=False`) and the last E block max-pools.
  Input: [0, 1] images, bilinear resize to 299x299, then `2x - 1`.
* `torchvision`: torchvision's ImageNet `inception_v3` state_dict (the network the official PIDM
  script uses). Input: [0, 1] images, bilinear resize to 299x299, then per channel
  `x * (std_c / 0.5) + (mean_c - 0.5) / 0.5` with the ImageNet mean/std (torchvision's
  `transform_input` affine, applied as the PIDM script does).

Both resize with PyTorch's `interpolate(mode='bilinear', align_corners=False)` rule (no antialias),
implemented exactly as two interpolation matrices. Weights come from user files
(`load_inception`); `fc.*`, `AuxLogits.*` and `num_batches_tracked` entries are ignored.
"""

from __future__ import annotations

import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pidm_jax.evaluation import weights as weight_io

NETWORKS = ("pt_inception", "torchvision")
INCEPTION_SIZE = 299
FEATURE_DIM = 2048
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
NETWORK_LABELS = {
    "pt_inception": "InceptionV3 TF-FID weights (pytorch-fid pt_inception-2015-12-05)",
    "torchvision": "InceptionV3 torchvision ImageNet weights (official PIDM script)",
}


class BasicConv2d(nnx.Module):
  """Conv (no bias) + BatchNorm (eps 1e-3, running statistics) + ReLU."""

  def __init__(self, cin, cout, kernel, stride=1, padding=0, *, precision, rngs):
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    padding = (padding, padding) if isinstance(padding, int) else padding
    self.conv = nnx.Conv(
        cin,
        cout,
        kernel,
        strides=stride,
        padding=tuple((p, p) for p in padding),
        use_bias=False,
        precision=precision,
        rngs=rngs,
    )
    self.bn = nnx.BatchNorm(cout, use_running_average=True, epsilon=1e-3, rngs=rngs)

  def __call__(self, x):
    return jax.nn.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x, count_include_pad: bool):
  return nnx.avg_pool(
      x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=count_include_pad
  )


def _max_pool_3x3(x, stride=2, padding="VALID"):
  return nnx.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nnx.Module):

  def __init__(self, cin, pool_features, *, fid, precision, rngs):
    c = dict(precision=precision, rngs=rngs)
    self.fid = fid
    self.branch1x1 = BasicConv2d(cin, 64, 1, **c)
    self.branch5x5_1 = BasicConv2d(cin, 48, 1, **c)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, **c)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, **c)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, **c)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, **c)
    self.branch_pool = BasicConv2d(cin, pool_features, 1, **c)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(_avg_pool_3x3(x, count_include_pad=not self.fid))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):

  def __init__(self, cin, *, precision, rngs):
    c = dict(precision=precision, rngs=rngs)
    self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, **c)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, **c)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, **c)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, **c)

  def __call__(self, x):
    b3 = self.branch3x3(x)
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([b3, bd, _max_pool_3x3(x)], axis=-1)


class InceptionC(nnx.Module):

  def __init__(self, cin, c7, *, fid, precision, rngs):
    c = dict(precision=precision, rngs=rngs)
    self.fid = fid
    self.branch1x1 = BasicConv2d(cin, 192, 1, **c)
    self.branch7x7_1 = BasicConv2d(cin, c7, 1, **c)
    self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), **c)
    self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), **c)
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, **c)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), **c)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), **c)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), **c)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), **c)
    self.branch_pool = BasicConv2d(cin, 192, 1, **c)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = self.branch7x7dbl_1(x)
    for layer in (
        self.branch7x7dbl_2,
        self.branch7x7dbl_3,
        self.branch7x7dbl_4,
        self.branch7x7dbl_5,
    ):
      bd = layer(bd)
    bp = self.branch_pool(_avg_pool_3x3(x, count_include_pad=not self.fid))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):

  def __init__(self, cin, *, precision, rngs):
    c = dict(precision=precision, rngs=rngs)
    self.branch3x3_1 = BasicConv2d(cin, 192, 1, **c)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, **c)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, **c)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), **c)
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), **c)
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, **c)

  def __call__(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = x
    for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b7 = layer(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x)], axis=-1)


class InceptionE(nnx.Module):
  """`pool` is 'avg' (torchvision), 'avg_no_pad' (TF-FID first E block) or 'max' (TF-FID last)."""

  def __init__(self, cin, *, pool, precision, rngs):
    c = dict(precision=precision, rngs=rngs)
    self.pool = pool
    self.branch1x1 = BasicConv2d(cin, 320, 1, **c)
    self.branch3x3_1 = BasicConv2d(cin, 384, 1, **c)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), **c)
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), **c)
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, **c)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, **c)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), **c)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), **c)
    self.branch_pool = BasicConv2d(cin, 192, 1, **c)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b3 = self.branch3x3_1(x)
    b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
    if self.pool == "max":
      pooled = _max_pool_3x3(x, stride=1, padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x, count_include_pad=self.pool == "avg")
    return jnp.concatenate([b1, b3, bd, self.branch_pool(pooled)], axis=-1)


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
  """(out, in) matrix of PyTorch's bilinear `interpolate(align_corners=False)` along one axis."""
  scale = in_size / out_size
  src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  m = np.zeros((out_size, in_size), dtype=np.float64)
  np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(m, (np.arange(out_size), hi), frac)
  return m


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Resizes NHWC images like `torch.nn.functional.interpolate(..., 'bilinear', align_corners=False)`."""
  _, h, w, _ = x.shape
  if (h, w) == tuple(size):
    return x
  mh = jnp.asarray(bilinear_matrix(size[0], h), jnp.float32)
  mw = jnp.asarray(bilinear_matrix(size[1], w), jnp.float32)
  return jnp.einsum("ih,nhwc,jw->nijc", mh, x, mw, precision=jax.lax.Precision.HIGHEST)


class InceptionV3(nnx.Module):
  """InceptionV3 up to the global average pool; `__call__` maps [0, 1] NHWC images to (N, 2048)."""

  def __init__(
      self, network: str = "pt_inception", *, precision=jax.lax.Precision.HIGHEST, rngs: nnx.Rngs
  ):
    if network not in NETWORKS:
      raise ValueError(f"unknown InceptionV3 network {network!r}; expected one of {NETWORKS}")
    self.network = network
    fid = network == "pt_inception"
    c = dict(precision=precision, rngs=rngs)
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, **c)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, **c)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, **c)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, **c)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, **c)
    self.Mixed_5b = InceptionA(192, 32, fid=fid, **c)
    self.Mixed_5c = InceptionA(256, 64, fid=fid, **c)
    self.Mixed_5d = InceptionA(288, 64, fid=fid, **c)
    self.Mixed_6a = InceptionB(288, **c)
    self.Mixed_6b = InceptionC(768, 128, fid=fid, **c)
    self.Mixed_6c = InceptionC(768, 160, fid=fid, **c)
    self.Mixed_6d = InceptionC(768, 160, fid=fid, **c)
    self.Mixed_6e = InceptionC(768, 192, fid=fid, **c)
    self.Mixed_7a = InceptionD(768, **c)
    self.Mixed_7b = InceptionE(1280, pool="avg_no_pad" if fid else "avg", **c)
    self.Mixed_7c = InceptionE(2048, pool="max" if fid else "avg", **c)

  def preprocess(self, images: jax.Array) -> jax.Array:
    """[0, 1] NHWC images -> the network's 299x299 input (resize, then the weight set's affine)."""
    x = resize_bilinear(images.astype(jnp.float32), (INCEPTION_SIZE, INCEPTION_SIZE))
    if self.network == "pt_inception":
      return 2.0 * x - 1.0
    std = jnp.asarray(_IMAGENET_STD, jnp.float32)
    mean = jnp.asarray(_IMAGENET_MEAN, jnp.float32)
    return x * (std / 0.5) + (mean - 0.5) / 0.5

  def __call__(self, images: jax.Array) -> jax.Array:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"InceptionV3 expects NHWC RGB images, got shape {images.shape}")
    x = self.preprocess(images)
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = _max_pool_3x3(x)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = _max_pool_3x3(x)
    for block in (
        self.Mixed_5b,
        self.Mixed_5c,
        self.Mixed_5d,
        self.Mixed_6a,
        self.Mixed_6b,
        self.Mixed_6c,
        self.Mixed_6d,
        self.Mixed_6e,
        self.Mixed_7a,
        self.Mixed_7b,
        self.Mixed_7c,
    ):
      x = block(x)
    return jnp.mean(x, axis=(1, 2))


_IGNORED = re.compile(r"(fc|AuxLogits)\..*|.*\.num_batches_tracked")
_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def inception_params_from_state_dict(flat: dict[str, np.ndarray]) -> dict[tuple, np.ndarray]:
  """Maps torch InceptionV3 keys (`Mixed_5b.branch1x1.conv.weight`, `...bn.running_var`) to paths.

  Keys of the classifier (`fc.*`), the auxiliary head (`AuxLogits.*`) and `num_batches_tracked`
  are dropped; any other key is kept under its own path so that `assign_params` reports it.
  """
  out: dict[tuple, np.ndarray] = {}
  for key, value in flat.items():
    if _IGNORED.fullmatch(key):
      continue
    parts = key.split(".")
    if len(parts) >= 3 and parts[-2] == "conv" and parts[-1] == "weight":
      out[tuple(parts[:-1]) + ("kernel",)] = weight_io.torch_conv_kernel(value)
    elif len(parts) >= 3 and parts[-2] == "bn" and parts[-1] in _BN_NAMES:
      out[tuple(parts[:-1]) + (_BN_NAMES[parts[-1]],)] = value
    else:
      out[tuple(parts)] = value
  return out


@functools.lru_cache(maxsize=4)
def _abstract_inception(network: str, precision) -> InceptionV3:
  return nnx.eval_shape(lambda: InceptionV3(network, precision=precision, rngs=nnx.Rngs(0)))


def load_inception(path, network: str, *, precision=jax.lax.Precision.HIGHEST) -> InceptionV3:
  """Builds an `InceptionV3` of the given `network` ('pt_inception' or 'torchvision') from a file.

  The file is a torch state_dict (`.pth`) or an `.npz` with the same keys.

  Raises:
    ValueError: unknown network, or the file's keys/shapes do not fit that network.
  """
  if network not in NETWORKS:
    raise ValueError(f"unknown InceptionV3 network {network!r}; expected one of {NETWORKS}")
  params = inception_params_from_state_dict(weight_io.read_weight_file(path))
  return weight_io.assign_params(
      _abstract_inception(network, precision),
      params,
      what=f"InceptionV3 ({network}) weights from {os.fspath(path)}",
  )
