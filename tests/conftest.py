"""Test set-up: 8 fake CPU devices, cheap compilation and a per-session compilation cache.

All are configured before JAX is imported anywhere. The tests run tiny models for a few steps, so
compile time dominates: LLVM's expensive optimisations are switched off (measured on the tiny
train step: 54 s -> 23 s of CPU to compile, 2.5 s -> 5 s per step on 8 fake devices). The cache
lets tests that build the same program again (a new Trainer for the same config, a resumed run)
reuse the compiled executable.
"""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_CACHE = tempfile.mkdtemp(prefix="pidm_jax_test_jit_cache_")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
