"""Share of frames with a face found by the Haar detector, without and with its fallback passes.

    python -m data_tools.make_synthetic --out /tmp/synth --actors 16 --clips-per-actor 12
    python scripts/bench_face_finding.py --corpus /tmp/synth

Sets: the clips of a synthetic corpus (every frame), and real photos shipped with scikit-image:
the 100 faces of its LFW subset (25x25, enlarged to 100x100 on a grey 160x160 canvas), its 100
non-faces (a face found there is a false positive), and the astronaut photo at 5 scales x 5
rotations x 3 brightnesses. "Before" is ``HaarDetector(fallbacks=())``; the fallbacks only run
where the first pass finds nothing, so "after" re-detects only those frames.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from emogen_jax.data import face_detection, video_io  # noqa: E402


def photo_sets() -> dict:
  from skimage import data
  def canvas(img):
    g = cv2.resize((img * 255).astype(np.uint8), (100, 100), interpolation=cv2.INTER_CUBIC)
    c = np.full((160, 160), 128, np.uint8)
    c[30:130, 30:130] = g
    return cv2.cvtColor(c, cv2.COLOR_GRAY2BGR)
  lfw = data.lfw_subset()
  astro = data.astronaut()[:, :, ::-1]
  variants = []
  for s in (0.3, 0.45, 0.6, 0.8, 1.0):
    for angle in (-20, -10, 0, 10, 20):
      for gain in (0.5, 1.0, 1.4):
        img = cv2.resize(astro, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 4), angle, 1.0)
        img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
        variants.append(np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8))
  return {"LFW faces": [canvas(x) for x in lfw[:100]], "LFW non-faces": [canvas(x) for x in lfw[100:]],
          "astronaut variants": variants}


def found_before_after(frames, before, after) -> tuple[int, int]:
  first = before.detect(frames)
  n_before = sum(b is not None for b in first)
  misses = [f for f, b in zip(frames, first) if b is None]
  return n_before, n_before + sum(b is not None for b in after.detect(misses))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--corpus", default=None, help="a make_synthetic folder of clips")
  p.add_argument("--max-clips", type=int, default=None)
  args = p.parse_args(argv)
  before = face_detection.HaarDetector(fallbacks=())
  after = face_detection.HaarDetector()
  print(f"load {open('/proc/loadavg').read().split()[:3]}")
  if args.corpus:
    clips = sorted(glob.glob(os.path.join(args.corpus, "*.mp4")))[:args.max_clips]
    total = b = a = clips_b = clips_a = 0
    t0 = time.perf_counter()
    for c in clips:
      frames = list(video_io.iter_video(c))
      nb, na = found_before_after(frames, before, after)
      total, b, a = total + len(frames), b + nb, a + na
      clips_b += nb < len(frames)
      clips_a += na < len(frames)
    print(f"synthetic corpus ({len(clips)} clips, {total} frames, {time.perf_counter() - t0:.0f} s): "
          f"frames with a face {b / total:.2%} ({total - b} missed, in {clips_b} clips) -> "
          f"{a / total:.2%} ({total - a} missed, in {clips_a} clips)")
  for name, frames in photo_sets().items():
    nb, na = found_before_after(frames, before, after)
    print(f"{name} ({len(frames)}): a face found in {nb} -> {na}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
