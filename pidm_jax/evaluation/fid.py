"""Fréchet Inception Distance: activation statistics, the distance in float64, and a statistics cache.

The real set's statistics are cached to an `.npz` whose name is a hash of everything they depend on:
the folder's listing (file names, sizes, modification times), the Inception weights file (its
SHA-256), the network variant and the resize rule. Change any of them and the cache misses.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence

import numpy as np

CACHE_VERSION = 1  # bump when the feature computation changes in a way the key does not see


def activation_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (unbiased, float64) of (N, D) activations, as FID uses them."""
  features = np.asarray(features, dtype=np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(
        f"FID statistics need at least 2 feature vectors of shape (N, D), " f"got {features.shape}"
    )
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64.

  d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), with scipy's `sqrtm`; when
  the product's square root is not finite, `eps` is added to both diagonals (as pytorch-fid and
  the PIDM script do). A small imaginary part from round-off is dropped.
  """
  from scipy import linalg  # scipy is only needed for FID.

  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(
        f"FID statistics do not fit: means {mu1.shape} and {mu2.shape}, covariances "
        f"{sigma1.shape} and {sigma2.shape}"
    )
  diff = mu1 - mu2
  covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(
          f"FID: sqrtm has an imaginary component of {np.max(np.abs(covmean.imag)):.3g}"
      )
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def file_sha256(path, chunk: int = 1 << 20) -> str:
  """SHA-256 hex digest of a file's content."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      digest.update(block)
  return digest.hexdigest()


def listing_fingerprint(files: Sequence[str]) -> str:
  """SHA-256 of the file names, sizes and modification times (ns) of `files`, in order."""
  digest = hashlib.sha256()
  for path in files:
    st = os.stat(path)
    digest.update(f"{os.path.basename(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return digest.hexdigest()


def statistics_cache_key(
    files: Sequence[str], weights_path, network: str, resize_rule: str
) -> dict:
  """The dict that identifies a set's statistics (hashed into the cache file name)."""
  return {
      "version": CACHE_VERSION,
      "listing_sha256": listing_fingerprint(files),
      "num_images": len(files),
      "weights_sha256": file_sha256(weights_path),
      "network": network,
      "resize": resize_rule,
  }


def cached_statistics(
    cache_dir, key: dict, compute: Callable[[], np.ndarray]
) -> tuple[np.ndarray, np.ndarray, str, bool]:
  """Loads the statistics for `key` from `cache_dir`, or computes features and stores them.

  Args:
    cache_dir: folder of the cache files (created when missing).
    key: from `statistics_cache_key`.
    compute: returns the (N, D) features of the set when the cache misses.

  Returns:
    (mu, sigma, cache file path, whether it was a cache hit).
  """
  blob = json.dumps(key, sort_keys=True).encode()
  name = f"fid_stats_{key['network']}_{hashlib.sha256(blob).hexdigest()[:20]}.npz"
  path = os.path.join(os.fspath(cache_dir), name)
  if os.path.isfile(path):
    with np.load(path, allow_pickle=False) as data:
      if json.loads(str(data["key"])) == key:
        return data["mu"], data["sigma"], path, True
  mu, sigma = activation_statistics(compute())
  os.makedirs(os.fspath(cache_dir), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, mu=mu, sigma=sigma, key=json.dumps(key, sort_keys=True))
  os.replace(tmp, path)
  return mu, sigma, path, False
