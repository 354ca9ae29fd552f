"""SSIM against scikit-image's structural_similarity with the protocol's two settings."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity as sk_ssim

from pidm_jax.evaluation import ssim


def _pairs(rng, n, h, w, noise):
  """Smooth random 'images' on [0, 255] and noisy, rounded versions of them."""
  coarse = rng.uniform(0, 255, (n, h // 8 + 1, w // 8 + 1, 3))
  base = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :h, :w]
  base = base + rng.normal(0, 10, base.shape)
  target = np.clip(base, 0, 255).round()
  pred = np.clip(base + rng.normal(0, noise, base.shape), 0, 255).round()
  return pred, target


@pytest.mark.parametrize("noise", [3.0, 40.0])
def test_gaussian_variant_matches_skimage(noise):
  rng = np.random.default_rng(0)
  pred, target = _pairs(rng, 3, 256, 176, noise)
  got = np.asarray(
      ssim.ssim_gaussian(pred.astype(np.float32), target.astype(np.float32), sigma=1.2)
  )
  want = [
      sk_ssim(
          t,
          p,
          gaussian_weights=True,
          sigma=1.2,
          use_sample_covariance=False,
          channel_axis=-1,
          data_range=p.max() - p.min(),
      )
      for p, t in zip(pred, target)
  ]
  assert got.shape == (3,)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_uniform_variant_matches_skimage():
  rng = np.random.default_rng(1)
  pred, target = _pairs(rng, 2, 256, 176, 15.0)
  pred, target = pred / 255.0, target / 255.0
  got = np.asarray(ssim.ssim_uniform(pred.astype(np.float32), target.astype(np.float32), 51))
  want = [sk_ssim(t, p, win_size=51, data_range=1, channel_axis=-1) for p, t in zip(pred, target)]
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_sigma_sets_window_like_skimage_and_general_options():
  rng = np.random.default_rng(2)
  pred, target = _pairs(rng, 2, 40, 32, 20.0)
  for sigma in (0.8, 1.5, 2.3):
    got = np.asarray(ssim.ssim_gaussian(pred, target, sigma=sigma))
    want = [
        sk_ssim(
            t,
            p,
            gaussian_weights=True,
            sigma=sigma,
            use_sample_covariance=False,
            channel_axis=-1,
            data_range=p.max() - p.min(),
        )
        for p, t in zip(pred, target)
    ]
    np.testing.assert_allclose(got, want, atol=1e-6)
  # Box window of skimage's default size 7 with sample covariance and a given data range.
  got = np.asarray(ssim.structural_similarity(pred, target, 255.0))
  want = [sk_ssim(p, t, data_range=255, channel_axis=-1) for p, t in zip(pred, target)]
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert ssim.gaussian_window_size(1.2) == 9 and ssim.gaussian_window_size(1.5) == 11


def test_unbatched_uint8_and_identity():
  rng = np.random.default_rng(3)
  pred, target = _pairs(rng, 1, 32, 24, 10.0)
  p8, t8 = pred[0].astype(np.uint8), target[0].astype(np.uint8)
  got = float(ssim.ssim_gaussian(p8, t8))
  want = sk_ssim(
      t8.astype(np.float64),
      p8.astype(np.float64),
      gaussian_weights=True,
      sigma=1.2,
      use_sample_covariance=False,
      channel_axis=-1,
      data_range=float(p8.max()) - float(p8.min()),
  )
  assert abs(got - want) < 1e-6
  assert abs(float(ssim.ssim_gaussian(t8, t8)) - 1.0) < 1e-6


def test_errors_name_the_problem():
  a = np.zeros((1, 20, 20, 3), np.float32)
  with pytest.raises(ValueError, match="same shape"):
    ssim.ssim_gaussian(a, np.zeros((1, 20, 21, 3), np.float32))
  with pytest.raises(ValueError, match="exceeds the image extent"):
    ssim.ssim_uniform(a, a, win_size=51)
  with pytest.raises(ValueError, match="odd"):
    ssim.structural_similarity(a, a, 1.0, win_size=8)


def test_float32_path_and_inside_jit():
  import jax

  rng = np.random.default_rng(4)
  pred, target = _pairs(rng, 2, 64, 48, 5.0)
  want = [
      sk_ssim(
          t,
          p,
          gaussian_weights=True,
          sigma=1.2,
          use_sample_covariance=False,
          channel_axis=-1,
          data_range=p.max() - p.min(),
      )
      for p, t in zip(pred, target)
  ]
  exact = ssim.ssim_gaussian(pred, target)
  assert exact.dtype == np.float64
  np.testing.assert_allclose(np.asarray(exact), want, atol=1e-12)
  single = ssim.ssim_gaussian(pred.astype(np.float32), target.astype(np.float32), float64=False)
  assert single.dtype == np.float32
  np.testing.assert_allclose(np.asarray(single), want, atol=1e-6)
  # Inside a trace x64 cannot be switched on: the float32 computation is used.
  jitted = jax.jit(lambda p, t: ssim.ssim_gaussian(p, t))(
      pred.astype(np.float32), target.astype(np.float32)
  )
  np.testing.assert_allclose(np.asarray(jitted), want, atol=1e-6)
