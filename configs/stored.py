"""The config stored with a checkpoint: ``--config=configs/stored.py:<checkpoint directory>``.

Every checkpoint this project writes (training runs, converted official weights, parameter exports)
holds its full config (``<checkpoint directory>/config.json``). The sampling tools (``sample.py``,
``python -m pidm_jax.generate``, ``python -m pidm_jax.convert --to_torch``) use it when no
``--config`` is given; ``--config.sample.steps=50`` and other overrides apply on top of it as on
any config file.
"""

import os

import ml_collections
from ml_collections import config_dict

from configs import default


def get_config(checkpoint: str = "") -> ml_collections.ConfigDict:
  if not checkpoint:
    raise ValueError(
        "configs/stored.py needs the checkpoint directory: "
        "--config=configs/stored.py:<checkpoint directory>"
    )
  from pidm_jax import checkpointing  # pylint: disable=g-import-not-at-top

  stored = checkpointing.read_config_json(os.path.expanduser(checkpoint))  # local or gs://
  if stored is None:
    raise ValueError(
        f"checkpoint {checkpoint} has no stored config (no config.json; "
        "checkpoints of older runs need their config: --config=configs/<x>.py)"
    )
  # The stored values laid over the full config structure, whose placeholders keep the field types
  # JSON cannot carry (an unset ``data.data_dir`` is a str field, so it can still be overridden).
  config = default.get_config()
  _lay_over(config, _tuples(stored))
  return config


def _lay_over(config: ml_collections.ConfigDict, stored: dict) -> None:
  for key, value in stored.items():
    if isinstance(value, dict):
      if key not in config or not isinstance(config[key], ml_collections.ConfigDict):
        with config.ignore_type():
          config[key] = ml_collections.ConfigDict()
      _lay_over(config[key], value)
    elif value is None and key in config:
      config[key] = None  # a placeholder stays a placeholder of its type
    elif value is None:
      config[key] = config_dict.placeholder(str)
    else:
      with config.ignore_type():
        config[key] = value


def _tuples(value):
  """JSON lists back to tuples (as the config files write them)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value
