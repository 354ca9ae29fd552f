"""TFDS builders and the grain input pipeline for pidm_jax.

Builders (each in its own module, registered with TFDS when imported; build them with
``python -m input_pipeline.build``): ``deep_fashion`` (``deep_fashion.py``), ``market1501``
(``market1501.py``), ``person_folder`` (``folder.py``, your own images) and ``synthetic_people``
(``synthetic_people.py``). All write the pair layout of ``features.py``.

Pipeline (``pipeline.py``): ``create_datasets(config, batch_sharding)`` -> (training iterator of
global batches, evaluation data). The names below are imported on first use, so importing the
package stays cheap.
"""

import importlib

_EXPORTS = {
    "create_datasets": "input_pipeline.pipeline",
    "PairTransform": "input_pipeline.pipeline",
    "EvalData": "input_pipeline.pipeline",
    "BuildError": "input_pipeline.manual_data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f"module 'input_pipeline' has no attribute {name!r}")
  value = getattr(importlib.import_module(module), name)
  globals()[name] = value
  return value
