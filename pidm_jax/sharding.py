"""Device meshes, logical-axis rules and the shardings of parameters, train state and batches.

The mesh has two axes, ``('data', 'fsdp')``: the global batch is split over both, and large
parameter tensors are additionally split over ``'fsdp'`` (ZeRO-3 style; XLA inserts the
all-gathers). Parameters carry logical axis names (see ``pidm_jax.models.layers``); the config's
rules map them to mesh axes. A tensor stays replicated when it is small (fewer than
``min_shard_size`` elements) or when its dimension does not divide by the mesh axis size.

Multi-slice (multi-pod) meshes use ``mesh_utils.create_hybrid_device_mesh`` when DCN sizes are
given (``config.mesh.dcn_data``, ``config.mesh.dcn_fsdp``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from pidm_jax.models.layers import LOGICAL_AXES

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")

# The logical axis names of the models' parameters come from ``pidm_jax.models.layers``; which mesh
# axis each one maps to is configuration only: ``config.sharding.rules`` (``configs/default.py``).


def abstract_module(build):
  """``nnx.eval_shape(build)`` that also works inside a ``jax.set_mesh`` context.

  Under a context mesh NNX turns each parameter's logical axis names into a ``NamedSharding`` on
  that mesh, which fails for names that are not mesh axes. Only shapes and dtypes are wanted here
  (the real shardings come from :func:`state_shardings`), so every logical name is resolved as
  replicated.
  """
  with nnx.logical_axis_rules(tuple((name, None) for name in LOGICAL_AXES)):
    return nnx.eval_shape(build)


def _fill_sizes(sizes: Sequence[int], total: int, what: str) -> list[int]:
  sizes = [int(s) for s in sizes]
  if sum(s == -1 for s in sizes) > 1:
    raise ValueError(f"{what}: at most one axis size may be -1, got {sizes}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"{what}: axis sizes must be positive or -1, got {sizes}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if total % known:
      raise ValueError(f"{what}: {total} devices cannot be split as {sizes}")
    sizes[sizes.index(-1)] = total // known
  if math.prod(sizes) != total:
    raise ValueError(
        f"{what}: mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
        f"devices, but {total} are available"
    )
  return sizes


def create_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ('data', 'fsdp') mesh from ``config.mesh`` (one size may be -1 = the rest).

  With ``dcn_data``/``dcn_fsdp`` > 1 the mesh spans several slices: the per-slice (ICI) sizes
  are ``data``/``fsdp`` and the across-slice (DCN) sizes multiply them.
  """
  devices = list(devices if devices is not None else jax.devices())
  dcn = [int(mesh_config.dcn_data), int(mesh_config.dcn_fsdp)]
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if math.prod(dcn) > 1:
    if len(devices) % math.prod(dcn):
      raise ValueError(f"{len(devices)} devices cannot form {math.prod(dcn)} DCN slices")
    ici = _fill_sizes(
        [mesh_config.data, mesh_config.fsdp],
        len(devices) // math.prod(dcn),
        "config.mesh (per slice)",
    )
    array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    return Mesh(array, MESH_AXES, axis_types=axis_types)
  sizes = _fill_sizes([mesh_config.data, mesh_config.fsdp], len(devices), "config.mesh")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The leading (batch) dimension split over every mesh axis, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_size_divisor(mesh: Mesh) -> int:
  """Global batch sizes must be multiples of this."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_global_batch(rows: int, mesh: Mesh | None, what: str, processes: int = 1) -> None:
  """The one batch-size rule: a global batch of ``rows`` (pairs for training and evaluation data,
  images for sampling) must be positive and split evenly over the mesh's batch shards and over the
  ``processes`` that feed it. Raises ValueError naming ``what`` (e.g. the config field)."""
  rows = int(rows)
  if rows <= 0:
    raise ValueError(f"{what}: a global batch needs at least one row, got {rows}")
  if mesh is not None:
    divisor = batch_size_divisor(mesh)
    if rows % divisor:
      raise ValueError(
          f"{what}: {rows} per global batch must be a multiple of the {divisor} batch shards "
          f"of the mesh {dict(mesh.shape)}"
      )
  if rows % processes:
    raise ValueError(
        f"{what}: {rows} per global batch cannot be split evenly over {processes} processes"
    )


def training_pairs(batch_size: int) -> int:
  """Pairs per global training batch: ``config.train.batch_size`` counts samples, and each pair is
  trained in both directions, so it must be even."""
  if int(batch_size) <= 0 or int(batch_size) % 2:
    raise ValueError(
        f"config.train.batch_size={batch_size} must be even and positive: it counts samples, "
        "two per pair (both directions)"
    )
  return int(batch_size) // 2


def sampling_batch_size(requested: int, mesh: Mesh, needed: int | None = None) -> int:
  """The global sampling batch: ``requested`` (at least 1) rounded up to a multiple of the mesh's
  batch shards, and no larger than ``needed`` items rounded up the same way (when given)."""
  divisor = batch_size_divisor(mesh)
  size = -(-max(1, int(requested)) // divisor) * divisor
  if needed is not None:
    size = min(size, -(-max(1, int(needed)) // divisor) * divisor)
  return size


def spec_for(
    shape: Sequence[int],
    logical_axes: Sequence[str | None] | None,
    mesh: Mesh,
    rules: Sequence[tuple[str, str | None]],
    min_shard_size: int,
) -> P:
  """The PartitionSpec of one tensor from its logical axis names (see module docstring)."""
  if not logical_axes or math.prod(shape) < min_shard_size:
    return P()
  rule_map = dict(rules)
  out, used = [], set()
  for dim, name in zip(shape, logical_axes):
    axis = rule_map.get(name)
    if axis is None or axis in used or dim % mesh.shape[axis]:
      out.append(None)
    else:
      out.append(axis)
      used.add(axis)
  return P(*out)


def state_shardings(
    abstract_state: Any, mesh: Mesh, rules: Sequence[tuple[str, str | None]], min_shard_size: int
) -> Any:
  """NamedShardings for an ``nnx.State`` (abstract or concrete), from each Variable's metadata."""

  def one(var):
    axes = var.get_metadata().get("out_sharding") if isinstance(var, nnx.Variable) else None
    value = var.value if isinstance(var, nnx.Variable) else var
    return NamedSharding(mesh, spec_for(np.shape(value), axes, mesh, rules, min_shard_size))

  return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def rules_from_config(config) -> tuple:
  """Logical-axis rules from ``config.sharding.rules`` (a sequence of (logical, mesh) pairs)."""
  rules = tuple(
      (str(a), None if b in (None, "None", "") else str(b)) for a, b in config.sharding.rules
  )
  for logical, axis in rules:
    if axis is not None and axis not in MESH_AXES:
      raise ValueError(
          f"config.sharding.rules maps {logical!r} to unknown mesh axis {axis!r}; "
          f"mesh axes are {MESH_AXES}"
      )
    if logical not in LOGICAL_AXES:
      raise ValueError(
          f"config.sharding.rules names unknown logical axis {logical!r}; the "
          f"models' parameter axes are {LOGICAL_AXES}"
      )
  return rules


def min_shard_size_from_config(config) -> int:
  return int(config.sharding.min_shard_size)
