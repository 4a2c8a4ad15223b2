"""``python -m emogen_jax.train``: see ``emogen_jax.train.main``."""
import sys

from emogen_jax.allocator import use_fast_allocator

use_fast_allocator()  # before the heavy imports: it may re-execute this command

from emogen_jax.train.main import main

sys.exit(main())
