"""The evaluation protocol on cases whose answer is known in advance.

Test split: two actors x the six emotions of one sentence (12 clips, each tinted by its emotion).
The emotion classifier is built so that its predictions on the real clips are known: its last
layer is solved (least squares on the LSTM features of the real windows) to give each clip's own
emotion, except one clip it calls by another emotion, so its accuracy on the real clips is 11/12.
Two stand-in generators (``flax.linen.intercept_methods`` on ``Generator.__call__``):
  * an ORACLE that, asked for emotion e, returns the matching frame of the same actor's clip with
    emotion e: it reproduces the target exactly, so PSNR is inf, SSIM 1, and EmoAcc must equal
    the classifier's own accuracy on the real clips;
  * an IDENTITY that returns the reference frame whatever the label: PSNR inf too, but EmoAcc for
    target e is the rate at which the classifier calls the reference clips e, 1/6 overall.
"""

from __future__ import annotations

from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emogen_jax.data import audio as audio_lib
from emogen_jax.data.emotions import EMOTIONS
from emogen_jax.evaluation import evaluate as ev
from emogen_jax.models import EmotionDiscriminator, Generator
from emogen_jax.models import checkpoints
from tests import _infer_fixtures as F

N_FRAMES = 10
ACTORS = ("1001", "1002")
WIDTH = 0.125
MISCALLED = ("1002_DFA_SAD_XX", "ANG")   # the one real clip the classifier gets wrong


def _clip_id(actor, e):
  return f"{actor}_DFA_{EMOTIONS[e]}_XX"


def _windows(frames):
  """Non-overlapping 5-frame windows in [0, 1] (what the classifier sees of a clip)."""
  k = len(frames) // 5
  return frames[:5 * k].reshape((k, 5) + frames.shape[1:]).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  d = tmp_path_factory.mktemp("protocol")
  mel = audio_lib.melspectrogram(F.synth_speech(0.6))   # 49 steps: frames 0..10 have a window
  base = F.face_crops(N_FRAMES).astype(np.int16)
  clips = []
  for a, actor in enumerate(ACTORS):
    for e in range(6):
      tint = np.array([40 * (e % 3) - 40, 30 * (e // 3) - 15, 25 * a - 10], np.int16)
      crops = np.clip(base[:, :, ::(1 if a == 0 else -1)] + tint, 0, 255).astype(np.uint8)
      clips.append({"clip_id": _clip_id(actor, e), "crops": crops, "mel": mel,
                    "emotion": EMOTIONS[e]})
  data = F.make_dataset(str(d / "data"), clips, {"train": [], "validation": [],
                                                 "test": [c["clip_id"] for c in clips]})
  # The clips as the evaluation reads them (after the dataset's JPEG round trip).
  real = {c["clip_id"]: c for c in ev.iter_clips(data, "test")}
  assert len(real) == 12

  # The classifier: random features, a last layer solved for the intended predictions.
  model = EmotionDiscriminator(width=WIDTH)
  variables = F.random_variables(model, jnp.zeros((1, 5, 96, 96, 3)), seed=3)
  feats = []

  def grab(next_fun, args, kwargs, context):
    if context.module.name == "cls_0":
      feats.append(np.asarray(args[0]))
    return next_fun(*args, **kwargs)

  order = sorted(real)
  with nn.intercept_methods(grab):
    for cid in order:
      model.apply(variables, _windows(real[cid]["frames"][:N_FRAMES]))
  x = np.concatenate(feats).astype(np.float64)
  intended = {cid: real[cid]["emotion"] for cid in order}
  intended[MISCALLED[0]] = EMOTIONS.index(MISCALLED[1])
  y = np.concatenate([np.repeat(np.eye(6)[intended[cid]][None] * 8.0 - 4.0, len(f), 0)
                      for cid, f in zip(order, feats)])
  xb = np.concatenate([x, np.ones((len(x), 1))], 1)
  sol = np.linalg.lstsq(xb, y, rcond=None)[0]
  params = jax.tree_util.tree_map(np.asarray, variables["params"])
  params["cls_0"] = {"kernel": sol[:-1].astype(np.float32), "bias": sol[-1].astype(np.float32)}
  classifier = checkpoints.save_models(str(d / "emo"), {"emotion_disc": {"params": params}},
                                       width=WIDTH, source="test")
  return {"data": data, "real": real, "intended": intended, "classifier": classifier,
          "gen": F.make_generator_checkpoint(str(d / "gen"))}


def _lookup_table(real):
  """crop bytes -> (actor, frame index); actor, emotion -> frames."""
  where, frames = {}, {}
  for cid, c in real.items():
    actor = cid.split("_")[0]
    frames[(actor, c["emotion"])] = c["frames"]
    for i, f in enumerate(c["frames"]):
      where[f.tobytes()] = (actor, i)
  return where, frames


def _run(setup, generator, **kwargs):
  def intercept(next_fun, args, kwargs, context):
    if isinstance(context.module, Generator) and context.method_name == "__call__":
      _, face, emotion = args[:3]
      return generator(face, emotion)
    return next_fun(*args, **kwargs)

  # One clip at a time: these generators are host callbacks (jax.pure_callback), and with two
  # executions at once both callbacks were seen waiting forever for their argument buffers
  # inside XLA's CPU client (jax 0.10.2, 2 cores): a hang of the test's oracle, not of the
  # evaluation, whose generator has no callback.
  with nn.intercept_methods(intercept), mock.patch.object(ev, "EVAL_THREADS", 1):
    return ev.evaluate(setup["gen"], setup["data"], "test", emotion_classifier=setup["classifier"],
                       batch_size=8, progress=False, **kwargs)


def _identity(face, emotion):
  del emotion
  return face[..., 3:6]


def _oracle(setup):
  where, frames = _lookup_table(setup["real"])

  def host(face, emotion):
    out = np.zeros(face.shape[:-1] + (3,), np.float32)
    ref = np.round(np.asarray(face[..., 3:6]) * 255.0).astype(np.uint8)
    for k, (r, e) in enumerate(zip(ref, np.asarray(emotion))):
      if r.tobytes() in where:               # (batch padding is all zeros: left black)
        actor, i = where[r.tobytes()]
        label = int(np.argmax(e)) if np.ndim(e) else int(e)  # a (6,) weight vector or a label
        out[k] = frames[(actor, label)][i] / 255.0
    return out

  def generator(face, emotion):
    shape = jax.ShapeDtypeStruct(face.shape[:-1] + (3,), jnp.float32)
    return jax.pure_callback(host, shape, face, emotion)

  return generator


def test_oracle_generator_scores_psnr_inf_and_the_classifiers_own_accuracy(setup):
  r = _run(setup, _oracle(setup))
  own = np.mean([setup["intended"][cid] == c["emotion"] for cid, c in setup["real"].items()])
  assert own == pytest.approx(11 / 12)
  assert r["clips"] == 12 and r["frames"] == 12 * N_FRAMES
  assert r["psnr"] == float("inf") and r["ssim"] == pytest.approx(1.0)
  assert r["classifier_acc_on_real"] == pytest.approx(own)
  assert r["emo_acc"] == pytest.approx(own)
  # Per target: every target emotion is recognised in both actors' generated clips, except the
  # miscalled clip's emotion for its actor.
  expected = {e: 1.0 for e in EMOTIONS}
  expected[MISCALLED[0].split("_")[2]] = 0.5
  assert r["emo_acc_per_target"] == pytest.approx(expected)


def test_label_ignoring_generator_scores_the_classifiers_rate_for_the_reference(setup):
  r = _run(setup, _identity)
  assert r["psnr"] == float("inf") and r["ssim"] == pytest.approx(1.0)
  assert r["emo_acc"] == pytest.approx(1 / 6)
  # Target e is "recognised" exactly when the classifier calls the REFERENCE clip e.
  calls = np.array(list(setup["intended"].values()))
  rates = {EMOTIONS[e]: float(np.mean(calls == e)) for e in range(6)}
  assert rates[MISCALLED[1]] == pytest.approx(3 / 12)
  assert r["emo_acc_per_target"] == pytest.approx(rates)
  confusion = np.array(r["emo_confusion"])
  # Rows (predicted) do not depend on the target: each target column has the same counts.
  assert (confusion == confusion[:, :1]).all() or (confusion == confusion[:1, :]).all()


def test_emotion_frames_scores_the_first_frames_only(setup):
  """--emotion-frames 5: EmoAcc from each clip's first window (the oracle still scores the
  classifier's own accuracy on those windows), PSNR/SSIM over whole clips, and the eleven extra
  generations per clip cover 5 frames, not 10: every generated frame is counted."""
  generated = []

  def counting_oracle(face, emotion):
    def count(face):
      # rows of a batch that hold a reference crop (the renderer pads batches with zeros)
      generated.append(int(np.count_nonzero(np.asarray(face[..., 3:6]).reshape(len(face), -1).any(1))))
      return np.zeros((), np.int32)
    token = jax.pure_callback(count, jax.ShapeDtypeStruct((), jnp.int32), face)
    return oracle(face, emotion) + 0.0 * token.astype(jnp.float32)

  oracle = _oracle(setup)
  r = _run(setup, counting_oracle, emotion_frames=5)
  assert r["frames"] == 12 * N_FRAMES and r["psnr"] == float("inf")
  assert r["emotion_frames_per_clip"] == 5 and r["emotion_frames"] == 12 * 5
  assert r["emo_acc"] == pytest.approx(r["classifier_acc_on_real"])
  # own label over the whole clip; 5 more labels and 6 with the neutral reference over 5 frames
  # (the two NEU clips are their actors' neutral reference, so they have none)
  assert sum(generated) == 12 * N_FRAMES + 12 * 5 * 5 + 10 * 6 * 5
  with pytest.raises(ev.UserError, match="emotion_frames=4"):
    ev.evaluate(setup["gen"], setup["data"], "test", emotion_classifier=setup["classifier"],
                emotion_frames=4, progress=False)
