"""Training on fake CPU devices: mesh invariance, learning, EMA rule, checkpoints, preemption."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from pidm_jax import checkpointing, sharding, train
from pidm_jax.evaluation import training_eval


def _config(**train_overrides):
  cfg = tiny.get_config()
  cfg.model.dropout = 0.0
  cfg.train.batch_size = 16  # 8 pairs: one per device on the 8 fake devices
  cfg.train.learning_rate = 1e-3
  cfg.train.warmup_init_lr = 1e-3
  cfg.train.warmup_steps = 3
  cfg.train.ema_decay = 0.5
  for k, v in train_overrides.items():
    cfg.train[k] = v
  return cfg


def _mesh(cfg, data, fsdp):
  cfg.mesh.data, cfg.mesh.fsdp = data, fsdp
  return sharding.create_mesh(cfg.mesh, devices=jax.devices()[: data * fsdp])


def _batch(seed=0, pairs=8, size=32):
  rng = np.random.default_rng(seed)
  img = lambda: rng.uniform(-1, 1, (pairs, size, size, 3)).astype(np.float32)
  pose = lambda: rng.uniform(0, 1, (pairs, size, size, 20)).astype(np.float32)
  return {
      "source_image": img(),
      "target_image": img(),
      "source_pose": pose(),
      "target_pose": pose(),
  }


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.fixture(scope="module")
def trainers():
  """Trainers of the same config on the meshes (data, fsdp) = 1x1, 8x1 and 2x4."""
  out = {}
  for shape in [(1, 1), (8, 1), (2, 4)]:
    cfg = _config()
    out[shape] = train.Trainer(cfg, _mesh(cfg, *shape))
  return out


def test_mesh_helpers():
  cfg = tiny.get_config()
  cfg.mesh.data, cfg.mesh.fsdp = -1, 2
  mesh = sharding.create_mesh(cfg.mesh)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  cfg.mesh.data, cfg.mesh.fsdp = 3, -1
  with pytest.raises(ValueError, match="8 devices cannot be split"):
    sharding.create_mesh(cfg.mesh)
  with pytest.raises(ValueError, match="6 pairs .* must be a multiple of the 8 batch shards"):
    train.check_batch_size(12, mesh)
  # big kernels split over fsdp, small ones replicated, indivisible dims replicated (the rules and
  # the size threshold come from the config only)
  rules, min_size = sharding.rules_from_config(cfg), sharding.min_shard_size_from_config(cfg)
  assert sharding.spec_for(
      (3, 3, 128, 256), ("conv_height", "conv_width", "conv_in", "conv_out"), mesh, rules, min_size
  ) == jax.sharding.PartitionSpec(None, None, None, "fsdp")
  assert (
      sharding.spec_for((256,), ("conv_out",), mesh, rules, min_size)
      == jax.sharding.PartitionSpec()
  )
  assert sharding.spec_for(
      (3, 3, 128, 255),
      ("conv_height", "conv_width", "conv_in", "conv_out"),
      mesh,
      rules,
      min_shard_size=1,
  ) == jax.sharding.PartitionSpec(None, None, None, None)
  cfg.sharding.rules = (("conv_outt", "fsdp"),)
  with pytest.raises(ValueError, match="unknown logical axis 'conv_outt'"):
    sharding.rules_from_config(cfg)
  cfg.sharding.rules = (("conv_out", "model"),)
  with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
    sharding.rules_from_config(cfg)
  # sampling batches: rounded up to the 8 batch shards, no larger than the work needs
  assert sharding.sampling_batch_size(3, mesh) == 8
  assert sharding.sampling_batch_size(20, mesh) == 24
  assert sharding.sampling_batch_size(16, mesh, needed=5) == 8


def test_learning_rate_and_ema_rule():
  cfg = train.learning_rate_schedule(
      _config(warmup_steps=5000, warmup_init_lr=8e-7, learning_rate=2e-5).train
  )
  assert float(cfg(0)) == pytest.approx(8e-7, rel=1e-5)
  assert float(cfg(2500)) == pytest.approx(8e-7 + 0.5 * (2e-5 - 8e-7), rel=1e-5)
  assert float(cfg(5000)) == pytest.approx(2e-5) and float(cfg(10**6)) == pytest.approx(2e-5)
  cosine = train.learning_rate_schedule(
      _config(
          warmup_steps=100,
          warmup_init_lr=0.0,
          learning_rate=1e-3,
          lr_decay="cosine",
          num_train_steps=1100,
      ).train
  )
  assert float(cosine(50)) == pytest.approx(5e-4, rel=1e-5)
  assert float(cosine(100)) == pytest.approx(1e-3, rel=1e-5)
  assert float(cosine(600)) == pytest.approx(5e-4, rel=1e-4)  # half way down the cosine
  assert float(cosine(1100)) == pytest.approx(0.0, abs=1e-9)
  with pytest.raises(ValueError, match="unknown train.lr_decay 'step'"):
    train.learning_rate_schedule(_config(lr_decay="step").train)
  tcfg = _config(warmup_steps=5000, ema_decay=0.9999).train
  assert float(train.ema_decay(jnp.array(4999), tcfg)) == 0.0
  assert float(train.ema_decay(jnp.array(5000), tcfg)) == pytest.approx(0.9999)


def test_step_is_the_same_on_every_mesh(trainers):
  batch = _batch()
  results = {}
  for shape, trainer in trainers.items():
    state = trainer.init_state(0)
    state, metrics = trainer.train_step(state, jax.device_put(batch, trainer.batch_sharding))
    results[shape] = (float(metrics["loss"]), _leaves(state.params))
  loss0, params0 = results[(1, 1)]
  for shape, (loss, params) in results.items():
    assert loss == pytest.approx(loss0, rel=1e-5), shape
    assert max(float(np.abs(a - b).max()) for a, b in zip(params0, params)) < 1e-5, shape


def test_loss_decreases_and_ema_follows_warmup(trainers):
  trainer = trainers[(1, 1)]  # one device: the fastest to run many steps
  batch = jax.device_put(_batch(1), trainer.batch_sharding)
  state = trainer.init_state(0)
  losses = []
  for step in range(20):
    prev_ema = _leaves(state.ema_params)
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics["mse"]))
    params, ema = _leaves(state.params), _leaves(state.ema_params)
    if step < 3:  # warm-up: EMA copies the parameters
      assert all(np.array_equal(a, b) for a, b in zip(params, ema))
    elif step == 3:  # afterwards ema = d * ema + (1 - d) * params with d = 0.5
      for e, pe, p in zip(ema, prev_ema, params):
        np.testing.assert_allclose(e, 0.5 * pe + 0.5 * p, rtol=1e-5, atol=1e-7)
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_checkpoint_restores_onto_other_meshes(tmp_path):
  cfg = _config()
  src = train.Trainer(cfg, _mesh(cfg, 2, 4))
  state = src.init_state(3)
  ckpt = checkpointing.TrainCheckpointer(tmp_path / "ckpt", cfg)
  ckpt.save(7, state, force=True)
  ckpt.wait()
  expected = _leaves(state)
  for shape in [(1, 1), (4, 1)]:
    cfg2 = _config()
    dst = train.Trainer(cfg2, _mesh(cfg2, *shape))
    restored = ckpt.restore(dst.abstract_state)
    assert all(np.array_equal(a, b) for a, b in zip(expected, _leaves(restored)))
    leaf = jax.tree.leaves(restored.params)[0]
    assert leaf.sharding.mesh.devices.size == shape[0] * shape[1]
  # The EMA parameters alone, as sampling loads them.
  params = checkpointing.restore_ema_params(tmp_path / "ckpt", cfg.model)
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(state.ema_params), _leaves(params)))
  ckpt.close()


def test_trainer_and_model_loading_work_inside_a_mesh_context(tmp_path):
  """A user's own loop may build everything under ``jax.set_mesh``: the parameters' logical axis
  names must not be mistaken for mesh axes there."""
  cfg = _config()
  mesh = _mesh(cfg, 2, 4)
  with jax.set_mesh(mesh):
    trainer = train.Trainer(cfg, mesh)
    state = trainer.init_state(5)
    checkpointing.save_params(tmp_path / "params", state.ema_params, cfg)
    model = checkpointing.load_model(tmp_path / "params", cfg, mesh=mesh)
    loaded = nnx.state(model, nnx.Param).to_pure_dict()
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(state.ema_params), _leaves(loaded)))


class _FakeIterator:
  """Stands in for the grain iterator: fixed batches, a state, and an optional NaN."""

  def __init__(self, sharding, nan=False):
    self.count, self.sharding, self.nan = 0, sharding, nan

  def __next__(self):
    self.count += 1
    batch = _batch(seed=self.count)
    if self.nan and self.count == 2:
      batch["target_image"][0, 0, 0, 0] = np.nan
    return jax.device_put(batch, self.sharding)

  def get_state(self):
    return {"count": self.count}

  def set_state(self, state):
    self.count = state["count"]


@pytest.fixture
def fake_pipeline(monkeypatch):
  """Replaces the grain pipeline by _FakeIterator (grain state saving is tested with grain)."""
  from input_pipeline import pipeline

  options = {}

  def create_datasets(config, batch_sharding, **kwargs):
    return _FakeIterator(batch_sharding, **options), None

  monkeypatch.setattr(pipeline, "create_datasets", create_datasets)
  monkeypatch.setattr(
      checkpointing.TrainCheckpointer,
      "save",
      _save_without_iterator(checkpointing.TrainCheckpointer.save),
  )
  monkeypatch.setattr(
      checkpointing.TrainCheckpointer,
      "restore",
      _restore_without_iterator(checkpointing.TrainCheckpointer.restore),
  )
  return options


def _save_without_iterator(save):
  def wrapped(self, step, state, data_iterator=None, force=False):
    self.iterator_count = getattr(data_iterator, "count", None)
    return save(self, step, state, None, force)

  return wrapped


def _restore_without_iterator(restore):
  def wrapped(self, abstract_state, data_iterator=None, step=None):
    state = restore(self, abstract_state, None, step)
    if data_iterator is not None:
      data_iterator.set_state({"count": int(state.step)})
    return state

  return wrapped


def test_nonfinite_loss_stops_with_the_step(tmp_path, fake_pipeline):
  fake_pipeline["nan"] = True
  cfg = _config(num_train_steps=3, checkpoint_every=1, log_every=1, sample_every=0)
  cfg.mesh.data, cfg.mesh.fsdp = 8, 1
  with pytest.raises(FloatingPointError, match="step 2.*last good checkpoint is step 1"):
    train.train_and_evaluate(cfg, str(tmp_path / "nan"))
  # The last good checkpoint holds finite parameters.
  params = checkpointing.restore_ema_params(tmp_path / "nan" / "checkpoints", cfg.model)
  assert all(np.isfinite(x).all() for x in _leaves(params))


def test_skip_nonfinite_skips_the_update_and_counts_it(tmp_path, fake_pipeline):
  fake_pipeline["nan"] = True
  cfg = _config(
      num_train_steps=3,
      checkpoint_every=1,
      log_every=1,
      sample_every=0,
      skip_nonfinite=True,
      keep_checkpoints=5,
  )
  cfg.mesh.data, cfg.mesh.fsdp = 8, 1
  summary = train.train_and_evaluate(cfg, str(tmp_path / "skip"))
  assert summary["step"] == 3 and summary["nonfinite_steps_skipped"] == 1
  directory = tmp_path / "skip" / "checkpoints"
  ema = [checkpointing.restore_ema_params(directory, cfg.model, step=s) for s in (1, 2, 3)]
  # Step 2 saw a NaN: its update was dropped, so its state equals step 1's; step 3 trained on.
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(ema[0]), _leaves(ema[1])))
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(ema[1]), _leaves(ema[2])))
  assert all(np.isfinite(x).all() for x in _leaves(ema[2]))


def test_source_swap_tells_whether_the_source_is_used(trainers):
  trainer = trainers[(1, 1)]
  pairs = {k: v[:4] for k, v in _batch(2).items()}
  kp = np.full((4, 18, 2), -1.0, np.float32)
  kp[:, 1], kp[:, 8], kp[:, 11] = (16, 6), (12, 20), (20, 20)  # neck, hips: a torso
  pairs.update(target_keypoints=kp, person_id=["a", "a", "b", "c"])
  params = jax.device_get(trainer.init_state(0).params)

  def randomise(*names):
    def fn(path, leaf):
      key = jax.tree_util.keystr(path)
      if "kernel" in key and any(n in key for n in names):
        return np.random.default_rng(len(key)).normal(0, 0.5, leaf.shape).astype(leaf.dtype)
      return leaf

    return jax.tree_util.tree_map_with_path(fn, params)

  # Zero-initialised layers opened, except the cross-attention output projections: the denoiser
  # predicts something, but nothing of the source reaches it.
  evaluator = training_eval.TrainingEval.from_config(trainer.config, trainer.diffusion)

  def source_swap(params, pairs):
    return evaluator.source_swap(trainer.model_from_params(params), pairs)

  closed = source_swap(randomise("out_conv"), pairs)
  assert all(
      pairs["person_id"][j] != pairs["person_id"][i] for i, j in enumerate(closed["partners"])
  )
  np.testing.assert_array_equal(closed["samples"], closed["samples_swapped_source"])
  assert closed["ssim"] == closed["ssim_swapped_source"]
  assert closed["body_colour_error"] == closed["body_colour_error_swapped_source"] > 0
  assert closed["body_x0_mse"] == closed["body_x0_mse_swapped_source"] > 0
  opened_params = randomise("out_conv", "proj_out")
  opened = source_swap(opened_params, pairs)
  assert not np.array_equal(opened["samples"], opened["samples_swapped_source"])
  assert opened["body_colour_error"] != opened["body_colour_error_swapped_source"]
  assert opened["body_x0_mse"] != opened["body_x0_mse_swapped_source"]
  again = source_swap(opened_params, pairs)  # seeded: the same figures
  assert all(again[k] == opened[k] for k in training_eval.SUMMARY_METRICS)
  with pytest.raises(ValueError, match="at least two identities"):
    source_swap(params, dict(pairs, person_id=["a"] * 4))


def test_an_unreadable_newest_checkpoint_is_moved_aside_and_the_run_resumes(
    tmp_path, fake_pipeline
):
  cfg = _config(
      num_train_steps=2, checkpoint_every=1, log_every=1, sample_every=0, keep_checkpoints=5
  )
  cfg.mesh.data, cfg.mesh.fsdp = 8, 1
  run = tmp_path / "run"
  directory = run / "checkpoints"
  state = train.Trainer(cfg, _mesh(cfg, 8, 1)).init_state(0)
  ckpt = checkpointing.TrainCheckpointer(directory, cfg)
  for step in (1, 2):  # two good checkpoints (no training needed for this)
    ckpt.save(step, state.replace(step=state.step + step), force=True)
  ckpt.close()
  # step 2's train state truncated, as a kill during a write or a bad disk leaves it
  assert _truncate_arrays(directory / "2" / "train_state")
  summary = train.train_and_evaluate(cfg, str(run))  # resumes from step 1, trains step 2
  assert summary["step"] == 2
  assert (directory / "unreadable_step_2").is_dir()  # kept, not deleted
  assert sorted(p.name for p in directory.iterdir() if p.name.isdigit()) == ["1", "2"]
  assert all(
      np.isfinite(x).all()
      for x in _leaves(checkpointing.restore_ema_params(directory, cfg.model, step=2))
  )

  # nothing readable: nothing is moved, and the error says how to start over
  for step in (1, 2):
    assert _truncate_arrays(directory / str(step) / "train_state")
  with pytest.raises(
      ValueError,
      match=r"no checkpoint .* can be read .*step 2: .*step 1: "
      r".*nothing was moved. To start over",
  ):
    train.train_and_evaluate(cfg, str(run))
  assert sorted(p.name for p in directory.iterdir() if p.name.isdigit()) == ["1", "2"]


def _truncate_arrays(item_dir) -> int:
  """Cuts every array data file of an Orbax item (OCDBT ``d/`` files) to 16 bytes."""
  files = [p for p in item_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
  for path in files:
    path.write_bytes(path.read_bytes()[:16])
  return len(files)
