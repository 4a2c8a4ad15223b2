"""Notebook API over the inference core of ``emogen_jax.infer``.

    from emogen_jax.inference.api import TalkingFace, show
    tf = TalkingFace.load("checkpoints/emogen")          # loads and compiles once
    frames, fps = tf.generate(face="face.mp4", audio="speech.wav", emotion="HAP")
    show(tf.to_video(frames, "speech.wav", "out.mp4", fps))
    tf.convolutions                                      # "onednn" or "xla": the CPU kernels it got

On the CPU the generator compiles with ``cpu_convolutions="auto"`` by default (oneDNN's kernels on
an AVX-512 CPU where the install built them, else XLA's; emogen_jax.onednn_conv); pass "xla" or
"onednn" to ``load`` to choose.

Colour order: frames are BGR (OpenCV's order, as everywhere in the project) by default; pass
``rgb=True`` to ``generate``/``to_video`` to give and get RGB arrays (e.g. for matplotlib).
"""

from __future__ import annotations

import os
import tempfile
from typing import Mapping, Sequence

import numpy as np

from emogen_jax import onednn_conv
from emogen_jax.data import audio as audio_lib
from emogen_jax.data import face_detection
from emogen_jax.data import files
from emogen_jax.data import video_io
from emogen_jax.errors import UserError
from emogen_jax.inference import renderer as infer
from emogen_jax.inference import stream


def _face_source(face, fps: float | None, rgb: bool) -> infer.Source:
  """A path (streamed), an image (H, W, 3), frames (N, H, W, 3) or a list of frames -> a Source.

  A video path keeps its own rate; ``fps`` is the rate of an image or of array frames.
  """
  if isinstance(face, (str, os.PathLike)):
    path = files.input_file(face, "face", "give a video or an image with a face")
    return infer.Source.of_path(path, fps if video_io.is_image(path) else None)
  arr = [np.asarray(f) for f in face] if isinstance(face, (list, tuple)) else np.asarray(face)
  if isinstance(arr, np.ndarray):
    if arr.ndim == 3:
      arr = [arr]
    elif arr.ndim == 4:
      arr = list(arr)
    else:
      raise UserError(f"face array must be (H, W, 3) or (N, H, W, 3), got shape {arr.shape}")
  frames = []
  for f in arr:
    if f.ndim != 3 or f.shape[2] != 3:
      raise UserError(f"face frames must be (H, W, 3) colour images, got shape {f.shape}")
    f = np.asarray(f)
    if f.dtype != np.uint8:
      raise UserError(f"face frames must be uint8 (0-255), got {f.dtype}")
    frames.append(np.ascontiguousarray(f[:, :, ::-1] if rgb else f))
  return infer.Source.of_frames(frames, fps or infer.DEFAULT_IMAGE_FPS)


def _waveform(audio) -> np.ndarray:
  """A path (any file ffmpeg reads) or a float waveform at 16 kHz -> float32 (N,)."""
  if isinstance(audio, (str, os.PathLike)):
    return audio_lib.load_wav(files.input_file(audio, "audio", "give a speech file"))
  wav = np.asarray(audio, np.float32)
  if wav.ndim != 1:
    raise UserError(f"audio array must be a mono waveform (N,) at {audio_lib.SAMPLE_RATE} Hz, "
                    f"got shape {wav.shape}")
  return wav


class TalkingFace:
  """A loaded generator with its compiled function; ``generate`` as often as you like."""

  def __init__(self, model, variables, meta: dict | None = None, batch_size: int = 16,
               detector: str = "haar", s3fd_weights: str | None = None,
               cpu_convolutions: str = "auto"):
    self.meta = dict(meta or {})
    warm_up = audio_lib.WarmUp()  # librosa's deferred imports beside the compile, not in generate
    warm_up.start()
    # The generator is compiled here, once: the kernels it is compiled with stay its kernels.
    # ``self.convolutions`` says which ("onednn" or "xla"; see emogen_jax.onednn_conv); a build
    # on the way, or a built binding that failed to load, is printed.
    with onednn_conv.cpu_convolutions(
        cpu_convolutions, where="cpu_convolutions",
        log=lambda m: print(m) if not m.startswith("convolutions:") or "failed" in m
        else None) as kernels:
      self.renderer = infer.Renderer(model, variables, batch_size)
    self.convolutions = kernels
    warm_up.join()
    self.detector_name = detector
    self.s3fd_weights = s3fd_weights
    self._detector = None
    self.last_stats: stream.StreamStats | None = None

  @classmethod
  def load(cls, checkpoint: str, batch_size: int = 16, detector: str = "haar",
           s3fd_weights: str | None = None, cpu_convolutions: str = "auto") -> TalkingFace:
    """From a training workdir (latest step) or a converted checkpoint; width read from its meta.
    cpu_convolutions: the generator's convolution kernels on the CPU backend ("auto", "xla" or
    "onednn", as ``python -m emogen_jax.infer --cpu-convolutions``)."""
    model, variables, meta = infer.load_generator(checkpoint)
    return cls(model, variables, meta, batch_size, detector, s3fd_weights, cpu_convolutions)

  @property
  def detector(self):
    if self._detector is None:
      self._detector = face_detection.make_detector(self.detector_name, weights=self.s3fd_weights)
    return self._detector

  def generate(self, face, audio, emotion: str | Mapping[str, float] = "NEU", *, fps: float | None = None,
               pads: Sequence[int] = infer.DEFAULT_PADS, smooth: bool = True,
               box: Sequence[int] | None = None, static: bool = False, resize_factor: int = 1,
               crop: Sequence[int] | None = None, rotate: bool = False, rgb: bool = False,
               on_no_face: str = "keep", blend: str = "feather", detect_every: int = 1,
               search: str = "track", progress: bool = True) -> tuple[np.ndarray, float]:
    """Frames (N, H, W, 3) uint8 and their fps; ``emotion="all"`` gives six faces side by side.

    emotion: a code, noun or adjective ("HAP", "happiness", "happy"), a mix with weights summing
    to 1 ("HAP:0.6,NEU:0.4" or {"HAP": 0.6, "NEU": 0.4}), or "all".

    face: a video/image path, an image array (H, W, 3), or frames (N, H, W, 3) / a list of them.
    audio: any file ffmpeg reads, or a mono float waveform at 16 kHz.
    Arrays are BGR unless ``rgb=True`` (then input and output are RGB). ``fps`` is the rate of
    array frames or an image (default 25); a video path keeps its own rate.
    Options as the CLI's (pads/box are top, bottom, left, right). ``self.last_stats`` tells how
    many frames had a face, were interpolated or passed through (``on_no_face="keep"``), and
    with ``detect_every=k`` how many lay between detected frames.
    """
    emotions = infer.parse_emotions(emotion)
    source = _face_source(face, fps, rgb)
    wav = _waveform(audio)
    opts = infer.FaceOptions(pads=tuple(pads), smooth=smooth, resize_factor=resize_factor, crop=crop,
                             box=box, rotate=rotate, static=static, on_no_face=on_no_face,
                             blend=blend, detect_every=detect_every, search=search)
    self.last_stats = stream.StreamStats()
    out = np.stack(list(infer.render_stream(self.renderer, source, wav, emotions, opts,
                                            detector=None if box is not None else self.detector,
                                            stats=self.last_stats, progress=progress)))
    return (out[..., ::-1].copy() if rgb else out), source.fps

  def to_video(self, frames, audio, path: str, fps: float = infer.DEFAULT_IMAGE_FPS,
               rgb: bool = False) -> str:
    return to_video(frames, audio, path, fps, rgb)


def to_video(frames, audio, path: str, fps: float = infer.DEFAULT_IMAGE_FPS, rgb: bool = False) -> str:
  """Writes frames (BGR, or RGB with ``rgb=True``) with audio (a path or a 16 kHz waveform) as mp4."""
  frames = [np.asarray(f)[:, :, ::-1] if rgb else np.asarray(f) for f in frames]
  out = files.check_output_file(path, "path", (".mp4",), "mp4 video")
  with tempfile.TemporaryDirectory(prefix="emogen_api_") as tmp:
    if audio is None or isinstance(audio, (str, os.PathLike)):
      track = None if audio is None else files.input_file(audio, "audio", "check the path")
    else:
      track = os.path.join(tmp, "audio.wav")
      video_io.write_wav(track, _waveform(audio), audio_lib.SAMPLE_RATE)
    with files.atomic_file(out) as tmp_out:
      video_io.write_video(tmp_out, frames, fps, audio=track)
  return out


def show(path: str, width: int | None = None):
  """An inline player in a notebook (IPython.display.Video), else just the path."""
  try:
    from IPython.display import Video
  except ImportError:
    return path
  kwargs = {"embed": True}
  if width is not None:
    kwargs["width"] = width
  return Video(path, **kwargs)
