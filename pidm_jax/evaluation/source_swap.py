"""Does a model use its source image? The source-swap evaluation, measured on samples.

PIDM exists to draw the person of the source image in the target pose. A model that ignores the
source (draws a plausible figure in the target pose from the pose alone) can still beat copying the
source on SSIM, by clean backgrounds and silhouettes; a loss or an eps error cannot tell the two
apart. So for fixed test pairs each target pose is sampled twice **with the same noise**: once from
the pair's own source image and once from the source image of a pair of *another identity*
(``swap_partners``), and both results are scored against the pair's ground truth:

* ``ssim`` / ``ssim_swapped_source``: SSIM (Gaussian window, sigma 1.2, as PIDM and GFLA report it);
  ``ssim_copy_source`` is the SSIM of the source image itself, the floor to beat.
* ``body_colour_error`` / ``body_colour_error_swapped_source``: the mean CIELAB colour difference
  Delta E*ab (CIE 1976, ``skimage.color.deltaE_cie76``; 1 unit is about a just-noticeable
  difference, 100 the distance from black to white) between the sample and the ground truth inside
  the *body region* of the target: the mask the Market-1501 Mask-SSIM protocol draws from the
  target keypoints (``pidm_jax.evaluation.masks.body_mask``), its limb half-width scaled from 4 px
  at 128 px height to the image height. The region holds clothes, skin and hair, not background, so
  this error is about the person's look.

A model that carries the source's look has ``body_colour_error`` well below the swapped-source
error, and ``ssim_swapped_source`` below ``ssim``; a model that ignores the source has equal values.

``high_noise_x0_error`` is a cheap (no sampling) reading of the same question for use during
training: the denoiser's x0 estimate at high noise (t >= 0.8 T, where x_t says little about the
image) with the own and with the swapped source, as squared error inside the body region.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pidm_jax import encoding
from pidm_jax import multihost
from pidm_jax.evaluation import masks as masks_lib
from pidm_jax.evaluation.ssim import ssim_gaussian

HIGH_NOISE_FRACTIONS = (0.8, 0.9, 0.95)
METRIC_KEYS = (
    "ssim",
    "ssim_swapped_source",
    "ssim_copy_source",
    "body_colour_error",
    "body_colour_error_swapped_source",
)


# Gathered of each pair: the model's inputs and the target keypoints (for the body regions).
_GATHERED = encoding.MODEL_INPUT_KEYS + ("target_keypoints",)


def first_pairs(eval_data, num_pairs: int) -> dict:
  """The first ``num_pairs`` pairs of an evaluation split, as host NumPy float32 model inputs.

  ``eval_data`` is an ``input_pipeline.pipeline.EvalData`` (batches padded to a fixed size, with
  ``mask`` and ``index``; on multi-host runs each batch is gathered to every process). Besides the
  images and pose maps: ``target_keypoints`` (for the body regions) and ``person_id`` (a list of
  str: each pair's identity, or its source image's id where the data set has none).
  """
  if num_pairs < 1:
    raise ValueError(f"num_pairs must be at least 1, got {num_pairs}")
  out = {k: [] for k in _GATHERED + ("index",)}
  have = 0
  for batch in eval_data:
    mask = multihost.gather(batch["mask"]).astype(bool)
    for k in out:
      out[k].append(multihost.gather(batch[k])[mask])
    have += int(mask.sum())
    if have >= num_pairs:
      break
  if not have:
    raise ValueError("the evaluation split holds no pairs")
  pairs = encoding.to_model_inputs({k: np.concatenate(v)[:num_pairs] for k, v in out.items()})
  pairs["person_id"] = eval_data.person_ids(pairs.pop("index"))
  return pairs


def swap_partners(person_ids: Sequence[str]) -> np.ndarray:
  """For each pair i, the index j of a pair of another identity whose source replaces i's.

  Deterministic: j is the first index after ``i + n // 2`` (cyclically) whose identity differs
  from i's, so partners are spread over the batch rather than neighbours (neighbouring records
  often share an identity). Raises ValueError if fewer than two identities are present.
  """
  ids = [str(p) for p in person_ids]
  n = len(ids)
  if len(set(ids)) < 2:
    raise ValueError(
        f"the source-swap evaluation needs pairs of at least two identities; the "
        f"{n} pairs given are all of {ids[0]!r}"
        if n
        else "the source-swap evaluation needs pairs of at least two identities; none given"
    )
  partners = np.empty(n, np.int64)
  for i in range(n):
    for k in range(n):
      j = (i + n // 2 + k) % n
      if ids[j] != ids[i]:
        partners[i] = j
        break
  return partners


def body_masks(keypoints_xy, height: int, width: int) -> np.ndarray:
  """(N, H, W) bool body regions from (N, 18, 2) (x, y) keypoints in the image frame (-1 missing).

  Market-1501's Mask-SSIM mask (limb polygons and joint discs, closed by a 5x5 dilation and
  erosion), drawn at this image size with the half-width scaled from 4 px at 128 px height.
  """
  kp = np.asarray(keypoints_xy, np.float64)
  if kp.ndim != 3 or kp.shape[1:] != (18, 2):
    raise ValueError(f"keypoints must be (N, 18, 2) (x, y), got shape {kp.shape}")
  radius = max(1, int(round(4 * height / masks_lib.MARKET_SIZE[0])))
  out = []
  for points in kp:
    yx = points[:, ::-1].copy()
    yx[np.any(points < 0, axis=-1)] = masks_lib.MISSING
    out.append(masks_lib.body_mask(yx, (height, width), radius=radius))
  return np.stack(out)


def to_255(images) -> np.ndarray:
  """Images in [-1, 1] (clipped) as float64 in [0, 255], the range the SSIM of the protocol reads."""
  return (np.clip(np.asarray(images, np.float64), -1, 1) + 1.0) * 127.5


def body_colour_error(images, targets, masks) -> np.ndarray:
  """Per image: mean CIELAB Delta E*ab (CIE76) between ``images`` and ``targets`` in ``masks``.

  images, targets: (N, H, W, 3) RGB in [-1, 1]; masks: (N, H, W) bool. An empty mask gives NaN.
  """
  from skimage import color  # pylint: disable=g-import-not-at-top

  images, targets, masks = np.asarray(images), np.asarray(targets), np.asarray(masks, bool)
  if images.shape != targets.shape or images.shape[:3] != masks.shape or images.shape[-1] != 3:
    raise ValueError(
        f"images {images.shape}, targets {targets.shape} and masks {masks.shape} must "
        "be (N, H, W, 3), (N, H, W, 3) and (N, H, W)"
    )
  to01 = lambda x: (np.clip(x.astype(np.float64), -1.0, 1.0) + 1.0) / 2.0
  delta = color.deltaE_cie76(color.rgb2lab(to01(images)), color.rgb2lab(to01(targets)))
  out = np.full(len(images), np.nan)
  for i, m in enumerate(masks):
    if m.any():
      out[i] = float(delta[i][m].mean())
  return out


def evaluate(
    sample_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    pairs: Mapping,
    person_ids: Sequence[str],
) -> dict:
  """Samples every target pose from its own and from a swapped source; scores both.

  Args:
    sample_fn: (source images (N, H, W, 3), target pose maps (N, H, W, 20)) -> samples
      (N, H, W, 3), all in the model's ranges. It must use the same noise on every call (a fixed
      key), so that the two samples of a pair differ only by the source.
    pairs: ``source_image``, ``target_image`` ([-1, 1]), ``target_pose`` and ``target_keypoints``
      ((N, 18, 2) (x, y) in the image frame).
    person_ids: the identity of each pair.

  Returns:
    ``METRIC_KEYS`` as floats, plus ``samples`` and ``samples_swapped_source`` (NumPy arrays),
    ``partners`` (the index whose source each pair got) and ``body_fraction`` (mean mask area).
  """
  n = len(pairs["source_image"])
  if len(person_ids) != n:
    raise ValueError(f"{len(person_ids)} person ids for {n} pairs")
  partners = swap_partners(person_ids)
  source = np.asarray(pairs["source_image"])
  target = np.asarray(pairs["target_image"])
  own = np.clip(np.asarray(sample_fn(source, pairs["target_pose"])), -1, 1)
  swapped = np.clip(np.asarray(sample_fn(source[partners], pairs["target_pose"])), -1, 1)
  h, w = target.shape[1:3]
  region = body_masks(pairs["target_keypoints"], h, w)
  ssim = lambda x: float(np.mean(np.asarray(ssim_gaussian(to_255(x), to_255(target)))))
  return {
      "ssim": ssim(own),
      "ssim_swapped_source": ssim(swapped),
      "ssim_copy_source": ssim(source),
      "body_colour_error": float(np.nanmean(body_colour_error(own, target, region))),
      "body_colour_error_swapped_source": float(
          np.nanmean(body_colour_error(swapped, target, region))
      ),
      "body_fraction": float(region.mean()),
      "partners": partners,
      "samples": own,
      "samples_swapped_source": swapped,
  }


def high_noise_x0_error(
    model,
    diffusion,
    source,
    swapped_source,
    pose,
    x0,
    region,
    key,
    fractions: Sequence[float] = HIGH_NOISE_FRACTIONS,
):
  """(own, swapped) mean squared x0 error inside ``region`` at high noise; traceable (jit it).

  ``x0`` is noised at the timesteps ``fractions`` of the schedule (the same noise for both
  sources); the model (eval mode) predicts x0 (directly, or from its eps or v output) once with
  ``source`` and once with ``swapped_source``. ``region``: (N, H, W) body masks.
  """
  n = x0.shape[0]
  steps = jnp.asarray([int(f * (diffusion.num_timesteps - 1)) for f in fractions])
  features = model.encode(source), model.encode(swapped_source)
  weight = region.astype(jnp.float32)[..., None]
  denom = jnp.maximum(jnp.sum(weight) * x0.shape[-1], 1.0)

  def at(t, k):
    noise = jax.random.normal(k, x0.shape, jnp.float32)
    tt = jnp.full((n,), t)
    x_t = diffusion.q_sample(x0, tt, noise)

    def err(f):
      pred = model.denoise(x_t, pose, tt, f)[..., : x0.shape[-1]]
      x0_hat = jnp.clip(diffusion.eps_and_xstart(pred, x_t, tt)[1], -1.0, 1.0)
      return jnp.sum(weight * (x0_hat - x0) ** 2) / denom

    return err(features[0]), err(features[1])

  own, other = jax.lax.map(lambda a: at(*a), (steps, jax.random.split(key, len(fractions))))
  return jnp.mean(own), jnp.mean(other)
