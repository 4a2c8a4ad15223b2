"""The stage interface: every registered stage provides it, and the loop names no stage."""

from __future__ import annotations

import inspect
import re

import pytest

from emogen_jax.train import loop, stages
from emogen_jax.train.stages import base


@pytest.mark.parametrize("name", stages.STAGE_NAMES)
def test_every_stage_provides_the_interface(name):
  stage = stages.get(name)
  assert isinstance(stage, base.Stage)
  assert stage.NAME == name
  members = [m for m in dir(base.Stage) if not m.startswith("_")] + list(base.Stage.__annotations__)
  for member in members:
    assert hasattr(stage, member), f"stage {name} lacks {member}"
  for hook in base.OPTIONAL_HOOKS:
    assert not hasattr(stage, hook) or callable(getattr(stage, hook))


def test_unknown_stage_is_refused():
  with pytest.raises(KeyError, match="unknown training stage 'gan'"):
    stages.get("gan")


def test_the_loop_names_no_stage():
  source = inspect.getsource(loop)
  for name in stages.STAGE_NAMES:
    assert not re.search(rf"\b{name}\b", source), f"the training loop mentions {name!r}"
