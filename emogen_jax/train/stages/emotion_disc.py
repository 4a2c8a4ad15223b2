"""Emotion discriminator (DISCEMO) stand-alone training and validation steps (docs/design.md
"Training recipe"): cross-entropy, Adam lr 1e-6 betas (0.5, 0.999), lr x0.1 every 150 epochs
(config.steps_per_epoch converts epochs to steps), Xavier-uniform init (set in the module).

A stage module (``emogen_jax.train.stages.base.Stage``). Batch (per device): frames (B, 5, 96, 96, 3) in [0, 1], emotion (B,) int.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emogen_jax.models import EmotionDiscriminator
from emogen_jax.train import losses
from emogen_jax.errors import UserError
from emogen_jax.train.stages.base import AXIS, apply_gradients, compute_dtype, nonfinite_hook
from emogen_jax.train.state import TrainState, adam, create_state, init_variables

NAME = "emotion_disc"
TASK = "emotion"
KINDS = ("emotion_disc",)


def make_model(config, original_layout: bool = False, width: float | None = None):
  return EmotionDiscriminator(original_layout=original_layout,
                              width=config.width if width is None else width,
                              dtype=compute_dtype(config))


def learning_rate_schedule(config) -> optax.Schedule:
  """lr x decay_factor every lr_decay_epochs epochs (staircase), in steps via steps_per_epoch."""
  every = int(config.lr_decay_epochs) * int(config.steps_per_epoch)
  return optax.exponential_decay(config.learning_rate, transition_steps=max(every, 1),
                                 decay_rate=config.lr_decay_factor, staircase=True)


def make_optimizers(config) -> dict[str, optax.GradientTransformation]:
  return {"emotion_disc": adam(learning_rate_schedule(config), config.b1, config.b2)}


def validate_config(config) -> None:
  if int(config.steps_per_epoch) <= 0:
    raise UserError(f"config.steps_per_epoch={config.steps_per_epoch} must be >= 1")


def prepare(config, *, log=print) -> dict[str, Any]:
  """Nothing to load: this stage starts from random init."""
  del config, log
  return {}


def init_state(config, rng: jax.Array, setup: dict[str, Any] | None = None) -> TrainState:
  del setup
  variables = init_variables(make_model(config), jax.random.fold_in(rng, 1),
                             jnp.zeros((1, 5, 96, 96, 3)))
  return create_state(rng=rng, models={"emotion_disc": variables},
                      optimizers=make_optimizers(config))


def fake_batch(rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
  return {"frames": rng.uniform(0, 1, (batch, 5, 96, 96, 3)).astype(np.float32),
          "emotion": rng.integers(0, 6, (batch,)).astype(np.int32)}


def make_train_step(config, setup: dict[str, Any] | None = None):
  del setup
  model = make_model(config)
  tx = make_optimizers(config)["emotion_disc"]
  nonfinite = nonfinite_hook(config)

  def train_step(state: TrainState, batch: dict[str, Any]):
    def loss_fn(params):
      logits = model.apply({"params": params}, batch["frames"])
      loss = nonfinite(losses.cross_entropy(logits, batch["emotion"]), state.step)
      return loss, losses.accuracy(logits, batch["emotion"])

    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["emotion_disc"])
    params, opt_state, grads = apply_gradients(tx, grads, state.params["emotion_disc"],
                                               state.opt_state["emotion_disc"])
    metrics = jax.lax.pmean({"loss": loss, "accuracy": acc, "grad_norm": losses.global_norm(grads)},
                            AXIS)
    return state.replace(step=state.step + 1, params={"emotion_disc": params},
                         opt_state={"emotion_disc": opt_state}), metrics

  return train_step


def make_eval_step(config, setup: dict[str, Any] | None = None):
  del setup
  model = make_model(config)

  def eval_step(state: TrainState, batch: dict[str, Any]):
    logits = model.apply(state.variables("emotion_disc"), batch["frames"])
    # per example, so that the padding of the last validation batch (mask 0) is left out
    return losses.masked_mean({"loss": losses.per_example(losses.cross_entropy, logits, batch["emotion"]),
                               "accuracy": losses.per_example(losses.accuracy, logits, batch["emotion"])},
                              batch.get("mask"), AXIS)

  return eval_step


def checkpoint_meta(config, setup: dict[str, Any] | None = None) -> dict[str, Any]:
  del setup
  return {"width": float(config.width), "original_layout": False, "stage": "emotion_disc"}
