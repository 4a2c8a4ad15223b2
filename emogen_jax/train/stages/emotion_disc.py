"""Emotion discriminator (DISCEMO) stand-alone training and validation steps (SPEC "Emotion
discriminator"): cross-entropy, Adam lr 1e-6 betas (0.5, 0.999), lr x0.1 every 150 epochs
(config.steps_per_epoch converts epochs to steps), Xavier-uniform init (set in the module).

Pure functions of (state, batch) for ``jax.pmap(..., axis_name="batch")``; gradients and metrics
averaged with ``lax.pmean``. Batch (per device): video (B, 5, 96, 96, 3) in [0, 1], emotion (B,) int.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emogen_jax.models import EmotionDiscriminator
from emogen_jax.train import losses
from emogen_jax.train.state import TrainState, adam, create_state, init_variables

AXIS = "batch"
TASK = "emotion"
KINDS = ("emotion_disc",)


def compute_dtype(config):
  return jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32


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
  return {"video": rng.uniform(0, 1, (batch, 5, 96, 96, 3)).astype(np.float32),
          "emotion": rng.integers(0, 6, (batch,)).astype(np.int32)}


def examples_in(batch) -> int:
  return int(np.prod(batch["emotion"].shape))


def make_train_step(config, setup: dict[str, Any] | None = None):
  del setup
  model = make_model(config)
  tx = make_optimizers(config)["emotion_disc"]
  inject_at = int(config.get("inject_nonfinite_at_step", -1))

  def train_step(state: TrainState, batch: dict[str, Any]):
    def loss_fn(params):
      logits = model.apply({"params": params}, batch["video"])
      loss = losses.cross_entropy(logits, batch["emotion"])
      if inject_at >= 0:
        loss = loss + jnp.where(state.step == inject_at, jnp.nan, 0.0)
      return loss, losses.accuracy(logits, batch["emotion"])

    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["emotion_disc"])
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state["emotion_disc"],
                                   state.params["emotion_disc"])
    params = optax.apply_updates(state.params["emotion_disc"], updates)
    metrics = jax.lax.pmean({"loss": loss, "accuracy": acc, "grad_norm": losses.global_norm(grads)},
                            AXIS)
    return state.replace(step=state.step + 1, params={"emotion_disc": params},
                         opt_state={"emotion_disc": opt_state}), metrics

  return train_step


def make_eval_step(config, setup: dict[str, Any] | None = None):
  del setup
  model = make_model(config)

  def eval_step(state: TrainState, batch: dict[str, Any]):
    logits = model.apply(state.variables("emotion_disc"), batch["video"])
    # per example, so that the padding of the last validation batch (mask 0) is left out
    return losses.masked_mean({"loss": losses.per_example(losses.cross_entropy, logits, batch["emotion"]),
                               "accuracy": losses.per_example(losses.accuracy, logits, batch["emotion"])},
                              batch.get("mask"), AXIS)

  return eval_step


def checkpoint_meta(config, setup: dict[str, Any] | None = None) -> dict[str, Any]:
  del setup
  return {"width": float(config.width), "original_layout": False, "stage": "emotion_disc"}
