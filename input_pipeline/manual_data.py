"""What the builders of manually downloaded data sets share: pair files, checks, images, records.

The DeepFashion, Market-1501 and own-folder builders all turn a list of (source, target) image pairs,
an image file per name and keypoints per name into records of the shared layout
(``input_pipeline.features``). Before writing anything they check every entry; a build stops with a
``BuildError`` that lists the offending entries (the first few of each kind and a count) instead of
skipping any of them.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline.features import encode_png
from pidm_jax import pose

# How many entries of each kind an error message lists before "... and N more".
MAX_LISTED = 5
# How many decoded, resized images the record writer keeps (pair lists repeat images in runs).
IMAGE_CACHE_SIZE = 256

# (height, width) of a keypoint frame -> (height, width) of the stored image: keypoints in frame.
KeypointConverter = Callable[[np.ndarray, tuple[int, int], tuple[int, int]], np.ndarray]


class BuildError(ValueError):
  """A data set cannot be built from the files given; the message lists what is wrong."""


class EntryErrors:
  """Collects the problems found while checking a split, grouped by kind."""

  def __init__(self, what: str):
    self._what = what
    self._problems: dict[str, list[str]] = collections.defaultdict(list)

  def add(self, kind: str, entry: str) -> None:
    """Records one offending ``entry`` (a file or a name) under ``kind`` (what is wrong with it)."""
    self._problems[kind].append(entry)

  def __bool__(self) -> bool:
    return bool(self._problems)

  def message(self) -> str:
    lines = [f"cannot build {self._what}:"]
    for kind, entries in self._problems.items():
      listed = ", ".join(entries[:MAX_LISTED])
      more = f" ... and {len(entries) - MAX_LISTED} more" if len(entries) > MAX_LISTED else ""
      lines.append(f"  {len(entries)} {kind}: {listed}{more}")
    return "\n".join(lines)

  def raise_if_any(self) -> None:
    """Raises a ``BuildError`` listing every kind of problem recorded so far, if any."""
    if self._problems:
      raise BuildError(self.message())


@dataclasses.dataclass(eq=False)
class SizeConfig(tfds.core.BuilderConfig):
  """A builder config naming the stored image size (every image is resized to it)."""

  height: int = 256
  width: int = 256


@dataclasses.dataclass(frozen=True)
class Pair:
  """One record to write: the names of its source and target images and the person's id."""

  source: str
  target: str
  person: str = ""


def read_pairs_txt(path: os.PathLike | str) -> list[tuple[str, str]]:
  """Reads a PIDM/NTED pair list: one line per target, ``target,source_1[,source_2,...]``.

  Returns one (source, target) tuple per listed source, in file order. Blank lines are ignored; a
  line with fewer than two names raises an error naming the file and line.
  """
  pairs = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      names = [name.strip() for name in line.strip().split(",")]
      if names == [""]:
        continue
      if len(names) < 2 or not all(names):
        raise BuildError(
            f"{os.fspath(path)} line {number}: expected 'target,source_1[,...]', got "
            f"{line.strip()[:100]!r}"
        )
      pairs.extend((source, names[0]) for source in names[1:])
  return pairs


def read_pairs_csv(path: os.PathLike | str) -> list[tuple[str, str]]:
  """Reads a PATN/GFLA pair CSV with a header naming ``from`` and ``to`` columns (others ignored).

  Returns (source = from, target = to) tuples in file order.
  """
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f)
    fields = [name.strip() for name in reader.fieldnames or []]
    if "from" not in fields or "to" not in fields:
      raise BuildError(
          f"{os.fspath(path)}: expected a header with 'from' and 'to' columns, got "
          f"{reader.fieldnames}"
      )
    reader.fieldnames = fields
    pairs = []
    for row in reader:
      source, target = (row["from"] or "").strip(), (row["to"] or "").strip()
      if not source or not target:
        raise BuildError(f"{os.fspath(path)} line {reader.line_num}: empty 'from' or 'to'")
      pairs.append((source, target))
  return pairs


def first_existing(directory: os.PathLike | str, candidates: Sequence[str]) -> str | None:
  """The first of ``candidates`` (paths relative to ``directory``) that exists, as a full path."""
  for name in candidates:
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  return None


def load_image(
    path: os.PathLike | str, height: int, width: int
) -> tuple[np.ndarray, tuple[int, int]]:
  """Reads an image file as RGB and stretches it to ``height`` x ``width`` with PIL bicubic.

  Returns (uint8 (height, width, 3) image, (original height, original width)). The official PIDM
  data preparation resizes with PIL bicubic too, ignoring the aspect ratio. Raises ``OSError`` or
  ``ValueError`` for a file that is not a readable image.
  """
  with Image.open(path) as img:
    img = img.convert("RGB")
    original = (img.height, img.width)
    if original != (height, width):
      img = img.resize((width, height), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8), original


def check_pairs(
    pairs: Iterable[Pair],
    known: Mapping[str, object] | set[str],
    errors: EntryErrors,
    kind: str = "pairs naming an unknown image",
) -> list[Pair]:
  """Records every pair naming an image not in ``known`` (as ``source -> target``) in ``errors``."""
  pairs = list(pairs)
  for pair in pairs:
    missing = [name for name in (pair.source, pair.target) if name not in known]
    if missing:
      errors.add(kind, f"{pair.source} -> {pair.target} (unknown: {', '.join(missing)})")
  return pairs


def generate_pair_examples(
    pairs: Sequence[Pair],
    image_paths: Mapping[str, str],
    keypoints: Mapping[str, np.ndarray],
    to_frame: KeypointConverter,
    height: int,
    width: int,
    what: str,
) -> Iterator[tuple[str, dict]]:
  """Yields (key, record) for each pair, in order, with images stretched to ``height`` x ``width``.

  Args:
    pairs: the records to write; every name must be a key of ``image_paths`` and ``keypoints``
      (checked beforehand with ``check_pairs``).
    image_paths: image name -> file.
    keypoints: image name -> (18, 2) (x, y) keypoints in the file's own frame, -1 missing.
    to_frame: (keypoints, original (h, w) of the image file, stored (h, w)) -> keypoints in the
      stored image's pixel frame.
    height, width: stored image size.
    what: names the split in error messages.

  Images that cannot be read do not stop the writing at once: every unreadable image is collected
  and, once all pairs have been seen, a ``BuildError`` listing them stops the build (TFDS then
  leaves no data set behind).
  """
  errors = EntryErrors(what)
  cache: collections.OrderedDict[str, tuple[bytes, np.ndarray] | None] = collections.OrderedDict()

  def load(name: str):
    if name in cache:
      cache.move_to_end(name)
      return cache[name]
    path = image_paths[name]
    try:
      image, original = load_image(path, height, width)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      detail = type(e).__name__ if os.fspath(path) in str(e) else f"{type(e).__name__}: {e}"
      errors.add("unreadable images", f"{path} ({detail})")
      entry = None
    else:
      kp = np.asarray(to_frame(keypoints[name], original, (height, width)), np.float64)
      entry = (encode_png(image), kp)
    cache[name] = entry
    if len(cache) > IMAGE_CACHE_SIZE:
      cache.popitem(last=False)
    return entry

  for index, pair in enumerate(pairs):
    source, target = load(pair.source), load(pair.target)
    if source is None or target is None:
      continue
    yield f"{index:09d}", {
        "source_image": source[0],
        "target_image": target[0],
        "source_keypoints": source[1],
        "target_keypoints": target[1],
        "source_id": pair.source,
        "target_id": pair.target,
        "person_id": pair.person,
    }
  errors.raise_if_any()


def unique_names(pairs: Iterable[Pair]) -> list[str]:
  """The image names of ``pairs`` in first-seen order."""
  return list(dict.fromkeys(name for pair in pairs for name in (pair.source, pair.target)))


def stretch_from(frame: tuple[int, int]) -> KeypointConverter:
  """A converter for keypoints given in a fixed ``frame`` (h, w): x * W / w, y * H / h."""

  def convert(kp, original, size):
    del original
    return pose.scale_keypoints(kp, frame, size)

  return convert


def stretch_from_image(kp, original, size):
  """A converter for keypoints given in the image file's own pixel frame."""
  return pose.scale_keypoints(kp, original, size)
