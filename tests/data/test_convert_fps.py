"""fps conversion with real ffmpeg: frame rate, duration and audio kept; reruns skip; failures reported."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from data_tools import convert_fps
from emogen_jax.data import audio, files
from emogen_jax.errors import UserError
from tests import _data_fixtures as fx


def _video_stream(path):
  return [s for s in fx.probe(path)["streams"] if s["codec_type"] == "video"][0]


@pytest.fixture()
def src(tmp_path):
  d = tmp_path / "src"
  (d / "sub").mkdir(parents=True)
  fx.make_test_video(d / "a30.mp4", fps=30, seconds=2.0, tone_hz=440)
  fx.make_test_video(d / "sub" / "b25.mov", fps=25, seconds=1.2, tone_hz=1000)
  fx.write_corrupt_video(d / "broken.flv")
  (d / "notes.txt").write_text("not a video")
  return str(d)


def test_convert_skip_and_failures(src, tmp_path):
  dst = str(tmp_path / "dst")
  report = convert_fps.convert_dir(src, dst, fps=25, jobs=2)
  a, b = os.path.join(dst, "a30.mp4"), os.path.join(dst, "sub", "b25.mp4")
  assert report.converted == [a, b]
  assert report.skipped == []
  assert [os.path.basename(p) for p, _ in report.failed] == ["broken.flv"]
  assert not os.path.exists(os.path.join(dst, "broken.mp4"))
  assert not any(files.TEMP_MARK in n for _, _, fs in os.walk(dst) for n in fs)  # no temporaries

  v = _video_stream(a)
  assert v["r_frame_rate"] == "25/1" and int(v["nb_read_frames"]) == 50
  assert v["codec_name"] == "h264" and v["pix_fmt"] == "yuv420p"
  wav = audio.load_wav(a)
  assert abs(len(wav) / 16000 - 2.0) < 0.05
  spectrum = np.abs(np.fft.rfft(wav[:16000]))
  assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) <= 2  # 1 Hz bins over 1 s
  assert int(_video_stream(b)["nb_read_frames"]) == 30

  # Frame timing: output frame k shows the input frame at time k/25 (30 fps: index round(1.2 k)).
  fin, fout = fx.read_frames(os.path.join(src, "a30.mp4")), fx.read_frames(a)
  for k in (5, 17, 33, 48):
    err = [np.abs(fout[k].astype(int) - fin[j].astype(int)).mean() for j in range(len(fin))]
    assert abs(int(np.argmin(err)) - round(1.2 * k)) <= 1, (k, int(np.argmin(err)))

  # Rerun: everything up to date is skipped; the broken input fails again, still named.
  report = convert_fps.convert_dir(src, dst, fps=25, jobs=2)
  assert report.converted == [] and sorted(report.skipped) == [a, b]
  assert len(report.failed) == 1
  # The command exits 1 when a clip failed, so a script can tell (0 once nothing fails).
  assert convert_fps.main(["--src", src, "--dst", dst]) == 1
  os.remove(os.path.join(src, "broken.flv"))
  assert convert_fps.main(["--src", src, "--dst", dst]) == 0
  # A newer input is converted again.
  later = time.time() + 5
  os.utime(os.path.join(src, "a30.mp4"), (later, later))
  report = convert_fps.convert_dir(src, dst, fps=25, jobs=1)
  assert report.converted == [a] and report.skipped == [b]


def test_errors(tmp_path, src):
  with pytest.raises(UserError, match="not found"):
    convert_fps.convert_dir(str(tmp_path / "nope"), str(tmp_path / "out"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(UserError, match="no videos"):
    convert_fps.convert_dir(str(empty), str(tmp_path / "out"))
  with pytest.raises(UserError, match="differ"):
    convert_fps.convert_dir(src, src)
  with pytest.raises(UserError, match="fps"):
    convert_fps.convert_dir(src, str(tmp_path / "out"), fps=0)


def test_cli(src, tmp_path):
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  cmd = [sys.executable, "-m", "data_tools.convert_fps"]
  r = subprocess.run(cmd + ["--help"], capture_output=True, text=True, env=env)
  assert r.returncode == 0 and "--jobs" in r.stdout
  r = subprocess.run(cmd + ["--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "o")],
                     capture_output=True, text=True, env=env)
  assert r.returncode == 2 and r.stderr.startswith("error: source directory not found")
  r = subprocess.run(cmd + ["--src", src, "--dst", str(tmp_path / "o")], capture_output=True, text=True,
                     env=env)
  assert r.returncode == 1, r.stderr  # a clip failed: a script can tell
  assert "converted 2, skipped 0 (up to date), failed 1" in r.stdout
  assert "failed: " in r.stdout and "broken.flv" in r.stdout
