"""Test-session settings: JAX on the CPU, TensorFlow kept off any accelerator and quiet."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
