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
import math
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pidm_jax import sharding as sharding_lib
from pidm_jax.diffusion import GaussianDiffusion
from pidm_jax.models import PIDM

PAIR_KEYS = ("source_image", "target_image", "source_pose", "target_pose")


@flax.struct.dataclass
class TrainState:
  """Everything a training run needs to continue, as one pytree."""
  step: jax.Array
  params: Any  # pure dict
  opt_state: Any
  ema_params: Any  # pure dict
  rng: jax.Array  # raw uint32 key data (checkpointable)


def learning_rate_schedule(train_cfg) -> optax.Schedule:
  """Linear warm-up from ``warmup_init_lr`` to ``learning_rate`` over ``warmup_steps``, then flat."""
  if train_cfg.warmup_steps <= 0:
    return optax.constant_schedule(train_cfg.learning_rate)
  return optax.join_schedules([
      optax.linear_schedule(train_cfg.warmup_init_lr, train_cfg.learning_rate,
                            train_cfg.warmup_steps),
      optax.constant_schedule(train_cfg.learning_rate),
  ], [train_cfg.warmup_steps])


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  """Global-norm clipping then Adam on the warm-up schedule (the official recipe)."""
  return optax.chain(
      optax.clip_by_global_norm(train_cfg.grad_clip_norm),
      optax.adam(learning_rate_schedule(train_cfg), b1=train_cfg.adam_b1, b2=train_cfg.adam_b2,
                 eps=train_cfg.adam_eps),
  )


def ema_decay(step: jax.Array, train_cfg) -> jax.Array:
  """0 (copy the parameters) during the warm-up, ``ema_decay`` afterwards."""
  return jnp.where(step < train_cfg.warmup_steps, 0.0, train_cfg.ema_decay)


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """The global batch (samples = 2 x pairs) must split into pairs evenly over the mesh."""
  divisor = sharding_lib.batch_size_divisor(mesh)
  if batch_size % 2 or (batch_size // 2) % divisor:
    raise ValueError(
        f"config.train.batch_size = {batch_size} samples must be 2 x a multiple of {divisor} "
        f"pairs (the mesh splits the batch over {divisor} devices; each pair is trained in "
        f"both directions)")


@dataclasses.dataclass
class Trainer:
  """Holds the static parts of training (graph, diffusion, optimizer, shardings) and the
  compiled init and step functions."""

  config: Any
  mesh: Mesh

  def __post_init__(self):
    cfg = self.config
    self.diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    self.optimizer = make_optimizer(cfg.train)
    abstract = nnx.eval_shape(lambda: self._new_model(0))
    self.graphdef, abstract_params, self._abstract_rest = nnx.split(abstract, nnx.Param, ...)
    rules = sharding_lib.rules_from_config(cfg)
    min_size = sharding_lib.min_shard_size_from_config(cfg)
    self.param_shardings = sharding_lib.state_shardings(abstract_params, self.mesh, rules,
                                                         min_size).to_pure_dict()
    self.abstract_params = abstract_params.to_pure_dict()
    replicated = sharding_lib.replicated(self.mesh)
    abstract_state = jax.eval_shape(functools.partial(self._init_state, 0))
    opt_shardings = optax.tree_map_params(
        self.optimizer, lambda _, s: s, abstract_state.opt_state, self.param_shardings,
        transform_non_params=lambda _: replicated)
    self.state_shardings = TrainState(step=replicated, params=self.param_shardings,
                                      opt_state=opt_shardings, ema_params=self.param_shardings,
                                      rng=replicated)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
        self.state_shardings)
    self.batch_sharding = sharding_lib.batch_sharding(self.mesh)
    self.init_state = jax.jit(self._init_state, static_argnums=0,
                              out_shardings=self.state_shardings)
    self.train_step = jax.jit(self._train_step, in_shardings=(self.state_shardings, None),
                              out_shardings=(self.state_shardings, replicated),
                              donate_argnums=(0,))

  # -- model -------------------------------------------------------------------------------------
  def _new_model(self, seed) -> PIDM:
    return PIDM(self.config.model, rngs=nnx.Rngs(params=seed, dropout=seed + 1))

  def model_from_params(self, params, *, train: bool = False, dropout_key=None) -> PIDM:
    """Merges the static graph with (pure-dict) parameters; inside jit or outside."""
    rest = jax.tree.map(_fresh_rng_state, self._abstract_rest)
    model = nnx.merge(self.graphdef, params, rest)
    if train:
      model.train()
      nnx.reseed(model, dropout=dropout_key)
    else:
      model.eval()
    return model

  # -- state -------------------------------------------------------------------------------------
  def _init_state(self, seed: int) -> TrainState:
    key = jax.random.key(seed)
    params = nnx.state(self._new_model(seed), nnx.Param).to_pure_dict()
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.optimizer.init(params), ema_params=params,
                      rng=jax.random.key_data(jax.random.fold_in(key, 1)))

  def state_from_params(self, params, seed: int) -> TrainState:
    """A fresh train state starting from given (e.g. converted official) parameters."""
    fn = jax.jit(lambda p: TrainState(
        step=jnp.zeros((), jnp.int32), params=p, opt_state=self.optimizer.init(p), ema_params=p,
        rng=jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))),
                 out_shardings=self.state_shardings)
    return fn(params)

  # -- step --------------------------------------------------------------------------------------
  def loss_fn(self, params, batch, rng):
    """The hybrid loss on 2 x pairs samples (both directions of each pair)."""
    cfg = self.config
    missing = [k for k in PAIR_KEYS if k not in batch]
    if missing:
      raise ValueError(f"training batch lacks {missing}; it has {sorted(batch)}")
    x0 = jnp.concatenate([batch["target_image"], batch["source_image"]])
    style = jnp.concatenate([batch["source_image"], batch["target_image"]])
    pose = jnp.concatenate([batch["target_pose"], batch["source_pose"]])
    b = x0.shape[0]
    t_key, noise_key, drop_key, cond_key = jax.random.split(rng, 4)
    t = jax.random.randint(t_key, (b,), 0, self.diffusion.num_timesteps)
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
    grads, metrics = jax.grad(self.loss_fn, has_aux=True)(state.params, batch, step_rng)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    if cfg.get("skip_nonfinite", False):
      params = _select(finite, params, state.params)
      opt_state = _select(finite, opt_state, state.opt_state)
    decay = ema_decay(state.step, cfg)
    ema = optax.incremental_update(params, state.ema_params, step_size=1.0 - decay)
    if cfg.get("skip_nonfinite", False):
      ema = _select(finite, ema, state.ema_params)
    metrics = dict(metrics, grad_norm=grad_norm,
                   learning_rate=learning_rate_schedule(cfg)(state.step),
                   finite=finite.astype(jnp.float32))
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           ema_params=ema, rng=jax.random.key_data(rng))
    return new_state, metrics


def _select(pred, new, old):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def _fresh_rng_state(x):
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.key(0) if not x.shape else jax.random.split(jax.random.key(0), x.shape)
  return jnp.zeros(x.shape, x.dtype)
