"""Builds the oneDNN binding into its cache (what ``cpu_convolutions = "auto"`` looks for).

  python -m emogen_jax.onednn_conv                 build (fetch oneDNN, compile), print the path
  python -m emogen_jax.onednn_conv --if-avx512     the same on a CPU with AVX-512, else a line why not
  (--quiet: nothing to say when it is built already or not wanted; --cache-dir: another cache)

The install script runs the second (quietly): ``auto`` then finds the binding and uses it. A
failed build is one line and exit 1; ``auto`` keeps XLA's kernels until a build succeeds.
"""

from __future__ import annotations

import argparse
import os
import sys

from emogen_jax.errors import cli_main
from emogen_jax.onednn_conv import binding


@cli_main
def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m emogen_jax.onednn_conv",
                              description=__doc__.split("\n")[0])
  p.add_argument("--if-avx512", action="store_true",
                 help="build only on a CPU with AVX-512 (where auto would use it)")
  p.add_argument("--quiet", action="store_true",
                 help="say nothing when it is built already or, with --if-avx512, not wanted")
  p.add_argument("--cache-dir", default=None,
                 help=f"where to build (default {binding.default_cache_dir()})")
  args = p.parse_args(argv)
  if args.if_avx512 and not binding.has_avx512():
    if not args.quiet:
      print("oneDNN binding not built: this CPU has no AVX-512 (cpu_convolutions=auto runs XLA's "
            "kernels here)")
    return 0
  built = os.path.exists(binding.library_path(args.cache_dir))
  try:
    library = binding.build(args.cache_dir, log=print)
    if not built:  # a fresh library that does not load is a failed build, said here
      try:
        binding.load(library)
      except binding.BuildError:
        os.remove(library)  # or the next run would take it for built
        raise
  except binding.BuildError as e:
    print(f"oneDNN binding not built: {e}", file=sys.stderr)
    return 1
  if not (args.quiet and built):
    print(f"oneDNN binding: {library}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
