"""TFDS builder ``person_folder``: pose-transfer pairs from a folder of your own images.

Point ``--manual_dir`` at a folder laid out as::

  images/...          the images (any nesting; any format PIL reads), named below by their path
                      relative to images/, e.g. ``alice/front.jpg``
  keypoints/...       one keypoint file per image: the same relative path with the extension
                      .txt (18 rows ``x y``), .json (OpenPose COCO-18 or BODY_25) or .npy ((18, 2))
  keypoints.csv       or, instead of keypoints/, one PATN/GFLA annotation (``name:[18 y]:[18 x]``)
  train_pairs.csv     pairs of the train split: a header with ``from`` (source) and ``to`` (target)
  train_pairs.txt       columns, or one line per target ``target,source_1[,source_2,...]``
  test_pairs.csv      the same for the test split (either file; at least one split)
  test_pairs.txt

Keypoints are (x, y) pixels of the image file itself, -1 for a missing joint (OpenPose joints under
the confidence threshold count as missing). Every image is stretched to the config's square size
(PIL bicubic, as the official DeepFashion preparation) and its keypoints scaled with it. The person
id of a record is the target image's folder (``alice``), empty at the top level. Any missing file,
unreadable image, malformed keypoint file or pair naming an unknown image stops the build with an
error listing them.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds
from absl import logging

from input_pipeline import features
from input_pipeline import manual_data
from pidm_jax import pose

SPLITS = ("train", "test")
IMAGE_DIR = "images"
KEYPOINT_DIR = "keypoints"
KEYPOINT_CSV = "keypoints.csv"
KEYPOINT_EXTENSIONS = (".txt", ".json", ".npy")


class PersonFolder(tfds.core.GeneratorBasedBuilder):
  """Pose-transfer pairs from a folder of images, keypoint files and pair lists."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      manual_data.SizeConfig(name=f"res{s}", description=f"stretched to {s}x{s}", height=s, width=s)
      for s in (64, 128, 256, 512)
  ]
  DEFAULT_CONFIG_NAME = "res256"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Point --manual_dir at a folder with images/, keypoints/ (or keypoints.csv) and
  train_pairs.{csv,txt} and/or test_pairs.{csv,txt}; see input_pipeline/folder.py.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=features.pair_features(self.builder_config.height, self.builder_config.width),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    files = find_pair_files(root)
    logging.info("person_folder: splits %s from %s", sorted(files), root)
    return {split: self._generate_examples(root, split, path) for split, path in files.items()}

  def _generate_examples(self, root: str, split: str, pairs_file: str):
    height, width = self.builder_config.height, self.builder_config.width
    pairs, image_paths, keypoints = _read_split(root, split, pairs_file)
    yield from manual_data.generate_pair_examples(
        pairs,
        image_paths,
        keypoints,
        manual_data.stretch_from_image,
        height,
        width,
        f"person_folder {split}",
    )


def find_pair_files(root: str) -> dict[str, str]:
  """{split: pair file} for the splits with a pair file in ``root``."""
  if not os.path.isdir(root):
    raise manual_data.BuildError(f"person_folder: manual_dir {root} is not a directory")
  files = {}
  for split in SPLITS:
    found = [
        p
        for p in (os.path.join(root, f"{split}_pairs{e}") for e in (".csv", ".txt"))
        if os.path.isfile(p)
    ]
    if len(found) > 1:
      raise manual_data.BuildError(f"person_folder: both {found[0]} and {found[1]} exist; keep one")
    if found:
      files[split] = found[0]
  if not files:
    raise manual_data.BuildError(
        f"person_folder: {root} holds none of train_pairs.csv, train_pairs.txt, test_pairs.csv, "
        "test_pairs.txt"
    )
  return files


def _read_pairs(path: str) -> list[tuple[str, str]]:
  if path.endswith(".csv"):
    return manual_data.read_pairs_csv(path)
  return manual_data.read_pairs_txt(path)


def _read_split(root: str, split: str, pairs_file: str):
  """Checks and reads one split: (pairs, image name -> file, image name -> keypoints)."""
  errors = manual_data.EntryErrors(f"person_folder {split} from {pairs_file}")
  image_root = os.path.join(root, IMAGE_DIR)
  csv_path = os.path.join(root, KEYPOINT_CSV)
  keypoint_root = os.path.join(root, KEYPOINT_DIR)
  if not os.path.isdir(image_root):
    errors.add("missing image folders", image_root)
  if not os.path.isfile(csv_path) and not os.path.isdir(keypoint_root):
    errors.add("missing keypoint folders", f"{keypoint_root} (or {csv_path})")
  errors.raise_if_any()

  pairs = [manual_data.Pair(s, t, os.path.dirname(t)) for s, t in _read_pairs(pairs_file)]
  names = manual_data.unique_names(pairs)
  image_paths = {}
  for name in names:
    path = os.path.join(image_root, name)
    if os.path.isfile(path):
      image_paths[name] = path
    else:
      errors.add("pairs naming an unknown image (no file under images/)", name)

  if os.path.isfile(csv_path):
    all_keypoints = pose.read_keypoints_csv(csv_path)
    keypoints = {n: all_keypoints[n] for n in names if n in all_keypoints}
    for name in names:
      if name not in all_keypoints:
        errors.add(f"images without keypoints in {KEYPOINT_CSV}", name)
  else:
    keypoints = {}
    for name in names:
      stem = os.path.join(keypoint_root, os.path.splitext(name)[0])
      found = [stem + e for e in KEYPOINT_EXTENSIONS if os.path.isfile(stem + e)]
      if not found:
        errors.add("missing keypoint files", stem + "{" + ",".join(KEYPOINT_EXTENSIONS) + "}")
      elif len(found) > 1:
        errors.add("images with several keypoint files", ", ".join(found))
      else:
        try:
          keypoints[name] = pose.read_keypoints(found[0])
        except (OSError, ValueError) as e:
          errors.add("malformed keypoint files", str(e))
  errors.raise_if_any()
  return pairs, image_paths, keypoints
