"""``python -m emogen_jax.train``: see ``emogen_jax.train.main``."""
import sys

from emogen_jax.train.main import main

sys.exit(main())
