"""One process of the two-process training test (run by tests/test_multiprocess.py).

Usage: python preemption_worker.py <process_id> <port> <data_dir> <workdir> <phase> <out.json>

Each process has 4 fake CPU devices; together they form an 8-device ('data', 'fsdp') = (4, 2)
mesh and run ``train.train_and_evaluate`` on the tiny config with the real grain pipeline, each
process reading its own shard of the records.

Phases:
* ``first``: an uninterrupted run of 6 steps in <workdir>/full, then a run in <workdir>/split
  where process 1 (only) gets SIGTERM before its step 3, as a preemption notice reaches
  one host. Both processes must stop at the same step, having saved it, and exit with status 0.
* ``resume``: the split run resumed to 6 steps; writes the EMA parameters' SHA-256 of both runs.
"""

import hashlib
import json
import os
import signal
import sys

os.environ["XLA_FLAGS"] = (
    "--xla_force_host_platform_device_count=4"
    " --xla_backend_optimization_level=0"
    " --xla_llvm_disable_expensive_passes=true"
)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # pylint: disable=g-import-not-at-top

process_id, port, data_dir, workdir, phase, out_path = sys.argv[1:7]
process_id = int(process_id)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
)

import numpy as np  # pylint: disable=g-import-not-at-top
from configs import tiny  # pylint: disable=g-import-not-at-top
from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
from pidm_jax import checkpointing, train  # pylint: disable=g-import-not-at-top

KILL_AT = {"value": None}  # the step at which this process signals itself
_post_init = train.Trainer.__post_init__


def _post_init_signalling(self):
  """A Trainer whose step sends this process SIGTERM before step KILL_AT (a preemption notice)."""
  _post_init(self)
  step = self.train_step

  def signalling_step(state, batch):
    if int(jax.device_get(state.step)) + 1 == KILL_AT["value"]:
      os.kill(os.getpid(), signal.SIGTERM)
    return step(state, batch)

  self.train_step = signalling_step


train.Trainer.__post_init__ = _post_init_signalling
_create = pipeline.create_datasets


def _create_datasets(config, batch_sharding, **kwargs):
  kwargs["eval_split"] = None  # no sampling at the end: this test is about training
  return _create(config, batch_sharding, **kwargs)


pipeline.create_datasets = _create_datasets

cfg = tiny.get_config()
cfg.model.dropout = 0.0
cfg.data.builder_config = "mp_tiny"
cfg.data.data_dir = data_dir
cfg.train.batch_size = 16
cfg.train.num_train_steps = 6
cfg.train.log_every = 100
cfg.train.checkpoint_every = 100
cfg.mesh.data, cfg.mesh.fsdp = 4, 2


def checksum(run: str) -> str:
  """SHA-256 of every EMA parameter's bytes (leaves in tree order) of the newest checkpoint."""
  params = checkpointing.restore_ema_params(os.path.join(workdir, run, "checkpoints"), cfg.model)
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
  return digest.hexdigest()


result = {"devices": jax.device_count(), "processes": jax.process_count()}
if phase == "first":
  full = train.train_and_evaluate(cfg, os.path.join(workdir, "full"))
  KILL_AT["value"] = 3 if process_id == 1 else None
  split = train.train_and_evaluate(cfg, os.path.join(workdir, "split"))
  result.update(
      full_steps=full["steps"],
      split_steps=split["steps"],
      preempted=bool(split.get("preempted")),
      saved=checkpointing.latest_step(os.path.join(workdir, "split", "checkpoints")),
  )
else:
  resumed = train.train_and_evaluate(cfg, os.path.join(workdir, "split"))
  result.update(resumed_steps=resumed["steps"], full=checksum("full"), split=checksum("split"))
with open(out_path, "w") as f:
  json.dump(result, f)
jax.distributed.shutdown()
