"""Peak memory of ``python -m emogen_jax.infer`` against the length of the input video.

    python scripts/bench_infer_memory.py                          # 30 s and 300 s of 720p at 25 fps
    python scripts/bench_infer_memory.py --seconds 30 --baseline-src /tmp/main_snapshot

For each length: a 1280x720 25 fps face video (skimage's astronaut drifting, written frame by
frame) and as much synthetic speech, then the CLI in a fresh process with a random generator of
``--width`` (default 0.125: the generator's cost is not what is measured, and it keeps the
5-minute run to minutes on a 2-core CPU; its weights are a constant few MB at any width). The
process tree's resident memory (the CLI and its ffmpeg) is sampled every 0.2 s; printed: the peak
of the sum, the CLI's own peak (VmHWM), the wall time and the ratio to the shortest length.
``--baseline-src`` runs another checkout (e.g. main before the stream) on the same inputs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests import _infer_fixtures as F  # noqa: E402  (the tests' random checkpoints and faces)


def write_video(path: str, seconds: float, fps: float, size=(720, 1280)) -> str:
  """A drifting face, written one frame at a time (the input itself is never held in memory)."""
  from emogen_jax.data import video_io
  base = F.face_image(size)
  with video_io.VideoWriter(path, fps) as w:
    for i in range(int(round(seconds * fps))):
      m = np.float32([[1, 0, round(12 * np.sin(i / 9.0))], [0, 1, round(8 * np.cos(i / 11.0))]])
      w.write(cv2.warpAffine(base, m, (size[1], size[0]), borderMode=cv2.BORDER_REPLICATE))
  return path


def _tree(pid: int) -> list[int]:
  out, todo = [], [pid]
  while todo:
    p = todo.pop()
    out.append(p)
    try:
      for t in os.listdir(f"/proc/{p}/task"):
        with open(f"/proc/{p}/task/{t}/children") as f:
          todo += [int(c) for c in f.read().split()]
    except OSError:
      pass
  return out


def _status_kb(pid: int, key: str) -> int:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith(key + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return 0


def run_measured(cmd: list[str], env: dict, cwd: str) -> dict:
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  peak_tree = peak_cli = 0
  while proc.poll() is None:
    peak_tree = max(peak_tree, sum(_status_kb(p, "VmRSS") for p in _tree(proc.pid)))
    peak_cli = max(peak_cli, _status_kb(proc.pid, "VmHWM"))
    time.sleep(0.2)
  out, err = proc.communicate()
  if proc.returncode != 0:
    raise SystemExit(f"infer failed: {err[-2000:]}")
  return {"tree_mb": peak_tree / 1024, "cli_mb": peak_cli / 1024, "wall": time.perf_counter() - t0,
          "log": (out + err).strip().splitlines()[-1]}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--seconds", type=float, nargs="+", default=[30.0, 300.0])
  p.add_argument("--fps", type=float, default=25.0)
  p.add_argument("--width", type=float, default=0.125, help="generator width (default 0.125)")
  p.add_argument("--baseline-src", default=None, help="another checkout, run on the shortest input")
  p.add_argument("--workdir", default=None, help="where the inputs go (default: a temporary folder)")
  p.add_argument("--box", type=int, nargs=4, default=None, metavar=("T", "B", "L", "R"),
                 help="a fixed face box instead of detection (detection holds a constant few frames; "
                      "skipping it makes the 5-minute run several times shorter on 2 cores)")
  args = p.parse_args(argv)
  with tempfile.TemporaryDirectory(prefix="bench_mem_", dir=args.workdir) as d:
    ckpt = F.make_generator_checkpoint(os.path.join(d, "gen"), width=args.width)
    print(f"720p at {args.fps:g} fps, generator width {args.width:g}; load "
          f"{open('/proc/loadavg').read().split()[:3]}", flush=True)
    first = None
    for seconds in sorted(args.seconds):
      video = write_video(os.path.join(d, f"face_{seconds:g}.mp4"), seconds, args.fps)
      speech = F.write_speech(os.path.join(d, f"speech_{seconds:g}.wav"), seconds)
      runs = [("stream", ROOT)]
      if args.baseline_src and seconds == min(args.seconds):
        runs.append(("baseline", args.baseline_src))
      for name, src in runs:
        env = dict(os.environ, PYTHONPATH=src, TF_CPP_MIN_LOG_LEVEL="2")
        box = ["--box", *map(str, args.box)] if args.box else []
        r = run_measured([sys.executable, "-m", "emogen_jax.infer", "--checkpoint", ckpt, "--face", video,
                          "--audio", speech, "--out", os.path.join(d, f"out_{name}.mp4"), *box], env, src)
        if name == "stream":
          first = first or r
        print(f"{seconds:6.0f} s {name:8s}: peak RSS {r['tree_mb']:7.0f} MiB (CLI + ffmpeg), CLI alone "
              f"{r['cli_mb']:7.0f} MiB ({r['cli_mb'] / first['cli_mb']:.2f}x the shortest stream run), "
              f"wall {r['wall']:.0f} s", flush=True)
        print(f"    {r['log'][:200]}", flush=True)
      os.remove(video)
  print(f"load after: {open('/proc/loadavg').read().split()[:3]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
