"""The stage interface: every registered stage provides it, and the loop names no stage."""

from __future__ import annotations

import inspect
import re

import pytest

from emogen_jax.train import loop, stages
from emogen_jax.train.stages import base


@pytest.mark.parametrize("name", stages.STAGE_NAMES)
def test_every_stage_provides_the_interface(name):
  stage = stages.get(name)
  assert isinstance(stage, base.Stage)
  assert stage.NAME == name
  members = [m for m in dir(base.Stage) if not m.startswith("_")] + list(base.Stage.__annotations__)
  for member in members:
    assert hasattr(stage, member), f"stage {name} lacks {member}"
  for hook in base.OPTIONAL_HOOKS:
    assert not hasattr(stage, hook) or callable(getattr(stage, hook))


def test_unknown_stage_is_refused():
  with pytest.raises(KeyError, match="unknown training stage 'gan'"):
    stages.get("gan")


def test_the_loop_names_no_stage():
  source = inspect.getsource(loop)
  for name in stages.STAGE_NAMES:
    assert not re.search(rf"\b{name}\b", source), f"the training loop mentions {name!r}"


def test_gradient_mean_over_devices_and_none_on_one():
  """apply_gradients averages the gradients over the device axis; on one device it skips the
  all-reduce (XLA would copy every gradient for a mean of one) with the same update."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  tx = optax.adam(0.1)
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  grads = [{"w": jnp.full((2, 3), 1.0), "b": jnp.asarray([1.0, -2.0, 3.0])},
           {"w": jnp.full((2, 3), 3.0), "b": jnp.asarray([-1.0, 0.0, 5.0])}]

  def update(g):
    return base.apply_gradients(tx, g, params, tx.init(params))

  # Two devices of the axis (vmapped): both get the mean gradient and the same update.
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)
  new_params, _, mean = jax.vmap(update, axis_name=base.AXIS)(stacked)
  np.testing.assert_array_equal(mean["w"][0], np.full((2, 3), 2.0))
  np.testing.assert_array_equal(mean["b"][1], [0.0, -1.0, 4.0])
  ref_params = optax.apply_updates(params, tx.update(jax.tree.map(lambda g: g[0], mean),
                                                     tx.init(params), params)[0])
  np.testing.assert_array_equal(new_params["w"][1], ref_params["w"])

  # One device: no all-reduce in the step, the update of the device's own gradient.
  one = jax.tree.map(lambda g: g[None], grads[0])
  lowered = jax.pmap(update, axis_name=base.AXIS, devices=jax.local_devices()[:1]).lower(one)
  assert "all_reduce" not in lowered.as_text()
  new_params, _, g = jax.pmap(update, axis_name=base.AXIS, devices=jax.local_devices()[:1])(one)
  ref_params = optax.apply_updates(params, tx.update(grads[0], tx.init(params), params)[0])
  np.testing.assert_array_equal(new_params["b"][0], ref_params["b"])
  np.testing.assert_array_equal(g["b"][0], grads[0]["b"])


def test_cpu_steps_do_not_donate_their_state(monkeypatch):
  """On the CPU the pmapped step keeps the old state (it is not donated) and computes the same
  new state as a donated one. The reason, checked on the compiled step: donated, XLA's pmap
  copies the donated parameter and Adam moments before the update reads them; if a jaxlib stops
  doing that, this test fails and the rule wants measuring again (docs/design.md "State
  donation on the CPU")."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  assert jax.default_backend() == "cpu"
  tx = optax.adam(0.1)
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(64, 32)), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(1, 8, 64)), jnp.float32)

  def step(state, x):
    p, opt = state
    grads = jax.grad(lambda p: jnp.sum(jnp.tanh(x @ p["w"]) ** 2))(p)
    new_p, new_opt, _ = base.apply_gradients(tx, grads, p, opt)
    return new_p, new_opt

  def fresh():
    return jax.tree.map(lambda a: jnp.asarray(a)[None], (params, tx.init(params)))

  def entry_copies(hlo: str) -> int:  # copies of the step's own arguments
    return len(re.findall(r"= f32\[1,64,32\]\S* copy\(%\w*arg", hlo))

  kept = fresh()
  p_step = base.pmap_train_step(step)
  new_kept = p_step(kept, x)
  assert not kept[0]["w"].is_deleted()
  assert entry_copies(p_step.lower(kept, x).compile().as_text()) == 0

  monkeypatch.setattr(base, "DONATE_STATE_ON_CPU", 1)
  donated = fresh()
  d_step = base.pmap_train_step(step)
  assert entry_copies(d_step.lower(donated, x).compile().as_text()) >= 2  # mu and nu
  new_donated = d_step(donated, x)
  assert donated[0]["w"].is_deleted()
  for a, b in zip(jax.tree.leaves(new_kept), jax.tree.leaves(new_donated)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(np.max(np.abs(np.asarray(new_kept[0]["w"]) - np.asarray(params["w"])[None]))) > 0.05
