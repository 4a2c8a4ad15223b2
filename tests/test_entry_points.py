"""Every command the README names runs its real entry module: ``python -m <module> --help`` exits 0."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests import REPO, subprocess_env

# Runs each entry module as ``python -m`` would (runpy, run_name "__main__"), all in one process
# so that jax and TensorFlow are imported once.
_RUNNER = r"""
import contextlib, io, json, runpy, sys
results = {}
for name in sys.argv[1:]:
  out = io.StringIO()
  sys.argv = [name, "--help"]
  code = None
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
      runpy.run_module(name, run_name="__main__", alter_sys=True)
    except SystemExit as e:
      code = e.code
  results[name] = {"code": code, "out": out.getvalue()}
print(json.dumps(results))
"""


def readme_commands() -> list[str]:
  with open(os.path.join(REPO, "README.md")) as f:
    return sorted(set(re.findall(r"python -m ([a-z_][a-z_.]*)", f.read())))


def test_every_readme_command_has_help():
  modules = readme_commands()
  assert {"emogen_jax.train", "emogen_jax.infer", "emogen_jax.evaluate", "emogen_jax.convert",
          "emogen_jax.quickstart", "emogen_jax.sync_check", "data_tools.preprocess"} <= set(modules)
  proc = subprocess.run([sys.executable, "-c", _RUNNER, *modules], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  for name in modules:
    r = results[name]
    assert r["code"] in (0, None), f"{name} --help exited {r['code']}: {r['out'][-500:]}"
    assert "--" in r["out"] and len(r["out"]) > 200, f"{name} --help printed too little: {r['out']!r}"
