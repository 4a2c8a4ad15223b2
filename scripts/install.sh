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

# Nothing more to do when this checkout is the installed emogen_jax (editable) and every
# requirement of setup.cfg, the test and torch extras included, is installed at a version it
# allows: pip takes ~9 s to find that out, this ~0.3 s (scripts/quickstart.sh runs us each time).
EXTRAS=test,torch
if $PY - "$PWD" "$EXTRAS" >/dev/null 2>&1 <<'PYEOF'
import configparser, importlib.metadata as md, json, os, sys
from packaging.requirements import Requirement
root = os.path.realpath(sys.argv[1])
# The installed distribution, not the checkout's own egg-info (run from here, sys.path has '').
sys.path = [p for p in sys.path if p and os.path.realpath(p) != root]
url = json.loads(md.distribution("emogen_jax").read_text("direct_url.json") or "{}")
assert url.get("dir_info", {}).get("editable") and \
    os.path.realpath(url["url"][len("file://"):]) == root
cfg = configparser.ConfigParser()
cfg.read(os.path.join(root, "setup.cfg"))
lines = cfg["options"]["install_requires"].splitlines()
for extra in sys.argv[2].split(","):
  lines += cfg["options.extras_require"][extra].splitlines()
for line in filter(None, (x.strip() for x in lines)):
  req = Requirement(line)
  assert req.specifier.contains(md.version(req.name), prereleases=True), line
PYEOF
then
  :
else
  # The CPU build of PyTorch first, so that no multi-GB CUDA build is pulled in by the extras (the
  # test extra needs torch: the parity tests fail, not skip, without it when CI=true).
  if ! $PY -c "import torch" >/dev/null 2>&1; then
    $PY -m pip install -q --timeout 20 --retries 1 torch --index-url https://download.pytorch.org/whl/cpu \
      || $PY -m pip install -q "torch==2.13.0"
  fi
  $PY -m pip install -q -e ".[$EXTRAS]"
fi

# oneDNN's convolution kernels for XLA, on a CPU with AVX-512 (where they are faster than XLA's):
# built once into ~/.cache/emogen_jax/onednn_conv (two wheels from PyPI and a g++ compile, under a
# minute), then used by cpu_convolutions=auto, the default. ~0.1 s once built. Without g++ or the
# package index the runs keep XLA's kernels.
$PY -m emogen_jax.onednn_conv --if-avx512 --quiet \
  || echo "install.sh: oneDNN's convolutions not built (above); runs use XLA's kernels"
