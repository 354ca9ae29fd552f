"""Tests of pidm_jax.sampling: grids, step maths, guidance, appearance control, the compiled loop.

Cheap checks use analytic or toy predictors; the tiny PIDM (random non-zero weights) runs the
compiled sampler once per program (module-scoped), with batch 2 at 16x16 and a few steps.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from configs import tiny
from pidm_jax import sampling
from pidm_jax.diffusion import GaussianDiffusion
from pidm_jax.models import PIDM, null_pose

T = 1000
B, H, W = 2, 16, 16


def KEY(seed):  # pylint: disable=invalid-name
  """PRNG keys for the tests: 'rbg' compiles in a fraction of threefry's time on CPU, and the
  sampler works with any key implementation."""
  return jax.random.key(seed, impl="rbg")


@pytest.fixture(scope="module")
def diffusion():
  return sampling.default_diffusion()


def _ab_ext(diffusion):
  return np.append(1.0, diffusion.alphas_cumprod)


def _toy_eps(x, t):
  """A smooth eps predictor depending on x and t (float32 JAX or float64 NumPy)."""
  lib = jnp if isinstance(x, jax.Array) else np
  return lib.tanh(0.7 * x + 0.3 * lib.sin(3.0 * x) + t / 1000.0)


def _toy_predict(x, t):
  eps = _toy_eps(x, t)
  return jnp.concatenate([eps, 0.5 * jnp.tanh(x)], axis=-1)


def _run(predict, x_init, plan, options, rng, appearance=None, python_loop=False):
  """sampling.run_steps under one jit (eager dispatch would compile every small op)."""
  fn = jax.jit(
      lambda x, k, app: sampling.run_steps(
          predict, x, plan, options, k, app, python_loop=python_loop
      )
  )
  return fn(x_init, rng, appearance)


def _count_traces(sampler) -> list:
  """Records each trace of the sampler's whole-batch program (an entry per trace); call before
  the first sampling call (the jitted program closes over ``sampler.run``)."""
  traces, run = [], sampler.run

  def counted(*args, **kwargs):
    traces.append(1)
    return run(*args, **kwargs)

  sampler.run = counted
  return traces


def _count_eqns(jaxpr) -> int:
  """Equations of a jaxpr including every sub-jaxpr (scan bodies, pjit calls, ...)."""
  total = 0
  for eqn in jaxpr.eqns:
    total += 1
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += _count_eqns(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += _count_eqns(sub)
  return total


# ----------------------------------------------------------------------------------------------
# Grids and plans


@pytest.mark.parametrize("steps", [1, 10, 20, 25, 30, 50, 100, 300, 1000])
def test_official_grid_is_range(steps):
  np.testing.assert_array_equal(sampling.timestep_grid(T, steps), list(range(0, T, T // steps)))


def test_trailing_grid_starts_at_last_timestep():
  grid = sampling.timestep_grid(T, 50, "trailing")
  assert grid[-1] == T - 1 and grid[0] == 19 and len(grid) == 50
  np.testing.assert_array_equal(np.diff(grid), 20)
  np.testing.assert_array_equal(sampling.timestep_grid(T, T, "trailing"), np.arange(T))


def test_default_spacing_per_algorithm():
  assert sampling.SamplerOptions(algorithm="ddim").spacing == "official"
  assert sampling.SamplerOptions(algorithm="ddpm").spacing == "official"
  assert sampling.SamplerOptions(algorithm="dpm_solver").spacing == "trailing"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(algorithm="euler"), "algorithm"),
        (dict(steps=0), "steps"),
        (dict(spacing="uniform"), "spacing"),
        (dict(eta=0.5, algorithm="dpm_solver"), "eta applies to ddim"),
        (dict(appearance="late"), "appearance"),
    ],
)
def test_bad_options_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sampling.SamplerOptions(**kwargs)


def test_ddim_plan_last_step_returns_x0(diffusion):
  plan = sampling.make_plan(diffusion, sampling.SamplerOptions(steps=50, eta=1.0))
  a = plan.arrays
  np.testing.assert_array_equal(a["t"], np.arange(980, -1, -20))
  np.testing.assert_array_equal(a["t_next"], np.append(np.arange(960, -1, -20), -1))
  assert a["sqrt_ab_next"][-1] == 1.0 and a["c1"][-1] == 0.0 and a["c2"][-1] == 0.0


def _official_ddim_float64(diffusion, x, steps, eta, noises):
  """The official ddim_steps loop (its diffusion.py) in float64 NumPy."""
  ab = _ab_ext(diffusion)
  seq = list(range(0, T, T // steps))
  seq_next = [-1] + seq[:-1]
  for k, (i, j) in enumerate(zip(reversed(seq), reversed(seq_next))):
    at, an = ab[i + 1], ab[j + 1]
    e = _toy_eps(x, i)
    x0 = (x - e * np.sqrt(1 - at)) / np.sqrt(at)
    c1 = eta * np.sqrt((1 - at / an) * (1 - an) / (1 - at))
    c2 = np.sqrt(1 - an - c1**2)
    x = np.sqrt(an) * x0 + c1 * noises[k] + c2 * e
  return x


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_official_loop_in_float64(diffusion, eta):
  steps = 10
  options = sampling.SamplerOptions(steps=steps, eta=eta)
  plan = sampling.make_plan(diffusion, options)
  x_t = jax.random.normal(KEY(0), (B, 8, 8, 3))
  rng = KEY(5)
  out = _run(_toy_predict, x_t, plan, options, rng)
  # the per-step noise the sampler draws: key k of split(rng, n), its first half
  keys = jax.random.split(rng, plan.num_steps)
  noises = [
      np.asarray(jax.random.normal(sampling.split_step_key(k)[0], x_t.shape), np.float64)
      for k in keys
  ]
  want = _official_ddim_float64(diffusion, np.asarray(x_t, np.float64), steps, eta, noises)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=2e-4)


def test_ddim_eta0_deterministic_and_rng_free(diffusion):
  options = sampling.SamplerOptions(steps=10)
  plan = sampling.make_plan(diffusion, options)
  x_t = jax.random.normal(KEY(0), (B, 8, 8, 3))
  a = _run(_toy_predict, x_t, plan, options, KEY(1))
  b = _run(_toy_predict, x_t, plan, options, KEY(2))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize(
    "options",
    [
        sampling.SamplerOptions(steps=10, eta=0.7),
        sampling.SamplerOptions(steps=10, eta=1.0, clip_denoised=True),
        sampling.SamplerOptions(algorithm="ddpm", steps=5),
        sampling.SamplerOptions(algorithm="dpm_solver", steps=6),
    ],
    ids=["ddim", "ddim_clipped", "ddpm", "dpm_solver"],
)
def test_v_and_x0_models_sample_like_the_eps_model_they_encode(diffusion, prediction, options):
  """A v- (or x0-) predicting model whose output encodes the toy eps model gives that model's
  samples: the sampler reads the prediction through the process's parameterisation."""
  ab = jnp.asarray(diffusion.alphas_cumprod, jnp.float32)

  def encoded(x, t):
    a, s = jnp.sqrt(ab[t]), jnp.sqrt(1.0 - ab[t])
    eps = _toy_eps(x, t)
    pred = (eps - s * x) / a if prediction == "v" else (x - s * eps) / a
    return jnp.concatenate([pred, 0.5 * jnp.tanh(x)], axis=-1)

  other = GaussianDiffusion(diffusion.betas, prediction)
  x_t = jax.random.normal(KEY(0), (B, 8, 8, 3))
  want = _run(_toy_predict, x_t, sampling.make_plan(diffusion, options), options, KEY(6))
  got = _run(encoded, x_t, sampling.make_plan(other, options), options, KEY(6))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-3, atol=1e-3)
  # and the cached sampler keys on the parameterisation
  assert sampling.get_sampler(other, options).plan.diffusion.prediction == prediction


# ----------------------------------------------------------------------------------------------
# DDPM and DPM-Solver++


def test_ddpm_step_matches_official_formulas(diffusion):
  """Learned-range variance, clipped x0, posterior mean, noise only for t > 0 (float64)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 4, 4, 3))
  out = rng.normal(size=(3, 4, 4, 6))
  z = rng.normal(size=x.shape)
  d = diffusion
  for t in (0, 1, 500, 999):
    got, _ = sampling.ddpm_step(
        d,
        jnp.asarray(x, jnp.float32),
        jnp.asarray(out, jnp.float32),
        jnp.int32(t),
        jnp.asarray(z, jnp.float32),
        clip=True,
    )
    eps, v = out[..., :3], out[..., 3:]
    x0 = np.clip(
        np.sqrt(1 / d.alphas_cumprod[t]) * x - np.sqrt(1 / d.alphas_cumprod[t] - 1) * eps, -1, 1
    )
    mean = d.posterior_mean_coef1[t] * x0 + d.posterior_mean_coef2[t] * x
    frac = (v + 1) / 2
    log_var = frac * np.log(d.betas[t]) + (1 - frac) * d.posterior_log_variance_clipped[t]
    want = mean + (t > 0) * np.exp(0.5 * log_var) * z
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_ddpm_full_grid_is_the_original_chain_and_respacing_keeps_alpha_bar(diffusion):
  plan = sampling.make_plan(diffusion, sampling.SamplerOptions(algorithm="ddpm", steps=T))
  assert plan.diffusion is diffusion and plan.num_steps == T
  np.testing.assert_array_equal(plan.arrays["t"], np.arange(T - 1, -1, -1))
  grid = sampling.timestep_grid(T, 50)
  short = sampling.respaced(diffusion, grid)
  np.testing.assert_allclose(short.alphas_cumprod, diffusion.alphas_cumprod[grid], rtol=1e-12)


def _gaussian_problem(diffusion, s=0.5):
  """Data N(0, s^2): the exact eps(x, t) and the exact x0-prediction at the end of the ODE."""
  ab32 = jnp.asarray(diffusion.alphas_cumprod, jnp.float32)

  def predict(x, t):
    a = ab32[t]
    eps = jnp.sqrt(1 - a) * x / (a * s * s + 1 - a)
    return jnp.concatenate([eps, -jnp.ones_like(eps)], axis=-1)

  def exact(x_start, t_start, t_last):
    ab = diffusion.alphas_cumprod
    a_t, a_0 = ab[t_start], ab[t_last]
    x = (
        np.asarray(x_start, np.float64)
        * np.sqrt(a_0 * s * s + 1 - a_0)
        / np.sqrt(a_t * s * s + 1 - a_t)
    )  # the probability-flow ODE keeps x / std(x_t) constant
    eps = np.sqrt(1 - a_0) * x / (a_0 * s * s + 1 - a_0)
    return (x - np.sqrt(1 - a_0) * eps) / np.sqrt(a_0)

  return predict, exact


def _ode_error(diffusion, algorithm, steps, spacing=None):
  predict, exact = _gaussian_problem(diffusion)
  options = sampling.SamplerOptions(algorithm=algorithm, steps=steps, spacing=spacing)
  plan = sampling.make_plan(diffusion, options)
  x_t = jax.random.normal(KEY(0), (2, 16, 16, 3))
  out = _run(predict, x_t, plan, options, KEY(1))
  want = exact(x_t, plan.arrays["t"][0], plan.arrays["t"][-1])
  return float(np.sqrt(np.mean((np.asarray(out, np.float64) - want) ** 2)))


def test_dpm_solver_is_second_order_and_beats_ddim(diffusion):
  # second order: doubling the steps divides the error by about 4 or more (measured 4.1 for
  # 100 -> 200 steps); DDIM, first order, by about 2 (measured 2.0)
  dpm = [_ode_error(diffusion, "dpm_solver", n, "official") for n in (100, 200)]
  ddim = [_ode_error(diffusion, "ddim", n, "official") for n in (100, 200)]
  assert dpm[0] / dpm[1] > 3.5, dpm
  assert 1.6 < ddim[0] / ddim[1] < 2.4, ddim
  # 20 DPM-Solver++ steps (trailing grid) beat the official 50 DDIM steps (measured 5.6e-3 vs
  # 2.8e-2 RMS error)
  assert _ode_error(diffusion, "dpm_solver", 20) < 0.3 * _ode_error(diffusion, "ddim", 50)


def test_ddpm_samples_have_the_data_spread(diffusion):
  predict, _ = _gaussian_problem(diffusion, s=0.5)
  options = sampling.SamplerOptions(algorithm="ddpm", steps=T)
  plan = sampling.make_plan(diffusion, options)
  x_t = jax.random.normal(KEY(0), (4, 16, 16, 3))
  out = np.asarray(_run(predict, x_t, plan, options, KEY(1)))
  assert 0.45 < out.std() < 0.55 and abs(out.mean()) < 0.02


# ----------------------------------------------------------------------------------------------
# Loop flavours, appearance control


@pytest.mark.parametrize(
    "options",
    [
        sampling.SamplerOptions(algorithm="ddpm", steps=3),
        sampling.SamplerOptions(algorithm="dpm_solver", steps=4, appearance="corrected"),
    ],
    ids=["ddpm", "dpm_solver"],
)
def test_scan_and_python_loop_agree(diffusion, options):
  plan = sampling.make_plan(diffusion, options)
  x_t = jax.random.normal(KEY(0), (B, 8, 8, 3))
  ref = jax.random.uniform(KEY(3), x_t.shape, minval=-1, maxval=1)
  mask = (jnp.arange(8) < 4).astype(jnp.float32)[None, :, None, None] * jnp.ones((B, 8, 8, 1))
  run = functools.partial(_run, _toy_predict, x_t, plan, options, KEY(4), (ref, mask))
  np.testing.assert_allclose(
      np.asarray(run(python_loop=False)), np.asarray(run(python_loop=True)), rtol=2e-5, atol=2e-5
  )


def _appearance_run(diffusion, rule):
  options = sampling.SamplerOptions(steps=5, appearance=rule)
  plan = sampling.make_plan(diffusion, options)
  x_t = jax.random.normal(KEY(0), (B, 8, 8, 3))
  ref = jax.random.uniform(KEY(3), x_t.shape, minval=-1, maxval=1)
  mask = jnp.zeros((B, 8, 8, 1)).at[:, 2:6].set(1.0)
  rng = KEY(4)
  out = _run(_toy_predict, x_t, plan, options, rng, (ref, mask))
  last_key = jax.random.split(rng, plan.num_steps)[-1]
  z = jax.random.normal(sampling.split_step_key(last_key)[1], ref.shape)
  return np.asarray(out), np.asarray(ref), np.asarray(mask[..., 0]) > 0, np.asarray(z)


def test_appearance_official_keeps_reference_noised_to_t0(diffusion):
  out, ref, inside, z = _appearance_run(diffusion, "official")
  ab0 = diffusion.alphas_cumprod[0]
  want = np.sqrt(ab0) * ref + np.sqrt(1 - ab0) * z  # q_sample(ref, 0) after the final step
  np.testing.assert_allclose(out[~inside], want[~inside], atol=1e-6)
  assert np.abs(out[inside] - ref[inside]).mean() > 0.1  # the masked region is generated


def test_appearance_corrected_keeps_clean_reference(diffusion):
  out, ref, inside, _ = _appearance_run(diffusion, "corrected")
  np.testing.assert_array_equal(out[~inside], ref[~inside])
  assert np.abs(out[inside] - ref[inside]).mean() > 0.1


def test_appearance_levels_follow_the_rule(diffusion):
  plans = {
      r: sampling.make_plan(diffusion, sampling.SamplerOptions(steps=5, appearance=r))
      for r in ("official", "corrected")
  }
  ab = _ab_ext(diffusion)
  t, t_next = plans["official"].arrays["t"], plans["official"].arrays["t_next"]
  np.testing.assert_allclose(
      plans["official"].arrays["blend_a"], np.sqrt(ab[np.append(t[:-1], 0) + 1]), rtol=1e-6
  )
  np.testing.assert_allclose(
      plans["corrected"].arrays["blend_a"], np.sqrt(ab[t_next + 1]), rtol=1e-6
  )
  assert plans["corrected"].arrays["blend_s"][-1] == 0.0


def test_python_loop_trace_grows_but_scan_does_not(diffusion):
  def size(steps, python_loop):
    options = sampling.SamplerOptions(steps=steps)
    plan = sampling.make_plan(diffusion, options)
    fn = lambda x, k: sampling.run_steps(_toy_predict, x, plan, options, k, python_loop=python_loop)
    return _count_eqns(jax.make_jaxpr(fn)(jnp.zeros((B, 8, 8, 3)), KEY(0)).jaxpr)

  assert size(10, False) == size(100, False)
  assert size(20, True) > size(10, True)


# ----------------------------------------------------------------------------------------------
# Guidance and conditions (a toy NNX model, so every call is cheap and counted)


class ToyModel(nnx.Module):
  """encode / denoise with per-sample outputs that depend on every input; records batch sizes
  (in a class attribute, so the record is not part of the module's graph)."""

  calls: list = []

  def __init__(self):
    self.w = nnx.Param(jnp.linspace(0.5, 1.5, 6))
    self.in_channels, self.pose_channels = 3, 20
    ToyModel.calls = []

  def encode(self, source):
    self.calls.append(("encode", source.shape[0]))
    return (jnp.tanh(source), jnp.tanh(2.0 * source[:, ::2, ::2]))

  def denoise(self, x, pose, t, features):
    self.calls.append(("denoise", x.shape[0]))
    f = (
        features[0].mean(axis=(1, 2, 3))[:, None, None, None]
        + features[1].mean(axis=(1, 2, 3))[:, None, None, None]
    )
    h = jnp.concatenate([x, pose[..., :3] + pose[..., 3:6]], axis=-1)
    return jnp.tanh(h * self.w.value + f + t / 1000.0)


@pytest.fixture()
def toy_inputs():
  rng = np.random.default_rng(7)
  return {
      k: jnp.asarray(v, jnp.float32)
      for k, v in dict(
          x=rng.standard_normal((B, 8, 8, 3)),
          source=rng.uniform(-1, 1, (B, 8, 8, 3)),
          source_b=rng.uniform(-1, 1, (B, 8, 8, 3)),
          pose=rng.uniform(0, 1, (B, 8, 8, 20)),
      ).items()
  }


def test_guidance_scales_and_batched_passes_toy(toy_inputs):
  model = ToyModel()
  x, pose, t = toy_inputs["x"], toy_inputs["pose"], jnp.int32(400)
  variants = dict(
      s1=sampling.SamplerOptions(guidance_scale=1.0),
      s0=sampling.SamplerOptions(guidance_scale=0.0),
      s2=sampling.SamplerOptions(guidance_scale=2.0),
      disentangled=sampling.SamplerOptions(
          guidance="disentangled", pose_scale=1.5, style_scale=2.5
      ),
  )
  calls = {}

  @jax.jit
  def compute(x, pose, source):  # one program; the calls are recorded while tracing
    ToyModel.calls = []
    cond = sampling.encode_conditions(
        model, dict(source=source, pose=pose), sampling.SamplerOptions()
    )
    calls["encode"] = ToyModel.calls
    out = {}
    for name, options in variants.items():
      ToyModel.calls = []
      out[name] = sampling.guided_output(model, x, t, cond, options)
      calls[name] = ToyModel.calls
    ToyModel.calls = []
    no_pose = null_pose(pose.shape)
    out.update(
        cond=model.denoise(x, pose, t, cond["features"]),
        null=model.denoise(x, pose, t, cond["null_features"]),
        e00=model.denoise(x, no_pose, t, cond["null_features"]),
        ep0=model.denoise(x, pose, t, cond["null_features"]),
        e0s=model.denoise(x, no_pose, t, cond["features"]),
        null_features=cond["null_features"][0],
        zeros=model.encode(jnp.zeros_like(source))[0],
    )
    return out

  o = jax.tree.map(np.asarray, compute(x, pose, toy_inputs["source"]))
  assert calls["encode"] == [("encode", 2 * B)]  # source and null image in one encoder pass
  np.testing.assert_array_equal(o["null_features"], o["zeros"])
  np.testing.assert_array_equal(o["s1"], o["cond"])
  assert calls["s1"] == [("denoise", B)]
  np.testing.assert_allclose(o["s0"], o["null"], atol=1e-7)
  assert calls["s0"] == [("denoise", 2 * B)]
  np.testing.assert_allclose(o["s2"], o["null"] + 2.0 * (o["cond"] - o["null"]), atol=1e-6)
  assert calls["s2"] == [("denoise", 2 * B)]
  want = o["e00"] + 1.5 * (o["ep0"] - o["e00"]) + 2.5 * (o["e0s"] - o["e00"])
  np.testing.assert_allclose(o["disentangled"], want, atol=1e-6)
  assert calls["disentangled"] == [("denoise", 3 * B)]


def test_style_interpolation_mixes_encoder_features_per_sample(toy_inputs):
  model = ToyModel()
  w = jnp.array([0.0, 0.25])
  batch = dict(
      source=toy_inputs["source"],
      source_b=toy_inputs["source_b"],
      style_mix=w,
      pose=toy_inputs["pose"],
  )
  cond = sampling.encode_conditions(model, batch, sampling.SamplerOptions(guidance_scale=1.0))
  assert model.calls == [("encode", 2 * B)] and "null_features" not in cond
  fa, fb = model.encode(batch["source"]), model.encode(batch["source_b"])
  for got, a, b in zip(cond["features"], fa, fb):
    want = (1 - w[:, None, None, None]) * a + w[:, None, None, None] * b
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(cond["features"][0][0]), np.asarray(fa[0][0]))


def test_sampler_with_toy_model_does_not_retrace(toy_inputs):
  sampler = sampling.Sampler(options=sampling.SamplerOptions(steps=3))
  traces = _count_traces(sampler)
  model = ToyModel()
  batch = dict(source=toy_inputs["source"], pose=toy_inputs["pose"])
  a = sampler(model, batch, KEY(0))
  b = sampler(model, batch, KEY(0))
  c = sampler(model, batch, KEY(1))
  assert len(traces) == 1
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_batch_errors_name_the_input(toy_inputs):
  sampler = sampling.Sampler(options=sampling.SamplerOptions(steps=3))
  model = ToyModel()
  src, pose = toy_inputs["source"], toy_inputs["pose"]
  with pytest.raises(ValueError, match=r"pose must have shape \(2, 8, 8, 20\)"):
    sampler(model, dict(source=src, pose=pose[:, :4]), KEY(0))
  with pytest.raises(ValueError, match="'reference' and 'mask' go together"):
    sampler(model, dict(source=src, pose=pose, reference=src), KEY(0))
  with pytest.raises(ValueError, match="pass rng"):
    sampler(model, dict(source=src, pose=pose), None)
  with pytest.raises(ValueError, match="source must be"):
    sampler(model, dict(source=src[..., :2], pose=pose), KEY(0))


# ----------------------------------------------------------------------------------------------
# The tiny PIDM


def randomised_tiny_model(seed=1, scale=0.15):
  """The tiny PIDM in eval mode, every parameter random and non-zero.

  Built abstractly and filled from NumPy, so nothing is compiled (an eager initialisation
  compiles one random kernel per parameter shape).
  """
  abstract = nnx.eval_shape(lambda: PIDM(tiny.get_config().model, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  rng = np.random.default_rng(seed)
  params = jax.tree.map(
      lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype), params
  )
  rest = jax.tree.map(
      lambda x: (
          KEY(0)
          if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
          else jnp.zeros(x.shape, x.dtype)
      ),
      rest,
  )
  model = nnx.merge(graphdef, params, rest)
  model.eval()
  return model


@pytest.fixture(scope="module")
def tiny_model():
  return randomised_tiny_model()


@pytest.fixture(scope="module")
def tiny_batch():
  keys = jax.random.split(KEY(11), 3)
  mask = np.zeros((B, H, W, 1), np.float32)
  mask[:, 4:12] = 1.0
  return dict(
      source=jax.random.uniform(keys[0], (B, H, W, 3), minval=-1, maxval=1),
      pose=jax.random.uniform(keys[1], (B, H, W, 20)),
      reference=jax.random.uniform(keys[2], (B, H, W, 3), minval=-1, maxval=1),
      mask=jnp.asarray(mask),
  )


@pytest.fixture(scope="module")
def mesh2():
  return Mesh(
      np.array(jax.devices()[:2]).reshape(2, 1), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2
  )


def test_explicit_mesh_is_refused():
  mesh = Mesh(
      np.array(jax.devices()[:2]).reshape(2, 1),
      ("data", "fsdp"),
      axis_types=(AxisType.Explicit,) * 2,
  )
  with pytest.raises(ValueError, match="AxisType.Auto"):
    sampling.Sampler(mesh=mesh)


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tiny_batch, mesh2):
  """DDIM (s = 2, eta = 0) with appearance control on a 2-device mesh, run twice."""
  sampler = sampling.Sampler(options=sampling.SamplerOptions(steps=4), mesh=mesh2)
  sampler.traces = _count_traces(sampler)
  first = sampler(tiny_model, tiny_batch, KEY(3))
  second = sampler(tiny_model, tiny_batch, KEY(3))
  return sampler, first, second


def test_tiny_sampler_deterministic_for_a_seed_without_retrace(tiny_run):
  sampler, first, second = tiny_run
  assert len(sampler.traces) == 1
  np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
  assert np.isfinite(np.asarray(first)).all() and np.abs(np.asarray(first)).mean() > 1e-2


def test_tiny_sampler_output_is_batch_sharded(tiny_run, mesh2):
  _, first, _ = tiny_run
  assert first.sharding.is_equivalent_to(NamedSharding(mesh2, P(("data", "fsdp"))), 4)


def test_tiny_sampler_keeps_noised_reference_outside_mask(tiny_run, tiny_batch, diffusion):
  sampler, first, _ = tiny_run
  _, k_steps = jax.random.split(KEY(3))
  last_key = jax.random.split(k_steps, sampler.plan.num_steps)[-1]
  z = np.asarray(jax.random.normal(sampling.split_step_key(last_key)[1], (B, H, W, 3)))
  ab0 = diffusion.alphas_cumprod[0]
  want = np.sqrt(ab0) * np.asarray(tiny_batch["reference"]) + np.sqrt(1 - ab0) * z
  outside = np.asarray(tiny_batch["mask"][..., 0]) == 0
  out = np.asarray(first)
  np.testing.assert_allclose(out[outside], want[outside], atol=1e-5)
  assert np.abs(out[~outside] - want[~outside]).mean() > 1e-2


def test_tiny_python_loop_matches_scan(tiny_run, tiny_model, tiny_batch):
  _, first, _ = tiny_run
  # unsharded, so this also checks that the mesh does not change the images
  debug = sampling.Sampler(options=sampling.SamplerOptions(steps=4, debug_loop=True))
  looped = debug(tiny_model, tiny_batch, KEY(3))
  np.testing.assert_allclose(np.asarray(looped), np.asarray(first), rtol=1e-5, atol=1e-5)


def test_tiny_jaxpr_size_does_not_grow_with_steps(tiny_model, tiny_batch):
  graphdef, state = nnx.split(tiny_model)
  batch = dict(source=tiny_batch["source"], pose=tiny_batch["pose"])

  def size(steps):
    sampler = sampling.Sampler(options=sampling.SamplerOptions(steps=steps))
    fn = functools.partial(sampler.run, graphdef)
    return _count_eqns(jax.make_jaxpr(fn)(state, batch, KEY(0)).jaxpr)

  assert size(10) == size(100)


def test_tiny_batched_guidance_equals_separate_passes(tiny_model, tiny_batch):
  graphdef, state = nnx.split(tiny_model)
  x = jax.random.normal(KEY(9), (B, H, W, 3))
  t = jnp.int32(640)
  pose = tiny_batch["pose"]

  @jax.jit
  def conditions(state, source):
    model = nnx.merge(graphdef, state)
    return sampling.encode_conditions(
        model, dict(source=source, pose=pose), sampling.SamplerOptions()
    )

  @jax.jit
  def single(state, pose, features):
    return nnx.merge(graphdef, state).denoise(x, pose, t, features)

  @functools.partial(jax.jit, static_argnums=0)
  def guided(options, state, cond):
    return sampling.guided_output(nnx.merge(graphdef, state), x, t, cond, options)

  cond = conditions(state, tiny_batch["source"])
  e_cond = single(state, pose, cond["features"])
  e_null = single(state, pose, cond["null_features"])
  assert np.abs(np.asarray(e_cond - e_null)).max() > 1e-3  # the condition matters
  out = guided(sampling.SamplerOptions(guidance_scale=2.0), state, cond)
  np.testing.assert_allclose(
      np.asarray(out), np.asarray(e_null + 2.0 * (e_cond - e_null)), rtol=1e-5, atol=1e-5
  )

  no_pose = null_pose(pose.shape)
  e00 = single(state, no_pose, cond["null_features"])
  ep0 = single(state, pose, cond["null_features"])
  e0s = single(state, no_pose, cond["features"])
  out = guided(
      sampling.SamplerOptions(guidance="disentangled", pose_scale=2.0, style_scale=3.0), state, cond
  )
  want = e00 + 2.0 * (ep0 - e00) + 3.0 * (e0s - e00)
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_sample_api_with_given_noise_needs_no_rng(toy_inputs):
  model = ToyModel()
  src, pose = toy_inputs["source"], toy_inputs["pose"]
  noise = jax.random.normal(KEY(2), src.shape)
  out = sampling.sample(model, src, pose, steps=2, noise=noise)
  assert out.shape == src.shape and float(jnp.abs(out).max()) <= 1.0
  again = sampling.sample(model, src, pose, steps=2, noise=noise, rng=KEY(9))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(again))
  with pytest.raises(ValueError, match="pass rng"):
    sampling.sample(model, src, pose, steps=2)
  # the options by name or as one SamplerOptions; a misspelt field is refused by name
  opts = sampling.SamplerOptions(steps=2, guidance_scale=3.0)
  np.testing.assert_array_equal(
      np.asarray(sampling.sample(model, src, pose, noise=noise, options=opts)),
      np.asarray(sampling.sample(model, src, pose, noise=noise, steps=2, guidance_scale=3.0)),
  )
  with pytest.raises(TypeError, match=r"unknown option\(s\) \['guidance_sclae'\]"):
    sampling.sample(model, src, pose, noise=noise, guidance_sclae=3.0)
