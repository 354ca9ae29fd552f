"""SSIM (structural similarity) batched in JAX, matching scikit-image's `structural_similarity`.

The person-synthesis protocol reports two variants, both on RGB images (channels last, SSIM per
channel, then the mean over channels, as scikit-image does with `channel_axis=-1`):

* `ssim_gaussian` - the number PIDM, GFLA and NTED report ("ssim_256" in their scripts): images on
  the [0, 255] scale, an 11-tap-style Gaussian window of standard deviation `sigma` (1.2 in PIDM,
  truncated at 3.5 sigma like scipy), population covariance, and the data range taken per example
  from the *prediction* (max - min).
* `ssim_uniform` - images on [0, 1], a `win_size` x `win_size` box window (51 in the protocol),
  sample covariance, data range 1.

scikit-image filters the whole image and then discards a border of `(win_size - 1) // 2` pixels, so
only windows that lie fully inside the image count. Filtering with a "valid" window gives exactly
that cropped map, so the border mode of the filter never matters. Filtering is done with banded
matrices (one matmul per image axis, `Precision.HIGHEST`).

scikit-image computes in float64. So do these functions by default (`float64=True`): the call runs
under `jax.enable_x64(True)`, whatever the global setting. Inside another `jax.jit` that is not
possible; there (or with `float64=False`) the computation is float32 on data centred per
(example, channel), which keeps the `E[x^2] - E[x]^2` cancellation small (measured: within
2e-7 of scikit-image at 256x176, against 1e-13 in float64).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_TRUNCATE = 3.5  # scikit-image uses truncate=3.5 for its Gaussian SSIM window.


def gaussian_window_size(sigma: float) -> int:
  """Window size scikit-image derives from `sigma` for the Gaussian SSIM (radius int(3.5 s + .5))."""
  return 2 * int(_TRUNCATE * sigma + 0.5) + 1


def _window_1d(win_size: int, gaussian_weights: bool, sigma: float) -> np.ndarray:
  """Normalised 1-D window (scipy's Gaussian kernel, or a box) as float64."""
  if gaussian_weights:
    radius = (win_size - 1) // 2
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 / (sigma * sigma) * x * x)
  else:
    w = np.ones(win_size, dtype=np.float64)
  return w / w.sum()


def _valid_filter_matrix(n: int, window: np.ndarray) -> np.ndarray:
  """(n - w + 1, n) matrix whose rows apply `window` at every position where it fits."""
  w = window.shape[0]
  m = np.zeros((n - w + 1, n), dtype=np.float64)
  for i in range(n - w + 1):
    m[i, i : i + w] = window
  return m


def structural_similarity(
    x,
    y,
    data_range,
    *,
    win_size: int | None = None,
    gaussian_weights: bool = False,
    sigma: float = 1.5,
    use_sample_covariance: bool = True,
    k1: float = 0.01,
    k2: float = 0.03,
    float64: bool = True,
) -> jax.Array:
  """Mean SSIM per example of two batches of images, like scikit-image with `channel_axis=-1`.

  Args:
    x, y: arrays of shape (N, H, W, C) (or (H, W, C) for a single image), any real dtype.
    data_range: scalar or array of shape (N,): the dynamic range used for the SSIM constants.
    win_size: odd window size; default 7, or derived from `sigma` when `gaussian_weights`.
    gaussian_weights: Gaussian window of std `sigma` instead of a box.
    sigma: Gaussian standard deviation.
    use_sample_covariance: normalise (co)variances by NP / (NP - 1), NP = win_size ** 2.
    k1, k2: SSIM constants.
    float64: compute in float64 (see the module docstring); ignored inside a trace.

  Returns:
    array of shape (N,) (a scalar for unbatched input); float64 when computed in float64.
  """
  # NumPy inputs stay NumPy until the dtype of the computation is chosen (a float64 array must
  # not pass through float32 on the way).
  x = x if isinstance(x, jax.Array) else np.asarray(x)
  y = y if isinstance(y, jax.Array) else np.asarray(y)
  if x.shape != y.shape:
    raise ValueError(f"SSIM needs two images of the same shape, got {x.shape} and {y.shape}.")
  single = x.ndim == 3
  if single:
    x, y = x[None], y[None]
  if x.ndim != 4:
    raise ValueError(f"SSIM expects images of shape (N, H, W, C) or (H, W, C), got {x.shape}.")
  if win_size is None:
    win_size = gaussian_window_size(sigma) if gaussian_weights else 7
  if win_size % 2 != 1:
    raise ValueError(f"SSIM win_size must be odd, got {win_size}.")
  _, h, w, _ = x.shape
  if win_size > min(h, w):
    raise ValueError(
        f"SSIM win_size {win_size} exceeds the image extent {h}x{w}; use a smaller window."
    )
  options = dict(
      win_size=win_size,
      gaussian_weights=bool(gaussian_weights),
      sigma=float(sigma),
      use_sample_covariance=bool(use_sample_covariance),
      k1=float(k1),
      k2=float(k2),
  )
  traced = any(isinstance(a, jax.core.Tracer) for a in (x, y, data_range))
  if float64 and not traced:
    with jax.enable_x64(True):
      dtype = jnp.float64
      data_range = jnp.broadcast_to(jnp.asarray(data_range, dtype), (x.shape[0],))
      result = _ssim(x.astype(dtype), y.astype(dtype), data_range, **options)
  else:
    dtype = jnp.float32
    data_range = jnp.broadcast_to(jnp.asarray(data_range, dtype), (x.shape[0],))
    result = _ssim(x.astype(dtype), y.astype(dtype), data_range, **options)
  return result[0] if single else result


@functools.partial(
    jax.jit,
    static_argnames=("win_size", "gaussian_weights", "sigma", "use_sample_covariance", "k1", "k2"),
)
def _ssim(x, y, data_range, *, win_size, gaussian_weights, sigma, use_sample_covariance, k1, k2):
  _, h, w, _ = x.shape
  window = _window_1d(win_size, gaussian_weights, sigma)
  mh = jnp.asarray(_valid_filter_matrix(h, window), x.dtype)
  mw = jnp.asarray(_valid_filter_matrix(w, window), x.dtype)

  def filt(a):
    return jnp.einsum("ih,nhwc,jw->nijc", mh, a, mw, precision=jax.lax.Precision.HIGHEST)

  # Shift both images by the same per-(example, channel) constant: (co)variances do not change,
  # the means are shifted back exactly, and float32 cancellation shrinks.
  centre = 0.5 * (x.mean(axis=(1, 2), keepdims=True) + y.mean(axis=(1, 2), keepdims=True))
  xc, yc = x - centre, y - centre
  mx, my = filt(xc), filt(yc)
  npix = win_size**2
  cov_norm = npix / (npix - 1.0) if use_sample_covariance else 1.0
  vx = cov_norm * (filt(xc * xc) - mx * mx)
  vy = cov_norm * (filt(yc * yc) - my * my)
  vxy = cov_norm * (filt(xc * yc) - mx * my)
  ux, uy = mx + centre, my + centre

  c1 = ((k1 * data_range) ** 2)[:, None, None, None]
  c2 = ((k2 * data_range) ** 2)[:, None, None, None]
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
  return s.mean(axis=(1, 2, 3))


def ssim_gaussian(pred, target, sigma: float = 1.2, float64: bool = True) -> jax.Array:
  """The Gaussian-window SSIM that PIDM/GFLA report, per example.

  Equals `skimage.metrics.structural_similarity(target, pred, gaussian_weights=True, sigma=sigma,
  use_sample_covariance=False, channel_axis=-1, data_range=pred.max() - pred.min())`.

  Args:
    pred, target: (N, H, W, C) or (H, W, C) images on the [0, 255] scale (uint8 or float).
    sigma: Gaussian window standard deviation (PIDM uses 1.2; GFLA's script 1.5).
    float64: compute in float64 (see the module docstring).
  """
  pred = pred if isinstance(pred, jax.Array) else np.asarray(pred)
  axes = tuple(range(pred.ndim - 3, pred.ndim))
  data_range = pred.max(axis=axes) - pred.min(axis=axes)
  return structural_similarity(
      pred,
      target,
      data_range,
      gaussian_weights=True,
      sigma=sigma,
      use_sample_covariance=False,
      float64=float64,
  )


def ssim_uniform(pred, target, win_size: int = 51, float64: bool = True) -> jax.Array:
  """The box-window SSIM variant of the protocol on [0, 1] images, per example.

  Equals `skimage.metrics.structural_similarity(target, pred, win_size=win_size, data_range=1,
  channel_axis=-1)` (sample covariance, scikit-image's default).

  Args:
    pred, target: (N, H, W, C) or (H, W, C) images on the [0, 1] scale.
    win_size: odd box size (51 in the protocol).
    float64: compute in float64 (see the module docstring).
  """
  return structural_similarity(
      pred, target, 1.0, win_size=win_size, use_sample_covariance=True, float64=float64
  )
