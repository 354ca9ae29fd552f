"""``synthetic_people``: a procedural pose-transfer data set that builds locally in seconds.

Each identity is a drawn person with its own look (skin, hair, top and bottom colours and patterns,
body proportions; see ``input_pipeline/synthetic/person.py``), rendered in several plausible poses
of the 18-joint COCO skeleton on a light background. Every pair of two different poses of the same
identity is one record of the shared pair layout (``input_pipeline.features``), with the exact
keypoints of both images. Train and test identities are disjoint: they are drawn from different
random streams and carry different ids (``train_00012`` vs ``test_00012``).

Build (ArrayRecord, no download, no TensorFlow)::

    builder = SyntheticPeople(config="res64", data_dir=...)
    builder.download_and_prepare()
    source = tfds.data_source("synthetic_people/res64", data_dir=..., split="train")

Custom sizes: ``SyntheticPeople(config=SyntheticPeopleConfig(name="tiny", resolution=32,
train_identities=8, test_identities=2, poses_per_identity=3), data_dir=...)``.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.features import encode_png, pair_features
from input_pipeline.synthetic import person

_SPLITS = {"train": 0, "test": 1}
BACKGROUNDS = ("per_image", "per_identity", "fixed")


@dataclasses.dataclass(eq=False)
class SyntheticPeopleConfig(tfds.core.BuilderConfig):
  """Resolution, sizes and seed of a synthetic_people build.

  Attributes:
    resolution: stored image height and width in pixels.
    train_identities, test_identities: number of identities per split.
    poses_per_identity: images per identity; each unordered pair of two of them is one record,
      so a split has identities * poses * (poses - 1) / 2 records.
    seed: fixes every identity, pose and background.
    background: "per_image" (a slightly different light background for every image),
      "per_identity" (all views of an identity on one background: a studio session) or
      "fixed" (one background for the whole set, as DeepFashion's near-uniform studio white).
    build: limbs, shoulders and hips this many times as wide (1 = the default proportions).
    pattern_scale: clothing patterns (stripes, checks, dots) this many times as coarse.
  """

  resolution: int = 64
  train_identities: int = 200
  test_identities: int = 20
  poses_per_identity: int = 4
  seed: int = 0
  background: str = "per_image"
  build: float = 1.0
  pattern_scale: float = 1.0

  def __post_init__(self):
    where = f"synthetic_people config {self.name!r}"
    if self.resolution < 16:
      raise ValueError(f"{where}: resolution must be >= 16, got {self.resolution}")
    if self.poses_per_identity < 2:
      raise ValueError(
          f"{where}: poses_per_identity must be >= 2 to make pairs, got "
          f"{self.poses_per_identity}"
      )
    if self.background not in BACKGROUNDS:
      raise ValueError(
          f"{where}: background must be one of {BACKGROUNDS}, got " f"{self.background!r}"
      )
    if self.build <= 0 or self.pattern_scale <= 0:
      raise ValueError(
          f"{where}: build and pattern_scale must be > 0, got {self.build} "
          f"and {self.pattern_scale}"
      )
    if self.train_identities < 0 or self.test_identities < 0:
      raise ValueError(
          f"{where}: identity counts must be >= 0, got "
          f"{self.train_identities} and {self.test_identities}"
      )


def identity_images(config: SyntheticPeopleConfig, split: str, index: int):
  """Renders one identity of ``split``: returns (person_id, [(image, keypoints), ...]).

  Deterministic in (config.seed, split, index, config.resolution, config.poses_per_identity,
  config.background, config.build, config.pattern_scale).
  """
  if split not in _SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLITS)}")
  rng = np.random.default_rng([config.seed, _SPLITS[split], index])
  appearance = person.restyled(
      person.sample_appearance(rng), build=config.build, pattern_scale=config.pattern_scale
  )
  size = config.resolution
  backdrop = None
  if config.background == "per_identity":
    backdrop = person.background(rng, size, size)
  elif config.background == "fixed":
    backdrop = person.background(np.random.default_rng([config.seed]), size, size)
  views = [
      person.render(appearance, person.sample_pose(rng), size, size, rng, backdrop)
      for _ in range(config.poses_per_identity)
  ]
  return f"{split}_{index:05d}", views


class SyntheticPeople(tfds.core.GeneratorBasedBuilder):
  """Procedural people in several poses; pairs of the same identity; exact COCO-18 keypoints."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      SyntheticPeopleConfig(
          name="res64",
          resolution=64,
          description="64x64, 200 train / 20 test identities, 4 poses each.",
      ),
      SyntheticPeopleConfig(
          name="res256",
          resolution=256,
          description="256x256, 200 train / 20 test identities, 4 poses each.",
      ),
      SyntheticPeopleConfig(
          name="studio64",
          resolution=64,
          train_identities=2000,
          test_identities=20,
          background="fixed",
          build=1.5,
          pattern_scale=1.6,
          description="64x64, 2000 train / 20 test identities, 4 poses each; one studio "
          "background for every image, bodies 1.5x as wide and patterns 1.6x as "
          "coarse as res64's.",
      ),
      SyntheticPeopleConfig(
          name="studio32",
          resolution=32,
          train_identities=4000,
          test_identities=20,
          background="fixed",
          build=1.5,
          pattern_scale=2.0,
          description="32x32, 4000 train / 20 test identities, 4 poses each; one studio "
          "background for every image, bodies 1.5x as wide and patterns 2x as "
          "coarse as res64's (the CPU demo's set).",
      ),
  ]

  def __init__(self, *, file_format=None, **kwargs):
    """As tfds's builder, writing ArrayRecord unless another ``file_format`` is given."""
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.resolution
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[1],
        features=pair_features(size, size),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    return {
        "train": self._generate_examples("train", config.train_identities),
        "test": self._generate_examples("test", config.test_identities),
    }

  def _generate_examples(self, split: str, identities: int):
    config = self.builder_config
    for index in range(identities):
      person_id, views = identity_images(config, split, index)
      pngs = [encode_png(image) for image, _ in views]
      for a, b in itertools.combinations(range(len(views)), 2):
        yield f"{person_id}/{a}_{b}", {
            "source_image": pngs[a],
            "target_image": pngs[b],
            "source_keypoints": views[a][1].astype(np.float64),
            "target_keypoints": views[b][1].astype(np.float64),
            "source_id": f"{person_id}/pose_{a}",
            "target_id": f"{person_id}/pose_{b}",
            "person_id": person_id,
        }
