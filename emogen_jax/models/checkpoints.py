"""Our checkpoint format, shared by conversion, training and inference.

A *model checkpoint* is an orbax checkpoint directory with two items:
  ``models``: ``{kind: variables}``, e.g. ``{"generator": {"params": ..., "batch_stats": ...}}``;
  ``meta``:   JSON, ``{"format": "emogen_jax", "kinds": [...], ...}``.
A *training workdir* keeps a series of such checkpoints under ``<workdir>/checkpoints/<step>/``
(written by the trainer's orbax CheckpointManager, which adds its own items for optimizer state).
``load_models`` accepts either and, for a workdir, takes the latest step.

Paths: every function here takes a path as the user typed it (relative, ``~``) and resolves it to
an absolute one itself (orbax refuses relative paths); ``resolve_checkpoint`` is the one place
where a user's checkpoint argument becomes the directory that is read.

Kinds: ``generator``, ``syncnet``, ``emotion_disc``, ``quality_disc``, ``vgg19``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import orbax.checkpoint as ocp

from emogen_jax.data import files
from emogen_jax.errors import UserError
from emogen_jax.models.factory import KINDS

FORMAT = "emogen_jax"
CHECKPOINTS_SUBDIR = "checkpoints"


def to_numpy(tree):
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
  """Writes ``{kind: variables}`` as a model checkpoint at ``path``, replacing what was there only
  once the new one is complete (a failure leaves the old one). Returns the absolute path."""
  for kind in models:
    if kind not in KINDS:
      raise UserError(f"unknown model kind {kind!r}; valid kinds are {', '.join(KINDS)}")
  path = files.user_path(path)
  meta = {"format": FORMAT, "kinds": sorted(models), **meta}
  with files.atomic_dir(path) as tmp, ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(tmp, ocp.args.Composite(models=ocp.args.StandardSave(to_numpy(dict(models))),
                                       meta=ocp.args.JsonSave(meta)))
  return path


def latest_step_dir(workdir: str) -> str | None:
  """The newest finished step directory of a training workdir, or None when it has none."""
  root = os.path.join(files.user_path(workdir), CHECKPOINTS_SUBDIR)
  if not os.path.isdir(root):
    return None
  steps = [int(d) for d in os.listdir(root) if d.isdigit() and os.path.isdir(os.path.join(root, d))]
  return os.path.join(root, str(max(steps))) if steps else None


def checkpoint_kinds(path: str) -> list[str] | None:
  """The kinds held by the model checkpoint or workdir at ``path``, None when it is not one."""
  try:
    return list(load_meta(path).get("kinds", []))
  except UserError:
    return None


def resolve_checkpoint(path: str) -> str:
  """The absolute model checkpoint directory for ``path`` as typed (itself, or a workdir's latest
  step); a one-line UserError when it is neither."""
  typed, path = os.fspath(path), files.user_path(path)
  if not os.path.exists(path):
    raise UserError(f"checkpoint {typed!r} does not exist; give a training workdir or a converted "
                    "checkpoint (python -m emogen_jax.convert)")
  if os.path.isfile(path):
    raise UserError(f"checkpoint {typed!r} is a file, not an emogen_jax checkpoint directory; "
                    "PyTorch .pth files must be converted first: python -m emogen_jax.convert --help")
  step_dir = latest_step_dir(path)
  if step_dir is not None:
    return step_dir
  if os.path.isdir(os.path.join(path, CHECKPOINTS_SUBDIR)):
    raise UserError(f"training workdir {typed!r} has no finished checkpoint yet")
  if not os.path.isdir(os.path.join(path, "models")):
    raise UserError(f"{typed!r} is neither an emogen_jax checkpoint nor a training workdir "
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
  return to_numpy(dict(restored["models"]))


def load_model(path: str, kind: str) -> dict[str, Any]:
  """The variables of one network ``kind`` from a checkpoint or workdir, with a clear error if absent."""
  models = load_models(path)
  if kind not in models:
    raise UserError(f"checkpoint {path!r} holds {', '.join(sorted(models)) or 'no models'}, "
                    f"not a {kind}; pick the checkpoint of the {kind}")
  return models[kind]


def load(path: str, kind: str, dtype=None):
  """(module, variables, meta) of network ``kind`` from a checkpoint or workdir: the module is
  built with the width (and layout) recorded in the checkpoint's meta."""
  import jax.numpy as jnp
  from emogen_jax.models import factory
  variables = load_model(path, kind)
  meta = load_meta(path)
  widths = meta.get("widths", {})
  width = float(widths.get(kind, meta.get("width", 1.0)))
  module = factory.build(kind, width, original_layout=bool(meta.get("original_layout", False)),
                         dtype=dtype or jnp.float32)
  variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
  return module, variables, meta
