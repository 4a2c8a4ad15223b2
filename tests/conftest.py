"""Test-session settings (JAX on the CPU, TensorFlow quiet), the fixtures built once per session,
and, in CI, a test that skips because a package is missing fails instead."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The test process shares the CLI subprocesses' compilation cache (tests/__init__.py): a network
# compiled by a subprocess is loaded, not compiled again, by an in-process test, and back.
from tests import CACHE_ENV, TEST_XLA_FLAGS  # noqa: E402

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
for _k, _v in CACHE_ENV.items():
  os.environ.setdefault(_k, _v)

import pytest  # noqa: E402

# pytest.importorskip's reason starts with this.
_MISSING_IMPORT = "could not import"


@pytest.fixture(scope="session")
def pipeline_corpus(tmp_path_factory):
  """The small synthetic corpus of the data tests (see tests/_pipeline_fixtures.py)."""
  from tests import _pipeline_fixtures as fx
  return fx.make_corpus(str(tmp_path_factory.mktemp("pipeline")))


@pytest.fixture(scope="session")
def preprocessed_data(pipeline_corpus, tmp_path_factory):
  """``pipeline_corpus`` preprocessed into TFDS shards with the default settings."""
  from tests import _pipeline_fixtures as fx
  return fx.preprocess_corpus(pipeline_corpus, str(tmp_path_factory.mktemp("preprocessed")))


def _in_ci() -> bool:
  return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _fail_missing_import_skip(report) -> None:
  """With CI=true (the CI sets it), a skip for a missing import (torch for the PyTorch parity
  tests, ...) becomes a failure: the CI installs every test dependency (scripts/install.sh), so
  such a skip means that a parity test silently did not run."""
  if not (report.skipped and _in_ci()):
    return
  reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
  if _MISSING_IMPORT in reason:
    report.outcome = "failed"
    report.longrepr = (f"CI=true and this test was skipped ({reason.strip()}); the test "
                       "dependencies must be installed in CI: bash scripts/install.sh")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """A test's own importorskip."""
  outcome = yield
  _fail_missing_import_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
  """A module-level importorskip (the whole file skipped at collection)."""
  outcome = yield
  _fail_missing_import_skip(outcome.get_result())


# Files that share one session-wide result run in one pytest-xdist worker (scripts/test.sh runs
# the suite on every core with --dist loadgroup): both read the one tiny quickstart run.
_SHARED_GROUPS = {"tests/test_notebook.py": "tests/test_quickstart.py"}
# The longest files (a minute or more each, measured), handed out first so that no worker is left
# with one of them at the end while the others idle.
_LONGEST_FIRST = ("tests/test_quickstart.py", "tests/train/test_train_resume.py",
                  "tests/train/test_train_multihost.py", "tests/train/test_step_parity.py",
                  "tests/train/test_train_pmap.py", "tests/train/test_train_cli.py",
                  "tests/train/test_eval_mask.py", "tests/train/test_emotion_probe.py")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
  """One xdist group per test file (a file's module fixtures are built once, in one worker), the
  longest groups first."""
  def group(item):
    path = item.nodeid.split("::")[0]
    return _SHARED_GROUPS.get(path, path)

  rank = {g: i for i, g in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(group(item), len(rank)))  # stable: files keep their order
  for item in items:
    item.add_marker(pytest.mark.xdist_group(group(item)))
