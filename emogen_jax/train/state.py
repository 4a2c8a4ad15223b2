"""The training state shared by the three stages, and the helpers that move it between host and devices.

One ``TrainState`` holds every network of a stage by kind (``syncnet``, ``emotion_disc``,
``generator``): trainable ``params``, BatchNorm ``batch_stats``, optax ``opt_state``; plus the step,
an RNG key, stage ``extras`` (the EmoGen sync-loss weight, which switches on once and stays on) and
``frozen`` networks (the EmoGen expert and VGG-19: inputs to the loss, never updated, not saved).
Optimizers are not part of the state: each stage builds them from the config (``make_optimizers``),
so the state is a plain pytree of arrays that orbax saves and restores.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array                        # int32 scalar: number of finished training steps
  rng: jax.Array                         # uint32 (2,) raw PRNG key; folded with the step when used
  params: dict[str, Any]                 # {kind: params}
  batch_stats: dict[str, Any]            # {kind: batch_stats} for the networks that have BatchNorm
  opt_state: dict[str, Any]              # {kind: optax state}
  extras: dict[str, jax.Array]           # stage scalars, e.g. {"w_sync": f32}
  frozen: dict[str, Any]                 # {kind: variables} used by the loss, never trained or saved

  def variables(self, kind: str) -> dict[str, Any]:
    """Flax variables {'params', ['batch_stats']} of one trained network."""
    v = {"params": self.params[kind]}
    if kind in self.batch_stats:
      v["batch_stats"] = self.batch_stats[kind]
    return v

  def trained_models(self) -> dict[str, dict[str, Any]]:
    return {kind: self.variables(kind) for kind in self.params}


def init_variables(model, rng, *args, **kwargs):
  """``model.init(rng, *args, **kwargs)``, compiled once and run once.

  Eager init of a deep network runs hundreds of small ops one by one and is slower than
  compiling it. The compiled init is mostly threefry draws (integer bit operations), which
  XLA's CPU backend optimises for longer than they run: at optimisation level 0 it compiles in a
  third of the time (generator: 15 s -> 6 s) and the draws stay exact integer arithmetic (the
  float transforms after them may differ in the last bit from a default-level build).
  """
  init = jax.jit(lambda r: model.init(r, *args, **kwargs)).lower(rng)
  options = ({"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None)
  return init.compile(compiler_options=options)(rng)


def adam(learning_rate, b1: float, b2: float) -> optax.GradientTransformation:
  """torch.optim.Adam (eps 1e-8 added to sqrt(v_hat), no weight decay) as optax.adam."""
  return optax.adam(learning_rate, b1=b1, b2=b2, eps=1e-8)


def learning_rate(config, base: float):
  """``base`` (config.lr_schedule "constant", the original's) or a cosine decay from ``base`` to
  ``base * config.lr_final_fraction`` over config.lr_decay_steps (0: num_train_steps), which
  ends a short run on a settled network instead of one still jumping at the full rate."""
  if config.lr_schedule == "constant":
    return base
  steps = int(config.lr_decay_steps) or int(config.num_train_steps)
  return optax.cosine_decay_schedule(base, max(1, steps), alpha=float(config.lr_final_fraction))


def create_state(*, rng, models: Mapping[str, Mapping[str, Any]], optimizers: Mapping[str, Any],
                 extras: Mapping[str, Any] | None = None,
                 frozen: Mapping[str, Any] | None = None) -> TrainState:
  """A step-0 state from initial variables {kind: {'params', ['batch_stats']}}."""
  params = {k: v["params"] for k, v in models.items()}
  batch_stats = {k: v["batch_stats"] for k, v in models.items() if v.get("batch_stats")}
  opt_state = {k: optimizers[k].init(params[k]) for k in params}
  return TrainState(step=jnp.zeros((), jnp.int32), rng=jnp.asarray(rng, jnp.uint32),
                    params=params, batch_stats=batch_stats, opt_state=opt_state,
                    extras={k: jnp.asarray(v, jnp.float32) for k, v in (extras or {}).items()},
                    frozen=dict(frozen or {}))


def replicate(tree, axis_name: str = "batch", devices=None):
  """Host pytree -> one copy per local device (leading axis = jax.local_device_count(), or
  len(devices)).

  The copies go through an identity ``pmap`` over ``axis_name`` so that they carry exactly the
  sharding that the pmapped steps return; otherwise the second step call would see differently
  sharded inputs and compile the whole step a second time.
  """
  n = len(devices) if devices is not None else jax.local_device_count()
  stacked = jax.tree_util.tree_map(
      lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), jax.device_get(tree))
  return jax.pmap(lambda x: x, axis_name=axis_name, devices=devices)(stacked)


def unreplicate_to_host(tree):
  """Replicated device pytree -> numpy pytree of device 0's copy (a fresh host copy)."""
  return jax.tree_util.tree_map(lambda x: np.array(x[0]), jax.device_get(tree))
