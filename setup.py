"""Packaging for pidm_jax: PIDM (pose-guided person image synthesis with diffusion) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="pidm-jax",
    version="0.1.0",
    description=(
        "PIDM (Person Image Synthesis via Denoising Diffusion Model, CVPR 2023) "
        "in JAX/Flax NNX for TPU pods and GPU meshes"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["pidm_jax", "pidm_jax.*", "input_pipeline", "input_pipeline.*"]),
    py_modules=[],
    install_requires=[
        "jax>=0.6.2",
        "flax>=0.12.0",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11.20",
        "tensorflow-datasets>=4.9.9",
        "importlib_resources>=6.0",
        "array_record>=0.7.2",
        "grain>=0.2.12",
        "numpy>=1.26",
        "ml_collections>=1.0.0",
        "clu>=0.0.12",
        "absl-py>=2.1",
        "tensorboardX>=2.6.2",
        "opencv-python-headless>=4.9",
        "pillow>=10.0",
        "tqdm>=4.66",
        "etils[epath]>=1.7",
        "scipy>=1.11",
        "scikit-image>=0.22",
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-xdist>=3.5"],
    },
)
