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


def subprocess_env(devices: int = 1, **extra: str) -> dict[str, str]:
  """Environment of a CLI subprocess: CPU only, ``devices`` host devices, quiet TensorFlow, the
  shared compilation cache, and this checkout first on the import path."""
  env = dict(os.environ)
  env.update({"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
              "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
              "JAX_COMPILATION_CACHE_DIR": JAX_CACHE_DIR,
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
              "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", "")})
  env.update(extra)
  return env
