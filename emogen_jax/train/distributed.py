"""Multi-host start-up: one process per host, ``jax.distributed.initialize`` before any JAX use.

- TPU pods, SLURM and other clusters that JAX detects by itself: ``initialize()`` with no flags
  (we call it when their environment variables are present).
- GPU/CPU clusters by hand: give every process the same ``coordinator_address`` (host:port of
  process 0) and ``num_processes``, and its own ``process_id``.
- One host (the default): nothing to do.
Multi-process runs on CPU need cross-process collectives; we select gloo for them.
"""

from __future__ import annotations

import os

import jax

from emogen_jax.errors import UserError

# Environment variables by which JAX's cluster auto-detection recognises a multi-host launch.
_AUTO_ENV = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS",
             "OMPI_COMM_WORLD_SIZE")


def _auto_detected() -> bool:
  if any(os.environ.get(k) for k in _AUTO_ENV):
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts or any(os.environ.get(k) for k in _AUTO_ENV[1:])
  return int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins the multi-host job if there is one; returns True when jax.distributed was initialised."""
  explicit = [coordinator_address, num_processes, process_id]
  if any(x not in (None, "", -1) for x in explicit):
    if not coordinator_address or num_processes in (None, -1) or process_id in (None, -1):
      raise UserError("multi-host training needs all three of --coordinator_address (host:port of "
                      "process 0), --num_processes and --process_id")
    if not 0 <= int(process_id) < int(num_processes):
      raise UserError(f"--process_id={process_id} must be in [0, {num_processes})")
    _use_cpu_collectives()
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=int(num_processes), process_id=int(process_id))
    return True
  if _auto_detected():
    jax.distributed.initialize()
    return True
  return False


def _use_cpu_collectives():
  """CPU multi-process runs (tests, CPU clusters) need gloo for cross-process all-reduce; the
  setting only concerns the CPU backend, so GPU/TPU runs are unaffected."""
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError):  # a JAX without the option: keep its default
    pass
