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
   (pre-1.6) stream format and ``.safetensors`` files are read.

2. **The official <-> pidm_jax name and layout mapping** (:func:`official_key_layout`), derived
   from the model's block structure (which follows ``down_path_plan``/``up_path_plan``), so it
   holds for any config. :func:`convert_official_state_dict` loads an official state_dict into a
   :class:`~pidm_jax.models.PIDM`; :func:`export_official_state_dict` writes one back.

3. **The command line**: ``python -m pidm_jax.convert --checkpoint last.pt --output DIR`` writes an
   Orbax checkpoint of the converted (EMA by default) weights; ``--to-torch`` goes the other way.

Layouts (reference section 3.1): Conv2d weight (O, I, kh, kw) -> kernel (kh, kw, I, O); Linear
(O, I) -> (I, O); attention Conv1d (O, I, 1) -> Dense kernel (I, O); ``to_kv`` (2C, C, 1) is split
into K = output rows [0, C) and V = rows [C, 2C); GroupNorm weight/bias -> scale/bias. PyTorch
layouts exist only in this module.
"""

from __future__ import annotations

import collections
import io
import json
import math
import mmap
import os
import pickle
import struct
import zipfile
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
      raw = np.frombuffer(f.read(numel * dtype.itemsize), np.uint8)
      storages[key].data = _typed(raw, dtype, numel, big_endian, f"{path}: storage {key}")

    def load(pid):  # second pass: the same pickle with the data in place
      _, _storage_type, key, _location, _numel = pid[:5]
      storage = storages[str(key)]
      view = pid[5] if len(pid) > 5 else None
      if view is not None:  # (view_key, offset, size) of very old files
        _view_key, offset, size = view
        return _Storage(storage.key, storage.dtype, storage.data[int(offset):int(offset) + int(size)])
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
    out[name] = np.frombuffer(buf, dtype, count=math.prod(shape), offset=base + begin).reshape(shape)
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
