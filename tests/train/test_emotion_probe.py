"""EmoGen validation's emotion figures (stages.emogen.emotion_probe, in the real eval step):
known answers for a generator that ignores the label and one that does not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emogen_jax.models import EmotionDiscriminator
from emogen_jax.train import recipe
from emogen_jax.train.stages import emogen as stage
from emogen_jax.train.state import init_variables, replicate

WIDTH = 0.0625


def test_probe_of_identical_clips_and_a_fixed_classifier():
  rng = np.random.default_rng(0)
  clip = rng.uniform(0, 1, (3, 5, 96, 96, 3)).astype(np.float32)
  same = jnp.broadcast_to(clip, (6,) + clip.shape)
  answers = np.array([2, 5, 2])  # the classifier's label for each of the 3 windows
  classify = lambda clips: jax.nn.one_hot(jnp.asarray(answers), 6) * 10.0
  out = jax.tree_util.tree_map(np.asarray, stage.emotion_probe(same, classify))
  np.testing.assert_array_equal(out["emo_sensitivity"], 0.0)
  for e, name in enumerate(("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")):
    np.testing.assert_array_equal(out[f"emo_acc_{name}"], (answers == e).astype(np.float32))
  np.testing.assert_allclose(out["emo_acc"], 1 / 6)
  # two labels that differ by a constant 0.1 in one of the 15 pairs' ends: (5 pairs) * 0.1 / 15
  moved = np.array(same).copy()
  moved[5] = np.clip(moved[5] + 0.1, 0, 2)
  out = stage.emotion_probe(jnp.asarray(moved))
  np.testing.assert_allclose(np.asarray(out["emo_sensitivity"]), 5 * 0.1 / 15, rtol=1e-5)
  assert set(out) == {"emo_sensitivity"}


@pytest.fixture(scope="module")
def setup_and_state():
  config = recipe.load_config("emogen", synthetic_data=True, width=WIDTH, batch_size=4)
  setup = stage.prepare(config, log=lambda m: None)
  disc = EmotionDiscriminator(width=WIDTH)
  setup["emotion_classifier"] = init_variables(disc, jax.random.PRNGKey(3), jnp.zeros((1, 5, 96, 96, 3)))
  setup["classifier_width"], setup["classifier_original_layout"] = WIDTH, False
  state = stage.init_state(config, jax.random.PRNGKey(0), setup)
  batch = stage.fake_batch(np.random.default_rng(1), 4)
  batch["mask"] = np.ones((4,), np.float32)
  return config, setup, state, disc, batch


def _run_eval(config, setup, state, batch):
  p_eval = jax.pmap(stage.make_eval_step(config, setup), axis_name="batch")
  out = p_eval(replicate(state), {k: v[None] for k, v in batch.items()})
  return {k: float(np.asarray(v)[0]) for k, v in jax.device_get(out).items()}


def test_a_generator_that_ignores_the_label(setup_and_state):
  config, setup, state, disc, batch = setup_and_state
  # No path from the label to the pixels: the emotion encoder's first layer is all zeros.
  params = jax.tree_util.tree_map(lambda x: x, state.params)
  enc = dict(params["generator"]["emotion_encoder_0"])
  enc["kernel"] = jnp.zeros_like(enc["kernel"])
  params["generator"] = {**params["generator"], "emotion_encoder_0": enc}
  deaf = state.replace(params=params)
  m = _run_eval(config, setup, deaf, batch)
  assert m["emo_sensitivity"] == 0.0
  # EmoAcc per target = how often the classifier names that emotion for the (label-free) output
  g = stage.make_models(config, setup)[0].apply(deaf.variables("generator"), batch["mel"],
                                                batch["frames"], batch["emotion"], train=False)
  pred = np.asarray(jnp.argmax(disc.apply(setup["emotion_classifier"], g), -1))
  for e, name in enumerate(("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")):
    assert m[f"emo_acc_{name}"] == pytest.approx(float(np.mean(pred == e)))
  assert m["emo_acc"] == pytest.approx(1 / 6)
  assert m["examples"] == 4


def test_a_generator_that_uses_the_label(setup_and_state):
  config, setup, state, disc, batch = setup_and_state
  m = _run_eval(config, setup, state, batch)
  gen = stage.make_models(config, setup)[0]
  per_label = [np.asarray(gen.apply(state.variables("generator"), batch["mel"], batch["frames"],
                                    np.full((4,), e, np.int32), train=False)) for e in range(6)]
  pairs = [np.mean(np.abs(per_label[a] - per_label[b])) for a in range(6) for b in range(a + 1, 6)]
  assert np.mean(pairs) > 0
  assert m["emo_sensitivity"] == pytest.approx(float(np.mean(pairs)), rel=1e-3)
  # the loss terms are those of the window's own label (the same as a plain forward)
  g = gen.apply(state.variables("generator"), batch["mel"], batch["frames"], batch["emotion"], train=False)
  assert m["l1"] == pytest.approx(float(jnp.mean(jnp.abs(g - batch["target"]))), rel=1e-4)
