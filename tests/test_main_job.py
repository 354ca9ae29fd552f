"""The README's main job end to end on a tiny model: build the synthetic set, train, checkpoint,
log, sample test identities and report SSIM next to copying the source."""

import glob
import json
import os

import numpy as np
from PIL import Image

from configs import tiny
from pidm_jax import checkpointing, train


def test_main_job_builds_trains_samples_and_reports(tmp_path):
  cfg = tiny.get_config()
  cfg.data.data_dir = str(tmp_path / "tfds")
  cfg.train.batch_size = 16  # 8 pairs, one per fake device
  cfg.train.num_train_steps = 2
  cfg.train.log_every = 1
  cfg.train.checkpoint_every = 2
  cfg.train.num_sample_pairs = 8
  cfg.sample.algorithm = "ddim"
  cfg.sample.steps = 2
  cfg.sample.eta = 1.0
  cfg.sample.clip_denoised = True
  cfg.sample.guidance_scale = 1.0
  cfg.diffusion.prediction = "v"  # as the demo (configs/small.py)
  workdir = tmp_path / "run"

  summary = train.train_and_evaluate(cfg, str(workdir))

  assert summary["step"] == 2 and np.isfinite(summary["loss"])
  # Copying the source scores well below 1 (the pose differs) and above 0 (same person, light
  # background); the untrained model's score is a valid SSIM.
  assert 0.2 < summary["ssim_copy_source"] < 0.95
  assert -1.0 <= summary["ssim"] <= 1.0
  # The source-swap figures are reported, and written to summary.json for scripts.
  written = json.loads((workdir / "summary.json").read_text())
  for key in (
      "ssim",
      "ssim_copy_source",
      "ssim_swapped_source",
      "body_colour_error",
      "body_colour_error_swapped_source",
      "train_seconds",
      "steps",
  ):
    assert np.isfinite(summary[key]) and written[key] == summary[key], key
  assert written["steps"] == 2 and 0 < summary["body_colour_error"] < 100
  assert checkpointing.latest_step(workdir / "checkpoints") == 2
  assert glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*"))
  grid = np.asarray(Image.open(summary["grid"]))
  assert os.path.dirname(summary["grid"]) == str(workdir / "samples")
  assert grid.shape == (8 * 32, 4 * 32, 3)  # source | skeleton | sample | ground truth per pair
  swap = np.asarray(Image.open(summary["swap_grid"]))
  assert swap.shape == (8 * 32, 6 * 32, 3)  # skeleton | source | sample | other | its sample | gt
