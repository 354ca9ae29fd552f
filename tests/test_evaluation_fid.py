"""Fréchet distance against closed forms, activation statistics and the statistics cache."""

import numpy as np
import pytest

from pidm_jax.evaluation import fid


def _random_rotation(rng, d):
  q, r = np.linalg.qr(rng.normal(size=(d, d)))
  return q * np.sign(np.diag(r))


def test_frechet_distance_commuting_covariances_closed_form():
  # Covariances sharing eigenvectors: d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
  rng = np.random.default_rng(0)
  d = 16
  q = _random_rotation(rng, d)
  a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_frechet_distance_general_case_and_identity():
  rng = np.random.default_rng(1)
  d = 8
  m1, m2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
  s1, s2 = m1 @ m1.T + 0.1 * np.eye(d), m2 @ m2.T + 0.1 * np.eye(d)
  mu = rng.normal(size=d)
  # tr((s1 s2)^(1/2)) = tr((s1^(1/2) s2 s1^(1/2))^(1/2)); computed by eigendecompositions only.
  w, v = np.linalg.eigh(s1)
  r1 = v @ np.diag(np.sqrt(w)) @ v.T
  inner = np.linalg.eigvalsh(r1 @ s2 @ r1)
  want = np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(inner))
  assert fid.frechet_distance(mu, s1, mu, s2) == pytest.approx(want, rel=1e-8)
  assert fid.frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-8)
  # Univariate: (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s1, s2.
  assert fid.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_frechet_distance_singular_covariances_and_shape_errors():
  rng = np.random.default_rng(2)
  feats = rng.normal(size=(5, 10))  # 5 samples in 10-d: rank-deficient covariance
  mu, sigma = fid.activation_statistics(feats)
  value = fid.frechet_distance(mu, sigma, mu + 1.0, sigma)
  assert np.isfinite(value) and value == pytest.approx(10.0, abs=1e-2)
  with pytest.raises(ValueError, match="do not fit"):
    fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_activation_statistics_are_float64_unbiased():
  rng = np.random.default_rng(3)
  feats = rng.normal(size=(50, 4)).astype(np.float32)
  mu, sigma = fid.activation_statistics(feats)
  assert mu.dtype == np.float64 and sigma.dtype == np.float64
  np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False))
  with pytest.raises(ValueError, match="at least 2"):
    fid.activation_statistics(feats[:1])


def test_statistics_cache_hits_and_misses(tmp_path):
  images = []
  for i in range(3):
    p = tmp_path / "real" / f"{i}.png"
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(b"x" * (i + 1))
    images.append(str(p))
  weights = tmp_path / "w.npz"
  weights.write_bytes(b"weights-1")
  calls = []

  def compute():
    calls.append(1)
    return np.arange(12, dtype=np.float32).reshape(3, 4) ** 1.5

  key = fid.statistics_cache_key(images, weights, "pt_inception", "cv2-linear-256x176")
  mu, sigma, path, hit = fid.cached_statistics(tmp_path / "cache", key, compute)
  assert not hit and len(calls) == 1
  mu2, sigma2, path2, hit2 = fid.cached_statistics(tmp_path / "cache", key, compute)
  assert hit2 and path2 == path and len(calls) == 1
  np.testing.assert_array_equal(mu, mu2)
  np.testing.assert_array_equal(sigma, sigma2)
  # Any change of folder content, weights or resize rule gives another key.
  other = [
      fid.statistics_cache_key(images, weights, "pt_inception", "cv2-linear-128x64"),
      fid.statistics_cache_key(images, weights, "torchvision", "cv2-linear-256x176"),
      fid.statistics_cache_key(images[:2], weights, "pt_inception", "cv2-linear-256x176"),
  ]
  (tmp_path / "real" / "0.png").write_bytes(b"yy")
  other.append(fid.statistics_cache_key(images, weights, "pt_inception", "cv2-linear-256x176"))
  weights.write_bytes(b"weights-2")
  other.append(fid.statistics_cache_key(images, weights, "pt_inception", "cv2-linear-256x176"))
  for k in other:
    assert k != key
    fid.cached_statistics(tmp_path / "cache", k, compute)
  assert len(calls) == 1 + len(other)
