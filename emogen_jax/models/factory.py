"""One place that builds a network of any kind, and the example inputs that initialise it.

Kinds: ``generator``, ``syncnet``, ``emotion_disc``, ``quality_disc``, ``vgg19``. ``width`` scales
every channel count (1.0 = the reference networks; see ``layers.channels``).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from emogen_jax.errors import UserError
from emogen_jax.models.emotion_disc import EmotionDiscriminator
from emogen_jax.models.generator import Generator
from emogen_jax.models.quality_disc import QualityDiscriminator
from emogen_jax.models.syncnet import SyncNet
from emogen_jax.models.vgg import VGG19Features

KINDS = ("generator", "syncnet", "emotion_disc", "quality_disc", "vgg19")


def build(kind: str, width: float = 1.0, *, original_layout: bool = False, dtype=jnp.float32,
          **kwargs: Any):
  """The flax module of ``kind``; ``kwargs`` go to its constructor (e.g. ``bn_axis_name``)."""
  if kind == "generator":
    return Generator(width=width, dtype=dtype, **kwargs)
  if kind == "syncnet":
    return SyncNet(width=width, dtype=dtype, **kwargs)
  if kind == "emotion_disc":
    return EmotionDiscriminator(width=width, original_layout=original_layout, dtype=dtype, **kwargs)
  if kind == "quality_disc":
    return QualityDiscriminator(width=width, dtype=dtype, **kwargs)
  if kind == "vgg19":
    return VGG19Features(width=width, dtype=dtype, **kwargs)
  raise UserError(f"unknown model kind {kind!r}; valid kinds are {', '.join(KINDS)}")


def example_inputs(kind: str) -> tuple[tuple, dict]:
  """(args, kwargs) of one call that initialises ``kind`` (batch 1, inference mode)."""
  if kind == "generator":
    return (jnp.zeros((1, 80, 16, 1)), jnp.zeros((1, 96, 96, 6)), jnp.zeros((1,), jnp.int32)), \
        {"train": False}
  if kind == "syncnet":
    return (jnp.zeros((1, 80, 16, 1)), jnp.zeros((1, 48, 96, 15))), {"train": False}
  if kind == "emotion_disc":
    return (jnp.zeros((1, 5, 96, 96, 3)),), {}
  if kind == "quality_disc":
    return (jnp.zeros((1, 96, 96, 3)),), {}
  if kind == "vgg19":
    return (jnp.zeros((1, 32, 32, 3)),), {}
  raise UserError(f"unknown model kind {kind!r}; valid kinds are {', '.join(KINDS)}")
