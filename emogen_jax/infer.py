"""``python -m emogen_jax.infer``: the command entry; the code lives in ``emogen_jax.inference.cli``."""
import sys

from emogen_jax.allocator import use_fast_allocator

if __name__ == "__main__":
  use_fast_allocator()  # before the heavy imports: it may re-execute this command

from emogen_jax.inference.cli import main

if __name__ == "__main__":
  sys.exit(main())
