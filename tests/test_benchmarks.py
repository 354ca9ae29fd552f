"""The benchmark suite's accounting: peak table, model FLOPs, utilisation and the results row.

No model runs here: the figures are computed from given step times.
"""

import importlib.util
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _load(name):
  spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(cmd):
  """A command's exit status and output (a script under test: no exception on failure)."""
  import subprocess  # pylint: disable=import-outside-toplevel

  return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


run = _load("run")
peaks = run.peaks


@pytest.mark.parametrize(
    "kind, platform, name, peak",
    [
        ("NVIDIA H100 80GB HBM3", "gpu", "H100 SXM", 989.0),
        ("NVIDIA H100 PCIe", "gpu", "H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", "gpu", "H100 NVL", 835.0),
        ("NVIDIA H200", "gpu", "H200 SXM", 989.0),
        ("NVIDIA H200 NVL", "gpu", "H200 NVL", 835.0),
        ("NVIDIA B200", "gpu", "B200", 2250.0),
        ("NVIDIA A100-SXM4-40GB", "gpu", "A100", 312.0),
        ("NVIDIA A100-SXM4-80GB", "gpu", "A100", 312.0),
        ("NVIDIA A100-PCIE-40GB", "gpu", "A100", 312.0),
        ("NVIDIA A100 80GB PCIe", "gpu", "A100", 312.0),
        ("TPU v4", "tpu", "TPU v4", 275.0),
        ("TPU v5 lite", "tpu", "TPU v5e", 197.0),
        ("TPU v5", "tpu", "TPU v5p", 459.0),
        ("TPU v5p", "tpu", "TPU v5p", 459.0),
        ("TPU v6 lite", "tpu", "TPU v6e", 918.0),
        ("TPU7x", "tpu", "TPU7x", 2307.0),
        # unknown kinds get no peak, also those that merely contain a known name
        ("NVIDIA GeForce RTX 4090", "gpu", "NVIDIA GeForce RTX 4090", None),
        ("NVIDIA H100 PCIe MIG 1g.10gb", "gpu", "NVIDIA H100 PCIe MIG 1g.10gb", None),
        ("NVIDIA H1000", "gpu", "NVIDIA H1000", None),
        ("TPU v4 lite", "tpu", "TPU v4 lite", None),
    ],
)
def test_peak_table(kind, platform, name, peak):
  assert peaks.peak_tflops(kind, platform) == (name, peak)


def test_cpu_peak_comes_from_the_command_line():
  assert peaks.peak_tflops("cpu", "cpu")[1] is None
  assert peaks.peak_tflops("cpu", "cpu", 1.5)[1] == 1.5


def test_model_flops_of_the_paper_network():
  from configs import default, tiny

  assert peaks.is_paper_model(default.get_config().model)
  assert not peaks.is_paper_model(tiny.get_config().model)
  assert peaks.paper_train_flops(64, (256, 256)) == pytest.approx(64 * 2.1e12)
  assert peaks.paper_train_flops(8, (512, 512)) == pytest.approx(4 * 8 * 2.1e12)
  assert peaks.paper_sample_flops(1, (256, 256), 50, guided=True) == pytest.approx(56e12)
  unguided = peaks.paper_sample_flops(1, (256, 256), 50, guided=False)
  assert unguided == pytest.approx(140e9 + (56e12 - 140e9) / 2)


def test_training_figures_and_results_row(tmp_path):
  # 64 samples of the paper net in 1 s on 8 H100s: 134.4 TFLOP / 8 = 16.8 TFLOP/s per device.
  fig = run.training_figures(
      step_s=1.0,
      batch_size=64,
      num_devices=8,
      xla_flops_per_device=20e12,
      model_flops_per_step=64 * 2.1e12,
      peak_per_device=989.0,
  )
  assert fig["samples_per_s"] == 64
  assert fig["model_tflops_per_device"] == pytest.approx(16.8)
  assert fig["model_utilisation"] == pytest.approx(16.8 / 989)
  assert fig["xla_tflops_per_device"] == pytest.approx(20.0)
  no_peak = run.training_figures(
      step_s=2.0,
      batch_size=4,
      num_devices=1,
      xla_flops_per_device=None,
      model_flops_per_step=None,
      peak_per_device=None,
  )
  assert no_peak["xla_utilisation"] is None and no_peak["model_tflops_per_device"] is None

  record = {
      "date": "2026-01-02T03:04:05+00:00",
      "config_name": "configs/tiny.py",
      "overrides": ["--config.train.batch_size=4"],
      "skipped": ["pipeline"],
      "note": "a|b",
      "pipeline_reported": "60",
      "config": {"data": {"image_size": [32, 32]}},
      "environment": {"device": "H100", "device_count": 8, "jax": "0.1", "flax": "0.2"},
      "train": dict(fig, batch_size=64, lower_s=1.0, compile_s=2.0, peak_memory_bytes=2**31),
      "sample": {
          "steps": 50,
          "guidance_scale": 2.0,
          "throughput": {"batch": 64, "images_per_s": 5.0, "first_call_s": 30.0},
          "latency": {"batch": 1, "latency_s": 1.5, "first_call_s": 20.0},
      },
  }
  row = run.results_row(record)
  cells = [c.strip() for c in row.strip("|").split("|")]
  header = [c.strip() for c in run.RESULTS_HEADER.strip("|").split("|")]
  assert len(cells) == len(header)
  assert cells[:7] == [
      "2026-01-02 03:04",
      "H100",
      "8",
      "0.1 / 0.2",
      "configs/tiny.py --config.train.batch_size=4",
      "32x32",
      "64",
  ]
  assert cells[9] == "1.0 + 2.0"
  assert cells[11] == "16.8 (1.7%)"
  assert cells[12] == "2.00 GiB"
  assert cells[16] == "60 (not re-run)"
  assert cells[17] == "a/b"  # a '|' in the note would break the table

  measured = dict(record, pipeline={"samples_per_cpu_s": 61.23, "image_size": [256, 256]})
  assert run.results_row(measured).split(" | ")[16] == "61.2 @256x256"

  path = tmp_path / "RESULTS.md"
  run.append_row(str(path), row)
  run.append_row(str(path), row)
  lines = path.read_text().splitlines()
  assert lines.count(run.RESULTS_HEADER) == 1
  assert lines[-2:] == [row, row]


def test_median_seconds_stops_at_the_time_budget(monkeypatch):
  clock = {"now": 0.0}
  monkeypatch.setattr(run.time, "perf_counter", lambda: clock["now"])
  calls = []

  def call(duration):
    def fn():
      calls.append(duration)
      clock["now"] += duration

    return fn

  median, times = run.median_seconds(call(2.0), repeats=10)  # no budget: every repeat
  assert times == [2.0] * 10 and median == 2.0
  calls.clear()
  median, times = run.median_seconds(call(25.0), repeats=3, budget_s=60.0)
  assert times == [25.0, 25.0, 25.0]  # 50 s < 60 s after two runs, so the third runs
  calls.clear()
  median, times = run.median_seconds(call(70.0), repeats=3, budget_s=60.0)
  assert times == [70.0] and len(calls) == 1  # one run always happens, then the budget stops it


def test_batch_halves_until_the_train_step_fits():
  oom = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 81.2GiB.")
  assert run.is_out_of_memory(oom)
  assert run.is_out_of_memory(RuntimeError("CUDA_ERROR_OUT_OF_MEMORY: out of memory"))
  assert not run.is_out_of_memory(ValueError("shapes (2, 3) and (4,) do not match"))
  assert run.smaller_batch(64, 2) == 32
  assert run.smaller_batch(48, 16) == 16  # 24 rounded down to the 16 the mesh needs
  assert run.smaller_batch(16, 16) is None

  tried, logged = [], []

  def measure(batch):
    tried.append(batch)
    if batch > 16:
      raise oom
    return {"batch_size": batch}

  out = run.fitting_batch(measure, 64, 4, log=logged.append)
  assert tried == [64, 32, 16]
  assert out == {
      "batch_size": 16,
      "requested_batch_size": 64,
      "batch_sizes_out_of_memory": [64, 32],
  }
  assert logged == [
      "train: batch 64 does not fit in device memory; trying 32",
      "train: batch 32 does not fit in device memory; trying 16",
  ]
  assert run.fitting_batch(lambda b: {"batch_size": b}, 8, 2)["batch_sizes_out_of_memory"] == []

  with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):  # even the smallest does not fit
    run.fitting_batch(lambda b: (_ for _ in ()).throw(oom), 8, 4)
  tried.clear()

  def broken(batch):
    tried.append(batch)
    raise ValueError("a bug, not memory")

  with pytest.raises(ValueError, match="a bug"):  # other errors are not retried
    run.fitting_batch(broken, 64, 2)
  assert tried == [64]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch=sixty"], "--batch must be a whole number, got 'sixty'"),
        (["--budget_s=-5"], "--budget_s must be a whole number"),
        (["--config=configs/nothing.py"], "no config file 'configs/nothing.py'"),
        (["--frobnicate"], "unknown argument '--frobnicate'"),
        (["--wheels=/nonexistent-wheels"], "holds no .whl files"),
    ],
)
def test_accelerator_script_refuses_bad_arguments(args, message, tmp_path):
  script = os.path.join(BENCH, "accelerator.sh")
  result = _run(["bash", script, f"--out={tmp_path}/out", *args])
  assert result.returncode == 2, result.stdout + result.stderr
  assert message in result.stderr
  assert "devices:" not in result.stdout  # refused before Python or JAX ran


def test_accelerator_script_help_lists_its_options():
  import subprocess  # pylint: disable=import-outside-toplevel

  script = os.path.join(BENCH, "accelerator.sh")
  out = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, check=True)
  for option in ("--config=", "--batch=", "--budget_s=", "--wheels=", "--quick", "--out="):
    assert option in out.stdout


start_up = _load("start_up")


def test_start_up_lines_name_cold_and_warm_runs_and_the_cache_counts():
  record = dict(
      import_s=1.0, trainer_s=2.0, init_state_s=3.0, lower_s=4.0, compile_s=5.0, total_s=15.0
  )
  cold = start_up.summary_line("", 0, record | {"cache_hits": 0, "cache_misses": 53})
  warm = start_up.summary_line("--xla_x=1", 1, record | {"cache_hits": 53, "cache_misses": 0})
  assert cold == (
      "[default XLA flags] run 1 (cold): import 1.0, trainer 2.0, init_state 3.0, lower 4.0, "
      "compile 5.0; total 15.0 s; cache 0 hits, 53 misses"
  )
  assert warm.startswith("[--xla_x=1] run 2 (warm): ")
  assert warm.endswith("cache 53 hits, 0 misses")


def test_start_up_run_that_fails_says_so_with_its_output(monkeypatch, tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel

  seen = {}

  def failing(cmd, env, **_):
    seen.update(cmd=cmd, env=env)
    return subprocess.CompletedProcess(cmd, 1, "", "line 1\nValueError: no such config\n")

  monkeypatch.setattr(start_up.subprocess, "run", failing)
  with pytest.raises(RuntimeError, match=r"failed \(exit 1\):\nline 1\nValueError: no such"):
    start_up._child("configs/tiny.py", "--xla_y=2", str(tmp_path / "c"), str(tmp_path / "o.json"))
  # each run gets the variant's XLA flags and its own cache folder, and measures in the child
  assert seen["env"]["XLA_FLAGS"] == "--xla_y=2"
  assert seen["env"]["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "c")
  assert f"--child_output={tmp_path / 'o.json'}" in seen["cmd"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--runs=0"], "--runs must be at least 1, got 0"),
        (["--cache_dir=/tmp/x", "--xla_flags=", "--xla_flags=--a"], "holds one variant"),
    ],
)
def test_start_up_refuses_bad_arguments(args, message):
  tiny = os.path.join(os.path.dirname(BENCH), "configs", "tiny.py")
  result = _run([sys.executable, os.path.join(BENCH, "start_up.py"), f"--config={tiny}", *args])
  assert result.returncode == 1, result.stdout + result.stderr
  assert message in result.stderr
  assert "run 1" not in result.stdout  # refused before any run
