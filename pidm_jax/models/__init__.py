"""Flax NNX modules of PIDM: layers, texture encoder, denoiser UNet and the joined model."""

from pidm_jax.models.encoder import TextureEncoder
from pidm_jax.models.layers import CrossAttention, ResBlock, TimeEmbedding, timestep_embedding
from pidm_jax.models.pidm import PIDM, check_image_size, null_pose, validate_model_config
from pidm_jax.models.unet import Denoiser, down_path_plan, up_path_plan

__all__ = [
    "PIDM",
    "TextureEncoder",
    "Denoiser",
    "ResBlock",
    "CrossAttention",
    "TimeEmbedding",
    "timestep_embedding",
    "check_image_size",
    "null_pose",
    "validate_model_config",
    "down_path_plan",
    "up_path_plan",
]
