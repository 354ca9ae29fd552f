"""Time to the first training step, cold and warm: the persistent compilation cache's effect.

  python benchmarks/start_up.py --config=configs/default.py [--config.x=y] [--runs=2]
      [--xla_flags=FLAGS ...] [--cache_dir=DIR] [--output=FILE.json]

Each run is a fresh Python process (what a user restarting ``train.py`` gets). It times, apart:
the JAX import, ``Trainer(config, mesh)`` (the model's shapes and shardings), ``init_state`` (the
parameters drawn op by op and placed), and the train step's lowering and compilation on a
synthetic batch of ``config.train.batch_size`` samples. It counts JAX's persistent-cache hits and
misses, so a warm run shows that it was served from the cache.

The first run of each variant starts from an empty cache unless ``--cache_dir`` names a filled
one; the later runs reuse it. A run is called warm when every program came from the cache. A variant is one value of ``--xla_flags`` (given
several times to compare XLA options side by side; each variant has its own cache, as XLA's
options are part of the cache key). Prints one line per run and writes the JSON record to
``--output``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from benchmarks import run as bench_run  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
PARTS = ("import_s", "trainer_s", "init_state_s", "lower_s", "compile_s")


def define_flags() -> None:
  """The command-line flags (defined only when run as a script, so tests can import this)."""
  config_flags.DEFINE_config_file(
      "config", None, "Path to a config file (configs/*.py).", lock_config=True
  )
  flags.mark_flag_as_required("config")
  flags.DEFINE_integer("runs", 2, "runs per variant: the first cold, the others warm")
  flags.DEFINE_multi_string(
      "xla_flags",
      None,
      "XLA_FLAGS of one variant (repeat the flag to compare variants; default: the environment's)",
  )
  flags.DEFINE_string(
      "cache_dir", None, "compilation cache folder (default: a new temporary one per variant)"
  )
  flags.DEFINE_string("output", None, "JSON record path (default: print only)")
  flags.DEFINE_string("child_output", None, "(internal) measure once in this process, write here")


def measure_once(config) -> dict:
  """One start-up in this process: the seconds of each part and the cache's hits and misses."""
  t0 = time.perf_counter()
  import jax  # pylint: disable=g-import-not-at-top

  events = {"hits": 0, "misses": 0}

  def listen(event, **_):
    if event.endswith("/cache_hits"):
      events["hits"] += 1
    elif event.endswith("/cache_misses"):
      events["misses"] += 1

  jax.monitoring.register_event_listener(listen)
  from pidm_jax import console  # pylint: disable=g-import-not-at-top
  from pidm_jax import sharding  # pylint: disable=g-import-not-at-top
  from pidm_jax import train as train_lib  # pylint: disable=g-import-not-at-top

  cache = console.use_compilation_cache()
  out = {"import_s": time.perf_counter() - t0, "cache_dir": cache}
  t = time.perf_counter()
  trainer = train_lib.Trainer(config, sharding.create_mesh(config.mesh))
  out["trainer_s"] = time.perf_counter() - t
  t = time.perf_counter()
  state = jax.block_until_ready(trainer.init_state(config.seed))
  out["init_state_s"] = time.perf_counter() - t
  batch = jax.device_put(
      bench_run.synthetic_batch(
          config.train.batch_size,
          tuple(config.data.image_size),
          config.model.pose_channels,
          config.seed,
      ),
      trainer.batch_sharding,
  )
  t = time.perf_counter()
  lowered = trainer.train_step.lower(state, batch)
  out["lower_s"] = time.perf_counter() - t
  t = time.perf_counter()
  lowered.compile()
  out["compile_s"] = time.perf_counter() - t
  out["total_s"] = sum(out[k] for k in PARTS)
  out["cache_hits"], out["cache_misses"] = events["hits"], events["misses"]
  return out


def summary_line(variant: str, index: int, record: dict) -> str:
  """One run as a line: warm (every program from the cache) or cold, each part's seconds, the
  cache counts."""
  kind = "warm" if record["cache_misses"] == 0 else "cold"
  parts = ", ".join(f"{k[:-2]} {record[k]:.1f}" for k in PARTS)
  return (
      f"[{variant or 'default XLA flags'}] run {index + 1} ({kind}): {parts}; total "
      f"{record['total_s']:.1f} s; cache {record['cache_hits']} hits, "
      f"{record['cache_misses']} misses"
  )


def _child(config_path: str, variant: str, cache_dir: str, out_path: str) -> dict:
  env = dict(os.environ, XLA_FLAGS=variant, JAX_COMPILATION_CACHE_DIR=cache_dir)
  cmd = [sys.executable, os.path.abspath(__file__), f"--config={config_path}"]
  cmd += bench_run._overrides() + [f"--child_output={out_path}"]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if proc.returncode:
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
    raise RuntimeError(f"a start-up run failed (exit {proc.returncode}):\n{tail}")
  with open(out_path) as f:
    return json.load(f)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.child_output:
    record = measure_once(FLAGS.config)
    with open(FLAGS.child_output, "w") as f:
      json.dump(record, f)
    return
  if FLAGS.runs < 1:
    raise app.UsageError(f"--runs must be at least 1, got {FLAGS.runs}")
  variants = FLAGS.xla_flags or [os.environ.get("XLA_FLAGS", "")]
  if FLAGS.cache_dir and len(variants) > 1:
    raise app.UsageError("--cache_dir holds one variant's programs; give one --xla_flags with it")
  config_path = config_flags.get_config_filename(FLAGS["config"])
  record = {"config": config_path, "overrides": bench_run._overrides(), "variants": {}}
  scratch = tempfile.mkdtemp(prefix="pidm_start_up_")
  try:
    for i, variant in enumerate(variants):
      cache_dir = FLAGS.cache_dir or os.path.join(scratch, f"cache{i}")
      runs = []
      for r in range(FLAGS.runs):
        runs.append(_child(config_path, variant, cache_dir, os.path.join(scratch, f"{i}_{r}.json")))
        print(summary_line(variant, r, runs[-1]), flush=True)
      record["variants"][variant] = runs
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(record, f, indent=1)
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
