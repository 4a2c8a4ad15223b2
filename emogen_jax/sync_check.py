"""``python -m emogen_jax.sync_check``: the command entry; the code lives in ``emogen_jax.evaluation.sync_check``."""
import sys

from emogen_jax.allocator import use_fast_allocator

if __name__ == "__main__":
  use_fast_allocator()  # before the heavy imports: it may re-execute this command

from emogen_jax.evaluation.sync_check import main

if __name__ == "__main__":
  sys.exit(main())
