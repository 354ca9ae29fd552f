"""Builds a pidm_jax TFDS data set into a data dir (``tfds build`` needs TensorFlow; this does not).

  python -m input_pipeline.build --dataset=deep_fashion/res256 \
      --manual_dir=/path/to/deepfashion --data_dir=/path/to/tensorflow_datasets

``--dataset`` is ``name[/config]``: deep_fashion, market1501, person_folder or synthetic_people.
The records are written as ArrayRecord, the format ``tfds.data_source`` (and so the grain pipeline)
reads.
"""

from __future__ import annotations

import importlib
import time

import jax
import tensorflow_datasets as tfds

from pidm_jax import console, multihost

# Builder name -> module that registers it with TFDS.
BUILDER_MODULES = {
    "deep_fashion": "input_pipeline.deep_fashion",
    "market1501": "input_pipeline.market1501",
    "person_folder": "input_pipeline.folder",
    "synthetic_people": "input_pipeline.synthetic_people",
}


def register(name: str) -> None:
  """Imports the module defining builder ``name`` (``name[/config]``) so TFDS knows it.

  Names that are not pidm_jax builders are left to TFDS.
  """
  module = BUILDER_MODULES.get(name.split("/")[0].split(":")[0])
  if module is not None:
    importlib.import_module(module)


def builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder ``name[/config]`` writing ArrayRecord files under ``data_dir``."""
  register(name)
  try:
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    from input_pipeline.pipeline import DataSetError  # pylint: disable=g-import-not-at-top

    raise DataSetError(
        f"unknown data set {name!r}: pidm_jax builds {', '.join(sorted(BUILDER_MODULES))} "
        "(name[/config]); other names must be TFDS data sets"
    ) from None


def build(
    name: str, data_dir: str | None = None, manual_dir: str | None = None
) -> tfds.core.DatasetBuilder:
  """Builds ``name[/config]`` (from ``manual_dir`` for the manual data sets); returns its builder.

  A data set already built in ``data_dir`` is reused as TFDS does.
  """
  b = builder(name, data_dir)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return b


def ensure_dataset(config) -> None:
  """Builds the procedural ``synthetic_people`` set of ``config.data`` if it is missing (it needs
  no download; process 0 builds, the others wait). Other data sets are left as they are."""
  if config.data.dataset != "synthetic_people":
    return
  name = f"synthetic_people/{config.data.builder_config}"
  register(name)
  if not builder(name, config.data.data_dir).is_prepared():
    if jax.process_index() == 0:
      console.say(f"building {name} (procedural, no download)")
      t0 = time.time()
      if not console.verbosity_requested():
        tfds.disable_progress_bar()  # TFDS's own bars; --verbosity brings them back
      built = build(name, config.data.data_dir)
      splits = sorted(built.info.splits.items())
      console.say(
          f"built {name} in {time.time() - t0:.0f} s: "
          + ", ".join(f"{split} {info.num_examples} pairs" for split, info in splits)
      )
    if jax.process_count() > 1:
      multihost.barrier("synthetic_people built")


def main(argv):
  del argv
  build(FLAGS.dataset, FLAGS.data_dir, FLAGS.manual_dir)


def run():
  """The ``python -m input_pipeline.build`` / ``pidm-build-data`` entry point."""
  global FLAGS  # pylint: disable=global-statement
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("dataset", None, "name[/config], e.g. deep_fashion/res256", required=True)
  flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's)")
  flags.DEFINE_string("manual_dir", None, "folder of the manually downloaded files")
  FLAGS = flags.FLAGS
  console.run(main)


if __name__ == "__main__":
  run()
