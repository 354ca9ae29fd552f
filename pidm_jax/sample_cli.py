"""Samples PIDM images: checkpoint + source image(s) + target pose(s) -> PNG files and a grid
(``python sample.py ...`` or ``pidm-sample ...``).

  python sample.py --checkpoint=ckpt/ --source=a.jpg --source=b.png \
      --pose=p.txt --pose=q.json --out=out/ --config.sample.steps=50 --seed=0

The checkpoint's own config (stored with it) is used unless ``--config`` is given; overrides such as
``--config.sample.steps=50`` apply either way.

Every source is paired with every pose (``--pairing=all``) or position by position
(``--pairing=paired``). Appearance control: ``--reference=person.png --mask=upper.png`` keeps the
reference person outside the white mask region. Sampler settings live in ``config.sample``
(algorithm, steps, guidance_scale, eta, batch_size). See ``pidm_jax.inference`` for the formats.
"""

import sys

from absl import flags
from ml_collections import config_flags

from pidm_jax import inference

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file (configs/<x>.py); default: the config stored with --checkpoint. "
    "A config whose model or diffusion differs from the stored one is refused.",
    lock_config=True,
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint directory (EMA parameters).")
_SOURCE = flags.DEFINE_multi_string("source", [], "Source image (repeatable).")
_POSE = flags.DEFINE_multi_string(
    "pose", [], "Target pose: keypoint file or (H, W, 20) .npy " "pose map (repeatable)."
)
_POSE_DIR = flags.DEFINE_string("pose_dir", None, "Directory of pose files (added to --pose).")
_OUT = flags.DEFINE_string("out", "samples", "Output directory.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_PAIRING = flags.DEFINE_enum(
    "pairing",
    "all",
    list(inference.PAIRINGS),
    "all: every source x every pose; paired: i-th source, i-th pose.",
)
_REFERENCE = flags.DEFINE_string("reference", None, "Appearance control: the person to edit.")
_MASK = flags.DEFINE_string("mask", None, "Appearance control: white = region to regenerate.")
_RESIZE = flags.DEFINE_enum(
    "resize",
    "stretch",
    list(inference.RESIZE_MODES),
    "stretch to the network size (official) or pad to keep the aspect.",
)
_POSE_FRAME = flags.DEFINE_enum(
    "pose_frame",
    "source",
    list(inference.POSE_FRAMES),
    "Keypoint frame: the source image's pixels, the DeepFashion "
    "keypoint frame, or the network's pixels.",
)
_PERSON = flags.DEFINE_integer(
    "person",
    None,
    "OpenPose JSON with several people: which one "
    "(0-based); default: the most complete skeleton.",
    lower_bound=0,
)
_MULTIHOST = flags.DEFINE_bool(
    "multihost",
    False,
    "Call jax.distributed.initialize() first "
    "(multi-host runs; each host reads the same files). Also done "
    "when the environment describes a multi-process run.",
)


def main(argv):
  from pidm_jax import console  # pylint: disable=g-import-not-at-top

  console.begin(argv, config=_CONFIG.value, multihost=_MULTIHOST.value)
  try:
    inference.sample_files(
        _CONFIG.value,
        _CHECKPOINT.value,
        _SOURCE.value,
        _POSE.value,
        _OUT.value,
        pose_dir=_POSE_DIR.value,
        seed=_SEED.value,
        pairing=_PAIRING.value,
        reference=_REFERENCE.value,
        mask=_MASK.value,
        resize=_RESIZE.value,
        pose_frame=_POSE_FRAME.value,
        person=_PERSON.value,
    )
  except inference.InputError as e:
    console.fail(e, keep_lines=True)  # one line; a config mismatch: one more line per field


def run():
  """The ``sample.py`` / ``pidm-sample`` entry point."""
  from pidm_jax import console  # pylint: disable=g-import-not-at-top

  sys.argv = console.default_to_stored_config(sys.argv)  # --config defaults to the checkpoint's
  console.run(main)


if __name__ == "__main__":
  run()
