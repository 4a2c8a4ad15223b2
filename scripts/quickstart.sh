#!/usr/bin/env bash
# One command from a fresh checkout to a trained (tiny) EmoGen and a six-emotion demo video, on CPU
# (about 16 minutes on 2 cores; the three stages reach the learnability targets):
#   bash scripts/quickstart.sh [--out DIR] [python -m emogen_jax.quickstart options]
# Installs what is missing (a quick no-op when everything is there), then runs the quickstart
# into quickstart_out/ (rerun to resume; see DIR/summary.md at the end).
set -euo pipefail
# Stays in the caller's directory: --out (default quickstart_out) is relative to where the command
# was typed, as every other path a user gives.
bash "$(dirname "$0")/install.sh"
export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES="" TF_CPP_MIN_LOG_LEVEL=2
exec ${PYTHON:-python3} -m emogen_jax.quickstart --out quickstart_out "$@"
