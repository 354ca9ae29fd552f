"""Fault injection: trains the tiny config while killing it, resumes each time, compares the end.

  python benchmarks/fault_injection.py [--steps=300] [--kills=8] [--seed=0] [--workdir=DIR]

An uninterrupted reference run of ``--steps`` steps, then the same run killed ``--kills`` times
with SIGTERM (a preemption notice: the run saves and exits) or SIGKILL (no warning at all), at
random moments: during start-up, between steps, and the moment an asynchronous save is in flight
(an ``*.orbax-checkpoint-tmp*`` directory in the checkpoints). After each kill the same command is
started again and resumes from the newest readable checkpoint. The goal: every kill survived and
the final EMA parameters and train state bit-identical (SHA-256) to the reference, since the data
iterator's state and the RNG are checkpointed, so a resumed run replays exactly.

Writes ``benchmarks/results/fault_injection.json`` (``--out``) with each kill and the verdict.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def _command(workdir: str, steps: int, checkpoint_every: int, data_dir: str) -> list[str]:
  return [
      sys.executable,
      os.path.join(ROOT, "train.py"),
      f"--config={os.path.join(ROOT, 'configs', 'tiny.py')}",
      f"--workdir={workdir}",
      f"--config.train.num_train_steps={steps}",
      f"--config.train.checkpoint_every={checkpoint_every}",
      "--config.train.log_every=5",
      "--config.train.sample_every=0",
      f"--config.data.data_dir={data_dir}",
  ]


class _Run:
  """One train.py process; its output lines are collected by a thread."""

  def __init__(self, command, env, log_path):
    self.log = open(log_path, "a")  # pylint: disable=consider-using-with
    self.process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    self.lines: list[str] = []
    self.started = time.monotonic()
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.process.stdout:
      self.lines.append(line)
      self.log.write(line)

  def last_step(self) -> int | None:
    """The newest step of the progress lines (``step  25/300 loss ...``)."""
    for line in reversed(self.lines):
      if line.startswith("step "):
        return int(line.split()[1].split("/")[0])
    return None

  def stepping(self) -> bool:
    return any(line.startswith("step ") for line in self.lines)

  def wait(self, timeout=None) -> int:
    code = self.process.wait(timeout)
    self._reader.join(10)
    self.log.flush()
    return code


def _newest_step(checkpoints: str) -> int:
  try:
    return max((int(n) for n in os.listdir(checkpoints) if n.isdigit()), default=0)
  except FileNotFoundError:
    return 0


def _saving(checkpoints: str) -> bool:
  try:
    return any("orbax-checkpoint-tmp" in name for name in os.listdir(checkpoints))
  except FileNotFoundError:
    return False


def _final_hashes(checkpoints: str, step: int) -> dict:
  """SHA-256 of the EMA parameters and of the train state (params, Optax state, step, RNG) of
  ``step``, over every array's bytes in path order."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from pidm_jax import checkpointing  # pylint: disable=g-import-not-at-top

  mngr = checkpointing.create_manager(checkpoints, async_save=False)
  try:
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(
            **{
                checkpointing.EMA_PARAMS: ocp.args.StandardRestore(),
                checkpointing.TRAIN_STATE: ocp.args.StandardRestore(),
            }
        ),
    )
  finally:
    mngr.close()
  hashes = {}
  for item in (checkpointing.EMA_PARAMS, checkpointing.TRAIN_STATE):
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(restored[item])[0]:
      digest.update(jax.tree_util.keystr(path).encode())
      value = leaf
      if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        value = jax.random.key_data(leaf)
      digest.update(np.ascontiguousarray(np.asarray(value)).tobytes())
    hashes[item] = digest.hexdigest()
  return hashes


def run(
    workdir: str,
    steps: int = 300,
    kills: int = 8,
    seed: int = 0,
    checkpoint_every: int = 10,
    log=print,
    timeout: float = 1800,
) -> dict:
  """Runs the reference and the killed run under ``workdir``; returns the figures."""
  rng = random.Random(seed)
  os.makedirs(workdir, exist_ok=True)
  data_dir = os.path.join(workdir, "data")
  env = dict(
      os.environ,
      JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
      JAX_COMPILATION_CACHE_DIR=os.path.join(workdir, "jax_cache"),
      PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  # one CPU device per run, as a user's: a forced host device count (the test suite sets one)
  # would change the mesh, and the tiny batch may not split over it
  flags = [
      f
      for f in env.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count")
  ]
  env["XLA_FLAGS"] = " ".join(flags)
  log_path = os.path.join(workdir, "train_output.log")
  deadline = time.monotonic() + timeout

  reference_dir = os.path.join(workdir, "reference")
  t0 = time.monotonic()
  reference = _Run(_command(reference_dir, steps, checkpoint_every, data_dir), env, log_path)
  if reference.wait(max(1, deadline - time.monotonic())) != 0:
    raise RuntimeError(
        f"the reference run failed; see {log_path}:\n" + "".join(reference.lines[-20:])
    )
  reference_seconds = time.monotonic() - t0
  log(f"reference: {steps} steps in {reference_seconds:.0f} s")

  faulted_dir = os.path.join(workdir, "faulted")
  checkpoints = os.path.join(faulted_dir, "checkpoints")
  command = _command(faulted_dir, steps, checkpoint_every, data_dir)
  moments = ["during an asynchronous save", "between steps", "during start-up"]
  events, starts = [], 0
  while True:
    if time.monotonic() > deadline:
      raise RuntimeError(f"fault injection ran past {timeout} s")
    had_checkpoint = os.path.isdir(checkpoints) and any(
        n.isdigit() for n in os.listdir(checkpoints)
    )
    proc = _Run(command, env, log_path)
    starts += 1
    if len(events) >= kills:  # the last start runs to the end
      code = proc.wait(max(1, deadline - time.monotonic()))
      if code != 0:
        raise RuntimeError(
            f"the final resumed run failed (status {code}); see {log_path}:\n"
            + "".join(proc.lines[-20:])
        )
      break
    sig = signal.SIGTERM if len(events) % 2 == 0 else signal.SIGKILL
    moment = (
        moments[len(events) % len(moments)] if len(events) < len(moments) else rng.choice(moments)
    )
    delay = rng.uniform(0.0, 4.0)  # start-up: seconds after launch
    # between steps / during a save: at a random step of what is left, spreading the kills
    # over the whole run
    done = _newest_step(checkpoints)
    target = rng.randint(done + 1, max(done + 1, steps - 2 * checkpoint_every))
    fired = None
    while proc.process.poll() is None and time.monotonic() < deadline:
      if moment == "during start-up" and time.monotonic() - proc.started >= delay:
        fired = "before the first step" if not proc.stepping() else "between steps"
      elif moment == "between steps" and (proc.last_step() or 0) >= target:
        fired = "between steps"
      elif (
          moment == "during an asynchronous save"
          and (proc.last_step() or 0) >= target
          and _saving(checkpoints)
      ):
        fired = "during an asynchronous save"
      if fired:
        proc.process.send_signal(sig)
        break
      time.sleep(0.01)
    code = proc.wait(max(1, deadline - time.monotonic()))
    if fired is None:  # it finished before the moment came: nothing was killed
      if code != 0:
        raise RuntimeError(
            f"run failed without a kill (status {code}); see {log_path}:\n"
            + "".join(proc.lines[-20:])
        )
      log(f"the run finished before a kill {moment}; {len(events)} kills in all")
      break
    # "resumed from step N of <dir>" -> "resumed from step N" (no machine paths in results)
    resumed = [
        " ".join(line.split()[:4]) for line in proc.lines if line.startswith("resumed from step")
    ]
    last_step = proc.last_step()
    events.append(
        {
            "signal": sig.name,
            "moment": fired,
            "exit_status": code,
            "resumed_from": resumed[0]
            if resumed
            else ("killed before it resumed" if had_checkpoint else "started from scratch"),
            "last_logged_step": last_step,
            "unreadable_moved_aside": sorted(
                n for n in os.listdir(checkpoints) if n.startswith("unreadable_step_")
            )
            if os.path.isdir(checkpoints)
            else [],
        }
    )
    log(
        f"kill {len(events)}: {sig.name} {fired} (exit status {code}; "
        f"{events[-1]['resumed_from']}, last logged step {last_step})"
    )

  want = _final_hashes(os.path.join(reference_dir, "checkpoints"), steps)
  got = _final_hashes(checkpoints, steps)
  identical = want == got
  result = {
      "steps": steps,
      "checkpoint_every": checkpoint_every,
      "seed": seed,
      "kills": len(events),
      "kills_survived": len(events) if identical else None,
      "process_starts": starts,
      "events": events,
      "reference_sha256": want,
      "faulted_sha256": got,
      "final_state_identical": identical,
      "reference_seconds": round(reference_seconds, 1),
      "summary": (
          f"{len(events)} kills survived, final state identical"
          if identical
          else f"{len(events)} kills, final state DIFFERS from the uninterrupted run"
      ),
  }
  log(result["summary"])
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--kills", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--checkpoint_every", type=int, default=10)
  parser.add_argument("--workdir", default=None, help="default: a fresh temporary directory")
  parser.add_argument(
      "--out", default=os.path.join(ROOT, "benchmarks", "results", "fault_injection.json")
  )
  args = parser.parse_args(argv)
  import tempfile  # pylint: disable=g-import-not-at-top

  workdir = args.workdir or tempfile.mkdtemp(prefix="fault_injection_")
  result = run(workdir, args.steps, args.kills, args.seed, args.checkpoint_every)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.out}")
  return 0 if result["final_state_identical"] else 1


if __name__ == "__main__":
  sys.exit(main())
