"""InceptionV3 loaders for both weight sets on random state_dicts, preprocessing and pooling rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pidm_jax.evaluation import inception


def _convs():
  """(name, in, out, kh, kw) of every BasicConv2d, transcribed from torchvision's Inception3."""
  convs = [
      ("Conv2d_1a_3x3", 3, 32, 3, 3),
      ("Conv2d_2a_3x3", 32, 32, 3, 3),
      ("Conv2d_2b_3x3", 32, 64, 3, 3),
      ("Conv2d_3b_1x1", 64, 80, 1, 1),
      ("Conv2d_4a_3x3", 80, 192, 3, 3),
  ]
  for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
    convs += [
        (f"{name}.branch1x1", cin, 64, 1, 1),
        (f"{name}.branch5x5_1", cin, 48, 1, 1),
        (f"{name}.branch5x5_2", 48, 64, 5, 5),
        (f"{name}.branch3x3dbl_1", cin, 64, 1, 1),
        (f"{name}.branch3x3dbl_2", 64, 96, 3, 3),
        (f"{name}.branch3x3dbl_3", 96, 96, 3, 3),
        (f"{name}.branch_pool", cin, pool, 1, 1),
    ]
  convs += [
      ("Mixed_6a.branch3x3", 288, 384, 3, 3),
      ("Mixed_6a.branch3x3dbl_1", 288, 64, 1, 1),
      ("Mixed_6a.branch3x3dbl_2", 64, 96, 3, 3),
      ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3),
  ]
  for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
    convs += [
        (f"{name}.branch1x1", 768, 192, 1, 1),
        (f"{name}.branch7x7_1", 768, c7, 1, 1),
        (f"{name}.branch7x7_2", c7, c7, 1, 7),
        (f"{name}.branch7x7_3", c7, 192, 7, 1),
        (f"{name}.branch7x7dbl_1", 768, c7, 1, 1),
        (f"{name}.branch7x7dbl_2", c7, c7, 7, 1),
        (f"{name}.branch7x7dbl_3", c7, c7, 1, 7),
        (f"{name}.branch7x7dbl_4", c7, c7, 7, 1),
        (f"{name}.branch7x7dbl_5", c7, 192, 1, 7),
        (f"{name}.branch_pool", 768, 192, 1, 1),
    ]
  convs += [
      ("Mixed_7a.branch3x3_1", 768, 192, 1, 1),
      ("Mixed_7a.branch3x3_2", 192, 320, 3, 3),
      ("Mixed_7a.branch7x7x3_1", 768, 192, 1, 1),
      ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
      ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1),
      ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3),
  ]
  for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
    convs += [
        (f"{name}.branch1x1", cin, 320, 1, 1),
        (f"{name}.branch3x3_1", cin, 384, 1, 1),
        (f"{name}.branch3x3_2a", 384, 384, 1, 3),
        (f"{name}.branch3x3_2b", 384, 384, 3, 1),
        (f"{name}.branch3x3dbl_1", cin, 448, 1, 1),
        (f"{name}.branch3x3dbl_2", 448, 384, 3, 3),
        (f"{name}.branch3x3dbl_3a", 384, 384, 1, 3),
        (f"{name}.branch3x3dbl_3b", 384, 384, 3, 1),
        (f"{name}.branch_pool", cin, 192, 1, 1),
    ]
  return convs


def _state_dict(network, seed=0):
  """Random state_dict with the key names and shapes of the given weight file."""
  rng = np.random.default_rng(seed)
  sd = {}
  for name, cin, cout, kh, kw in _convs():
    sd[f"{name}.conv.weight"] = (
        rng.normal(size=(cout, cin, kh, kw)) * np.sqrt(2.0 / (cin * kh * kw))
    ).astype(np.float32)
    sd[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    sd[f"{name}.bn.bias"] = rng.uniform(-0.2, 0.2, cout).astype(np.float32)
    sd[f"{name}.bn.running_mean"] = rng.uniform(-0.5, 0.5, cout).astype(np.float32)
    sd[f"{name}.bn.running_var"] = rng.uniform(0.5, 2.0, cout).astype(np.float32)
    if network == "torchvision":
      sd[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
  classes = 1008 if network == "pt_inception" else 1000
  sd["fc.weight"] = np.zeros((classes, 2048), np.float32)
  sd["fc.bias"] = np.zeros((classes,), np.float32)
  if network == "torchvision":
    sd["AuxLogits.conv0.conv.weight"] = np.zeros((128, 768, 1, 1), np.float32)
    sd["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  return sd


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("inception")
  files = {}
  for network in inception.NETWORKS:
    files[network] = folder / f"{network}.npz"
    np.savez(files[network], **_state_dict(network))
  return files


def test_both_weight_sets_load_and_run(weight_files):
  rng = np.random.default_rng(1)
  image = jnp.asarray(rng.uniform(0, 1, (1, 64, 44, 3)), jnp.float32)
  outs = {}
  for network, path in weight_files.items():
    model = inception.load_inception(path, network)
    assert model.network == network
    kernel = model.Mixed_6b.branch7x7_2.conv.kernel.value
    assert kernel.shape == (1, 7, 128, 128)
    want = _state_dict(network)["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(np.asarray(kernel), want)
    np.testing.assert_array_equal(
        np.asarray(model.Mixed_7c.branch_pool.bn.var.value),
        _state_dict(network)["Mixed_7c.branch_pool.bn.running_var"],
    )
    outs[network] = np.asarray(jax.jit(lambda m, x: m(x))(model, image))
    assert outs[network].shape == (1, inception.FEATURE_DIM)
    assert np.all(np.isfinite(outs[network])) and np.all(outs[network] >= 0)
    assert outs[network].std() > 0
  # Same weights, different preprocessing and pooling rules: different features.
  assert np.abs(outs["pt_inception"] - outs["torchvision"]).max() > 1e-3


def test_loader_errors_name_keys(weight_files, tmp_path):
  sd = _state_dict("pt_inception")
  del sd["Mixed_6c.branch7x7dbl_3.bn.running_var"]
  sd["Mixed_5b.extra.weight"] = np.zeros(3, np.float32)
  np.savez(tmp_path / "broken.npz", **sd)
  with pytest.raises(
      ValueError,
      match=r"broken.npz.*missing Mixed_6c/branch7x7dbl_3/bn/var.*"
      r"unexpected Mixed_5b/extra/weight",
  ):
    inception.load_inception(tmp_path / "broken.npz", "pt_inception")
  sd = _state_dict("pt_inception")
  sd["Conv2d_1a_3x3.conv.weight"] = np.zeros((32, 3, 5, 5), np.float32)
  np.savez(tmp_path / "shape.npz", **sd)
  with pytest.raises(ValueError, match=r"Conv2d_1a_3x3/conv/kernel: expected \(3, 3, 3, 32\)"):
    inception.load_inception(tmp_path / "shape.npz", "pt_inception")
  with pytest.raises(ValueError, match="unknown InceptionV3 network 'tf'"):
    inception.load_inception(weight_files["pt_inception"], "tf")


def test_resize_follows_torch_bilinear_rule():
  # align_corners=False upsampling of [0, 1] by 2 gives [0, .25, .75, 1] (edges clamp).
  m = inception.bilinear_matrix(4, 2)
  np.testing.assert_allclose(m @ np.array([0.0, 1.0]), [0, 0.25, 0.75, 1.0])
  # For upsampling, the rule is the half-pixel bilinear of jax.image.resize.
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.uniform(0, 1, (1, 256, 176, 3)), jnp.float32)
  got = inception.resize_bilinear(x, (299, 299))
  want = jax.image.resize(x, (1, 299, 299, 3), "linear", antialias=False)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=5e-5)
  # Downsampling picks the two nearest source pixels, without antialiasing (as torch does).
  np.testing.assert_allclose(inception.bilinear_matrix(2, 4) @ np.arange(4.0), [0.5, 2.5])


def test_tf_fid_pools_exclude_padding():
  x = jnp.ones((1, 4, 4, 1))
  no_pad = np.asarray(inception._avg_pool_3x3(x, count_include_pad=False))
  with_pad = np.asarray(inception._avg_pool_3x3(x, count_include_pad=True))
  np.testing.assert_allclose(no_pad, 1.0)
  assert with_pad[0, 0, 0, 0] == pytest.approx(4 / 9) and with_pad[0, 1, 1, 0] == 1.0
  neg = -jnp.ones((1, 4, 4, 1))
  pooled = inception._max_pool_3x3(neg, stride=1, padding=((1, 1), (1, 1)))
  np.testing.assert_allclose(np.asarray(pooled), -1.0)  # padding never wins a max
