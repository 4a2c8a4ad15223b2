#!/usr/bin/env bash
# Installs emogen_jax and everything its tests and demo need, on a fresh machine.
#   bash scripts/install.sh          core library + test tools + PyTorch-side tools
# System tools: ffmpeg, espeak-ng and tcmalloc from the OS packages when we are root and they are
# missing (without them, imageio-ffmpeg's bundled ffmpeg, a synthesised voice and glibc's malloc
# are used; tcmalloc makes CPU training steps 1.1-1.5x faster: emogen_jax/allocator.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v espeak-ng >/dev/null 2>&1 \
      || ! ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg espeak-ng \
        libtcmalloc-minimal4 >/dev/null) \
      || echo "install.sh: could not apt-get ffmpeg/espeak-ng/libtcmalloc-minimal4; falling back to imageio-ffmpeg, a synthesised voice and glibc's malloc"
  fi
fi

# The CPU build of PyTorch first, so that no multi-GB CUDA build is pulled in by the extras (the
# test extra needs torch: the parity tests fail, not skip, without it when CI=true).
if ! $PY -c "import torch" >/dev/null 2>&1; then
  $PY -m pip install -q --timeout 20 --retries 1 torch --index-url https://download.pytorch.org/whl/cpu \
    || $PY -m pip install -q "torch==2.13.0"
fi
$PY -m pip install -q -e ".[test,torch]"
