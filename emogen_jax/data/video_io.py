"""Reading faces (videos or still images) and writing H.264 + AAC mp4s through ffmpeg.

Frames are uint8 BGR arrays (H, W, 3), OpenCV's order, as everywhere in the project.
"""

from __future__ import annotations

import json
import os
import itertools
import shutil
import subprocess
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from emogen_jax.data.media import ffmpeg_exe
from emogen_jax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def is_image(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def read_image(path: str) -> np.ndarray:
  """One BGR uint8 image; a UserError when it is missing or not an image."""
  if not os.path.isfile(path):
    raise UserError(f"face file {path!r} does not exist; give a video or an image with a face")
  img = cv2.imread(path, cv2.IMREAD_COLOR)
  if img is None:
    raise UserError(f"face file {path!r} could not be read as an image; give a JPEG/PNG or a video")
  return img


def open_video(path: str) -> tuple[Callable[[], Iterator[np.ndarray]], float, int | None]:
  """(a function giving a fresh iterator over the frames, fps, the frame count the header lists).

  Nothing is decoded but the first frame (to check there is one), so any length streams.
  Raises a UserError when the file is missing, not a video, has no frame or no frame rate.
  """
  if not os.path.isfile(path):
    raise UserError(f"face file {path!r} does not exist; give a video or an image with a face")
  cap = cv2.VideoCapture(path)
  if not cap.isOpened():
    raise UserError(f"face file {path!r} could not be opened as a video; give an mp4/avi/mov or an image")
  fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
  count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
  ok, _ = cap.read()
  cap.release()
  if not ok:
    raise UserError(f"face file {path!r} has no readable video frame; is it a video with a picture?")
  if not fps > 0 or not np.isfinite(fps):
    raise UserError(f"face video {path!r} reports no frame rate; re-encode it, e.g. "
                    f"ffmpeg -i {path} -r 25 fixed.mp4")
  return (lambda: iter_video(path)), fps, (count if count > 0 else None)


def read_video(path: str, max_frames: int | None = None) -> tuple[list[np.ndarray], float]:
  """All frames of a video (BGR uint8) and its frame rate (for short clips; ``open_video`` streams).

  Raises a UserError when the file is missing, not a video, or has no frame.
  """
  frames_of, fps, _ = open_video(path)
  return list(itertools.islice(frames_of(), max_frames)), fps


def open_face_input(path: str) -> tuple[Callable[[], Iterator[np.ndarray]], float | None, int | None]:
  """``open_video``'s triple for a video; for a still image (frames of [image], None, 1)."""
  if is_image(path):
    image = read_image(path)
    return (lambda: iter([image])), None, 1
  return open_video(path)


class VideoWriter:
  """Streams BGR frames into an H.264 mp4 through an ffmpeg pipe; muxes an audio track at close.

  Odd frame sizes are padded by one pixel (yuv420p needs even sizes). The audio track
  (AAC) comes from any file ffmpeg reads; its first audio stream is used.
  """

  def __init__(self, path: str, fps: float, audio: str | None = None, crf: int = 18):
    self.path = path
    self.fps = float(fps)
    self.audio = audio
    self.crf = crf
    self.num_frames = 0
    self._proc: subprocess.Popen | None = None
    self._size: tuple[int, int] | None = None

  def _start(self, width: int, height: int) -> None:
    out_dir = os.path.dirname(os.path.abspath(self.path))
    if not os.path.isdir(out_dir):
      raise UserError(f"output folder {out_dir!r} does not exist; create it or change --out")
    cmd = [ffmpeg_exe(), "-y", "-loglevel", "error",
           "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", f"{self.fps:.6f}",
           "-i", "-"]
    if self.audio is not None:
      cmd += ["-i", self.audio, "-map", "0:v:0", "-map", "1:a:0"]
    cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast",
            "-crf", str(self.crf), "-pix_fmt", "yuv420p"]
    if self.audio is not None:
      cmd += ["-c:a", "aac", "-b:a", "128k"]
    cmd += ["-movflags", "+faststart", self.path]
    self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    self._size = (width, height)

  def write(self, frame: np.ndarray) -> None:
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    if frame.ndim != 3 or frame.shape[2] != 3:
      raise ValueError(f"frames must be (H, W, 3) uint8, got {frame.shape}")
    h, w = frame.shape[:2]
    if self._proc is None:
      self._start(w, h)
    elif self._size != (w, h):
      raise ValueError(f"frame size changed from {self._size} to {(w, h)}")
    try:
      self._proc.stdin.write(frame.tobytes())
    except BrokenPipeError:
      self._fail()
    self.num_frames += 1

  def _fail(self) -> None:
    err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc else ""
    self._proc.wait()
    last = err.splitlines()[-1] if err else "unknown ffmpeg error"
    raise UserError(f"ffmpeg could not write {self.path!r}: {last}")

  def close(self) -> None:
    if self._proc is None:
      if self.num_frames == 0:
        raise ValueError("no frame was written")
      return
    try:
      self._proc.stdin.close()
    except BrokenPipeError:
      pass
    rc = self._proc.wait()
    if rc != 0:
      self._fail()
    self._proc.stderr.close()
    self._proc = None

  def abort(self) -> None:
    """Stops ffmpeg without finishing the file (used when generation fails midway)."""
    if self._proc is not None:
      self._proc.kill()
      self._proc.wait()
      self._proc = None

  def __enter__(self) -> VideoWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def write_video(path: str, frames: Iterable[np.ndarray], fps: float, audio: str | None = None) -> int:
  """Writes BGR frames (with an optional audio file muxed in) to ``path``; returns the frame count."""
  with VideoWriter(path, fps, audio) as w:
    for f in frames:
      w.write(f)
  return w.num_frames


def write_wav(path: str, wav: np.ndarray, sr: int) -> None:
  """Writes a mono float waveform in [-1, 1] as 16-bit PCM wav (via ffmpeg, no extra dependency)."""
  pcm = (np.clip(np.asarray(wav, np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
  cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "s16le", "-ar", str(int(sr)), "-ac", "1",
         "-i", "-", path]
  proc = subprocess.run(cmd, input=pcm.tobytes(), stderr=subprocess.PIPE)
  if proc.returncode != 0:
    raise UserError(f"ffmpeg could not write {path!r}: {proc.stderr.decode(errors='replace').strip()}")


def probe(path: str) -> dict:
  """ffprobe's JSON description (streams and format) of a media file."""
  exe = shutil.which("ffprobe")
  if exe is None:
    raise UserError("ffprobe not found; install ffmpeg (apt-get install ffmpeg)")
  out = subprocess.run([exe, "-v", "error", "-count_frames", "-show_streams", "-show_format",
                        "-of", "json", path], capture_output=True, text=True)
  if out.returncode != 0:
    raise UserError(f"ffprobe could not read {path!r}: {out.stderr.strip()}")
  return json.loads(out.stdout)


def capture_frames(cap: cv2.VideoCapture, max_frames: int | None = None) -> Iterator[np.ndarray]:
  """The frames of an opened capture one at a time (BGR uint8), releasing it at the end: the one
  OpenCV read loop of the project (inference, preprocessing and the tests use it)."""
  try:
    n = 0
    while max_frames is None or n < max_frames:
      ok, frame = cap.read()
      if not ok:
        return
      n += 1
      yield frame
  finally:
    cap.release()


def iter_video(path: str) -> Iterator[np.ndarray]:
  """Frames of a video one at a time (BGR uint8), for long files; none when unreadable."""
  return capture_frames(cv2.VideoCapture(path))
