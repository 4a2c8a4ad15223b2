"""Tests of emogen_jax.evaluation."""
