"""Faults a run meets, each reported by name: unreadable checkpoints (with a fallback to an older
step), damaged data records, an unwritable or full workdir, an unknown data set."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from input_pipeline import build, pipeline
from pidm_jax import checkpointing, train
from pidm_jax.models import PIDM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(config, value):
  """Parameters near ``value`` (random, so the stored files do not compress to nothing)."""
  abstract = nnx.eval_shape(lambda: PIDM(config.model, rngs=nnx.Rngs(0)))
  params = nnx.state(abstract, nnx.Param).to_pure_dict()
  rng = np.random.default_rng(int(value * 100))
  return jax.tree.map(lambda x: jnp.asarray(value + 0.01 * rng.random(x.shape, np.float32)), params)


def _near(params, value):
  return all(np.all(np.abs(np.asarray(x) - value) <= 0.01) for x in jax.tree.leaves(params))


def _damage(directory, step, files=4):
  """Truncates the largest ``files`` array files of a step's EMA parameters to 100 bytes."""
  data = os.path.join(directory, str(step), "ema_params", "ocdbt.process_0", "d")
  names = sorted(os.listdir(data), key=lambda n: -os.path.getsize(os.path.join(data, n)))[:files]
  assert names and os.path.getsize(os.path.join(data, names[0])) > 1000, data
  for name in [n for n in names if os.path.getsize(os.path.join(data, n)) > 100]:
    with open(os.path.join(data, name), "r+b") as f:
      f.truncate(100)


@pytest.fixture()
def two_steps(tmp_path):
  config = tiny.get_config()
  directory = tmp_path / "ckpt"
  checkpointing.save_params(directory, _params(config, 0.25), config, step=1)
  checkpointing.save_params(directory, _params(config, 0.5), config, step=2)
  return str(directory), config


def test_intact_checkpoint_restores_the_newest_step_silently(two_steps, capfd):
  directory, config = two_steps
  said = []
  params = checkpointing.restore_ema_params(directory, config.model, log=said.append)
  assert said == []
  assert _near(params, 0.5)
  # every item of a step has a handler: no 'Item ... could not be restored' warnings
  assert "could not be restored" not in capfd.readouterr().err


def test_unreadable_newest_step_falls_back_to_the_older_one_and_moves_nothing(two_steps, capfd):
  directory, config = two_steps
  _damage(directory, 2)
  said = []
  params = checkpointing.restore_ema_params(directory, config.model, log=said.append)
  assert _near(params, 0.25)
  assert len(said) == 2, said
  assert said[0].startswith(
      f"checkpoint step 2 in {directory} cannot be read (ValueError: " "OUT_OF_RANGE"
  ), said[0]
  assert said[1] == f"using checkpoint step 1 in {directory}: newer step(s) 2 cannot be read"
  assert sorted(os.listdir(directory)) == ["1", "2", "config.json"]  # a reader moves nothing
  err = capfd.readouterr().err
  # Orbax's aftermath of the failed read (hundreds of lines of TensorStore specs) is kept off
  assert "Exception ignored" not in err and "Event loop is closed" not in err, err[-3000:]
  assert "never retrieved" not in err, err[-3000:]
  # an explicit step that cannot be read is an error naming the step and the directory
  with pytest.raises(checkpointing.UnreadableCheckpointError, match=r"step 2: ValueError"):
    checkpointing.restore_ema_params(directory, config.model, step=2)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint step 7 \(steps: 1, 2\)"):
    checkpointing.restore_ema_params(directory, config.model, step=7)


def test_no_readable_step_is_one_error_naming_every_step(two_steps):
  directory, config = two_steps
  _damage(directory, 1)
  _damage(directory, 2)
  with pytest.raises(checkpointing.UnreadableCheckpointError) as e:
    checkpointing.restore_ema_params(directory, config.model, log=lambda _: None)
  message = str(e.value)
  assert message.startswith(f"no checkpoint step in {directory} can be read (step 2: ")
  assert "; step 1: ValueError: OUT_OF_RANGE" in message


def test_a_structural_mismatch_is_reported_as_such_not_as_unreadable(two_steps):
  directory, config = two_steps
  other = tiny.get_config()
  other.model.base_width = config.model.base_width * 2
  with pytest.raises(ValueError, match=r"does not match the model config: .*wrong shape") as e:
    checkpointing.restore_ema_params(directory, other.model, log=lambda _: None)
  assert not isinstance(e.value, checkpointing.UnreadableCheckpointError)


class _Records:

  def __init__(self, bad):
    self.bad = bad

  def __len__(self):
    return 6

  def __getitem__(self, index):
    if index == self.bad:
      raise RuntimeError("Corrupted Riegeli/records file: chunk header hash mismatch")
    if index >= 6:
      raise IndexError(index)
    return {"index": index}

  def __getitems__(self, indices):
    return [self[i] for i in indices]


def test_a_damaged_record_is_named_with_its_index_split_and_directory():
  source = pipeline.NamedSource(_Records(bad=3), "synthetic_people/res64", "train", "/data/x")
  assert source[2] == {"index": 2} and len(source) == 6
  with pytest.raises(pipeline.CorruptRecordError) as e:
    source.__getitems__([1, 3])
  assert str(e.value).startswith(
      "record 3 of split 'train' of data set 'synthetic_people/res64' in /data/x cannot be read "
      "(RuntimeError: Corrupted Riegeli/records file"
  ), str(e.value)
  with pytest.raises(IndexError):  # the end of the sequence stays an IndexError
    source[6]


def test_workdir_that_cannot_be_written_or_holds_too_little_space(tmp_path, monkeypatch):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(train.SetupError, match=r"workdir .*a_file/w cannot be written"):
    train.check_workdir(str(blocker / "w"), 1000, 3)
  train.check_workdir(str(tmp_path / "ok"), 1000, 3)  # enough space: passes, leaves no probe
  assert os.listdir(tmp_path / "ok") == []
  usage = type("Usage", (), {"free": 10 * 2**20})
  monkeypatch.setattr(train.shutil, "disk_usage", lambda _: usage)
  with pytest.raises(
      train.SetupError,
      match=r"has 10 MiB free, but 3 kept checkpoints and the "
      r"one being written need about 40 MiB \(10 MiB each\)",
  ):
    train.check_workdir(str(tmp_path / "ok"), 10 * 2**20, 3)


def test_state_bytes_counts_the_arrays_of_a_train_state():
  config = tiny.get_config()
  trainer = train.Trainer(
      config, jax.make_mesh((1, 1), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  )
  params = sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params)) * 4
  # params, EMA params and Adam's two moments, plus a few scalars
  assert 4 * params <= train.state_bytes(trainer.abstract_state) < 4 * params + 4096


def test_unknown_data_set_is_one_named_error():
  with pytest.raises(
      pipeline.DataSetError,
      match=r"unknown data set 'deepfashion/res64': " r"pidm_jax builds deep_fashion, market1501",
  ):
    build.builder("deepfashion/res64", "/nonexistent")


def test_train_cli_says_a_setup_error_in_one_line(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  done = subprocess.run(
      [
          sys.executable,
          "train.py",
          f"--config={ROOT}/configs/tiny.py",
          f"--workdir={blocker / 'w'}",
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert done.returncode == 2, done.stderr[-2000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      f"error: workdir {blocker / 'w'} cannot be " "created (Not a directory)"
  ), lines
