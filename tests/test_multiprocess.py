"""Two local processes (jax.distributed on 127.0.0.1, CPU collectives) train together; a
preemption notice (SIGTERM) reaching one of them stops both at the same step, saved, with status
0; the resumed pair ends where an uninterrupted run ends."""

import json
import os
import socket
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "multiprocess", "preemption_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_pair(tmp_path, phase: str) -> list[dict]:
  port = str(_free_port())
  env = dict(
      os.environ,
      PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
      JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jit_cache"),
  )  # the phases share programs
  env.pop("XLA_FLAGS", None)
  outs = [tmp_path / f"{phase}{i}.json" for i in range(2)]
  procs = [
      subprocess.Popen(
          [
              sys.executable,
              WORKER,
              str(i),
              port,
              str(tmp_path / "tfds"),
              str(tmp_path / "runs"),
              phase,
              str(outs[i]),
          ],
          env=env,
          cwd=ROOT,
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
      )
      for i in range(2)
  ]
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=900)[0].decode(errors="replace"))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f"the two training processes ({phase}) did not finish in 15 minutes")
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i} ({phase}) exited with {p.returncode}:\n{log[-3000:]}"
  return [json.loads(o.read_text()) for o in outs]


def test_preemption_of_one_process_stops_both_at_one_step_and_resumes_exactly(tmp_path):
  from input_pipeline.synthetic_people import SyntheticPeople, SyntheticPeopleConfig

  config = SyntheticPeopleConfig(
      name="mp_tiny", resolution=32, train_identities=4, test_identities=1, poses_per_identity=3
  )
  SyntheticPeople(config=config, data_dir=str(tmp_path / "tfds")).download_and_prepare()

  first = _run_pair(tmp_path, "first")
  assert all(r["devices"] == 8 and r["processes"] == 2 for r in first)
  assert [r["full_steps"] for r in first] == [6, 6]
  # SIGTERM reached process 1 before step 3: both processes
  # stopped at the same later step, saved it, and exited with status 0.
  assert all(r["preempted"] for r in first)
  stopped = first[0]["split_steps"]
  assert 2 <= stopped < 6 and first[1]["split_steps"] == stopped
  assert first[0]["saved"] == first[1]["saved"] == stopped

  second = _run_pair(tmp_path, "resume")
  assert [r["resumed_steps"] for r in second] == [6, 6]
  # Bit-identical to the uninterrupted run, on both processes.
  assert second[0]["split"] == second[0]["full"] == second[1]["split"] == second[1]["full"]
