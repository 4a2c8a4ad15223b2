"""emogen_jax: a JAX/Flax reimplementation of EmoGen (emotional talking-face generation)."""

__version__ = "0.1.0"
