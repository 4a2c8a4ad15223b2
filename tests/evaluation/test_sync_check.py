"""Dataset sync check: known offsets recovered through the real dataset reading and windowing."""

import csv
import json
import os

import numpy as np
import pytest

from emogen_jax.evaluation import evaluate as ev
from emogen_jax.evaluation import sync_check
from tests import _infer_fixtures as F

N_FRAMES = 30
MEL_STEPS = 96  # windows for frames 0..25 fit: int(80 * 25 / 25) + 16 = 96
SHIFTS = {"1001_DFA_ANG_XX": 0, "1002_IEO_HAP_XX": 3, "1003_TIE_SAD_XX": -2}


def _clip(cid, k, seed):
  """Lower half of frame f is a flat grey b_f; the mel window of audio frame j starts with b_{j+k}.

  So audio window j matches video window j + k... i.e. video frame f matches audio f - k: offset k.
  """
  rng = np.random.default_rng(seed)
  b = rng.permutation(np.arange(8, 248, 8))[:N_FRAMES].astype(np.float64)  # distinct greys
  crops = F.face_crops(N_FRAMES)
  crops[:, 48:] = b[:, None, None, None].astype(np.uint8)
  mel = rng.uniform(-4, 4, (80, MEL_STEPS)).astype(np.float32)
  for j in range(N_FRAMES):
    s = int(80 * j / 25)
    if s < MEL_STEPS:
      mel[0, s] = b[j + k] / 255.0 if 0 <= j + k < N_FRAMES else rng.uniform(0, 1)
  return {"clip_id": cid, "crops": crops, "mel": mel, "emotion": cid.split("_")[2]}


class BrightnessSyncNet:
  """A hand-made "SyncNet" with known embeddings: the face window's first-frame lower-half grey
  level and the mel window's first value (same (mel, faces) -> (audio, face) contract)."""

  def __call__(self, mel, faces):
    assert mel.shape[1:] == (80, 16, 1) and faces.shape[1:] == (48, 96, 15)
    return mel[:, 0, 0, :].astype(np.float64), faces[:, :, :, 0:3].mean(axis=(1, 2, 3))[:, None]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  d = tmp_path_factory.mktemp("sync")
  clips = [_clip(cid, k, i) for i, (cid, k) in enumerate(SHIFTS.items())]
  F.make_dataset(str(d / "data"), clips, {"train": ["1001_DFA_ANG_XX", "1002_IEO_HAP_XX"],
                                          "validation": [], "test": ["1003_TIE_SAD_XX"]})
  return d


def test_known_offsets_are_found_and_flagged(data):
  net = BrightnessSyncNet()
  out = str(data / "report")
  s = sync_check.run(str(data / "data"), "brightness", split="all", out=out, min_confidence=0.01,
                     embed=lambda frames, mel: ev.sync_embeddings(net, frames, mel), progress=False)
  with open(os.path.join(out, "sync_check.csv")) as f:
    rows = {r["clip_id"]: r for r in csv.DictReader(f)}
  assert set(rows) == set(SHIFTS)
  for cid, k in SHIFTS.items():
    assert int(rows[cid]["offset"]) == k, (cid, rows[cid])
    assert int(rows[cid]["windows"]) == 26
    assert float(rows[cid]["confidence"]) > 0.1
    assert ("offset" in rows[cid]["flag"]) == (k != 0)
  assert s["clips"] == 3 and s["off_sync"] == 2 and s["flagged"] == 2
  assert s["offset_histogram"] == {"-2": 1, "0": 1, "3": 1}
  with open(os.path.join(out, "sync_check.json")) as f:
    report = json.load(f)
  assert report["summary"]["off_sync"] == 2 and len(report["clips"]) == 3
  assert any("off sync" in a for a in s["advice"])


def test_summary_advice_for_an_untrained_expert():
  rows = [{"offset": o, "confidence": 0.001, "min_dist": 1.0} for o in (0, 5, -3)]
  s = sync_check.summarize(rows, 0.05, [])
  assert s["low_confidence"] == 3 and "untrained" in s["advice"][0]
  rows = [{"offset": o, "confidence": 0.5, "min_dist": 0.5} for o in (2, 2, 2, 0)]
  s = sync_check.summarize(rows, 0.05, ["x"])
  assert "+2 frames" in s["advice"][0] and "80 ms" in s["advice"][0] and s["skipped_too_short"] == 1


def test_cli_with_a_real_syncnet(data, capsys):
  ck = F.make_model_checkpoint(str(data / "syncnet"), "syncnet")
  out = str(data / "report_cli")
  rc = sync_check.main(["--data-dir", str(data / "data"), "--syncnet", ck, "--split", "test",
                        "--out", out])
  text = capsys.readouterr().out
  assert rc == 0 and "checked 1 clips" in text and "report:" in text
  with open(os.path.join(out, "sync_check.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 1 and -15 <= int(rows[0]["offset"]) <= 15
  assert np.isfinite(float(rows[0]["confidence"])) and float(rows[0]["confidence"]) >= 0


def test_cli_errors(data, capsys):
  assert sync_check.main(["--data-dir", str(data / "nope"), "--syncnet", str(data / "nope")]) == 2
  assert "does not exist" in capsys.readouterr().err
  ck = F.make_model_checkpoint(str(data / "syncnet2"), "syncnet")
  assert sync_check.main(["--data-dir", str(data / "data"), "--syncnet", ck,
                          "--split", "validation"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "split 'validation'" in err[0]
