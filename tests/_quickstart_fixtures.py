"""One tiny quickstart run per test session, shared by the quickstart and notebook tests.

The run happens in a subprocess (the CLI, as a user runs it): the quickstart forks preprocessing
workers, which must not inherit the JAX/TF threads of the pytest process.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from tests import REPO, subprocess_env

# The notebook's QUICK settings (notebooks/emogen_jax_colab.ipynb, first cell).
TINY = {"actors": 3, "clips_per_actor": 3, "syncnet_steps": 10, "emotion_steps": 10,
        "emogen_steps": 6, "eval_batches": 0}


def tiny_args(out: str) -> list[str]:
  args = ["--out", out, "--no-progress"]
  for k, v in TINY.items():
    args += [f"--{k.replace('_', '-')}", str(v)]
  return args


def run_cli(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "emogen_jax.quickstart", *args], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


@functools.lru_cache(maxsize=None)
def tiny_quickstart() -> dict:
  """{"out", "summary", "stdout", "seconds"} of ``python -m emogen_jax.quickstart`` (TINY)."""
  root = tempfile.mkdtemp(prefix="emogen_quickstart_test_")
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  out = os.path.join(root, "quickstart_out")
  t0 = time.time()
  proc = run_cli(tiny_args(out))
  seconds = time.time() - t0
  if proc.returncode != 0:
    raise AssertionError(f"quickstart exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
                         f"stderr:\n{proc.stderr[-6000:]}")
  with open(os.path.join(out, "summary.json")) as f:
    summary = json.load(f)
  return {"out": out, "summary": summary, "stdout": proc.stdout, "seconds": seconds}
