"""notebooks/emogen_jax_colab.ipynb executes headless (nbclient, python3 kernel) with its QUICK
settings in a fresh working directory, and makes its videos.

To keep the suite short, the working directory starts with the session's tiny quickstart run
(tests/_quickstart_fixtures.py, the same settings as the notebook's QUICK cell) copied in as the
notebook's output folder: the notebook's quickstart cell then resumes it (every stage finished),
and the API, display and conversion cells run for real (generator load + compile, rendering,
muxing). The training path itself is covered by tests/test_quickstart.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests import _quickstart_fixtures as qf, subprocess_env

NOTEBOOK = os.path.join(qf.REPO, "notebooks", "emogen_jax_colab.ipynb")


def _ensure_kernel() -> str:
  from jupyter_client.kernelspec import KernelSpecManager
  if "python3" not in KernelSpecManager().find_kernel_specs():
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name", "python3"],
                   check=True, capture_output=True)
  return "python3"


def _quick_settings(nb) -> dict:
  """The QUICK settings as written in the notebook's first code cell."""
  first = next(c for c in nb.cells if c.cell_type == "code")
  scope: dict = {}
  exec(first.source, scope)  # plain assignments only
  return scope


def test_notebook_quick_settings_match_the_shared_run():
  import nbformat
  scope = _quick_settings(nbformat.read(NOTEBOOK, as_version=4))
  assert scope["QUICK"] is True and scope["SETTINGS"] == qf.TINY


def test_notebook_runs_headless(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  out_name = _quick_settings(nb)["OUT"]
  shutil.copytree(qf.tiny_quickstart()["out"], tmp_path / out_name)
  for k, v in subprocess_env().items():
    monkeypatch.setenv(k, v)  # the kernel inherits this environment
  client = nbclient.NotebookClient(nb, kernel_name=_ensure_kernel(), timeout=600,
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError (with the cell and traceback) on any error

  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
  out = tmp_path / out_name
  happy = out / "api_happy.mp4"
  assert happy.is_file() and happy.stat().st_size > 1000
  assert (out / "demo_all_emotions.mp4").is_file()
  with open(out / "summary.json") as f:
    summary = json.load(f)
  # The summary was rewritten by the notebook's run, with the paths of this working directory.
  assert summary["outputs"]["demo_video"] == str(out / "demo_all_emotions.mp4")
  # The videos were embedded in the notebook (api.show -> IPython Video).
  html = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
          if "text/html" in o.get("data", {})]
  assert sum("<video" in o["data"]["text/html"] for o in html) >= 2
