"""Lip-sync expert (SyncNet) training and validation steps (SPEC "Lip-sync expert").

Pure functions of (state, batch), meant to run under ``jax.pmap(..., axis_name="batch")``:
per-device batch -> gradients and metrics averaged with ``lax.pmean`` and BatchNorm statistics
taken over the whole global batch, so a step does not depend on the number of devices.
Batch (per device): mel (B, 80, 16, 1), faces (B, 48, 96, 15) in [0, 1], label (B,) 1/0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emogen_jax.models import SyncNet
from emogen_jax.train import losses
from emogen_jax.train.state import TrainState, adam, create_state, init_variables, learning_rate

AXIS = "batch"
TASK = "syncnet"          # input-pipeline task
KINDS = ("syncnet",)      # trained networks


def compute_dtype(config):
  return jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32


def make_model(config, *, bn_axis_name: str | None = AXIS) -> SyncNet:
  return SyncNet(width=config.width, dtype=compute_dtype(config), bn_axis_name=bn_axis_name)


def make_optimizers(config) -> dict[str, optax.GradientTransformation]:
  return {"syncnet": adam(learning_rate(config, config.learning_rate), config.b1, config.b2)}


def prepare(config, *, log=print) -> dict[str, Any]:
  """Nothing to load: this stage starts from random init."""
  del config, log
  return {}


def init_state(config, rng: jax.Array, setup: dict[str, Any] | None = None) -> TrainState:
  del setup
  model = make_model(config, bn_axis_name=None)
  variables = init_variables(model, jax.random.fold_in(rng, 1), jnp.zeros((1, 80, 16, 1)),
                         jnp.zeros((1, 48, 96, 15)), train=False)
  return create_state(rng=rng, models={"syncnet": variables}, optimizers=make_optimizers(config))


def fake_batch(rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
  """A random batch of the pipeline's "syncnet" task (tests and benchmarks)."""
  return {"mel": rng.normal(0, 2, (batch, 80, 16, 1)).clip(-4, 4).astype(np.float32),
          "faces": rng.uniform(0, 1, (batch, 48, 96, 15)).astype(np.float32),
          "label": (rng.uniform(size=(batch,)) < 0.5).astype(np.float32)}


def examples_in(batch) -> int:
  return int(np.prod(batch["label"].shape))


def make_train_step(config, setup: dict[str, Any] | None = None):
  del setup
  model = make_model(config)
  tx = make_optimizers(config)["syncnet"]
  inject_at = int(config.get("inject_nonfinite_at_step", -1))

  def train_step(state: TrainState, batch: dict[str, Any]):
    def loss_fn(params):
      (a, v), new_vars = model.apply({"params": params, "batch_stats": state.batch_stats["syncnet"]},
                                     batch["mel"], batch["faces"], train=True,
                                     mutable=["batch_stats"])
      loss = losses.sync_loss(a, v, batch["label"])
      if inject_at >= 0:  # test hook: a non-finite loss at a chosen step
        loss = loss + jnp.where(state.step == inject_at, jnp.nan, 0.0)
      return loss, (new_vars["batch_stats"], losses.sync_accuracy(a, v, batch["label"]))

    (loss, (batch_stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params["syncnet"])
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state["syncnet"], state.params["syncnet"])
    params = optax.apply_updates(state.params["syncnet"], updates)
    metrics = {"loss": loss, "accuracy": acc, "grad_norm": losses.global_norm(grads)}
    metrics = jax.lax.pmean(metrics, AXIS)
    new_state = state.replace(step=state.step + 1, params={"syncnet": params},
                              batch_stats={"syncnet": batch_stats},
                              opt_state={"syncnet": opt_state})
    return new_state, metrics

  return train_step


def make_eval_step(config, setup: dict[str, Any] | None = None):
  del setup
  model = make_model(config)

  def eval_step(state: TrainState, batch: dict[str, Any]):
    a, v = model.apply(state.variables("syncnet"), batch["mel"], batch["faces"], train=False)
    # per example, so that the padding of the last validation batch (mask 0) is left out
    metrics = {"loss": losses.per_example(losses.sync_loss, a, v, batch["label"]),
               "accuracy": losses.per_example(losses.sync_accuracy, a, v, batch["label"])}
    return losses.masked_mean(metrics, batch.get("mask"), AXIS)

  return eval_step


def checkpoint_meta(config, setup: dict[str, Any] | None = None) -> dict[str, Any]:
  del setup
  return {"width": float(config.width), "stage": "syncnet"}
