"""Official PIDM PyTorch checkpoints <-> pidm_jax parameters, without PyTorch.

Reading the checkpoint files safely (``torch.save`` zip and legacy files, ``.safetensors``,
``.npz``; pickled code never runs) is :mod:`pidm_jax.tensor_files`; its public names
(:func:`load_torch_checkpoint`, :func:`save_safetensors`, :func:`load_safetensors`,
:class:`UnsafePickleError`, :class:`CheckpointFormatError`, :class:`Placeholder`,
:class:`TorchDtype`) are importable from here too. This module holds two parts, in file order:

1. **The official <-> pidm_jax name and layout mapping** (:func:`official_layout`), derived
   from the block plan (``down_path_plan``/``up_path_plan``) of the model config, or from the
   block structure of a built model, so it holds for any config.
   :func:`convert_official_state_dict` loads an official state_dict into a
   :class:`~pidm_jax.models.PIDM`; :func:`export_official_state_dict` writes one back.

2. **The command line**: ``python -m pidm_jax.convert --checkpoint last.pt --output DIR`` writes a
   parameters-only Orbax checkpoint (:func:`pidm_jax.checkpointing.save_params`) of the converted
   (EMA by default) weights, which sampling loads and training can start from; ``--to_torch``
   goes the other way.

Layouts (torch module conventions): Conv2d weight (O, I, kh, kw) -> kernel (kh, kw, I, O); Linear
(O, I) -> (I, O); attention Conv1d (O, I, 1) -> Dense kernel (I, O); ``to_kv`` (2C, C, 1) is split
into K = output rows [0, C) and V = rows [C, 2C); GroupNorm weight/bias -> scale/bias. PyTorch
layouts exist only in this module.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import zlib
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx, traverse_util
from ml_collections import config_flags

from pidm_jax import checkpointing, console, model_params
from pidm_jax.models import unet
from pidm_jax.tensor_files import (
    CheckpointFormatError,
    Placeholder,
    TorchDtype,
    UnsafePickleError,
    load_safetensors,
    load_torch_checkpoint,
    save_safetensors,
)

__all__ = [
    # reading and writing files (pidm_jax.tensor_files)
    "CheckpointFormatError",
    "Placeholder",
    "TorchDtype",
    "UnsafePickleError",
    "load_safetensors",
    "load_torch_checkpoint",
    "save_safetensors",
    # the mapping
    "OfficialTensor",
    "official_layout",
    "select_state_dict",
    "official_to_params",
    "convert_official_state_dict",
    "export_official_state_dict",
    # files and the command line
    "save_torch_state_dict",
    "load_config",
    "define_flags",
    "main",
    "run",
]


# =================================================================================================
# 1. The official <-> pidm_jax mapping
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
  return OfficialTensor(
      key,
      shape,
      True,
      tuple(ours),
      tuple(tuple(s) for s in ours_shapes),
      to_ours=to_ours,
      to_official=to_official,
  )


def _dead(key, shape, init, fan_in=None) -> OfficialTensor:
  return OfficialTensor(key, tuple(shape), False, init=init, fan_in=fan_in)


def _conv(key, path, cin, cout, k):
  return [
      _live(
          f"{key}.weight",
          [path + ("kernel",)],
          [(k, k, cin, cout)],
          _conv_to_ours,
          _conv_to_official,
      ),
      _live(f"{key}.bias", [path + ("bias",)], [(cout,)], _same, _same_back),
  ]


def _linear(key, path, din, dout):
  return [
      _live(
          f"{key}.weight", [path + ("kernel",)], [(din, dout)], _linear_to_ours, _linear_to_official
      ),
      _live(f"{key}.bias", [path + ("bias",)], [(dout,)], _same, _same_back),
  ]


def _conv1d(key, path, c):
  return [
      _live(f"{key}.weight", [path + ("kernel",)], [(c, c)], _conv1d_to_ours, _conv1d_to_official),
      _live(f"{key}.bias", [path + ("bias",)], [(c,)], _same, _same_back),
  ]


def _norm(key, path, c):  # GroupNorm32 wraps nnx.GroupNorm as ``.norm``
  return [
      _live(f"{key}.weight", [path + ("norm", "scale")], [(c,)], _same, _same_back),
      _live(f"{key}.bias", [path + ("norm", "bias")], [(c,)], _same, _same_back),
  ]


def _dead_linear(key, din, dout, conv1d=False):
  weight = (dout, din, 1) if conv1d else (dout, din)
  return [
      _dead(f"{key}.weight", weight, "torch_default", din),
      _dead(f"{key}.bias", (dout,), "torch_default", din),
  ]


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
      _live(
          f"{key}.to_kv.weight",
          [path + ("to_k", "kernel"), path + ("to_v", "kernel")],
          [(c, c), (c, c)],
          _kv_weight_to_ours,
          _kv_weight_to_official,
      ),
      _live(
          f"{key}.to_kv.bias",
          [path + ("to_k", "bias"), path + ("to_v", "bias")],
          [(c,), (c,)],
          _kv_bias_to_ours,
          _kv_bias_to_official,
      ),
  ]
  out += _conv1d(f"{key}.to_q", path + ("to_q",), c)
  out += [
      _dead(f"{key}.proj_out1.weight", (c, c, 1), "zeros"),
      _dead(f"{key}.proj_out1.bias", (c,), "zeros"),
  ]
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
  down_path_plan, up_path_plan = unet.down_path_plan, unet.up_path_plan
  down = down_path_plan(cfg)
  up = up_path_plan(cfg)
  return _Structure(
      time_dim=int(cfg.base_width),
      embed_dim=int(cfg.embed_dim),
      denoiser_in=int(cfg.in_channels + cfg.pose_channels),
      encoder_in=int(cfg.in_channels),
      out_channels=int(cfg.out_channels),
      first_width=down[0].out_channels,
      down=tuple((p.in_channels, p.out_channels, p.attention) for p in down[1:]),
      encoder_down=tuple((p.in_channels, p.out_channels) for p in down[1:]),
      middle=down[-1].out_channels,
      up=tuple(
          (p.in_channels + p.skip_channels, p.out_channels, p.attention, p.upsample) for p in up
      ),
  )


def _structure_from_model(model) -> _Structure:
  d, e = model.denoiser, model.encoder
  return _Structure(
      time_dim=d.time_embed.linear1.in_features,
      embed_dim=d.time_embed.linear2.out_features,
      denoiser_in=d.input_conv.in_features,
      encoder_in=e.input_conv.in_features,
      out_channels=d.out_conv.out_features,
      first_width=d.input_conv.out_features,
      down=tuple(
          (b.res.in_conv.in_features, b.res.in_conv.out_features, b.attn is not None)
          for b in d.input_blocks
      ),
      encoder_down=tuple((b.res.in_conv.in_features, b.res.in_conv.out_features) for b in e.blocks),
      middle=d.middle.res1.in_conv.in_features,
      up=tuple(
          (
              b.res.in_conv.in_features,
              b.res.in_conv.out_features,
              b.attn is not None,
              b.up is not None,
          )
          for b in d.output_blocks
      ),
  )


def _layout(s: _Structure) -> list[OfficialTensor]:
  """Every official state_dict tensor, in the official order, with its pidm_jax counterpart."""
  den, enc = ("denoiser",), ("encoder",)
  out = _linear("time_embed.time_embed.0", den + ("time_embed", "linear1"), s.time_dim, s.embed_dim)
  out += _linear(
      "time_embed.time_embed.2", den + ("time_embed", "linear2"), s.embed_dim, s.embed_dim
  )
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
      out += _res_block(f"output_blocks.{k}.{layer}", path + ("up",), cout, cout, s.embed_dim, True)
  last = s.up[-1][1] if s.up else s.middle
  out += _norm("out.0", den + ("out_norm",), last)
  out += _conv("out.2", den + ("out_conv",), last, s.out_channels, 3)
  out += _dead_linear("encoder.time_embed.0", s.time_dim, s.embed_dim)
  out += _dead_linear("encoder.time_embed.2", s.embed_dim, s.embed_dim)
  out += _conv("encoder.input_blocks.0.0", enc + ("input_conv",), s.encoder_in, s.first_width, 3)
  for k, (cin, cout) in enumerate(s.encoder_down, start=1):
    out += _res_block(
        f"encoder.input_blocks.{k}.0", enc + ("blocks", k - 1, "res"), cin, cout, s.embed_dim, False
    )
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
          f"{entry!r} entry: leave the entry unset"
      )
    state_dict = checkpoint
  else:
    entry = entry or "ema"
    if entry not in checkpoint:
      raise ValueError(
          f"checkpoint has no {entry!r} entry; its entries are: "
          f"{', '.join(map(repr, checkpoint))}"
      )
    state_dict = checkpoint[entry]
    if not isinstance(state_dict, dict):
      raise ValueError(
          f"checkpoint entry {entry!r} is a {type(state_dict).__name__}, " "not a state_dict"
      )
  for prefix in _WRAPPER_PREFIXES:
    if state_dict and all(isinstance(k, str) and k.startswith(prefix) for k in state_dict):
      state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
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
  for title, items in (
      ("missing keys", missing),
      ("unknown keys", unknown),
      ("values that are not tensors", not_tensors),
      ("wrong shapes", wrong_shape),
  ):
    if items:
      problems.append(f"{len(items)} {title}:\n  " + "\n  ".join(items))
  if problems:
    raise ValueError(
        "the state_dict does not match the official PIDM layout of this model config (is the "
        "config the one the checkpoint was trained with?)\n" + "\n".join(problems)
    )


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

  params = official_to_params(state_dict, model_config)
  spec = model_params.ModelSpec.from_config(model_config)
  shapes = traverse_util.flatten_dict(spec.param_state.to_pure_dict())
  mismatch = set(shapes) ^ set(params)
  if mismatch:  # the layout and the model disagree: a bug here, not in the user's input
    raise RuntimeError(f"convert layout does not cover the model: {sorted(map(str, mismatch))}")
  values = {}
  for path, target in shapes.items():
    if tuple(params[path].shape) != tuple(target.shape):
      raise RuntimeError(
          f"convert layout shape {params[path].shape} != model shape " f"{target.shape} at {path}"
      )
    values[path] = jnp.asarray(np.asarray(params[path], dtype=np.float32), dtype=target.dtype)
  # train mode, as a new PIDM starts, with the dropout stream seeded from ``seed``
  return spec.merge(traverse_util.unflatten_dict(values), train=True, dropout_key=seed)


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

  flat = {path: var.get_value() for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  out = {}
  for t in _layout(_structure_from_model(model)):
    if t.live:
      value = t.to_official(*[np.asarray(flat[p], dtype=np.float32) for p in t.ours])
      out[t.key] = np.ascontiguousarray(value, dtype=np.float32)
    else:
      out[t.key] = _dead_value(t, seed)
  return out


# =================================================================================================
# 2. Files and the command line
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

  flags.DEFINE_string(
      "checkpoint",
      None,
      "official checkpoint (torch.save file, e.g. last.pt, or "
      ".safetensors); with --to_torch: a pidm_jax checkpoint directory (its EMA "
      "weights)",
      flag_values=fv,
      required=True,
  )
  flags.DEFINE_string(
      "output",
      None,
      "output checkpoint directory; with --to_torch: output file " "(.pt, or .safetensors)",
      flag_values=fv,
      required=True,
  )
  flags.DEFINE_enum(
      "entry",
      None,
      ["ema", "model"],
      "which weights of a training checkpoint to " "convert (default: ema)",
      flag_values=fv,
  )
  config_flags.DEFINE_config_file(
      "config",
      None,
      "pidm_jax config file whose model section matches the checkpoint (default: "
      "configs/default.py, the paper's model; with --to_torch: the config stored with the "
      "checkpoint)",
      flag_values=fv,
      lock_config=True,
  )
  flags.DEFINE_bool(
      "to_torch", False, "export pidm_jax weights as an official state_dict instead", flag_values=fv
  )
  flags.DEFINE_integer(
      "seed", 0, "seed of the dropout stream (import) / of dead tensors (export)", flag_values=fv
  )


def main(argv=None) -> int:
  """Command line: official checkpoint -> Orbax (default) or pidm_jax Orbax -> official.

  ``argv`` without the program name (default: ``sys.argv[1:]``). A user error (a missing or
  unreadable file, a pickle that would run code, weights that do not fit the config, a config that
  does not predict eps) ends with one line ``error: ...`` and status 2.
  """

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
      raise ValueError(
          f"the official PIDM predicts eps, but {config_name} sets "
          f"diffusion.prediction = {prediction!r}: its weights mean something else; "
          "convert with an eps config"
      )
    if args.to_torch:
      model = checkpointing.load_model(args.checkpoint, config)
      written = save_torch_state_dict(
          args.output, export_official_state_dict(model, seed=args.seed), config
      )
      note = "" if written == args.output else " (PyTorch is not installed: wrote safetensors)"
      print(f"wrote official state_dict to {written}{note}")
      return 0

    checkpoint = load_torch_checkpoint(args.checkpoint)
    state_dict = select_state_dict(checkpoint, args.entry)
    model = convert_official_state_dict(state_dict, config.model, seed=args.seed)
  except (FileNotFoundError, IsADirectoryError, ValueError, UnsafePickleError) as e:
    console.fail(e, keep_lines=isinstance(e, checkpointing.ConfigMismatchError))
  checkpointing.save_params(args.output, model, config)
  source = (
      "bare state_dict"
      if state_dict is checkpoint or len(state_dict) == len(checkpoint)
      else f"entry {args.entry or 'ema'!r}"
  )
  print(f"converted {len(state_dict)} tensors ({source}) of {args.checkpoint} into {args.output}")
  return 0


def run():
  """The ``python -m pidm_jax.convert`` / ``pidm-convert`` entry point."""
  raise SystemExit(main())


if __name__ == "__main__":
  run()
