"""Models: the Flax networks of EmoGen (NHWC; parameter names mirror the original PyTorch paths).

- ``generator``: the talking-face generator (face, audio and emotion encoders, the decoder).
- ``syncnet``: the lip-sync expert. ``emotion_disc``: the emotion discriminator (classifier).
- ``quality_disc``: the optional visual-quality discriminator. ``vgg``: VGG-19 features for the
  perceptual loss.
- ``layers``: the shared blocks (Conv+BN+ReLU, the fast transposed convolution, width scaling).
- ``factory``: any network by kind name; ``checkpoints``: our checkpoint format and loader.
"""

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
