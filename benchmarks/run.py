"""The benchmark suite: training, sampling and input-pipeline speed on the devices present.

  python benchmarks/run.py --config=configs/small.py [--config.x=y] [--cpu_peak_tflops=F]
      [--skip=train,sample,pipeline] [--output=FILE.json]

Training: the train step of ``pidm_jax.train.Trainer`` on a synthetic batch of
``config.train.batch_size`` samples; lowering and compilation timed apart, then the median of
``--timed_steps`` synchronised steps after ``--warmup_steps``; samples/s; achieved TFLOP/s from the
compiled step's own ``cost_analysis()`` and (paper architecture only) from the model-FLOP counts
in ``peaks.py``; utilisation against the peak of the device; peak device memory.

Sampling: ``pidm_jax.sampling.sample`` (DDIM, ``--sample_steps`` steps, guidance
``--guidance_scale``) with a randomly initialised model in eval mode: images/s at
``--sample_batch`` and latency at ``--latency_batch``; the first call (trace + compile + run) is
reported apart from the median of the later calls.

Pipeline: runs ``benchmarks/pipeline_throughput.py`` in a subprocess and keeps its figures.

Writes a JSON record to ``--output`` (default ``benchmarks/results/<UTC timestamp>.json``) and
appends one row to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Mapping

_HERE = os.path.dirname(os.path.abspath(__file__))
# The repository root on the path, so that `benchmarks.peaks` and the project import when this file
# runs as a script.
sys.path.insert(0, os.path.dirname(_HERE))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from benchmarks import peaks  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
SKIPPABLE = ("train", "sample", "pipeline")

RESULTS_HEADER = (
    "| date (UTC) | device | n | jax / flax | config | image | train batch | step s | samples/s "
    "| lower + compile s | TFLOP/s XLA (util) | TFLOP/s model (util) | peak mem | sample "
    "img/s @B | latency @1 s | sample first call s | pipeline samples/CPU-s | note |"
)


def define_flags() -> None:
  """The command-line flags (defined only when run as a script, so tests can import this)."""
  config_flags.DEFINE_config_file(
      "config", None, "Path to a config file (configs/*.py).", lock_config=True
  )
  flags.mark_flag_as_required("config")
  flags.DEFINE_float("cpu_peak_tflops", None, "peak TFLOP/s of one CPU device (no table entry)")
  flags.DEFINE_list("skip", [], f"parts to skip, of {SKIPPABLE}")
  flags.DEFINE_string("output", None, "JSON record path; default benchmarks/results/<time>.json")
  flags.DEFINE_string("results_md", os.path.join(_HERE, "RESULTS.md"), "table to append to")
  flags.DEFINE_string("note", "", "free text for the table row (machine, load, ...)")
  flags.DEFINE_integer("warmup_steps", 2, "untimed train steps after compilation")
  flags.DEFINE_integer("timed_steps", 10, "timed train steps (median reported)")
  flags.DEFINE_integer("sample_batch", 64, "batch for sampling throughput (0 = skip)")
  flags.DEFINE_integer("latency_batch", 1, "batch for sampling latency (0 = skip)")
  flags.DEFINE_integer("sample_steps", 50, "DDIM steps")
  flags.DEFINE_float("guidance_scale", 2.0, "classifier-free guidance scale")
  flags.DEFINE_integer("sample_repeats", 3, "timed sampling calls after the first (median)")
  flags.DEFINE_float(
      "time_budget_s",
      60.0,
      "stop timed train steps / sampling calls once they have taken this long "
      "(at least one runs; the record lists every time)",
  )
  flags.DEFINE_string(
      "pipeline_args",
      "--num_batches=4",
      "extra arguments for benchmarks/pipeline_throughput.py (space separated)",
  )
  flags.DEFINE_string(
      "pipeline_reported",
      None,
      "with --skip=pipeline: a figure measured elsewhere (samples per CPU-second), "
      "recorded as such in the row",
  )
  flags.DEFINE_integer("seed", 0, "seed of the parameters and synthetic data")
  flags.DEFINE_boolean(
      "fit_batch",
      False,
      "when the train step runs out of device memory, halve config.train.batch_size (keeping "
      "it a multiple of 2 x the mesh's batch shards) and measure again; the record keeps the "
      "batches that did not fit",
  )


# ------------------------------------------------------------------------------------------------
# Helpers (pure, tested)
# ------------------------------------------------------------------------------------------------


def median_seconds(fn, repeats: int, budget_s: float | None = None) -> tuple[float, list[float]]:
  """Runs ``fn`` (which must block until done) up to ``repeats`` times; (median, all times) in s.

  With ``budget_s``, no further run starts once the runs so far have taken that long (at least one
  always runs), so slow devices (a CPU) finish in bounded time with fewer repeats.
  """
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
    if budget_s is not None and sum(times) >= budget_s:
      break
  return statistics.median(times), times


def xla_flops(compiled) -> float | None:
  """FLOPs of a compiled program from XLA's cost analysis (the per-device program), or None."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def memory_analysis(compiled) -> dict[str, int] | None:
  """Argument/output/temporary bytes XLA planned for a compiled program, or None."""
  try:
    mem = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if mem is None:
    return None
  keys = (
      "argument_size_in_bytes",
      "output_size_in_bytes",
      "alias_size_in_bytes",
      "temp_size_in_bytes",
      "generated_code_size_in_bytes",
  )
  return {k: int(getattr(mem, k)) for k in keys if hasattr(mem, k)}


def peak_memory_bytes(devices) -> int | None:
  """The largest ``peak_bytes_in_use`` over the devices; None where the backend has no stats."""
  peaks_seen = []
  for d in devices:
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks_seen.append(int(stats["peak_bytes_in_use"]))
  return max(peaks_seen) if peaks_seen else None


def training_figures(
    *,
    step_s: float,
    batch_size: int,
    num_devices: int,
    xla_flops_per_device: float | None,
    model_flops_per_step: float | None,
    peak_per_device: float | None,
) -> dict[str, Any]:
  """Throughput and utilisation from a measured step time.

  ``xla_flops_per_device`` is the cost analysis of the (SPMD-partitioned, per-device) compiled
  step; ``model_flops_per_step`` counts the whole global batch. Rates are per device, and
  utilisation is the per-device rate over the per-device peak.
  """
  out = {"step_s": step_s, "samples_per_s": batch_size / step_s}
  xla = None if xla_flops_per_device is None else xla_flops_per_device / step_s / 1e12
  model = None
  if model_flops_per_step is not None:
    model = model_flops_per_step / num_devices / step_s / 1e12
  out.update(
      xla_tflops_per_device=xla,
      xla_utilisation=peaks.utilisation(xla, peak_per_device),
      model_tflops_per_device=model,
      model_utilisation=peaks.utilisation(model, peak_per_device),
  )
  return out


def _fmt(value, spec: str = ".3g", suffix: str = "") -> str:
  if value is None:
    return "n/a"
  return f"{value:{spec}}{suffix}"


def _rate_util(rate, util) -> str:
  if rate is None:
    return "n/a"
  return f"{rate:.3g} ({_fmt(None if util is None else 100 * util, '.1f', '%')})"


def _bytes(n) -> str:
  return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def results_row(record: Mapping[str, Any]) -> str:
  """One Markdown table row (matching ``RESULTS_HEADER``) for a JSON record."""
  env, cfg = record["environment"], record["config"]
  tr = record.get("train") or {}
  sa = record.get("sample") or {}
  pi = record.get("pipeline") or {}
  size = cfg.get("data", {}).get("image_size", ["?", "?"])
  compile_s = None
  if "lower_s" in tr and "compile_s" in tr:
    compile_s = f"{tr['lower_s']:.1f} + {tr['compile_s']:.1f}"
  thr = sa.get("throughput") or {}
  lat = sa.get("latency") or {}
  first = [f"{x['first_call_s']:.1f} (B={x['batch']})" for x in (thr, lat) if x]
  cells = [
      record["date"][:16].replace("T", " "),
      env["device"],
      str(env["device_count"]),
      f"{env['jax']} / {env['flax']}",
      record["config_name"] + (" " + " ".join(record["overrides"]) if record["overrides"] else ""),
      f"{size[0]}x{size[1]}",
      str(tr.get("batch_size", "skipped" if "train" in record["skipped"] else "n/a")),
      _fmt(tr.get("step_s")),
      _fmt(tr.get("samples_per_s")),
      compile_s or "n/a",
      _rate_util(tr.get("xla_tflops_per_device"), tr.get("xla_utilisation")),
      _rate_util(tr.get("model_tflops_per_device"), tr.get("model_utilisation")),
      _bytes(tr.get("peak_memory_bytes")),
      (f"{thr['images_per_s']:.3g} @{thr['batch']}" if thr else "n/a")
      + (f", {sa['steps']} steps, s={sa['guidance_scale']:g}" if sa else ""),
      _fmt(lat.get("latency_s")) if lat else "n/a",
      "; ".join(first) or "n/a",
      (
          f"{pi['samples_per_cpu_s']:.1f} @{pi['image_size'][0]}x{pi['image_size'][1]}"
          if pi
          else (
              f"{record['pipeline_reported']} (not re-run)"
              if record.get("pipeline_reported")
              else "n/a"
          )
      ),
      record.get("note", "").replace("|", "/"),
  ]
  return "| " + " | ".join(cells) + " |"


def append_row(path: str, row: str) -> None:
  """Appends ``row`` to the Markdown table at ``path`` (writing the header if the file is new)."""
  new = not os.path.exists(path) or os.path.getsize(path) == 0
  with open(path, "a", encoding="utf-8") as f:
    if new:
      f.write(
          "# Benchmark results\n\nAppended by `benchmarks/run.py`, one row per run; see "
          "README.md in this folder for what each column means.\n\n"
      )
      f.write(RESULTS_HEADER + "\n")
      f.write("|" + "---|" * (RESULTS_HEADER.count("|") - 1) + "\n")
    f.write(row + "\n")


# ------------------------------------------------------------------------------------------------
# The measurements
# ------------------------------------------------------------------------------------------------


def is_out_of_memory(error: BaseException) -> bool:
  """Whether ``error`` is XLA's out-of-memory error (RESOURCE_EXHAUSTED, on any backend)."""
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def smaller_batch(batch_size: int, multiple: int) -> int | None:
  """The next batch to try after ``batch_size`` ran out of memory: half of it, rounded down to a
  multiple of ``multiple`` (2 samples per pair times the mesh's batch shards); None below that."""
  smaller = (batch_size // 2) // multiple * multiple
  return smaller if smaller >= multiple else None


def fitting_batch(measure, batch_size: int, multiple: int, log=print) -> dict:
  """``measure(batch_size)`` at ``batch_size``, then at smaller batches (``smaller_batch``) while
  it raises an out-of-memory error. The result notes the requested batch and those that did not
  fit; other errors, and running out at the smallest batch, propagate."""
  did_not_fit = []
  while True:
    try:
      out = measure(batch_size)
    except Exception as e:  # pylint: disable=broad-except
      if not is_out_of_memory(e):
        raise
      smaller = smaller_batch(batch_size, multiple)
      if smaller is None:
        raise
      log(f"train: batch {batch_size} does not fit in device memory; trying {smaller}")
      did_not_fit.append(batch_size)
      batch_size = smaller
      gc.collect()
      continue
    out["requested_batch_size"] = did_not_fit[0] if did_not_fit else batch_size
    out["batch_sizes_out_of_memory"] = did_not_fit
    return out


def synthetic_batch(batch_size: int, image_size, pose_channels: int, seed: int):
  """A training batch of ``batch_size // 2`` pairs as the input pipeline makes them: uint8 images
  and pose maps (the train step converts them; ``pidm_jax.encoding``)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  if batch_size % 2:
    raise ValueError(f"config.train.batch_size = {batch_size} must be even (2 per pair)")
  rng = np.random.default_rng(seed)
  h, w = image_size
  p = batch_size // 2
  return {
      "source_image": rng.integers(0, 256, (p, h, w, 3), np.uint8),
      "target_image": rng.integers(0, 256, (p, h, w, 3), np.uint8),
      "source_pose": rng.integers(0, 256, (p, h, w, pose_channels), np.uint8),
      "target_pose": rng.integers(0, 256, (p, h, w, pose_channels), np.uint8),
  }


def bench_train(
    config, peak: float | None, warmup: int, timed: int, seed: int, budget_s: float | None = None
) -> dict:
  """Compile time, step time, throughput, FLOPs and memory of the train step."""
  import jax  # pylint: disable=g-import-not-at-top
  from pidm_jax import sharding, train  # pylint: disable=g-import-not-at-top

  mesh = sharding.create_mesh(config.mesh)
  trainer = train.Trainer(config, mesh)
  train.check_batch_size(config.train.batch_size, mesh)
  image_size = tuple(config.data.image_size)
  batch = synthetic_batch(config.train.batch_size, image_size, config.model.pose_channels, seed)
  batch = jax.device_put(batch, trainer.batch_sharding)
  t = time.perf_counter()
  state = jax.block_until_ready(trainer.init_state(seed))
  init_s = time.perf_counter() - t

  t = time.perf_counter()
  lowered = trainer.train_step.lower(state, batch)
  lower_s = time.perf_counter() - t
  print(f"train: init {init_s:.1f} s, lower {lower_s:.1f} s; compiling", flush=True)
  t = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  print(f"train: compile {compile_s:.1f} s", flush=True)

  holder = {"state": state}

  def step():
    holder["state"], metrics = compiled(holder["state"], batch)
    jax.block_until_ready((holder["state"], metrics))

  for _ in range(warmup):
    step()
  step_s, times = median_seconds(step, timed, budget_s)

  devices = mesh.devices.flatten().tolist()
  model_flops = None
  if peaks.is_paper_model(config.model):
    model_flops = peaks.paper_train_flops(config.train.batch_size, image_size)
  flops = xla_flops(compiled)
  out = {
      "batch_size": config.train.batch_size,
      "mesh": dict(mesh.shape),
      "init_s": init_s,
      "lower_s": lower_s,
      "compile_s": compile_s,
      "warmup_steps": warmup,
      "step_times_s": times,
      "xla_flops_per_device": flops,
      "model_flops_per_step": model_flops,
      "model_flops_source": (
          "paper counts (peaks.py), scaled by pixel count"
          if model_flops
          else "n/a: not the paper architecture; use the XLA figure"
      ),
      "memory_analysis": memory_analysis(compiled),
      "peak_memory_bytes": peak_memory_bytes(devices),
  }
  out.update(
      training_figures(
          step_s=step_s,
          batch_size=config.train.batch_size,
          num_devices=len(devices),
          xla_flops_per_device=flops,
          model_flops_per_step=model_flops,
          peak_per_device=peak,
      )
  )
  return out


def bench_sample(
    config,
    batches: Mapping[str, int],
    steps: int,
    guidance_scale: float,
    repeats: int,
    seed: int,
    budget_s: float | None = None,
) -> dict:
  """Images/s and latency of guided DDIM sampling with a random model in eval mode."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from pidm_jax import encoding, sampling, sharding  # pylint: disable=g-import-not-at-top
  from pidm_jax.diffusion import GaussianDiffusion  # pylint: disable=g-import-not-at-top
  from pidm_jax.models import PIDM  # pylint: disable=g-import-not-at-top

  model = PIDM(config.model, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
  model.eval()
  diffusion = GaussianDiffusion.from_config(config.diffusion)
  mesh = sharding.create_mesh(config.mesh)
  shards = sharding.batch_size_divisor(mesh)
  image_size = tuple(config.data.image_size)
  out = {"algorithm": "ddim", "steps": steps, "guidance_scale": guidance_scale}
  options = sampling.SamplerOptions(algorithm="ddim", steps=steps, guidance_scale=guidance_scale)
  for name, b in batches.items():
    if b <= 0:
      continue
    use_mesh = mesh if (shards > 1 and b % shards == 0) else None
    data = synthetic_batch(2 * b, image_size, config.model.pose_channels, seed)
    key = jax.random.key(seed)
    sampler = sampling.get_sampler(diffusion, options, use_mesh)
    inputs = {
        "source": jnp.asarray(encoding.image_to_float(data["source_image"])),
        "pose": jnp.asarray(encoding.pose_to_float(data["target_pose"])),
    }
    t = time.perf_counter()
    run = sampler.compile(model, inputs, key)  # ahead of time: compilation timed apart
    compile_s = time.perf_counter() - t

    def call(run=run, inputs=inputs, key=key):
      jax.block_until_ready(run(model, inputs, key))

    median_s, times = median_seconds(call, repeats, budget_s)
    entry = {
        "batch": b,
        "devices": len(use_mesh.devices.flat) if use_mesh else 1,
        "compile_s": compile_s,
        "first_call_s": compile_s + times[0],
        "median_s": median_s,
        "times_s": times,
        "images_per_s": b / median_s,
        "latency_s": median_s,
    }
    if peaks.is_paper_model(config.model):
      flops = peaks.paper_sample_flops(b, image_size, steps, guidance_scale != 1.0)
      entry["model_tflops"] = flops / median_s / 1e12 / entry["devices"]
    out[name] = entry
  return out


def bench_pipeline(extra_args: str) -> dict:
  """Runs benchmarks/pipeline_throughput.py and returns its JSON figures."""
  cmd = [sys.executable, os.path.join(_HERE, "pipeline_throughput.py")] + extra_args.split()
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
  text = proc.stdout
  result, _ = json.JSONDecoder().raw_decode(text[text.index("{") :])
  figures = result["pipeline"]
  script = os.path.relpath(cmd[1], os.path.dirname(_HERE))
  figures.update(
      dataset=result["dataset"],
      image_size=result["image_size"],
      stages_ms_per_pair=result["stages_ms_per_pair"],
      command=" ".join([script] + cmd[2:]),
  )
  return figures


def environment(cpu_peak: float | None) -> dict:
  """Devices, versions and the peak rate used."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  dev = jax.devices()[0]
  name, peak = peaks.peak_tflops(dev.device_kind, dev.platform, cpu_peak)
  return {
      "device": name,
      "device_kind": dev.device_kind,
      "platform": dev.platform,
      "device_count": jax.device_count(),
      "process_count": jax.process_count(),
      "jax": jax.__version__,
      "jaxlib": getattr(jax.lib, "__version__", None) or __import__("jaxlib").__version__,
      "flax": flax.__version__,
      "python": platform.python_version(),
      "host": platform.machine(),
      "cpu_count": os.cpu_count(),
      "load_average": list(os.getloadavg()),
      "peak_tflops_per_device": peak,
  }


def _overrides() -> list[str]:
  """The ``--config.x=y`` arguments of this run, as typed."""
  return [a for a in sys.argv[1:] if a.startswith("--config.")]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  bad = sorted(set(FLAGS.skip) - set(SKIPPABLE))
  if bad:
    raise app.UsageError(f"--skip: unknown parts {bad}; expected some of {SKIPPABLE}")
  for name in ("timed_steps", "sample_repeats"):
    if FLAGS[name].value < 1:
      raise app.UsageError(f"--{name} must be at least 1, got {FLAGS[name].value}")
  config = FLAGS.config
  now = datetime.datetime.now(datetime.timezone.utc)
  env = environment(FLAGS.cpu_peak_tflops)
  record = {
      "date": now.isoformat(timespec="seconds"),
      "environment": env,
      "config_name": os.path.relpath(config_flags.get_config_filename(FLAGS["config"])),
      "overrides": _overrides(),
      "argv": sys.argv[1:],
      "config": json.loads(config.to_json_best_effort()),
      "skipped": list(FLAGS.skip),
      "note": FLAGS.note,
      "pipeline_reported": FLAGS.pipeline_reported,
  }
  print(
      f"devices: {env['device_count']} x {env['device_kind']} ({env['platform']}), peak "
      f"{_fmt(env['peak_tflops_per_device'])} TFLOP/s per device",
      flush=True,
  )
  if "train" not in FLAGS.skip:

    def measure(batch_size):
      with config.unlocked():
        config.train.batch_size = batch_size
      return bench_train(
          config,
          env["peak_tflops_per_device"],
          FLAGS.warmup_steps,
          FLAGS.timed_steps,
          FLAGS.seed,
          FLAGS.time_budget_s,
      )

    if FLAGS.fit_batch:
      from pidm_jax import sharding  # pylint: disable=g-import-not-at-top

      multiple = 2 * sharding.batch_size_divisor(sharding.create_mesh(config.mesh))
      record["train"] = fitting_batch(measure, config.train.batch_size, multiple)
      record["config"] = json.loads(config.to_json_best_effort())  # the batch that ran
    else:
      record["train"] = measure(config.train.batch_size)
    print(
        "train:",
        json.dumps({k: v for k, v in record["train"].items() if k != "step_times_s"}, default=str),
        flush=True,
    )
  if "sample" not in FLAGS.skip:
    record["sample"] = bench_sample(
        config,
        {"throughput": FLAGS.sample_batch, "latency": FLAGS.latency_batch},
        FLAGS.sample_steps,
        FLAGS.guidance_scale,
        FLAGS.sample_repeats,
        FLAGS.seed,
        FLAGS.time_budget_s,
    )
    print("sample:", json.dumps(record["sample"], default=str), flush=True)
  if "pipeline" not in FLAGS.skip:
    record["pipeline"] = bench_pipeline(FLAGS.pipeline_args)
    print("pipeline:", json.dumps(record["pipeline"], default=str), flush=True)

  output = FLAGS.output or os.path.join(_HERE, "results", now.strftime("%Y%m%dT%H%M%SZ") + ".json")
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2, default=str)
  row = results_row(record)
  append_row(FLAGS.results_md, row)
  print(f"wrote {output}\n{row}")


if __name__ == "__main__":
  define_flags()
  from pidm_jax import console  # pylint: disable=g-import-not-at-top

  console.run(main)
