"""Inference: the real CLI (subprocess, real ffmpeg) on a small face clip, the API, the error paths."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from emogen_jax.data import audio as audio_lib
from emogen_jax.data import timing
from emogen_jax.data import video_io
from emogen_jax.inference import cli as infer_cli
from emogen_jax.inference import renderer as infer
from tests import _infer_fixtures as F
from tests import subprocess_env

FPS = 25.0
SPEECH_SECONDS = 1.0
VIDEO_FRAMES = 12  # shorter than the speech: the output loops (ping-pong)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("infer")
  return {
      "dir": d,
      "ckpt": F.make_generator_checkpoint(str(d / "gen")),
      "video": F.write_face_video(str(d / "face.mp4"), VIDEO_FRAMES, FPS),
      "image": F.write_face_image(str(d / "face.png")),
      "speech": F.write_speech(str(d / "speech.wav"), SPEECH_SECONDS),
  }


def _expected_frames(audio_path, fps=FPS):
  mel = audio_lib.melspectrogram(audio_lib.load_wav(audio_path))
  return len(timing.inference_mel_chunks(mel, fps))


def _cli(files, *args, check=True, tmpdir=None):
  env = subprocess_env()  # later CLI runs reuse the first one's compiled generator (same shapes)
  if tmpdir is not None:
    env["TMPDIR"] = tmpdir
  proc = subprocess.run([sys.executable, "-m", "emogen_jax.infer", "--checkpoint", files["ckpt"],
                         "--batch-size", "8", *args], capture_output=True, text=True, env=env,
                        timeout=300)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _streams(path):
  info = video_io.probe(path)
  kinds = {s["codec_type"]: s for s in info["streams"]}
  return kinds


def test_cli_video_face(files):
  out = str(files["dir"] / "video_out.mp4")
  tmp = files["dir"] / "private_tmp"
  tmp.mkdir()
  proc = _cli(files, "--face", files["video"], "--audio", files["speech"], "--emotion", "HAP",
              "--out", out, tmpdir=str(tmp))
  assert not [p for p in os.listdir(tmp) if p.startswith("emogen_")]  # temporary folder removed
  n = _expected_frames(files["speech"])
  # the chunking rule (docs/design.md "Time rules"): chunks while int(i*80/fps)+16 fits, plus one aligned to the end.
  assert n == int((80 * SPEECH_SECONDS + 1 - 16) * FPS / 80) + 2 == 22
  assert abs(n - SPEECH_SECONDS * FPS) <= 16 * FPS / 80 + 1
  s = _streams(out)
  assert s["video"]["codec_name"] == "h264" and s["audio"]["codec_name"] == "aac"
  assert int(s["video"]["nb_read_frames"]) == n
  assert (int(s["video"]["width"]), int(s["video"]["height"])) == (160, 128)
  assert abs(float(s["audio"]["duration"]) - SPEECH_SECONDS) < 0.05
  assert f"{n} frames" in proc.stdout and "1 compilation" in proc.stdout and "faces/s" in proc.stdout
  # The background is the source video; only the face box was replaced.
  got = list(video_io.iter_video(out))
  src, _ = video_io.read_video(files["video"])
  # The face (x 20..140 of 160) drifts by 3 px; the margins keep the source picture.
  assert np.abs(got[0][:, :14].astype(int) - src[0][:, :14]).mean() < 4  # colour conversion only
  margin = np.s_[:, :30]
  # output frame 12 shows source frame 10 (ping-pong), not source frame 0 (wrap)
  assert infer.pingpong_index(12, VIDEO_FRAMES) == 10
  d_pp = np.abs(got[12][margin].astype(int) - src[10][margin]).mean()
  d_wrap = np.abs(got[12][margin].astype(int) - src[0][margin]).mean()
  assert d_pp < d_wrap


def test_cli_still_image_espeak_all_emotions(files):
  """A still image, a spoken sentence (espeak-ng, else synthetic), the six emotions side by side."""
  speech = F.write_espeak(str(files["dir"] / "espeak.wav")) or files["speech"]
  out = str(files["dir"] / "all_out.mp4")
  _cli(files, "--face", files["image"], "--audio", speech, "--emotion", "all", "--fps", "25",
       "--out", out)
  s = _streams(out)
  assert (int(s["video"]["width"]), int(s["video"]["height"])) == (6 * 160, 128)
  assert int(s["video"]["nb_read_frames"]) == _expected_frames(speech)
  assert s["audio"]["codec_name"] == "aac"
  assert abs(float(s["audio"]["duration"]) - len(audio_lib.load_wav(speech)) / 16000) < 0.05
  frame = next(video_io.iter_video(out))
  panels = [frame[:, 160 * k:160 * (k + 1)].astype(int) for k in range(6)]
  for p in panels:  # each panel carries its label on a dark band in the top-left corner
    assert p[1:6, 1:20].mean() < 60
  # the same picture around the face in every panel (which emotion is in which panel: API test)
  for p in panels[1:]:
    assert np.abs(p[:, -12:] - panels[0][:, -12:]).mean() < 3


def test_synthetic_corpus_clip_with_its_own_audio_track(files, capsys):
  """A make_synthetic clip is both the face and the audio (a video file as the audio input)."""
  from data_tools.make_synthetic import make_corpus
  clip = make_corpus(str(files["dir"] / "synth"), 1, 1, frames_range=(20, 24), jobs=1)[0]
  out = str(files["dir"] / "synth_out.mp4")
  rc = infer_cli.main(["--checkpoint", files["ckpt"], "--face", clip, "--audio", clip, "--emotion", "FEA",
                   "--nosmooth", "--batch-size", "8", "--out", out])
  assert rc == 0, capsys.readouterr().err
  s = _streams(out)
  n = _expected_frames(clip)
  assert int(s["video"]["nb_read_frames"]) == n < len(video_io.read_video(clip)[0])
  assert s["audio"]["codec_name"] == "aac"
  assert f"{n} frames" in capsys.readouterr().out


def test_cli_error_is_one_line_exit_2(files):
  proc = _cli(files, "--face", files["image"], "--audio", files["speech"], "--emotion", "JOY",
              "--out", str(files["dir"] / "x.mp4"), check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: unknown emotion 'JOY'; valid emotions are ANG, DIS, FEA, HAP, NEU, SAD (or angry, "
      "disgusted, fearful, happy, neutral, sad), a mix such as HAP:0.6,NEU:0.4, or all"]


@pytest.mark.parametrize("case, message", [
    ("missing_face", "does not exist"),
    ("bad_face", "could not be opened as a video"),
    ("missing_audio", "does not exist"),
    ("bad_audio", "cannot decode audio"),
    ("missing_ckpt", "does not exist"),
    ("short_audio", "audio too short"),
])
def test_error_paths(files, capsys, case, message):
  d = files["dir"]
  args = {"--checkpoint": files["ckpt"], "--face": files["image"], "--audio": files["speech"],
          "--out": str(d / f"{case}.mp4")}
  if case == "missing_face":
    args["--face"] = str(d / "nope.mp4")
  elif case == "bad_face":
    (d / "bad.mp4").write_bytes(b"not a video")
    args["--face"] = str(d / "bad.mp4")
  elif case == "missing_audio":
    args["--audio"] = str(d / "nope.wav")
  elif case == "bad_audio":
    (d / "bad.wav").write_bytes(b"RIFF....garbage")
    args["--audio"] = str(d / "bad.wav")
  elif case == "missing_ckpt":
    args["--checkpoint"] = str(d / "no_ckpt")
  elif case == "short_audio":
    args["--audio"] = F.write_speech(str(d / "short.wav"), 0.1)
  argv = [x for kv in args.items() for x in kv]
  rc = infer_cli.main(argv)
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
  assert not os.path.exists(args["--out"])


def test_no_face_names_the_frame_and_saves_it(files, capsys):
  d = files["dir"]
  frames = F.face_frames(6)
  frames[3] = np.full_like(frames[3], 127)  # no face in frame 3
  video = video_io.write_video(str(d / "noface.mp4"), frames, FPS) and str(d / "noface.mp4")
  out = str(d / "noface_out.mp4")
  rc = infer_cli.main(["--checkpoint", files["ckpt"], "--face", video, "--audio", files["speech"],
                       "--on-no-face", "error", "--out", out])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and err[0].startswith("startup"), err  # the startup log line, the progress bar
  assert "librosa's deferred imports" in err[0] and "compile" in err[0], err[0]
  err = [line for line in err if line.startswith("error:")]
  assert len(err) == 1, err
  assert "no face found in frame 3" in err[0] and "--pads" in err[0] and "--box" in err[0]
  png = str(d / "noface_out_noface_frame3.png")
  assert png in err[0] and os.path.isfile(png)
  assert np.abs(cv2.imread(png).astype(int) - 127).max() < 10


def test_renderer_compiles_once_and_padding_does_not_change_results(files):
  model, variables, meta = infer.load_generator(files["ckpt"])
  assert meta["width"] == F.TINY_WIDTH and model.width == F.TINY_WIDTH
  r = infer.Renderer(model, variables, batch_size=4)
  rng = np.random.default_rng(0)
  mels = rng.uniform(-4, 4, (10, 80, 16)).astype(np.float32)
  crops = rng.integers(0, 256, (10, 96, 96, 3), dtype=np.uint8)
  emos = np.arange(10) % 6
  out10 = r(mels, crops, emos)           # 3 batches, the last padded
  out3 = r(mels[:3], crops[:3], emos[:3])  # 1 padded batch
  assert r.trace_count == 1
  assert out10.shape == (10, 96, 96, 3) and out10.dtype == np.uint8
  np.testing.assert_array_equal(out10[:3], out3)
  # the emotion reaches the output
  other = r(mels[:1], crops[:1], np.array([(emos[0] + 1) % 6]))
  assert np.abs(other.astype(int) - out10[:1]).max() > 0


def test_api_generate_matches_schedule_and_colour_order(files):
  from emogen_jax.inference.api import TalkingFace, show
  tf = TalkingFace.load(files["ckpt"], batch_size=8)
  src = F.face_frames(VIDEO_FRAMES)
  wav = F.synth_speech(SPEECH_SECONDS)
  frames, fps = tf.generate(face=np.stack(src), audio=wav, emotion="ANG", fps=FPS, progress=False)
  n = _expected_frames(files["speech"])
  assert fps == FPS and frames.shape == (n, 128, 160, 3) and frames.dtype == np.uint8
  # outside the (smoothed, padded) face box every output frame is exactly its ping-pong source frame
  boxes = infer.face_boxes_for(src, infer.FaceOptions(), detector=tf.detector)
  for i in (0, 5, 11, 12, 21):
    j = infer.pingpong_index(i, VIDEO_FRAMES)
    x1, y1, x2, y2 = boxes[j]
    mask = np.ones(frames.shape[1:3], bool)
    mask[y1:y2, x1:x2] = False
    np.testing.assert_array_equal(frames[i][mask], src[j][mask])
    assert np.abs(frames[i][~mask].astype(int) - src[j][~mask]).mean() > 1  # the face was replaced
  # RGB in -> RGB out: the same pictures with the channels reversed
  rgb_frames, _ = tf.generate(face=np.stack(src)[..., ::-1], audio=wav, emotion="ANG", fps=FPS,
                              rgb=True, progress=False)
  np.testing.assert_array_equal(rgb_frames, frames[..., ::-1])
  assert tf.renderer.trace_count == 1
  # a fixed box, a still, all emotions
  allf, _ = tf.generate(face=src[0], audio=wav, emotion="all", box=(20, 100, 40, 120), progress=False)
  assert allf.shape == (n, 128, 6 * 160, 3)
  hap, _ = tf.generate(face=src[0], audio=wav, emotion="HAP", box=(20, 100, 40, 120), progress=False)
  panel = allf[:, :, 3 * 160:4 * 160]  # panels in EMOTIONS order: ANG DIS FEA HAP NEU SAD
  np.testing.assert_array_equal(panel[:, 30:], hap[:, 30:])  # below the label band
  assert tf.renderer.trace_count == 1
  path = tf.to_video(frames, wav, str(files["dir"] / "api.mp4"), fps)
  s = _streams(path)
  assert int(s["video"]["nb_read_frames"]) == n and "audio" in s
  assert show(path) is not None


def test_pingpong_and_emotion_parsing():
  assert [infer.pingpong_index(i, 4) for i in range(10)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
  assert [infer.pingpong_index(i, 1) for i in range(3)] == [0, 0, 0]
  np.testing.assert_array_equal(infer.parse_emotions("all"), np.eye(6))  # one-hot vectors
  for name in ("hap", "happy", "happiness"):
    np.testing.assert_array_equal(infer.parse_emotions(name), [np.eye(6)[3]])


def test_frame_preparation_resize_rotate_crop_box():
  f = np.arange(40 * 60 * 3, dtype=np.uint32).reshape(40, 60, 3).astype(np.uint8)
  opts = infer.FaceOptions(resize_factor=2, rotate=True, crop=(2, -1, 1, 15))
  (g,) = infer.prepare_frames([f], opts)
  small = cv2.resize(f, (30, 20))
  np.testing.assert_array_equal(g, np.rot90(small, k=-1)[2:, 1:15])  # clockwise, then crop
  assert infer.prepare_frames([f, f, f], infer.FaceOptions(static=True))[0] is not None
  assert len(infer.prepare_frames([f, f, f], infer.FaceOptions(static=True))) == 1
  boxes = infer.face_boxes_for([f, f], infer.FaceOptions(box=(5, 30, 10, 50)))
  assert boxes == [(10, 5, 50, 30)] * 2  # top bottom left right -> x1 y1 x2 y2
  with pytest.raises(infer.UserError, match="--box"):
    infer.face_boxes_for([f], infer.FaceOptions(box=(5, 300, 10, 50)))
  with pytest.raises(infer.UserError, match="--crop"):
    infer.prepare_frames([f], infer.FaceOptions(crop=(30, 10, 0, -1)))
  with pytest.raises(infer.UserError, match="s3fd"):
    infer.face_boxes_for([f], infer.FaceOptions(detector="s3fd"))
