#!/usr/bin/env bash
# The test command of the README (and of .ci/run): install, then run the whole suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES="" TF_CPP_MIN_LOG_LEVEL=2
# The suite runs on tcmalloc when it is installed, as the entry points do (emogen_jax/allocator.py:
# XLA:CPU's scratch buffers stop page-faulting).
FAST_MALLOC=$(${PYTHON:-python3} -c "from emogen_jax import allocator; print(allocator.find() or '')")
if [ -n "$FAST_MALLOC" ]; then
  export LD_PRELOAD="$FAST_MALLOC${LD_PRELOAD:+:$LD_PRELOAD}" TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD=1099511627776
fi
# One worker per core (at most 4; each builds the session's shared fixtures): compiling, most of
# the suite's time, is single-threaded. A test file runs whole in one worker (tests/conftest.py).
exec ${PYTHON:-python3} -m pytest tests -n auto --maxprocesses 4 --dist loadgroup "$@"
