"""``python -m emogen_jax.sync_check``: the command entry; the code lives in ``emogen_jax.evaluation.sync_check``."""
import sys

from emogen_jax.evaluation.sync_check import main

if __name__ == "__main__":
  sys.exit(main())
