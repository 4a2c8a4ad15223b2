"""Training checkpoints: ``<workdir>/checkpoints/<step>/`` written by an orbax CheckpointManager.

A step directory holds the ``models`` and ``meta`` items of a model checkpoint
(``emogen_jax.models.checkpoints``, so inference and evaluation read a workdir like any checkpoint)
plus ``train``: step, RNG key, optimizer states and stage extras, what an exact resume needs.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import orbax.checkpoint as ocp

from emogen_jax.data import files
from emogen_jax.errors import UserError
from emogen_jax.models.checkpoints import CHECKPOINTS_SUBDIR, FORMAT, to_numpy
from emogen_jax.models.factory import KINDS


TRAIN_ITEMS = ("models", "meta", "train")


def training_manager(workdir: str, *, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  """An orbax CheckpointManager writing ``<workdir>/checkpoints/<step>/`` and keeping the last ``keep``."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max(1, int(keep)), create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.path.join(files.user_path(workdir), CHECKPOINTS_SUBDIR),
                               item_names=TRAIN_ITEMS, options=options)


def save_training(manager: ocp.CheckpointManager, step: int, *, models: Mapping[str, Any],
                  train: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
  """Starts saving one training step (asynchronously if the manager is async). Every process calls it."""
  for kind in models:
    if kind not in KINDS:
      raise UserError(f"unknown model kind {kind!r}; valid kinds are {', '.join(KINDS)}")
  meta = {"format": FORMAT, "kinds": sorted(models), "step": int(step), **meta}
  return manager.save(int(step), force=True, args=ocp.args.Composite(
      models=ocp.args.StandardSave(to_numpy(dict(models))),
      meta=ocp.args.JsonSave(meta),
      train=ocp.args.StandardSave(to_numpy(dict(train)))))


def restore_training(manager: ocp.CheckpointManager, *, models_target: Mapping[str, Any],
                     train_target: Mapping[str, Any], step: int | None = None):
  """(step, models, train, meta) of ``step`` (default: the latest), restored onto the targets'
  structure (optax states come back as their named tuples), or None when there is no checkpoint."""
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      models=ocp.args.StandardRestore(to_numpy(dict(models_target))),
      train=ocp.args.StandardRestore(to_numpy(dict(train_target))),
      meta=ocp.args.JsonRestore()))
  return (int(step), to_numpy(dict(restored["models"])), to_numpy(dict(restored["train"])),
          dict(restored["meta"]))
