"""Flax models of EmoGen (NHWC; parameter names mirror the original PyTorch module paths)."""

from __future__ import annotations

import jax
import numpy as np

from emogen_jax.models.emotion_disc import EmotionDiscriminator
from emogen_jax.models.generator import Generator
from emogen_jax.models.quality_disc import QualityDiscriminator
from emogen_jax.models.syncnet import SyncNet
from emogen_jax.models.vgg import VGG19Features

__all__ = ["Generator", "SyncNet", "EmotionDiscriminator", "QualityDiscriminator",
           "VGG19Features", "count_params"]


def count_params(tree) -> int:
  """Number of scalar values in a pytree of arrays (or ShapeDtypeStructs, e.g. from eval_shape)."""
  return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree)))
