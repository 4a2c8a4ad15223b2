"""Tests of emogen_jax.data."""
