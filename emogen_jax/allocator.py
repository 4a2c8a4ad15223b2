"""A faster memory allocator for the command-line entry points (``use_fast_allocator``).

XLA:CPU's convolutions take tens of MB of scratch memory per call and free it at once. glibc's
malloc hands such blocks out as fresh pages from the kernel and gives them back at ``free``, so
every training step page-faults through hundreds of MB: at the smoke width a third of an EmoGen
step was system time. tcmalloc (Debian's ``libtcmalloc-minimal4``, which ``scripts/install.sh``
installs) keeps freed blocks for reuse. Measured in docs/design.md "CPU speed": 1.13-1.27x on
the smoke steps, 1.5x on the full-width EmoGen iteration.

A process cannot change its allocator once it runs, so an entry point calls
``use_fast_allocator()`` first thing under ``if __name__ == "__main__"``; it re-executes the same
command line once with the library in ``LD_PRELOAD``. Library code (notebooks, tests that call
``main()``) is never re-executed. ``EMOGEN_ALLOCATOR=system`` keeps glibc's malloc (e.g. to
measure the difference); ``EMOGEN_ALLOCATOR=/path/lib.so`` preloads another library.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

from emogen_jax import xla_cpu

ENV = "EMOGEN_ALLOCATOR"
# Libraries tried in order (names as ``ctypes.util.find_library`` takes them). jemalloc only
# helps with page reuse switched on (its default decays freed pages back to the kernel).
CANDIDATES = ("tcmalloc_minimal", "tcmalloc", "jemalloc")
_EXTRA_ENV = {
    # tcmalloc reports every allocation above 1 GiB on stderr; full-width batches make such
    # buffers on purpose.
    "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40),
    "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1",
}
# Set in the re-executed process: it must not try again (e.g. when the preload failed).
_DONE = "_EMOGEN_ALLOCATOR_SET"


def preloaded() -> str | None:
  """The fast allocator this process runs on, if any: the library mapped into it (Linux), else
  the one named in LD_PRELOAD."""
  try:
    with open("/proc/self/maps") as f:
      paths = [line.split()[-1] for line in f if "/" in line]
  except OSError:
    paths = os.environ.get("LD_PRELOAD", "").replace(" ", ":").split(":")
  for path in paths:
    if any(name in os.path.basename(path) for name in CANDIDATES):
      return path
  return None


def find() -> str | None:
  """The library ``use_fast_allocator`` would preload (None: not installed, or not Linux)."""
  choice = os.environ.get(ENV, "")
  if choice == "system" or not sys.platform.startswith("linux"):
    return None
  if choice:
    return choice if os.path.isfile(choice) else None
  for name in CANDIDATES:
    lib = ctypes.util.find_library(name)
    if lib:
      return lib
  return None


def use_fast_allocator() -> None:
  """Re-executes this command with a faster malloc preloaded, when one is installed and not yet
  in use; otherwise returns (nothing changes). Call it before anything else in ``__main__``."""
  # Every entry point calls this first, before JAX starts: the one place that also picks XLA:CPU's
  # convolution path (emogen_jax/xla_cpu.py); the re-executed process inherits it.
  xla_cpu.use_direct_convolutions()
  if os.environ.get(_DONE) or preloaded():
    return
  lib = find()
  if lib is None:
    choice = os.environ.get(ENV, "")
    if choice and choice != "system":  # a path that is not there: say so, do not drop it silently
      print(f"warning: {ENV}={choice} is not a file; running on the system's malloc (give the "
            "path of an installed libtcmalloc_minimal.so.4, or unset it)", file=sys.stderr)
    return
  env = dict(os.environ)
  env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
  env[_DONE] = "1"
  for key, value in _EXTRA_ENV.items():
    env.setdefault(key, value)
  argv = list(getattr(sys, "orig_argv", []) or [])
  if not argv:  # Python < 3.10 has no orig_argv; run the same script or module path
    argv = [sys.executable] + sys.argv
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, argv, env)
  except OSError:  # could not re-execute: carry on with the allocator we have
    return


def describe() -> str:
  """One phrase for logs and benchmark rows: which malloc this process runs on."""
  lib = preloaded()
  if lib:
    return f"malloc: {os.path.basename(lib)}"
  choice = os.environ.get(ENV, "")
  if choice == "system":
    return f"malloc: the system's ({ENV}=system)"
  if choice and find() is None:
    return f"malloc: the system's ({ENV}={choice} is not a file)"
  if find() is None:
    return ("malloc: the system's (apt-get install libtcmalloc-minimal4 makes CPU steps 1.1-1.5x "
            "faster)")
  return "malloc: the system's (tcmalloc is installed; the CLI entry points preload it)"


def main(argv=None) -> int:
  """``python -m emogen_jax.allocator``: prints which malloc the command-line entry points run on."""
  import argparse
  p = argparse.ArgumentParser(
      prog="python -m emogen_jax.allocator",
      description="Print which malloc the emogen_jax commands run on (after the re-execution "
                  "that preloads tcmalloc when it is installed). Environment: EMOGEN_ALLOCATOR="
                  "system keeps glibc's malloc; EMOGEN_ALLOCATOR=/path/lib.so preloads that "
                  "library instead; install tcmalloc with apt-get install libtcmalloc-minimal4.")
  p.parse_args(argv)
  print(describe())
  return 0


if __name__ == "__main__":
  use_fast_allocator()
  sys.exit(main())
