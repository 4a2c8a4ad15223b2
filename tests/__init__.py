"""The test suite; folders follow the library's (models, data, train, inference, evaluation).

Shared here: the repository root and the environment of every command-line subprocess, with one
persistent JAX compilation cache, so that a network compiled by one CLI run is reused by the next.
Fixture modules (``tests/_*_fixtures.py``) hold builders of small inputs; the session-wide fixtures
(built once per run) are in ``conftest.py``.
"""

import os
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAX_CACHE_DIR = os.path.join(tempfile.gettempdir(), f"emogen_jax_test_compile_cache_{os.getuid()}")
# The suite's networks are tiny and compiled once each, so compiling is most of its time: LLVM at
# -O0 compiles them 2-3x faster. XLA's own HLO passes (fusion, layout) still run, and every
# comparison in the suite (against PyTorch within tolerances, between runs bit for bit) runs
# under the same flags on both sides; benchmarks and users get the default optimisation.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
# One persistent compilation cache for the test process and every subprocess; every compile is
# kept (the suite's are all small).
CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": JAX_CACHE_DIR,
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def subprocess_env(devices: int = 1, **extra: str) -> dict[str, str]:
  """Environment of a CLI subprocess: CPU only, ``devices`` host devices, quiet TensorFlow, the
  shared compilation cache, and this checkout first on the import path."""
  env = dict(os.environ)
  env.update({"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
              "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}",
              **CACHE_ENV,
              "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", "")})
  env.update(extra)
  return env
