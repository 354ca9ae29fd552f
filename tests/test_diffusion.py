"""Diffusion maths against an independent float64 NumPy evaluation of the same formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm as scipy_norm

from configs import default
from pidm_jax.diffusion import GaussianDiffusion, beta_schedule


def test_linear_schedule_reference_values():
  d = GaussianDiffusion(beta_schedule("linear", 1000))
  assert d.betas.dtype == np.float64
  assert d.betas[0] == pytest.approx(1e-4) and d.betas[-1] == pytest.approx(0.02)
  # the official process (its diffusion.py, config/diffusion.conf)
  assert d.alphas_cumprod[0] == pytest.approx(0.9999)
  assert d.alphas_cumprod[499] == pytest.approx(0.0786, abs=1e-4)
  assert d.alphas_cumprod[980] == pytest.approx(5.9e-5, rel=0.02)
  assert d.alphas_cumprod[999] == pytest.approx(4.04e-5, rel=0.01)


def test_other_schedules():
  cos = beta_schedule("cosine", 1000)
  assert np.all(cos > 0) and cos.max() <= 0.999 and np.all(np.diff(cos[:-1]) >= -1e-12)
  quad = beta_schedule("quad", 1000)
  np.testing.assert_allclose(np.sqrt(quad[[0, -1]]), [1e-2, math.sqrt(0.02)])
  with pytest.raises(ValueError, match="unknown beta schedule 'sigmoid'"):
    beta_schedule("sigmoid", 10)


def _np_tables(betas):
  ac = np.cumprod(1 - betas)
  acp = np.append(1.0, ac[:-1])
  post_var = betas * (1 - acp) / (1 - ac)
  post_log = np.log(np.append(post_var[1], post_var[1:]))
  c1 = betas * np.sqrt(acp) / (1 - ac)
  c2 = (1 - acp) * np.sqrt(1 - betas) / (1 - ac)
  return ac, post_log, c1, c2


def _np_losses(betas, out, x0, xt, t, noise):
  """float64 reference of the hybrid loss (IDDPM learned-range, bits/dim, t=0 decoder NLL)."""
  ac, post_log, c1, c2 = _np_tables(betas)
  b = x0.shape[0]
  sh = lambda a: a[t].reshape(b, 1, 1, 1)
  eps, v = out[..., :3], out[..., 3:]
  mse = ((noise - eps) ** 2).reshape(b, -1).mean(1)
  frac = (v + 1) / 2
  logvar = frac * sh(np.log(betas)) + (1 - frac) * sh(post_log)
  x0_hat = np.sqrt(1 / sh(ac)) * xt - np.sqrt(1 / sh(ac) - 1) * eps
  mean = sh(c1) * x0_hat + sh(c2) * xt
  true_mean = sh(c1) * x0 + sh(c2) * xt
  true_logvar = sh(post_log)
  kl = 0.5 * (
      -1
      + logvar
      - true_logvar
      + np.exp(true_logvar - logvar)
      + (true_mean - mean) ** 2 * np.exp(-logvar)
  )
  kl = kl.reshape(b, -1).mean(1) / np.log(2)
  # discretised Gaussian decoder with the tanh CDF approximation
  cdf = lambda z: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
  inv = np.exp(-0.5 * logvar)
  plus, minus = cdf(inv * (x0 - mean + 1 / 255)), cdf(inv * (x0 - mean - 1 / 255))
  ll = np.where(
      x0 < -0.999,
      np.log(np.maximum(plus, 1e-12)),
      np.where(
          x0 > 0.999, np.log(np.maximum(1 - minus, 1e-12)), np.log(np.maximum(plus - minus, 1e-12))
      ),
  )
  nll = -ll.reshape(b, -1).mean(1) / np.log(2)
  vb = np.where(t == 0, nll, kl)
  return mse, vb


def test_training_losses_match_float64_numpy():
  d = GaussianDiffusion(beta_schedule("linear", 1000))
  rng = np.random.default_rng(0)
  b = 6
  t = np.array([0, 1, 2, 250, 998, 999])
  x0 = np.clip(rng.normal(0, 0.6, (b, 4, 5, 3)), -1, 1)
  x0[0, 0, 0] = [-1.0, 1.0, 0.0]  # edge bins of the decoder likelihood
  noise = rng.normal(size=x0.shape)
  out = np.concatenate(
      [noise + 0.1 * rng.normal(size=x0.shape), rng.uniform(-1, 1, x0.shape)], axis=-1
  )
  xt = np.asarray(
      d.q_sample(jnp.asarray(x0, jnp.float32), jnp.asarray(t), jnp.asarray(noise, jnp.float32)),
      np.float64,
  )
  ac = np.cumprod(1 - d.betas)
  np.testing.assert_allclose(
      xt,
      np.sqrt(ac[t])[:, None, None, None] * x0 + np.sqrt(1 - ac[t])[:, None, None, None] * noise,
      rtol=1e-5,
      atol=1e-5,
  )
  losses = d.training_losses(
      jnp.asarray(out, jnp.float32),
      jnp.asarray(x0, jnp.float32),
      jnp.asarray(xt, jnp.float32),
      jnp.asarray(t),
      jnp.asarray(noise, jnp.float32),
  )
  mse, vb = _np_losses(d.betas, out, x0, xt, t, noise)
  np.testing.assert_allclose(np.asarray(losses["mse"]), mse, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(losses["vb"]), vb, rtol=2e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(losses["loss"]), mse + vb, rtol=2e-4, atol=1e-5)


def test_vb_gradient_reaches_only_the_variance_channels():
  d = GaussianDiffusion(beta_schedule("linear", 1000))
  rng = np.random.default_rng(1)
  x0 = jnp.asarray(rng.uniform(-1, 1, (2, 3, 3, 3)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(2, 3, 3, 3)), jnp.float32)
  t = jnp.array([0, 500])
  xt = d.q_sample(x0, t, noise)
  out = jnp.asarray(rng.normal(size=(2, 3, 3, 6)), jnp.float32)
  g = jax.grad(lambda o: d.training_losses(o, x0, xt, t, noise)["vb"].sum())(out)
  assert np.all(np.asarray(g[..., :3]) == 0)
  assert np.abs(np.asarray(g[..., 3:])).max() > 0


def test_posterior_and_learned_range():
  d = GaussianDiffusion(beta_schedule("linear", 1000))
  t = jnp.array([0, 10, 999])
  v = jnp.array([-1.0, 1.0, 0.0]).reshape(3, 1, 1, 1)
  logvar = np.asarray(d.learned_range_log_variance(v, t)).ravel()
  _, post_log, _, _ = _np_tables(d.betas)
  np.testing.assert_allclose(
      logvar,
      [post_log[0], np.log(d.betas[10]), 0.5 * (post_log[999] + np.log(d.betas[999]))],
      rtol=1e-5,
  )
  # eps -> x0 recovers the x0 that was noised
  rng = np.random.default_rng(2)
  x0 = jnp.asarray(rng.uniform(-1, 1, (3, 2, 2, 3)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(3, 2, 2, 3)), jnp.float32)
  t = jnp.array([5, 100, 600])
  xt = d.q_sample(x0, t, noise)
  np.testing.assert_allclose(np.asarray(d.predict_xstart_from_eps(xt, t, noise)), x0, atol=1e-4)


def test_tanh_cdf_is_close_to_the_normal_cdf():
  from pidm_jax.diffusion import approx_standard_normal_cdf

  z = np.linspace(-4, 4, 81)
  np.testing.assert_allclose(
      np.asarray(approx_standard_normal_cdf(jnp.asarray(z))), scipy_norm.cdf(z), atol=1e-3
  )


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_prediction_targets_invert_to_eps_and_x0(prediction):
  """The target of each parameterisation maps back to the true (eps, x_0), even at the cosine
  schedule's last step where alpha_bar ~ 2e-9."""
  d = GaussianDiffusion(beta_schedule("cosine", 1000), prediction)
  rng = np.random.default_rng(2)
  x0 = jnp.asarray(rng.uniform(-1, 1, (4, 5, 5, 3)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
  t = jnp.array([0, 300, 900, 999])
  xt = d.q_sample(x0, t, noise)
  target = d.prediction_target(x0, noise, t)
  eps, x_start = d.eps_and_xstart(target, xt, t)
  # eps from an x_0 prediction divides by sqrt(1 - ab), which is 0.006 at t = 0
  np.testing.assert_allclose(np.asarray(eps)[1:], np.asarray(noise)[1:], atol=2e-5)
  if prediction != "eps":  # x_0 from an eps prediction divides by sqrt(ab) (2e-9 at t = 999)
    np.testing.assert_allclose(np.asarray(x_start), np.asarray(x0), atol=2e-5)
  else:
    np.testing.assert_allclose(np.asarray(x_start)[:3], np.asarray(x0)[:3], atol=1e-3)
  v = np.sqrt(d.alphas_cumprod[np.asarray(t)])[:, None, None, None] * np.asarray(noise) - np.sqrt(
      1 - d.alphas_cumprod[np.asarray(t)]
  )[:, None, None, None] * np.asarray(x0)
  expected = {"eps": np.asarray(noise), "v": v, "x0": np.asarray(x0)}[prediction]
  np.testing.assert_allclose(np.asarray(target), expected, atol=1e-6)
  # A perfect prediction has zero MSE; the VB term and the posterior mean are the same for every
  # parameterisation fed its own perfect prediction (t > 0, where the eps form is well conditioned).
  var = jnp.asarray(rng.uniform(-1, 1, x0.shape), jnp.float32)
  out = jnp.concatenate([target, var], axis=-1)
  losses = d.training_losses(out, x0, xt, t, noise)
  np.testing.assert_allclose(np.asarray(losses["mse"]), 0.0, atol=1e-10)
  ref = GaussianDiffusion(beta_schedule("cosine", 1000)).training_losses(
      jnp.concatenate([noise, var], axis=-1), x0, xt, t, noise
  )
  np.testing.assert_allclose(np.asarray(losses["vb"])[1:3], np.asarray(ref["vb"])[1:3], rtol=1e-3)


def test_prediction_option_is_validated_and_read_from_config():
  with pytest.raises(ValueError, match="prediction must be one of"):
    GaussianDiffusion(beta_schedule("linear", 100), "score")
  cfg = default.get_config().diffusion  # the defaults live in the config file only
  cfg.num_timesteps = 100
  assert GaussianDiffusion.from_config(cfg).prediction == "eps"
  cfg.prediction = "v"
  assert GaussianDiffusion.from_config(cfg).prediction == "v"
