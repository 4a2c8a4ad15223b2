"""Audio/video sync check of a preprocessed dataset with the expert SyncNet.

    python -m emogen_jax.sync_check --data-dir DATA --syncnet EXPERT [--split all] [--out DIR]

For every clip: the SyncNet's face embedding of each 5-frame window and audio embedding of each
mel window, then the syncnet_python offset search (``emogen_jax.evaluation.metrics.lse``, +-15 frames).
A clip is flagged when its best offset is not 0 or its confidence (median - minimum of the
distance curve) is below ``--min-confidence``. Writes ``sync_check.csv`` (one row per clip) and
``sync_check.json`` (summary + rows) and prints a summary with what to do.

Why this matters: if the audio of many clips is shifted against the picture (a wrong fps
conversion, a container audio delay), the "in sync" training pairs are not in sync, and the
expert's loss sits at ln 2 = 0.69 (chance) for a long time or for good.
An untrained expert gives near-zero confidences everywhere; the check needs a trained one.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import sys
from typing import Callable

import numpy as np

from emogen_jax.data.emotions import EMOTIONS
from emogen_jax.data import files
from emogen_jax.data import timing
from emogen_jax.errors import ArgumentParser, UserError, cli_main
from emogen_jax.evaluation import evaluate as ev
from emogen_jax.evaluation import metrics

# Our embeddings are L2-normalised (distances in [0, 2]); a trained expert separates the best
# shift from the rest by a few tenths. Below this the curve is too flat to trust its minimum.
DEFAULT_MIN_CONFIDENCE = 0.05


def check_clip(embed: Callable, clip: dict, vshift: int = metrics.DEFAULT_VSHIFT) -> dict:
  """One clip's sync report: offset (frames; > 0 = picture lags sound), LSE-D, confidence."""
  video_emb, audio_emb = embed(clip["frames"], clip["mel"])
  res = metrics.lse(video_emb, audio_emb, vshift=vshift)
  return {"clip_id": clip["clip_id"], "split": clip.get("split", ""),
          "emotion": EMOTIONS[clip["emotion"]] if "emotion" in clip else "",
          "frames": int(len(clip["frames"])), "windows": int(len(video_emb)),
          "offset": int(res.offset), "min_dist": float(res.min_dist),
          "confidence": float(res.confidence)}


def summarize(rows: list[dict], min_confidence: float, skipped: list[str]) -> dict:
  """Counts, the offset histogram and the advice printed to the user."""
  n = len(rows)
  offsets = np.array([r["offset"] for r in rows]) if rows else np.zeros((0,), int)
  confs = np.array([r["confidence"] for r in rows]) if rows else np.zeros((0,))
  off = offsets != 0
  low = confs < min_confidence
  hist = collections.Counter(int(o) for o in offsets)
  advice = []
  if n and np.median(confs) < min_confidence:
    advice.append(f"median confidence {np.median(confs):.3f} < {min_confidence}: the SyncNet looks "
                  "untrained (or is not a lip-sync expert); this check needs a trained expert")
  elif n and off.mean() > 0.2:
    common, count = max(((o, c) for o, c in hist.items() if o != 0), key=lambda t: t[1],
                        default=(0, 0))
    direction = "picture lags the sound" if common > 0 else "sound lags the picture"
    advice.append(f"{100 * off.mean():.0f} % of clips are off sync; most common offset {common:+d} "
                  f"frames ({count} clips, {direction} by {abs(common) * 40} ms). A shift shared by "
                  "many clips points at the conversion (fps, audio delay): re-convert the videos to "
                  "25 fps (python -m data_tools.convert_fps) and preprocess again; misaligned "
                  "training pairs keep the expert's loss at 0.69")
  elif n:
    advice.append("the dataset looks in sync; if the expert's loss still sits at 0.69, train "
                  "longer or check the learning rate/batch size before the data")
  return {"clips": n, "off_sync": int(off.sum()), "low_confidence": int(low.sum()),
          "flagged": int((off | low).sum()), "skipped_too_short": len(skipped),
          "skipped_clip_ids": skipped, "offset_histogram": {str(k): v for k, v in sorted(hist.items())},
          "median_confidence": float(np.median(confs)) if n else None,
          "mean_min_dist": float(np.mean([r["min_dist"] for r in rows])) if n else None,
          "min_confidence": min_confidence, "advice": advice}


def run(data_dir: str, syncnet: str, split: str = "all", out: str | None = None,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE, max_clips: int | None = None,
        vshift: int = metrics.DEFAULT_VSHIFT, embed: Callable | None = None,
        progress: bool = True) -> dict:
  """Checks every clip; writes the CSV/JSON report into ``out`` (default DATA/sync_check)."""
  from tqdm import tqdm
  if max_clips is not None and max_clips < 1:
    raise UserError(f"--max-clips must be at least 1, got {max_clips}")
  if vshift < 1:
    raise UserError(f"--vshift must be at least 1 (offsets -vshift..vshift frames are searched), "
                    f"got {vshift}")
  out = files.check_output_dir(out or os.path.join(data_dir, "sync_check"), "--out",
                               "sync check report folder")
  ev.split_names(data_dir, split)  # a bad data dir or split fails here, before any model loads
  if embed is None:
    net = ev.load_syncnet(syncnet)
    embed = lambda frames, mel: ev.sync_embeddings(net, frames, mel)
  rows, skipped = [], []
  for clip in tqdm(ev.iter_clips(data_dir, split, max_clips), desc="sync check", unit="clip",
                   disable=not progress, file=sys.stderr):
    n = min(len(clip["frames"]) - ev.WINDOW + 1,
            timing.num_mel_frames(len(clip["frames"]), clip["mel"].shape[1]))
    if n < 1:
      skipped.append(clip["clip_id"])
      continue
    row = check_clip(embed, clip, vshift)
    row["flag"] = ";".join(([f"offset {row['offset']:+d}"] if row["offset"] else [])
                           + (["low confidence"] if row["confidence"] < min_confidence else []))
    rows.append(row)
  if not rows:
    raise UserError(f"no clip of split {split!r} in {data_dir} is long enough for a SyncNet window")
  summary = summarize(rows, min_confidence, skipped)
  fields = ["clip_id", "split", "emotion", "frames", "windows", "offset", "min_dist", "confidence",
            "flag"]
  table = io.StringIO()
  w = csv.DictWriter(table, fieldnames=fields)
  w.writeheader()
  w.writerows(rows)
  with files.made_dirs(out):
    files.write_file(os.path.join(out, "sync_check.csv"), table.getvalue())
    files.write_file(os.path.join(out, "sync_check.json"), json.dumps(
        {"summary": summary, "syncnet": syncnet, "split": split, "vshift": vshift, "clips": rows},
        indent=2))
  summary["out"] = out
  return summary


def _parser() -> ArgumentParser:
  p = ArgumentParser(prog="python -m emogen_jax.sync_check",
                              description="Estimate the audio/video offset of every clip of a "
                                          "preprocessed dataset with the expert SyncNet.")
  p.add_argument("--data-dir", required=True, help="preprocessed dataset (data_tools.preprocess)")
  p.add_argument("--syncnet", required=True, help="expert SyncNet: training workdir or checkpoint")
  p.add_argument("--split", default="all", help="train, validation, test or all (default all)")
  p.add_argument("--out", default=None, help="report folder (default DATA_DIR/sync_check)")
  p.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE,
                 help=f"flag clips whose confidence is below this (default {DEFAULT_MIN_CONFIDENCE})")
  p.add_argument("--max-clips", type=int, default=None)
  p.add_argument("--vshift", type=int, default=metrics.DEFAULT_VSHIFT,
                 help="offsets searched: -vshift..vshift frames (default 15)")
  return p


@cli_main
def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  from emogen_jax.models import checkpoints
  syncnet = checkpoints.resolve_checkpoint(args.syncnet)
  s = run(files.user_path(args.data_dir), syncnet, args.split, args.out, args.min_confidence, args.max_clips,
          args.vshift)
  print(f"checked {s['clips']} clips ({s['skipped_too_short']} too short for a window, skipped): "
        f"{s['off_sync']} with best offset != 0, {s['low_confidence']} with confidence < "
        f"{s['min_confidence']}; median confidence {s['median_confidence']:.3f}")
  print(f"offsets (frames: clips): {s['offset_histogram']}")
  for line in s["advice"]:
    print(f"-> {line}")
  print(f"report: {os.path.join(s['out'], 'sync_check.csv')} and sync_check.json")
  return 0


if __name__ == "__main__":
  from emogen_jax.allocator import use_fast_allocator
  use_fast_allocator()  # may re-execute this command with tcmalloc preloaded
  sys.exit(main())
