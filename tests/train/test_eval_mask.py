"""Evaluation steps weight examples by the input pipeline's ``mask``: padding (mask 0) is left out."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from emogen_jax.train import losses, state as train_state
from emogen_jax.train import stages
from tests._train_fixtures import load_config



def _eval(mod, config, setup, state, batch):
  p = jax.pmap(mod.make_eval_step(config, setup), axis_name="batch", devices=jax.devices()[:1])
  m = p(train_state.replicate(state, devices=jax.devices()[:1]),
        {k: v[None] for k, v in batch.items()})
  return {k: float(v[0]) for k, v in jax.device_get(m).items()}


@pytest.mark.parametrize("name", stages.STAGE_NAMES)
def test_masked_eval_equals_eval_of_the_real_examples(name):
  mod = stages.get(name)
  config = load_config(name, width=0.0625, batch_size=8)
  setup = mod.prepare(config, log=lambda *a: None)
  state = mod.init_state(config, jax.random.PRNGKey(0), setup)
  real = mod.fake_batch(np.random.default_rng(1), 5)
  pad = mod.fake_batch(np.random.default_rng(2), 3)  # other content: it must not count
  batch = {k: np.concatenate([real[k], pad[k]]) for k in real}
  batch["mask"] = np.array([1] * 5 + [0] * 3, np.float32)
  masked = _eval(mod, config, setup, state, batch)
  alone = _eval(mod, config, setup, state, real)  # no mask key: every example counts
  unmasked = _eval(mod, config, setup, state, {**batch, "mask": np.ones(8, np.float32)})  # same compile
  assert masked.pop("examples") == 5 and alone.pop("examples") == 5 and unmasked.pop("examples") == 8
  assert set(masked) == set(alone) and "loss" in masked
  for k in masked:
    np.testing.assert_allclose(masked[k], alone[k], rtol=2e-5, atol=1e-6, err_msg=k)
  assert any(abs(unmasked[k] - alone[k]) > 1e-4 for k in alone)  # the padding would have mattered


def test_per_example_metrics_average_to_the_batch_metric():
  rng = np.random.default_rng(0)
  a, v = np.abs(rng.normal(size=(2, 6, 16))).astype(np.float32)
  y = (rng.uniform(size=6) < 0.5).astype(np.float32)
  per = losses.per_example(losses.sync_loss, a, v, y)
  assert per.shape == (6,)
  np.testing.assert_allclose(np.mean(per), losses.sync_loss(a, v, y), rtol=1e-6)
  mask = np.array([1, 1, 0, 1, 0, 0], np.float32)
  m = jax.pmap(lambda p, w: losses.masked_mean({"l": p}, w, "d"), axis_name="d")(per[None], mask[None])
  np.testing.assert_allclose(m["l"][0], losses.sync_loss(a[mask > 0], v[mask > 0], y[mask > 0]), rtol=1e-6)
  assert m["examples"][0] == 3


def test_validation_figures_do_not_depend_on_the_eval_batch(preprocessed_data):
  """config.eval_batch_size: one whole pass over the real validation shards in batches of 2 and
  of 8 (the last one padded, mask 0) gives the same per-example means."""
  from emogen_jax.train import loop
  mod = stages.get("emotion_disc")
  config = load_config("emotion_disc", width=0.0625, batch_size=2, eval_batches=0,
                       data_dir=preprocessed_data["data_dir"])
  setup = mod.prepare(config, log=lambda *a: None)
  state = train_state.replicate(mod.init_state(config, jax.random.PRNGKey(0), setup),
                                devices=jax.devices()[:1])
  p_eval = jax.pmap(mod.make_eval_step(config, setup), axis_name="batch", devices=jax.devices()[:1])
  small, n_small, ex_small = loop.evaluate(p_eval, state, config, mod, per_device=2, limit=0)
  large, n_large, ex_large = loop.evaluate(p_eval, state, config, mod, per_device=8, limit=0)
  assert ex_small == ex_large >= 4 and n_small > n_large
  assert ex_large % 8 != 0  # the last large batch was padded: the mask had to work
  for k in small:
    np.testing.assert_allclose(large[k], small[k], rtol=2e-5, atol=1e-6, err_msg=k)
