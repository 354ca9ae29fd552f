"""Sampling from PIDM: DDIM, DDPM and DPM-Solver++(2M) as one jitted function per batch.

Everything for one batch runs inside one ``jax.jit``: the texture encoder once (source, optional
second source for style interpolation, and the all-zeros null image, stacked into one pass), then
the timestep loop as a ``lax.scan`` over a precomputed per-step table, so the traced program (and
the compile time) does not grow with the number of steps. A debug switch runs the same step
function in a Python loop instead.

Samplers (the official ones are in its diffusion.py):

* ``ddim``: the official ``ddim_steps``: grid ``range(0, T, T // steps)`` walked from the largest
  timestep, alpha_bar(-1) := 1, x0 = (x - sqrt(1 - ab) eps) / sqrt(ab) without clipping,
  x_next = sqrt(ab_next) x0 + c1 z + c2 eps with c1 = eta sqrt((1 - ab / ab_next)(1 - ab_next) /
  (1 - ab)), c2 = sqrt(1 - ab_next - c1^2); the last step (next = -1) returns x0. eta and x0
  clipping are options; ``spacing="trailing"`` uses the grid that starts at T - 1.
* ``ddpm``: ancestral sampling with the learned-range variance, x0 clipped, noise added for t > 0.
  ``steps = T`` is the official 1000-step chain; fewer steps run the IDDPM respaced chain (betas
  recomputed from alpha_bar on the grid), which is the same thing when the grid is complete.
* ``dpm_solver``: DPM-Solver++(2M) (Lu et al. 2022) for the eps-prediction model: data
  prediction x0, lambda = log(alpha / sigma), second-order multistep updates, first order on the
  first step and on the final step to sigma = 0 (which therefore returns x0 like DDIM). Its grid
  defaults to the trailing one.

Guidance (section 4.4): ``guidance="style"`` is the official rule
``out = null + s (cond - null)`` on all 6 output channels, with the conditional and null passes
batched into one denoiser forward of 2B (s = 1 runs the conditional pass alone);
``guidance="disentangled"`` is the paper's ``e(0,0) + w_p [e(pose,0) - e(0,0)] + w_s [e(0,style)
- e(0,0)]`` in one forward of 3B, for models trained with pose dropout.

Appearance control (section 4.6, ``reference`` and ``mask``): after each step
x <- x mask + q_sample(ref, level) (1 - mask). ``appearance="official"`` uses the official one-step
lag (level = the current t, and t = 0 after the final step); ``"corrected"`` uses the level of the
step just produced and the clean reference at the end.

Style interpolation (``source_b`` and ``style_mix`` per sample): the encoder features are
(1 - w) features(source) + w features(source_b).

The public entry is :func:`sample`; :class:`Sampler` holds one compiled sampler; the pieces
(:func:`timestep_grid`, :func:`make_plan`, :func:`guided_output`, :func:`ddim_step`,
:func:`ddpm_step`, :func:`dpm_solver_step`, :func:`run_steps`) are public for tests.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from pidm_jax import sharding as sharding_lib
from pidm_jax.diffusion import GaussianDiffusion, beta_schedule, eps_and_x0
from pidm_jax.models.pidm import null_pose

Array = jax.Array

ALGORITHMS = ("ddim", "ddpm", "dpm_solver")
SPACINGS = ("official", "trailing")
GUIDANCES = ("style", "disentangled")
APPEARANCE_RULES = ("official", "corrected")


# ----------------------------------------------------------------------------------------------
# Options and the per-step plan


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
  """Static settings of a sampler (hashable: one compiled program per distinct value).

  Attributes:
    algorithm: 'ddim', 'ddpm' or 'dpm_solver'.
    steps: number of grid points asked for; the official grid ``range(0, T, T // steps)`` can hold
      a few more when ``steps`` does not divide T, exactly as the official code.
    spacing: 'official' (``range(0, T, T // steps)``) or 'trailing' (starts at T - 1); None =
      'official' for ddim and ddpm, 'trailing' for dpm_solver (whose second-order update
      extrapolates badly over the official grid's last jump from t = T / steps to t = 0).
    guidance: 'style' (official classifier-free rule) or 'disentangled' (pose and style weights).
    guidance_scale: s of the style rule (official default 2; 1 = conditional only; 0 = null).
    pose_scale, style_scale: w_p and w_s of the disentangled rule.
    eta: DDIM stochasticity (0 = deterministic, the official value).
    clip_denoised: clip x0 to [-1, 1]; None = the official choice per algorithm (DDPM yes, DDIM
      no; DPM-Solver no).
    appearance: 'official' or 'corrected' blending rule (used when a reference is given).
    debug_loop: run the steps in a Python loop (the guided model call jitted) instead of lax.scan.
  """

  algorithm: str = "ddim"
  steps: int = 50
  spacing: str | None = None
  guidance: str = "style"
  guidance_scale: float = 2.0
  pose_scale: float = 2.0
  style_scale: float = 2.0
  eta: float = 0.0
  clip_denoised: bool | None = None
  appearance: str = "official"
  debug_loop: bool = False

  def __post_init__(self):
    if self.spacing is None:
      object.__setattr__(
          self, "spacing", "trailing" if self.algorithm == "dpm_solver" else "official"
      )
    for name, value, allowed in (
        ("algorithm", self.algorithm, ALGORITHMS),
        ("spacing", self.spacing, SPACINGS),
        ("guidance", self.guidance, GUIDANCES),
        ("appearance", self.appearance, APPEARANCE_RULES),
    ):
      if value not in allowed:
        raise ValueError(f"sampler {name} {value!r} is not one of {allowed}")
    if int(self.steps) != self.steps or self.steps < 1:
      raise ValueError(f"sampler steps must be a positive integer, got {self.steps!r}")
    if self.eta < 0:
      raise ValueError(f"sampler eta must be >= 0, got {self.eta}")
    if self.eta and self.algorithm != "ddim":
      raise ValueError(f"eta applies to ddim only, got eta={self.eta} with {self.algorithm}")
    for name in ("guidance_scale", "pose_scale", "style_scale", "eta"):
      object.__setattr__(self, name, float(getattr(self, name)))
    object.__setattr__(self, "steps", int(self.steps))

  @property
  def clip(self) -> bool:
    """Whether x0 is clipped to [-1, 1] (the official choice unless set)."""
    if self.clip_denoised is None:
      return self.algorithm == "ddpm"
    return bool(self.clip_denoised)

  @property
  def needs_null_features(self) -> bool:
    return self.guidance == "disentangled" or self.guidance_scale != 1.0

  @classmethod
  def from_config(cls, sample_config, **overrides) -> "SamplerOptions":
    """Builds options from ``config.sample`` (algorithm, steps, guidance_scale, eta, ...)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in dict(sample_config).items() if k in fields}
    values.update(overrides)
    return cls(**values)


def timestep_grid(num_timesteps: int, steps: int, spacing: str = "official") -> np.ndarray:
  """The ascending timesteps the sampler visits (it walks them from the largest).

  official: ``range(0, T, T // steps)`` (50 steps: 0, 20, ..., 980); trailing:
  ``round(arange(T, 0, -T / steps)) - 1`` ascending (50 steps: 19, 39, ..., 999).
  """
  if not 1 <= steps <= num_timesteps:
    raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
  if spacing == "official":
    return np.arange(0, num_timesteps, num_timesteps // steps, dtype=np.int64)
  if spacing == "trailing":
    grid = np.round(np.arange(num_timesteps, 0, -num_timesteps / steps)).astype(np.int64) - 1
    return np.unique(grid)
  raise ValueError(f"spacing {spacing!r} is not one of {SPACINGS}")


def respaced(diffusion: GaussianDiffusion, grid: np.ndarray) -> GaussianDiffusion:
  """The diffusion restricted to ``grid`` (IDDPM respacing): beta_i = 1 - ab[t_i] / ab[t_{i-1}]."""
  grid = np.asarray(grid)
  if len(grid) == diffusion.num_timesteps:
    return diffusion
  ab = diffusion.alphas_cumprod[grid]
  return GaussianDiffusion(1.0 - ab / np.append(1.0, ab[:-1]), diffusion.prediction)


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
  """Per-step tables of one sampler, in the order the steps run (largest timestep first).

  ``arrays`` maps names to NumPy arrays with one entry per step (fed to lax.scan as xs):
  ``t`` / ``t_next`` (int32, t_next = -1 on the final step), ``index`` (position in the grid, for
  the respaced DDPM tables), ``blend_a`` / ``blend_s`` (q_sample coefficients of the appearance
  blend level), ``sqrt_ab`` / ``sqrt_1m_ab`` (to read eps and x_0 from the network's output) and
  the algorithm's coefficients.
  """

  grid: np.ndarray
  arrays: Mapping[str, np.ndarray]
  diffusion: GaussianDiffusion  # the (respaced, for DDPM) process the step tables index

  @property
  def num_steps(self) -> int:
    return len(self.grid)


def _ab_ext(diffusion: GaussianDiffusion, t: np.ndarray) -> np.ndarray:
  """alpha_bar(t) with alpha_bar(-1) := 1 (float64)."""
  return np.append(1.0, diffusion.alphas_cumprod)[np.asarray(t) + 1]


def make_plan(diffusion: GaussianDiffusion, options: SamplerOptions) -> Plan:
  """Precomputes every per-step quantity of a sampler in float64 (returned as float32/int32)."""
  grid = timestep_grid(diffusion.num_timesteps, options.steps, options.spacing)
  t = grid[::-1]
  t_next = np.append(t[1:], -1)
  n = len(t)
  ab, ab_next = _ab_ext(diffusion, t), _ab_ext(diffusion, t_next)
  arrays = dict(t=t, t_next=t_next, index=np.arange(n)[::-1])

  if options.appearance == "official":
    level = t.copy()
    level[-1] = 0
  else:
    level = t_next
  ab_level = _ab_ext(diffusion, level)
  # the blend levels, and eps and x_0 from the output
  arrays.update(
      blend_a=np.sqrt(ab_level),
      blend_s=np.sqrt(1.0 - ab_level),
      sqrt_ab=np.sqrt(ab),
      sqrt_1m_ab=np.sqrt(1.0 - ab),
  )

  process = diffusion
  if options.algorithm == "ddim":
    c1 = options.eta * np.sqrt((1.0 - ab / ab_next) * (1.0 - ab_next) / (1.0 - ab))
    arrays.update(
        sqrt_ab_next=np.sqrt(ab_next), c1=c1, c2=np.sqrt(np.maximum(1.0 - ab_next - c1**2, 0.0))
    )
  elif options.algorithm == "ddpm":
    process = respaced(diffusion, grid)
  else:  # dpm_solver
    alpha, sigma = np.sqrt(ab), np.sqrt(1.0 - ab)
    alpha_next, sigma_next = np.sqrt(ab_next), np.sqrt(1.0 - ab_next)
    lam = np.log(alpha) - np.log(sigma)
    with np.errstate(divide="ignore"):
      lam_next = np.log(alpha_next) - np.log(sigma_next)  # +inf on the final step (sigma = 0)
    h = lam_next - lam
    c_cur, c_prev = np.ones(n), np.zeros(n)
    for i in range(1, n - 1):  # second order except on the first and the final step
      r = h[i - 1] / h[i]
      c_cur[i], c_prev[i] = 1.0 + 0.5 / r, -0.5 / r
    arrays.update(
        alpha=alpha,
        sigma=sigma,
        ratio=sigma_next / sigma,
        gain=-alpha_next * np.expm1(-h),
        c_cur=c_cur,
        c_prev=c_prev,
    )

  out = {}
  for name, value in arrays.items():
    value = np.asarray(value)
    out[name] = value.astype(np.int32 if value.dtype.kind in "iu" else np.float32)
  return Plan(grid=grid, arrays=out, diffusion=process)


# ----------------------------------------------------------------------------------------------
# Step functions (pure; x is NHWC float32)


def ddim_step(
    x: Array,
    eps: Array,
    coef: Mapping[str, Array],
    noise: Array | None = None,
    clip: bool = False,
    x0: Array | None = None,
) -> tuple[Array, Array]:
  """One DDIM step. Returns (x_next, x0). ``noise`` is needed when coef['c1'] can be non-zero.
  ``x0``: the model's own x_0 (v- and x0-prediction); by default derived from eps."""
  if x0 is None:
    x0 = (x - coef["sqrt_1m_ab"] * eps) / coef["sqrt_ab"]
  if clip:
    x0 = jnp.clip(x0, -1.0, 1.0)
    eps = (x - coef["sqrt_ab"] * x0) / coef["sqrt_1m_ab"]
  x_next = coef["sqrt_ab_next"] * x0 + coef["c2"] * eps
  if noise is not None:
    x_next = x_next + coef["c1"] * noise
  return x_next, x0


def ddpm_step(
    process: GaussianDiffusion,
    x: Array,
    model_output: Array,
    index: Array,
    noise: Array,
    clip: bool = True,
) -> tuple[Array, Array]:
  """One ancestral step with the learned-range variance of ``process`` at grid position
  ``index``; noise is added unless index == 0. Returns (x_prev, x0)."""
  out = process.p_mean_variance(model_output, x, index, clip_denoised=clip)
  nonzero = (jnp.asarray(index) > 0).astype(x.dtype)
  return out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise, out["pred_xstart"]


def dpm_solver_step(
    x: Array,
    eps: Array,
    x0_prev: Array,
    coef: Mapping[str, Array],
    clip: bool = False,
    x0: Array | None = None,
) -> tuple[Array, Array]:
  """One DPM-Solver++(2M) step. Returns (x_next, x0).

  x0 = (x - sigma eps) / alpha; D = c_cur x0 + c_prev x0_prev (c_prev = 0 on first-order steps);
  x_next = (sigma_next / sigma) x - alpha_next expm1(-h) D. ``x0``: the model's own x_0 (v- and
  x0-prediction); by default derived from eps.
  """
  if x0 is None:
    x0 = (x - coef["sigma"] * eps) / coef["alpha"]
  if clip:
    x0 = jnp.clip(x0, -1.0, 1.0)
  d = coef["c_cur"] * x0 + coef["c_prev"] * x0_prev
  return coef["ratio"] * x + coef["gain"] * d, x0


def split_step_key(key: Array) -> tuple[Array, Array]:
  """The per-step key -> (key of the sampler's noise, key of the appearance blend noise)."""
  k_step, k_blend = jax.random.split(key)
  return k_step, k_blend


def blend_reference(
    x: Array, reference: Array, mask: Array, blend_a: Array, blend_s: Array, noise: Array
) -> Array:
  """x mask + (blend_a ref + blend_s noise) (1 - mask): keeps the reference outside the mask."""
  kept = blend_a * reference + blend_s * noise
  return x * mask + kept * (1.0 - mask)


# ----------------------------------------------------------------------------------------------
# The loop


def _step_fn(
    predict: Callable[[Array, Array], Array],
    plan: Plan,
    options: SamplerOptions,
    appearance: tuple[Array, Array] | None,
):
  """The one step both loop flavours run: (carry=(x, x0_prev), xs) -> (x_next, x0)."""

  def step(carry, xs):
    x, x0_prev = carry
    k_step, k_blend = split_step_key(xs["key"])
    output = predict(x, xs["t"]).astype(jnp.float32)
    eps, x0_model = eps_and_x0(
        plan.diffusion.prediction, output[..., : x.shape[-1]], x, xs["sqrt_ab"], xs["sqrt_1m_ab"]
    )
    if options.algorithm == "ddim":
      noise = jax.random.normal(k_step, x.shape, x.dtype) if options.eta > 0 else None
      x_next, x0 = ddim_step(x, eps, xs, noise, options.clip, x0=x0_model)
    elif options.algorithm == "ddpm":
      noise = jax.random.normal(k_step, x.shape, x.dtype)
      x_next, x0 = ddpm_step(plan.diffusion, x, output, xs["index"], noise, options.clip)
    else:
      x_next, x0 = dpm_solver_step(x, eps, x0_prev, xs, options.clip, x0=x0_model)
    if appearance is not None:
      reference, mask = appearance
      noise = jax.random.normal(k_blend, reference.shape, reference.dtype)
      x_next = blend_reference(x_next, reference, mask, xs["blend_a"], xs["blend_s"], noise)
    return x_next, x0

  return step


def run_steps(
    predict: Callable[[Array, Array], Array],
    x_init: Array,
    plan: Plan,
    options: SamplerOptions,
    rng: Array,
    appearance: tuple[Array, Array] | None = None,
    python_loop: bool = False,
) -> Array:
  """Runs the sampler's steps from x_T = ``x_init``.

  Args:
    predict: (x_t, t scalar int32) -> the (guided) 6-channel model output (B, H, W, 6).
    x_init: starting noise x_T (B, H, W, 3).
    plan: from :func:`make_plan`.
    options: the sampler options (algorithm, clipping, eta).
    rng: key for the per-step noise (split into one key per step).
    appearance: optional (reference, mask) for the appearance-control blend.
    python_loop: run the same step in a Python loop instead of lax.scan.
  Returns:
    x_0 (B, H, W, 3) float32.
  """
  step = _step_fn(predict, plan, options, appearance)
  xs = {k: jnp.asarray(v) for k, v in plan.arrays.items()}
  xs["key"] = jax.random.split(rng, plan.num_steps)
  x = jnp.asarray(x_init, jnp.float32)
  carry = (x, jnp.zeros_like(x))
  if python_loop:
    for i in range(plan.num_steps):
      carry = step(carry, jax.tree.map(lambda a, i=i: a[i], xs))
  else:
    carry, _ = jax.lax.scan(lambda c, s: (step(c, s), None), carry, xs)
  return carry[0]


# ----------------------------------------------------------------------------------------------
# Conditions and guidance


def _concat(trees):
  return jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *trees)


def encode_conditions(model, batch: Mapping[str, Array], options: SamplerOptions) -> dict:
  """Runs the texture encoder once over [source, (source_b,) (null image)] stacked on the batch.

  Returns a dict with ``pose``, ``features`` (conditional, style-interpolated if ``source_b`` and
  ``style_mix`` are in the batch) and ``null_features`` (encoder features of an all-zeros image)
  when the guidance needs them.
  """
  source = jnp.asarray(batch["source"])
  b = source.shape[0]
  images = [source]
  mix = "source_b" in batch
  if mix:
    images.append(jnp.asarray(batch["source_b"], source.dtype))
  if options.needs_null_features:
    images.append(jnp.zeros_like(source))
  feats = model.encode(jnp.concatenate(images, axis=0))
  chunks = [jax.tree.map(lambda f, k=k: f[k * b : (k + 1) * b], feats) for k in range(len(images))]
  features = chunks[0]
  if mix:
    w = jnp.asarray(batch["style_mix"], jnp.float32).reshape(b, 1, 1, 1)
    features = jax.tree.map(
        lambda fa, fb: ((1.0 - w) * fa.astype(jnp.float32) + w * fb.astype(jnp.float32)).astype(
            fa.dtype
        ),
        chunks[0],
        chunks[1],
    )
  cond = dict(pose=jnp.asarray(batch["pose"]), features=features)
  if options.needs_null_features:
    cond["null_features"] = chunks[-1]
  return cond


def guided_output(
    model, x: Array, t: Array, cond: Mapping[str, Any], options: SamplerOptions
) -> Array:
  """The guided 6-channel prediction for x_t (B, H, W, 3) at timestep t.

  style: null + s (cond - null), cond and null in one forward of 2B (s = 1: the conditional
  forward alone). disentangled: e(0,0) + w_p [e(pose,0) - e(0,0)] + w_s [e(0,style) - e(0,0)]
  in one forward of 3B, with the null pose of an all-missing skeleton.
  """
  pose, feats = cond["pose"], cond["features"]
  b = x.shape[0]
  if options.guidance == "style":
    s = options.guidance_scale
    if s == 1.0:
      return model.denoise(x, pose, t, feats).astype(jnp.float32)
    out = model.denoise(
        jnp.concatenate([x, x]),
        jnp.concatenate([pose, pose]),
        t,
        _concat([feats, cond["null_features"]]),
    ).astype(jnp.float32)
    out_cond, out_null = out[:b], out[b:]
    return out_null + s * (out_cond - out_null)
  null_p = null_pose(pose.shape, pose.dtype)
  null_f = cond["null_features"]
  out = model.denoise(
      jnp.concatenate([x, x, x]),
      jnp.concatenate([pose, null_p, null_p]),
      t,
      _concat([null_f, feats, null_f]),
  ).astype(jnp.float32)
  e_pose, e_style, e_null = out[:b], out[b : 2 * b], out[2 * b :]
  return e_null + options.pose_scale * (e_pose - e_null) + options.style_scale * (e_style - e_null)


# ----------------------------------------------------------------------------------------------
# The compiled sampler


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The batch sharding of ``pidm_jax.sharding``: leading axis split over ('data', 'fsdp')."""
  return sharding_lib.batch_sharding(mesh)


BATCH_KEYS = ("source", "pose", "source_b", "style_mix", "reference", "mask", "noise")


def check_batch(batch: Mapping[str, Any], in_channels: int = 3, pose_channels: int = 20) -> int:
  """Raises ValueError naming the entry when a sampling batch is malformed; returns B."""
  unknown = set(batch) - set(BATCH_KEYS)
  if unknown:
    raise ValueError(f"unknown sampling inputs {sorted(unknown)}; expected some of {BATCH_KEYS}")
  for name in ("source", "pose"):
    if name not in batch:
      raise ValueError(f"sampling needs {name!r}")
  src = batch["source"]
  if len(np.shape(src)) != 4 or np.shape(src)[-1] != in_channels:
    raise ValueError(f"source must be (B, H, W, {in_channels}) NHWC, got {np.shape(src)}")
  b, h, w, _ = np.shape(src)
  expect = dict(
      pose=(b, h, w, pose_channels),
      source_b=(b, h, w, in_channels),
      style_mix=(b,),
      reference=(b, h, w, in_channels),
      noise=(b, h, w, in_channels),
  )
  for name, shape in expect.items():
    if name in batch and tuple(np.shape(batch[name])) != shape:
      raise ValueError(
          f"{name} must have shape {shape} to match source {np.shape(src)}, "
          f"got {np.shape(batch[name])}"
      )
  if "mask" in batch and (
      tuple(np.shape(batch["mask"]))[:3] != (b, h, w)
      or np.shape(batch["mask"])[-1] not in (1, in_channels)
      or len(np.shape(batch["mask"])) != 4
  ):
    raise ValueError(
        f"mask must have shape ({b}, {h}, {w}, 1 or {in_channels}), got "
        f"{np.shape(batch['mask'])}"
    )
  for a, b_ in (("source_b", "style_mix"), ("reference", "mask")):
    if (a in batch) != (b_ in batch):
      raise ValueError(f"{a!r} and {b_!r} go together; got only one of them")
  return b


class Sampler:
  """One sampler (diffusion + options), compiled once per model structure and batch shapes.

  ``sampler(model, batch, rng)`` returns the final x_0 (B, H, W, 3), not yet clipped to
  [-1, 1] (the official code clamps only when saving; :func:`sample` clips). ``batch`` holds
  ``source`` (B, H, W, 3) in [-1, 1] and ``pose`` (B, H, W, 20) in [0, 1], optionally ``noise``
  (x_T), ``source_b`` + ``style_mix`` (B,) for style interpolation, ``reference`` + ``mask``
  (B, H, W, 1 or 3; 1 = regenerate) for appearance control.

  The model goes in functionally: ``nnx.split`` gives the graph definition, closed over by jitted
  functions created once per distinct structure, and the state, passed as an argument, so calls
  with the same shapes never retrace. With ``mesh``, the batch is split over the mesh's data
  axes (``in_shardings``/``out_shardings``) and the parameters keep their own shardings.
  """

  def __init__(
      self,
      diffusion: GaussianDiffusion | None = None,
      options: SamplerOptions | None = None,
      mesh: Mesh | None = None,
  ):
    self.diffusion = diffusion if diffusion is not None else default_diffusion()
    self.options = options if options is not None else SamplerOptions()
    self.plan = make_plan(self.diffusion, self.options)
    self.mesh = mesh
    if mesh is not None and any(t != AxisType.Auto for t in mesh.axis_types):
      raise ValueError(
          f"the sampling mesh needs AxisType.Auto axes (as pidm_jax.sharding."
          f"create_mesh builds), got {mesh.axis_types}"
      )
    self.batch_sharding = batch_sharding(mesh) if mesh is not None else None
    self._programs: list[tuple[Any, dict]] = []  # (graphdef, jitted functions), see _jitted

  def _jitted(self, graphdef) -> dict:
    """The jitted functions for one model structure, created once and reused.

    The graph definition is closed over rather than passed as a static argument (a GraphDef
    need not be hashable); it is looked up here by equality.
    """
    for known, fns in self._programs:
      if known == graphdef:
        return fns
    kw = {}
    if self.mesh is not None:
      kw = dict(
          in_shardings=(None, self.batch_sharding, NamedSharding(self.mesh, P())),
          out_shardings=self.batch_sharding,
      )
    fns = dict(
        run=jax.jit(functools.partial(self.run, graphdef), **kw),
        encode=jax.jit(functools.partial(self._encode, graphdef)),
        predict=jax.jit(functools.partial(self._predict, graphdef)),
    )
    self._programs.append((graphdef, fns))
    return fns

  # -- the pure functions -------------------------------------------------------------------------
  def _merge(self, graphdef, state):
    model = nnx.merge(graphdef, state)
    model.eval()
    return model

  def _initial(self, batch, rng):
    k_init, k_steps = jax.random.split(rng)
    src = batch["source"]
    noise = batch.get("noise")
    if noise is None:
      noise = jax.random.normal(k_init, src.shape, jnp.float32)
    return jnp.asarray(noise, jnp.float32), k_steps

  def _appearance(self, batch):
    if "reference" not in batch:
      return None
    return (jnp.asarray(batch["reference"], jnp.float32), jnp.asarray(batch["mask"], jnp.float32))

  def run(self, graphdef, state, batch: Mapping[str, Array], rng: Array) -> Array:
    """The whole sampler for one batch as a pure function (jitted by ``__call__``)."""
    model = self._merge(graphdef, state)
    cond = encode_conditions(model, batch, self.options)
    x_init, k_steps = self._initial(batch, rng)

    def predict(x, t):
      return guided_output(model, x, t, cond, self.options)

    return run_steps(
        predict, x_init, self.plan, self.options, k_steps, appearance=self._appearance(batch)
    )

  def _encode(self, graphdef, state, batch):
    return encode_conditions(self._merge(graphdef, state), batch, self.options)

  def _predict(self, graphdef, state, cond, x, t):
    return guided_output(self._merge(graphdef, state), x, t, cond, self.options)

  def run_debug(self, graphdef, state, batch: Mapping[str, Array], rng: Array) -> Array:
    """The debug path (``options.debug_loop``): the same steps as :meth:`run`, in a Python loop
    (``run_steps(python_loop=True)``) with the encoder and the guided model call jitted, so that
    every step's arrays can be printed or inspected."""
    fns = self._jitted(graphdef)
    cond = fns["encode"](state, batch)
    x_init, k_steps = self._initial(batch, rng)
    return run_steps(
        lambda x, t: fns["predict"](state, cond, x, t),
        x_init,
        self.plan,
        self.options,
        k_steps,
        appearance=self._appearance(batch),
        python_loop=True,
    )

  # -- calling ----------------------------------------------------------------------------------
  def prepare(self, model, batch: Mapping[str, Any], rng: Array | None):
    """Splits the model and checks/places the batch. Returns (graphdef, state, batch, rng)."""
    b = check_batch(batch, getattr(model, "in_channels", 3), getattr(model, "pose_channels", 20))
    needs_rng = (
        "noise" not in batch
        or self.options.algorithm == "ddpm"
        or self.options.eta > 0
        or "reference" in batch
    )
    if rng is None:
      if needs_rng:
        raise ValueError("sampling draws random numbers here: pass rng=jax.random.key(seed)")
      rng = jax.random.key(0)  # unused: deterministic sampler from a given x_T
    graphdef, state = nnx.split(model)
    if self.batch_sharding is not None:
      sharding_lib.check_global_batch(b, self.mesh, "sampling batch (images)")
      batch = {k: _global_array(v, self.batch_sharding) for k, v in batch.items()}
      rng = jax.device_put(rng, NamedSharding(self.mesh, P()))
    else:
      batch = {k: jnp.asarray(v, jnp.float32) for k, v in batch.items()}
    return graphdef, state, batch, rng

  def compile(self, model, batch: Mapping[str, Any], rng: Array | None = None):
    """Ahead-of-time compiles the sampler for this model and batch shapes.

    Returns a function ``(model, batch, rng) -> images`` that runs the compiled program.
    """
    graphdef, state, placed, rng = self.prepare(model, batch, rng)
    compiled = self._jitted(graphdef)["run"].lower(state, placed, rng).compile()

    def call(model, batch, rng=None):
      _, state, placed, key = self.prepare(model, batch, rng)
      return compiled(state, placed, key)

    return call

  def __call__(self, model, batch: Mapping[str, Any], rng: Array | None = None) -> Array:
    graphdef, state, batch, rng = self.prepare(model, batch, rng)
    if self.options.debug_loop:
      return self.run_debug(graphdef, state, batch, rng)
    return self._jitted(graphdef)["run"](state, batch, rng)


def _global_array(x, sharding: NamedSharding) -> Array:
  """A float32 global array with ``sharding``: a JAX array is resharded (it may span several
  processes); a NumPy batch must be the same full batch on every process."""
  if isinstance(x, jax.Array):
    x = x if x.dtype == jnp.float32 else x.astype(jnp.float32)
    return x if x.sharding == sharding else jax.device_put(x, sharding)
  x = np.asarray(x, np.float32)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


@functools.lru_cache(maxsize=1)
def default_diffusion() -> GaussianDiffusion:
  """The official process: 1000 linear betas from 1e-4 to 2e-2."""
  return GaussianDiffusion(beta_schedule("linear", 1000))


@functools.lru_cache(maxsize=32)
def _cached_sampler(
    betas_key: bytes, prediction: str, options: SamplerOptions, mesh: Mesh | None
) -> Sampler:
  betas = np.frombuffer(betas_key, np.float64)
  return Sampler(GaussianDiffusion(betas, prediction), options, mesh)


def get_sampler(
    diffusion: GaussianDiffusion | None, options: SamplerOptions, mesh: Mesh | None = None
) -> Sampler:
  """A cached :class:`Sampler` for (betas, options, mesh): repeated calls reuse its compilation."""
  diffusion = diffusion if diffusion is not None else default_diffusion()
  return _cached_sampler(
      np.asarray(diffusion.betas, np.float64).tobytes(), diffusion.prediction, options, mesh
  )


_OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(SamplerOptions))


def sample(
    model,
    source,
    pose,
    *,
    rng: Array | None = None,
    noise=None,
    reference=None,
    mask=None,
    source_b=None,
    style_mix=None,
    diffusion: GaussianDiffusion | None = None,
    mesh: Mesh | None = None,
    options: SamplerOptions | None = None,
    **option_fields,
) -> Array:
  """Samples person images of ``source`` in the target ``pose``.

  Args:
    model: a PIDM (its eval-mode forward is used; the model object is not modified).
    source: (B, H, W, 3) source images in [-1, 1].
    pose: (B, H, W, 20) target pose maps in [0, 1].
    rng: PRNG key; needed unless ``noise`` is given and the sampler is deterministic.
    noise: optional x_T (B, H, W, 3).
    reference, mask: appearance control: keep ``reference`` where mask = 0 (B, H, W, 1 or 3).
    source_b, style_mix: style interpolation: features (1 - w) f(source) + w f(source_b), w (B,).
    diffusion: the process (default: the official 1000 linear betas).
    mesh: optional mesh; the batch is split over its data axes.
    options: the sampler's settings (:class:`SamplerOptions`; default: the official DDIM, 50
      steps, style guidance with s = 2).
    **option_fields: any :class:`SamplerOptions` field by name (``algorithm``, ``steps``,
      ``guidance_scale``, ``eta``, ...), replacing the one in ``options``.
  Returns:
    (B, H, W, 3) float32 images in [-1, 1] (clipped, as the official code does when saving).
  """
  unknown = sorted(set(option_fields) - set(_OPTION_FIELDS))
  if unknown:
    raise TypeError(
        f"sample() got unknown option(s) {unknown}; SamplerOptions fields are "
        f"{list(_OPTION_FIELDS)}"
    )
  options = dataclasses.replace(
      options if options is not None else SamplerOptions(), **option_fields
  )
  batch = dict(source=source, pose=pose)
  optional = dict(
      noise=noise, reference=reference, mask=mask, source_b=source_b, style_mix=style_mix
  )
  batch.update({k: v for k, v in optional.items() if v is not None})
  images = get_sampler(diffusion, options, mesh)(model, batch, rng)
  return jnp.clip(images, -1.0, 1.0)
