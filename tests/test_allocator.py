"""The entry points' faster malloc (emogen_jax.allocator): a CLI re-executes itself once with
tcmalloc preloaded and really runs on it; EMOGEN_ALLOCATOR=system keeps glibc's; library imports
never re-execute. Real processes, real /proc/self/maps (no mocks)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from emogen_jax import allocator
from tests import subprocess_env
from tests.conftest import _in_ci

# What the process runs on (read from its own memory map) and its arguments, which the
# re-executed process must keep.
_PROBE = ("from emogen_jax import allocator\n"
          "allocator.use_fast_allocator()\n"
          "import sys\n"
          "print(allocator.preloaded() or 'glibc', sys.argv[1:], sep='|')\n")


def _clean_env(**extra: str) -> dict[str, str]:
  env = subprocess_env(**extra)
  for key in ("LD_PRELOAD", "_EMOGEN_ALLOCATOR_SET", allocator.ENV):
    env.pop(key, None)
  env.update(extra)
  return env


def _run(args: list[str], env: dict[str, str]) -> list[str]:
  return _run_process(args, env).stdout.strip().splitlines()[-1].split("|")


def _run_process(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
  out = subprocess.run([sys.executable] + args, env=env, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  return out


@pytest.fixture(scope="module")
def tcmalloc() -> str:
  lib = allocator.find() if os.environ.get(allocator.ENV) != "system" else None
  if lib is None:
    if _in_ci():
      pytest.fail("tcmalloc is not installed; bash scripts/install.sh installs "
                  "libtcmalloc-minimal4 (as root)")
    pytest.skip("tcmalloc is not installed (apt-get install libtcmalloc-minimal4)")
  return lib


def test_entry_point_reexecutes_onto_tcmalloc_keeping_its_arguments(tcmalloc):
  lib, argv = _run(["-c", _PROBE, "--flag", "a b"], _clean_env())
  assert "tcmalloc" in os.path.basename(lib), lib
  assert argv == str(["--flag", "a b"])


def test_module_entry_point_reexecutes_too(tcmalloc):
  out = subprocess.run([sys.executable, "-m", "emogen_jax.allocator"], env=_clean_env(),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().startswith("malloc: libtcmalloc"), out.stdout


def test_system_choice_keeps_glibc(tcmalloc):
  lib, _ = _run(["-c", _PROBE], _clean_env(EMOGEN_ALLOCATOR="system"))
  assert lib == "glibc"


def test_a_library_import_never_reexecutes(tcmalloc):
  code = "from emogen_jax import allocator; import os; print(allocator.preloaded() or 'glibc', [], sep='|')"
  lib, _ = _run(["-c", code], _clean_env())
  assert lib == "glibc"


def test_a_missing_library_path_carries_on_with_glibc_and_says_so():
  out = _run_process(["-c", _PROBE], _clean_env(EMOGEN_ALLOCATOR="/nonexistent/libtcmalloc.so"))
  assert out.stdout.strip().splitlines()[-1].split("|")[0] == "glibc"
  warning = [line for line in out.stderr.splitlines() if "EMOGEN_ALLOCATOR" in line]
  assert warning == ["warning: EMOGEN_ALLOCATOR=/nonexistent/libtcmalloc.so is not a file; running "
                     "on the system's malloc (give the path of an installed "
                     "libtcmalloc_minimal.so.4, or unset it)"], out.stderr
