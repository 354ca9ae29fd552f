"""Building blocks of the PIDM networks (Flax NNX, NHWC).

Everything here follows section 1 of the official-model reference: the sinusoidal timestep
embedding (cos before sin), the ResBlock with FiLM scale-shift conditioning and ResBlock
up/down-sampling, and the "texture diffusion" cross-attention block (queries from the
GroupNorm'ed denoiser feature, keys/values from the raw encoder feature, one head).

Parameters are created in ``param_dtype`` (float32) with the PyTorch default initialisation
(uniform in +-1/sqrt(fan_in) for weights and biases) so that a model trained from scratch here
behaves like the official one; the layers the official code zero-initialises are zero here too.
Every parameter carries logical axis names (``out_sharding`` metadata, resolved to mesh axes by
:mod:`pidm_jax.sharding`). Compute runs in ``dtype``; GroupNorm statistics and the attention
softmax run in float32.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
Dtype = Any

# Logical axis names of every parameter kind. ``pidm_jax.sharding`` maps them to mesh axes.
CONV_KERNEL_AXES = ("conv_height", "conv_width", "conv_in", "conv_out")
CONV_BIAS_AXES = ("conv_out",)
DENSE_KERNEL_AXES = ("dense_in", "dense_out")
DENSE_BIAS_AXES = ("dense_out",)
NORM_AXES = ("norm",)
# Every logical axis name above; config.sharding.rules maps them to mesh axes.
LOGICAL_AXES = tuple(
    dict.fromkeys(
        CONV_KERNEL_AXES + CONV_BIAS_AXES + DENSE_KERNEL_AXES + DENSE_BIAS_AXES + NORM_AXES
    )
)


def _metadata(axes: Sequence[str]) -> dict:
  # Eager sharding is off: logical names are resolved to mesh axes by pidm_jax.sharding when the
  # parameters are created under jit with explicit output shardings.
  return {"out_sharding": tuple(axes), "eager_sharding": False}


def torch_uniform_init(fan_in: int) -> Callable[..., Array]:
  """PyTorch's default Conv/Linear initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  (kaiming_uniform with a=sqrt(5) for weights gives the same bound as the bias rule.)
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    zero_init: bool = False,
    dtype: Dtype,
    param_dtype: Dtype,
    rngs: nnx.Rngs,
) -> nnx.Conv:
  """A stride-1 conv with 'same' padding (PyTorch padding = k // 2), torch-style init."""
  pad = kernel_size // 2
  init = nnx.initializers.zeros if zero_init else torch_uniform_init(in_features * kernel_size**2)
  return nnx.Conv(
      in_features,
      out_features,
      (kernel_size, kernel_size),
      padding=((pad, pad), (pad, pad)),
      dtype=dtype,
      param_dtype=param_dtype,
      kernel_init=init,
      bias_init=init,
      kernel_metadata=_metadata(CONV_KERNEL_AXES),
      bias_metadata=_metadata(CONV_BIAS_AXES),
      rngs=rngs,
  )


def dense(
    in_features: int,
    out_features: int,
    *,
    zero_init: bool = False,
    dtype: Dtype,
    param_dtype: Dtype,
    rngs: nnx.Rngs,
) -> nnx.Linear:
  """A Linear layer (also used for the official 1x1 Conv1d attention projections)."""
  init = nnx.initializers.zeros if zero_init else torch_uniform_init(in_features)
  return nnx.Linear(
      in_features,
      out_features,
      dtype=dtype,
      param_dtype=param_dtype,
      kernel_init=init,
      bias_init=init,
      kernel_metadata=_metadata(DENSE_KERNEL_AXES),
      bias_metadata=_metadata(DENSE_BIAS_AXES),
      rngs=rngs,
  )


class GroupNorm32(nnx.Module):
  """GroupNorm with PyTorch semantics: contiguous channel groups, eps 1e-5, float32 statistics.

  The output is cast back to ``dtype`` (the compute dtype).
  """

  def __init__(
      self,
      channels: int,
      *,
      num_groups: int,
      epsilon: float,
      dtype: Dtype,
      param_dtype: Dtype,
      rngs: nnx.Rngs,
  ):
    if channels % num_groups:
      raise ValueError(f"GroupNorm: {channels} channels cannot be split into {num_groups} groups")
    self.dtype = dtype
    self.norm = nnx.GroupNorm(
        channels,
        num_groups=num_groups,
        epsilon=epsilon,
        dtype=jnp.float32,
        param_dtype=param_dtype,
        use_fast_variance=False,
        scale_metadata=_metadata(NORM_AXES),
        bias_metadata=_metadata(NORM_AXES),
        rngs=rngs,
    )

  def __call__(self, x: Array) -> Array:
    return self.norm(x.astype(jnp.float32)).astype(self.dtype)


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
  """Sinusoidal embedding of raw (unscaled) timesteps, **cos first** as in the official code.

  Args:
    t: (B,) timesteps (integers 0..T-1, any numeric dtype).
    dim: embedding width (even).
  Returns:
    (B, dim) float32: [cos(t * f), sin(t * f)] with f_i = exp(-ln(max_period) * i / (dim/2)).
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


class TimeEmbedding(nnx.Module):
  """Sinusoid (``dim``) -> Linear(dim, embed) -> SiLU -> Linear(embed, embed)."""

  def __init__(self, dim: int, embed_dim: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
    self.dim = dim
    self.dtype = dtype
    self.linear1 = dense(dim, embed_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.linear2 = dense(embed_dim, embed_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, t: Array) -> Array:
    h = timestep_embedding(t, self.dim).astype(self.dtype)
    return self.linear2(nnx.silu(self.linear1(h)))


def downsample(x: Array) -> Array:
  """2x2 average pooling with stride 2 (NHWC)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample(x: Array) -> Array:
  """Nearest-neighbour x2 upsampling (NHWC)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResBlock(nnx.Module):
  """The official ResBlock (``models/blocks.py``), NHWC.

  in:  GroupNorm -> SiLU -> [down/up-sample] -> Conv3x3(in -> out)
  FiLM from the time embedding (only when ``emb_dim`` is given): h * (1 + scale) + shift after the
  second GroupNorm;  out: GroupNorm -> [FiLM] -> SiLU -> Dropout -> zero-initialised Conv3x3.
  The identity path is resampled the same way and projected by a 1x1 conv when widths differ.
  """

  def __init__(
      self,
      in_channels: int,
      out_channels: int,
      *,
      emb_dim: int | None,
      resample: str | None = None,
      dropout: float,
      num_groups: int,
      norm_eps: float,
      dtype: Dtype,
      param_dtype: Dtype,
      rngs: nnx.Rngs,
  ):
    if resample not in (None, "down", "up"):
      raise ValueError(f"ResBlock resample must be None, 'down' or 'up', got {resample!r}")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    norm_kw = dict(num_groups=num_groups, epsilon=norm_eps, **kw)
    self.resample = resample
    self.in_norm = GroupNorm32(in_channels, **norm_kw)
    self.in_conv = conv(in_channels, out_channels, 3, **kw)
    self.emb_proj = dense(emb_dim, 2 * out_channels, **kw) if emb_dim is not None else None
    self.out_norm = GroupNorm32(out_channels, **norm_kw)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.out_conv = conv(out_channels, out_channels, 3, zero_init=True, **kw)
    self.skip = conv(in_channels, out_channels, 1, **kw) if in_channels != out_channels else None

  def _resample(self, x: Array) -> Array:
    if self.resample == "down":
      return downsample(x)
    if self.resample == "up":
      return upsample(x)
    return x

  def __call__(self, x: Array, emb: Array | None = None) -> Array:
    h = nnx.silu(self.in_norm(x))
    h = self.in_conv(self._resample(h))
    x = self._resample(x)
    h = self.out_norm(h)
    if self.emb_proj is not None:
      if emb is None:
        raise ValueError("this ResBlock is time-conditioned: a time embedding is required")
      scale, shift = jnp.split(self.emb_proj(nnx.silu(emb)), 2, axis=-1)
      h = h * (1 + scale[:, None, None, :]) + shift[:, None, None, :]
    h = self.out_conv(self.dropout(nnx.silu(h)))
    skip = self.skip(x) if self.skip is not None else x
    return skip + h


class CrossAttention(nnx.Module):
  """The texture-diffusion block: x + proj(attn(Q(GroupNorm(x)), K(c), V(c))).

  One head of width C, scale 1/sqrt(C), softmax in float32 over the key positions, queries from the
  normalised denoiser feature ``x`` and keys/values from the raw encoder feature ``c`` of the same
  shape; the output projection is zero-initialised.
  """

  def __init__(
      self,
      channels: int,
      *,
      num_groups: int,
      norm_eps: float,
      dtype: Dtype,
      param_dtype: Dtype,
      implementation: str | None = None,
      rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.implementation = implementation
    self.norm = GroupNorm32(channels, num_groups=num_groups, epsilon=norm_eps, **kw)
    self.to_q = dense(channels, channels, **kw)
    self.to_k = dense(channels, channels, **kw)
    self.to_v = dense(channels, channels, **kw)
    self.proj_out = dense(channels, channels, zero_init=True, **kw)

  def __call__(self, x: Array, context: Array) -> Array:
    if x.shape != context.shape:
      raise ValueError(
          f"cross-attention needs an encoder feature of the query's shape: {x.shape} vs "
          f"{context.shape}"
      )
    b, h, w, c = x.shape
    context = context.astype(x.dtype)
    q = self.to_q(self.norm(x)).reshape(b, h * w, 1, c)
    k = self.to_k(context).reshape(b, h * w, 1, c)
    v = self.to_v(context).reshape(b, h * w, 1, c)
    out = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)
    return x + self.proj_out(out.reshape(b, h, w, c))
