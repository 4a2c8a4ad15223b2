"""``python -m emogen_jax.train``: see ``emogen_jax.train.loop``."""
import sys

from emogen_jax.train.loop import main

sys.exit(main())
