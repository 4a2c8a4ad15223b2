"""The stage interface (what the training loop needs from a stage) and the pieces every stage shares.

A *stage* is a module that trains one or two networks on one input-pipeline task. The loop
(``emogen_jax.train.loop``) finds it by name through ``emogen_jax.train.stages.get`` and uses only
what ``Stage`` lists; ``docs/design.md`` explains how the three stages fit together.

Steps are pure functions of (state, per-device batch) run under ``jax.pmap(..., axis_name=AXIS)``:
gradients and metrics are averaged over ``AXIS`` and BatchNorm statistics are taken over the
global batch, so a step does not depend on how many devices share the batch.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emogen_jax.train.state import TrainState

AXIS = "batch"  # the pmap axis of every step

# Whether a CPU run donates the state to its step as accelerators do (1) or not (0). Under pmap,
# XLA:CPU copies every donated parameter and Adam moment before the update that reads it, and
# recomputes the new moments inside the parameter update: the donation costs a copy of the whole
# state per step, for a peak memory lower by less than one state (EmoGen at full width, batch 2:
# 5.0 against 5.5 GiB), which a CPU host can spare (docs/design.md "State donation on the CPU").
DONATE_STATE_ON_CPU = 0

Batch = Mapping[str, Any]
Setup = dict[str, Any]
Step = Callable[[TrainState, Batch], Any]


@runtime_checkable
class Stage(Protocol):
  """What a stage module provides. Optional hooks are listed in ``OPTIONAL_HOOKS``."""

  NAME: str          # config.stage value, e.g. "syncnet"
  TASK: str          # input-pipeline task whose batches the steps take
  KINDS: tuple       # the networks the stage trains (keys of TrainState.params)

  def validate_config(self, config) -> None:
    """Raises a one-line UserError for a stage-specific config value a user can get wrong."""

  def prepare(self, config, *, log: Callable[[str], None]) -> Setup:
    """Loads what the stage needs besides its own networks (frozen experts, initial weights)."""

  def init_state(self, config, rng: jax.Array, setup: Setup) -> TrainState:
    """A step-0 host TrainState."""

  def make_train_step(self, config, setup: Setup, **options) -> Step:
    """(state, batch) -> (state, metrics) for pmap over AXIS; ``options``: what the optional
    ``train_step_options`` hook returns (none without it)."""

  def make_eval_step(self, config, setup: Setup) -> Step:
    """(state, batch) -> metrics averaged over the batch's real examples (``mask``), with
    ``examples``, for pmap over AXIS."""

  def fake_batch(self, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    """A random batch of TASK (synthetic runs, tests, benchmarks)."""

  def checkpoint_meta(self, config, setup: Setup) -> dict[str, Any]:
    """JSON meta stored with every checkpoint (widths, layout, frozen-network fingerprints)."""


# Hooks a stage may define; the loop calls them when present.
#   after_validation(config, state, val_metrics, log) -> state   (replicated state)
#   make_sampler(config, setup) -> (generate(state, batch) -> array, image(batch, generated) -> uint8)
#   train_step_options(config, state) -> dict   (replicated state; host-side) the static keyword
#       arguments of make_train_step that suit this state; the loop asks at the start and after
#       every validation, and compiles a step per distinct answer
OPTIONAL_HOOKS = ("after_validation", "make_sampler", "train_step_options")


def pmap_train_step(step: Step):
  """``step`` under ``jax.pmap`` over AXIS, as the loop and the benchmarks run it: the state
  argument donated (the new state reuses its buffers) on accelerators, and on the CPU only with
  DONATE_STATE_ON_CPU, where it is slower for a little less memory."""
  donate = jax.default_backend() != "cpu" or bool(DONATE_STATE_ON_CPU)
  return jax.pmap(step, axis_name=AXIS, donate_argnums=(0,) if donate else ())


def compute_dtype(config):
  """The activations' dtype; parameters and optimizer states stay float32."""
  return jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32


def apply_gradients(tx: optax.GradientTransformation, grads, params, opt_state):
  """Cross-device mean of ``grads``, then one optimizer update: (params, opt_state, mean grads)."""
  # On one device the mean is the gradient itself, but XLA still runs the all-reduce, which
  # copies every gradient (66-210 MB at full width): the full-width emotion-disc step took 1.11x
  # as long with it. The axis size is static, so this is decided when the step is traced.
  if jax.lax.psum(1, AXIS) > 1:
    grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, grads


def nonfinite_hook(config) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """(loss, step) -> loss, made NaN at config.inject_nonfinite_at_step (tests of the NaN stop)."""
  at = int(config.get("inject_nonfinite_at_step", -1))
  if at < 0:
    return lambda loss, step: loss
  return lambda loss, step: loss + jnp.where(step == at, jnp.nan, 0.0)

