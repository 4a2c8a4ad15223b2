#!/usr/bin/env bash
# The test command of the README (and of .ci/run): install, then run the whole suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES="" TF_CPP_MIN_LOG_LEVEL=2
# One worker per core (at most 4; each builds the session's shared fixtures): compiling, most of
# the suite's time, is single-threaded. A test file runs whole in one worker (tests/conftest.py).
# pytest starts through use_fast_allocator, as the entry points do (emogen_jax/allocator.py): the
# suite and its workers run on tcmalloc when it is installed.
exec ${PYTHON:-python3} -c "from emogen_jax.allocator import use_fast_allocator; use_fast_allocator()
import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))" \
  tests -n auto --maxprocesses 4 --dist loadgroup "$@"
