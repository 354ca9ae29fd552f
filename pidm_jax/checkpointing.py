"""The one module that reads and writes Orbax checkpoints.

A checkpoint directory is an Orbax ``CheckpointManager`` directory: one sub-directory per step,
each holding these items:

* ``ema_params``: the EMA parameters (what sampling and evaluation use). Converted official
  weights are written as a step-0 checkpoint with only this item (and ``config``).
* ``train_state``: step, parameters, Optax state and RNG of a training run (absent in a
  parameters-only checkpoint).
* ``data_iterator``: the grain iterator state of each process, so a resumed run sees exactly the
  data it would have seen.
* ``config``: the run's config as JSON (also written beside the steps as ``config.json``).

Parameters are stored as pure nested dicts (``nnx.State.to_pure_dict()``). Restores go against an
abstract target that carries the *current* shardings, so a checkpoint written on one mesh restores
onto any other mesh or device count.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from pidm_jax import model_params

EMA_PARAMS = "ema_params"
TRAIN_STATE = "train_state"
DATA_ITERATOR = "data_iterator"
CONFIG = "config"


def config_to_json(config) -> dict:
  """A JSON-serialisable dict of a ConfigDict."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort())
  return dict(config)


def _abs(path) -> str:
  path = os.fspath(path)
  return path if "://" in path else os.path.abspath(path)  # gs:// and other remote paths as given


def pure_params(params: Any) -> dict:
  """Parameters as a pure nested dict, from a PIDM, an nnx.State or a pure dict."""
  if isinstance(params, nnx.Module):
    params = nnx.state(params, nnx.Param)
  if isinstance(params, nnx.State):
    params = params.to_pure_dict()
  return params


def _item_handlers() -> dict:
  """A handler for every item a step may hold: with them Orbax can describe all of a step's items
  when only some are restored (without, each restore logs 'Item ... could not be restored')."""

  return {
      TRAIN_STATE: ocp.StandardCheckpointHandler(),
      EMA_PARAMS: ocp.StandardCheckpointHandler(),
      CONFIG: ocp.JsonCheckpointHandler(),
      DATA_ITERATOR: grain.checkpoint.CheckpointHandler(),
  }


def create_manager(
    directory, *, max_to_keep: int | None = 3, save_interval_steps: int = 1, async_save: bool = True
) -> ocp.CheckpointManager:
  """An Orbax CheckpointManager over ``directory`` (created if needed)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      save_interval_steps=save_interval_steps,
      enable_async_checkpointing=async_save,
      create=True,
  )
  return ocp.CheckpointManager(_abs(directory), options=options, item_handlers=_item_handlers())


def save_params(directory, params: Any, config, step: int = 0) -> str:
  """Writes a parameters-only checkpoint (``ema_params`` + ``config``) and returns its path."""
  mngr = create_manager(directory, max_to_keep=None, async_save=False)
  mngr.save(
      step,
      args=ocp.args.Composite(
          **{
              EMA_PARAMS: ocp.args.StandardSave(pure_params(params)),
              CONFIG: ocp.args.JsonSave(config_to_json(config)),
          }
      ),
      force=True,
  )
  mngr.wait_until_finished()
  mngr.close()
  write_config_json(directory, config)
  return _abs(directory)


def write_config_json(directory, config) -> None:
  if jax.process_index() == 0:
    path = epath.Path(_abs(directory)) / "config.json"
    path.write_text(json.dumps(config_to_json(config), indent=2, sort_keys=True))


def latest_step(directory) -> int | None:
  """The newest step in a checkpoint directory, or None if it holds none."""
  if not epath.Path(_abs(directory)).exists():
    return None
  mngr = create_manager(directory, async_save=False)
  try:
    return mngr.latest_step()
  finally:
    mngr.close()


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _structure_differences(directory, step, target) -> str | None:
  """The differences between a stored parameter tree and the expected one ("" when the stored
  structure matches), or None when the stored structure itself cannot be read."""
  try:
    mngr = create_manager(directory, async_save=False)
    try:
      meta = mngr.item_metadata(step)
    finally:
      mngr.close()
    stored = meta[EMA_PARAMS] if meta is not None else None
    stored = getattr(stored, "tree", stored)
    if stored is None:
      return None
    stored_flat = {
        _path_str(p): tuple(getattr(v, "shape", ()))
        for p, v in jax.tree_util.tree_flatten_with_path(stored)[0]
    }
  except Exception:  # pylint: disable=broad-except  (any failure to read the metadata)
    return None
  want = {_path_str(p): tuple(v.shape) for p, v in jax.tree_util.tree_flatten_with_path(target)[0]}
  missing = sorted(set(want) - set(stored_flat))
  extra = sorted(set(stored_flat) - set(want))
  shapes = sorted(k for k in set(want) & set(stored_flat) if want[k] != stored_flat[k])
  parts = []
  for name, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes)):
    if keys:
      detail = [
          f"{k} {stored_flat.get(k, '')}->{want.get(k, '')}" if name == "wrong shape" else k
          for k in keys[:5]
      ]
      parts.append(f"{len(keys)} {name} (e.g. {', '.join(detail)})")
  return "; ".join(parts)


def _one_line(error: BaseException, limit: int = 300) -> str:
  """``Type: message`` of an error's root cause (TensorStore wraps the informative error, such as
  ``OUT_OF_RANGE: Error reading "..." in OCDBT database ...``, in a generic one), on one line."""
  seen = set()
  while error.__cause__ is not None and id(error) not in seen:
    seen.add(id(error))
    error = error.__cause__
  text = " ".join(str(error).split()).split(" See full TensorStore details")[0]
  return f"{type(error).__name__}: {text[:limit]}"


_filter_installed = False


def _quiet_failed_read_aftermath() -> None:
  """Keeps the aftermath of a failed Orbax read off stderr.

  When one array of a step cannot be read, Orbax's restore raises (the error this module reports)
  and leaves the other reads' coroutines and TensorStore callbacks behind; as they are finalised
  each prints "Exception ignored in: <coroutine _read_array_index_and_device_put>" with a full
  TensorStore spec, or "RuntimeError: Event loop is closed", hundreds of times for one step. This
  installs (once) an ``sys.unraisablehook`` that drops exactly those two and passes on every
  other unraisable exception; and a filter on the ``asyncio`` logger that drops its "exception
  was never retrieved" reports of those same reads.
  """
  global _filter_installed
  if _filter_installed:
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    value, obj = unraisable.exc_value, unraisable.object
    if (isinstance(value, RuntimeError) and str(value) == "Event loop is closed") or (
        getattr(obj, "__qualname__", "") == "_read_array_index_and_device_put"
    ):
      return
    previous(unraisable)

  def from_failed_read(record) -> bool:  # asyncio: "Future exception was never retrieved"
    error = record.exc_info[1] if record.exc_info else None
    while error is not None:
      text = str(error)
      if "Encountered error while reading array" in text or "in OCDBT database" in text:
        return False
      error = error.__cause__
    return True

  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(from_failed_read)
  _filter_installed = True


class UnreadableCheckpointError(ValueError):
  """No checkpoint step that was asked for (or, by default, none at all) can be read."""


def restore_ema_params(
    directory,
    model_config,
    *,
    mesh=None,
    config=None,
    step: int | None = None,
    log=None,
    spec: model_params.ModelSpec | None = None,
) -> dict:
  """Restores the EMA parameters of ``step`` (default: newest readable) as a pure dict on ``mesh``.

  With ``step=None`` a newest step that cannot be read (a truncated or corrupt file, an
  interrupted write) is reported through ``log`` (default: a Python warning) with its step,
  directory and error, and the next older step is tried; nothing is moved (this is a reader).
  Raises FileNotFoundError when the directory holds no checkpoint, ValueError listing the
  differences when the stored parameters do not match ``model_config`` (at once: an older step
  of the same run would not match either), and UnreadableCheckpointError naming every step tried
  and its error when none (or the given ``step``) can be read. ``spec``: the ``ModelSpec`` of
  ``model_config`` when the caller has one (building it traces the whole model).
  """
  path = epath.Path(_abs(directory))
  if not path.exists():
    raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
  if log is None:
    log = lambda message: warnings.warn(message, stacklevel=3)
  mngr = create_manager(directory, async_save=False)
  try:
    steps = sorted(mngr.all_steps(), reverse=True) if step is None else [step]
    if not steps:
      raise FileNotFoundError(f"{directory} holds no checkpoint (no step directories)")
    if step is not None and step not in mngr.all_steps():
      raise FileNotFoundError(
          f"{directory} has no checkpoint step {step} (steps: "
          f"{', '.join(map(str, sorted(mngr.all_steps()))) or 'none'})"
      )
    spec = spec if spec is not None else model_params.ModelSpec.from_config(model_config)
    target = spec.abstract_params(mesh, config)
    failed = []
    for candidate in steps:
      try:
        restored = mngr.restore(
            candidate, args=ocp.args.Composite(**{EMA_PARAMS: ocp.args.StandardRestore(target)})
        )
      except Exception as e:  # pylint: disable=broad-except  (tensorstore, Orbax errors)
        _quiet_failed_read_aftermath()
        differences = _structure_differences(directory, candidate, target)
        if differences:
          raise ValueError(
              f"checkpoint {directory} (step {candidate}) does not match the model config: "
              f"{differences}"
          ) from e
        failed.append((candidate, _one_line(e)))
        if candidate != steps[-1]:
          log(
              f"checkpoint step {candidate} in {directory} cannot be read ({_one_line(e)}); "
              "trying the next older step"
          )
        continue
      if failed:
        log(
            f"using checkpoint step {candidate} in {directory}: newer step(s) "
            f"{', '.join(str(s) for s, _ in failed)} cannot be read"
        )
      return restored[EMA_PARAMS]
    raise UnreadableCheckpointError(
        f"no checkpoint step in {directory} can be read ("
        + "; ".join(f"step {s}: {error}" for s, error in failed)
        + ")"
    )
  finally:
    mngr.close()


# Model fields that do not change what a checkpoint's network computes, only how it runs or trains:
# they may differ between the config a checkpoint was written with and the one that loads it.
RUNTIME_MODEL_FIELDS = frozenset(
    {
        "dtype",
        "param_dtype",
        "remat",
        "attention_implementation",
        "dropout",
        "cond_drop_prob",
        "pose_drop_prob",
    }
)


class ConfigMismatchError(ValueError):
  """A given config's model or diffusion differs from the one stored with a checkpoint."""


def _comparable(value):
  if isinstance(value, (list, tuple)):
    return tuple(_comparable(v) for v in value)
  if isinstance(value, float) and value.is_integer():
    return int(value)
  return value


def config_mismatches(stored: dict, config, sections=("model", "diffusion")) -> list[str]:
  """``section.field: stored X, given Y`` for each ``model`` / ``diffusion`` field that differs
  between a stored config (a dict, as ``read_config_json`` returns it) and ``config``. Fields
  absent from the stored config (older runs) and ``RUNTIME_MODEL_FIELDS`` are not compared."""
  given = config_to_json(config)
  lines = []
  for section in sections:
    old, new = stored.get(section) or {}, given.get(section) or {}
    for key in sorted(old):
      if section == "model" and key in RUNTIME_MODEL_FIELDS:
        continue
      if _comparable(old[key]) != _comparable(new.get(key)):
        lines.append(f"{section}.{key}: stored {old[key]!r}, given {new.get(key)!r}")
  return lines


def check_config(directory, config, sections=("model", "diffusion")) -> None:
  """Raises ConfigMismatchError, one line per differing field, when ``config``'s model or
  diffusion differs from the config stored beside the checkpoint in ``directory``; a checkpoint
  without a stored config passes."""
  stored = read_config_json(directory)
  if stored is None:
    return
  lines = config_mismatches(stored, config, sections)
  if lines:
    raise ConfigMismatchError(
        f"checkpoint {directory} was written with another {' or '.join(sections)} than the given "
        f"config ({len(lines)} field(s); drop the override or use the run's own config):\n  "
        + "\n  ".join(lines)
    )


def load_model(directory, config, *, mesh=None, step: int | None = None, log=None) -> nnx.Module:
  """A PIDM in eval mode holding the EMA parameters of a checkpoint, sharded on ``mesh``.

  Raises ConfigMismatchError (before anything is restored or compiled) when ``config``'s model or
  diffusion differs from the config stored with the checkpoint (see ``check_config``).
  """
  check_config(directory, config)
  spec = model_params.ModelSpec.from_config(config.model)
  params = restore_ema_params(
      directory, config.model, mesh=mesh, config=config, step=step, log=log, spec=spec
  )
  return spec.merge(params)


def read_config_json(directory) -> dict | None:
  """The config stored beside a checkpoint, or None."""
  path = epath.Path(_abs(directory)) / "config.json"
  if path.exists():
    return json.loads(path.read_text())
  return None


class TrainCheckpointer:
  """Checkpoints of a training run: asynchronous saves, the newest ``keep_checkpoints`` kept.

  Each save writes ``train_state`` (step, params, Optax state, RNG), ``ema_params``, the grain
  iterator state of every process and the config. ``restore`` reads them back against an abstract
  train state that carries the current shardings (any mesh, any device count).
  """

  def __init__(self, directory, config):
    self.directory = _abs(directory)
    self.config = config
    self._mngr = create_manager(
        self.directory, max_to_keep=config.train.keep_checkpoints, async_save=True
    )
    write_config_json(self.directory, config)

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state, data_iterator=None, force: bool = False) -> None:
    items = {
        TRAIN_STATE: ocp.args.StandardSave(_train_part(state)),
        EMA_PARAMS: ocp.args.StandardSave(state.ema_params),
        CONFIG: ocp.args.JsonSave(config_to_json(self.config)),
    }
    if data_iterator is not None:
      items[DATA_ITERATOR] = grain.checkpoint.CheckpointSave(data_iterator)
    self._mngr.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state, data_iterator=None, step: int | None = None):
    """The train state of ``step`` (default newest); restores ``data_iterator`` in place."""

    step = self._mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory} holds no checkpoint")
    items = {
        TRAIN_STATE: ocp.args.StandardRestore(_train_part(abstract_state)),
        EMA_PARAMS: ocp.args.StandardRestore(abstract_state.ema_params),
    }
    if data_iterator is not None:
      if DATA_ITERATOR not in self._mngr.item_metadata(step):
        raise ValueError(f"checkpoint step {step} in {self.directory} has no data iterator state")
      items[DATA_ITERATOR] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
    part = restored[TRAIN_STATE]
    return abstract_state.replace(
        step=part["step"],
        params=part["params"],
        opt_state=part["opt_state"],
        rng=part["rng"],
        ema_params=restored[EMA_PARAMS],
    )

  def restore_newest_readable(self, abstract_state, data_iterator=None, log=print):
    """The train state of the newest step that can be read, for resuming.

    A newer step that cannot be read (a truncated or corrupt file, an interrupted write) is
    reported with its step and error and, once an older step has been read, moved aside to
    ``<directory>/unreadable_step_<step>[_<n>]`` (never deleted). When no step can be read
    nothing is moved (the config may no longer fit any of them) and ValueError names every
    step's error and how to start over.
    """
    steps = sorted(self._mngr.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"{self.directory} holds no checkpoint")
    failed = []
    for step in steps:
      try:
        state = self.restore(abstract_state, data_iterator, step=step)
      except Exception as e:  # pylint: disable=broad-except  (tensorstore, Orbax, grain errors)
        _quiet_failed_read_aftermath()
        failed.append((step, _one_line(e)))
        log(f"checkpoint step {step} in {self.directory} cannot be read: {_one_line(e)}")
        continue
      for bad, _ in failed:
        self._move_aside(bad, log)
      if failed:
        self._mngr.reload()
      return state
    raise UnreadableCheckpointError(
        f"no checkpoint in {self.directory} can be read ("
        + "; ".join(f"step {step}: {error}" for step, error in failed)
        + "); nothing was moved. To start "
        "over, use another --workdir or move the checkpoints directory away; if the config "
        "changed since they were written, resume with the run's own config (config.json)"
    )

  def _move_aside(self, step: int, log) -> None:
    if jax.process_index() != 0:
      return
    source = epath.Path(self.directory) / str(step)
    target = epath.Path(self.directory) / f"unreadable_step_{step}"
    n = 1
    while target.exists():
      target = epath.Path(self.directory) / f"unreadable_step_{step}_{n}"
      n += 1
    source.rename(target)
    log(f"moved the unreadable step {step} aside to {target}")

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  @contextlib.contextmanager
  def finishing_on_error(self):
    """When the training loop fails (a damaged record, a non-finite loss), the asynchronous save
    in flight is finished before the error ends the program: otherwise the interpreter's exit cuts
    it off ("cannot schedule new futures after shutdown") and that step is lost."""
    try:
      yield
    except BaseException:
      try:
        self.close()
      except Exception as e:  # pylint: disable=broad-except  (the first error is the one to report)
        logging.error("finishing the checkpoint in flight failed: %s", e)
      raise

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()


def _train_part(state) -> dict:
  return {
      "step": state.step,
      "params": state.params,
      "opt_state": state.opt_state,
      "rng": state.rng,
  }
