"""Model <-> parameters: the one place that turns a model config into a PIDM, its parameter
pytree, their shardings, and back into a PIDM holding given parameters.

Training keeps parameters as pure dicts (``{'unet': {...: Array}}``) in its train state; Orbax
saves and restores those dicts; sampling and evaluation want a ``PIDM`` module. ``ModelSpec`` is
the bridge, built once per model config from a shapes-only model (nothing is allocated):

* ``spec.graphdef``: the model's static structure (what ``nnx.split`` keeps apart from values);
* ``spec.abstract_params(mesh, config)``: the parameters' shapes, dtypes and shardings (the target
  Orbax restores into);
* ``spec.shardings(mesh, config)``: each parameter's sharding from ``config.sharding``;
* ``spec.merge(params)``: a PIDM holding ``params`` (inside jit or outside), in eval mode, or in
  train mode with its dropout stream seeded from a key.

``new_model(model_config, seed)`` draws fresh parameters; the train state starts from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from pidm_jax import sharding as sharding_lib
from pidm_jax.models import PIDM


def new_model(model_config, seed: int = 0) -> PIDM:
  """A PIDM with parameters drawn from ``seed`` (its dropout stream starts from ``seed + 1``)."""
  return PIDM(model_config, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


@contextlib.contextmanager
def quiet_tracer_attribute_errors() -> Iterator[None]:
  """While tracing the model: a traced value's missing attributes fail without JAX's origin note.

  Each RNG stream draw of Flax NNX (``rngs.params()``, ``rngs.dropout()``) stores the new count
  through ``Variable.set_value``, which compares ``getattr(value, 'sharding', None)``. On a tracer
  that attribute raises, and JAX builds the error's message by searching the whole trace for
  where the value came from (``find_progenitors``), only for the message to be dropped by
  ``getattr``. Once per draw, that is quadratic in the model's size: for the paper's model 3.6 s
  of ``Trainer()`` (741 draws) and 1.2 s of lowering its train step (dropout), against 0.8 s and
  4.6 s without the note (the lowered programs are identical). Inside this context the note is
  left out: an error raised while tracing keeps its type and first line, without the "this value
  became a tracer due to ..." lines. Where JAX has no such hook this does nothing; JAX 0.12 no
  longer words the note for ``sharding``, so there it changes nothing either.
  """
  # pylint: disable-next=g-import-not-at-top
  from jax._src.interpreters import partial_eval as pe

  tracer = getattr(pe, "DynamicJaxprTracer", None)
  original = getattr(tracer, "_origin_msg", None) if tracer is not None else None
  if original is None:
    yield
    return
  tracer._origin_msg = lambda self: ""  # pylint: disable=protected-access
  try:
    yield
  finally:
    tracer._origin_msg = original  # pylint: disable=protected-access


def abstract_model(model_config) -> PIDM:
  """The PIDM of ``model_config`` with ShapeDtypeStructs for values (nothing allocated)."""
  with quiet_tracer_attribute_errors():
    return sharding_lib.abstract_module(lambda: new_model(model_config, 0))


def placeholder(x: jax.ShapeDtypeStruct) -> jax.Array:
  """A concrete value for non-parameter model state (the dropout RNG streams): keys from key 0,
  zeros for counters. Train mode reseeds the dropout stream; eval mode never reads it."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.split(jax.random.key(0), x.shape) if x.shape else jax.random.key(0)
  return jnp.zeros(x.shape, x.dtype)


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSpec:
  """The static structure of one model config and the shapes of its parameters (module doc)."""

  graphdef: Any
  param_state: nnx.State  # ShapeDtypeStructs, as nnx.split returns them
  rest: nnx.State  # the non-parameter state (dropout RNG streams), ShapeDtypeStructs

  @classmethod
  def from_config(cls, model_config) -> "ModelSpec":
    graphdef, params, rest = nnx.split(abstract_model(model_config), nnx.Param, ...)
    return cls(graphdef, params, rest)

  def shardings(self, mesh, config) -> dict:
    """Pure dict of each parameter's NamedSharding on ``mesh`` from ``config.sharding``."""
    rules = sharding_lib.rules_from_config(config)
    min_size = sharding_lib.min_shard_size_from_config(config)
    return sharding_lib.state_shardings(self.param_state, mesh, rules, min_size).to_pure_dict()

  def abstract_params(self, mesh=None, config=None) -> dict:
    """Pure dict of the parameters' ShapeDtypeStructs with their shardings: on ``mesh`` by
    ``config.sharding``, or without a mesh on this process's first device (a restore target)."""
    shapes = self.param_state.to_pure_dict()
    if mesh is None:
      local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree.map(lambda _: local, shapes)
    elif config is None:
      raise ValueError(
          "abstract_params: parameter shardings on a mesh need the run's config "
          "(config.sharding)"
      )
    else:
      shardings = self.shardings(mesh, config)
    return jax.tree.map(
        lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), shapes, shardings
    )

  def merge(self, params, *, train: bool = False, dropout_key=None) -> PIDM:
    """A PIDM holding ``params`` (a pure dict, e.g. a train state's EMA parameters); eval mode, or
    train mode with the dropout stream seeded from ``dropout_key``. Works inside jit."""
    if train and dropout_key is None:
      raise ValueError("ModelSpec.merge(train=True) needs a dropout_key")
    model = nnx.merge(self.graphdef, params, jax.tree.map(placeholder, self.rest))
    if train:
      model.train()
      nnx.reseed(model, dropout=dropout_key)
    else:
      model.eval()
    return model
