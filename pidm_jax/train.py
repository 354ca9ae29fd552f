"""Training: the train state, the sharded train step and the loop (``train_and_evaluate``).

The train state is a pytree (step, parameters, Optax state, EMA parameters, RNG key data); the
model's graph is kept static (``nnx.split`` once) and merged with the parameters inside the
jitted step. The step trains both directions of each (source, target) pair, drops the source
condition (and optionally the pose) for classifier-free guidance, uses the hybrid loss of
``pidm_jax.diffusion`` and updates the EMA parameters with decay 0 during the warm-up.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import parameter_overview
from flax import nnx
from jax.sharding import Mesh

from input_pipeline import build as build_lib
from input_pipeline import pipeline
from pidm_jax import checkpointing
from pidm_jax import console
from pidm_jax import diffusion as diffusion_lib
from pidm_jax import encoding
from pidm_jax import model_params
from pidm_jax import multihost
from pidm_jax import sharding as sharding_lib
from pidm_jax.diffusion import GaussianDiffusion
from pidm_jax.evaluation import source_swap as swap_lib
from pidm_jax.evaluation import training_eval
from pidm_jax.models import PIDM


@flax.struct.dataclass
class TrainState:
  """Everything a training run needs to continue, as one pytree."""

  step: jax.Array
  params: Any  # pure dict
  opt_state: Any
  ema_params: Any  # pure dict
  rng: jax.Array  # raw uint32 key data (checkpointable)


LR_DECAYS = ("constant", "cosine")


def learning_rate_schedule(train_cfg) -> optax.Schedule:
  """Linear warm-up from ``warmup_init_lr`` to ``learning_rate`` over ``warmup_steps``, then flat
  (``lr_decay = "constant"``, the official recipe) or a cosine decay to 0 at ``num_train_steps``
  (``"cosine"``, for short runs such as the CPU demo)."""
  decay = train_cfg.lr_decay
  if decay not in LR_DECAYS:
    raise ValueError(f"unknown train.lr_decay {decay!r}; expected one of {LR_DECAYS}")
  if decay == "constant":
    after = optax.constant_schedule(train_cfg.learning_rate)
  else:
    after = optax.cosine_decay_schedule(
        train_cfg.learning_rate, max(train_cfg.num_train_steps - max(train_cfg.warmup_steps, 0), 1)
    )
  if train_cfg.warmup_steps <= 0:
    return after
  return optax.join_schedules(
      [
          optax.linear_schedule(
              train_cfg.warmup_init_lr, train_cfg.learning_rate, train_cfg.warmup_steps
          ),
          after,
      ],
      [train_cfg.warmup_steps],
  )


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  """Global-norm clipping then Adam on the warm-up schedule (the official recipe)."""
  return optax.chain(
      optax.clip_by_global_norm(train_cfg.grad_clip_norm),
      optax.adam(
          learning_rate_schedule(train_cfg),
          b1=train_cfg.adam_b1,
          b2=train_cfg.adam_b2,
          eps=train_cfg.adam_eps,
      ),
  )


def ema_decay(step: jax.Array, train_cfg) -> jax.Array:
  """0 (copy the parameters) during the warm-up, ``ema_decay`` afterwards."""
  return jnp.where(step < train_cfg.warmup_steps, 0.0, train_cfg.ema_decay)


class SetupError(ValueError):
  """A run that cannot start as configured (batch size, workdir, disk space); said in one line."""


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """The global batch (samples = 2 x pairs) must split into pairs evenly over the mesh and the
  processes (``sharding.check_global_batch``); a SetupError otherwise."""
  try:
    pairs = sharding_lib.training_pairs(batch_size)
    sharding_lib.check_global_batch(
        pairs,
        mesh,
        f"config.train.batch_size = {batch_size} samples = {pairs} pairs (each pair is trained "
        "in both directions)",
        jax.process_count(),
    )
  except ValueError as e:
    raise SetupError(str(e)) from None


@dataclasses.dataclass(eq=False)  # hashed by identity (compiled helpers are cached per trainer)
class Trainer:
  """Holds the static parts of training (graph, diffusion, optimizer, shardings) and the
  compiled init and step functions."""

  config: Any
  mesh: Mesh

  def __post_init__(self):
    cfg = self.config
    self.diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    self.optimizer = make_optimizer(cfg.train)
    self.model_spec = model_params.ModelSpec.from_config(cfg.model)
    self.param_shardings = self.model_spec.shardings(self.mesh, cfg)
    replicated = sharding_lib.replicated(self.mesh)
    # The state's shapes follow from the parameters' (the spec traced the model once already).
    abstract_state = jax.eval_shape(
        functools.partial(self._state_from_params, seed=0),
        self.model_spec.param_state.to_pure_dict(),
    )
    opt_shardings = optax.tree_map_params(
        self.optimizer,
        lambda _, s: s,
        abstract_state.opt_state,
        self.param_shardings,
        transform_non_params=lambda _: replicated,
    )
    self.state_shardings = TrainState(
        step=replicated,
        params=self.param_shardings,
        opt_state=opt_shardings,
        ema_params=self.param_shardings,
        rng=replicated,
    )
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state,
        self.state_shardings,
    )
    self.batch_sharding = sharding_lib.batch_sharding(self.mesh)
    self._place_state = jax.jit(
        self._state_from_params,
        static_argnums=1,
        out_shardings=self.state_shardings,
        donate_argnums=0,  # the given parameters become the state's (no copy)
    )
    self.train_step = jax.jit(
        self._train_step,
        in_shardings=(self.state_shardings, None),
        out_shardings=(self.state_shardings, replicated),
        donate_argnums=(0,),
    )

  # -- model -------------------------------------------------------------------------------------
  def model_from_params(self, params, *, train: bool = False, dropout_key=None) -> PIDM:
    """A PIDM holding (pure-dict) parameters, inside jit or outside (``ModelSpec.merge``)."""
    return self.model_spec.merge(params, train=train, dropout_key=dropout_key)

  # -- state -------------------------------------------------------------------------------------
  def _state_from_params(self, params, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=self.optimizer.init(params),
        ema_params=params,
        rng=jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1)),
    )

  def init_state(self, seed: int) -> TrainState:
    """A fresh train state with parameters drawn from ``seed``.

    The parameters are drawn op by op (``model_params.new_model`` outside jit): each initialiser
    compiles a small program, shared by every parameter of its shape, where one jitted init of
    the whole model compiled a program of several hundred random draws (for the paper's model:
    12.6 s op by op against 33 s lowering and compiling, on 2 CPU cores). The draws are the same on
    every process and mesh; they are then placed on the mesh by ``state_from_params``.
    """
    params = nnx.state(model_params.new_model(self.config.model, seed), nnx.Param).to_pure_dict()
    return self.state_from_params(multihost.to_global(params, self.param_shardings), seed)

  def state_from_params(self, params, seed: int) -> TrainState:
    """A fresh train state starting from given parameters (drawn, or converted official ones),
    placed with the trainer's shardings. ``params`` are donated: the state holds them now."""
    return self._place_state(params, seed)

  # -- step --------------------------------------------------------------------------------------
  def loss_fn(self, params, batch, rng):
    """The hybrid loss on 2 x pairs samples (both directions of each pair)."""
    cfg = self.config
    missing = [k for k in encoding.MODEL_INPUT_KEYS if k not in batch]
    if missing:
      raise ValueError(f"training batch lacks {missing}; it has {sorted(batch)}")
    batch = encoding.to_model_inputs(batch)  # the pipeline's uint8 -> float32, on the device
    x0 = jnp.concatenate([batch["target_image"], batch["source_image"]])
    style = jnp.concatenate([batch["source_image"], batch["target_image"]])
    pose = jnp.concatenate([batch["target_pose"], batch["source_pose"]])
    b = x0.shape[0]
    t_key, noise_key, drop_key, cond_key = jax.random.split(rng, 4)
    t = diffusion_lib.sample_timesteps(
        t_key,
        (b,),
        self.diffusion.num_timesteps,
        cfg.train.high_noise_fraction,
        cfg.train.high_noise_from,
    )
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
    x_t = self.diffusion.q_sample(x0, t, noise)
    model = self.model_from_params(params, train=True, dropout_key=drop_key)
    out = model(x_t, pose, t, style, rng=cond_key)
    terms = self.diffusion.training_losses(out, x0, x_t, t, noise)
    loss = jnp.mean(terms["loss"])
    return loss, {"loss": loss, "mse": jnp.mean(terms["mse"]), "vb": jnp.mean(terms["vb"])}

  def _train_step(self, state: TrainState, batch):
    cfg = self.config.train
    rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
    with model_params.quiet_tracer_attribute_errors():  # dropout draws; see there
      grads, metrics = jax.grad(self.loss_fn, has_aux=True)(state.params, batch, step_rng)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A non-finite step never reaches the state: the loop either stops (naming the step) or, with
    # config.train.skip_nonfinite, counts it and goes on. Selecting here in both cases keeps one
    # compiled program for both settings.
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    params = _select(finite, params, state.params)
    opt_state = _select(finite, opt_state, state.opt_state)
    decay = ema_decay(state.step, cfg)
    ema = _select(
        finite,
        optax.incremental_update(params, state.ema_params, step_size=1.0 - decay),
        state.ema_params,
    )
    metrics = dict(
        metrics,
        grad_norm=grad_norm,
        learning_rate=learning_rate_schedule(cfg)(state.step),
        finite=finite.astype(jnp.float32),
    )
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        ema_params=ema,
        rng=jax.random.key_data(rng),
    )
    return new_state, metrics


def _select(pred, new, old):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def check_workdir(workdir: str, checkpoint_bytes: int, keep_checkpoints: int) -> None:
  """Fails before training when ``workdir`` cannot be written or its disk cannot hold the
  checkpoints: ``keep_checkpoints`` + 1 (the one being written) of ``checkpoint_bytes`` each, the
  uncompressed size of the train state and EMA parameters (Orbax's zstd saves a little less)."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe_{jax.process_index()}_{os.getpid()}")
    with open(probe, "wb") as f:
      f.write(b"\0" * 4096)
      f.flush()
      os.fsync(f.fileno())
    os.remove(probe)
  except OSError as e:
    raise SetupError(
        f"workdir {workdir} cannot be written ({e.strerror or e}); give a "
        "--workdir this user can write"
    ) from None
  needed = (int(keep_checkpoints) + 1) * int(checkpoint_bytes)
  free = shutil.disk_usage(workdir).free
  if free < needed:
    raise SetupError(
        f"workdir {workdir} has {free / 2**20:.0f} MiB free, but {keep_checkpoints} kept "
        f"checkpoints and the one being written need about {needed / 2**20:.0f} MiB "
        f"({checkpoint_bytes / 2**20:.0f} MiB each); free space, lower "
        "--config.train.keep_checkpoints or use another --workdir"
    )


def state_bytes(abstract_state) -> int:
  """Bytes of a train state's arrays (what one checkpoint stores, before compression)."""
  return sum(
      int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
      for x in jax.tree.leaves(abstract_state)
      if hasattr(x, "shape") and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
  )


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming if ``workdir`` holds a checkpoint) and returns the final metrics."""

  workdir = os.path.abspath(workdir)
  tcfg = config.train
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise SetupError(f"workdir {workdir} cannot be created ({e.strerror or e})") from None
  mesh = sharding_lib.create_mesh(config.mesh)
  check_batch_size(tcfg.batch_size, mesh)
  console.say(
      f"mesh {dict(mesh.shape)} over {mesh.size} device(s) of kind "
      f"{mesh.devices.flat[0].device_kind!r}, {jax.process_count()} process(es)"
  )
  # The abstract model is built outside the mesh context: its parameters carry logical axis
  # names, which the Trainer maps to mesh axes itself.
  trainer = Trainer(config, mesh)
  check_workdir(workdir, state_bytes(trainer.abstract_state), tcfg.keep_checkpoints)
  build_lib.ensure_dataset(config)
  with jax.set_mesh(mesh):
    train_iter, eval_data = pipeline.create_datasets(
        config,
        trainer.batch_sharding,
        eval_batch_size=max(sharding_lib.batch_size_divisor(mesh), tcfg.num_sample_pairs),
    )
    ckpt = checkpointing.TrainCheckpointer(os.path.join(workdir, "checkpoints"), config)

    # Resume order: this workdir's newest checkpoint, else given initial weights, else scratch.
    if ckpt.latest_step() is not None:
      state = ckpt.restore_newest_readable(trainer.abstract_state, train_iter, log=logging.warning)
      console.say(f"resumed from step {int(state.step)} of {ckpt.directory}")
    elif tcfg.init_checkpoint:
      # The network must be the same; another diffusion (say, fine-tuning eps weights as v) is
      # the user's choice and said.
      checkpointing.check_config(tcfg.init_checkpoint, config, sections=("model",))
      stored = checkpointing.read_config_json(tcfg.init_checkpoint)
      for line in checkpointing.config_mismatches(stored or {}, config, ("diffusion",)):
        logging.warning("init_checkpoint %s: %s", tcfg.init_checkpoint, line)
      params = checkpointing.restore_ema_params(
          tcfg.init_checkpoint,
          config.model,
          mesh=mesh,
          config=config,
          log=lambda message: console.say(f"warning: {message}"),
          spec=trainer.model_spec,
      )
      state = trainer.state_from_params(params, config.seed)
      console.say(f"initialised from {tcfg.init_checkpoint}")
    else:
      state = trainer.init_state(config.seed)

    writer = (
        console.TensorBoardWriter(os.path.join(workdir, "tensorboard"))
        if jax.process_index() == 0
        else None
    )
    start = int(state.step)
    if writer is not None and start == 0:
      writer.text("parameters", parameter_overview.get_parameter_overview(state.params))
    sample_batch = evaluator = None
    if eval_data:
      sample_batch = swap_lib.first_pairs(eval_data, tcfg.num_sample_pairs)
      evaluator = training_eval.TrainingEval.from_config(config, trainer.diffusion)

    summary = {"step": start}
    pending = []
    skipped = 0
    t_last, step_last = time.time(), start
    t_start = time.time()
    progress = console.Progress(tcfg.num_train_steps)  # rate and ETA: compile and pauses left out
    with multihost.Preemption() as preempt, ckpt.finishing_on_error():
      step = start
      while step < tcfg.num_train_steps:
        batch = next(train_iter)
        state, metrics = trainer.train_step(state, batch)
        step += 1
        if not progress.started:  # the first call of this run compiled the step
          progress.start(step)
        pending.append(metrics)
        log_now = step % tcfg.log_every == 0 or step == tcfg.num_train_steps
        save_now = tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0
        if log_now or save_now:
          # Metrics come to the host here only (every log_every steps, and before saving).
          fetched = jax.device_get(pending)
          pending = []
          bad = [step - len(fetched) + i + 1 for i, m in enumerate(fetched) if not m["finite"]]
          if bad and not tcfg.skip_nonfinite:
            ckpt.wait()
            raise FloatingPointError(
                f"non-finite loss or gradient at step {bad[0]}; the last good checkpoint is "
                f"step {ckpt.latest_step()} in {ckpt.directory}"
            )
          now = time.time()
          rate = progress.rate(step)
          if rate is None:  # no stepping time measured yet (the first interval): wall clock
            rate = (step - step_last) / max(now - t_last, 1e-9)
          t_last, step_last = now, step
          means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
          skipped += len(bad)
          means["nonfinite_steps_skipped"] = float(skipped)  # in this run so far
          means.update(steps_per_second=rate, samples_per_second=rate * tcfg.batch_size)
          summary.update(means, step=step)
          if writer is not None:
            writer.scalars(step, means)
          console.say(
              progress.line(step, rate, loss=means["loss"], mse=means["mse"], vb=means["vb"])
          )
        stop = preempt.stop_now(step, log_step=bool(log_now or save_now))
        if save_now or stop:
          with progress.paused():
            ckpt.save(step, state, train_iter, force=stop)
        if (
            sample_batch is not None
            and tcfg.sample_every
            and step % tcfg.sample_every == 0
            and step < tcfg.num_train_steps
        ):
          with progress.paused():
            _evaluate_and_log(evaluator, trainer, state, sample_batch, step, workdir, writer)
        if stop:
          ckpt.wait()
          logging.warning("stopped at step %d after a termination signal; checkpoint saved", step)
          summary["preempted"] = True
          break
    summary["train_seconds"] = time.time() - t_start  # this run's steps (and their checkpoints)
    summary["steps"] = step
    if not summary.get("preempted"):
      if ckpt.latest_step() != step:
        ckpt.save(step, state, train_iter, force=True)
      ckpt.wait()
      if sample_batch is not None:
        t_sample = time.time()
        summary.update(
            _evaluate_and_log(evaluator, trainer, state, sample_batch, step, workdir, writer)
        )
        summary["eval_seconds"] = time.time() - t_sample
    ckpt.close()
    if writer is not None:
      writer.close()
      _write_summary(workdir, summary)
    return summary


def _write_summary(workdir: str, summary: dict) -> None:
  """``<workdir>/summary.json``: the run's final figures, for scripts (process 0)."""
  path = os.path.join(workdir, "summary.json")
  values = {
      k: (float(v) if isinstance(v, (float, np.floating)) else v)
      for k, v in summary.items()
      if isinstance(v, (int, float, str, bool, np.number))
  }
  with open(path + ".tmp", "w") as f:
    json.dump(values, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


def _evaluate_and_log(
    evaluator, trainer: Trainer, state: TrainState, pairs: dict, step: int, workdir: str, writer
) -> dict:
  """Evaluates the EMA model on the fixed test pairs; logs the figures and grids (process 0)."""
  metrics, grids = evaluator.evaluate(trainer.model_from_params(state.ema_params), pairs)
  if writer is not None:
    paths = training_eval.save_grids(grids, os.path.join(workdir, "samples"), step)
    for name, grid in grids.items():
      writer.image(step, training_eval.GRID_TAGS[name], grid)
    writer.scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
    console.say(training_eval.summary_line(step, metrics))
    metrics.update(paths)
  return metrics
