#!/usr/bin/env bash
# The test command of the README (and of .ci/run): install, then run the whole suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES="" TF_CPP_MIN_LOG_LEVEL=2
# One worker per core (at most 4; each builds the session's shared fixtures): compiling, most of
# the suite's time, is single-threaded. A test file runs whole in one worker (tests/conftest.py).
exec ${PYTHON:-python3} -m pytest tests -n auto --maxprocesses 4 --dist loadgroup "$@"
