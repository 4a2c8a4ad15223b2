"""``python -m emogen_jax.infer``: a face video or image + any speech audio -> an mp4.

    python -m emogen_jax.infer --checkpoint CKPT --face face.mp4 --audio speech.wav \\
        --emotion HAP --out out.mp4

The work is done by ``emogen_jax.inference.renderer``; this module parses the flags, checks the
output and writes the video.
"""

from __future__ import annotations

import time

_IMPORTS_START = time.perf_counter()  # the imports below (JAX, Flax, OpenCV, ...) are startup too

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import cv2

from emogen_jax import onednn_conv
from emogen_jax.data import audio as audio_lib
from emogen_jax.data import face_detection
from emogen_jax.data import timing
from emogen_jax.data import video_io
from emogen_jax.data import emotions as emotions_lib
from emogen_jax.data import files
from emogen_jax.errors import ArgumentParser, UserError, cli_main
from emogen_jax.inference.renderer import (BLENDS, check_frame_size, DEFAULT_IMAGE_FPS, DEFAULT_PADS, FaceOptions,
                                           Renderer, Source, check_face_options, load_generator,
                                           parse_emotions, render_stream)
from emogen_jax.inference.stream import ON_NO_FACE, StreamStats
from emogen_jax.models import checkpoints

_IMPORTS_SECONDS = time.perf_counter() - _IMPORTS_START


def _parser() -> argparse.ArgumentParser:
  p = ArgumentParser(
      prog="python -m emogen_jax.infer",
      description="Make a face speak an audio track with a chosen emotion (EmoGen).")
  p.add_argument("--checkpoint", required=True,
                 help="a training workdir (latest step) or a converted checkpoint holding a generator")
  p.add_argument("--face", required=True, help="video or image with a face")
  p.add_argument("--audio", required=True, help="speech: any file ffmpeg reads (wav, mp3, a video)")
  p.add_argument("--emotion", default="NEU",
                 help=f"{emotions_lib.HELP}; or 'all' for the six side by side (default NEU)")
  p.add_argument("--out", required=True, help="output .mp4 (H.264 + AAC)")
  p.add_argument("--pads", type=int, nargs=4, default=list(DEFAULT_PADS), metavar=("T", "B", "L", "R"),
                 help="pixels added to the detected box: top bottom left right (default 0 10 0 0)")
  p.add_argument("--nosmooth", action="store_true", help="do not average boxes over 5 frames")
  p.add_argument("--resize-factor", type=int, default=1,
                 help="divide the frame size by this first (faster; output at that size)")
  p.add_argument("--crop", type=int, nargs=4, metavar=("T", "B", "L", "R"),
                 help="keep only this part of the frame: top bottom left right in pixels, -1 = edge")
  p.add_argument("--box", type=int, nargs=4, metavar=("T", "B", "L", "R"),
                 help="fixed face box top bottom left right in pixels (skips detection; no pads)")
  p.add_argument("--rotate", action="store_true", help="rotate frames 90 degrees clockwise first")
  p.add_argument("--static", action="store_true", help="use only the first frame (a still face)")
  p.add_argument("--fps", type=float, default=None,
                 help=f"frame rate for a still image (default {DEFAULT_IMAGE_FPS:g}); "
                      "videos keep their own rate")
  p.add_argument("--cpu-convolutions", default="auto", choices=onednn_conv.CHOICES,
                 help="convolution kernels on the CPU backend: auto (the default: oneDNN's on an "
                      "AVX-512 CPU where scripts/install.sh built them, else XLA's), xla (XLA's "
                      "own) or onednn (oneDNN's, built with g++ on first use)")
  p.add_argument("--batch-size", type=int, default=16, help="faces per generator call (default 16)")
  p.add_argument("--detector", default="haar", choices=face_detection.DETECTORS,
                 help="face detector (haar: offline; s3fd: needs --s3fd-weights)")
  p.add_argument("--detect-every", type=int, default=1, metavar="K",
                 help="run the detector on every K-th frame and the last (default 1: all); the "
                      "frames between get boxes interpolated between theirs, counted apart")
  p.add_argument("--search", default="track", choices=face_detection.SEARCHES,
                 help="where the Haar detector looks: track (default: near the face of the frame "
                      "before, the whole frame every 16th detection and wherever the face is not "
                      "there; ~5x cheaper) or full (every whole frame)")
  p.add_argument("--s3fd-weights", default=None, help=f"path of {face_detection.S3FD_FILE}")
  p.add_argument("--on-no-face", default="keep", choices=ON_NO_FACE,
                 help="frames without a face: keep (default: passed through unchanged, short gaps "
                      "between faces interpolated, the count reported) or error (stop)")
  p.add_argument("--blend", default="feather", choices=BLENDS,
                 help="paste-back of the generated face: feather (default: soft edges) or box "
                      "(the hard rectangle of the original)")
  return p


def _noface_png(out: str, k: int) -> str:
  return f"{os.path.splitext(os.path.abspath(out))[0]}_noface_frame{k}.png"


def check_flags(args: argparse.Namespace) -> FaceOptions:
  """Every flag that can be checked before reading any input (one-line UserErrors); the face options."""
  if args.fps is not None and args.fps <= 0:
    raise UserError(f"--fps must be positive, got {args.fps}")
  if args.batch_size < 1:
    raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
  opts = FaceOptions(pads=args.pads, smooth=not args.nosmooth, resize_factor=args.resize_factor,
                     crop=args.crop, box=args.box, rotate=args.rotate, static=args.static,
                     detector=args.detector, detect_every=args.detect_every, search=args.search,
                     s3fd_weights=args.s3fd_weights,
                     on_no_face=args.on_no_face, blend=args.blend)
  check_face_options(opts)
  return opts


def run(args: argparse.Namespace, log=None) -> dict:
  """The CLI's work; returns a summary dict (frames, seconds, startup, compilations, path, stats)."""
  log = log or (lambda msg: print(msg, file=sys.stderr))
  with contextlib.ExitStack() as scope:
    return _run(args, log, scope)


def _run(args: argparse.Namespace, log, scope: contextlib.ExitStack) -> dict:
  t_start = time.perf_counter()
  emotions = parse_emotions(args.emotion)
  opts = check_flags(args)
  out = files.check_output_file(args.out, "--out", (".mp4",), "mp4 video")
  face = files.input_file(args.face, "--face", "give a video or an image with a face")
  audio = files.input_file(args.audio, "--audio", "give a speech file (wav, mp3 or a video)")
  checkpoint = checkpoints.resolve_checkpoint(args.checkpoint)
  if args.detector == "s3fd" and args.s3fd_weights:
    opts.s3fd_weights = files.input_file(args.s3fd_weights, "--s3fd-weights",
                                         f"give the path of {face_detection.S3FD_FILE}")
  source = Source.of_path(face, args.fps)
  check_frame_size(opts, next(iter(source.open())).shape)  # before the startup: its line comes after
  wav = audio_lib.load_wav(audio)
  timing.inference_chunk_starts(audio_lib.mel_steps(len(wav)), source.fps)  # too short: say so now
  detector = None if args.box is not None else face_detection.make_detector(
      args.detector, weights=opts.s3fd_weights)
  # The convolution kernels, once the inputs are checked (a user error stays one line); which
  # ones and why ends the startup line, a build on the way (--cpu-convolutions onednn) says so now.
  kernels = []
  t0 = time.perf_counter()
  scope.enter_context(onednn_conv.cpu_convolutions(
      args.cpu_convolutions, where="--cpu-convolutions",
      log=lambda m: kernels.append(m) if m.startswith("convolutions:") else log(m)))
  t_kernels = time.perf_counter() - t0  # a first-use build of --cpu-convolutions onednn: long
  # Startup, reported apart from the generation speed: imports, checkpoint, compile, and the
  # imports librosa defers to its first STFT (in a thread beside the checkpoint load and compile).
  warm_up = audio_lib.WarmUp()
  warm_up.start()
  t0 = time.perf_counter()
  model, variables, _ = load_generator(checkpoint)
  t_load = time.perf_counter() - t0
  renderer = Renderer(model, variables, args.batch_size)
  t0 = time.perf_counter()
  warm_up.join()
  t_wait = time.perf_counter() - t0
  startup = time.perf_counter() - t_start + _IMPORTS_SECONDS
  log(f"startup {startup:.1f} s: imports {_IMPORTS_SECONDS:.1f} s, checkpoint {t_load:.1f} s, "
      f"compile {renderer.compile_seconds:.1f} s, librosa's deferred imports "
      f"{warm_up.seconds:.1f} s beside them (waited {t_wait:.1f} s), convolution kernels "
      f"{t_kernels:.1f} s, inputs and checks "
      f"{startup - _IMPORTS_SECONDS - t_load - renderer.compile_seconds - t_wait - t_kernels:.1f} s"
      + "".join(f"; {k}" for k in kernels))

  def no_face(k, frame):
    png = _noface_png(out, k)
    cv2.imwrite(png, frame)
    raise UserError(f"no face found in frame {k} of {args.face} (saved as {png}); try larger --pads, "
                    "a fixed --box T B L R, --detector s3fd, or --on-no-face keep")

  stats = StreamStats()
  t0 = time.perf_counter()  # decode + detect + generate + paste + encode, after the startup
  # Written under a temporary name beside --out and renamed when complete: a failure, Ctrl-C or
  # SIGTERM leaves neither a half-written --out nor a temporary behind.
  with files.atomic_file(out) as tmp_out:
    with video_io.VideoWriter(tmp_out, source.fps, audio=audio) as writer:
      for frame in render_stream(renderer, source, wav, emotions, opts, detector, stats=stats,
                                 progress=True, on_missing_error=no_face):
        writer.write(frame)
  seconds = time.perf_counter() - t0
  for w in stats.warnings(args.face):
    log(f"warning: {w}")
  return {"out": args.out, "frames": writer.num_frames, "faces": writer.num_frames * len(emotions),
          "seconds": seconds, "compilations": renderer.trace_count, "fps": source.fps,
          "compile_seconds": renderer.compile_seconds, "startup_seconds": startup, "stats": stats}


@cli_main
def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  s = run(args)
  st = s["stats"]
  print(f"wrote {s['out']}: {s['frames']} frames at {s['fps']:g} fps, {s['faces']} faces generated in "
        f"{s['seconds']:.1f} s ({s['faces'] / max(s['seconds'], 1e-9):.1f} faces/s end to end, after "
        f"a startup of {s['startup_seconds']:.1f} s with {s['compilations']} compilation of "
        f"{s['compile_seconds']:.1f} s); source frames: {st.found} with a face, "
        + (f"{st.between} between detections (--detect-every), " if st.between else "")
        + f"{st.interpolated} interpolated, {st.missing} passed through")
  return 0


if __name__ == "__main__":
  from emogen_jax.allocator import use_fast_allocator
  use_fast_allocator()  # may re-execute this command with tcmalloc preloaded
  sys.exit(main())
