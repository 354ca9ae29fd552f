"""Official PIDM PyTorch checkpoints <-> pidm_jax parameters, without PyTorch.

Three parts, in file order:

1. **Reading checkpoint files safely** (:func:`load_torch_checkpoint`). A ``torch.save`` file is a
   pickle, and unpickling runs whatever the pickle names. The loader here never imports a module
   and never calls anything but its own tensor-rebuild functions: tensors become NumPy arrays read
   from the file's storages (offset, shape, strides, byte order and dtype honoured, float16 and
   bfloat16 included), an object of any other class becomes an inert :class:`Placeholder` that
   only records what the pickle said about it, and a pickle that names code-running callables
   (``os.system``, ``builtins.eval``, ``subprocess.*``, ...) is refused with
   :class:`UnsafePickleError` before anything runs. The zip format of torch >= 1.6, the legacy
   (pre-1.6) stream format, ``.safetensors`` and ``.npz`` files are read.

2. **The official <-> pidm_jax name and layout mapping** (:func:`official_layout`), derived
   from the block plan (``down_path_plan``/``up_path_plan``) of the model config, or from the
   block structure of a built model, so it holds for any config.
   :func:`convert_official_state_dict` loads an official state_dict into a
   :class:`~pidm_jax.models.PIDM`; :func:`export_official_state_dict` writes one back.

3. **The command line**: ``python -m pidm_jax.convert --checkpoint last.pt --output DIR`` writes a
   parameters-only Orbax checkpoint (:func:`pidm_jax.checkpointing.save_params`) of the converted
   (EMA by default) weights, which sampling loads and training can start from; ``--to_torch``
   goes the other way.

Layouts (torch module conventions): Conv2d weight (O, I, kh, kw) -> kernel (kh, kw, I, O); Linear
(O, I) -> (I, O); attention Conv1d (O, I, 1) -> Dense kernel (I, O); ``to_kv`` (2C, C, 1) is split
into K = output rows [0, C) and V = rows [C, 2C); GroupNorm weight/bias -> scale/bias. PyTorch
layouts exist only in this module.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import mmap
import os
import pickle
import struct
import zipfile
import zlib
from typing import Any, Callable

import ml_dtypes
import numpy as np

# =================================================================================================
# 1. Reading checkpoint files
# =================================================================================================


class CheckpointFormatError(ValueError):
  """A checkpoint file that cannot be read as a torch / safetensors / npz checkpoint."""


class UnsafePickleError(pickle.UnpicklingError):
  """A pickle that references a callable able to run code; it was refused, nothing was run."""


class Placeholder:
  """Inert stand-in for an object of a class the loader did not (and will not) import.

  The class attributes ``module`` and ``name`` say which class the pickle named; an instance
  records the arguments the pickle passed (``args``, ``kwargs``), the state it set (``state``)
  and any items it added (``items`` for dict-like, ``listitems`` for list-like objects). Nothing
  of the original class is ever executed.
  """

  module: str = ""
  name: str = ""

  def __new__(cls, *args, **kwargs):
    obj = object.__new__(cls)
    obj.args = args
    obj.kwargs = kwargs
    obj.state = None
    obj.items = {}
    obj.listitems = []
    return obj

  def __init__(self, *args, **kwargs):  # pylint: disable=unused-argument
    pass

  def __setstate__(self, state):
    self.state = state

  def __setitem__(self, key, value):
    self.items[key] = value

  def append(self, value):
    self.listitems.append(value)

  def extend(self, values):
    self.listitems.extend(values)

  def __repr__(self):
    return f"<Placeholder {type(self).module}.{type(self).name}>"


class _Sealed:
  """Objects the unpickler hands out that a pickle must not modify (BUILD is refused)."""

  __slots__ = ()

  def __setstate__(self, state):
    raise UnsafePickleError(f"pickle tried to set the state of {type(self).__name__}")


class TorchDtype(_Sealed):
  """What a pickled ``torch.<dtype>`` becomes: its name and the matching NumPy dtype."""

  __slots__ = ("name", "dtype")

  def __init__(self, name: str, dtype):
    self.name = name
    self.dtype = np.dtype(dtype)

  def __repr__(self):
    return f"TorchDtype(torch.{self.name})"


class _StorageType(_Sealed):
  """What a pickled ``torch.<X>Storage`` class becomes: the element dtype of the storage."""

  __slots__ = ("name", "dtype")

  def __init__(self, name: str, dtype):
    self.name = name
    self.dtype = np.dtype(dtype)


class _Storage(_Sealed):
  """A storage: a flat array of ``dtype`` (``data`` is None while not yet read)."""

  __slots__ = ("key", "dtype", "data")

  def __init__(self, key: str, dtype: np.dtype, data: np.ndarray | None):
    self.key = key
    self.dtype = dtype
    self.data = data


_STORAGE_TYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
}

_TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16,
    "short": np.int16, "int8": np.int8, "uint8": np.uint8, "uint16": np.uint16,
    "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_, "complex64": np.complex64,
    "cfloat": np.complex64, "complex128": np.complex128, "cdouble": np.complex128,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2,
}

# Modules whose names in a pickle mean an attempt to run code: refused outright. (Any other unknown
# name only ever becomes an inert Placeholder, so this list is about clear errors, not the only
# line of defence.)
_FORBIDDEN_MODULES = (
    "os", "posix", "nt", "sys", "subprocess", "shutil", "importlib", "runpy", "pty", "socket",
    "pickle", "_pickle", "cPickle", "marshal", "code", "codeop", "ctypes", "types", "io", "_io",
    "tempfile", "webbrowser", "multiprocessing", "threading", "_thread", "signal", "asyncio",
    "platform", "commands", "pdb", "bdb", "timeit", "trace", "cProfile", "profile", "inspect",
    "gc", "operator", "_operator", "numpy.testing", "torch.hub", "torch.jit", "torch.ops",
    "torch.serialization", "torch.utils.cpp_extension", "torch._dynamo", "torch._inductor",
)
# builtins that only build plain values and are safe to call.
_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "complex": complex, "slice": slice}


def _codecs_encode(text, encoding="utf-8"):
  """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``: latin-1 only."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise UnsafePickleError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not allowed")
  return text.encode("latin-1")


def _reconstructor(cls, base, state):
  """``copyreg._reconstructor`` (protocol 0/1 objects), for placeholder classes only."""
  del base, state  # the state arrives later through BUILD
  if not (isinstance(cls, type) and issubclass(cls, Placeholder)):
    raise UnsafePickleError(f"copyreg._reconstructor called on {cls!r}")
  return cls.__new__(cls)


def _is_forbidden(module: str) -> bool:
  return any(module == m or module.startswith(m + ".") for m in _FORBIDDEN_MODULES)


def _strided_view(data: np.ndarray, offset, size, stride) -> np.ndarray:
  """``data[offset + sum(i_k * stride_k)]`` for every index of ``size``, bounds-checked."""
  try:
    offset = int(offset)
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
  except (TypeError, ValueError) as e:
    raise CheckpointFormatError(f"tensor with invalid offset/size/stride: {e}") from None
  if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
    raise CheckpointFormatError(
        f"tensor with invalid geometry: offset {offset}, size {size}, stride {stride}")
  if 0 in size:
    return np.zeros(size, data.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= data.shape[0]:
    raise CheckpointFormatError(
        f"tensor (offset {offset}, size {size}, stride {stride}) reads past the end of its "
        f"storage of {data.shape[0]} elements")
  numel = math.prod(size)
  contiguous = tuple(math.prod(size[i + 1:]) for i in range(len(size)))
  if all(s == c for n, s, c in zip(size, stride, contiguous) if n > 1):
    return data[offset:offset + numel].reshape(size)  # a view: nothing is read until used
  view = np.lib.stride_tricks.as_strided(
      data[offset:], shape=size, strides=tuple(s * data.itemsize for s in stride), writeable=False)
  return np.array(view)


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that imports nothing and calls only the rebuild functions defined here."""

  def __init__(self, file, storage_loader: Callable[[tuple], _Storage]):
    super().__init__(file)
    self._storage_loader = storage_loader
    self._functions = {
        ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): self._rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): self._rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): self._rebuild_from_type_v2,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _codecs_encode,
        ("copyreg", "_reconstructor"): _reconstructor,
        ("copy_reg", "_reconstructor"): _reconstructor,
    }
    self._placeholders: dict[tuple[str, str], type] = {}  # per load: a pickle can't taint others
    self._rebuilders = {self._rebuild_tensor, self._rebuild_tensor_v2, self._rebuild_tensor_v3,
                        self._rebuild_parameter}

  # -- name resolution --------------------------------------------------------------------------
  def find_class(self, module, name):
    if (module, name) in self._functions:
      return self._functions[(module, name)]
    if module == "torch" and name in _STORAGE_TYPES:
      return _StorageType(name, _STORAGE_TYPES[name])
    if module == "torch" and name in _TORCH_DTYPES:
      return TorchDtype(name, _TORCH_DTYPES[name])
    if module in ("builtins", "__builtin__"):
      if name in _SAFE_BUILTINS:
        return _SAFE_BUILTINS[name]
      raise UnsafePickleError(
          f"refusing to unpickle: the pickle references {module}.{name}, which could run code")
    if _is_forbidden(module):
      raise UnsafePickleError(
          f"refusing to unpickle: the pickle references {module}.{name}, which could run code")
    if (module, name) not in self._placeholders:
      self._placeholders[(module, name)] = type(
          str(name), (Placeholder,), {"module": str(module), "name": str(name)})
    return self._placeholders[(module, name)]

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
      raise CheckpointFormatError(f"unsupported persistent id in pickle: {pid!r:.200}")
    if len(pid) < 5 or not isinstance(pid[1], _StorageType):
      raise CheckpointFormatError(f"malformed storage record in pickle: {pid!r:.200}")
    return self._storage_loader(pid)

  # -- tensor rebuilding ------------------------------------------------------------------------
  @staticmethod
  def _check_storage(storage) -> _Storage:
    if not isinstance(storage, _Storage):
      raise CheckpointFormatError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    return storage

  def _rebuild_tensor(self, storage, storage_offset, size, stride):
    storage = self._check_storage(storage)
    if storage.data is None:  # first pass over a legacy file: geometry only
      return None
    return _strided_view(storage.data, storage_offset, size, stride)

  def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad=False,
                         backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata
    return self._rebuild_tensor(storage, storage_offset, size, stride)

  def _rebuild_tensor_v3(self, storage, storage_offset, size, stride, requires_grad,
                         backward_hooks, dtype, metadata=None):
    del requires_grad, backward_hooks, metadata
    storage = self._check_storage(storage)
    if not isinstance(dtype, TorchDtype):
      raise CheckpointFormatError(f"_rebuild_tensor_v3 with dtype {dtype!r}")
    if storage.data is None:
      return None
    raw = storage.data.view(np.uint8)
    usable = raw.shape[0] - raw.shape[0] % dtype.dtype.itemsize
    return _strided_view(raw[:usable].view(dtype.dtype), storage_offset, size, stride)

  @staticmethod
  def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    del requires_grad, backward_hooks, state
    return data

  def _rebuild_from_type_v2(self, func, new_type, args, state):
    del new_type, state  # Tensor / Parameter subclass markers: the array is all we keep
    if func not in self._rebuilders:
      raise UnsafePickleError(f"_rebuild_from_type_v2 with function {func!r}")
    return func(*args)


def _zip_entry_array(f, zf: zipfile.ZipFile, info: zipfile.ZipInfo, mm) -> np.ndarray:
  """The bytes of a zip entry as a uint8 array: a view of the mapped file when stored."""
  if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1 or mm is None:
    return np.frombuffer(zf.read(info), np.uint8)
  f.seek(info.header_offset)
  header = f.read(30)
  if len(header) != 30 or header[:4] != b"PK\x03\x04":
    raise CheckpointFormatError(f"bad zip local header for {info.filename}")
  name_len, extra_len = struct.unpack("<HH", header[26:30])
  start = info.header_offset + 30 + name_len + extra_len
  if start + info.file_size > len(mm):
    raise CheckpointFormatError(f"zip entry {info.filename} runs past the end of the file")
  return np.frombuffer(mm, np.uint8, count=info.file_size, offset=start)


def _typed(raw: np.ndarray, dtype: np.dtype, numel: int, big_endian: bool, what: str):
  nbytes = numel * dtype.itemsize
  if numel < 0 or raw.shape[0] < nbytes:
    raise CheckpointFormatError(
        f"{what} holds {raw.shape[0]} bytes, but {numel} x {dtype} needs {nbytes}")
  raw = raw[:nbytes]
  if big_endian and dtype.itemsize > 1:
    unit = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
    raw = np.ascontiguousarray(raw.reshape(-1, unit)[:, ::-1]).reshape(-1)
  return raw.view(dtype)


def _load_torch_zip(path: str):
  with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkl) != 1:
      raise CheckpointFormatError(
          f"{path}: a zip file but not a torch.save archive (expected one '<name>/data.pkl', "
          f"found {len(pkl)})")
    prefix = pkl[0][:-len("data.pkl")]
    big_endian = False
    if prefix + "byteorder" in names:
      order = zf.read(prefix + "byteorder").decode().strip()
      if order not in ("little", "big"):
        raise CheckpointFormatError(f"{path}: unknown byteorder {order!r}")
      big_endian = order == "big"
    try:
      mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (ValueError, OSError, io.UnsupportedOperation):
      mm = None
    storages: dict[str, _Storage] = {}

    def load_storage(pid):
      _, storage_type, key, _location, numel = pid[:5]
      key = str(key)
      if key not in storages:
        entry = prefix + "data/" + key
        if entry not in names:
          raise CheckpointFormatError(f"{path}: storage {entry!r} referenced but missing")
        raw = _zip_entry_array(f, zf, zf.getinfo(entry), mm)
        data = _typed(raw, storage_type.dtype, int(numel), big_endian, f"{path}:{entry}")
        storages[key] = _Storage(key, storage_type.dtype, data)
      return storages[key]

    with zf.open(pkl[0]) as pf:
      return _RestrictedUnpickler(io.BytesIO(pf.read()), load_storage).load()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _load_torch_legacy(path: str):
  """The pre-1.6 stream format: magic, protocol, sys_info, the object pickle, storage keys, data."""

  def no_storage(pid):
    raise CheckpointFormatError(f"{path}: unexpected storage in a header pickle: {pid!r:.100}")

  with open(path, "rb") as f:
    file_size = os.fstat(f.fileno()).st_size
    header = [_RestrictedUnpickler(f, no_storage).load() for _ in range(3)]
    if header[0] != _LEGACY_MAGIC or header[1] != _LEGACY_PROTOCOL:
      raise CheckpointFormatError(f"{path}: not a torch checkpoint (bad magic/protocol)")
    sys_info = header[2] if isinstance(header[2], dict) else {}
    big_endian = not sys_info.get("little_endian", True)
    body_start = f.tell()
    storages: dict[str, _Storage] = {}

    def record(pid):  # first pass: learn every storage's dtype, read no data
      _, storage_type, key, _location, _numel = pid[:5]
      key = str(key)
      storages.setdefault(key, _Storage(key, storage_type.dtype, None))
      return storages[key]

    _RestrictedUnpickler(f, record).load()
    keys = _RestrictedUnpickler(f, no_storage).load()
    if not isinstance(keys, list):
      raise CheckpointFormatError(f"{path}: malformed storage key list")
    for key in keys:
      key = str(key)
      if key not in storages:
        raise CheckpointFormatError(f"{path}: data for unknown storage {key!r}")
      (numel,) = struct.unpack(">q" if big_endian else "<q", f.read(8))
      dtype = storages[key].dtype
      if not 0 <= numel * dtype.itemsize <= file_size - f.tell():
        raise CheckpointFormatError(f"{path}: storage {key} claims {numel} elements, more than "
                                    "the file holds")
      raw = np.frombuffer(f.read(numel * dtype.itemsize), np.uint8)
      storages[key].data = _typed(raw, dtype, numel, big_endian, f"{path}: storage {key}")

    def load(pid):  # second pass: the same pickle with the data in place
      _, _storage_type, key, _location, _numel = pid[:5]
      storage = storages[str(key)]
      view = pid[5] if len(pid) > 5 else None
      if view is not None:  # (view_key, offset, size) of very old files
        _view_key, offset, size = view
        start, stop = int(offset), int(offset) + int(size)
        return _Storage(storage.key, storage.dtype, storage.data[start:stop])
      return storage

    f.seek(body_start)
    return _RestrictedUnpickler(f, load).load()


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U64": np.uint64,
    "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}


def load_safetensors(path: str) -> dict[str, np.ndarray]:
  """Reads a ``.safetensors`` file into {name: array} (read-only views of the mapped file)."""
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) != 8:
      raise CheckpointFormatError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", head)
    size = os.fstat(f.fileno()).st_size
    if n > size - 8:
      raise CheckpointFormatError(f"{path}: safetensors header length {n} exceeds the file")
    try:
      header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise CheckpointFormatError(f"{path}: safetensors header is not JSON: {e}") from None
    base = 8 + n
    buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
  out = {}
  for name, spec in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype = np.dtype(_SAFETENSORS_DTYPES[spec["dtype"]])
      shape = tuple(int(s) for s in spec["shape"])
      begin, end = (int(x) for x in spec["data_offsets"])
    except (KeyError, TypeError, ValueError):
      raise CheckpointFormatError(f"{path}: bad safetensors entry for {name!r}: {spec!r:.200}")
    if end - begin != math.prod(shape) * dtype.itemsize or begin < 0 or base + end > size:
      raise CheckpointFormatError(
          f"{path}: safetensors entry {name!r} ({spec['dtype']} {list(shape)}) has byte range "
          f"[{begin}, {end}) that does not fit its shape or the file")
    count = math.prod(shape)
    out[name] = np.frombuffer(buf, dtype, count=count, offset=base + begin).reshape(shape)
  return out


def save_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict | None = None):
  """Writes {name: array} as a ``.safetensors`` file (little-endian, C order)."""
  names = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
  header, offset, blobs = {}, 0, []
  for name, value in tensors.items():
    arr = np.ascontiguousarray(value)
    if arr.dtype not in names:
      raise ValueError(f"cannot write {name!r}: dtype {arr.dtype} has no safetensors code")
    data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    header[name] = {"dtype": names[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + len(data)]}
    offset += len(data)
    blobs.append(data)
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for blob in blobs:
      f.write(blob)


def load_torch_checkpoint(path) -> dict:
  """Reads a checkpoint file without PyTorch and without running pickled code.

  Accepts a ``torch.save`` file (the zip format of torch >= 1.6, or the legacy stream format) of a
  whole training checkpoint (``{"model", "ema", "optimizer", "scheduler", "conf"}``) or of a bare
  state_dict, a ``.safetensors`` file, or a NumPy ``.npz`` archive.

  Returns:
    What the file holds, as nested dicts/lists: tensors become NumPy arrays (read-only views of the
    file where possible, in their stored dtype: float16/bfloat16 stay as such), objects of other
    classes become :class:`Placeholder` instances (never executed).
  Raises:
    FileNotFoundError: no such file.
    UnsafePickleError: the pickle references a code-running callable; nothing was executed.
    CheckpointFormatError: the file is none of the supported formats, or is malformed.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint file not found: {path}")
  with open(path, "rb") as f:
    magic = f.read(16)
  if magic.startswith(b"PK\x03\x04"):
    if path.endswith(".npz"):
      with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
    reader = _load_torch_zip
  elif magic[:1] == b"\x80":
    reader = _load_torch_legacy
  elif len(magic) >= 9 and magic[8:9] == b"{":
    reader = load_safetensors
  else:
    reader = None
  if reader is not None:
    try:
      return reader(path)
    except (UnsafePickleError, CheckpointFormatError):
      raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError,
            KeyError, struct.error, zipfile.BadZipFile, RecursionError) as e:
      raise CheckpointFormatError(
          f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from e
  raise CheckpointFormatError(
      f"{path}: not a torch.save file (zip or legacy pickle), .safetensors or .npz "
      f"(starts with {magic[:8]!r})")


# =================================================================================================
# 2. The official <-> pidm_jax mapping
# =================================================================================================

# An NNX parameter path, e.g. ("denoiser", "input_blocks", 0, "res", "in_conv", "kernel").
Path = tuple


@dataclasses.dataclass(frozen=True)
class OfficialTensor:
  """One tensor of the official state_dict.

  ``live`` tensors map to pidm_jax parameters (``ours``: their NNX paths and shapes). Dead ones
  (never used by the official forward pass, e.g. every ResBlock's ``cond_emb_layers``: the
  official ResBlocks always get cond=None) have no counterpart; ``init``
  says how the official code initialises them: "zeros" or "torch_default"
  (U(-1/sqrt(fan_in), 1/sqrt(fan_in)), ``fan_in`` given).
  """
  key: str
  shape: tuple[int, ...]
  live: bool
  ours: tuple[Path, ...] = ()
  ours_shapes: tuple[tuple[int, ...], ...] = ()
  init: str | None = None
  fan_in: int | None = None
  to_ours: Callable[..., tuple] | None = dataclasses.field(default=None, repr=False)
  to_official: Callable[..., Any] | None = dataclasses.field(default=None, repr=False)


# Layout transforms. They only transpose, slice and concatenate, so they run equally on real
# arrays and on zero-stride stand-ins (used to derive official shapes without allocating).
def _same(x):
  return (x,)


def _same_back(x):
  return x


def _conv_to_ours(w):  # (O, I, kh, kw) -> (kh, kw, I, O)
  return (w.transpose(2, 3, 1, 0),)


def _conv_to_official(k):
  return k.transpose(3, 2, 0, 1)


def _linear_to_ours(w):  # (O, I) -> (I, O)
  return (w.T,)


def _linear_to_official(k):
  return k.T


def _conv1d_to_ours(w):  # (O, I, 1) -> (I, O)
  return (w[:, :, 0].T,)


def _conv1d_to_official(k):
  return k.T[:, :, None]


def _kv_weight_to_ours(w):  # (2C, C, 1) -> K (C, C), V (C, C): K = output rows [0, C)
  c = w.shape[0] // 2
  return (w[:c, :, 0].T, w[c:, :, 0].T)


def _kv_weight_to_official(k, v):
  return np.concatenate([k.T, v.T], axis=0)[:, :, None]


def _kv_bias_to_ours(b):
  c = b.shape[0] // 2
  return (b[:c], b[c:])


def _kv_bias_to_official(bk, bv):
  return np.concatenate([bk, bv], axis=0)


def _live(key, ours, ours_shapes, to_ours, to_official) -> OfficialTensor:
  stand_ins = [np.broadcast_to(np.float32(0), s) for s in ours_shapes]
  shape = tuple(to_official(*stand_ins).shape)
  return OfficialTensor(key, shape, True, tuple(ours), tuple(tuple(s) for s in ours_shapes),
                        to_ours=to_ours, to_official=to_official)


def _dead(key, shape, init, fan_in=None) -> OfficialTensor:
  return OfficialTensor(key, tuple(shape), False, init=init, fan_in=fan_in)


def _conv(key, path, cin, cout, k):
  return [_live(f"{key}.weight", [path + ("kernel",)], [(k, k, cin, cout)], _conv_to_ours,
                _conv_to_official),
          _live(f"{key}.bias", [path + ("bias",)], [(cout,)], _same, _same_back)]


def _linear(key, path, din, dout):
  return [_live(f"{key}.weight", [path + ("kernel",)], [(din, dout)], _linear_to_ours,
                _linear_to_official),
          _live(f"{key}.bias", [path + ("bias",)], [(dout,)], _same, _same_back)]


def _conv1d(key, path, c):
  return [_live(f"{key}.weight", [path + ("kernel",)], [(c, c)], _conv1d_to_ours,
                _conv1d_to_official),
          _live(f"{key}.bias", [path + ("bias",)], [(c,)], _same, _same_back)]


def _norm(key, path, c):  # GroupNorm32 wraps nnx.GroupNorm as ``.norm``
  return [_live(f"{key}.weight", [path + ("norm", "scale")], [(c,)], _same, _same_back),
          _live(f"{key}.bias", [path + ("norm", "bias")], [(c,)], _same, _same_back)]


def _dead_linear(key, din, dout, conv1d=False):
  weight = (dout, din, 1) if conv1d else (dout, din)
  return [_dead(f"{key}.weight", weight, "torch_default", din),
          _dead(f"{key}.bias", (dout,), "torch_default", din)]


def _res_block(key, path, cin, cout, emb_dim, film):
  """Official ResBlock keys, in state_dict order (the official blocks.py)."""
  out = _norm(f"{key}.in_layers.0", path + ("in_norm",), cin)
  out += _conv(f"{key}.in_layers.2", path + ("in_conv",), cin, cout, 3)
  if film:
    out += _linear(f"{key}.emb_layers.1", path + ("emb_proj",), emb_dim, 2 * cout)
  else:  # the texture encoder's ResBlocks never get a time embedding
    out += _dead_linear(f"{key}.emb_layers.1", emb_dim, 2 * cout)
  out += _dead_linear(f"{key}.cond_emb_layers.1", cout, cout)  # never called
  out += _norm(f"{key}.out_layers.0", path + ("out_norm",), cout)
  out += _conv(f"{key}.out_layers.3", path + ("out_conv",), cout, cout, 3)
  if cin != cout:
    out += _conv(f"{key}.skip_connection", path + ("skip",), cin, cout, 1)
  return out


def _attention(key, path, c):
  """Official cross-attention keys, in state_dict order (the official blocks.py)."""
  out = _norm(f"{key}.norm", path + ("norm",), c)
  out += _dead_linear(f"{key}.qkv", c, 3 * c, conv1d=True)  # self-attention: commented out
  out += [
      _live(f"{key}.to_kv.weight", [path + ("to_k", "kernel"), path + ("to_v", "kernel")],
            [(c, c), (c, c)], _kv_weight_to_ours, _kv_weight_to_official),
      _live(f"{key}.to_kv.bias", [path + ("to_k", "bias"), path + ("to_v", "bias")],
            [(c,), (c,)], _kv_bias_to_ours, _kv_bias_to_official),
  ]
  out += _conv1d(f"{key}.to_q", path + ("to_q",), c)
  out += [_dead(f"{key}.proj_out1.weight", (c, c, 1), "zeros"),
          _dead(f"{key}.proj_out1.bias", (c,), "zeros")]
  out += _conv1d(f"{key}.proj_out2", path + ("proj_out",), c)
  return out


@dataclasses.dataclass(frozen=True)
class _Structure:
  """What the key layout depends on: widths and which blocks carry attention / up-sampling."""
  time_dim: int  # width of the sinusoidal timestep embedding
  embed_dim: int
  denoiser_in: int  # image + pose channels
  encoder_in: int
  out_channels: int
  first_width: int  # output width of the input conv (block 0)
  down: tuple[tuple[int, int, bool], ...]  # input blocks 1..: (in, out, has attention)
  encoder_down: tuple[tuple[int, int], ...]  # encoder blocks 1..: (in, out)
  middle: int
  up: tuple[tuple[int, int, bool, bool], ...]  # output blocks: (in incl. skip, out, attn, up)


def _structure_from_config(cfg) -> _Structure:
  from pidm_jax.models import unet  # pylint: disable=g-import-not-at-top
  down_path_plan, up_path_plan = unet.down_path_plan, unet.up_path_plan
  down = down_path_plan(cfg)
  up = up_path_plan(cfg)
  return _Structure(
      time_dim=int(cfg.base_width), embed_dim=int(cfg.embed_dim),
      denoiser_in=int(cfg.in_channels + cfg.pose_channels), encoder_in=int(cfg.in_channels),
      out_channels=int(cfg.out_channels), first_width=down[0].out_channels,
      down=tuple((p.in_channels, p.out_channels, p.attention) for p in down[1:]),
      encoder_down=tuple((p.in_channels, p.out_channels) for p in down[1:]),
      middle=down[-1].out_channels,
      up=tuple((p.in_channels + p.skip_channels, p.out_channels, p.attention, p.upsample)
               for p in up))


def _structure_from_model(model) -> _Structure:
  d, e = model.denoiser, model.encoder
  return _Structure(
      time_dim=d.time_embed.linear1.in_features, embed_dim=d.time_embed.linear2.out_features,
      denoiser_in=d.input_conv.in_features, encoder_in=e.input_conv.in_features,
      out_channels=d.out_conv.out_features, first_width=d.input_conv.out_features,
      down=tuple((b.res.in_conv.in_features, b.res.in_conv.out_features, b.attn is not None)
                 for b in d.input_blocks),
      encoder_down=tuple((b.res.in_conv.in_features, b.res.in_conv.out_features)
                         for b in e.blocks),
      middle=d.middle.res1.in_conv.in_features,
      up=tuple((b.res.in_conv.in_features, b.res.in_conv.out_features, b.attn is not None,
                b.up is not None) for b in d.output_blocks))


def _layout(s: _Structure) -> list[OfficialTensor]:
  """Every official state_dict tensor, in the official order, with its pidm_jax counterpart."""
  den, enc = ("denoiser",), ("encoder",)
  out = _linear("time_embed.time_embed.0", den + ("time_embed", "linear1"), s.time_dim,
                s.embed_dim)
  out += _linear("time_embed.time_embed.2", den + ("time_embed", "linear2"), s.embed_dim,
                 s.embed_dim)
  out += _conv("input_blocks.0.0", den + ("input_conv",), s.denoiser_in, s.first_width, 3)
  for k, (cin, cout, attn) in enumerate(s.down, start=1):
    path = den + ("input_blocks", k - 1)
    out += _res_block(f"input_blocks.{k}.0", path + ("res",), cin, cout, s.embed_dim, True)
    if attn:
      out += _attention(f"input_blocks.{k}.1", path + ("attn",), cout)
  mid = den + ("middle",)
  out += _res_block("middle_block.0", mid + ("res1",), s.middle, s.middle, s.embed_dim, True)
  out += _attention("middle_block.1", mid + ("attn",), s.middle)
  out += _res_block("middle_block.2", mid + ("res2",), s.middle, s.middle, s.embed_dim, True)
  for k, (cin, cout, attn, up) in enumerate(s.up):
    path = den + ("output_blocks", k)
    out += _res_block(f"output_blocks.{k}.0", path + ("res",), cin, cout, s.embed_dim, True)
    layer = 1
    if attn:
      out += _attention(f"output_blocks.{k}.{layer}", path + ("attn",), cout)
      layer += 1
    if up:
      out += _res_block(f"output_blocks.{k}.{layer}", path + ("up",), cout, cout, s.embed_dim,
                        True)
  last = s.up[-1][1] if s.up else s.middle
  out += _norm("out.0", den + ("out_norm",), last)
  out += _conv("out.2", den + ("out_conv",), last, s.out_channels, 3)
  out += _dead_linear("encoder.time_embed.0", s.time_dim, s.embed_dim)
  out += _dead_linear("encoder.time_embed.2", s.embed_dim, s.embed_dim)
  out += _conv("encoder.input_blocks.0.0", enc + ("input_conv",), s.encoder_in, s.first_width, 3)
  for k, (cin, cout) in enumerate(s.encoder_down, start=1):
    out += _res_block(f"encoder.input_blocks.{k}.0", enc + ("blocks", k - 1, "res"), cin, cout,
                      s.embed_dim, False)
  return out


def official_layout(model_config) -> list[OfficialTensor]:
  """The official state_dict of a model config: every key in order, its shape, live or dead.

  For the paper's config (``configs/default.py``) these are the 852 tensors of the official state dict
  (668 live, 184 dead).
  """
  return _layout(_structure_from_config(model_config))


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def select_state_dict(checkpoint, entry: str | None = None) -> dict[str, np.ndarray]:
  """Picks the state_dict out of a loaded checkpoint.

  Args:
    checkpoint: what :func:`load_torch_checkpoint` returned: a training checkpoint
      (``{"model", "ema", ...}``) or a bare state_dict.
    entry: which entry of a training checkpoint to use ("ema" or "model"); None means "ema".
      Must be None for a bare state_dict.
  Returns:
    {official key: array}, with a DDP ``module.`` (or ``_orig_mod.``) prefix removed.
  """
  if not isinstance(checkpoint, dict):
    raise ValueError(f"checkpoint holds a {type(checkpoint).__name__}, not a dict")
  bare = checkpoint and all(isinstance(v, np.ndarray) for v in checkpoint.values())
  if bare:
    if entry is not None:
      raise ValueError(
          f"this checkpoint is a bare state_dict ({len(checkpoint)} tensors), it has no "
          f"{entry!r} entry: leave the entry unset")
    state_dict = checkpoint
  else:
    entry = entry or "ema"
    if entry not in checkpoint:
      raise ValueError(
          f"checkpoint has no {entry!r} entry; its entries are: "
          f"{', '.join(map(repr, checkpoint))}")
    state_dict = checkpoint[entry]
    if not isinstance(state_dict, dict):
      raise ValueError(f"checkpoint entry {entry!r} is a {type(state_dict).__name__}, "
                       "not a state_dict")
  for prefix in _WRAPPER_PREFIXES:
    if state_dict and all(isinstance(k, str) and k.startswith(prefix) for k in state_dict):
      state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def _check_state_dict(state_dict, layout: list[OfficialTensor]) -> None:
  """Raises ValueError listing every missing, unknown, non-tensor or wrongly shaped key."""
  live = {t.key: t for t in layout if t.live}
  dead = {t.key for t in layout if not t.live}
  missing = [k for k in live if k not in state_dict]
  unknown = [k for k in state_dict if k not in live and k not in dead]
  not_tensors, wrong_shape = [], []
  for key, value in state_dict.items():
    if key not in live:
      continue
    if not isinstance(value, np.ndarray):
      not_tensors.append(f"{key} ({type(value).__name__})")
    elif tuple(value.shape) != live[key].shape:
      wrong_shape.append(f"{key}: {tuple(value.shape)}, expected {live[key].shape}")
  problems = []
  for title, items in (("missing keys", missing), ("unknown keys", unknown),
                       ("values that are not tensors", not_tensors),
                       ("wrong shapes", wrong_shape)):
    if items:
      problems.append(f"{len(items)} {title}:\n  " + "\n  ".join(items))
  if problems:
    raise ValueError(
        "the state_dict does not match the official PIDM layout of this model config (is the "
        "config the one the checkpoint was trained with?)\n" + "\n".join(problems))


def official_to_params(state_dict, model_config) -> dict[Path, np.ndarray]:
  """Official state_dict -> {NNX parameter path: array in pidm_jax layout} (dead keys dropped).

  Raises:
    ValueError: listing every missing key, unknown key, non-tensor value and wrong shape.
  """
  layout = official_layout(model_config)
  _check_state_dict(state_dict, layout)
  params = {}
  for t in layout:
    if t.live:
      for path, value in zip(t.ours, t.to_ours(np.asarray(state_dict[t.key]))):
        params[path] = value
  return params


def _abstract_model(model_config, seed: int):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from pidm_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from pidm_jax.models import PIDM  # pylint: disable=g-import-not-at-top
  return sharding_lib.abstract_module(lambda: PIDM(model_config, rngs=nnx.Rngs(seed)))


def convert_official_state_dict(state_dict, model_config, *, seed: int = 0):
  """Builds a :class:`~pidm_jax.models.PIDM` holding the weights of an official state_dict.

  Args:
    state_dict: {official key: array}, e.g. ``select_state_dict(load_torch_checkpoint(path))``.
      The 184 dead official tensors (docs/architecture.md) may be present or not; they are
      skipped by name.
    model_config: the ``model`` section of a pidm_jax config (``configs/default.py`` for the
      released checkpoint).
    seed: seeds the model's dropout random stream (no parameter is drawn at random).
  Returns:
    The model with every parameter set from the state_dict (float arrays are cast to the
    config's ``param_dtype``), in the mode a new PIDM starts in (call ``.eval()`` to sample).
  Raises:
    ValueError: listing every missing key, unknown key, non-tensor value and wrong shape.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  params = official_to_params(state_dict, model_config)
  graphdef, param_state, rest = nnx.split(_abstract_model(model_config, seed), nnx.Param, ...)
  flat = list(nnx.to_flat_state(param_state))
  mismatch = {path for path, _ in flat} ^ set(params)
  if mismatch:  # the layout and the model disagree: a bug here, not in the user's input
    raise RuntimeError(f"convert layout does not cover the model: {sorted(map(str, mismatch))}")
  for path, var in flat:
    target = var.get_value()
    if tuple(params[path].shape) != tuple(target.shape):
      raise RuntimeError(f"convert layout shape {params[path].shape} != model shape "
                         f"{target.shape} at {path}")
    var.set_value(jnp.asarray(np.asarray(params[path], dtype=np.float32), dtype=target.dtype))
  model = nnx.merge(graphdef, param_state, rest)
  nnx.reseed(model, default=seed)
  return model


def _dead_value(t: OfficialTensor, seed: int) -> np.ndarray:
  if t.init == "zeros":
    return np.zeros(t.shape, np.float32)
  rng = np.random.default_rng([seed, zlib.crc32(t.key.encode())])
  bound = 1.0 / math.sqrt(t.fan_in)
  return rng.uniform(-bound, bound, t.shape).astype(np.float32)


def export_official_state_dict(model, *, seed: int = 0) -> dict[str, np.ndarray]:
  """A pidm_jax PIDM's weights as an official state_dict (key order, layouts, float32).

  Every key the official model has is written, dead tensors included, so the official code loads
  it with ``strict=True``. Dead tensors are filled as the official initialisation leaves them
  (training never changes them): zeros for the zero-initialised ``proj_out1``, and PyTorch's
  default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) draws for ``cond_emb_layers``, ``qkv``, the
  encoder's ``emb_layers`` and ``encoder.time_embed``, from a NumPy generator seeded with
  (``seed``, CRC-32 of the key), so the output is deterministic.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  flat = {path: var.get_value()
          for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  out = {}
  for t in _layout(_structure_from_model(model)):
    if t.live:
      value = t.to_official(*[np.asarray(flat[p], dtype=np.float32) for p in t.ours])
      out[t.key] = np.ascontiguousarray(value, dtype=np.float32)
    else:
      out[t.key] = _dead_value(t, seed)
  return out


# =================================================================================================
# 3. Files and the command line
# =================================================================================================

def save_torch_state_dict(path, state_dict: dict[str, np.ndarray], config=None) -> str:
  """Writes an official state_dict for the official PyTorch code; returns the path written.

  ``*.safetensors`` paths get a safetensors file (load with ``safetensors.torch.load_file``).
  Otherwise, when PyTorch is importable, a ``torch.save`` file of ``{"ema": sd, "model": sd}``
  (what the official ``predict.py`` / ``train.py`` read; both entries share storage); without
  PyTorch, a ``.safetensors`` file next to the requested name. With ``config``, the pidm_jax
  config travels along as JSON text: the ``pidm_jax_config`` entry of the torch file (the official
  code reads only ``ema`` / ``model``) or the ``pidm_jax_config`` metadata of the safetensors file.
  """
  path = os.fspath(path)
  config_text = None
  if config is not None:
    from pidm_jax import checkpointing  # pylint: disable=g-import-not-at-top
    config_text = json.dumps(checkpointing.config_to_json(config), sort_keys=True)
  if not path.endswith(".safetensors"):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      path = os.path.splitext(path)[0] + ".safetensors"
    else:
      tensors = {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
      entries = {"ema": tensors, "model": tensors}
      if config_text is not None:
        entries["pidm_jax_config"] = config_text
      torch.save(entries, path)
      return path
  metadata = {"format": "pt"}
  if config_text is not None:
    metadata["pidm_jax_config"] = config_text
  save_safetensors(path, state_dict, metadata=metadata)
  return path


def load_config(path):
  """Runs a config file's ``get_config()`` (an ml_collections ConfigDict)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path}")
  spec = importlib.util.spec_from_file_location("_pidm_convert_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path} has no get_config()")
  return module.get_config()


_USAGE = """Converts the official PIDM PyTorch checkpoint to a pidm_jax Orbax checkpoint (needs no
PyTorch; pickled code is never run), or back with --to_torch.

  python -m pidm_jax.convert --checkpoint=last.pt --output=ckpt/pidm [--config=configs/default.py]
  python -m pidm_jax.convert --to_torch --checkpoint=ckpt/pidm --output=pidm.pt [--config=...]
"""


def define_flags(fv) -> None:
  """The command's absl flags, on the FlagValues ``fv``."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("checkpoint", None, "official checkpoint (torch.save file, e.g. last.pt, or "
                      ".safetensors); with --to_torch: a pidm_jax checkpoint directory (its EMA "
                      "weights)", flag_values=fv, required=True)
  flags.DEFINE_string("output", None, "output checkpoint directory; with --to_torch: output file "
                      "(.pt, or .safetensors)", flag_values=fv, required=True)
  flags.DEFINE_enum("entry", None, ["ema", "model"], "which weights of a training checkpoint to "
                    "convert (default: ema)", flag_values=fv)
  config_flags.DEFINE_config_file(
      "config", None, "pidm_jax config file whose model section matches the checkpoint (default: "
      "configs/default.py, the paper's model; with --to_torch: the config stored with the "
      "checkpoint)", flag_values=fv, lock_config=True)
  flags.DEFINE_bool("to_torch", False, "export pidm_jax weights as an official state_dict instead",
                    flag_values=fv)
  flags.DEFINE_integer("seed", 0, "seed of the dropout stream (import) / of dead tensors (export)",
                       flag_values=fv)


def main(argv=None) -> int:
  """Command line: official checkpoint -> Orbax (default) or pidm_jax Orbax -> official.

  ``argv`` without the program name (default: ``sys.argv[1:]``). A user error (a missing or
  unreadable file, a pickle that would run code, weights that do not fit the config, a config that
  does not predict eps) ends with one line ``error: ...`` and status 2.
  """
  from pidm_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from pidm_jax import console  # pylint: disable=g-import-not-at-top
  args = console.parse_own_flags(argv, define_flags, _USAGE)
  config, config_name = args.config, "the given --config"
  try:
    if config is None and args.to_torch:
      from configs import stored  # pylint: disable=g-import-not-at-top
      config, config_name = stored.get_config(args.checkpoint), "the checkpoint's stored config"
    elif config is None:
      config_name = console.config_file("default")
      config = load_config(config_name)
    prediction = config.diffusion.prediction
    if prediction != "eps":
      raise ValueError(f"the official PIDM predicts eps, but {config_name} sets "
                       f"diffusion.prediction = {prediction!r}: its weights mean something else; "
                       "convert with an eps config")
    if args.to_torch:
      model = checkpointing.load_model(args.checkpoint, config)
      written = save_torch_state_dict(args.output,
                                      export_official_state_dict(model, seed=args.seed), config)
      note = "" if written == args.output else " (PyTorch is not installed: wrote safetensors)"
      print(f"wrote official state_dict to {written}{note}")
      return 0

    checkpoint = load_torch_checkpoint(args.checkpoint)
    state_dict = select_state_dict(checkpoint, args.entry)
    model = convert_official_state_dict(state_dict, config.model, seed=args.seed)
  except (FileNotFoundError, IsADirectoryError, ValueError, UnsafePickleError) as e:
    console.fail(e, keep_lines=isinstance(e, checkpointing.ConfigMismatchError))
  checkpointing.save_params(args.output, model, config)
  source = "bare state_dict" if state_dict is checkpoint or len(state_dict) == len(checkpoint) \
      else f"entry {args.entry or 'ema'!r}"
  print(f"converted {len(state_dict)} tensors ({source}) of {args.checkpoint} into {args.output}")
  return 0


def run():
  """The ``python -m pidm_jax.convert`` / ``pidm-convert`` entry point."""
  raise SystemExit(main())


if __name__ == "__main__":
  run()
