"""Tests of pidm_jax.convert: the safe checkpoint loader, the official <-> pidm_jax mapping, the CLI."""

import io
import pickle
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


@pytest.mark.parametrize("module,name", [
    ("os", "system"), ("posix", "system"), ("builtins", "eval"), ("__builtin__", "exec"),
    ("subprocess", "Popen"), ("builtins", "getattr"), ("importlib", "import_module"),
])
def test_malicious_pickle_is_refused_without_running(tmp_path, module, name):
  marker = tmp_path / "pwned"
  command = f"open({str(marker)!r}, 'w').write('x')" if name in ("eval", "exec") else (
      f"touch {marker}")
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
  path.write_bytes(_Ops().global_("os", "system").raw(b"(").str_(f"touch {marker}")
                   .raw(b"tR").done())
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
  tensors = {"a.weight": np.random.default_rng(0).normal(size=(3, 2, 1)).astype(np.float32),
             "b": np.array([1, 2], np.int64),
             "c": np.array([0.25, 2.0], ml_dtypes.bfloat16)}
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
  sd = {"conv.weight": w, "conv.weight_t": w.permute(1, 0, 2, 3), "row": w[1, 2],
        "half": torch.randn(5, generator=gen).half(),
        "bf16": torch.randn(2, 3, generator=gen).bfloat16(),
        "steps": torch.tensor([1, 2, 3]), "mask": torch.tensor([True, False])}
  ckpt = {"model": sd, "ema": {k: v.clone() for k, v in sd.items()},
          "param": torch.nn.Parameter(torch.ones(2)), "conf": conf_cls(),
          "scheduler": {"step": 7}, "optimizer": {"state": {}, "param_groups": [{"lr": 2e-5}]}}
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
  conf = out["conf"]
  assert isinstance(conf, convert.Placeholder) and type(conf).name == "DiffusionConfig"
  assert conf.state["n_iter"] == 2_400_000 and conf.state["tags"] == {"a", "b"}
  assert conf.state["blob"] == b"\x00\x01bytes"
  assert out["scheduler"] == {"step": 7}
  assert out["optimizer"]["param_groups"][0]["lr"] == 2e-5
