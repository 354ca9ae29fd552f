"""The grain input pipeline: pair transform, sharded global batches, determinism, resume, eval."""

import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from PIL import Image

from configs import default
from input_pipeline import build
from input_pipeline import pipeline
from pidm_jax import encoding
from pidm_jax import pose

SIZE = 32
NUM_PAIRS = 21

# A standing figure in a 32x32 frame; joint 3 (right elbow) missing.
BASE_KEYPOINTS = np.array(
    [
        [16, 4],
        [16, 8],
        [12, 8],
        [-1, -1],
        [9, 16],
        [20, 8],
        [22, 12],
        [23, 16],
        [13, 17],
        [13, 23],
        [13, 29],
        [19, 17],
        [19, 23],
        [19, 29],
        [15, 3],
        [17, 3],
        [14, 4],
        [18, 4],
    ],
    np.float32,
)


def _record(i, size=SIZE):
  shift = np.float32(0.25 * (i % 4))
  kp = np.where(BASE_KEYPOINTS == -1, -1, BASE_KEYPOINTS * size / SIZE + shift).astype(np.float32)
  return {
      # Constant images whose value names the record: scaling, cropping and flipping keep them.
      "source_image": np.full((size, size, 3), i, np.uint8),
      "target_image": np.full((size, size, 3), 100 + i, np.uint8),
      "source_keypoints": kp,
      "target_keypoints": kp[::-1].copy(),  # another valid skeleton
      "source_id": f"s{i}".encode(),
      "target_id": f"t{i}".encode(),
      "person_id": b"p",
  }


class FakeSource:
  """A random-access split of ``n`` pair records, like a tfds data source."""

  def __init__(self, n=NUM_PAIRS, size=SIZE):
    self._records = [_record(i, size) for i in range(n)]

  def __len__(self):
    return len(self._records)

  def __getitem__(self, i):
    return self._records[i]


def _identity(batch):
  """Record index of each row of a batch, read back from the constant source image."""
  return np.asarray(batch["source_image"])[:, 0, 0, 0].astype(int)


def _config(batch_size=16, scale_aug=0.05, flip_prob=0.5):
  config = default.get_config()
  config.data.image_size = (SIZE, SIZE)
  config.data.scale_aug = scale_aug
  config.data.flip_prob = flip_prob
  config.data.worker_count = 0
  config.data.shuffle_buffer_seed = 7
  config.train.batch_size = batch_size
  return config


@pytest.fixture(scope="module")
def sharding():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  return NamedSharding(mesh, P("data"))


def _datasets(config, sharding, **kwargs):
  source = FakeSource()
  return pipeline.create_datasets(
      config, sharding, source_fn=lambda split: source, read_threads=2, **kwargs
  )


def _host(batch):
  return {k: np.asarray(v) for k, v in batch.items()}


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


# ----------------------------------------------------------------------------------------------
# The per-pair transform


def test_to_float_image_matches_the_official_normalisation():
  x = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
  t = x.astype(np.float32) / np.float32(255)
  expected = (t - np.float32(0.5)) / np.float32(0.5)
  out = encoding.image_to_float(x)
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, expected)
  assert out.min() == -1.0 and out.max() == 1.0
  # The model-side conversion of a batch gives the same values (and the pose maps' float form).
  record = _record(3)
  kp = record["source_keypoints"]
  u8 = pipeline.PairTransform((SIZE, SIZE))(record)
  converted = encoding.to_model_inputs(u8)
  np.testing.assert_array_equal(
      converted["source_image"], encoding.image_to_float(record["source_image"])
  )
  np.testing.assert_array_equal(converted["source_pose"], pose.pose_map(kp, SIZE, SIZE))
  np.testing.assert_array_equal(converted["source_keypoints"], u8["source_keypoints"])


def test_transform_without_augmentation():
  record = _record(5)
  out = pipeline.PairTransform((SIZE, SIZE))(record)
  assert set(out) == set(pipeline.PAIR_KEYS)
  for side in ("source", "target"):
    np.testing.assert_array_equal(out[f"{side}_image"], record[f"{side}_image"])
    np.testing.assert_array_equal(
        out[f"{side}_pose"], pose.pose_map_uint8(record[f"{side}_keypoints"], SIZE, SIZE)
    )
    np.testing.assert_array_equal(out[f"{side}_keypoints"], record[f"{side}_keypoints"])
    assert out[f"{side}_image"].dtype == np.uint8
    assert out[f"{side}_pose"].shape == (SIZE, SIZE, 20) and out[f"{side}_pose"].dtype == np.uint8
    assert out[f"{side}_keypoints"].dtype == np.float32


def test_transform_flip_mirrors_images_and_rendered_maps_as_the_official_code():
  record = _record(2)
  record["source_image"] = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), np.uint8)
  out = pipeline.PairTransform((SIZE, SIZE), flip_prob=1.0)(record, np.random.default_rng(0))
  np.testing.assert_array_equal(out["source_image"], record["source_image"][:, ::-1])
  for side in ("source", "target"):
    kp = record[f"{side}_keypoints"]
    np.testing.assert_array_equal(out[f"{side}_pose"], pose.pose_map_uint8(kp, SIZE, SIZE)[:, ::-1])
    np.testing.assert_array_equal(out[f"{side}_keypoints"], pose.flip_keypoints(kp, SIZE))


def test_transform_flip_with_left_right_swap_draws_the_swapped_skeleton():
  record = _record(3)
  transform = pipeline.PairTransform((SIZE, SIZE), flip_prob=1.0, swap_left_right=True)
  out = transform(record, np.random.default_rng(0))
  for side in ("source", "target"):
    flipped = pose.flip_keypoints(record[f"{side}_keypoints"], SIZE, swap_left_right=True)
    np.testing.assert_array_equal(out[f"{side}_pose"], pose.pose_map_uint8(flipped, SIZE, SIZE))
    np.testing.assert_allclose(out[f"{side}_keypoints"], flipped)
    np.testing.assert_array_equal(out[f"{side}_image"], record[f"{side}_image"][:, ::-1])


def test_transform_scale_crop_is_independent_per_image_and_poses_follow_keypoints():
  record = _record(1)
  record["source_image"] = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), np.uint8)
  record["target_image"] = np.random.default_rng(2).integers(0, 256, (SIZE, SIZE, 3), np.uint8)
  transform = pipeline.PairTransform((SIZE, SIZE), scale_aug=0.5, flip_prob=0.0)
  out = transform(record, np.random.default_rng(123))
  # The same draws, made by hand: target's scale and crop first, then the source's.
  rng = np.random.default_rng(123)
  for side in ("target", "source"):
    scaled, offset = pose.random_scale_crop_params(SIZE, SIZE, rng, 0.5)
    image, kp = pose.scale_crop(
        record[f"{side}_image"], record[f"{side}_keypoints"], scaled, offset
    )
    np.testing.assert_array_equal(out[f"{side}_image"], image)
    np.testing.assert_allclose(out[f"{side}_keypoints"], kp, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out[f"{side}_pose"], pose.pose_map_uint8(kp, SIZE, SIZE))
  assert not np.allclose(out["source_keypoints"], record["source_keypoints"])


def test_transform_stretches_another_stored_size():
  record = _record(4, size=16)
  out = pipeline.PairTransform((SIZE, SIZE))(record)
  kp = pose.scale_keypoints(record["source_keypoints"], (16, 16), (SIZE, SIZE))
  np.testing.assert_allclose(out["source_keypoints"], kp)
  np.testing.assert_array_equal(out["source_pose"], pose.pose_map_uint8(kp, SIZE, SIZE))
  assert out["source_image"].shape == (SIZE, SIZE, 3)


# ----------------------------------------------------------------------------------------------
# Training batches


def test_train_batches_are_global_and_sharded(sharding):
  train, _ = _datasets(_config(), sharding, eval_split=None)
  batch = next(train)
  shapes = {
      "source_image": (8, SIZE, SIZE, 3),
      "target_image": (8, SIZE, SIZE, 3),
      "source_pose": (8, SIZE, SIZE, 20),
      "target_pose": (8, SIZE, SIZE, 20),
      "source_keypoints": (8, 18, 2),
      "target_keypoints": (8, 18, 2),
  }
  assert {k: v.shape for k, v in batch.items()} == shapes
  dtypes = {
      "source_image": np.uint8,
      "target_image": np.uint8,
      "source_pose": np.uint8,
      "target_pose": np.uint8,
      "source_keypoints": np.float32,
      "target_keypoints": np.float32,
  }
  for k, v in batch.items():
    assert isinstance(v, jax.Array) and v.dtype == dtypes[k], k
    assert v.sharding == sharding, k
    assert len(v.addressable_shards) == 8
    assert all(s.data.shape == (1,) + shapes[k][1:] for s in v.addressable_shards), k
  host = _host(batch)
  # Rows are distinct records (a shuffled epoch), each a consistent pair.
  ids = _identity(host)
  assert len(set(ids)) == 8 and set(ids) <= set(range(NUM_PAIRS))
  np.testing.assert_array_equal(host["target_image"][:, 0, 0, 0], 100 + ids)
  # The model's inputs, converted on the devices where the batch lives, keep its sharding.
  model_inputs = jax.jit(encoding.to_model_inputs)(batch)
  for k in ("source_image", "target_image", "source_pose", "target_pose"):
    assert model_inputs[k].dtype == np.float32 and model_inputs[k].sharding == sharding, k
  images = np.asarray(model_inputs["source_image"])
  assert images.min() >= -1 and images.max() <= 1
  np.testing.assert_array_equal(images, encoding.image_to_float(host["source_image"]))
  np.testing.assert_array_equal(
      np.asarray(model_inputs["target_pose"]), host["target_pose"] / np.float32(255)
  )


def test_train_batches_on_the_data_fsdp_mesh():
  """The batch sharding of pidm_jax.sharding: the batch split over ('data', 'fsdp') = (4, 2)."""
  from pidm_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top

  config = _config()
  config.mesh.data, config.mesh.fsdp = 4, 2
  batch_sharding = sharding_lib.batch_sharding(sharding_lib.create_mesh(config.mesh))
  train, evaluation = _datasets(config, batch_sharding)
  for batch in (next(train), next(iter(evaluation))):
    for k, v in batch.items():
      assert v.sharding == batch_sharding and v.shape[0] == 8, k
      assert sorted(s.index[0].start for s in v.addressable_shards) == list(range(8)), k


def test_an_epoch_visits_every_pair_once_then_reshuffles(sharding):
  config = _config(batch_size=6, scale_aug=0.0, flip_prob=0.0)  # 3 pairs per batch: 7 per epoch
  source = FakeSource()
  train, _ = pipeline.create_datasets(config, None, eval_split=None, source_fn=lambda s: source)
  epochs = [np.concatenate([_identity(next(train)) for _ in range(7)]) for _ in range(2)]
  for ids in epochs:
    assert sorted(ids) == list(range(NUM_PAIRS))
  assert list(epochs[0]) != list(epochs[1]) != list(range(NUM_PAIRS))


def test_same_seed_same_batches_other_seed_other_batches(sharding):
  config = _config()
  a, _ = _datasets(config, sharding, eval_split=None)
  b, _ = _datasets(config, sharding, eval_split=None)
  c, _ = _datasets(config, sharding, eval_split=None, seed=8)
  first = [_host(next(a)) for _ in range(3)]
  for batch in first:
    _assert_batches_equal(batch, _host(next(b)))
  other = [_host(next(c)) for _ in range(3)]
  assert any(not np.array_equal(x["source_pose"], y["source_pose"]) for x, y in zip(first, other))


def test_resume_from_saved_iterator_state(sharding):
  config = _config()
  train, _ = _datasets(config, sharding, eval_split=None)
  for _ in range(2):
    next(train)
  state = json.loads(json.dumps(train.get_state()))  # what a checkpoint stores
  expected = [_host(next(train)) for _ in range(3)]
  resumed, _ = _datasets(config, sharding, eval_split=None)
  resumed.set_state(state)
  for batch in expected:
    _assert_batches_equal(batch, _host(next(resumed)))


def test_iterator_state_through_grain_checkpoint_handler(tmp_path, sharding):
  """The training iterator is a grain DatasetIterator: grain's Orbax handler saves and restores it."""
  import grain  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top

  config = _config(scale_aug=0.0)
  train, _ = _datasets(config, sharding, eval_split=None)
  assert isinstance(train, grain.DatasetIterator)
  next(train)
  handler = grain.checkpoint.CheckpointHandler()
  handler.save(epath.Path(tmp_path), args=grain.checkpoint.CheckpointSave(train))
  expected = _host(next(train))
  resumed, _ = _datasets(config, sharding, eval_split=None)
  handler.restore(epath.Path(tmp_path), args=grain.checkpoint.CheckpointRestore(resumed))
  _assert_batches_equal(expected, _host(next(resumed)))


def test_processes_read_disjoint_shares():
  config = _config(batch_size=4, scale_aug=0.0, flip_prob=0.0)  # 2 pairs per step: 1 per process
  source = FakeSource()
  seen = {}
  for p in range(2):
    train, _ = pipeline.create_datasets(
        config, None, eval_split=None, process_index=p, process_count=2, source_fn=lambda s: source
    )
    share = len(range(p, NUM_PAIRS, 2))
    seen[p] = np.concatenate([_identity(next(train)) for _ in range(share)])
    assert sorted(seen[p]) == list(range(p, NUM_PAIRS, 2))


# ----------------------------------------------------------------------------------------------
# Evaluation


def test_eval_covers_every_pair_exactly_once_in_order(sharding):
  _, evaluation = _datasets(_config(), sharding, train_split=None)
  assert (evaluation.num_examples, evaluation.num_batches, evaluation.global_batch) == (21, 3, 8)
  indices, masks = [], []
  for batch in evaluation:
    assert batch["mask"].dtype == np.bool_ and batch["index"].dtype == np.int32
    assert batch["mask"].sharding == sharding and batch["source_pose"].shape == (8, SIZE, SIZE, 20)
    host = _host(batch)
    real = host["mask"]
    # No augmentation: the rows are the records themselves.
    np.testing.assert_array_equal(_identity(host)[real], host["index"][real])
    for i in np.flatnonzero(real):
      record = _record(int(host["index"][i]))
      np.testing.assert_array_equal(
          host["target_pose"][i], pose.pose_map_uint8(record["target_keypoints"], SIZE, SIZE)
      )
    assert not host["source_image"][~real].any() and not host["source_pose"][~real].any()
    indices.append(host["index"])
    masks.append(real)
  indices, masks = np.concatenate(indices), np.concatenate(masks)
  assert list(indices[masks]) == list(range(NUM_PAIRS))
  assert list(indices[~masks]) == [-1, -1, -1]
  # Iterating again starts over.
  again = next(iter(evaluation))
  assert list(np.asarray(again["index"])) == list(range(8))
  assert evaluation.ids([0, -1, 20]) == [("s0", "t0"), ("s20", "t20")]


def test_eval_indices_split_over_processes():
  parts = [pipeline.eval_indices(21, 8, p, 4) for p in range(4)]
  assert all(len(part) == 6 for part in parts)  # 3 batches of 2 rows each
  both = np.concatenate(parts)
  assert sorted(both[both >= 0]) == list(range(21)) and (both < 0).sum() == 3
  # Global batch i is rows i*8 ... i*8+7, process p holding rows 2p, 2p+1 of it.
  assert list(parts[1][:2]) == [2, 3] and list(parts[1][2:4]) == [10, 11]


# ----------------------------------------------------------------------------------------------
# Errors and the TFDS path


def test_batch_size_errors(sharding):
  with pytest.raises(ValueError, match="must be even"):
    _datasets(_config(batch_size=15), sharding)
  with pytest.raises(ValueError, match="batch_size=12.*6 pairs.*batch sharding"):
    _datasets(_config(batch_size=12), sharding)
  with pytest.raises(ValueError, match="3 processes"):
    _datasets(_config(batch_size=16), None, process_index=0, process_count=3)


def test_missing_dataset_names_the_build_command(tmp_path):
  config = _config()
  config.data.dataset = "person_folder"
  config.data.builder_config = "res64"
  config.data.data_dir = str(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match="python -m input_pipeline.build"):
    pipeline.create_datasets(config, None)


def test_create_datasets_reads_a_built_tfds_split(tmp_path, sharding):
  manual = tmp_path / "manual"
  names = [f"p{i // 2}/{i}.png" for i in range(4)]
  for i, name in enumerate(names):
    os.makedirs(manual / "images" / os.path.dirname(name), exist_ok=True)
    os.makedirs(manual / "keypoints" / os.path.dirname(name), exist_ok=True)
    Image.fromarray(np.full((40, 24, 3), 10 * i, np.uint8)).save(manual / "images" / name)
    np.save(
        manual / "keypoints" / name.replace(".png", ".npy"),
        np.where(BASE_KEYPOINTS == -1, -1, BASE_KEYPOINTS * [24 / 32, 40 / 32]),
    )
  (manual / "train_pairs.txt").write_text(f"{names[0]},{names[1]}\n{names[2]},{names[3]}\n")
  (manual / "test_pairs.txt").write_text(f"{names[1]},{names[0]}\n")
  build.build("person_folder/res64", str(tmp_path / "data"), str(manual))
  config = _config()
  config.data.dataset = "person_folder"
  config.data.builder_config = "res64"
  config.data.data_dir = str(tmp_path / "data")
  train, evaluation = pipeline.create_datasets(config, sharding)
  batch = next(train)
  assert (
      batch["target_pose"].shape == (8, SIZE, SIZE, 20)
      and batch["source_image"].sharding == sharding
  )
  eval_batch = next(iter(evaluation))
  assert list(np.asarray(eval_batch["mask"])) == [True] + [False] * 7
  assert evaluation.ids(eval_batch["index"]) == [(names[0], names[1])]
