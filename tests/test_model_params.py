"""pidm_jax.model_params: the one bridge between a model config, its parameters and a PIDM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from pidm_jax import model_params, sharding


@pytest.fixture(scope="module")
def setup():
  config = tiny.get_config()
  spec = model_params.ModelSpec.from_config(config.model)
  model = model_params.new_model(config.model, seed=3)
  return config, spec, model


def test_merge_round_trips_parameters_and_sets_the_mode(setup):
  config, spec, model = setup
  params = nnx.state(model, nnx.Param).to_pure_dict()
  shapes = spec.abstract_params()
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  assert all(
      a.shape == b.shape and a.dtype == b.dtype
      for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(params))
  )
  merged = spec.merge(params)
  assert all(
      np.array_equal(a, b)
      for a, b in zip(
          jax.tree.leaves(nnx.state(merged, nnx.Param).to_pure_dict()), jax.tree.leaves(params)
      )
  )
  # eval mode: the same forward pass as the original model in eval mode
  model.eval()
  s = config.model.image_size
  x = jnp.linspace(-1, 1, 2 * s * s * 3).reshape(2, s, s, 3)
  pose = jnp.zeros((2, s, s, config.model.pose_channels))
  t = jnp.array([10, 500])
  np.testing.assert_array_equal(merged(x, pose, t, x[::-1]), model(x, pose, t, x[::-1]))
  assert merged.deterministic is True
  trained = spec.merge(params, train=True, dropout_key=jax.random.key(7))
  assert trained.deterministic is False
  with pytest.raises(ValueError, match="needs a dropout_key"):
    spec.merge(params, train=True)
  # inside jit: the graph is static, the parameters are traced
  out = jax.jit(lambda p: spec.merge(p)(x, pose, t, x[::-1]))(params)
  np.testing.assert_allclose(out, merged(x, pose, t, x[::-1]), rtol=1e-5, atol=1e-5)


def test_shardings_follow_the_config_and_a_mesh_needs_one(setup):
  config, spec, _ = setup
  mesh = sharding.create_mesh(config.mesh)
  shardings = spec.shardings(mesh, config)
  on_mesh = spec.abstract_params(mesh, config)
  assert all(a.sharding == b for a, b in zip(jax.tree.leaves(on_mesh), jax.tree.leaves(shardings)))
  local = spec.abstract_params()
  assert {a.sharding for a in jax.tree.leaves(local)} == {
      jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  }
  with pytest.raises(ValueError, match="need the run's config"):
    spec.abstract_params(mesh)


def test_quiet_tracer_attribute_errors_drops_only_the_origin_note(monkeypatch):
  import inspect  # pylint: disable=import-outside-toplevel

  from jax._src import core  # pylint: disable=import-outside-toplevel
  from jax._src.interpreters import partial_eval as pe  # pylint: disable=import-outside-toplevel

  searches = []
  original = pe.DynamicJaxprTracer._origin_msg  # pylint: disable=protected-access

  def counted(self):
    searches.append(1)
    return original(self)

  monkeypatch.setattr(pe.DynamicJaxprTracer, "_origin_msg", counted)
  seen = {}

  def probe(x):
    y = jnp.sin(x) + 1
    with pytest.raises(AttributeError) as loud:
      y.sharding  # pylint: disable=pointless-statement
    seen["searches_loud"] = len(searches)
    with model_params.quiet_tracer_attribute_errors():
      with pytest.raises(AttributeError) as quiet:
        y.sharding  # pylint: disable=pointless-statement
      seen["getattr"] = getattr(y, "sharding", None)
    seen["searches_quiet"] = len(searches) - seen["searches_loud"]
    seen["loud"], seen["quiet"] = str(loud.value), str(quiet.value)
    return y

  jax.jit(probe).lower(jnp.ones(3))
  # JAX 0.10 looks up where the value came from for this error; JAX 0.12 no longer does.
  searches_for_sharding = "_origin_msg" in inspect.getsource(core.Tracer.sharding.fget)
  assert seen["searches_loud"] == int(searches_for_sharding)
  assert seen["searches_quiet"] == 0  # not inside the context
  assert seen["getattr"] is None
  assert seen["quiet"].splitlines()[0] == seen["loud"].splitlines()[0]  # same error, same line
  assert pe.DynamicJaxprTracer._origin_msg is counted  # pylint: disable=protected-access


def test_quiet_tracer_attribute_errors_restores_jax_after_an_error():
  from jax._src.interpreters import partial_eval as pe  # pylint: disable=import-outside-toplevel

  before = pe.DynamicJaxprTracer._origin_msg  # pylint: disable=protected-access
  try:
    with model_params.quiet_tracer_attribute_errors():
      assert pe.DynamicJaxprTracer._origin_msg is not before  # pylint: disable=protected-access
      raise KeyError("inside")
  except KeyError:
    pass
  assert pe.DynamicJaxprTracer._origin_msg is before  # pylint: disable=protected-access
