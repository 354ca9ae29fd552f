"""Two local processes (jax.distributed on 127.0.0.1, CPU collectives) train together and agree."""

import json
import os
import socket
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "multiprocess", "train_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_and_agree(tmp_path):
  port = str(_free_port())
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  outs = [tmp_path / f"p{i}.json" for i in range(2)]
  procs = [subprocess.Popen([sys.executable, WORKER, str(i), port, str(outs[i])], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=900)[0].decode(errors="replace"))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("the two training processes did not finish in 15 minutes")
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  results = [json.loads(o.read_text()) for o in outs]
  assert all(r["devices"] == 8 and r["processes"] == 2 for r in results)
  assert results[0]["losses"] == results[1]["losses"]
  assert results[0]["checksum"] == results[1]["checksum"]
  assert results[0]["losses"][1] != results[0]["losses"][0]
