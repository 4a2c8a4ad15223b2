"""Model checkpoints: round trip through orbax, and the user-facing errors."""

import numpy as np
import pytest

from emogen_jax.errors import UserError
from emogen_jax.models import checkpoints


def _variables(seed):
  rng = np.random.default_rng(seed)
  return {"params": {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)}},
          "batch_stats": {"bn": {"mean": rng.normal(size=(4,)).astype(np.float32)}}}


def test_round_trip_is_exact_and_keeps_meta(tmp_path):
  v = _variables(0)
  path = checkpoints.save_models(str(tmp_path / "ck"), {"syncnet": v}, source="unit-test")
  back = checkpoints.load_model(path, "syncnet")
  np.testing.assert_array_equal(back["params"]["conv"]["kernel"], v["params"]["conv"]["kernel"])
  np.testing.assert_array_equal(back["batch_stats"]["bn"]["mean"], v["batch_stats"]["bn"]["mean"])
  assert checkpoints.load_meta(path)["source"] == "unit-test"


def test_workdir_resolves_to_latest_step(tmp_path):
  for step, seed in ((10, 1), (20, 2)):
    checkpoints.save_models(str(tmp_path / "checkpoints" / str(step)), {"syncnet": _variables(seed)})
  got = checkpoints.load_model(str(tmp_path), "syncnet")
  np.testing.assert_array_equal(got["params"]["conv"]["kernel"], _variables(2)["params"]["conv"]["kernel"])


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes(b"x"), "must be converted first"),
    (lambda p: p.mkdir(), "neither an emogen_jax checkpoint"),
])
def test_bad_paths_are_one_line_errors(tmp_path, make, message):
  p = tmp_path / "ck.pth"
  make(p)
  with pytest.raises(UserError, match=message):
    checkpoints.load_models(str(p))


def test_wrong_kind_names_what_is_there(tmp_path):
  path = checkpoints.save_models(str(tmp_path / "ck"), {"syncnet": _variables(0)})
  with pytest.raises(UserError, match="holds syncnet, not a generator"):
    checkpoints.load_model(path, "generator")
