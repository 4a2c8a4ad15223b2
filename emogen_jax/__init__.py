"""emogen_jax: a JAX/Flax reimplementation of EmoGen (emotional talking-face generation)."""

import os as _os

# TensorFlow (tf.data, TFDS, TensorBoard writers) prints its C++ start-up INFO lines (oneDNN,
# CPU features, absl::InitializeLog) on stderr of every command that imports it; they say
# nothing about the run. Level 1 hides INFO only: warnings and errors still show. A value the
# user set is kept.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"
