"""Gaussian diffusion maths of PIDM (IDDPM-style, as the official diffusion.py).

* beta schedules (linear, cosine, quad), precomputed in float64 with NumPy;
* ``q_sample``, the posterior q(x_{t-1} | x_t, x_0), x_0 from eps;
* the learned-range variance: log sigma^2 = frac * log beta_t + (1 - frac) * log beta~_t with
  frac = (v + 1) / 2 from the network's channels 3..5;
* the hybrid training loss: MSE on eps plus the variational bound in bits per dimension computed
  with eps stop-gradiented (so only the variance head learns from it), the decoder NLL at t = 0.
* the prediction target: eps (official) or, as options, v or x_0 (see ``PREDICTIONS``).

All per-timestep tables are float64 NumPy arrays; they enter JAX computations as float32 via
``extract``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

SCHEDULES = ("linear", "cosine", "quad")
# What the first image channels of the network's output predict. "eps" is the official PIDM (and
# the converted weights); "v" (Salimans & Ho 2022, v = sqrt(ab) eps - sqrt(1 - ab) x_0) and "x0"
# (IDDPM's START_X) keep x_0 bounded where alpha_bar -> 0, which eps cannot: there
# x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) multiplies any error in eps by 1 / sqrt(ab).
PREDICTIONS = ("eps", "v", "x0")


def eps_and_x0(
    prediction: str, pred: Array, x_t: Array, sqrt_ab, sqrt_1m_ab
) -> tuple[Array, Array]:
  """(eps, x_0) implied by the network's prediction at a timestep with the given sqrt(alpha_bar)
  and sqrt(1 - alpha_bar) (arrays broadcasting against ``x_t``), each computed directly (no round
  trip through the other, which would lose precision where one coefficient is tiny)."""
  if prediction == "eps":
    return pred, (x_t - sqrt_1m_ab * pred) / sqrt_ab
  if prediction == "v":
    return sqrt_ab * pred + sqrt_1m_ab * x_t, sqrt_ab * x_t - sqrt_1m_ab * pred
  if prediction == "x0":
    return (x_t - sqrt_ab * pred) / sqrt_1m_ab, pred
  raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")


def beta_schedule(
    name: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2
) -> np.ndarray:
  """Returns float64 betas of shape (num_timesteps,).

  linear: evenly spaced from beta_start to beta_end, scaled by 1000 / T as in IDDPM (identity at
  T = 1000, the official setting); quad: evenly spaced in sqrt(beta), squared; cosine: IDDPM's
  alpha_bar(t) = cos^2(((t / T) + 0.008) / 1.008 * pi / 2), betas capped at 0.999.
  """
  if num_timesteps < 1:
    raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
  if name == "linear":
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)
  if name == "quad":
    return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2
  if name == "cosine":

    def alpha_bar(s):
      return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array(
        [
            min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
            for i in range(num_timesteps)
        ],
        dtype=np.float64,
    )
  raise ValueError(f"unknown beta schedule {name!r}; expected one of {SCHEDULES}")


def sample_timesteps(
    key: Array,
    shape,
    num_timesteps: int,
    high_noise_fraction: float = 0.0,
    high_noise_from: float = 0.8,
) -> Array:
  """Training timesteps: uniform on [0, T) (official), or a mixture that trains high noise more.

  With ``high_noise_fraction`` = q > 0, each timestep is drawn with probability q uniformly from
  [high_noise_from * T, T) (where x_t no longer shows the image's colours, so only the source can
  tell them) and otherwise uniformly from [0, T). The loss is not re-weighted.
  """
  if not 0.0 <= high_noise_fraction <= 1.0:
    raise ValueError(f"high_noise_fraction must be in [0, 1], got {high_noise_fraction}")
  if not 0.0 <= high_noise_from < 1.0:
    raise ValueError(f"high_noise_from must be in [0, 1), got {high_noise_from}")
  if high_noise_fraction == 0.0:
    return jax.random.randint(key, shape, 0, num_timesteps)
  uniform_key, high_key, pick_key = jax.random.split(key, 3)
  t = jax.random.randint(uniform_key, shape, 0, num_timesteps)
  start = min(int(high_noise_from * num_timesteps), num_timesteps - 1)
  high = jax.random.randint(high_key, shape, start, num_timesteps)
  return jnp.where(jax.random.bernoulli(pick_key, high_noise_fraction, shape), high, t)


def extract(table: np.ndarray, t: Array, ndim: int) -> Array:
  """Gathers ``table[t]`` (float32) and reshapes it to broadcast against an ``ndim``-rank array."""
  values = jnp.asarray(table, jnp.float32)[jnp.asarray(t, jnp.int32)]
  return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
  return 0.5 * (
      -1.0
      + logvar2
      - logvar1
      + jnp.exp(logvar1 - logvar2)
      + (mean1 - mean2) ** 2 * jnp.exp(-logvar2)
  )


def approx_standard_normal_cdf(x):
  """The tanh approximation of the standard normal CDF used by IDDPM (and so by PIDM)."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """Log-likelihood of images in [-1, 1] quantised to 256 bins under N(means, exp(log_scales)^2)."""
  centered = x - means
  inv_stdv = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  cdf_delta = cdf_plus - cdf_min
  return jnp.where(
      x < -0.999,
      log_cdf_plus,
      jnp.where(x > 0.999, log_one_minus_cdf_min, jnp.log(jnp.maximum(cdf_delta, 1e-12))),
  )


def _mean_flat(x):
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianDiffusion:
  """Per-timestep tables of a discrete Gaussian diffusion (float64 NumPy) and its maths."""

  betas: np.ndarray
  prediction: str = "eps"

  def __post_init__(self):
    if self.prediction not in PREDICTIONS:
      raise ValueError(
          f"diffusion prediction must be one of {PREDICTIONS}, got {self.prediction!r}"
      )
    betas = np.asarray(self.betas, np.float64)
    if betas.ndim != 1 or not np.all((betas > 0) & (betas <= 1)):
      raise ValueError("betas must be a 1-D array with values in (0, 1]")
    object.__setattr__(self, "betas", betas)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    tables = dict(
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        sqrt_alphas_cumprod=np.sqrt(ac),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1.0),
    )
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    tables.update(
        posterior_variance=post_var,
        # log of the posterior variance with the t = 0 entry replaced by the t = 1 entry
        posterior_log_variance_clipped=np.log(
            np.append(post_var[1], post_var[1:]) if len(betas) > 1 else post_var
        ),
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        log_betas=np.log(betas),
    )
    for name, value in tables.items():
      object.__setattr__(self, name, value)

  @classmethod
  def from_config(cls, cfg) -> "GaussianDiffusion":
    """Builds from ``config.diffusion`` (num_timesteps, beta_schedule, beta_start, beta_end,
    prediction)."""
    return cls(
        beta_schedule(cfg.beta_schedule, cfg.num_timesteps, cfg.beta_start, cfg.beta_end),
        cfg.prediction,
    )

  @property
  def num_timesteps(self) -> int:
    return len(self.betas)

  # -- forward process --------------------------------------------------------------------------
  def q_sample(self, x_start: Array, t: Array, noise: Array) -> Array:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise."""
    return (
        extract(self.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
        + extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * noise
    )

  def q_posterior_mean_variance(self, x_start: Array, x_t: Array, t: Array):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
    nd = x_t.ndim
    mean = (
        extract(self.posterior_mean_coef1, t, nd) * x_start
        + extract(self.posterior_mean_coef2, t, nd) * x_t
    )
    return (
        mean,
        extract(self.posterior_variance, t, nd),
        extract(self.posterior_log_variance_clipped, t, nd),
    )

  def predict_xstart_from_eps(self, x_t: Array, t: Array, eps: Array) -> Array:
    """x_0 = sqrt(1 / alpha_bar_t) x_t - sqrt(1 / alpha_bar_t - 1) eps."""
    return (
        extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
        - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps
    )

  def _coefs(self, t: Array, ndim: int):
    return (
        extract(self.sqrt_alphas_cumprod, t, ndim),
        extract(self.sqrt_one_minus_alphas_cumprod, t, ndim),
    )

  def eps_and_xstart(self, pred: Array, x_t: Array, t: Array) -> tuple[Array, Array]:
    """(eps, x_0) implied by the network's image channels ``pred`` under ``self.prediction``
    (for eps, x_0 by the official arithmetic, ``predict_xstart_from_eps``)."""
    if self.prediction == "eps":
      return pred, self.predict_xstart_from_eps(x_t, t, pred)
    return eps_and_x0(self.prediction, pred, x_t, *self._coefs(t, x_t.ndim))

  def prediction_target(self, x_start: Array, noise: Array, t: Array) -> Array:
    """What the image channels are trained to output: eps, v = sqrt(ab) eps - sqrt(1 - ab) x_0,
    or x_0."""
    if self.prediction == "eps":
      return noise
    if self.prediction == "x0":
      return x_start
    sqrt_ab, sqrt_1m_ab = self._coefs(t, x_start.ndim)
    return sqrt_ab * noise - sqrt_1m_ab * x_start

  # -- reverse process --------------------------------------------------------------------------
  def learned_range_log_variance(self, v: Array, t: Array) -> Array:
    """log sigma^2_t from the network's variance channels v (nominally in [-1, 1])."""
    min_log = extract(self.posterior_log_variance_clipped, t, v.ndim)
    max_log = extract(self.log_betas, t, v.ndim)
    frac = (v + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log

  def p_mean_variance(
      self, model_output: Array, x_t: Array, t: Array, clip_denoised: bool = True
  ) -> dict:
    """Mean and log-variance of p(x_{t-1} | x_t) from a 6-channel output (the prediction, then
    the variance channels), and x_0 and eps."""
    channels = x_t.shape[-1]
    pred, v = model_output[..., :channels], model_output[..., channels:]
    log_variance = self.learned_range_log_variance(v, t)
    eps, pred_xstart = self.eps_and_xstart(pred, x_t, t)
    if clip_denoised:
      pred_xstart = jnp.clip(pred_xstart, -1.0, 1.0)
    mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
    return dict(mean=mean, log_variance=log_variance, pred_xstart=pred_xstart, eps=eps)

  # -- training loss ----------------------------------------------------------------------------
  def training_losses(
      self, model_output: Array, x_start: Array, x_t: Array, t: Array, noise: Array
  ) -> dict:
    """The hybrid loss of PIDM, per sample.

    Returns a dict of (B,) float32 arrays: ``mse`` = mean (target - prediction)^2, the target
    being eps (the official choice), v or x_0 per ``self.prediction``; ``vb`` = the VLB term in
    bits/dim with the prediction stop-gradiented (KL of the posteriors for t > 0, the discretised
    decoder NLL for t = 0); ``loss`` = mse + vb.
    """
    model_output = model_output.astype(jnp.float32)
    channels = x_start.shape[-1]
    if model_output.shape[-1] != 2 * channels:
      raise ValueError(
          f"the hybrid loss needs eps and variance channels (2 x {channels}), got output shape "
          f"{model_output.shape}"
      )
    pred, v = model_output[..., :channels], model_output[..., channels:]
    mse = _mean_flat((self.prediction_target(x_start, noise, t) - pred) ** 2)
    frozen = jnp.concatenate([jax.lax.stop_gradient(pred), v], axis=-1)
    out = self.p_mean_variance(frozen, x_t, t, clip_denoised=False)
    true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
    kl = _mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"]))
    kl = kl / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
    nll = _mean_flat(nll) / math.log(2.0)
    vb = jnp.where(jnp.asarray(t) == 0, nll, kl)
    return dict(mse=mse, vb=vb, loss=mse + vb)
