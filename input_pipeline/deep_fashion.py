"""TFDS builder ``deep_fashion``: DeepFashion In-shop pose-transfer pairs from a manual download.

Point ``--manual_dir`` (``tfds.download.DownloadConfig(manual_dir=...)``) at a folder in one of the
two layouts people distribute:

* PIDM/NTED: ``img/...`` (the In-shop ``img_highres`` tree), ``pose/...`` with one ``.txt`` per image
  (18 rows ``x y``, the same relative path with ``img/`` -> ``pose/``), and ``train_pairs.txt`` /
  ``test_pairs.txt`` with one line per target image: ``target,source_1[,source_2,...]``. One record is
  written per (target, source) listed; ``.jpg`` names are rewritten to ``.png`` as the official
  code does (for the ids; the image file may be either).
  The keypoints are in the 256x256 padded frame of the official data (person in columns 40..216):
  x' = (x - 40) * W / 176, y' = y * H / 256.
* GFLA/PATN: ``fasion-pairs-{train,test}.csv`` (columns ``from,to``), ``fasion-annotation-{train,test}
  .csv`` (``name:[18 y]:[18 x]``), the images under ``train/`` and ``test/`` (``_highres`` or ``_256``
  suffixes accepted); ``fasion-resize-...`` file names too. Keypoints are in the 256x176 frame:
  x' = x * W / 176, y' = y * H / 256.

If both are present the PIDM layout is used. Images are stored the way the official model expects
them: stretched to the config's size with PIL bicubic (256x256 by default; ``res512`` for the
512x352 benchmark, which the official protocol also runs square). Splits: ``train`` and ``test``, for
each pair file found. Any missing file, unreadable image or malformed keypoint file stops the build
with an error listing the offending entries.
"""

from __future__ import annotations

import os
import re

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from input_pipeline import features
from input_pipeline import manual_data
from pidm_jax import pose

SPLITS = ("train", "test")
_PERSON_RE = re.compile(r"id_?(\d{8})")


def _with_png(name: str) -> str:
  return name[:-4] + ".png" if name.lower().endswith(".jpg") else name


def _person(name: str) -> str:
  match = _PERSON_RE.search(name)
  return f"id_{match.group(1)}" if match else ""


def _image_candidates(name: str) -> list[str]:
  stem, ext = os.path.splitext(name)
  return list(dict.fromkeys([name] + [stem + e for e in (".jpg", ".png", ".jpeg") if e != ext]))


def _pidm_frame(kp, original, size):
  del original
  return pose.deepfashion_to_frame(kp, size[0], size[1])


class DeepFashion(tfds.core.GeneratorBasedBuilder):
  """DeepFashion In-shop pose-transfer pairs (PIDM/NTED or GFLA/PATN split files)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      manual_data.SizeConfig(
          name="res256", description="stretched to 256x256 (official)", height=256, width=256
      ),
      manual_data.SizeConfig(
          name="res512", description="stretched to 512x512", height=512, width=512
      ),
  ]
  DEFAULT_CONFIG_NAME = "res256"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download the DeepFashion In-shop images (img_highres) and a pose-transfer split, then point
  --manual_dir at a folder holding either
    img/..., pose/... (.txt keypoints), train_pairs.txt, test_pairs.txt   (PIDM/NTED), or
    train/, test/, fasion-pairs-{train,test}.csv, fasion-annotation-{train,test}.csv   (GFLA/PATN).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=features.pair_features(self.builder_config.height, self.builder_config.width),
        homepage="https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    layout, files = find_layout(root)
    logging.info("deep_fashion: %s layout in %s, splits %s", layout, root, sorted(files))
    return {
        split: self._generate_examples(root, layout, split, path) for split, path in files.items()
    }

  def _generate_examples(self, root: str, layout: str, split: str, pairs_file: str):
    height, width = self.builder_config.height, self.builder_config.width
    if layout == "pidm":
      pairs, image_paths, keypoints, to_frame = _read_pidm(root, split, pairs_file)
    else:
      pairs, image_paths, keypoints, to_frame = _read_gfla(root, split, pairs_file)
    yield from manual_data.generate_pair_examples(
        pairs, image_paths, keypoints, to_frame, height, width, f"deep_fashion {split}"
    )


def find_layout(root: str) -> tuple[str, dict[str, str]]:
  """Detects the layout of a DeepFashion folder: ('pidm' | 'gfla', {split: pair file})."""
  if not os.path.isdir(root):
    raise manual_data.BuildError(f"deep_fashion: manual_dir {root} is not a directory")
  pidm = {s: os.path.join(root, f"{s}_pairs.txt") for s in SPLITS}
  pidm = {s: p for s, p in pidm.items() if os.path.isfile(p)}
  if pidm:
    return "pidm", pidm
  gfla = {}
  for split in SPLITS:
    path = manual_data.first_existing(
        root, [f"fasion-pairs-{split}.csv", f"fasion-resize-pairs-{split}.csv"]
    )
    if path:
      gfla[split] = path
  if gfla:
    return "gfla", gfla
  raise manual_data.BuildError(
      f"deep_fashion: {root} holds neither train_pairs.txt/test_pairs.txt (PIDM/NTED layout) nor "
      "fasion-pairs-{train,test}.csv (GFLA/PATN layout)"
  )


def _read_pidm(root: str, split: str, pairs_file: str):
  """Checks and reads a split of the PIDM/NTED layout."""
  errors = manual_data.EntryErrors(f"deep_fashion {split} from {pairs_file}")
  listed = manual_data.read_pairs_txt(pairs_file)
  image_paths, keypoints = {}, {}
  for name in dict.fromkeys(n for pair in listed for n in pair):
    path = manual_data.first_existing(root, _image_candidates(name))
    if path is None:
      errors.add("missing images", os.path.join(root, name))
      continue
    image_paths[_with_png(name)] = path
    rel = (
        name.replace("img/", "pose/", 1) if name.startswith("img/") else os.path.join("pose", name)
    )
    kp_path = os.path.join(root, os.path.splitext(rel)[0] + ".txt")
    if not os.path.isfile(kp_path):
      errors.add("missing keypoint files", kp_path)
      continue
    try:
      # float64, as the official np.loadtxt; converted to the stored frame before rounding.
      keypoints[_with_png(name)] = pose.read_keypoints_txt(kp_path, dtype=np.float64)
    except (OSError, ValueError) as e:
      errors.add("malformed keypoint files", str(e))
  errors.raise_if_any()
  pairs = [manual_data.Pair(_with_png(s), _with_png(t), _person(t)) for s, t in listed]
  return pairs, image_paths, keypoints, _pidm_frame


def _read_gfla(root: str, split: str, pairs_file: str):
  """Checks and reads a split of the GFLA/PATN layout."""
  errors = manual_data.EntryErrors(f"deep_fashion {split} from {pairs_file}")
  annotation = manual_data.first_existing(
      root, [f"fasion-annotation-{split}.csv", f"fasion-resize-annotation-{split}.csv"]
  )
  image_dir = manual_data.first_existing(root, [split, f"{split}_highres", f"{split}_256"])
  if annotation is None:
    errors.add("missing annotation files", os.path.join(root, f"fasion-annotation-{split}.csv"))
  if image_dir is None:
    errors.add("missing image folders", os.path.join(root, split))
  errors.raise_if_any()
  all_keypoints = pose.read_keypoints_csv(annotation, dtype=np.float64)
  pairs = [manual_data.Pair(s, t, _person(t)) for s, t in manual_data.read_pairs_csv(pairs_file)]
  image_paths, keypoints = {}, {}
  for name in manual_data.unique_names(pairs):
    path = manual_data.first_existing(image_dir, _image_candidates(name))
    if path is None:
      errors.add("missing images", os.path.join(image_dir, name))
    else:
      image_paths[name] = path
    if name not in all_keypoints:
      errors.add(f"images without keypoints in {os.path.basename(annotation)}", name)
    else:
      keypoints[name] = all_keypoints[name]
  errors.raise_if_any()
  return pairs, image_paths, keypoints, manual_data.stretch_from((256, 176))
