"""The PIDM model: texture encoder + denoiser UNet + classifier-free condition dropout.

Public surface (NHWC; images in [-1, 1], pose maps in [0, 1]):

* ``PIDM(model_config, rngs=nnx.Rngs(...))``
* ``model.encode(source) -> tuple`` of the encoder's block outputs (18 for the paper's net)
* ``model.denoise(noisy, pose, t, features) -> (B, H, W, 6)`` (3 eps + 3 learned-range values)
* ``model(noisy, pose, t, source, rng=None) -> (B, H, W, 6)``: the training call path. In training
  mode (``model.train()``) each sample's source image is replaced by zeros with probability
  ``cond_drop_prob`` (and its pose by the null pose with probability ``pose_drop_prob``), drawn
  from the explicit key ``rng``. In eval mode (``model.eval()``) nothing is dropped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pidm_jax.models.encoder import TextureEncoder
from pidm_jax.models.unet import Denoiser, down_path_plan, min_size_multiple

Array = jax.Array

REQUIRED_KEYS = (
    "base_width",
    "channel_mult",
    "num_res_blocks",
    "attention_resolutions",
    "image_size",
    "embed_dim",
    "dropout",
    "in_channels",
    "pose_channels",
    "out_channels",
    "num_groups",
    "norm_eps",
    "dtype",
    "param_dtype",
    "remat",
    "attention_implementation",
    "cond_drop_prob",
    "pose_drop_prob",
)


def validate_model_config(cfg) -> None:
  """Raises ValueError naming the field when a model config cannot build a network."""
  missing = [k for k in REQUIRED_KEYS if k not in cfg]
  if missing:
    raise ValueError(f"model config is missing fields: {', '.join(missing)}")
  if not cfg.channel_mult:
    raise ValueError("model.channel_mult must list at least one level")
  for mult in cfg.channel_mult:
    width = cfg.base_width * mult
    if width % cfg.num_groups:
      raise ValueError(
          f"model.base_width * channel_mult = {width} is not divisible by "
          f"model.num_groups = {cfg.num_groups}"
      )
  if cfg.num_res_blocks < 1:
    raise ValueError(f"model.num_res_blocks must be >= 1, got {cfg.num_res_blocks}")
  if not 0.0 <= cfg.dropout < 1.0:
    raise ValueError(f"model.dropout must be in [0, 1), got {cfg.dropout}")
  for name in ("cond_drop_prob", "pose_drop_prob"):
    p = cfg.get(name, 0.0)
    if not 0.0 <= p <= 1.0:
      raise ValueError(f"model.{name} must be in [0, 1], got {p}")


def check_image_size(height: int, width: int, multiple: int) -> None:
  """Raises ValueError with the nearest working sizes if H or W is not a multiple."""
  if height % multiple == 0 and width % multiple == 0 and height > 0 and width > 0:
    return

  def near(n):
    if n % multiple == 0 and n > 0:
      return [n]
    lo = (n // multiple) * multiple
    return sorted({max(lo, multiple), lo + multiple})

  options = [f"{h}x{w}" for h in near(height) for w in near(width)]
  raise ValueError(
      f"image size {height}x{width} (HxW) cannot go through this network: height and width must "
      f"be multiples of {multiple} (one halving per level below the first); nearest sizes that "
      f"work: {', '.join(options)}"
  )


def null_pose(shape, dtype=jnp.float32) -> Array:
  """The pose map of an all-missing skeleton: black skeleton image (3 channels), limb maps 1.0."""
  *lead, channels = shape
  rgb = jnp.zeros((*lead, min(3, channels)), dtype)
  limbs = jnp.ones((*lead, max(channels - 3, 0)), dtype)
  return jnp.concatenate([rgb, limbs], axis=-1)


class PIDM(nnx.Module):
  """Texture encoder + denoiser UNet, joined by cross-attention (see the module docstring)."""

  def __init__(self, model_config, *, rngs: nnx.Rngs):
    validate_model_config(model_config)
    self.in_channels = int(model_config.in_channels)
    self.pose_channels = int(model_config.pose_channels)
    self.out_channels = int(model_config.out_channels)
    self.size_multiple = min_size_multiple(model_config)
    self.num_features = len(down_path_plan(model_config))
    self.cond_drop_prob = float(model_config.cond_drop_prob)
    self.pose_drop_prob = float(model_config.pose_drop_prob)
    self.deterministic = False  # toggled by model.train() / model.eval(), like nnx.Dropout
    self.encoder = TextureEncoder(model_config, rngs=rngs)
    self.denoiser = Denoiser(model_config, rngs=rngs)

  # -- input checks (shapes are static, so these run at trace time) -----------------------------
  def _check_image(self, name: str, x: Array, channels: int) -> None:
    if x.ndim != 4:
      raise ValueError(f"{name} must be NHWC (B, H, W, C), got shape {x.shape}")
    if x.shape[-1] != channels:
      raise ValueError(f"{name} must have {channels} channels (NHWC), got shape {x.shape}")
    check_image_size(x.shape[1], x.shape[2], self.size_multiple)

  def encode(self, source: Array) -> tuple[Array, ...]:
    """Texture features of a (B, H, W, 3) source image in [-1, 1]."""
    self._check_image("source image", source, self.in_channels)
    return self.encoder(source)

  def denoise(self, noisy: Array, pose: Array, t: Array, features) -> Array:
    """eps and variance prediction (B, H, W, 6) for x_t, the target pose map and timesteps t."""
    self._check_image("noisy image", noisy, self.in_channels)
    self._check_image("pose map", pose, self.pose_channels)
    if pose.shape[:3] != noisy.shape[:3]:
      raise ValueError(f"pose map {pose.shape} and noisy image {noisy.shape} differ in B, H or W")
    t = jnp.broadcast_to(jnp.asarray(t), (noisy.shape[0],))
    x = jnp.concatenate([noisy.astype(jnp.float32), pose.astype(jnp.float32)], axis=-1)
    return self.denoiser(x, t, features)

  def drop_conditions(self, source: Array, pose: Array, rng: Array):
    """Classifier-free condition dropout: per sample, source -> zeros with p = cond_drop_prob,
    pose -> null pose with p = pose_drop_prob. Returns (source, pose)."""
    b = source.shape[0]
    src_key, pose_key = jax.random.split(rng)
    if self.cond_drop_prob > 0:
      keep = jax.random.bernoulli(src_key, 1.0 - self.cond_drop_prob, (b,))
      source = jnp.where(keep[:, None, None, None], source, jnp.zeros_like(source))
    if self.pose_drop_prob > 0:
      keep = jax.random.bernoulli(pose_key, 1.0 - self.pose_drop_prob, (b,))
      pose = jnp.where(keep[:, None, None, None], pose, null_pose(pose.shape, pose.dtype))
    return source, pose

  def __call__(
      self, noisy: Array, pose: Array, t: Array, source: Array, rng: Array | None = None
  ) -> Array:
    """The training call path: condition dropout (train mode only), encoder, denoiser."""
    if not self.deterministic and (self.cond_drop_prob > 0 or self.pose_drop_prob > 0):
      if rng is None:
        raise ValueError(
            "PIDM in train mode drops conditions at random: pass rng=<PRNG key> "
            "(or call model.eval() for a deterministic forward)"
        )
      source, pose = self.drop_conditions(source, pose, rng)
    return self.denoise(noisy, pose, t, self.encode(source))
