"""TFDS builders and the grain input pipeline for pidm_jax."""
