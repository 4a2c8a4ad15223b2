"""Tests of emogen_jax.models."""
