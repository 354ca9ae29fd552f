"""Input pipeline throughput: training samples per second per CPU core, 256x256, with augmentation.

  python benchmarks/pipeline_throughput.py [--data_dir=DIR] [--worker_count=0] [--read_threads=1]

Builds ``synthetic_people/res256`` into a temporary dir (or reuses ``--data_dir``), then:

1. measures the CPU time (``time.thread_time``, so unaffected by other load) of each stage of the
   per-pair work in one thread, as ``PairTransform`` does it: record read + PNG decode,
   scale-and-crop, pose maps (uint8, mirrored), image flip + copy into batch rows (images and pose
   maps stay uint8 up to the device, which converts them to float32: ``pidm_jax.encoding``);
2. runs the real training pipeline (``input_pipeline.pipeline.create_datasets``, NumPy batches:
   the host side of a training step without the device transfer) for ``--num_batches`` batches and
   reports samples/s of wall-clock time and samples per CPU-second. The CPU time counts every thread
   of this process (and, with ``--worker_count`` > 0, of its grain workers, read from /proc), so
   samples per CPU-second is the per-core throughput whatever the machine's load.

A sample is one (source -> target) direction of a pair, the unit of ``config.train.batch_size``:
every pair gives two. Goal: >= 100 samples/s per core.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

flags.DEFINE_string(
    "data_dir",
    None,
    "TFDS data dir holding (or to hold) the synthetic set; " "default: a fresh temporary dir",
)
flags.DEFINE_string("dataset", "synthetic_people/res256", "data set to read")
flags.DEFINE_integer("batch_size", 64, "samples per batch (2 per pair)")
flags.DEFINE_integer("num_batches", 8, "timed batches")
flags.DEFINE_integer("stage_pairs", 40, "pairs timed stage by stage")
flags.DEFINE_integer("worker_count", 0, "grain worker processes")
flags.DEFINE_integer("read_threads", 1, "grain reader threads per process")
flags.DEFINE_integer("opencv_threads", 1, "cv2.setNumThreads (1 = one core per worker)")
FLAGS = flags.FLAGS


def _cpu_seconds(pids=()) -> float:
  """CPU time (user + system) of this process and of the given child processes."""
  total = time.process_time()
  tick = os.sysconf("SC_CLK_TCK")
  for pid in pids:
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / tick
    except OSError:
      pass
  return total


def _children() -> list[int]:
  """Every descendant process of this one (grain workers), from /proc (empty where unavailable)."""
  found, todo = [], [os.getpid()]
  while todo:
    pid = todo.pop()
    for task in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []:
      try:
        with open(f"/proc/{pid}/task/{task}/children") as f:
          kids = [int(p) for p in f.read().split()]
      except OSError:
        kids = []
      found.extend(kids)
      todo.extend(kids)
  return found


def _stages(source, image_size, pairs: int) -> dict[str, float]:
  """CPU milliseconds per pair of each stage, one thread, the official augmentation (flipped)."""
  import cv2  # pylint: disable=g-import-not-at-top

  from pidm_jax import pose  # pylint: disable=g-import-not-at-top

  h, w = image_size
  rng = np.random.default_rng(0)
  totals = dict.fromkeys(("read_decode", "scale_crop", "pose_maps", "flip_stack"), 0.0)
  n = len(source)
  for i in range(pairs):
    t0 = time.thread_time()
    record = source[i % n]
    t1 = time.thread_time()
    parts = {}
    for side in ("target", "source"):
      scaled, offset = pose.random_scale_crop_params(h, w, rng, 0.05)
      parts[side] = pose.scale_crop(
          record[f"{side}_image"], record[f"{side}_keypoints"].astype(np.float64), scaled, offset
      )
    t2 = time.thread_time()
    maps = {side: pose.pose_map_uint8(kp, h, w, mirror=True) for side, (_, kp) in parts.items()}
    t3 = time.thread_time()
    for side, (image, _) in parts.items():  # images flipped; both copied into new batch rows
      image_row = np.empty((h, w, 3), np.uint8)
      image_row[:] = cv2.flip(image, 1)
      pose_row = np.empty((h, w, pose.POSE_CHANNELS), np.uint8)
      pose_row[:] = maps[side]
    t4 = time.thread_time()
    for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
      totals[key] += dt
  out = {k: 1e3 * v / pairs for k, v in totals.items()}
  out["total"] = sum(out.values())
  out["samples_per_s_one_thread"] = 2e3 / out["total"]
  return out


def _pipeline(config, num_batches: int, read_threads: int) -> dict[str, float]:
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top

  train, _ = pipeline.create_datasets(config, None, eval_split=None, read_threads=read_threads)
  next(train)  # start-up (workers, threads, first fills) is not timed
  pids = _children()
  t0, c0 = time.perf_counter(), _cpu_seconds(pids)
  for _ in range(num_batches):
    batch = next(train)
  t1, c1 = time.perf_counter(), _cpu_seconds(pids)
  samples = num_batches * config.train.batch_size
  assert batch["source_pose"].shape[0] == config.train.batch_size // 2
  if hasattr(train, "close"):
    train.close()
  return {
      "samples": samples,
      "wall_s": t1 - t0,
      "cpu_s": c1 - c0,
      "samples_per_s": samples / (t1 - t0),
      "samples_per_cpu_s": samples / (c1 - c0),
      "processes": 1 + len(pids),
  }


def main(argv):
  del argv
  import cv2  # pylint: disable=g-import-not-at-top

  from configs import default  # pylint: disable=g-import-not-at-top
  from input_pipeline import build  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top

  cv2.setNumThreads(FLAGS.opencv_threads)
  data_dir = FLAGS.data_dir or tempfile.mkdtemp(prefix="pidm_bench_")
  t = time.perf_counter()
  build.build(FLAGS.dataset, data_dir)
  build_s = time.perf_counter() - t

  config = default.get_config()
  name, _, builder_config = FLAGS.dataset.partition("/")
  config.data.dataset, config.data.builder_config = name, builder_config or None
  config.data.data_dir = data_dir
  config.data.worker_count = FLAGS.worker_count
  config.train.batch_size = FLAGS.batch_size
  source = pipeline.data_source(config, "train")
  stored = source[0]["source_image"].shape[:2]
  config.data.image_size = stored

  result = {
      "dataset": FLAGS.dataset,
      "image_size": list(stored),
      "train_pairs": len(source),
      "build_or_load_s": round(build_s, 1),
      "cpu_count": os.cpu_count(),
      "load_average": os.getloadavg(),
      "opencv_threads": FLAGS.opencv_threads,
      "worker_count": FLAGS.worker_count,
      "read_threads": FLAGS.read_threads,
      "augmentation": {"scale_aug": config.data.scale_aug, "flip_prob": config.data.flip_prob},
      "stages_ms_per_pair": _stages(source, stored, FLAGS.stage_pairs),
      "pipeline": _pipeline(config, FLAGS.num_batches, FLAGS.read_threads),
  }
  print(json.dumps(result, indent=2, default=lambda x: round(x, 3) if isinstance(x, float) else x))
  per_core = result["pipeline"]["samples_per_cpu_s"]
  print(
      f"\n{FLAGS.dataset} {stored[0]}x{stored[1]} with augmentation: "
      f"{per_core:.1f} training samples/s per CPU core "
      f"({result['pipeline']['samples_per_s']:.1f} samples/s wall clock, "
      f"{result['pipeline']['processes']} process(es), load average "
      f"{result['load_average'][0]:.1f} on {os.cpu_count()} cores); goal 100"
  )


if __name__ == "__main__":
  app.run(main)
