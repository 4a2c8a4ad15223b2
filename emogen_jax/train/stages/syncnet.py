"""Lip-sync expert (SyncNet) training and validation steps (docs/design.md "Training recipe").

A stage module (``emogen_jax.train.stages.base.Stage``). Batch (per device): mel (B, 80, 16, 1), frames (B, 48, 96, 15) in [0, 1], label (B,) 1/0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emogen_jax.models import SyncNet
from emogen_jax.train import losses
from emogen_jax.train.stages.base import AXIS, apply_gradients, compute_dtype, nonfinite_hook
from emogen_jax.train.state import TrainState, adam, create_state, init_variables, learning_rate

NAME = "syncnet"
TASK = "syncnet"          # input-pipeline task
KINDS = ("syncnet",)      # trained networks


def make_model(config, *, bn_axis_name: str | None = AXIS) -> SyncNet:
  return SyncNet(width=config.width, dtype=compute_dtype(config), bn_axis_name=bn_axis_name)


def make_optimizers(config) -> dict[str, optax.GradientTransformation]:
  return {"syncnet": adam(learning_rate(config, config.learning_rate), config.b1, config.b2)}


def validate_config(config) -> None:
  del config  # nothing beyond the shared checks


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
          "frames": rng.uniform(0, 1, (batch, 48, 96, 15)).astype(np.float32),
          "label": (rng.uniform(size=(batch,)) < 0.5).astype(np.float32)}


def make_train_step(config, setup: dict[str, Any] | None = None):
  del setup
  model = make_model(config)
  tx = make_optimizers(config)["syncnet"]
  nonfinite = nonfinite_hook(config)

  def train_step(state: TrainState, batch: dict[str, Any]):
    def loss_fn(params):
      (a, v), new_vars = model.apply({"params": params, "batch_stats": state.batch_stats["syncnet"]},
                                     batch["mel"], batch["frames"], train=True,
                                     mutable=["batch_stats"])
      loss = nonfinite(losses.sync_loss(a, v, batch["label"]), state.step)
      return loss, (new_vars["batch_stats"], losses.sync_accuracy(a, v, batch["label"]))

    (loss, (batch_stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params["syncnet"])
    params, opt_state, grads = apply_gradients(tx, grads, state.params["syncnet"],
                                               state.opt_state["syncnet"])
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
    a, v = model.apply(state.variables("syncnet"), batch["mel"], batch["frames"], train=False)
    # per example, so that the padding of the last validation batch (mask 0) is left out
    metrics = {"loss": losses.per_example(losses.sync_loss, a, v, batch["label"]),
               "accuracy": losses.per_example(losses.sync_accuracy, a, v, batch["label"])}
    return losses.masked_mean(metrics, batch.get("mask"), AXIS)

  return eval_step


def checkpoint_meta(config, setup: dict[str, Any] | None = None) -> dict[str, Any]:
  del setup
  return {"width": float(config.width), "stage": "syncnet"}
