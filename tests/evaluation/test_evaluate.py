"""Evaluation CLI on a tiny preprocessed split (real TFDS shards, tiny random models)."""

import json
import os

import numpy as np
import pytest

from emogen_jax.data import audio as audio_lib
from emogen_jax.data import timing
from emogen_jax.evaluation import evaluate as ev
from emogen_jax.evaluation import metrics
from emogen_jax.inference import renderer as infer
from tests import _infer_fixtures as F

N_FRAMES = 20
SECONDS = 0.8  # 65 mel steps: frames 0..15 have a full mel window


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  d = tmp_path_factory.mktemp("evaluate")
  mel = audio_lib.melspectrogram(F.synth_speech(SECONDS))
  valid = np.ones(N_FRAMES, bool)
  valid[2] = False  # one frame without a detected face: excluded from PSNR/SSIM, counted
  clips = [
      {"clip_id": "1001_DFA_ANG_XX", "crops": F.face_crops(N_FRAMES), "mel": mel, "emotion": "ANG"},
      {"clip_id": "1002_DFA_HAP_XX", "crops": F.face_crops(N_FRAMES)[::-1], "mel": mel,
       "emotion": "HAP", "valid": valid},
      {"clip_id": "1003_IEO_SAD_XX", "crops": F.face_crops(N_FRAMES), "mel": mel, "emotion": "SAD"},
  ]
  F.make_dataset(str(d / "data"), clips, {"train": ["1003_IEO_SAD_XX"], "validation": [],
                                          "test": ["1001_DFA_ANG_XX", "1002_DFA_HAP_XX"]})
  return {"dir": d, "data": str(d / "data"), "gen": F.make_generator_checkpoint(str(d / "gen")),
          "sync": F.make_model_checkpoint(str(d / "sync"), "syncnet"),
          "emo": F.make_model_checkpoint(str(d / "emo"), "emotion_disc")}


def test_cli_writes_all_metrics(setup, capsys):
  out = str(setup["dir"] / "out")
  rc = ev.main(["--checkpoint", setup["gen"], "--data-dir", setup["data"], "--syncnet", setup["sync"],
                "--emotion-classifier", setup["emo"], "--batch-size", "8", "--out", out])
  assert rc == 0, capsys.readouterr().err
  with open(os.path.join(out, "metrics.json")) as f:
    r = json.load(f)
  assert r["clips"] == 2 and r["frames"] == 2 * 16
  assert r["frames_without_face_excluded_from_psnr_ssim"] == 1
  assert r["generator_width"] == F.TINY_WIDTH
  assert 0 < r["psnr"] < 60
  assert -1 < r["ssim"] < 1
  for key in ("lse_generated", "lse_ground_truth"):
    assert r[key]["lse_d"] >= 0 and r[key]["lse_c"] >= 0 and 0 <= r[key]["offset_zero_fraction"] <= 1
  assert r["lse_d"] == r["lse_generated"]["lse_d"]
  assert np.sum(r["emo_confusion"]) == 2 * 6  # every clip generated with each of the six emotions
  assert r["emo_acc"] * 12 == pytest.approx(round(r["emo_acc"] * 12))
  assert r["fid"] == ev.FID_NOT_COMPUTED
  assert r["compilations"] == {"generator": 1, "syncnet": 1, "emotion_classifier": 1}
  md = open(os.path.join(out, "metrics.md")).read()
  for name in ("PSNR", "SSIM", "LSE-D", "LSE-C", "EmoAcc", "FID"):
    assert f"| {name}" in md
  assert "not computed (no Inception weights; --inception)" in md
  assert f"| EmoAcc | {100 * r['emo_acc']:.1f} % |" in md


def test_psnr_of_the_first_clip_matches_an_independent_computation(setup):
  r = ev.evaluate(setup["gen"], setup["data"], "test", max_clips=1, batch_size=8, progress=False)
  clip = next(ev.iter_clips(setup["data"], "test"))
  model, variables, _ = infer.load_generator(setup["gen"])
  gen = infer.Renderer(model, variables, 8)(timing.mel_windows(clip["mel"], 16), clip["frames"][:16],
                                             np.full(16, clip["emotion"]))
  v = clip["valid"][:16]
  assert r["clips"] == 1 and r["frames_without_face_excluded_from_psnr_ssim"] == int((~v).sum())
  assert r["psnr"] == pytest.approx(metrics.psnr(gen[v], clip["frames"][:16][v]), rel=1e-9)
  assert r["ssim"] == pytest.approx(metrics.ssim(gen[v], clip["frames"][:16][v]), rel=1e-9)
  assert r["lse_d"].startswith("not computed") and r["emo_acc"].startswith("not computed")


def test_windows_and_mel_alignment():
  mel = np.arange(80 * 65, dtype=np.float32).reshape(80, 65)
  assert timing.num_mel_frames(20, 65) == 16  # int(80*15/25)+16 = 64 <= 65; frame 16 -> 67 > 65
  w = timing.mel_windows(mel, 16)
  assert w.shape == (16, 80, 16) and w[5, 0, 0] == mel[0, 16] and w[15, 3, 15] == mel[3, 48 + 15]
  frames = np.stack([np.full((96, 96, 3), i, np.uint8) for i in range(8)])
  frames[:, :48] = 255  # upper halves must not be used
  faces = ev.lower_half_windows(frames)
  assert faces.shape == (4, 48, 96, 15)
  # window f, channel 3*t+c = frame f+t
  np.testing.assert_allclose(faces[2, 0, 0, ::3], np.arange(2, 7) / 255.0)


@pytest.mark.slow
def test_fid_with_inception_weights(setup, tmp_path):
  keras = pytest.importorskip("keras")
  weights = str(tmp_path / "inception_notop.weights.h5")
  # Random weights with the real architecture: checks loading, preprocessing and the FID plumbing.
  keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg",
                                 input_shape=(299, 299, 3)).save_weights(weights)
  r = ev.evaluate(setup["gen"], setup["data"], "test", inception=weights, max_clips=1,
                  batch_size=8, progress=False)
  clip = next(ev.iter_clips(setup["data"], "test"))
  assert isinstance(r["fid"], float) and r["fid"] > 0
  assert r["fid_frames"] == int(clip["valid"][:16].sum())


def test_cli_errors(setup, capsys):
  base = ["--checkpoint", setup["gen"], "--out", str(setup["dir"] / "err")]
  assert ev.main(base + ["--data-dir", str(setup["dir"] / "nope")]) == 2
  assert "does not exist" in capsys.readouterr().err
  assert ev.main(base + ["--data-dir", setup["data"], "--split", "validation"]) == 2
  assert "split 'validation'" in capsys.readouterr().err
  assert ev.main(base + ["--data-dir", setup["data"], "--syncnet", str(setup["dir"] / "nope")]) == 2
  assert "checkpoint" in capsys.readouterr().err
  assert ev.main(base + ["--data-dir", setup["data"], "--inception", str(setup["dir"] / "x.h5")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "Inception weights" in err[0]


def test_independent_classifier_and_neutral_reference(tmp_path):
  """The second classifier scores the same generated clips; the neutral-reference EmoAcc renders
  the non-neutral clip's audio over the actor's NEUTRAL clip's frames with each label."""
  mel = audio_lib.melspectrogram(F.synth_speech(SECONDS))
  clips = [{"clip_id": "1001_DFA_ANG_XX", "crops": F.face_crops(N_FRAMES), "mel": mel, "emotion": "ANG"},
           {"clip_id": "1001_IEO_NEU_XX", "crops": F.face_crops(N_FRAMES)[::-1], "mel": mel,
            "emotion": "NEU"}]
  data = F.make_dataset(str(tmp_path / "data"), clips, {"train": [], "validation": [],
                                                        "test": [c["clip_id"] for c in clips]})
  gen = F.make_generator_checkpoint(str(tmp_path / "gen"))
  emo = F.make_model_checkpoint(str(tmp_path / "emo"), "emotion_disc")
  other = F.make_model_checkpoint(str(tmp_path / "emo2"), "emotion_disc", seed=7)
  r = ev.evaluate(gen, data, "test", emotion_classifier=emo, independent_classifier=other,
                  batch_size=8, progress=False)
  assert r["neutral_reference_clips"] == 1 and r["neutral_reference_missing"] == ["1001_IEO_NEU_XX"]
  assert np.sum(r["emo_confusion_independent"]) == 2 * 6
  assert r["compilations"] == {"generator": 1, "emotion_classifier": 1,
                               "emotion_classifier_independent": 1}
  # the independent figures, recomputed: the same renders judged by the second classifier
  model, variables, _ = infer.load_generator(gen)
  render = infer.Renderer(model, variables, 8)
  judge = ev.load_emotion_classifier(other)
  by_id = {c["clip_id"]: c for c in ev.iter_clips(data, "test")}
  ang, neu = by_id["1001_DFA_ANG_XX"], by_id["1001_IEO_NEU_XX"]
  mels = timing.mel_windows(ang["mel"], 16)
  neutral_pred = [ev.classify_clip(judge, render(mels, neu["frames"][:16], np.full(16, e)))
                  for e in range(6)]
  hits = [p == e for e, p in enumerate(neutral_pred)]
  assert r["emo_acc_independent_neutral_reference"] == pytest.approx(np.mean(hits))
  assert r["emo_acc_per_target_independent_neutral_reference"]["HAP"] == float(hits[3])
  real = [ev.classify_clip(judge, c["frames"][:16]) == c["emotion"] for c in (ang, neu)]
  assert r["classifier_acc_on_real_independent"] == pytest.approx(np.mean(real))
  assert "independent" in ev.to_markdown(r) and "NEUTRAL" in ev.to_markdown(r)
  # the independent classifier alone (no --emotion-classifier): its figures, and a report
  alone = ev.evaluate(gen, data, "test", independent_classifier=other, batch_size=8, progress=False)
  assert alone["emo_acc_independent"] == pytest.approx(r["emo_acc_independent"])
  assert alone["emo_acc"].startswith("not computed") and "independent" in ev.to_markdown(alone)


def test_batched_labels_and_classification_match_one_call_each(setup):
  """render_labels (all labels in one renderer call) and classify_clips (all clips' windows in one
  classifier call) give what one call per label / per clip gives, for clips of unequal length."""
  model, variables, _ = infer.load_generator(setup["gen"])
  render = infer.Renderer(model, variables, 8)
  clip = next(ev.iter_clips(setup["data"], "test"))
  mels = timing.mel_windows(clip["mel"], 13)
  frames = clip["frames"][:13]
  batched = ev.render_labels(render, mels, frames, [5, 0, 3])
  for label, out in zip([5, 0, 3], batched):
    one = render(mels, frames, np.full(13, label))
    assert np.abs(out.astype(int) - one.astype(int)).max() <= 1
  judge = ev.load_emotion_classifier(setup["emo"])
  clips = [clip["frames"][:5], clip["frames"][:16], clip["frames"][3:15]] + batched
  assert ev.classify_clips(judge, clips) == [ev.classify_clip(judge, c) for c in clips]


def test_clips_scored_in_threads_give_the_figures_of_one_thread(setup, monkeypatch):
  kwargs = dict(emotion_classifier=setup["emo"], batch_size=8, progress=False, emotion_frames=10)
  two = ev.evaluate(setup["gen"], setup["data"], "test", **kwargs)
  monkeypatch.setattr(ev, "EVAL_THREADS", 1)
  one = ev.evaluate(setup["gen"], setup["data"], "test", **kwargs)
  assert two["clips"] == one["clips"] >= 2
  assert {k: v for k, v in two.items() if k != "seconds"} == {k: v for k, v in one.items() if k != "seconds"}
