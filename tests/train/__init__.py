"""Tests of emogen_jax.train."""
