"""pidm_jax: PIDM (pose-guided person image synthesis with a denoising diffusion model) in JAX/Flax."""

__version__ = "0.1.0"
