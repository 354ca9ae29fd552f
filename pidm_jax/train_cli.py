"""Trains PIDM: ``python train.py --config=configs/small.py --workdir=runs/demo [--config.x=y]``
(or ``pidm-train ...``).

Resumes automatically from the newest checkpoint in ``--workdir``. Multi-process (TPU pod, GPU
cluster): run the same command on every host; ``jax.distributed.initialize()`` is called when the
environment describes more than one process.
"""

import os

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and sample grids.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  import jax  # pylint: disable=g-import-not-at-top
  from pidm_jax import console  # pylint: disable=g-import-not-at-top
  from pidm_jax import train  # pylint: disable=g-import-not-at-top

  # third-party INFO off (--verbosity=0 brings it back), compiled programs kept in the workdir,
  # multi-process start
  console.begin(argv, cache_dir=os.path.join(FLAGS.workdir, "jax_cache"))
  console.say(
      f"JAX {jax.__version__}: {jax.process_count()} process(es), {jax.device_count()} "
      f"device(s) ({jax.devices()[0].device_kind})"
  )
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from pidm_jax import checkpointing  # pylint: disable=g-import-not-at-top

  try:
    summary = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (
      train.SetupError,
      FileNotFoundError,
      PermissionError,
      pipeline.DataSetError,
      checkpointing.UnreadableCheckpointError,
      checkpointing.ConfigMismatchError,
  ) as e:
    # the user's to fix (workdir, data, checkpoint, config), said in one line: see console.fail
    console.fail(e, keep_lines=isinstance(e, checkpointing.ConfigMismatchError))
  if "ssim" in summary:
    shown = lambda path: os.path.join(FLAGS.workdir, "samples", os.path.basename(path))
    console.say(
        f"test SSIM of the samples: {summary['ssim']:.4f}   with another person's "
        f"source: {summary['ssim_swapped_source']:.4f}   copying the source image: "
        f"{summary['ssim_copy_source']:.4f}"
    )
    console.say(
        f"colour error in the target's body region (CIELAB Delta E): "
        f"{summary['body_colour_error']:.2f} from the own source, "
        f"{summary['body_colour_error_swapped_source']:.2f} from another person's source"
    )
    console.say(f"grids: {shown(summary['grid'])} and {shown(summary['swap_grid'])}")
  console.say(
      f"{summary['steps']} steps in {console.hms(summary['train_seconds'])}; all figures "
      f"in {os.path.join(FLAGS.workdir, 'summary.json')}"
  )


def run():
  """The ``train.py`` / ``pidm-train`` entry point."""
  from pidm_jax import console  # pylint: disable=g-import-not-at-top

  console.run(main)


if __name__ == "__main__":
  run()
