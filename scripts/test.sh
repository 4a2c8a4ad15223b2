#!/usr/bin/env bash
# The test command of the README (and of .ci/run): install, then run the whole suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES="" TF_CPP_MIN_LOG_LEVEL=2
exec ${PYTHON:-python3} -m pytest tests "$@"
