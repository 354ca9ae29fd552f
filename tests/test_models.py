"""Tests of the PIDM modules: shapes, parameter counts, wiring, initialisation, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default, tiny
from pidm_jax.models import PIDM, down_path_plan, timestep_embedding, up_path_plan
from pidm_jax.models.layers import CrossAttention


def _count(tree):
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


@pytest.fixture(scope="module")
def paper_model():
  """The paper's model, abstract (shapes only): built once via eval_shape."""
  model = nnx.eval_shape(lambda: PIDM(default.get_config().model, rngs=nnx.Rngs(0)))
  model.eval()
  return model


@nnx.jit
def _forward(model, noisy, pose, t, source):
  return model(noisy, pose, t, source)


@pytest.fixture(scope="module")
def tiny_model():
  model = PIDM(tiny.get_config().model, rngs=nnx.Rngs(0))
  model.eval()
  return model


def _randomise(model, seed=1, scale=0.05):
  """Gives every parameter (incl. the zero-initialised ones) random non-zero values."""
  params = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  new = [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
  nnx.update(model, jax.tree.unflatten(treedef, new))
  return model


def test_paper_parameter_counts_via_eval_shape(paper_model):
  model = paper_model
  assert _count(nnx.state(model, nnx.Param)) == 162_374_406
  assert _count(nnx.state(model.denoiser, nnx.Param)) == 131_212_038
  assert _count(nnx.state(model.encoder, nnx.Param)) == 31_162_368
  # 668 live official tensors; ours split to_kv into to_k and to_v (+7 tensors x 2).
  assert len(jax.tree.leaves(nnx.state(model, nnx.Param))) == 668 + 14


def test_paper_plan_matches_reference_table():
  cfg = default.get_config().model
  down = down_path_plan(cfg)
  up = up_path_plan(cfg)
  assert len(down) == 18 and len(up) == 18
  assert [b.index for b in down if b.attention] == [11, 14, 17]
  assert [b.index for b in up if b.attention] == [1, 4, 7]
  assert [b.index for b in up if b.upsample] == [2, 5, 8, 11, 14]
  assert [b.index for b in down if b.kind == "down"] == [3, 6, 9, 12, 15]
  assert [b.out_channels for b in down] == [128] * 7 + [256] * 6 + [512] * 5
  # skip widths popped by the decoder (as the official UNet in unet.py does)
  assert [b.skip_channels for b in up] == [
      512,
      512,
      512,
      512,
      512,
      256,
      256,
      256,
      256,
      256,
      256,
      128,
      128,
      128,
      128,
      128,
      128,
      128,
  ]
  assert [b.in_channels + b.skip_channels for b in up][:8] == [1024] * 5 + [768, 768, 512]


def test_all_parameters_have_logical_axes():
  model = nnx.eval_shape(lambda: PIDM(tiny.get_config().model, rngs=nnx.Rngs(0)))
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    axes = var.get_metadata().get("out_sharding")
    assert axes is not None and len(axes) == var.value.ndim, path


@pytest.mark.parametrize("size", [(32, 32), (32, 64), (64, 32)])
def test_forward_shapes(tiny_model, size):
  h, w = size
  b = 2
  src = jnp.zeros((b, h, w, 3))
  pose = jnp.zeros((b, h, w, 20))
  out = _forward(tiny_model, src, pose, jnp.array([0, 999]), src)
  assert out.shape == (b, h, w, 6) and out.dtype == jnp.float32
  feats = jax.eval_shape(tiny_model.encode, src)
  assert len(feats) == len(down_path_plan(tiny.get_config().model)) == 4
  assert feats[-1].shape == (b, h // 2, w // 2, 64)


def test_output_is_exactly_zero_at_init():
  model = PIDM(tiny.get_config().model, rngs=nnx.Rngs(3))
  model.eval()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  pose = jnp.asarray(rng.uniform(size=(2, 32, 32, 20)), jnp.float32)
  out = _forward(model, x, pose, jnp.array([3, 700]), x)
  assert np.all(np.asarray(out) == 0.0)


def test_cross_attention_routing(tiny_model):
  """Only the encoder features the routing names reach the output."""
  model = _randomise(nnx.clone(tiny_model))
  model.eval()
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(1, 32, 32, 3)), jnp.float32)
  pose = jnp.asarray(rng.uniform(size=(1, 32, 32, 20)), jnp.float32)

  feats = nnx.jit(lambda m, x: m.encode(x))(model, x)
  run = nnx.jit(lambda m, f: m.denoise(x, pose, jnp.array([10]), f))
  denoise = lambda f: run(model, f)
  base = np.asarray(denoise(feats))
  used = set()
  for i in range(len(feats)):
    bumped = list(feats)
    bumped[i] = feats[i] + 1.0
    if not np.array_equal(np.asarray(denoise(tuple(bumped))), base):
      used.add(i)
  # tiny plan (conv, res, down, res+attn | middle | res+attn, res+up, res, res): attention in
  # input block 3, the middle (reads 3) and output block 0 (reads 4-1-0 = 3); nothing else.
  assert used == {3}
  cfg = tiny.get_config().model
  assert [b.index for b in down_path_plan(cfg) if b.attention] == [3]
  assert [(b.index, b.attention, b.upsample) for b in up_path_plan(cfg)] == [
      (0, True, False),
      (1, False, True),
      (2, False, False),
      (3, False, False),
  ]


def test_timestep_embedding_cos_first():
  t = np.array([0, 1, 999])
  emb = np.asarray(timestep_embedding(jnp.asarray(t), 8))
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  expected = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], -1)
  np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-5)


def test_cross_attention_matches_numpy():
  c = 32
  attn = CrossAttention(
      c, num_groups=8, norm_eps=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0)
  )
  attn.proj_out.kernel.value = jax.random.normal(jax.random.key(1), (c, c)) * 0.1
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 4, 4, c)).astype(np.float32)
  ctx = rng.normal(size=(2, 4, 4, c)).astype(np.float32)
  out = np.asarray(attn(jnp.asarray(x), jnp.asarray(ctx)))

  p = jax.tree.map(np.asarray, nnx.state(attn, nnx.Param))
  xg = x.astype(np.float64).reshape(2, 16, 8, 4)  # 8 contiguous groups of 4 channels
  mu = xg.mean(axis=(1, 3), keepdims=True)
  var = xg.var(axis=(1, 3), keepdims=True)
  xn = ((xg - mu) / np.sqrt(var + 1e-5)).reshape(2, 16, c)
  xn = xn * p["norm"]["norm"]["scale"] + p["norm"]["norm"]["bias"]
  lin = lambda name, v: v @ p[name]["kernel"] + p[name]["bias"]
  q = lin("to_q", xn)
  k = lin("to_k", ctx.reshape(2, 16, c))
  v = lin("to_v", ctx.reshape(2, 16, c))
  w = q @ k.transpose(0, 2, 1) / np.sqrt(c)
  w = np.exp(w - w.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  expected = x.reshape(2, 16, c) + lin("proj_out", w @ v)
  np.testing.assert_allclose(out.reshape(2, 16, c), expected, rtol=1e-4, atol=1e-5)


def test_condition_dropout_rate():
  cfg = tiny.get_config().model
  cfg.cond_drop_prob = 0.3
  cfg.pose_drop_prob = 0.2
  model = PIDM(cfg, rngs=nnx.Rngs(0))
  n = 4000
  src = jnp.ones((n, 1, 1, 3))
  pose = jnp.full((n, 1, 1, 20), 0.5)
  s, p = model.drop_conditions(src, pose, jax.random.key(0))
  src_dropped = np.asarray(jnp.all(s == 0, axis=(1, 2, 3)))
  pose_dropped = np.asarray(jnp.all(p[..., 3:] == 1.0, axis=(1, 2, 3)))
  assert abs(src_dropped.mean() - 0.3) < 0.03
  assert abs(pose_dropped.mean() - 0.2) < 0.03
  # kept samples are untouched; dropped poses are the null pose (black skeleton, limb maps 1)
  assert np.all(np.asarray(s)[~src_dropped] == 1.0)
  assert np.all(np.asarray(p)[pose_dropped][..., :3] == 0.0)
  # independent draws for source and pose
  assert 0 < np.mean(src_dropped & pose_dropped) < 0.3


def test_condition_dropout_only_in_train_mode():
  model = PIDM(tiny.get_config().model, rngs=nnx.Rngs(0))
  x = jnp.zeros((2, 32, 32, 3))
  pose = jnp.zeros((2, 32, 32, 20))
  model.train()
  with pytest.raises(ValueError, match="rng"):
    model(x, pose, jnp.array([1, 2]), x)
  model.eval()
  assert jax.eval_shape(model, x, pose, jnp.array([1, 2]), x).shape == (2, 32, 32, 6)


def test_dropout_follows_train_eval():
  cfg = tiny.get_config().model
  cfg.dropout = 0.5
  cfg.cond_drop_prob = 0.0
  model = _randomise(PIDM(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(1, 32, 32, 3)), jnp.float32)
  pose = jnp.zeros((1, 32, 32, 20))
  t = jnp.array([5])
  model.eval()
  a, b = _forward(model, x, pose, t, x), _forward(model, x, pose, t, x)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  model.train()
  c = _forward(model, x, pose, t, x)
  assert not np.allclose(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize(
    "h,w,expected",
    [
        (256, 176, "256x176.*multiples of 32.*256x160, 256x192"),
        (100, 64, "100x64.*96x64, 128x64"),
    ],
)
def test_invalid_image_size_message(paper_model, h, w, expected):
  model = paper_model
  with pytest.raises(ValueError, match=expected):
    jax.eval_shape(model.encode, jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))


def test_invalid_channel_counts(tiny_model):
  x = jnp.zeros((1, 32, 32, 3))
  with pytest.raises(ValueError, match="pose map must have 20 channels"):
    jax.eval_shape(tiny_model, x, jnp.zeros((1, 32, 32, 18)), jnp.array([1]), x)
  with pytest.raises(ValueError, match="source image must have 3 channels"):
    jax.eval_shape(tiny_model.encode, jnp.zeros((1, 32, 32, 4)))
  with pytest.raises(ValueError, match="NHWC"):
    jax.eval_shape(tiny_model.encode, jnp.zeros((32, 32, 3)))
  with pytest.raises(ValueError, match="encoder features"):
    feats = jax.eval_shape(tiny_model.encode, x)[:-1]
    jax.eval_shape(tiny_model.denoise, x, jnp.zeros((1, 32, 32, 20)), jnp.array([1]), feats)


def test_invalid_model_config():
  cfg = tiny.get_config().model
  cfg.base_width = 20
  with pytest.raises(ValueError, match="num_groups"):
    PIDM(cfg, rngs=nnx.Rngs(0))
