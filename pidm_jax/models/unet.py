"""The PIDM denoiser UNet and the block plan it shares with the texture encoder.

Wiring (as the official unet.py / unet_autoenc.py): an input conv, then per level ``num_res_blocks`` ResBlocks and a
down-sampling ResBlock (except at the last level); a middle ResBlock-CrossAttention-ResBlock; per
level (deepest first) ``num_res_blocks + 1`` decoder ResBlocks, each consuming the last stored skip
of its level (output block k takes input block N-1-k, concatenated as [h, skip]), with an
up-sampling ResBlock after the last block of every level but the first; GroupNorm -> SiLU ->
zero-initialised conv to the output channels.

Cross-attention sits after the ``num_res_blocks``-th ResBlock (encoder side) or in the
``num_res_blocks``-th decoder block (decoder side) of the levels whose resolution
(``image_size / 2**level``) is listed in ``attention_resolutions``, plus the middle block. Input
block k reads encoder feature k, the middle reads the last feature, output block k reads feature
N-1-k.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pidm_jax.models import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DownBlockPlan:
  """One block of the down path (shared by the denoiser's input blocks and the encoder)."""

  index: int
  kind: str  # 'conv' (block 0), 'res' or 'down'
  in_channels: int
  out_channels: int
  level: int
  attention: bool


@dataclasses.dataclass(frozen=True)
class UpBlockPlan:
  """One decoder block: ResBlock(in + skip -> out) [+ attention] [+ up ResBlock]."""

  index: int
  in_channels: int
  skip_channels: int
  out_channels: int
  level: int
  attention: bool
  upsample: bool


def down_path_plan(cfg) -> list[DownBlockPlan]:
  """Returns the down-path block plan of a model config (see module docstring)."""
  ch = cfg.base_width * cfg.channel_mult[0]
  plan = [DownBlockPlan(0, "conv", -1, ch, 0, False)]
  resolution = cfg.image_size
  num_levels = len(cfg.channel_mult)
  for level, mult in enumerate(cfg.channel_mult):
    for block in range(cfg.num_res_blocks):
      out = cfg.base_width * mult
      attn = resolution in tuple(cfg.attention_resolutions) and block == cfg.num_res_blocks - 1
      plan.append(DownBlockPlan(len(plan), "res", ch, out, level, attn))
      ch = out
    if level != num_levels - 1:
      plan.append(DownBlockPlan(len(plan), "down", ch, ch, level + 1, False))
      resolution //= 2
  return plan


def up_path_plan(cfg) -> list[UpBlockPlan]:
  """Returns the decoder block plan of a model config."""
  down = down_path_plan(cfg)
  skips = [[b.out_channels for b in down if b.level == lvl] for lvl in range(len(cfg.channel_mult))]
  ch = down[-1].out_channels
  resolution = cfg.image_size // 2 ** (len(cfg.channel_mult) - 1)
  plan = []
  for level in reversed(range(len(cfg.channel_mult))):
    mult = cfg.channel_mult[level]
    for i in range(cfg.num_res_blocks + 1):
      skip = skips[level].pop()
      out = cfg.base_width * mult
      attn = resolution in tuple(cfg.attention_resolutions) and i == cfg.num_res_blocks - 1
      up = level > 0 and i == cfg.num_res_blocks
      plan.append(UpBlockPlan(len(plan), ch, skip, out, level, attn, up))
      ch = out
      if up:
        resolution *= 2
  return plan


def min_size_multiple(cfg) -> int:
  """Height and width must be multiples of this (2 ** number of down-samplings)."""
  return 2 ** (len(cfg.channel_mult) - 1)


def maybe_remat(fn: Callable, enabled: bool) -> Callable:
  """Wraps a block call in ``nnx.remat`` (activation rematerialisation) when enabled."""
  return nnx.remat(fn) if enabled else fn


def _call_res(block, x, emb):
  return block(x, emb)


def _call_attn(block, x, context):
  return block(x, context)


class InputBlock(nnx.Module):
  """ResBlock (plain or down-sampling) with an optional cross-attention after it."""

  def __init__(
      self,
      plan: DownBlockPlan,
      *,
      emb_dim: int | None,
      with_attention: bool,
      common,
      attn_kw,
      rngs: nnx.Rngs,
  ):
    self.res = layers.ResBlock(
        plan.in_channels,
        plan.out_channels,
        emb_dim=emb_dim,
        resample="down" if plan.kind == "down" else None,
        rngs=rngs,
        **common,
    )
    self.attn = (
        layers.CrossAttention(plan.out_channels, rngs=rngs, **attn_kw)
        if with_attention and plan.attention
        else None
    )


class OutputBlock(nnx.Module):
  """Decoder ResBlock on [h, skip], optional cross-attention, optional up-sampling ResBlock."""

  def __init__(self, plan: UpBlockPlan, *, emb_dim: int, common, attn_kw, rngs: nnx.Rngs):
    self.res = layers.ResBlock(
        plan.in_channels + plan.skip_channels,
        plan.out_channels,
        emb_dim=emb_dim,
        rngs=rngs,
        **common,
    )
    self.attn = (
        layers.CrossAttention(plan.out_channels, rngs=rngs, **attn_kw) if plan.attention else None
    )
    self.up = (
        layers.ResBlock(
            plan.out_channels,
            plan.out_channels,
            emb_dim=emb_dim,
            resample="up",
            rngs=rngs,
            **common,
        )
        if plan.upsample
        else None
    )


class MiddleBlock(nnx.Module):
  """ResBlock -> CrossAttention -> ResBlock at the lowest resolution."""

  def __init__(self, channels: int, *, emb_dim: int, common, attn_kw, rngs: nnx.Rngs):
    self.res1 = layers.ResBlock(channels, channels, emb_dim=emb_dim, rngs=rngs, **common)
    self.attn = layers.CrossAttention(channels, rngs=rngs, **attn_kw)
    self.res2 = layers.ResBlock(channels, channels, emb_dim=emb_dim, rngs=rngs, **common)


def block_kwargs(cfg) -> tuple[dict, dict]:
  """(ResBlock kwargs, CrossAttention kwargs) shared by every block of a model config."""
  dtype = jnp.dtype(cfg.dtype)
  param_dtype = jnp.dtype(cfg.param_dtype)
  common = dict(
      dropout=cfg.dropout,
      num_groups=cfg.num_groups,
      norm_eps=cfg.norm_eps,
      dtype=dtype,
      param_dtype=param_dtype,
  )
  attn_kw = dict(
      num_groups=cfg.num_groups,
      norm_eps=cfg.norm_eps,
      dtype=dtype,
      param_dtype=param_dtype,
      implementation=cfg.attention_implementation,
  )
  return common, attn_kw


class Denoiser(nnx.Module):
  """The denoiser UNet: (noisy image ++ pose map, t, encoder features) -> (B, H, W, out)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    common, attn_kw = block_kwargs(cfg)
    dtype, param_dtype = common["dtype"], common["param_dtype"]
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dtype = dtype
    self.remat = bool(cfg.remat)
    emb_dim = cfg.embed_dim
    down = down_path_plan(cfg)
    up = up_path_plan(cfg)
    self.time_embed = layers.TimeEmbedding(cfg.base_width, emb_dim, **kw)
    self.input_conv = layers.conv(
        cfg.in_channels + cfg.pose_channels, down[0].out_channels, 3, **kw
    )
    self.input_blocks = nnx.List(
        [
            InputBlock(
                p, emb_dim=emb_dim, with_attention=True, common=common, attn_kw=attn_kw, rngs=rngs
            )
            for p in down[1:]
        ]
    )
    self.middle = MiddleBlock(
        down[-1].out_channels, emb_dim=emb_dim, common=common, attn_kw=attn_kw, rngs=rngs
    )
    self.output_blocks = nnx.List(
        [OutputBlock(p, emb_dim=emb_dim, common=common, attn_kw=attn_kw, rngs=rngs) for p in up]
    )
    self.out_norm = layers.GroupNorm32(
        up[-1].out_channels, num_groups=cfg.num_groups, epsilon=cfg.norm_eps, **kw
    )
    self.out_conv = layers.conv(up[-1].out_channels, cfg.out_channels, 3, zero_init=True, **kw)

  def __call__(self, x: Array, t: Array, features: Sequence[Array]) -> Array:
    """Runs the UNet.

    Args:
      x: (B, H, W, in_channels + pose_channels), the noisy image concatenated with the pose map.
      t: (B,) timesteps.
      features: the texture encoder's outputs, one per down-path block.
    Returns:
      (B, H, W, out_channels) in float32.
    """
    num = len(self.input_blocks) + 1
    if len(features) != num:
      raise ValueError(f"the denoiser needs {num} encoder features, got {len(features)}")
    res = maybe_remat(_call_res, self.remat)
    attn = maybe_remat(_call_attn, self.remat)
    emb = self.time_embed(t)
    h = self.input_conv(x.astype(self.dtype))
    skips = [h]
    for k, block in enumerate(self.input_blocks, start=1):
      h = res(block.res, h, emb)
      if block.attn is not None:
        h = attn(block.attn, h, features[k])
      skips.append(h)
    h = res(self.middle.res1, h, emb)
    h = attn(self.middle.attn, h, features[-1])
    h = res(self.middle.res2, h, emb)
    for k, block in enumerate(self.output_blocks):
      h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = res(block.res, h, emb)
      if block.attn is not None:
        h = attn(block.attn, h, features[num - 1 - k])
      if block.up is not None:
        h = res(block.up, h, emb)
    h = self.out_conv(nnx.silu(self.out_norm(h)))
    return h.astype(jnp.float32)
