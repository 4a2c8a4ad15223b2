"""End-to-end inference speed and the paste-back seam, on a synthetic face clip.

    python scripts/bench_infer_e2e.py                              # widths 1.0 and 0.25, HAP and all
    python scripts/bench_infer_e2e.py --widths 0.25 --baseline-src /tmp/main_snapshot

Each run is ``python -m emogen_jax.infer`` in a fresh process on a SECONDS-long FPS clip (the face
of skimage's astronaut drifting, 480x360) with as much synthetic speech, a random generator of the
given width (no weights are downloaded). Printed per run: faces/s end to end (decode, detection,
generation, paste, encode; from the CLI's own log, the startup excluded), the startup (imports,
checkpoint, compile) as the CLI names it, and the process's wall time. ``--baseline-src`` runs
another checkout of the project (e.g. main before the stream) on the same inputs, in the same
invocation, for a ratio. ``--seam`` also prints the mean seam energy along the box border
(``metrics.seam_energy``) of the box and the feathered paste-back on the same frames.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests import _infer_fixtures as F  # noqa: E402  (the tests' random checkpoints and faces)


def make_inputs(d: str, seconds: float, fps: float) -> tuple[str, str]:
  from emogen_jax.data import video_io
  n = int(round(seconds * fps))
  video = video_io.write_video(os.path.join(d, "face.mp4"), F.face_frames(n, (360, 480)), fps) and \
      os.path.join(d, "face.mp4")
  return video, F.write_speech(os.path.join(d, "speech.wav"), seconds)


def run_cli(src: str, ckpt: str, video: str, speech: str, emotion: str, out: str,
            batch: int, extra: tuple = ()) -> dict:
  env = dict(os.environ, PYTHONPATH=src, TF_CPP_MIN_LOG_LEVEL="2")
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "emogen_jax.infer", "--checkpoint", ckpt, "--face", video,
                         "--audio", speech, "--emotion", emotion, "--out", out, "--batch-size",
                         str(batch), *extra], capture_output=True, text=True, env=env, cwd=src)
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    raise SystemExit(f"infer failed ({src}): {proc.stderr[-2000:]}")
  log = proc.stdout + proc.stderr
  rate = float(re.search(r"\(([\d.]+) faces/s", log).group(1))
  faces = int(re.search(r"(\d+) faces generated", log).group(1))
  m = re.search(r"startup ([\d.]+) s: (.*)", log)
  startup = m.group(0) if m else "startup not named"
  return {"faces": faces, "faces_per_s": rate, "wall": wall, "startup": startup}


def seam_figures(ckpt: str, video: str, speech: str) -> dict:
  """Mean seam energy over all output frames, box vs feathered paste, and the source's own."""
  from emogen_jax.data import video_io
  from emogen_jax.evaluation import metrics
  from emogen_jax.inference import renderer as infer
  from emogen_jax.inference.api import TalkingFace
  tf = TalkingFace.load(ckpt, batch_size=16)
  src, _ = video_io.read_video(video)
  boxes = infer.face_boxes_for(src, infer.FaceOptions(), tf.detector)
  out = {}
  for blend in infer.BLENDS:
    frames, _ = tf.generate(face=video, audio=speech, emotion="HAP", blend=blend, progress=False)
    out[blend] = float(np.mean([metrics.seam_energy(f, boxes[infer.pingpong_index(i, len(src))])
                                for i, f in enumerate(frames)]))
  out["source"] = float(np.mean([metrics.seam_energy(f, b) for f, b in zip(src, boxes)]))
  return out


def main(argv=None) -> int:
  from emogen_jax import onednn_conv
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25])
  p.add_argument("--emotions", nargs="+", default=["HAP", "all"])
  p.add_argument("--seconds", type=float, default=7.0)
  p.add_argument("--fps", type=float, default=30.0)
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--baseline-src", default=None, help="another checkout to time on the same inputs")
  p.add_argument("--seam", action="store_true", help="also measure the seam (smallest width)")
  p.add_argument("--cpu-convolutions", nargs="+", default=["auto"], choices=onednn_conv.CHOICES,
                 help="this checkout's CLI runs once per choice, in turn (--cpu-convolutions); "
                      "the baseline runs with its defaults")
  args = p.parse_args(argv)
  with tempfile.TemporaryDirectory(prefix="bench_infer_") as d:
    video, speech = make_inputs(d, args.seconds, args.fps)
    print(f"clip: {args.seconds:g} s at {args.fps:g} fps, 480x360; load {open('/proc/loadavg').read().split()[:3]}")
    for width in args.widths:
      ckpt = F.make_generator_checkpoint(os.path.join(d, f"gen_{width}"), width=width)
      for emotion in args.emotions:
        runs = [(f"stream ({c})" if len(args.cpu_convolutions) > 1 or c != "auto" else "stream", ROOT,
                 ("--cpu-convolutions", c) if c != "auto" else ()) for c in args.cpu_convolutions]
        runs += [("baseline", args.baseline_src, ())] if args.baseline_src else []
        for i, (name, src, extra) in enumerate(runs):
          r = run_cli(src, ckpt, video, speech, emotion, os.path.join(d, f"out_{i}.mp4"),
                      args.batch_size, extra)
          print(f"width {width:g} emotion {emotion:3s} {name:8s}: {r['faces']} faces, "
                f"{r['faces_per_s']:.2f} faces/s end to end, process wall {r['wall']:.1f} s; {r['startup']}",
                flush=True)
    if args.seam:
      width = min(args.widths)
      s = seam_figures(os.path.join(d, f"gen_{width}"), video, speech)
      print(f"seam energy along the box border (width {width:g}, random generator): box "
            f"{s['box']:.2f}, feather {s['feather']:.2f}, the source frames themselves {s['source']:.2f}")
  print(f"load after: {open('/proc/loadavg').read().split()[:3]}")
  return 0


if __name__ == "__main__":
  from emogen_jax.allocator import use_fast_allocator
  use_fast_allocator()  # may re-execute this command with tcmalloc preloaded
  sys.exit(main())
