"""Tests of pidm_jax.convert: safe checkpoint loading (pidm_jax.tensor_files, through the names
convert re-exports; more in test_tensor_files.py), official <-> pidm_jax mapping, the CLI."""

import json
import pickle
import re
import struct
import sys
import types
import zipfile

import ml_dtypes
import numpy as np
import pytest

from pidm_jax import convert

# -------------------------------------------------------------------------------------------------
# Hand-written pickles (no torch): a tiny opcode emitter for protocol-2 streams.
# -------------------------------------------------------------------------------------------------


class _Ops:
  """Builds a pickle opcode by opcode, the way torch.save's pickles are laid out."""

  def __init__(self):
    self.b = bytearray(b"\x80\x02")

  def global_(self, module, name):
    self.b += b"c" + module.encode() + b"\n" + name.encode() + b"\n"
    return self

  def str_(self, s):
    data = s.encode()
    self.b += b"X" + struct.pack("<I", len(data)) + data
    return self

  def int_(self, i):
    self.b += b"J" + struct.pack("<i", i)
    return self

  def raw(self, op):
    self.b += op
    return self

  def tuple_of_ints(self, values):
    self.raw(b"(")
    for v in values:
      self.int_(v)
    return self.raw(b"t")

  def tensor(self, storage_type, key, numel, offset, size, stride):
    """REDUCE(torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False, OD()))."""
    self.global_("torch._utils", "_rebuild_tensor_v2").raw(b"(")
    self.raw(b"(").str_("storage").global_("torch", storage_type).str_(key).str_("cpu")
    self.int_(numel).raw(b"tQ")
    self.int_(offset).tuple_of_ints(size).tuple_of_ints(stride).raw(b"\x89")
    self.global_("collections", "OrderedDict").raw(b")R")
    return self.raw(b"tR")

  def done(self):
    return bytes(self.b + b".")


def _write_torch_zip(path, pickle_bytes, storages, byteorder="little"):
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pickle_bytes)
    zf.writestr("archive/byteorder", byteorder)
    for key, data in storages.items():
      zf.writestr(f"archive/data/{key}", data)
    zf.writestr("archive/version", "3\n")


def test_hand_written_zip_pickle_loads_without_torch(tmp_path):
  a = np.arange(12, dtype=np.float32)
  h = np.array([1.5, -2.0, 3.25], np.float16)
  bf = np.array([0.5, 1.0, -8.0, 3.0], ml_dtypes.bfloat16)
  ops = _Ops().raw(b"}(")  # {"w": ..., "wt": ..., "row": ..., "h": ..., "bf": ..., "conf": ...}
  ops.str_("w").tensor("FloatStorage", "0", 12, 0, (3, 4), (4, 1))
  ops.str_("wt").tensor("FloatStorage", "0", 12, 0, (4, 3), (1, 4))  # transposed view
  ops.str_("row").tensor("FloatStorage", "0", 12, 4, (4,), (1,))  # storage offset
  ops.str_("h").tensor("HalfStorage", "1", 3, 0, (3,), (1,))
  ops.str_("bf").tensor("BFloat16Storage", "2", 4, 0, (2, 2), (2, 1))
  ops.str_("conf").global_("tensorfn.config", "DiffusionConfig").raw(b")\x81")  # NEWOBJ
  ops.raw(b"}").str_("lr").int_(3).raw(b"sb")  # BUILD with {"lr": 3}
  ops.raw(b"u")
  path = tmp_path / "hand.pt"
  _write_torch_zip(path, ops.done(), {"0": a.tobytes(), "1": h.tobytes(), "2": bf.tobytes()})

  out = convert.load_torch_checkpoint(path)
  np.testing.assert_array_equal(out["w"], a.reshape(3, 4))
  np.testing.assert_array_equal(out["wt"], a.reshape(3, 4).T)
  np.testing.assert_array_equal(out["row"], a[4:8])
  assert out["h"].dtype == np.float16
  np.testing.assert_array_equal(out["h"], h)
  assert out["bf"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(out["bf"], bf.reshape(2, 2))
  conf = out["conf"]
  assert isinstance(conf, convert.Placeholder)
  assert (type(conf).module, type(conf).name) == ("tensorfn.config", "DiffusionConfig")
  assert conf.state == {"lr": 3}


def test_big_endian_storage(tmp_path):
  a = np.arange(6, dtype=np.float32) - 2.5
  ops = _Ops().raw(b"}(").str_("w").tensor("FloatStorage", "0", 6, 0, (2, 3), (3, 1)).raw(b"u")
  path = tmp_path / "be.pt"
  _write_torch_zip(path, ops.done(), {"0": a.astype(">f4").tobytes()}, byteorder="big")
  np.testing.assert_array_equal(convert.load_torch_checkpoint(path)["w"], a.reshape(2, 3))


def test_tensor_reading_past_its_storage_is_rejected(tmp_path):
  a = np.arange(6, dtype=np.float32)
  ops = _Ops().raw(b"}(").str_("w").tensor("FloatStorage", "0", 6, 0, (2, 3), (4, 1)).raw(b"u")
  path = tmp_path / "oob.pt"
  _write_torch_zip(path, ops.done(), {"0": a.tobytes()})
  with pytest.raises(convert.CheckpointFormatError, match="past the end"):
    convert.load_torch_checkpoint(path)


@pytest.mark.parametrize(
    "module,name",
    [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("__builtin__", "exec"),
        ("subprocess", "Popen"),
        ("builtins", "getattr"),
        ("importlib", "import_module"),
    ],
)
def test_malicious_pickle_is_refused_without_running(tmp_path, module, name):
  marker = tmp_path / "pwned"
  command = (
      f"open({str(marker)!r}, 'w').write('x')" if name in ("eval", "exec") else (f"touch {marker}")
  )
  ops = _Ops().raw(b"}(").str_("ok").tensor("FloatStorage", "0", 1, 0, (1,), (1,))
  ops.str_("evil").global_(module, name).raw(b"(").str_(command).raw(b"tR").raw(b"u")
  path = tmp_path / "evil.pt"
  _write_torch_zip(path, ops.done(), {"0": np.zeros(1, np.float32).tobytes()})
  with pytest.raises(convert.UnsafePickleError, match=f"{module}.{name}"):
    convert.load_torch_checkpoint(path)
  assert not marker.exists()


def test_malicious_legacy_stream_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil_legacy.pt"
  path.write_bytes(
      _Ops().global_("os", "system").raw(b"(").str_(f"touch {marker}").raw(b"tR").done()
  )
  with pytest.raises(convert.UnsafePickleError):
    convert.load_torch_checkpoint(path)
  assert not marker.exists()


def test_unknown_callable_is_never_called(tmp_path):
  """A REDUCE of an unknown global yields an inert placeholder: nothing is imported or run."""
  module = types.ModuleType("pidm_test_trap")
  calls = []
  module.trap = lambda *a: calls.append(a)
  sys.modules["pidm_test_trap"] = module
  try:
    ops = _Ops().raw(b"}(").str_("x").global_("pidm_test_trap", "trap").raw(b"(").int_(7)
    ops.raw(b"tR").raw(b"u")
    path = tmp_path / "trap.pt"
    _write_torch_zip(path, ops.done(), {})
    out = convert.load_torch_checkpoint(path)
  finally:
    del sys.modules["pidm_test_trap"]
  assert calls == []
  assert isinstance(out["x"], convert.Placeholder) and out["x"].args == (7,)


def test_not_a_checkpoint(tmp_path):
  path = tmp_path / "junk.pt"
  path.write_bytes(b"hello world, not a checkpoint")
  with pytest.raises(convert.CheckpointFormatError, match="junk.pt"):
    convert.load_torch_checkpoint(path)
  with pytest.raises(FileNotFoundError):
    convert.load_torch_checkpoint(tmp_path / "missing.pt")


def test_safetensors_round_trip(tmp_path):
  tensors = {
      "a.weight": np.random.default_rng(0).normal(size=(3, 2, 1)).astype(np.float32),
      "b": np.array([1, 2], np.int64),
      "c": np.array([0.25, 2.0], ml_dtypes.bfloat16),
  }
  path = tmp_path / "x.safetensors"
  convert.save_safetensors(path, tensors, metadata={"format": "pt"})
  raw = path.read_bytes()
  (n,) = struct.unpack("<Q", raw[:8])
  assert n % 8 == 0 and raw[8:9] == b"{"
  out = convert.load_torch_checkpoint(path)
  assert set(out) == set(tensors)
  for k, v in tensors.items():
    assert out[k].dtype == v.dtype
    np.testing.assert_array_equal(out[k], v)


# -------------------------------------------------------------------------------------------------
# Files written by torch.save (torch is an optional test dependency).
# -------------------------------------------------------------------------------------------------


def _unimportable_conf_class():
  """A class whose module cannot be imported when the file is read (like tensorfn's config)."""
  module = types.ModuleType("pidm_test_tensorfn_config")

  class DiffusionConfig:

    def __init__(self):
      self.n_iter = 2_400_000
      self.tags = {"a", "b"}
      self.blob = b"\x00\x01bytes"

  DiffusionConfig.__module__ = module.__name__
  DiffusionConfig.__qualname__ = "DiffusionConfig"
  module.DiffusionConfig = DiffusionConfig
  return module, DiffusionConfig


@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_save_checkpoint_with_unimportable_conf_loads(tmp_path, zip_format):
  torch = pytest.importorskip("torch")
  module, conf_cls = _unimportable_conf_class()
  sys.modules[module.__name__] = module
  gen = torch.Generator().manual_seed(0)
  w = torch.randn(4, 3, 3, 3, generator=gen)
  sd = {
      "conv.weight": w,
      "conv.weight_t": w.permute(1, 0, 2, 3),
      "row": w[1, 2],
      "half": torch.randn(5, generator=gen).half(),
      "bf16": torch.randn(2, 3, generator=gen).bfloat16(),
      "steps": torch.tensor([1, 2, 3]),
      "mask": torch.tensor([True, False]),
  }
  module_sd = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4)).state_dict()
  ckpt = {
      "model": sd,
      "ema": {k: v.clone() for k, v in sd.items()},
      "module": module_sd,
      "param": torch.nn.Parameter(torch.ones(2)),
      "conf": conf_cls(),
      "scheduler": {"step": 7},
      "optimizer": {"state": {}, "param_groups": [{"lr": 2e-5}]},
  }
  path = tmp_path / "last.pt"
  try:
    torch.save(ckpt, path, _use_new_zipfile_serialization=zip_format)
  finally:
    del sys.modules[module.__name__]

  out = convert.load_torch_checkpoint(path)
  for entry in ("model", "ema"):
    for k, v in sd.items():
      got = out[entry][k]
      if v.dtype == torch.bfloat16:
        assert got.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(got.astype(np.float32), v.float().numpy())
      else:
        assert got.dtype == v.numpy().dtype, k
        np.testing.assert_array_equal(got, v.numpy())
  np.testing.assert_array_equal(out["param"], np.ones(2, np.float32))
  assert list(out["module"]) == list(module_sd)  # a real state_dict(), with its _metadata
  np.testing.assert_array_equal(out["module"]["0.weight"], module_sd["0.weight"].numpy())
  conf = out["conf"]
  assert isinstance(conf, convert.Placeholder) and type(conf).name == "DiffusionConfig"
  assert conf.state["n_iter"] == 2_400_000 and conf.state["tags"] == {"a", "b"}
  assert conf.state["blob"] == b"\x00\x01bytes"
  assert out["scheduler"] == {"step": 7}
  assert out["optimizer"]["param_groups"][0]["lr"] == 2e-5


# -------------------------------------------------------------------------------------------------
# The official <-> pidm_jax mapping.
# -------------------------------------------------------------------------------------------------

TSV = __import__("pathlib").Path(__file__).parent / "data" / "pidm_state_dict_keys.tsv"


def _tiny_config():
  from configs import tiny

  return tiny.get_config().model


def _random_official(layout, seed=0):
  """Random official tensors scaled like PyTorch's init (norm weights near 1, nothing zero)."""
  rng = np.random.default_rng(seed)
  sd = {}
  for t in layout:
    norm = any(
        part in t.key for part in (".in_layers.0.", ".out_layers.0.", ".norm.")
    ) or t.key.startswith("out.0.")
    if len(t.shape) == 1:
      value = (1.0 if norm and t.key.endswith("weight") else 0.0) + 0.2 * rng.normal(size=t.shape)
    else:
      bound = 1.0 / np.sqrt(np.prod(t.shape[1:]))
      value = rng.uniform(-bound, bound, t.shape)
    sd[t.key] = value.astype(np.float32)
  return sd


@pytest.fixture(scope="module")
def tiny():
  """(model config, random official state_dict, converted PIDM in eval mode)."""
  cfg = _tiny_config()
  sd = _random_official(convert.official_layout(cfg))
  model = convert.convert_official_state_dict(sd, cfg)
  model.eval()
  return cfg, sd, model


def test_official_layout_matches_the_reference_key_list():
  """The paper config's layout is exactly the official state_dict: 852 keys, order, shapes."""
  from configs import default

  rows = [
      line.rstrip("\n").split("\t")
      for line in TSV.read_text().splitlines(True)
      if line.strip() and not line.startswith("#")
  ][1:]
  layout = convert.official_layout(default.get_config().model)
  assert [t.key for t in layout] == [r[0] for r in rows]
  assert len(layout) == 852
  for t, (key, shape, numel, status, init) in zip(layout, rows):
    assert t.shape == tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), key
    assert int(numel) == int(np.prod(t.shape))
    assert t.live == (status == "live"), key
    if not t.live:
      assert t.init == ("zeros" if init == "zeros" else "torch_default"), key
  assert sum(t.live for t in layout) == 668
  assert sum(int(np.prod(t.shape)) for t in layout) == 180_355_718
  assert sum(int(np.prod(t.shape)) for t in layout if t.live) == 162_374_406


def test_layout_from_model_structure_matches_the_plan(tiny):
  cfg, _, model = tiny
  assert convert._structure_from_model(model) == convert._structure_from_config(cfg)


def test_round_trip_through_export_is_exact(tiny):
  cfg, sd, model = tiny
  layout = convert.official_layout(cfg)
  out = convert.export_official_state_dict(model)
  assert list(out) == [t.key for t in layout]
  for t in layout:
    assert out[t.key].shape == t.shape and out[t.key].dtype == np.float32, t.key
    if t.live:
      np.testing.assert_array_equal(out[t.key], sd[t.key], err_msg=t.key)
    elif t.init == "zeros":
      assert not out[t.key].any(), t.key
    else:
      assert np.abs(out[t.key]).max() <= 1 / np.sqrt(t.fan_in), t.key
      assert out[t.key].std() > 0.2 / np.sqrt(t.fan_in), t.key
  again = convert.export_official_state_dict(model)
  assert all(np.array_equal(again[k], out[k]) for k in out)  # dead tensors are deterministic
  # A state_dict holding the dead tensors maps to the same parameters (they are skipped by name).
  with_dead = convert.official_to_params(out, cfg)
  without_dead = convert.official_to_params(sd, cfg)
  assert with_dead.keys() == without_dead.keys()
  assert all(np.array_equal(with_dead[p], without_dead[p]) for p in with_dead)


def test_half_precision_and_ddp_prefix(tiny):
  cfg, sd, _ = tiny
  ckpt = {
      "ema": {"module." + k: v.astype(ml_dtypes.bfloat16) for k, v in sd.items()},
      "model": {},
      "conf": None,
  }
  picked = convert.select_state_dict(ckpt)
  assert set(picked) == set(sd)
  params = convert.official_to_params(picked, cfg)
  kernel = params[("denoiser", "input_conv", "kernel")]
  expected = sd["input_blocks.0.0.weight"].astype(ml_dtypes.bfloat16).transpose(2, 3, 1, 0)
  assert kernel.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(kernel, expected)


def test_select_state_dict_errors():
  sd = {"a.weight": np.zeros(2, np.float32)}
  assert convert.select_state_dict(sd) == sd
  assert convert.select_state_dict({"ema": sd, "model": {}}, "ema") == sd
  with pytest.raises(ValueError, match="no 'ema' entry.*'model', 'conf'"):
    convert.select_state_dict({"model": sd, "conf": None})
  with pytest.raises(ValueError, match="bare state_dict"):
    convert.select_state_dict(sd, "model")


def test_mismatching_state_dict_lists_every_problem(tiny):
  cfg, sd, _ = tiny
  bad = dict(sd)
  renamed = "input_blocks.1.0.in_layers.2.weight"
  bad[renamed + "_renamed"] = bad.pop(renamed)
  del bad["middle_block.1.to_kv.bias"]
  bad["out.2.weight"] = np.zeros((6, 32, 1, 1), np.float32)
  bad["encoder.input_blocks.1.0.in_layers.0.bias"] = convert.Placeholder()
  bad["surprise.weight"] = np.zeros(3, np.float32)
  for dead in [t.key for t in convert.official_layout(cfg) if not t.live][:5]:
    bad.pop(dead, None)  # absent dead tensors are fine
  with pytest.raises(ValueError) as info:
    convert.convert_official_state_dict(bad, cfg)
  msg = str(info.value)
  assert "2 missing keys" in msg and "input_blocks.1.0.in_layers.2.weight\n" in msg
  assert "middle_block.1.to_kv.bias" in msg
  assert "2 unknown keys" in msg and "weight_renamed" in msg and "surprise.weight" in msg
  assert "out.2.weight: (6, 32, 1, 1), expected (6, 32, 3, 3)" in msg
  assert "encoder.input_blocks.1.0.in_layers.0.bias (Placeholder)" in msg


# -------------------------------------------------------------------------------------------------
# Numerics: the official PyTorch ops, written in NumPy (NCHW, float64) from the reference
# specification, against the converted pidm_jax modules (NHWC, float32).
# -------------------------------------------------------------------------------------------------


def _t_conv2d(x, w, b):
  """torch Conv2d, stride 1, padding k // 2: x (B, I, H, W), w (O, I, k, k)."""
  k = w.shape[-1]
  p = k // 2
  _, _, h, wd = x.shape
  xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
  out = sum(
      np.einsum(
          "bihw,oi->bohw", xp[:, :, dy : dy + h, dx : dx + wd], w[:, :, dy, dx], optimize=True
      )
      for dy in range(k)
      for dx in range(k)
  )
  return out + b[None, :, None, None]


def _t_group_norm(x, w, b, groups=32, eps=1e-5):
  """torch GroupNorm: statistics over contiguous channel blocks (and all positions)."""
  g = x.reshape(x.shape[0], groups, -1)
  y = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)).reshape(x.shape)
  shape = (1, -1) + (1,) * (x.ndim - 2)
  return y * w.reshape(shape) + b.reshape(shape)


def _t_linear(x, w, b):
  return x @ w.T + b


def _t_conv1d(x, w, b):  # kernel size 1 on (B, C, T)
  return np.einsum("oi,bit->bot", w[:, :, 0], x) + b[None, :, None]


def _silu(x):
  return x / (1 + np.exp(-x))


def _down(x):
  b, c, h, w = x.shape
  return x.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def _up(x):
  return x.repeat(2, axis=2).repeat(2, axis=3)


def _p(sd, key):
  return sd[key].astype(np.float64)


def _t_resblock(sd, key, x, emb, resample=None):
  """Official ResBlock (its blocks.py): norm-SiLU-[resample]-conv, FiLM, norm-SiLU-conv, skip."""
  h = _t_group_norm(x, _p(sd, f"{key}.in_layers.0.weight"), _p(sd, f"{key}.in_layers.0.bias"))
  h = _silu(h)
  if resample is not None:
    h, x = resample(h), resample(x)
  h = _t_conv2d(h, _p(sd, f"{key}.in_layers.2.weight"), _p(sd, f"{key}.in_layers.2.bias"))
  h = _t_group_norm(h, _p(sd, f"{key}.out_layers.0.weight"), _p(sd, f"{key}.out_layers.0.bias"))
  if emb is not None:
    e = _t_linear(
        _silu(emb), _p(sd, f"{key}.emb_layers.1.weight"), _p(sd, f"{key}.emb_layers.1.bias")
    )
    c = h.shape[1]
    h = h * (1 + e[:, :c, None, None]) + e[:, c:, None, None]
  h = _t_conv2d(_silu(h), _p(sd, f"{key}.out_layers.3.weight"), _p(sd, f"{key}.out_layers.3.bias"))
  if f"{key}.skip_connection.weight" in sd:
    x = _t_conv2d(x, _p(sd, f"{key}.skip_connection.weight"), _p(sd, f"{key}.skip_connection.bias"))
  return x + h


def _t_attention(sd, key, x, context):
  """Official cross-attention (its blocks.py): Q from GroupNorm(x), [K|V] = to_kv(context)."""
  b, c, h, w = x.shape
  xn = _t_group_norm(x, _p(sd, f"{key}.norm.weight"), _p(sd, f"{key}.norm.bias"))
  q = _t_conv1d(xn.reshape(b, c, -1), _p(sd, f"{key}.to_q.weight"), _p(sd, f"{key}.to_q.bias"))
  kv = _t_conv1d(
      context.reshape(b, c, -1), _p(sd, f"{key}.to_kv.weight"), _p(sd, f"{key}.to_kv.bias")
  )
  k, v = kv[:, :c], kv[:, c:]
  s = c**-0.25
  logits = np.einsum("bct,bcs->bts", q * s, k * s)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  a = np.einsum("bts,bcs->bct", weights, v)
  out = _t_conv1d(a, _p(sd, f"{key}.proj_out2.weight"), _p(sd, f"{key}.proj_out2.bias"))
  return x + out.reshape(x.shape)


def _t_pidm(sd, noisy, pose, t, source, num_res_blocks, num_levels):
  """The official model's forward (its unet_autoenc.py, unet.py), structure read from the keys."""
  down = {(level + 1) * (num_res_blocks + 1) for level in range(num_levels - 1)}
  n = 1 + num_levels * num_res_blocks + (num_levels - 1)
  # Texture encoder: the down path without attention or time embedding; every block's output.
  h = _t_conv2d(
      source, _p(sd, "encoder.input_blocks.0.0.weight"), _p(sd, "encoder.input_blocks.0.0.bias")
  )
  feats = [h]
  for k in range(1, n):
    h = _t_resblock(sd, f"encoder.input_blocks.{k}.0", h, None, _down if k in down else None)
    feats.append(h)
  # Time embedding: [cos, sin] of t * f_i, f_i = exp(-ln(10000) i / half), then Linear-SiLU-Linear.
  dim = sd["time_embed.time_embed.0.weight"].shape[1]
  freqs = np.exp(-np.log(10000.0) * np.arange(dim // 2) / (dim // 2))
  args = np.asarray(t, np.float64)[:, None] * freqs[None]
  emb = np.concatenate([np.cos(args), np.sin(args)], axis=1)
  emb = _t_linear(
      _silu(
          _t_linear(
              emb, _p(sd, "time_embed.time_embed.0.weight"), _p(sd, "time_embed.time_embed.0.bias")
          )
      ),
      _p(sd, "time_embed.time_embed.2.weight"),
      _p(sd, "time_embed.time_embed.2.bias"),
  )
  # Denoiser.
  h = _t_conv2d(
      np.concatenate([noisy, pose], axis=1),
      _p(sd, "input_blocks.0.0.weight"),
      _p(sd, "input_blocks.0.0.bias"),
  )
  skips = [h]
  for k in range(1, n):
    h = _t_resblock(sd, f"input_blocks.{k}.0", h, emb, _down if k in down else None)
    if f"input_blocks.{k}.1.to_q.weight" in sd:
      h = _t_attention(sd, f"input_blocks.{k}.1", h, feats[k])
    skips.append(h)
  h = _t_resblock(sd, "middle_block.0", h, emb)
  h = _t_attention(sd, "middle_block.1", h, feats[-1])
  h = _t_resblock(sd, "middle_block.2", h, emb)
  for k in range(n):
    h = _t_resblock(sd, f"output_blocks.{k}.0", np.concatenate([h, skips.pop()], axis=1), emb)
    layer = 1
    if f"output_blocks.{k}.1.to_q.weight" in sd:
      h = _t_attention(sd, f"output_blocks.{k}.1", h, feats[n - 1 - k])
      layer = 2
    if f"output_blocks.{k}.{layer}.in_layers.0.weight" in sd:
      h = _t_resblock(sd, f"output_blocks.{k}.{layer}", h, emb, _up)
  h = _silu(_t_group_norm(h, _p(sd, "out.0.weight"), _p(sd, "out.0.bias")))
  return _t_conv2d(h, _p(sd, "out.2.weight"), _p(sd, "out.2.bias"))


def _nhwc(x):
  return np.asarray(x, np.float64).transpose(0, 3, 1, 2)


def _close(ours_nhwc, ref_nchw, rtol):
  ours = _nhwc(ours_nhwc) if np.ndim(ours_nhwc) == 4 else np.asarray(ours_nhwc, np.float64)
  err = np.abs(ours - ref_nchw).max() / np.abs(ref_nchw).max()
  assert err < rtol, f"relative error {err:.2e}"
  return err


def _first_block(sd, pattern):
  """Index k of the first official input block whose key ``input_blocks.{k}.<pattern>`` exists."""
  return next(k for k in range(1, 100) if f"input_blocks.{k}.{pattern}" in sd)


def test_layout_rules_match_the_pytorch_ops(tiny):
  """Each layout rule on one block: conv (padding 1 and 1x1), linear, GroupNorm, attention."""
  import jax.numpy as jnp

  _, sd, model = tiny
  rng = np.random.default_rng(1)
  d = model.denoiser
  nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1), jnp.float32)
  # Conv2d 3x3, padding 1: input_blocks.1.0.in_layers.2 -> input_blocks[0].res.in_conv.
  key = "input_blocks.1.0.in_layers.2"
  x = rng.normal(size=(2, sd[f"{key}.weight"].shape[1], 16, 8))
  _close(
      d.input_blocks[0].res.in_conv(nhwc(x)),
      _t_conv2d(x, _p(sd, f"{key}.weight"), _p(sd, f"{key}.bias")),
      1e-5,
  )
  # Conv2d 1x1 (a ResBlock's skip where the width changes), and that whole ResBlock with FiLM.
  k = _first_block(sd, "0.skip_connection.weight")
  key = f"input_blocks.{k}.0"
  x = rng.normal(size=(2, sd[f"{key}.skip_connection.weight"].shape[1], 8, 8))
  _close(
      d.input_blocks[k - 1].res.skip(nhwc(x)),
      _t_conv2d(x, _p(sd, f"{key}.skip_connection.weight"), _p(sd, f"{key}.skip_connection.bias")),
      1e-5,
  )
  emb = rng.normal(size=(2, sd[f"{key}.emb_layers.1.weight"].shape[1]))
  _close(
      d.input_blocks[k - 1].res(nhwc(x), jnp.asarray(emb, jnp.float32)),
      _t_resblock(sd, key, x, emb),
      1e-5,
  )
  # GroupNorm: 32 groups of contiguous channels (channel scales differ so grouping matters).
  key = f"input_blocks.{k}.0.out_layers.0"
  c = sd[f"{key}.weight"].shape[0]
  assert c > 32
  xc = rng.normal(size=(2, c, 8, 8)) * np.linspace(0.5, 3, c)[None, :, None, None]
  _close(
      d.input_blocks[k - 1].res.out_norm(nhwc(xc)),
      _t_group_norm(xc, _p(sd, f"{key}.weight"), _p(sd, f"{key}.bias")),
      1e-5,
  )
  # Linear: time_embed.time_embed.0 -> time_embed.linear1.
  v = rng.normal(size=(3, sd["time_embed.time_embed.0.weight"].shape[1]))
  _close(
      d.time_embed.linear1(jnp.asarray(v, jnp.float32)),
      _t_linear(
          v, _p(sd, "time_embed.time_embed.0.weight"), _p(sd, "time_embed.time_embed.0.bias")
      ),
      1e-5,
  )
  # Cross-attention: Conv1d 1x1 projections, to_kv split into K (first C rows) then V.
  k = _first_block(sd, "1.to_q.weight")
  c = sd[f"input_blocks.{k}.1.to_q.weight"].shape[0]
  x, context = rng.normal(size=(2, c, 8, 4)), rng.normal(size=(2, c, 8, 4))
  _close(
      d.input_blocks[k - 1].attn(nhwc(x), nhwc(context)),
      _t_attention(sd, f"input_blocks.{k}.1", x, context),
      1e-5,
  )


def test_converted_model_matches_the_official_forward(tiny):
  """The whole converted tiny model against the official wiring in NumPy: eps and variance."""
  import jax.numpy as jnp
  from flax import nnx

  cfg, sd, model = tiny
  rng = np.random.default_rng(2)
  h, w = 16, 8  # any multiple of the down-sampling factor; H != W catches transposed axes
  noisy = rng.normal(size=(2, 3, h, w))
  pose = rng.uniform(size=(2, 20, h, w))
  source = rng.uniform(-1, 1, size=(2, 3, h, w))
  t = np.array([3, 917])
  ref = _t_pidm(sd, noisy, pose, t, source, cfg.num_res_blocks, len(cfg.channel_mult))
  to_nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1), jnp.float32)
  forward = nnx.jit(lambda m, *args: m(*args))
  ours = forward(model, to_nhwc(noisy), to_nhwc(pose), jnp.asarray(t), to_nhwc(source))
  assert ours.shape == (2, h, w, 6)
  _close(ours, ref, 2e-5)


# -------------------------------------------------------------------------------------------------
# The command line, end to end.
# -------------------------------------------------------------------------------------------------

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _write_training_checkpoint(path, entries):
  """A torch.save-style zip of {entry: OrderedDict(state_dict), ..., "conf": <tensorfn object>},
  written opcode by opcode (no torch)."""
  ops = _Ops().raw(b"}(")
  storages = {}
  for entry, sd in entries.items():
    ops.str_(entry).global_("collections", "OrderedDict").raw(b")R(")
    for key, value in sd.items():
      skey = str(len(storages))
      storages[skey] = np.ascontiguousarray(value, np.float32).tobytes()
      stride = [int(np.prod(value.shape[i + 1 :])) for i in range(value.ndim)]
      ops.str_(key).tensor("FloatStorage", skey, value.size, 0, value.shape, stride)
    ops.raw(b"u")
  ops.str_("conf").global_("tensorfn.config", "DiffusionConfig").raw(b")\x81")
  ops.raw(b"}").str_("n_iter").int_(2400000).raw(b"sb")
  ops.raw(b"u")
  _write_torch_zip(path, ops.done(), storages)


def test_cli_converts_and_exports(tiny, tmp_path, capsys):
  from pidm_jax import checkpointing

  _, _, model = tiny
  full = convert.export_official_state_dict(model)  # live and dead tensors
  model_sd = {"module." + k: v + 1 for k, v in full.items()}  # a DDP-wrapped "model" entry
  ckpt = tmp_path / "last.pt"
  _write_training_checkpoint(ckpt, {"model": model_sd, "ema": full})
  config = str(REPO / "configs" / "tiny.py")

  out_dir = tmp_path / "converted"
  assert (
      convert.main(["--checkpoint", str(ckpt), "--output", str(out_dir), "--config", config]) == 0
  )
  assert "entry 'ema'" in capsys.readouterr().out
  assert checkpointing.latest_step(out_dir) == 0

  # Back to the official layout (through checkpointing.load_model): the same state_dict.
  back = tmp_path / "back.pt"
  # (no --config: the converted checkpoint carries the tiny config it was written with)
  assert convert.main(["--to_torch", "--checkpoint", str(out_dir), "--output", str(back)]) == 0
  written = back if back.exists() else tmp_path / "back.safetensors"
  # the converted checkpoint carries the config it was converted with (what sample.py uses when
  # no --config is given), and the export carries it on
  from configs import stored, tiny as tiny_config

  assert (
      checkpointing.config_mismatches(
          checkpointing.read_config_json(out_dir), tiny_config.get_config()
      )
      == []
  )
  assert (
      stored.get_config(str(out_dir)).model.base_width == tiny_config.get_config().model.base_width
  )
  if written.suffix == ".safetensors":
    with open(written, "rb") as f:
      header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    exported = json.loads(header["__metadata__"]["pidm_jax_config"])
  else:
    import torch

    exported = json.loads(torch.load(back, weights_only=True)["pidm_jax_config"])
  assert checkpointing.config_mismatches(exported, tiny_config.get_config()) == []
  loaded = convert.load_torch_checkpoint(written)
  loaded = loaded["ema"] if "ema" in loaded else loaded
  assert list(loaded) == list(full)
  for k, v in full.items():
    np.testing.assert_array_equal(loaded[k], v, err_msg=k)
  if written == back:  # PyTorch is installed: its own safe loader reads the export
    import torch

    ours = torch.load(back, weights_only=True)
    assert set(ours) == {"ema", "model", "pidm_jax_config"} and list(ours["ema"]) == list(full)

  # The "model" entry, with its DDP prefix, is what --entry model would convert.
  ckpt_loaded = convert.load_torch_checkpoint(ckpt)
  assert isinstance(ckpt_loaded["conf"], convert.Placeholder)
  picked = convert.select_state_dict(ckpt_loaded, "model")
  np.testing.assert_array_equal(picked["out.2.weight"], full["out.2.weight"] + 1)


def test_cli_reports_a_mismatching_checkpoint(tiny, tmp_path, capsys):
  cfg, sd, _ = tiny
  bad = dict(sd)
  bad["input_blocks.1.0.in_layers.2.weight2"] = bad.pop("input_blocks.1.0.in_layers.2.weight")
  path = tmp_path / "bad.safetensors"
  convert.save_safetensors(path, bad)
  with pytest.raises(SystemExit) as e:
    convert.main(
        [
            "--checkpoint",
            str(path),
            "--output",
            str(tmp_path / "out"),
            "--config",
            str(REPO / "configs" / "tiny.py"),
        ]
    )
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1
  assert re.search(r"1 missing keys.*1 unknown keys", err), err
  assert not (tmp_path / "out").exists()


def test_cli_user_errors_are_one_line(tmp_path, capsys):
  """A missing file, a pickle that would run code, an unknown flag: one line, status 2."""
  evil = tmp_path / "evil.pt"
  with open(evil, "wb") as f:
    pickle.dump(_RunsCode(str(tmp_path / "ran")), f)
  for argv, message in (
      (
          ["--checkpoint", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "o")],
          "missing.pt",
      ),
      (["--checkpoint", str(evil), "--output", str(tmp_path / "o")], "refus"),
      (["--checkpoint=x", "--output=y", "--to-torch"], "to-torch"),
      (["--checkpoint=x", "--output=y", "--config.model.nonsense=1"], "nonsense"),
  ):
    with pytest.raises(SystemExit) as e:
      convert.main(argv)
    assert e.value.code == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
  assert not (tmp_path / "o").exists() and not (tmp_path / "ran").exists()


class _RunsCode:
  """A pickle whose loading would create a file: the converter must refuse it."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


def test_cli_refuses_a_config_that_does_not_predict_eps(tmp_path, capsys):
  """The official network predicts eps; a v-prediction config would give its weights another
  meaning, so neither direction runs (and nothing is written)."""
  config = tmp_path / "v_config.py"
  config.write_text(
      "from configs import tiny\n\n\ndef get_config():\n"
      "  config = tiny.get_config()\n  config.diffusion.prediction = 'v'\n"
      "  return config\n"
  )
  for extra in ([], ["--to_torch"]):
    with pytest.raises(SystemExit):
      convert.main(
          extra
          + [
              "--checkpoint",
              str(tmp_path / "missing.pt"),
              "--output",
              str(tmp_path / "out"),
              "--config",
              str(config),
          ]
      )
    assert "predicts eps" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_module_entry_point_help():
  import subprocess

  result = subprocess.run(
      [sys.executable, "-m", "pidm_jax.convert", "--help"],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  assert result.returncode == 0, result.stderr
  assert "--to_torch" in result.stdout and "--entry" in result.stdout


def test_export_without_torch_writes_safetensors(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" now raises ImportError
  sd = {"a.weight": np.ones((2, 3), np.float32)}
  written = convert.save_torch_state_dict(tmp_path / "out.pt", sd)
  assert written == str(tmp_path / "out.safetensors")
  np.testing.assert_array_equal(convert.load_torch_checkpoint(written)["a.weight"], sd["a.weight"])
