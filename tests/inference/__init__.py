"""Tests of emogen_jax.inference."""
