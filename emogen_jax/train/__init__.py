"""Training: ``python -m emogen_jax.train --config configs/<stage>.py --workdir W``.

- ``loop``: the stage-agnostic training loop (``train_and_evaluate``) and its CLI.
- ``stages``: one module per training stage behind one interface (``stages.base``) and registry.
- ``state``: the ``TrainState`` dataclass, optimizers and replication helpers.
- ``config``: defaults shared by the configs/*.py files and their validation.
- ``checkpoints``: training checkpoints (orbax manager, save, exact restore).
- ``losses``: the training losses as pure functions.
- ``distributed``: multi-host start-up.
- ``recipe``: the three stages in order with the learnability targets (quickstart, reproduction).
"""
