"""Emotion names and mixes: every spelling a user may type, and a mix reaching the generator as
its weighted emotion vector."""

from __future__ import annotations

import numpy as np
import pytest

from emogen_jax.data import emotions
from emogen_jax.errors import UserError
from tests import _infer_fixtures as F
from tests._model_fixtures import random_variables


@pytest.mark.parametrize("names, label", [
    (("ANG", "ang", "anger", "Angry"), 0), (("DIS", "disgust", "disgusted"), 1),
    (("FEA", "fear", "fearful"), 2), (("HAP", "happiness", "happy"), 3),
    (("NEU", "neutral", "neutrality"), 4), (("SAD", "sadness", "sad"), 5)])
def test_codes_nouns_and_adjectives(names, label):
  for name in names:
    assert emotions.emotion_id(name) == label
    np.testing.assert_array_equal(emotions.emotion_weights(f" {name} "), np.eye(6)[label])


def test_mix_weights_and_description():
  w = emotions.emotion_weights("HAP:0.6,neutral:0.4")
  np.testing.assert_allclose(w, [0, 0, 0, 0.6, 0.4, 0], atol=1e-7)
  assert w.dtype == np.float32
  np.testing.assert_allclose(emotions.emotion_weights({"sad": 0.25, "ANG": 0.75}),
                             [0.75, 0, 0, 0, 0, 0.25], atol=1e-7)
  assert emotions.describe(w) == "HAP 60% NEU 40%"
  assert emotions.describe(emotions.emotion_weights("angry")) == "ANG anger"
  assert len(emotions.parse_emotions("all")) == 6
  for word in ("angry", "disgusted", "fearful", "happy", "neutral", "sad", "HAP:0.6,NEU:0.4"):
    assert word in emotions.HELP


@pytest.mark.parametrize("spec, message", [
    ("JOY", "unknown emotion 'JOY'"), ("HAP:0.6,NEU:0.3", "sum to 0.9"),
    ("HAP:x,NEU:1", "'x' of HAP is not a number"), ("HAP:0.5,happy:0.5", "HAP is given twice"),
    ("HAP,NEU", "'HAP' has no weight"), ("HAP:1.5,NEU:-0.5", "between 0 and 1"),
    ("HAP:0.5,JOY:0.5", "unknown emotion 'JOY'")])
def test_bad_specs_are_one_line(spec, message):
  with pytest.raises(UserError, match=message) as e:
    emotions.parse_emotions(spec)
  assert "\n" not in str(e.value)


def test_mix_feeds_the_weighted_vector_to_the_generator():
  """The renderer takes (6,) weight vectors: a mix gives frames unlike either pure emotion (the
  vector is not rounded to a label), HAP:1 the same as HAP, and label ids their one-hots."""
  import jax.numpy as jnp
  from emogen_jax.inference.renderer import Renderer, parse_emotions
  from emogen_jax.models import Generator
  model = Generator(width=F.TINY_WIDTH)
  variables = random_variables(model, jnp.zeros((1, 80, 16, 1)), jnp.zeros((1, 96, 96, 6)),
                               jnp.zeros((1,), jnp.int32), train=False, seed=3, fresh=True)
  # At random init the emotion barely moves the output; scaled up, every label changes the face.
  for name in ("emotion_encoder_0", "emotion_encoder_2"):
    variables["params"][name]["kernel"] = variables["params"][name]["kernel"] * 30.0
  renderer = Renderer(model, variables, batch_size=4)
  mel = np.random.default_rng(0).uniform(-4, 4, (1, 80, 16)).astype(np.float32)
  crop = F.face_crops(1)
  specs = ["HAP:0.6,NEU:0.4", "HAP", "NEU", "happy:1"]
  vectors = np.stack([parse_emotions(s)[0] for s in specs])
  out = renderer(np.repeat(mel, 4, 0), np.repeat(crop, 4, 0), vectors).astype(np.float64)
  mix, hap, neu, hap1 = out
  assert np.abs(hap - neu).mean() > 1.0  # the emotion input matters at this scale
  assert np.abs(mix - hap).mean() > 0.2 and np.abs(mix - neu).mean() > 0.2
  np.testing.assert_array_equal(hap1, hap)
  ids = renderer(np.repeat(mel, 2, 0), np.repeat(crop, 2, 0), np.array([3, 4]))
  np.testing.assert_array_equal(ids, out[1:3].astype(np.uint8))
  with pytest.raises(TypeError, match="must be floats"):  # int vectors would turn a mix into zeros
    renderer(mel, crop, vectors[:1].astype(np.int32))
  assert renderer.trace_count == 1
