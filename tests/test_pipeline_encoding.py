"""pidm_jax.encoding: the pipeline's uint8 images and pose maps -> the model's float32 inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from pidm_jax import encoding
from pidm_jax import pose

CODES = np.arange(256, dtype=np.uint8)
# The official conversions, spelled out: ToTensor (x / 255 in float32), then for images
# Normalize(0.5, 0.5) ((t - 0.5) / 0.5 in float32).
OFFICIAL_POSE = CODES.astype(np.float32) / np.float32(255)
OFFICIAL_IMAGE = (OFFICIAL_POSE - np.float32(0.5)) / np.float32(0.5)


def _bits(x):
  return np.asarray(x, np.float32).view(np.uint32)


def test_host_conversion_is_the_official_one_for_every_code():
  np.testing.assert_array_equal(_bits(encoding.image_to_float(CODES)), _bits(OFFICIAL_IMAGE))
  np.testing.assert_array_equal(_bits(encoding.pose_to_float(CODES)), _bits(OFFICIAL_POSE))
  assert encoding.image_to_float(CODES).dtype == np.float32
  assert encoding.image_to_float(CODES)[[0, 255]].tolist() == [-1.0, 1.0]


def test_device_conversion_is_bit_exact_inside_and_outside_jit():
  codes = jnp.asarray(CODES)
  for fn in (lambda x: x, jax.jit):
    image = fn(lambda x: encoding.image_to_float(x))(codes)
    pose_values = fn(lambda x: encoding.pose_to_float(x))(codes)
    assert isinstance(image, jax.Array) and image.dtype == jnp.float32
    np.testing.assert_array_equal(_bits(image), _bits(OFFICIAL_IMAGE))
    np.testing.assert_array_equal(_bits(pose_values), _bits(OFFICIAL_POSE))
  # Inside a larger jitted computation (as in the train step), fused with other arithmetic.
  mixed = jax.jit(lambda x: encoding.pose_to_float(x) * 2.0 + encoding.image_to_float(x))(codes)
  np.testing.assert_array_equal(_bits(mixed), _bits(OFFICIAL_POSE * np.float32(2) + OFFICIAL_IMAGE))


def test_rendered_pose_map_converts_to_the_float_map():
  # several skeletons with non-integer coordinates and two missing joints, in a 48 x 64 frame
  rng = np.random.default_rng(5)
  for _ in range(3):
    kp = rng.uniform((2.0, 2.0), (46.0, 62.0), (18, 2))
    kp[rng.choice(18, 2, replace=False)] = -1.0
    _check_pose_map_codes(kp)


def _check_pose_map_codes(kp):
  u8 = pose.pose_map_uint8(kp, 64, 48)
  assert u8.dtype == np.uint8 and u8.shape == (64, 48, 20)
  expected = pose.pose_map(kp, 64, 48)
  np.testing.assert_array_equal(np.asarray(jax.jit(encoding.pose_to_float)(u8)), expected)
  np.testing.assert_array_equal(encoding.pose_to_float(u8), expected)


def test_sharded_batch_keeps_its_sharding_and_other_entries():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = NamedSharding(mesh, P("data"))
  rng = np.random.default_rng(0)
  host = {
      "source_image": rng.integers(0, 256, (8, 4, 4, 3), np.uint8),
      "target_pose": rng.integers(0, 256, (8, 4, 4, 20), np.uint8),
      "source_keypoints": rng.uniform(0, 4, (8, 18, 2)).astype(np.float32),
      "mask": np.ones(8, bool),
  }
  batch = jax.device_put(host, sharding)
  out = encoding.to_model_inputs(batch)
  assert set(out) == set(batch) and batch["source_image"].dtype == np.uint8  # input untouched
  assert out["source_image"].sharding == sharding and out["target_pose"].sharding == sharding
  np.testing.assert_array_equal(
      np.asarray(out["source_image"]), OFFICIAL_IMAGE[host["source_image"]]
  )
  np.testing.assert_array_equal(np.asarray(out["target_pose"]), OFFICIAL_POSE[host["target_pose"]])
  assert out["source_keypoints"] is batch["source_keypoints"] and out["mask"] is batch["mask"]


def test_float_inputs_pass_through_and_other_dtypes_are_refused():
  floats = {
      "source_image": np.zeros((1, 2, 2, 3), np.float32),
      "target_pose": jnp.ones((1, 2, 2, 20), jnp.bfloat16),
  }
  out = encoding.to_model_inputs(floats)
  assert out["source_image"] is floats["source_image"]
  assert out["target_pose"] is floats["target_pose"]
  with pytest.raises(ValueError, match=r"batch\['target_image'\].*uint8.*int32"):
    encoding.to_model_inputs({"target_image": np.zeros((1, 2, 2, 3), np.int32)})
  with pytest.raises(ValueError, match="pose map.*uint8.*bool"):
    encoding.pose_to_float(np.zeros(3, bool))


def test_train_loss_takes_pipeline_batches_as_their_float_inputs():
  """The train step converts the pipeline's uint8 batch: the loss equals that of the float batch."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from pidm_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from pidm_jax import train  # pylint: disable=g-import-not-at-top

  cfg = tiny.get_config()
  cfg.model.dropout = 0.0
  cfg.train.batch_size = 4
  cfg.mesh.data, cfg.mesh.fsdp = 1, 1
  trainer = train.Trainer(cfg, sharding_lib.create_mesh(cfg.mesh, devices=jax.devices()[:1]))
  state = trainer.init_state(0)
  h, w = cfg.data.image_size
  rng = np.random.default_rng(1)
  u8 = {
      "source_image": rng.integers(0, 256, (2, h, w, 3), np.uint8),
      "target_image": rng.integers(0, 256, (2, h, w, 3), np.uint8),
      "source_pose": rng.integers(0, 256, (2, h, w, 20), np.uint8),
      "target_pose": rng.integers(0, 256, (2, h, w, 20), np.uint8),
  }
  loss = jax.jit(trainer.loss_fn)
  key = jax.random.key(3)
  from_u8 = loss(state.params, u8, key)[0]
  from_float = loss(state.params, encoding.to_model_inputs(u8), key)[0]
  assert np.isfinite(float(from_u8))
  # (Two compiled programs: equal up to how XLA happens to fuse the rest.)
  np.testing.assert_allclose(float(from_u8), float(from_float), rtol=1e-6)
