"""The texture (style) encoder: the denoiser's down path without attention or time input.

It reads the source image (3 channels, [-1, 1]) and returns every down-path block output (18 maps
for the paper's configuration), which the denoiser's cross-attention blocks consume. It runs once
per source image, never per timestep.
"""

from __future__ import annotations

import jax
from flax import nnx

from pidm_jax.models import layers
from pidm_jax.models.unet import InputBlock, _call_res, block_kwargs, down_path_plan, maybe_remat

Array = jax.Array


class TextureEncoder(nnx.Module):
  """Conv3x3(3 -> C0), then the ResBlocks of the down path (FiLM skipped: no time embedding)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    common, attn_kw = block_kwargs(cfg)
    self.dtype = common["dtype"]
    self.remat = bool(cfg.remat)
    plan = down_path_plan(cfg)
    self.input_conv = layers.conv(
        cfg.in_channels,
        plan[0].out_channels,
        3,
        dtype=common["dtype"],
        param_dtype=common["param_dtype"],
        rngs=rngs,
    )
    self.blocks = nnx.List(
        [
            InputBlock(
                p, emb_dim=None, with_attention=False, common=common, attn_kw=attn_kw, rngs=rngs
            )
            for p in plan[1:]
        ]
    )

  def __call__(self, source: Array) -> tuple[Array, ...]:
    """(B, H, W, 3) source image -> tuple of every block output, NHWC, in compute dtype."""
    res = maybe_remat(_call_res, self.remat)
    h = self.input_conv(source.astype(self.dtype))
    features = [h]
    for block in self.blocks:
      h = res(block.res, h, None)
      features.append(h)
    return tuple(features)
