"""Peak compute rates of accelerators and the model-FLOP counts of the paper's network.

Peak rates are dense (not 2:4-sparse) bfloat16 matrix TFLOP/s per device (chip) from the vendors'
data sheets: H100 SXM 989, H100 PCIe 756, H100 NVL 835, H200 SXM 989, H200 NVL 835, B200 2250,
A100 (40 and 80 GB, SXM and PCIe) 312, TPU v4 275, v5e 197, v5p 459, v6e (Trillium) 918, TPU7x
(Ironwood) 2307. A device kind is matched whole (after lower-casing and folding runs of spaces,
hyphens and underscores), never as a substring, so a variant the table does not know (an H100 of a
new form factor, say) gets no peak rather than another variant's. A CPU has no entry; its peak is
given on the command line (``--cpu_peak_tflops``).

Model FLOPs (reference: published_results.md): the paper's network costs about 700 GFLOP per
256x256 forward (texture encoder 140, denoiser 559), about 2.1 TFLOP per training sample (forward
and backward) and about 56 TFLOP per DDIM-50 sample with guidance (two denoiser passes per step).
Other image sizes scale these by (H * W) / 256^2, which ignores that attention grows faster than
the pixel count; the counts apply to the paper's architecture only.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

# (regular expression matched against the whole normalised device kind, name, bf16 dense TFLOP/s
# per device). The kinds are the strings ``jax.Device.device_kind`` reports (the CUDA device name
# on GPUs, e.g. 'NVIDIA H100 80GB HBM3' for the SXM module, 'NVIDIA H100 PCIe', 'NVIDIA H100 NVL').
PEAK_TFLOPS = (
    (r"nvidia h100 (sxm5? )?(80gb|94gb|64gb) hbm(2e|3)", "H100 SXM", 989.0),
    (r"nvidia h100 sxm5?( \d+gb)?", "H100 SXM", 989.0),
    (r"nvidia h100 pcie( \d+gb)?", "H100 PCIe", 756.0),
    (r"nvidia h100 nvl( \d+gb)?", "H100 NVL", 835.0),
    (r"nvidia h200( sxm| 141gb hbm3e)?", "H200 SXM", 989.0),
    (r"nvidia h200 nvl", "H200 NVL", 835.0),
    (r"nvidia b200", "B200", 2250.0),
    (r"nvidia a100 (sxm4? |pcie )?(40|80)gb( pcie)?", "A100", 312.0),
    (r"nvidia a100 (sxm4?|pcie)", "A100", 312.0),
    (r"tpu v4", "TPU v4", 275.0),
    (r"tpu v5 ?(lite|e|litepod)", "TPU v5e", 197.0),
    (r"tpu v5p?", "TPU v5p", 459.0),
    (r"tpu v6 ?(lite|e)", "TPU v6e", 918.0),
    (r"tpu ?(v)?7x?", "TPU7x", 2307.0),
)


def normalise_kind(device_kind: str) -> str:
  """Lower case, runs of spaces / hyphens / underscores folded to one space, ends stripped."""
  return re.sub(r"[\s_\-]+", " ", device_kind.lower()).strip()


PAPER_FORWARD_FLOPS = 700e9  # one 256x256 forward: encoder + denoiser
PAPER_TRAIN_FLOPS_PER_SAMPLE = 2.1e12  # forward + backward, one sample at 256x256
PAPER_DDIM50_GUIDED_FLOPS = 56e12  # one image, DDIM-50 with guidance (2 denoiser passes a step)
PAPER_SIZE = (256, 256)

# The architecture fields that make a model config "the paper's network".
_ARCHITECTURE_KEYS = (
    "base_width",
    "channel_mult",
    "num_res_blocks",
    "attention_resolutions",
    "embed_dim",
    "in_channels",
    "pose_channels",
    "out_channels",
)


def peak_tflops(
    device_kind: str, platform: str, cpu_peak_tflops: float | None = None
) -> tuple[str, float | None]:
  """The (name, peak bf16 dense TFLOP/s per device) for a device; None where unknown.

  Args:
    device_kind: ``jax.Device.device_kind`` (e.g. 'NVIDIA H100 80GB HBM3', 'TPU v5 lite').
    platform: ``jax.Device.platform`` ('gpu', 'tpu', 'cpu').
    cpu_peak_tflops: the CPU's peak, given by the user (CPUs have no table entry).
  """
  if platform == "cpu":
    return f"CPU ({device_kind})", cpu_peak_tflops
  kind = normalise_kind(device_kind)
  for pattern, name, peak in PEAK_TFLOPS:
    if re.fullmatch(pattern, kind):
      return name, peak
  return device_kind, None


def is_paper_model(model_config: Mapping[str, Any]) -> bool:
  """Whether a model config has the paper's architecture (dtype, remat etc. may differ)."""
  from configs import default  # pylint: disable=g-import-not-at-top

  paper = default.get_config().model
  return all(_normalise(model_config.get(k)) == _normalise(paper[k]) for k in _ARCHITECTURE_KEYS)


def _normalise(value):
  return tuple(value) if isinstance(value, (list, tuple)) else value


def size_scale(image_size) -> float:
  """(H * W) / 256^2."""
  h, w = image_size
  return (h * w) / (PAPER_SIZE[0] * PAPER_SIZE[1])


def paper_train_flops(batch_size: int, image_size) -> float:
  """Model FLOPs of one training step of the paper's network (``batch_size`` samples)."""
  return PAPER_TRAIN_FLOPS_PER_SAMPLE * batch_size * size_scale(image_size)


def paper_sample_flops(batch_size: int, image_size, steps: int, guided: bool) -> float:
  """Model FLOPs of sampling ``batch_size`` images with DDIM (``steps`` steps) from the paper's
  network: the encoder once and one (two with guidance) denoiser passes per step."""
  encoder = 140e9
  denoiser = (PAPER_DDIM50_GUIDED_FLOPS - encoder) / (2 * 50)  # per pass, from the 56 TFLOP count
  passes = 2 if guided else 1
  return batch_size * size_scale(image_size) * (encoder + steps * passes * denoiser)


def utilisation(achieved_tflops: float | None, peak: float | None) -> float | None:
  """Achieved / peak as a fraction; None when either is unknown."""
  if achieved_tflops is None or not peak:
    return None
  return achieved_tflops / peak
