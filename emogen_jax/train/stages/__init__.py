"""Training stages behind one interface (``base.Stage``), found by name.

- ``base``: the interface and what the stages share (the axis name, the gradient update, the
  compute dtype, the non-finite test hook).
- ``syncnet``: the lip-sync expert. ``emotion_disc``: the emotion discriminator.
- ``emogen``: the generator with its frozen expert, VGG-19 and the jointly trained emotion disc.
A new stage is a new module here plus its name in ``STAGE_NAMES``; the loop does not change.
"""

from __future__ import annotations

import importlib

STAGE_NAMES = ("syncnet", "emotion_disc", "emogen")  # in training order


def get(name: str):
  """The stage module called ``name`` (one of STAGE_NAMES)."""
  if name not in STAGE_NAMES:
    raise KeyError(f"unknown training stage {name!r}; known: {', '.join(STAGE_NAMES)}")
  return importlib.import_module(f"emogen_jax.train.stages.{name}")
