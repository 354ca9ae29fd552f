"""One process of the two-process training test (run by tests/test_multiprocess.py).

Usage: python train_worker.py <process_id> <port> <output.json>. Each process has 4 fake CPU
devices; together they form an 8-device ('data', 'fsdp') = (4, 2) mesh and run 2 train steps on
per-process halves of the same global batch.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # pylint: disable=g-import-not-at-top

process_id, port, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=process_id)

import numpy as np  # pylint: disable=g-import-not-at-top
from configs import tiny  # pylint: disable=g-import-not-at-top
from pidm_jax import sharding, train  # pylint: disable=g-import-not-at-top

cfg = tiny.get_config()
cfg.model.dropout = 0.0
cfg.train.batch_size = 16
cfg.mesh.data, cfg.mesh.fsdp = 4, 2
mesh = sharding.create_mesh(cfg.mesh)
trainer = train.Trainer(cfg, mesh)
state = trainer.init_state(0)
rng = np.random.default_rng(0)
full = {k: rng.uniform(0, 1, (8, 32, 32, 3 if "image" in k else 20)).astype(np.float32)
        for k in train.PAIR_KEYS}
# Each process supplies the rows its devices hold (process p: rows 4p .. 4p+3).
local = {k: v[4 * process_id:4 * process_id + 4] for k, v in full.items()}
batch = {k: jax.make_array_from_process_local_data(trainer.batch_sharding, v, (8,) + v.shape[1:])
         for k, v in local.items()}
losses = []
for _ in range(2):
  state, metrics = trainer.train_step(state, batch)
  losses.append(float(metrics["loss"]))
from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
params = multihost_utils.process_allgather(state.params, tiled=True)
checksum = float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(params)))
with open(out_path, "w") as f:
  json.dump({"losses": losses, "checksum": checksum, "devices": jax.device_count(),
             "processes": jax.process_count()}, f)
jax.distributed.shutdown()
