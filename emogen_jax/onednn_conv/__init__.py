"""oneDNN's convolution kernels inside our jitted steps on the CPU backend (opt-in).

XLA:CPU computes convolutions with its own kernels; on an x86 CPU with AVX-512 they ran 0.71-0.80x
the speed of oneDNN's (the library PyTorch uses) over SyncNet's layers, per part (docs/design.md
"Another CPU: an Intel Xeon with AVX-512"). This package puts
oneDNN's kernels under our models instead, through XLA's FFI, for runs that opt in:
``--config.cpu_convolutions=onednn`` for training, ``--cpu-convolutions onednn`` for inference,
or ``with cpu_convolutions("onednn"):`` in a notebook. The default stays XLA's kernels.

What lives here:
- ``onednn_conv.cc``: three FFI handlers (forward, input gradient, weight gradient of a float32
  NHWC / HWIO convolution) on oneDNN primitives, run on XLA's own thread pool.
- ``binding.py``: fetches oneDNN 3.2 from PyPI and compiles the handlers with g++ once (cached
  under ``~/.cache/emogen_jax/onednn_conv``, keyed by the source), registers them, and routes the
  models' convolutions to them with a custom VJP.

Results equal XLA's to float32 rounding (the sums inside each convolution run in another order);
other backends, dtypes, dilated and grouped convolutions keep XLA's kernels.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from emogen_jax.errors import UserError
from emogen_jax.onednn_conv.binding import BuildError, build, default_cache_dir, route_convolutions

CHOICES = ("xla", "onednn")

__all__ = ["CHOICES", "BuildError", "build", "cpu_convolutions", "default_cache_dir",
           "route_convolutions"]


def check_choice(choice: str, where: str) -> None:
  if choice not in CHOICES:
    raise UserError(f"{where}={choice!r}; use xla (XLA's own kernels, the default) or onednn "
                    "(oneDNN's, built with g++ on first use; faster on AVX-512 CPUs)")


@contextlib.contextmanager
def cpu_convolutions(choice: str, log: Callable[[str], None] = print,
                     where: str = "cpu_convolutions") -> Iterator[str]:
  """Within the block the models' convolutions run on ``choice``'s kernels (``"xla"`` or
  ``"onednn"``); yields the kernels actually used. oneDNN applies to the CPU backend only: on
  another backend the block runs on XLA's, and ``log`` says so. Route once, before the first
  jitted call: a function traced inside the block keeps oneDNN's calls after it."""
  check_choice(choice, where)
  if choice == "xla":
    yield "xla"
    return
  import jax
  backend = jax.default_backend()
  if backend != "cpu":
    log(f"{where}=onednn applies to the CPU backend only; this run is on {backend}: XLA's "
        "convolutions")
    yield "xla"
    return
  library = build(log=log)
  undo = route_convolutions(library)
  log(f"convolutions: oneDNN's kernels on XLA's threads ({library})")
  try:
    yield "onednn"
  finally:
    undo()
