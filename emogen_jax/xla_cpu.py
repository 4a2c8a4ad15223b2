"""XLA:CPU's convolution path for the command-line entry points (``use_direct_convolutions``).

XLA:CPU (jaxlib 0.10) hands convolutions, matmuls and reductions to its YNNPACK library fusions
by default. On this project's networks its own (Eigen) convolutions are faster in training and in
one-call inference, so the entry points keep the YNNPACK fusions for matmuls and reductions only
(docs/design.md "CPU speed", "YNNPACK's convolutions left out", has the measurements: the
full-width SyncNet and EmoGen training steps and one generator call at a time faster, two calls
in flight about even). Results change in the last bits only (the order of the sums inside each
convolution).

XLA reads ``XLA_FLAGS`` once, when JAX first starts its backend, and stops the process on a flag
it does not know; so the flag is added only for jaxlib versions where it was measured, only when
the user's own ``XLA_FLAGS`` does not already choose the fusions, and before any computation.
``allocator.use_fast_allocator()``, the first call of every entry point, calls it; a notebook
calls it before its first JAX computation (or sets the flag itself).
"""

from __future__ import annotations

import importlib.metadata
import os

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# XLA's default set without LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
VALUE = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
# jaxlib releases (major.minor) known to accept the flag and measured with it.
MEASURED_JAXLIB = ("0.10",)


def _jaxlib_release() -> str | None:
  try:
    return ".".join(importlib.metadata.version("jaxlib").split(".")[:2])
  except importlib.metadata.PackageNotFoundError:
    return None


def use_direct_convolutions(environ: dict | None = None) -> bool:
  """Adds ``FLAG=VALUE`` to ``XLA_FLAGS`` in ``environ`` (default: this process's environment)
  when it applies; returns whether the flag is now set (by us or by the user)."""
  environ = os.environ if environ is None else environ
  flags = environ.get("XLA_FLAGS", "")
  if FLAG.lstrip("-") in flags:  # the user's own choice stands
    return True
  if _jaxlib_release() not in MEASURED_JAXLIB:
    return False
  environ["XLA_FLAGS"] = f"{flags} {FLAG}={VALUE}".strip()
  return True
