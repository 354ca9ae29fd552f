"""The short fault injection: train.py killed with SIGTERM during an asynchronous save and with
SIGKILL between steps, resumed each time, ends bit-identical to an uninterrupted run (the full
run, ``python benchmarks/fault_injection.py``, kills it 8 times over 300 steps)."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# loaded from its file (benchmarks/ is a folder of scripts, not a package)
_spec = importlib.util.spec_from_file_location(
    "bench_fault_injection", os.path.join(ROOT, "benchmarks", "fault_injection.py")
)
fault_injection = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fault_injection)


def test_killed_and_resumed_run_ends_bit_identical(tmp_path):
  result = fault_injection.run(
      str(tmp_path), steps=20, kills=2, checkpoint_every=4, log=lambda _: None, timeout=500
  )
  assert result["kills"] == 2, result
  first, second = result["events"]
  assert (first["signal"], first["moment"]) == ("SIGTERM", "during an asynchronous save"), first
  assert first["exit_status"] == 0, first  # a preemption notice: saved, exited cleanly
  assert second["signal"] == "SIGKILL" and second["exit_status"] == -9, second
  assert second["resumed_from"].startswith("resumed from step"), second
  assert result["process_starts"] == 3
  assert result["final_state_identical"], (result["reference_sha256"], result["faulted_sha256"])
  assert result["summary"] == "2 kills survived, final state identical"
