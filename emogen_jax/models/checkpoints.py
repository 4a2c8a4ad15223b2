"""Our checkpoint format, shared by conversion, training and inference.

A *model checkpoint* is an orbax checkpoint directory with two items:
  ``models``: ``{kind: variables}``, e.g. ``{"generator": {"params": ..., "batch_stats": ...}}``;
  ``meta``:   JSON, ``{"format": "emogen_jax", "kinds": [...], ...}``.
A *training workdir* keeps a series of such checkpoints under ``<workdir>/checkpoints/<step>/``
(written by the trainer's orbax CheckpointManager, which adds its own items for optimizer state).
``load_models`` accepts either and, for a workdir, takes the latest step.

Kinds: ``generator``, ``syncnet``, ``emotion_disc``, ``quality_disc``, ``vgg19``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import orbax.checkpoint as ocp

from emogen_jax.errors import UserError

KINDS = ("generator", "syncnet", "emotion_disc", "quality_disc", "vgg19")
FORMAT = "emogen_jax"
CHECKPOINTS_SUBDIR = "checkpoints"


def _to_numpy(tree):
  import jax
  return jax.tree_util.tree_map(np.asarray, tree)


def fingerprint(tree) -> str:
  """A short content hash of a pytree of arrays (paths, dtypes, shapes and bytes): tells whether
  two networks are the same weights without storing them."""
  import hashlib
  import jax
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def save_models(path: str, models: Mapping[str, Any], **meta) -> str:
  """Writes ``{kind: variables}`` as a model checkpoint at ``path`` (overwritten). Returns the path."""
  for kind in models:
    if kind not in KINDS:
      raise UserError(f"unknown model kind {kind!r}; valid kinds are {', '.join(KINDS)}")
  path = os.path.abspath(path)
  meta = {"format": FORMAT, "kinds": sorted(models), **meta}
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(path, ocp.args.Composite(models=ocp.args.StandardSave(_to_numpy(dict(models))),
                                        meta=ocp.args.JsonSave(meta)), force=True)
  return path


def latest_step_dir(workdir: str) -> str | None:
  """The newest finished step directory of a training workdir, or None when it has none."""
  root = os.path.join(os.path.abspath(workdir), CHECKPOINTS_SUBDIR)
  if not os.path.isdir(root):
    return None
  steps = [int(d) for d in os.listdir(root) if d.isdigit() and os.path.isdir(os.path.join(root, d))]
  return os.path.join(root, str(max(steps))) if steps else None


def resolve_checkpoint(path: str) -> str:
  """A model checkpoint directory for ``path`` (itself, or a workdir's latest step)."""
  if not os.path.exists(path):
    raise UserError(f"checkpoint {path!r} does not exist; give a training workdir or a converted "
                    "checkpoint (python -m emogen_jax.convert)")
  if os.path.isfile(path):
    raise UserError(f"checkpoint {path!r} is a file, not an emogen_jax checkpoint directory; "
                    "PyTorch .pth files must be converted first: python -m emogen_jax.convert --help")
  step_dir = latest_step_dir(path)
  if step_dir is not None:
    return step_dir
  if os.path.isdir(os.path.join(path, CHECKPOINTS_SUBDIR)):
    raise UserError(f"training workdir {path!r} has no finished checkpoint yet")
  if not os.path.isdir(os.path.join(path, "models")):
    raise UserError(f"{path!r} is neither an emogen_jax checkpoint nor a training workdir "
                    "(no 'models' item, no 'checkpoints' folder)")
  return path


def load_meta(path: str) -> dict:
  d = resolve_checkpoint(path)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    return dict(ckptr.restore(d, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])


def load_models(path: str) -> dict[str, Any]:
  """Reads ``{kind: variables}`` (numpy arrays) from a model checkpoint or a training workdir."""
  d = resolve_checkpoint(path)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    restored = ckptr.restore(d, ocp.args.Composite(models=ocp.args.StandardRestore()))
  return _to_numpy(dict(restored["models"]))


def load_model(path: str, kind: str) -> dict[str, Any]:
  """The variables of one network ``kind`` from a checkpoint or workdir, with a clear error if absent."""
  models = load_models(path)
  if kind not in models:
    raise UserError(f"checkpoint {path!r} holds {', '.join(sorted(models)) or 'no models'}, "
                    f"not a {kind}; pick the checkpoint of the {kind}")
  return models[kind]


# ----------------------------------------------------------------------------- training checkpoints
# A training step directory holds the `models` and `meta` items above (so load_models/load_model
# read a workdir like any checkpoint) plus `train`: step, RNG key, optimizer states, stage extras.

TRAIN_ITEMS = ("models", "meta", "train")


def training_manager(workdir: str, *, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  """An orbax CheckpointManager writing ``<workdir>/checkpoints/<step>/`` and keeping the last ``keep``."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max(1, int(keep)), create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINTS_SUBDIR),
                               item_names=TRAIN_ITEMS, options=options)


def save_training(manager: ocp.CheckpointManager, step: int, *, models: Mapping[str, Any],
                  train: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
  """Starts saving one training step (asynchronously if the manager is async). Every process calls it."""
  for kind in models:
    if kind not in KINDS:
      raise UserError(f"unknown model kind {kind!r}; valid kinds are {', '.join(KINDS)}")
  meta = {"format": FORMAT, "kinds": sorted(models), "step": int(step), **meta}
  return manager.save(int(step), force=True, args=ocp.args.Composite(
      models=ocp.args.StandardSave(_to_numpy(dict(models))),
      meta=ocp.args.JsonSave(meta),
      train=ocp.args.StandardSave(_to_numpy(dict(train)))))


def restore_training(manager: ocp.CheckpointManager, *, models_target: Mapping[str, Any],
                     train_target: Mapping[str, Any], step: int | None = None):
  """(step, models, train, meta) of ``step`` (default: the latest), restored onto the targets'
  structure (optax states come back as their named tuples), or None when there is no checkpoint."""
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      models=ocp.args.StandardRestore(_to_numpy(dict(models_target))),
      train=ocp.args.StandardRestore(_to_numpy(dict(train_target))),
      meta=ocp.args.JsonRestore()))
  return (int(step), _to_numpy(dict(restored["models"])), _to_numpy(dict(restored["train"])),
          dict(restored["meta"]))
