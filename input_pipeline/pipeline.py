"""The grain input pipeline: a TFDS pair split -> augmented pairs -> global batches of jax.Arrays.

Training (``train_dataset``): each process reads its share of the split (records ``p, p + P, ...``),
shuffles it with a seed (a new order each epoch), repeats it forever and turns each record into one
*pair* element with the reference augmentation (``PairTransform``): independently for the source and
the target image a random scale s ~ U[0, scale_aug) and a random crop back to size, then one
horizontal flip with probability ``flip_prob`` of both images and both poses. Pose maps are rendered
with ``pidm_jax.pose.pose_map_uint8`` from the transformed keypoints (and, like the official code,
mirrored as maps when flipped; with ``swap_left_right`` the flipped, swapped keypoints are drawn
instead).

A global training batch holds ``config.train.batch_size // 2`` pairs: the train step uses every pair
in both directions (source -> target and target -> source), so it trains on ``batch_size`` samples.

Batch dict (global shapes, B = pairs per global batch, (H, W) = ``config.data.image_size``):

  source_image, target_image        uint8 (B, H, W, 3): the RGB pixels
  source_pose, target_pose          uint8 (B, H, W, 20): the official 20-channel map's uint8 values
  source_keypoints, target_keypoints float32 (B, 18, 2) (x, y) in the batch's pixel frame, -1 missing
  mask  (evaluation only)           bool (B,): True for real pairs, False for padding
  index (evaluation only)           int32 (B,): the pair's record index in the split, -1 for padding

Images and pose maps stay uint8 up to the model (a quarter of float32's copying and host -> device
transfer); ``pidm_jax.encoding.to_model_inputs`` turns them into the model's float32 inputs (images
in [-1, 1], pose maps in [0, 1]) bit for bit as the official code does, on the device inside the
jitted step.

Evaluation (``eval_dataset``): no augmentation, the split in record order, padded with all-zero,
``mask = False`` pairs up to a whole number of global batches, so that every pair is seen exactly
once. Global batch ``i`` holds records ``i * B ... (i + 1) * B - 1``; process ``p`` supplies rows
``p * B / P ... (p + 1) * B / P - 1`` of it.

Local batches become global ``jax.Array``s with ``jax.make_array_from_process_local_data`` on the
batch sharding given (``None`` keeps the per-process NumPy batches).

Determinism and checkpoints: the shuffle and every augmentation draw derive from one seed and the
element's position, so a seed gives the same batches on every run. The training iterator is a grain
``DatasetIterator``: ``iterator.get_state()`` returns a JSON-serialisable dict and
``iterator.set_state(state)`` resumes exactly there; ``grain.checkpoint.CheckpointSave(iterator)``
/ ``CheckpointRestore(iterator)`` put it into an Orbax checkpoint.

Workers: ``config.data.worker_count`` > 0 runs the per-pair work in that many grain worker processes
(``mp_prefetch``). The program must then start from an ``if __name__ == "__main__":`` guard and parse
absl flags first (``absl.app.run``) as grain's workers require. 0 processes everything in the calling
process, with ``read_threads`` threads. The batch order depends on the number of workers and of
processes, so a saved iterator state restores only under the same ``worker_count`` and process
count.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import cv2
import grain
import jax
import numpy as np
from absl import logging

from pidm_jax import encoding
from pidm_jax import pose
from pidm_jax import sharding as sharding_lib

NUM_KEYPOINTS = pose.NUM_KEYPOINTS
POSE_CHANNELS = pose.POSE_CHANNELS
# A pair as the pipeline emits it: the model's inputs (pidm_jax.encoding.MODEL_INPUT_KEYS), then
# the keypoints they were drawn from.
PAIR_KEYS = encoding.MODEL_INPUT_KEYS + ("source_keypoints", "target_keypoints")
EVAL_KEYS = PAIR_KEYS + ("mask", "index")
DEFAULT_READ_THREADS = 16


@dataclasses.dataclass(frozen=True)
class PairTransform:
  """Turns a stored pair record into the network inputs of one pair (picklable for grain workers).

  Called as ``transform(record, rng)`` for training (augmented; ``rng`` a ``np.random.Generator``)
  or ``transform(record)`` for evaluation (no augmentation). Stored images of another size than
  ``image_size`` are first stretched to it (PIL bicubic) with their keypoints. Images and pose maps
  come out uint8 (see the module docstring), keypoints float32.
  """

  image_size: tuple[int, int]
  scale_aug: float = 0.0
  flip_prob: float = 0.0
  swap_left_right: bool = False

  def _fit(self, image: np.ndarray, keypoints: np.ndarray, name: str):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
      raise ValueError(
          f"record field {name}: expected a uint8 (H, W, 3) image, got "
          f"{image.dtype} {image.shape}"
      )
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.shape != (NUM_KEYPOINTS, 2):
      raise ValueError(
          f"record keypoints of {name}: expected shape ({NUM_KEYPOINTS}, 2), got "
          f"{keypoints.shape}"
      )
    if image.shape[:2] != tuple(self.image_size):
      keypoints = pose.scale_keypoints(keypoints, image.shape[:2], self.image_size)
      image = pose.resize_image(image, self.image_size)
    return image, keypoints

  def __call__(
      self, record: Mapping[str, Any], rng: np.random.Generator | None = None
  ) -> dict[str, np.ndarray]:
    h, w = self.image_size
    images, keypoints = {}, {}
    # Target first, then source, then the flip: the order the official loader draws them in.
    for side in ("target", "source"):
      image, kp = self._fit(record[f"{side}_image"], record[f"{side}_keypoints"], f"{side}_image")
      if rng is not None and self.scale_aug > 0:
        scaled_size, offset = pose.random_scale_crop_params(h, w, rng, self.scale_aug)
        image, kp = pose.scale_crop(image, kp, scaled_size, offset)
      images[side], keypoints[side] = image, kp
    flip = rng is not None and self.flip_prob > 0 and rng.random() < self.flip_prob
    out = {}
    for side in ("source", "target"):
      image, kp = images[side], keypoints[side]
      if flip:
        image = cv2.flip(image, 1)  # = image[:, ::-1], contiguous (a fast copy for batching)
      if flip and self.swap_left_right:
        kp = pose.flip_keypoints(kp, w, swap_left_right=True)
        pose_map = pose.pose_map_uint8(kp, h, w)
      else:  # The official code mirrors the rendered map.
        pose_map = pose.pose_map_uint8(kp, h, w, mirror=flip)
        if flip:
          kp = pose.flip_keypoints(kp, w)
      out[f"{side}_image"] = image
      out[f"{side}_pose"] = pose_map
      out[f"{side}_keypoints"] = kp.astype(np.float32)
    return out


@dataclasses.dataclass(frozen=True)
class _EvalElement:
  """Index -> evaluation pair; index -1 gives an all-zero padding pair with ``mask = False``."""

  source: Any
  transform: PairTransform

  def __call__(self, index) -> dict[str, np.ndarray]:
    index = int(index)
    if index < 0:
      h, w = self.transform.image_size
      out = {f"{s}_image": np.zeros((h, w, 3), np.uint8) for s in ("source", "target")}
      out.update(
          {f"{s}_pose": np.zeros((h, w, POSE_CHANNELS), np.uint8) for s in ("source", "target")}
      )
      out.update(
          {
              f"{s}_keypoints": np.full((NUM_KEYPOINTS, 2), -1, np.float32)
              for s in ("source", "target")
          }
      )
    else:
      out = self.transform(self.source[index])
    out["mask"] = np.bool_(index >= 0)
    out["index"] = np.int32(index)
    return out


def _seeds(seed: int, process_index: int) -> tuple[int, int]:
  """(shuffle seed, augmentation seed) for one process, both derived from ``seed``."""
  a, b = np.random.SeedSequence([seed, process_index]).generate_state(2)
  return int(a), int(b)


def _iterate(
    ds: grain.MapDataset, local_batch: int, worker_count: int, prefetch: int, read_threads: int
) -> grain.IterDataset:
  # grain uses at most prefetch_buffer_size reader threads, so the buffer is never smaller.
  read = grain.ReadOptions(
      num_threads=read_threads,
      prefetch_buffer_size=max(read_threads, max(1, prefetch) * local_batch),
  )
  it = ds.to_iter_dataset(read).batch(local_batch, drop_remainder=True)
  if worker_count > 0:
    it = it.mp_prefetch(
        grain.MultiprocessingOptions(
            num_workers=worker_count, per_worker_buffer_size=max(1, prefetch)
        )
    )
  return it


def train_dataset(
    source,
    transform: PairTransform,
    local_batch: int,
    *,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
    prefetch: int = 2,
    read_threads: int = DEFAULT_READ_THREADS,
) -> grain.IterDataset:
  """This process's endless stream of augmented pair batches (NumPy dicts of ``local_batch``).

  ``source`` is any random-access sequence of pair records (``tfds.data_source`` split).
  """
  if len(source) < process_count:
    raise ValueError(
        f"the training split has {len(source)} pairs, fewer than the "
        f"{process_count} processes reading it"
    )
  shuffle_seed, augment_seed = _seeds(seed, process_index)
  ds = grain.MapDataset.source(source)[process_index::process_count]
  ds = ds.shuffle(seed=shuffle_seed).repeat(None).random_map(transform, seed=augment_seed)
  return _iterate(ds, local_batch, worker_count, prefetch, read_threads)


def eval_indices(
    num_examples: int, global_batch: int, process_index: int = 0, process_count: int = 1
) -> np.ndarray:
  """The record indices process ``process_index`` reads for evaluation, -1 for padding.

  Global batch i holds records i * global_batch + [0, global_batch), padded with -1 past the end;
  each process takes its contiguous block of global_batch / process_count rows of each.
  """
  local = global_batch // process_count
  num_batches = math.ceil(num_examples / global_batch)
  rows = (
      np.arange(num_batches)[:, None] * global_batch
      + process_index * local
      + np.arange(local)[None, :]
  ).reshape(-1)
  return np.where(rows < num_examples, rows, -1)


def eval_dataset(
    source,
    transform: PairTransform,
    global_batch: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
    prefetch: int = 2,
    read_threads: int = DEFAULT_READ_THREADS,
) -> grain.IterDataset:
  """This process's pass over an evaluation split: in order, unaugmented, padded, with a mask."""
  if len(source) == 0:
    raise ValueError("the evaluation split is empty")
  indices = eval_indices(len(source), global_batch, process_index, process_count)
  ds = grain.MapDataset.source(indices).map(_EvalElement(source, transform))
  return _iterate(ds, global_batch // process_count, worker_count, prefetch, read_threads)


def _check_batch(global_batch: int, process_count: int, sharding, what: str) -> None:
  """``sharding.check_global_batch`` (positive, split over the processes), then the batch sharding
  itself (any sharding, not only a mesh of ``pidm_jax.sharding``) must split it."""
  sharding_lib.check_global_batch(global_batch, None, f"{what} (pairs)", process_count)
  if sharding is not None:
    try:
      sharding.shard_shape((global_batch,))
    except ValueError as e:
      raise ValueError(
          f"{what}: {global_batch} pairs per global batch cannot be split over the "
          f"batch sharding {sharding}: {e}"
      ) from None


def to_global(batch: Mapping[str, np.ndarray], sharding, global_batch: int) -> dict[str, jax.Array]:
  """Turns this process's rows of a batch into global ``jax.Array``s laid out by ``sharding``."""
  return {
      k: jax.make_array_from_process_local_data(sharding, v, (global_batch,) + v.shape[1:])
      for k, v in batch.items()
  }


def _globalise(it: grain.IterDataset, sharding, global_batch: int) -> grain.IterDataset:
  if sharding is None:
    return it
  return it.map(lambda batch: to_global(batch, sharding, global_batch))


class EvalData:
  """An evaluation split: iterate it (any number of times) for its padded global batches.

  Attributes:
    num_examples: pairs in the split.
    num_batches: global batches per pass (the last one padded, ``mask`` False on padding).
    global_batch: pairs per global batch.
  """

  def __init__(self, source, dataset: grain.IterDataset, global_batch: int, id_source=None):
    self.source = source
    self._id_source = source if id_source is None else id_source
    self._dataset = dataset
    self.global_batch = global_batch
    self.num_examples = len(source)
    self.num_batches = math.ceil(self.num_examples / global_batch)

  def __iter__(self):
    return iter(self._dataset)

  def __len__(self) -> int:
    return self.num_batches

  def ids(self, indices) -> list[tuple[str, str]]:
    """(source_id, target_id) of the records at ``indices`` (the batch field ``index``; -1 skipped)."""
    out = []
    for i in np.asarray(indices).reshape(-1):
      if i >= 0:
        r = self._id_source[int(i)]
        out.append(tuple(_text(r[f"{s}_id"]) for s in ("source", "target")))
    return out

  def person_ids(self, indices) -> list[str]:
    """The identity (``person_id``) of the records at ``indices`` (-1 skipped); where a record has
    no ``person_id``, its source image's id stands for it."""
    out = []
    for i in np.asarray(indices).reshape(-1):
      if i >= 0:
        r = self._id_source[int(i)]
        out.append(_text(r["person_id"] if "person_id" in r else r["source_id"]))
    return out


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def dataset_name(config) -> str:
  """``name/config`` of the TFDS data set of ``config.data``."""
  name = config.data.dataset
  builder_config = config.data.builder_config
  return f"{name}/{builder_config}" if builder_config else name


class DataSetError(ValueError):
  """A data set that cannot be used as configured (a missing split, damaged files)."""


class CorruptRecordError(DataSetError):
  """A record of a data set cannot be read or decoded (a damaged file or image)."""


class NamedSource:
  """A random-access data source whose read errors name the record, split and files.

  TFDS's ArrayRecord sources raise e.g. ``RuntimeError: Corrupted Riegeli/records file: chunk
  header hash mismatch`` (a damaged file) or a decoder error (a damaged image inside a record),
  neither saying which data set they come from; this wrapper raises CorruptRecordError naming
  the record's index, the split and the data set's directory, at the first bad record read.
  """

  def __init__(self, source, name: str, split: str, directory: str):
    self._source, self.name, self.split, self.directory = source, name, split, directory

  def __len__(self) -> int:
    return len(self._source)

  def _error(self, index, error: Exception) -> CorruptRecordError:
    text = " ".join(str(error).split())[:300]
    return CorruptRecordError(
        f"record {index} of split {self.split!r} of data set {self.name!r} in {self.directory} "
        f"cannot be read ({type(error).__name__}: {text}); the data set's files are damaged: "
        "rebuild it (python -m input_pipeline.build ...) or restore its files"
    )

  def __getitem__(self, index):
    try:
      return self._source[index]
    except (IndexError, KeyError):
      raise
    except Exception as e:  # pylint: disable=broad-except  (Riegeli, decoder errors)
      raise self._error(index, e) from e

  def __getitems__(self, indices):
    try:
      return self._source.__getitems__(indices)
    except Exception:  # pylint: disable=broad-except  (one by one, to name the bad record)
      return [self[i] for i in indices]

  def __repr__(self) -> str:
    return f"NamedSource({self.name!r}, split={self.split!r}, {len(self)} records)"


def data_source(config, split: str, *, images: bool = True):
  """Opens split ``split`` of ``config.data``'s TFDS data set for random access (no TensorFlow),
  as a ``NamedSource`` (its read errors name the record and the files).

  ``images=False`` leaves the images undecoded (PNG bytes), for reading ids cheaply.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from input_pipeline import build  # pylint: disable=g-import-not-at-top

  name = dataset_name(config)
  build.register(name)
  decoders = None
  if not images:
    decoders = {k: tfds.decode.SkipDecoding() for k in ("source_image", "target_image")}
  data_dir = config.data.data_dir
  builder = build.builder(name, data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"TFDS data set {name!r} is not built in data_dir {data_dir!r} ({builder.data_dir}); build "
        f"it with `python -m input_pipeline.build --dataset={name} --data_dir=... "
        "[--manual_dir=...]`"
    )
  base_splits = {part.split("[")[0].strip() for part in split.split("+")}
  if not base_splits <= set(builder.info.splits):
    raise DataSetError(
        f"TFDS data set {name!r} has no split {split!r}; it has " f"{sorted(builder.info.splits)}"
    )
  return NamedSource(
      builder.as_data_source(split=split, decoders=decoders), name, split, str(builder.data_dir)
  )


def _transform(config, train: bool) -> PairTransform:
  data = config.data
  size = tuple(int(s) for s in data.image_size)
  if len(size) != 2:
    raise ValueError(f"config.data.image_size: expected (height, width), got {data.image_size}")
  if not train:
    return PairTransform(size)
  return PairTransform(
      size,
      scale_aug=float(data.scale_aug),
      flip_prob=float(data.flip_prob),
      swap_left_right=bool(data.swap_left_right_on_flip),
  )


def create_datasets(
    config,
    batch_sharding=None,
    *,
    train_split: str | None = "train",
    eval_split: str | None = "test",
    eval_batch_size: int | None = None,
    seed: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    read_threads: int = DEFAULT_READ_THREADS,
    source_fn: Callable[[str], Any] | None = None,
):
  """The training iterator and the evaluation data of ``config``.

  Args:
    config: reads ``config.data.{dataset, builder_config, data_dir, image_size, scale_aug,
      flip_prob, swap_left_right_on_flip, shuffle_buffer_seed, worker_count, prefetch}`` and
      ``config.train.batch_size`` (samples per global step = 2 x pairs).
    batch_sharding: sharding of a global batch's leading axis (e.g. ``NamedSharding(mesh,
      P(('data', 'fsdp')))``); ``None`` yields this process's NumPy batches instead.
    train_split, eval_split: TFDS split names; ``None`` skips that part.
    eval_batch_size: pairs per global evaluation batch (default: the training pairs per step).
    seed: data seed (default ``config.data.shuffle_buffer_seed``).
    process_index, process_count: default ``jax.process_index()`` / ``jax.process_count()``.
    read_threads: grain reader threads per process (per worker when ``worker_count`` > 0).
    source_fn: split -> random-access source of pair records (default: ``data_source``).

  Returns:
    (train_iterator, eval_data): a grain ``DatasetIterator`` of training batches (see the module
    docstring for the keys; ``get_state``/``set_state`` for checkpoints) and an ``EvalData``; either
    is None when its split is None.
  """
  data = config.data
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  seed = int(data.shuffle_buffer_seed if seed is None else seed)
  worker_count = int(data.worker_count)
  prefetch = int(data.prefetch)
  default_source = source_fn is None
  source_fn = source_fn or (lambda split: data_source(config, split))
  train_pairs = sharding_lib.training_pairs(config.train.batch_size)

  train_iterator = None
  if train_split is not None:
    _check_batch(
        train_pairs,
        process_count,
        batch_sharding,
        f"config.train.batch_size={config.train.batch_size}",
    )
    source = source_fn(train_split)
    logging.info(
        "training on %s split %r: %d pairs, %d pairs per global batch",
        dataset_name(config),
        train_split,
        len(source),
        train_pairs,
    )
    ds = train_dataset(
        source,
        _transform(config, train=True),
        train_pairs // process_count,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        worker_count=worker_count,
        prefetch=prefetch,
        read_threads=read_threads,
    )
    train_iterator = iter(_globalise(ds, batch_sharding, train_pairs))

  eval_data = None
  if eval_split is not None:
    eval_pairs = train_pairs if eval_batch_size is None else int(eval_batch_size)
    _check_batch(eval_pairs, process_count, batch_sharding, f"eval batch size {eval_pairs}")
    source = source_fn(eval_split)
    ds = eval_dataset(
        source,
        _transform(config, train=False),
        eval_pairs,
        process_index=process_index,
        process_count=process_count,
        worker_count=worker_count,
        prefetch=prefetch,
        read_threads=read_threads,
    )
    id_source = data_source(config, eval_split, images=False) if default_source else None
    eval_data = EvalData(source, _globalise(ds, batch_sharding, eval_pairs), eval_pairs, id_source)
  return train_iterator, eval_data
