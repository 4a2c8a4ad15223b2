"""Test-session settings (JAX on the CPU, TensorFlow quiet) and the fixtures built once per session."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


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
