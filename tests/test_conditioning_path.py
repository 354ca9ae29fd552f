"""The conditioning path learns: encoder + cross-attention carry an answer found only in the source.

A regression test of the wiring that makes PIDM a pose-*transfer* model. The task: every target
image is one solid colour, drawn at random per sample, and the source image shows the same colour
(with pixel noise); the pose maps say nothing. Only the source tells the colour, so a model that
learns it must pass it through the texture encoder and the cross-attention. After a short training
run with the real train step (hybrid loss, Adam, both directions of each pair):

1. the x0 error at high noise with each sample's own source is far below the error with another
   sample's source (``source_swap.high_noise_x0_error``): the source is used;
2. the trained denoiser reads what the *trained* encoder learned: putting the encoder's initial
   parameters back raises the own-source error clearly.

The same run with the encoder's features behind ``stop_gradient`` fails (2) (the encoder does not
learn), and with the cross-attention's output dropped fails (1) (nothing of the source arrives);
both are run here, so the test is shown to fail when the path is cut.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from pidm_jax import sharding, train
from pidm_jax.evaluation import source_swap
from pidm_jax.models import encoder as encoder_lib
from pidm_jax.models import layers

SIZE = 16
PAIRS = 4
STEPS = 120


def _config():
  cfg = tiny.get_config()
  cfg.model.base_width = 16
  cfg.model.channel_mult = (1,)  # one level: the middle and both attention blocks at 16 x 16
  cfg.model.embed_dim = 32
  cfg.model.num_groups = 8
  cfg.model.image_size = SIZE
  cfg.model.attention_resolutions = (SIZE,)
  cfg.model.dropout = 0.0
  cfg.model.cond_drop_prob = 0.0
  cfg.data.image_size = (SIZE, SIZE)
  cfg.diffusion.prediction = "x0"
  cfg.train.high_noise_fraction = 0.5  # most of what the source tells is needed at high noise
  cfg.train.batch_size = 2 * PAIRS
  cfg.train.learning_rate = 2e-3
  cfg.train.warmup_steps = 0
  cfg.train.num_train_steps = STEPS
  cfg.mesh.data, cfg.mesh.fsdp = 1, 1
  return cfg


def _colour_pairs(rng, n):
  colour = rng.uniform(-0.8, 0.8, (n, 1, 1, 3)).astype(np.float32)
  solid = np.broadcast_to(colour, (n, SIZE, SIZE, 3))
  noisy = lambda: np.clip(solid + rng.normal(0, 0.1, solid.shape), -1, 1).astype(np.float32)
  pose = np.zeros((n, SIZE, SIZE, 20), np.float32)
  return {
      "source_image": noisy(),
      "target_image": noisy(),
      "source_pose": pose,
      "target_pose": pose,
  }


def _train_and_measure():
  """(own / swapped x0 error, own error with the initial encoder / with the trained one)."""
  cfg = _config()
  mesh = sharding.create_mesh(cfg.mesh, devices=jax.devices()[:1])
  trainer = train.Trainer(cfg, mesh)
  rng = np.random.default_rng(0)
  with jax.set_mesh(mesh):
    state = trainer.init_state(0)
    initial_encoder = jax.device_get(state.params["encoder"])
    for _ in range(STEPS):
      state, _ = trainer.train_step(state, _colour_pairs(rng, PAIRS))
    params = jax.device_get(state.params)
    test = _colour_pairs(np.random.default_rng(1), 8)
    region = jnp.ones((8, SIZE, SIZE), bool)
    swapped = np.roll(test["source_image"], 4, axis=0)

    def errors(p):
      model = trainer.model_from_params(p, train=False)
      return [
          float(e)
          for e in source_swap.high_noise_x0_error(
              model,
              trainer.diffusion,
              jnp.asarray(test["source_image"]),
              jnp.asarray(swapped),
              jnp.asarray(test["target_pose"]),
              jnp.asarray(test["target_image"]),
              region,
              jax.random.key(0),
          )
      ]

    own, other = errors(params)
    own_initial_encoder, _ = errors(dict(params, encoder=initial_encoder))
  return own / other, own_initial_encoder / own


def _uses_source(ratio):
  return ratio < 0.5


def _encoder_learned(ratio):
  return ratio > 1.5


@pytest.mark.parametrize("cut", ["none", "encoder_gradient", "cross_attention_output"])
def test_encoder_and_cross_attention_learn_a_task_only_the_source_answers(cut, monkeypatch):
  if cut == "encoder_gradient":
    call = encoder_lib.TextureEncoder.__call__
    monkeypatch.setattr(
        encoder_lib.TextureEncoder,
        "__call__",
        lambda self, source: tuple(jax.lax.stop_gradient(f) for f in call(self, source)),
    )
  elif cut == "cross_attention_output":
    monkeypatch.setattr(layers.CrossAttention, "__call__", lambda self, x, context: x)
  own_over_swapped, initial_over_trained = _train_and_measure()
  print(
      f"cut={cut}: own/swapped x0 error {own_over_swapped:.3f}, "
      f"initial/trained encoder {initial_over_trained:.3f}"
  )
  if cut == "none":
    assert _uses_source(own_over_swapped), own_over_swapped
    assert _encoder_learned(initial_over_trained), initial_over_trained
  elif cut == "encoder_gradient":  # the path is open, but the encoder never trains
    assert not _encoder_learned(initial_over_trained), initial_over_trained
  else:  # nothing of the source reaches the denoiser
    assert own_over_swapped == pytest.approx(1.0, abs=1e-6)
    assert not _uses_source(own_over_swapped)
