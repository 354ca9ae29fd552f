"""Generates a whole evaluation split with the official output naming, for the evaluation protocol.

  python -m pidm_jax.generate --checkpoint=ckpt/ --out=gen/ [--config=configs/<x>.py] \
      [--split=test] [--write_ground_truth] [--config.sample.steps=100] [--overwrite] \
      [--source_swap_pairs=16]

(the checkpoint's stored config is used unless ``--config`` is given)

then ``python -m pidm_jax.evaluate --generated gen --ground_truth gen/ground_truth ...``.

Every pair of the split is sampled once with the EMA parameters (``config.sample``: DDIM 100 steps,
guidance scale 2 is the official protocol), in global batches of ``config.sample.batch_size``
(rounded up to the mesh's batch shards) over all devices and hosts; batch k draws its noise from
``fold_in(key(config.seed), k)``, so the images do not depend on the number of devices or hosts.
Process 0 writes one 8-bit PNG per pair at the network's size, converted as the official script
does (``uint8(255 (x + 1) / 2)``, truncated):

* Output names: ``<src>_2_<tgt>_vis.png`` as the official ``gen.py``. A DeepFashion id
  ``img/MEN/Denim/id_00000080/01_1_front.png`` becomes ``fashionMENDenimid0000008001_1front``: the
  part after ``img/``, with the underscores of the id folder removed and, in the file name (without
  extension), only the first underscore kept, all joined under a ``fashion`` prefix. An id that is
  already such a flat ``fashion...`` name (the GFLA layout) keeps its stem. Any other id (synthetic
  ``train_00012/pose_2``, folder or Market-1501 names) is made a readable file name: extension
  dropped, every run of characters other than letters, digits, ``.`` and ``-`` (so ``/`` and ``_``
  too) replaced by ``-`` (``train-00012-pose-2``), which keeps ``_2_`` and ``_vis`` unambiguous.
* Ground truth (``--write_ground_truth``, in ``<out>/ground_truth`` unless ``--ground_truth_dir``):
  the pipeline's target image of each pair (the network's size), named as the evaluation matches
  it: ``deep<tgt>.png`` for DeepFashion names (the official ``deepfashion...`` files), else
  ``<tgt>.png``; written once per target.

Resumable: a batch whose files all exist is not sampled again (``--overwrite`` redoes everything).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags
from PIL import Image

from input_pipeline import pipeline
from pidm_jax import checkpointing, console, encoding, multihost, sampling, sharding
from pidm_jax.diffusion import GaussianDiffusion
from pidm_jax.evaluation import source_swap as swap_lib

_DEEPFASHION_ID_FOLDER = re.compile(r"id_?\d{8}")
_UNSAFE = re.compile(r"[^A-Za-z0-9.\-]+")
_IMAGE_EXT = re.compile(r"\.(png|jpe?g|bmp|webp)$", re.IGNORECASE)


def deepfashion_name(image_id: str) -> str | None:
  """The official flat name of a DeepFashion path id (no extension), or None if it is not one.

  ``img/MEN/Denim/id_00000080/01_1_front.png`` -> ``fashionMENDenimid0000008001_1front``.
  """
  parts = image_id.split("img/")[-1].split("/")
  if len(parts) != 4 or not _DEEPFASHION_ID_FOLDER.fullmatch(parts[2]):
    return None
  gender, category, person, filename = parts
  words = os.path.splitext(filename)[0].split("_")
  filename = words[0] + ("_" + "".join(words[1:]) if len(words) > 1 else "")
  return "fashion" + gender + category + person.replace("_", "") + filename


def image_stem(image_id: str) -> str:
  """The file-name stem of an image id in the generated names (see the module docstring)."""
  image_id = str(image_id)
  name = deepfashion_name(image_id)
  if name is not None:
    return name
  if "/" not in image_id and image_id.startswith("fashion"):
    return _IMAGE_EXT.sub("", image_id)
  stem = _UNSAFE.sub("-", _IMAGE_EXT.sub("", image_id)).strip("-")
  if not stem:
    raise ValueError(f"image id {image_id!r} gives an empty file name")
  return stem


def output_name(source_id: str, target_id: str) -> str:
  """``<src>_2_<tgt>_vis.png``, the official name of the sample of one pair."""
  return f"{image_stem(source_id)}_2_{image_stem(target_id)}_vis.png"


def ground_truth_name(target_id: str) -> str:
  """The ground-truth file the evaluation matches to the pair's output name."""
  stem = image_stem(target_id)
  return ("deep" + stem if stem.startswith("fashion") else stem) + ".png"


@dataclasses.dataclass
class SplitRun:
  """What a generation run (:func:`generate_split`) did."""

  out_dir: str
  ground_truth_dir: str | None
  num_pairs: int
  num_batches: int
  batch_size: int
  sampled_batches: int
  written: int
  seconds: float
  source_swap: dict | None = None  # the source-swap figures, with ``source_swap_pairs``


def generate_split(
    config,
    checkpoint: str | None,
    out_dir: str,
    *,
    split: str = "test",
    write_ground_truth: bool = False,
    ground_truth_dir: str | None = None,
    overwrite: bool = False,
    model=None,
    mesh=None,
    progress: bool = True,
    source_swap_pairs: int = 0,
    log=print,
) -> SplitRun:
  """Samples every pair of ``split`` and writes the PNGs (see the module docstring).

  Args:
    config: the run's ConfigDict (model, diffusion, data, sample, mesh, seed).
    checkpoint: checkpoint directory (its EMA parameters), unless ``model`` is given.
    out_dir: folder of the generated images (created).
    split: TFDS split of ``config.data``'s data set.
    write_ground_truth: also write each target image, named for ``pidm_jax.evaluate``.
    ground_truth_dir: where (default ``<out_dir>/ground_truth``).
    overwrite: sample and write every batch even if its files exist.
    model: an already loaded PIDM (skips the checkpoint).
    mesh: the device mesh (default: from ``config.mesh``).
    progress: a progress bar on process 0.
    source_swap_pairs: if positive, also run the source-swap evaluation
      (``pidm_jax.evaluation.source_swap``) on the first this many pairs of the split: each target
      pose sampled with the same noise from its own source and from another identity's; the
      figures (SSIM own / swapped / copying the source, body-region CIELAB colour error own /
      swapped) are logged, returned and written to ``<out_dir>/source_swap.json``.
    log: where the summary line goes.

  A (source, target) pair listed more than once is written once.

  Raises:
    ValueError: two different pairs would get the same output name (naming them); the data set,
      split or checkpoint cannot be read.
  """

  start = time.perf_counter()
  if source_swap_pairs < 0:
    raise ValueError(f"source_swap_pairs must be >= 0, got {source_swap_pairs}")
  options = sampling.SamplerOptions.from_config(config.sample)
  if mesh is None:
    mesh = sharding.create_mesh(config.mesh)
  batch_size = sharding.sampling_batch_size(config.sample.batch_size, mesh)
  _, eval_data = pipeline.create_datasets(
      config,
      sharding.batch_sharding(mesh),
      train_split=None,
      eval_split=split,
      eval_batch_size=batch_size,
  )
  n = eval_data.num_examples
  ids = eval_data.ids(np.arange(n))
  names = [output_name(s, t) for s, t in ids]
  owner = {}  # output name -> the first record with it
  clashes = set()
  for row, (name, pair) in enumerate(zip(names, ids)):
    first = owner.setdefault(name, row)
    if ids[first] != pair:
      clashes.add(f"{name} ({ids[first]} and {pair})")
  if clashes:
    raise ValueError(
        f"split {split!r}: {len(clashes)} output name(s) would be shared by different "
        f"pairs: {', '.join(sorted(clashes)[:5])}"
    )
  if len(owner) < n:
    log(
        f"split {split!r} lists {n - len(owner)} (source, target) pair(s) more than once; each is "
        "written once"
    )
  truth_names = [ground_truth_name(t) for _, t in ids]
  if write_ground_truth and ground_truth_dir is None:
    ground_truth_dir = os.path.join(out_dir, "ground_truth")
  primary = jax.process_index() == 0

  def batch_files(k):
    rows = range(k * batch_size, min((k + 1) * batch_size, n))
    files = [os.path.join(out_dir, names[i]) for i in rows]
    if write_ground_truth:
      files += [os.path.join(ground_truth_dir, truth_names[i]) for i in rows]
    return files

  todo = np.ones(eval_data.num_batches, bool)
  if primary:
    os.makedirs(out_dir, exist_ok=True)
    if write_ground_truth:
      os.makedirs(ground_truth_dir, exist_ok=True)
    if not overwrite:
      todo = np.array(
          [not all(map(os.path.exists, batch_files(k))) for k in range(eval_data.num_batches)], bool
      )
  todo = multihost.from_process_zero(todo)
  if not todo.any() and not source_swap_pairs:
    log(
        f"all {n} pairs of split {split!r} are already in {out_dir}; nothing to do "
        "(--overwrite redoes them)"
    )
    return SplitRun(
        out_dir,
        ground_truth_dir,
        n,
        eval_data.num_batches,
        batch_size,
        0,
        0,
        time.perf_counter() - start,
    )

  if model is None:
    if checkpoint is None:
      raise ValueError("no checkpoint given (--checkpoint)")
    model = checkpointing.load_model(
        checkpoint, config, mesh=mesh, log=lambda m: log(f"warning: {m}")
    )
  sampler = sampling.get_sampler(GaussianDiffusion.from_config(config.diffusion), options, mesh)
  key = jax.random.key(int(config.seed))

  bar = None
  if progress and primary:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top

    bar = tqdm(total=int(todo.sum()), desc=f"generating {split}", unit="batch")
  written = sampled = 0
  truth_written = set()
  for k, batch in enumerate(eval_data):
    if k >= eval_data.num_batches:
      break
    if not todo[k]:
      continue
    inputs = dict(  # uint8 -> float32, where the batch lives
        source=encoding.image_to_float(batch["source_image"]),
        pose=encoding.pose_to_float(batch["target_pose"]),
    )
    images = sampler(model, inputs, jax.random.fold_in(key, k))
    images = multihost.gather(jax.numpy.clip(images, -1.0, 1.0))
    keep = multihost.gather(batch["mask"]).astype(bool)
    index = multihost.gather(batch["index"])[keep]
    targets = multihost.gather(batch["target_image"])[keep] if write_ground_truth else None
    sampled += 1
    if primary:
      expected = np.arange(k * batch_size, min((k + 1) * batch_size, n))
      if not np.array_equal(index, expected):  # the pipeline's order is what the names rely on
        raise RuntimeError(
            f"batch {k} holds records {index.tolist()}, expected " f"{expected.tolist()}"
        )
      for row, image in zip(index, encoding.image_to_uint8(images[keep], rounding="truncate")):
        if owner[names[row]] == row:
          Image.fromarray(image).save(os.path.join(out_dir, names[row]))
          written += 1
      if write_ground_truth:
        for row, image in zip(index, encoding.image_to_uint8(targets)):
          path = os.path.join(ground_truth_dir, truth_names[row])
          if truth_names[row] not in truth_written and (overwrite or not os.path.exists(path)):
            Image.fromarray(image).save(path)
          truth_written.add(truth_names[row])
      if bar is not None:
        bar.update(1)
  if bar is not None:
    bar.close()
  log(
      f"wrote {written} of {n} pairs of split {split!r} to {out_dir} ({sampled} of "
      f"{eval_data.num_batches} batches of {batch_size} sampled, {options.algorithm} "
      f"{sampler.plan.num_steps} steps, {time.perf_counter() - start:.1f} s)"
  )
  swap = None
  if source_swap_pairs:
    swap = _source_swap(
        model,
        GaussianDiffusion.from_config(config.diffusion),
        options,
        eval_data,
        source_swap_pairs,
        key,
        out_dir if primary else None,
        log,
    )
  return SplitRun(
      out_dir,
      ground_truth_dir,
      n,
      eval_data.num_batches,
      batch_size,
      sampled,
      written,
      time.perf_counter() - start,
      swap,
  )


def _source_swap(model, diffusion, options, eval_data, num_pairs: int, key, out_dir, log) -> dict:
  """The source-swap evaluation of ``model`` on the first ``num_pairs`` pairs of ``eval_data``."""

  pairs = swap_lib.first_pairs(eval_data, num_pairs)
  sampler = sampling.get_sampler(diffusion, options)  # a few pairs: one device, no padding
  swap_key = jax.random.fold_in(key, 2**30)  # not the key of any generated batch

  def sample(source, pose):
    images = sampler(
        model, {"source": jax.numpy.asarray(source), "pose": jax.numpy.asarray(pose)}, swap_key
    )
    return np.clip(np.asarray(jax.device_get(images)), -1.0, 1.0)

  result = swap_lib.evaluate(sample, pairs, pairs["person_id"])
  figures = {k: result[k] for k in swap_lib.METRIC_KEYS}
  figures.update(
      num_pairs=len(pairs["person_id"]), partners=np.asarray(result["partners"]).tolist()
  )
  log(
      f"source swap on {figures['num_pairs']} pairs: SSIM {figures['ssim']:.4f} with the own "
      f"source, {figures['ssim_swapped_source']:.4f} with another person's "
      f"(copying the source: {figures['ssim_copy_source']:.4f}); body-region colour error "
      f"(CIELAB Delta E) {figures['body_colour_error']:.2f} vs "
      f"{figures['body_colour_error_swapped_source']:.2f}"
  )
  if out_dir is not None:
    with open(os.path.join(out_dir, "source_swap.json"), "w") as f:
      json.dump(figures, f, indent=2, sort_keys=True)
  return figures


def main(argv):
  """The ``python -m pidm_jax.generate`` entry point (flags below)."""

  console.begin(argv, config=FLAGS.config, multihost=FLAGS.multihost)
  try:
    generate_split(
        FLAGS.config,
        FLAGS.checkpoint,
        FLAGS.out,
        split=FLAGS.split,
        write_ground_truth=FLAGS.write_ground_truth,
        ground_truth_dir=FLAGS.ground_truth_dir,
        overwrite=FLAGS.overwrite,
        source_swap_pairs=FLAGS.source_swap_pairs,
    )
  except (FileNotFoundError, ValueError) as e:  # bad data set, split, checkpoint or config

    console.fail(e, keep_lines=isinstance(e, checkpointing.ConfigMismatchError))


def run():
  """The ``python -m pidm_jax.generate`` / ``pidm-generate`` entry point."""
  global FLAGS  # pylint: disable=global-statement

  config_flags.DEFINE_config_file(
      "config",
      None,
      "Config file (configs/<x>.py); default: the config stored with --checkpoint. "
      "A config whose model or diffusion differs from the stored one is refused.",
      lock_config=True,
  )
  flags.DEFINE_string("checkpoint", None, "Checkpoint directory (EMA parameters).")
  flags.DEFINE_string("out", None, "Folder of the generated images.")
  flags.DEFINE_string("split", "test", "TFDS split to generate.")
  flags.DEFINE_bool("write_ground_truth", False, "Also write the target images for the evaluation.")
  flags.DEFINE_string("ground_truth_dir", None, "Where (default: <out>/ground_truth).")
  flags.DEFINE_bool("overwrite", False, "Redo batches whose files already exist.")
  flags.DEFINE_integer(
      "source_swap_pairs",
      0,
      "Also run the source-swap evaluation on the first "
      "this many pairs (own vs another identity's source, same noise); writes "
      "<out>/source_swap.json.",
  )
  flags.DEFINE_bool(
      "multihost",
      False,
      "Call jax.distributed.initialize() first (also done "
      "when the environment describes a multi-process run).",
  )
  FLAGS = flags.FLAGS
  flags.mark_flags_as_required(["checkpoint", "out"])

  sys.argv = console.default_to_stored_config(sys.argv)  # --config defaults to the checkpoint's
  console.run(main)


if __name__ == "__main__":
  run()
