"""Single-op timings of the convolutions that dominate the training step, in JAX and PyTorch.

    python benchmarks/cpu_ops.py [--batch=2] [--repeats=5] [--output=FILE.json]

For each 3x3 convolution shape of the paper's UNet at 128x128 input (per level: resolution and
channels), it times the forward convolution, the gradient with respect to the input and the
gradient with respect to the weights, each jitted alone (JAX) and as the matching
``torch.nn.functional`` / ``torch.nn.grad`` call (PyTorch, when importable; the run says so
otherwise), on the same threads: the median of ``--repeats`` calls after one warm-up, and the
rate in GFLOP/s (2 x N x H x W x Cin x Cout x 9 per call). PyTorch is optional and only used here.

A profile of the training step (``jax.profiler``) names the weight gradients at the highest
resolution as the largest cost on a CPU; this isolates them so that a kernel's own speed can be
told apart from the program around it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

# (resolution, channels) of the paper's UNet levels at 128x128 input (channel_mult 1,1,2,2,4,4
# over 128 base channels).
SHAPES = ((128, 128), (64, 128), (32, 256), (16, 256), (8, 512), (4, 512))


def _median(fn, repeats):
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def jax_times(batch, res, ch, repeats, rng):
  import jax  # pylint: disable=g-import-not-at-top

  x = jax.numpy.asarray(rng.standard_normal((batch, res, res, ch), np.float32))
  w = jax.numpy.asarray(rng.standard_normal((3, 3, ch, ch), np.float32) * 0.05)
  dy = jax.numpy.asarray(rng.standard_normal((batch, res, res, ch), np.float32))

  def conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  fwd = jax.jit(conv)
  dx = jax.jit(lambda w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
  dw = jax.jit(lambda x, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
  block = jax.block_until_ready
  return {
      "forward": _median(lambda: block(fwd(x, w)), repeats),
      "input_grad": _median(lambda: block(dx(w, dy)), repeats),
      "weight_grad": _median(lambda: block(dw(x, dy)), repeats),
  }


def torch_times(batch, res, ch, repeats, rng):
  import torch  # pylint: disable=g-import-not-at-top

  x = torch.from_numpy(rng.standard_normal((batch, ch, res, res), np.float32))
  w = torch.from_numpy(rng.standard_normal((ch, ch, 3, 3), np.float32) * 0.05)
  dy = torch.from_numpy(rng.standard_normal((batch, ch, res, res), np.float32))
  f = torch.nn.functional
  g = torch.nn.grad
  with torch.no_grad():
    return {
        "forward": _median(lambda: f.conv2d(x, w, padding=1), repeats),
        "input_grad": _median(lambda: g.conv2d_input(x.shape, w, dy, padding=1), repeats),
        "weight_grad": _median(lambda: g.conv2d_weight(x, w.shape, dy, padding=1), repeats),
    }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--output", default=None, help="JSON record (default: none)")
  args = parser.parse_args()
  if args.batch < 1 or args.repeats < 1:
    parser.error("--batch and --repeats must be at least 1")
  try:
    import torch  # pylint: disable=g-import-not-at-top

    torch_version = f"{torch.__version__}, {torch.get_num_threads()} threads"
  except ImportError:
    torch_version = None
    print("PyTorch is not importable here: JAX alone")
  import jax  # pylint: disable=g-import-not-at-top

  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs")
  if torch_version:
    print(f"torch {torch_version}")
  rng = np.random.default_rng(0)
  rows = []
  print(f"{'shape':>22} {'op':>12} {'jax ms':>8} {'GFLOP/s':>8} {'torch ms':>9} {'GFLOP/s':>8}")
  for res, ch in SHAPES:
    flops = 2 * args.batch * res * res * ch * ch * 9
    jt = jax_times(args.batch, res, ch, args.repeats, rng)
    tt = torch_times(args.batch, res, ch, args.repeats, rng) if torch_version else None
    for op in ("forward", "input_grad", "weight_grad"):
      row = {"batch": args.batch, "res": res, "channels": ch, "op": op, "flops": flops}
      row["jax_s"] = jt[op]
      row["torch_s"] = tt[op] if tt else None
      rows.append(row)
      torch_cells = (
          f"{tt[op] * 1e3:9.1f} {flops / tt[op] / 1e9:8.0f}" if tt else f"{'n/a':>9} {'':>8}"
      )
      shape = f"{args.batch}x{res}x{res}x{ch}"
      print(f"{shape:>22} {op:>12} {jt[op] * 1e3:8.1f} {flops / jt[op] / 1e9:8.0f} {torch_cells}")
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump({"jax": jax.__version__, "torch": torch_version, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
