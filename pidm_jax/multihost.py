"""What several processes (hosts) of one run agree on: gathered batches, shared flags, stop requests.

Every function also works in a single-process run, where it does no communication.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


def gather(images: jax.Array) -> np.ndarray:
  """The full batch as NumPy on every process (process_allgather on multi-host runs)."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(images, tiled=True))
  return np.asarray(images)


def to_global(tree, shardings):
  """Places arrays that every process holds whole and equal (e.g. parameters drawn from one
  seed) with ``shardings``, a matching tree of shardings that may span every process's devices.

  One process: ``jax.device_put``. Several: each process fills its own devices' shards from its
  copy (``jax.make_array_from_callback``), so no data crosses hosts.
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def place(x, sharding):
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(place, tree, shardings)


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier ``name``."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def from_process_zero(flags: np.ndarray) -> np.ndarray:
  """Process 0's copy of boolean ``flags`` on every process (e.g. files checked on process 0)."""
  if jax.process_count() == 1:
    return flags
  return np.asarray(multihost_utils.broadcast_one_to_all(flags)).astype(bool)


class Preemption:
  """Stop requests: a preemption notice on any host, SIGTERM, SIGINT (Ctrl-C).

  In a run with JAX's distributed runtime (``jax.distributed.initialize``) and its preemption
  service (on by default), SIGTERM belongs to that runtime: it forwards the notice to every
  process, and ``stop_now(step)``, called at every step on every process, turns true on all of
  them at the same step (``multihost_utils.reached_preemption_sync_point``), so all save that
  step and exit. No Python SIGTERM handler is installed then (it would replace the runtime's).
  Without the runtime (one process), SIGTERM and SIGINT set a flag read at the next step. SIGINT
  in a multi-process run is shared at logging steps (a collective, see ``any_process``).
  Restores the handlers it replaced on exit.
  """

  def __init__(self):
    self.requested = False
    self._old = {}
    self.synced = preemption_service_active()

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      signals = (signal.SIGINT,) if self.synced else (signal.SIGTERM, signal.SIGINT)
      for sig in signals:
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("received signal %d: saving a checkpoint and stopping", signum)
    self.requested = True

  def stop_now(self, step: int, log_step: bool) -> bool:
    """Whether to save ``step`` and stop; the same answer on every process."""
    if self.synced:
      if multihost_utils.reached_preemption_sync_point(step):
        logging.warning("preemption notice: every process saves step %d and stops", step)
        return True
    if jax.process_count() == 1:
      return self.requested
    return log_step and any_process(self.requested)

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


def preemption_service_active() -> bool:
  """Whether JAX's distributed runtime with its preemption sync manager is running here."""
  # JAX keeps this state in a private module (no public accessor as of jax 0.10/0.11).
  from jax._src import distributed  # pylint: disable=g-import-not-at-top

  state = distributed.global_state
  if getattr(state, "client", None) is None:
    return False
  if getattr(state, "preemption_sync_manager", None) is None:
    logging.warning(
        "jax.distributed runs without its preemption service "
        "(jax_enable_preemption_service is off): SIGTERM is read by this program "
        "and shared between processes at logging steps only"
    )
    return False
  return True


def any_process(flag: bool) -> bool:
  """True if ``flag`` is set on any process (a collective; only called every few steps)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))
