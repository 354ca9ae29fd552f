"""A checkpoint carries its config: a config whose model or diffusion differs is refused by name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from pidm_jax import checkpointing
from pidm_jax.models import PIDM


def _params(config):
  abstract = nnx.eval_shape(lambda: PIDM(config.model, rngs=nnx.Rngs(0)))
  params = nnx.state(abstract, nnx.Param).to_pure_dict()
  return jax.tree.map(lambda x: jnp.asarray(np.full(x.shape, 0.01, x.dtype)), params)


@pytest.fixture(scope="module")
def v_checkpoint(tmp_path_factory):
  config = tiny.get_config()
  config.diffusion.prediction = "v"
  directory = tmp_path_factory.mktemp("ckpt") / "v_model"
  checkpointing.save_params(directory, _params(config), config)
  return directory, config


def test_a_different_diffusion_or_network_is_refused_one_line_per_field(v_checkpoint):
  directory, config = v_checkpoint
  eps = tiny.get_config()
  eps.diffusion.prediction = "eps"
  eps.diffusion.beta_schedule = "cosine" if config.diffusion.beta_schedule != "cosine" else "linear"
  with pytest.raises(checkpointing.ConfigMismatchError) as e:
    checkpointing.load_model(directory, eps)
  lines = str(e.value).splitlines()
  assert len(lines) == 3, lines
  assert f"diffusion.beta_schedule: stored '{config.diffusion.beta_schedule}'" in lines[1]
  assert lines[2].strip() == "diffusion.prediction: stored 'v', given 'eps'"

  wider = tiny.get_config()
  wider.diffusion.prediction = "v"
  wider.model.channel_mult = (1, 2, 2)
  lines = checkpointing.config_mismatches(checkpointing.read_config_json(directory), wider)
  assert lines == [
      f"model.channel_mult: stored {list(config.model.channel_mult)!r}, "
      f"given {list(wider.model.channel_mult)!r}"
  ]


def test_the_runs_own_config_and_runtime_fields_pass(v_checkpoint):
  directory, config = v_checkpoint
  checkpointing.check_config(directory, config)
  other = tiny.get_config()
  other.diffusion.prediction = "v"
  other.model.dtype = "bfloat16" if config.model.dtype != "bfloat16" else "float32"
  other.model.remat = not config.model.remat
  other.model.cond_drop_prob = 0.5
  other.sample.steps = 7  # sampling settings are not compared
  checkpointing.check_config(directory, other)
  model = checkpointing.load_model(directory, other)
  assert isinstance(model, PIDM)


def test_a_checkpoint_without_a_stored_config_loads_with_the_given_one(v_checkpoint, tmp_path):
  _, config = v_checkpoint
  directory = tmp_path / "old_run"
  checkpointing.save_params(directory, _params(config), config)
  (directory / "config.json").unlink()
  eps = tiny.get_config()
  eps.diffusion.prediction = "eps"
  checkpointing.check_config(directory, eps)
  assert isinstance(checkpointing.load_model(directory, eps), PIDM)
