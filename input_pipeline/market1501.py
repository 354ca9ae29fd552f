"""TFDS builder ``market1501``: Market-1501 pose-transfer pairs from a manual download (GFLA/PATN split).

Point ``--manual_dir`` at a folder holding ``market-pairs-{train,test}.csv`` (columns ``from,to``),
``market-annotation-{train,test}.csv`` (``name:[18 y]:[18 x]``, 128x64 frame, -1 missing) and the
images under ``train/`` and ``test/`` (or Market-1501's own ``bounding_box_train/`` and
``bounding_box_test/``). The published protocol uses 263,632 training and 12,000 test pairs at
128x64, the images' own size (config ``res128x64``); ``res256x128`` stretches them (PIL bicubic) and
scales the keypoints with them. Splits: ``train`` and ``test``, for each pair file found. Any missing
file, unreadable image or image without keypoints stops the build with an error listing them.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from input_pipeline import features
from input_pipeline import manual_data
from pidm_jax import pose

SPLITS = ("train", "test")
KEYPOINT_FRAME = (128, 64)  # (height, width) of the annotation coordinates


def _person(name: str) -> str:
  """Market-1501 names start with the identity: ``0002_c1s1_000451_03.jpg`` -> ``0002``."""
  return os.path.basename(name).split("_")[0]


class Market1501(tfds.core.GeneratorBasedBuilder):
  """Market-1501 pose-transfer pairs (GFLA/PATN split files)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      manual_data.SizeConfig(
          name="res128x64", description="128x64, the images' own size", height=128, width=64
      ),
      manual_data.SizeConfig(
          name="res256x128", description="stretched to 256x128", height=256, width=128
      ),
  ]
  DEFAULT_CONFIG_NAME = "res128x64"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download Market-1501 and the GFLA/PATN pose-transfer split, then point --manual_dir at a folder
  holding train/ and test/ (or bounding_box_train/ and bounding_box_test/),
  market-pairs-{train,test}.csv and market-annotation-{train,test}.csv.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=features.pair_features(self.builder_config.height, self.builder_config.width),
        homepage="https://zheng-lab.cecs.anu.edu.au/Project/project_reid.html",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    if not os.path.isdir(root):
      raise manual_data.BuildError(f"market1501: manual_dir {root} is not a directory")
    files = {s: os.path.join(root, f"market-pairs-{s}.csv") for s in SPLITS}
    files = {s: p for s, p in files.items() if os.path.isfile(p)}
    if not files:
      raise manual_data.BuildError(
          f"market1501: {root} holds no market-pairs-train.csv or market-pairs-test.csv"
      )
    logging.info("market1501: splits %s from %s", sorted(files), root)
    return {split: self._generate_examples(root, split, path) for split, path in files.items()}

  def _generate_examples(self, root: str, split: str, pairs_file: str):
    height, width = self.builder_config.height, self.builder_config.width
    pairs, image_paths, keypoints = _read_split(root, split, pairs_file)
    yield from manual_data.generate_pair_examples(
        pairs,
        image_paths,
        keypoints,
        manual_data.stretch_from(KEYPOINT_FRAME),
        height,
        width,
        f"market1501 {split}",
    )


def _read_split(root: str, split: str, pairs_file: str):
  """Checks and reads one split: (pairs, image name -> file, image name -> keypoints)."""
  errors = manual_data.EntryErrors(f"market1501 {split} from {pairs_file}")
  annotation = os.path.join(root, f"market-annotation-{split}.csv")
  image_dir = manual_data.first_existing(root, [split, f"bounding_box_{split}"])
  if not os.path.isfile(annotation):
    errors.add("missing annotation files", annotation)
  if image_dir is None:
    errors.add("missing image folders", os.path.join(root, split))
  errors.raise_if_any()
  all_keypoints = pose.read_keypoints_csv(annotation, dtype=np.float64)
  pairs = [manual_data.Pair(s, t, _person(t)) for s, t in manual_data.read_pairs_csv(pairs_file)]
  image_paths, keypoints = {}, {}
  for name in manual_data.unique_names(pairs):
    path = os.path.join(image_dir, name)
    if not os.path.isfile(path):
      errors.add("missing images", path)
    else:
      image_paths[name] = path
    if name not in all_keypoints:
      errors.add(f"images without keypoints in {os.path.basename(annotation)}", name)
    else:
      keypoints[name] = all_keypoints[name]
  errors.raise_if_any()
  return pairs, image_paths, keypoints
