"""oneDNN's convolution kernels inside our jitted steps on the CPU backend.

XLA:CPU computes convolutions with its own kernels; on an x86 CPU with AVX-512 they ran 0.71-0.80x
the speed of oneDNN's (the library PyTorch uses) over SyncNet's layers, per part (docs/design.md
"Another CPU: an Intel Xeon with AVX-512"). This package puts oneDNN's kernels under our models
instead, through XLA's FFI. The choice (``config.cpu_convolutions`` for training,
``--cpu-convolutions`` for inference and the quickstart, ``with cpu_convolutions(choice):`` in a
notebook) is one of
- ``auto`` (the default): oneDNN's on a CPU with AVX-512 when the binding is already built
  (``scripts/install.sh`` builds it there: ``python -m emogen_jax.onednn_conv``), XLA's otherwise;
  it never builds or downloads anything itself, and the run's log says which kernels it got and why;
- ``onednn``: oneDNN's, built on first use if needed;
- ``xla``: XLA's own.

What lives here:
- ``onednn_conv.cc``: three FFI handlers (forward, input gradient, weight gradient of a float32
  NHWC / HWIO convolution) on oneDNN primitives, run on XLA's own thread pool, and a fourth that
  computes a 3x3 stride-1 convolution by Winograd's algorithm (our transforms, oneDNN's matmuls),
  which the binding takes for the forward and input gradient of the layers where it was measured
  faster (``binding.winograd_tile``: >= 64 channels on images from 12x12, >= 256 from 6x6; in
  float32 only, its rounding about ten times the direct kernels'; ``EMOGEN_ONEDNN_WINOGRAD=0``
  for the direct kernels everywhere).
- ``binding.py``: fetches oneDNN 3.2 from PyPI and compiles the handlers with g++ once (cached
  under ``~/.cache/emogen_jax/onednn_conv``, keyed by the source), registers them, and routes the
  models' convolutions to them with a custom VJP.
- ``__main__.py``: the build as a command (what the install script runs).

Under JAX's ``default_matmul_precision("bfloat16")`` (or JAX_DEFAULT_MATMUL_PRECISION=bfloat16)
oneDNN's forward and input-gradient convolutions take the products of the operands' bfloat16
roundings, summed in float32 (AMX on CPUs that have it; what one TPU pass does); XLA:CPU's kernels
ignore that setting. Otherwise
results equal XLA's to float32 rounding (the sums inside each convolution run in another order);
other backends, dtypes, dilated and grouped convolutions keep XLA's kernels. The models called
directly (``model.apply`` outside these scopes, as the parity tests do) always run XLA's.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

from emogen_jax.errors import UserError
from emogen_jax.onednn_conv import binding
from emogen_jax.onednn_conv.binding import (BuildError, build, default_cache_dir, has_avx512,
                                            library_path, route_convolutions)

CHOICES = ("auto", "xla", "onednn")

__all__ = ["CHOICES", "BuildError", "build", "check_choice", "cpu_convolutions",
           "default_cache_dir", "resolve", "route_convolutions"]


def check_choice(choice: str, where: str) -> None:
  if choice not in CHOICES:
    raise UserError(f"{where}={choice!r}; use auto (the default: oneDNN's kernels where built on "
                    "an AVX-512 CPU, else XLA's), xla (XLA's own) or onednn (oneDNN's, built with "
                    "g++ on first use)")


def resolve(choice: str, backend: str) -> tuple[str, str]:
  """(kernels, why) for ``choice`` on ``backend``: kernels is "xla" or "onednn"; why is the reason
  in a few words (for the log). Builds nothing."""
  if backend != "cpu":
    return "xla", f"oneDNN's apply to the CPU backend only; this run is on {backend}"
  if choice != "auto":
    return choice, "as asked"
  if not has_avx512():
    return "xla", ("auto: this CPU has no AVX-512, where oneDNN's were not measured faster; "
                   "=onednn to use them anyway")
  library = library_path()
  if not os.path.exists(library):
    return "xla", (f"auto: oneDNN's binding is not built ({library}); build it with "
                   "`python -m emogen_jax.onednn_conv` (scripts/install.sh does) or pass =onednn")
  return "onednn", "auto: AVX-512 and the binding built; =xla for XLA's"


# The kernels of the open `cpu_convolutions` scopes, innermost last. Routing swaps the models'
# conv2d for the whole process, so a scope opened inside another (a training or a TalkingFace in
# a notebook's `with cpu_convolutions("xla"):`) must agree with it: auto takes the outer choice.
_open_scopes: list[str] = []


@contextlib.contextmanager
def cpu_convolutions(choice: str, log: Callable[[str], None] = print,
                     where: str = "cpu_convolutions") -> Iterator[str]:
  """Within the block the models' convolutions run on ``choice``'s kernels (``"auto"``, ``"xla"``
  or ``"onednn"``, see above); yields the kernels actually used, "xla" or "onednn", and ``log``
  hears which and why. Route once, before the first jitted call: a function traced inside the
  block keeps oneDNN's calls after it. Inside another such block, ``auto`` (or the same choice)
  takes that block's kernels; another explicit choice is a UserError."""
  check_choice(choice, where)
  if _open_scopes:
    outer = _open_scopes[-1]
    if choice not in ("auto", outer):
      raise UserError(f"{where}={choice} inside a cpu_convolutions({outer!r}) block, which "
                      f"already chose the kernels; pass auto or {outer} there, or choose outside")
    log(f"convolutions: {_NAMES[outer]} ({where}={choice}; as the enclosing cpu_convolutions "
        "block chose)")
    with _scope(outer):
      yield outer
    return
  import jax
  backend = jax.default_backend()
  kernels, why = resolve(choice, backend)
  bf16 = binding.products_math(None) == "bfloat16" and backend == "cpu"
  if kernels == "xla":
    if choice == "onednn" or (choice == "auto" and backend == "cpu"):
      log(f"convolutions: XLA's kernels ({where}={choice}; {why})"
          + ("; JAX's default_matmul_precision=bfloat16 does not change them" if bf16 else ""))
    with _scope("xla"):
      yield "xla"
    return
  # Read (and a bad value refused) before anything is built or routed.
  winograd = binding.winograd_enabled() and not bf16
  try:
    library = build(log=log)
    undo = route_convolutions(library)
  except BuildError as e:
    if choice != "auto":
      raise
    # A cached library that no longer loads must not stop a run that did not ask for oneDNN.
    log(f"convolutions: XLA's kernels ({where}=auto; the built binding failed: {e})")
    with _scope("xla"):
      yield "xla"
    return
  log(f"convolutions: {_NAMES['onednn']} ({where}={choice}; {why}; {library})"
      + (f"; {binding.winograd_rule()} ({binding.WINOGRAD_ENV}=0 for the direct kernels)"
         if winograd else "")
      + ("; products of bfloat16 roundings, summed in float32 (JAX's default_matmul_precision="
         "bfloat16)" if bf16 else ""))
  try:
    with _scope("onednn"):
      yield "onednn"
  finally:
    undo()


_NAMES = {"xla": "XLA's kernels", "onednn": "oneDNN's kernels on XLA's threads"}


@contextlib.contextmanager
def _scope(kernels: str) -> Iterator[None]:
  _open_scopes.append(kernels)
  try:
    yield
  finally:
    _open_scopes.pop()
