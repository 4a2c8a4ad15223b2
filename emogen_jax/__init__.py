"""emogen_jax: a JAX/Flax reimplementation of EmoGen (emotional talking-face generation)."""

import os as _os

# TensorFlow (tf.data, TFDS, TensorBoard writers) prints its C++ start-up INFO lines (oneDNN,
# CPU features, absl::InitializeLog) on stderr of every command that imports it; they say
# nothing about the run. Level 1 hides INFO only: warnings and errors still show. TF 2.21 logs
# its oneDNN notice before it reads that level (with an "absl::InitializeLog" preamble), so the
# oneDNN rewrites are switched off as well: TF runs only the input pipeline here (JPEG decoding,
# shuffling), where they bring nothing, and that is what silences the notice. Values the user
# set are kept.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
