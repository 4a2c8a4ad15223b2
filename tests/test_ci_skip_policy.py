"""tests/conftest.py: with CI=true a test skipped for a missing import fails (so the PyTorch parity
tests cannot silently not run in CI); without CI it is an ordinary skip."""

import os
import subprocess
import sys

from tests import REPO  # noqa: E402

_PROBES = {
    "conftest.py": "from tests.conftest import *  # noqa: F401,F403  (the suite's hooks)\n",
    "test_in_test.py": ("import pytest\n\ndef test_needs_it():\n"
                        "  pytest.importorskip('no_such_module_for_the_ci_probe')\n\n"
                        "def test_other_skip():\n  pytest.skip('not about an import')\n"),
    "test_at_collection.py": ("import pytest\n"
                              "pytest.importorskip('no_such_module_for_the_ci_probe')\n\n"
                              "def test_x():\n  pass\n"),
}


def _pytest(tmp_path, ci: str | None):
  for name, text in _PROBES.items():
    (tmp_path / name).write_text(text)
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop("CI", None)
  if ci is not None:
    env["CI"] = ci
  return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                         "--continue-on-collection-errors",
                         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_missing_import_skips_fail_in_ci(tmp_path):
  proc = _pytest(tmp_path, "true")
  out = proc.stdout
  assert proc.returncode != 0, out
  assert "FAILED" in out and "test_needs_it" in out and "CI=true and this test was skipped" in out
  assert "ERROR" in out and "test_at_collection.py" in out        # the module-level importorskip
  assert "SKIPPED" in out and "not about an import" in out        # other skips stay skips


def test_missing_import_skips_are_skips_outside_ci(tmp_path):
  proc = _pytest(tmp_path, None)
  assert proc.returncode == 0, proc.stdout
  assert "3 skipped" in proc.stdout, proc.stdout
