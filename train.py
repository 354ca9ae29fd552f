"""Trains PIDM: ``python train.py --config=configs/small.py --workdir=runs/demo [--config.x=y]``.

Resumes automatically from the newest checkpoint in ``--workdir``. Multi-process (TPU pod, GPU
cluster): run the same command on every host; ``jax.distributed.initialize()`` is called when the
environment describes more than one process.
"""

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and sample grids.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top
  from pidm_jax import train  # pylint: disable=g-import-not-at-top

  if any(k in os.environ for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS",
                                   "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")):
    jax.distributed.initialize()
  jax.config.update("jax_compilation_cache_dir",
                    os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                   os.path.join(FLAGS.workdir, "jax_cache")))
  logging.info("JAX %s: %d processes, %d devices (%s)", jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].device_kind)
  summary = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if jax.process_index() == 0:
    print(json.dumps(summary, indent=2, sort_keys=True))
    if "ssim" in summary:
      print(f"test SSIM of the samples: {summary['ssim']:.4f}   with another person's source: "
            f"{summary['ssim_swapped_source']:.4f}   copying the source image: "
            f"{summary['ssim_copy_source']:.4f}")
      print(f"colour error in the target's body region (CIELAB Delta E): "
            f"{summary['body_colour_error']:.2f} from the own source, "
            f"{summary['body_colour_error_swapped_source']:.2f} from another person's source")
      print(f"grids: {summary['grid']} and {summary['swap_grid']}; figures in "
            f"{os.path.join(FLAGS.workdir, 'summary.json')}")


if __name__ == "__main__":
  app.run(main)
