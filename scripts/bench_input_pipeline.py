"""Input-pipeline throughput: our tf.data generator stream vs a loader built like the original's.

    python scripts/bench_input_pipeline.py --data-dir DATA --src VIDEOS [--batch 32] [--batches 30]

Both run on the same preprocessed clips (the train split of DATA, videos in VIDEOS for
the audio) and produce the same generator examples (10 face crops + 5 per-frame mels +
the SyncNet mel, augmented):

* ours: emogen_jax.data.input_pipeline (the training configuration: parallel clip reads,
  several windows per decoded clip, per-batch augmentation);
* naive: the original's design, per sample in Python: one JPEG file per frame on disk
  (written once here from the shards), a random clip and window, cv2.imread + resize of
  the 10 frames, the clip's wav loaded with librosa and its mel recomputed, per-frame
  augmentation with numpy/OpenCV, then stacked into a batch; measured in one process and
  in ``--naive-workers`` (2) worker processes that build whole batches, as a PyTorch
  DataLoader(num_workers=2) would (really run, not extrapolated).

Reported: examples/s (wall) of each, ours per core (wall examples/s / cores), examples per
CPU-second, and the wall ratios ours / naive (1 process and N processes). Wall figures
depend on other load on the machine (the load average is recorded); CPU-second figures
much less.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emogen_jax.errors import UserError, cli_main  # noqa: E402


def _cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def bench_ours(data_dir: str, batch: int, batches: int, warmup: int = 3) -> dict:
  from emogen_jax.data import input_pipeline as ip
  ip._hide_accelerators()
  ds, _ = ip.build_tf_dataset("generator", data_dir, "train", global_batch=batch, train=True, seed=0)
  it = ip.NumpyBatches(ds.prefetch(2))
  for _ in range(warmup):
    next(it)
  c0, t0 = _cpu(), time.perf_counter()
  for _ in range(batches):
    b = next(it)
  wall, cpu = time.perf_counter() - t0, _cpu() - c0
  it.close()
  assert b["target"].shape == (batch, 5, 96, 96, 3)
  n = batch * batches
  return {"examples": n, "wall_s": wall, "cpu_s": cpu, "examples_per_s": n / wall,
          "examples_per_cpu_s": n / cpu}


def export_naive_layout(data_dir: str, src: str, out: str) -> list:
  """The original's on-disk layout from our shards: out/<clip>/<i>.jpg + out/<clip>/audio.wav."""
  import tensorflow_datasets as tfds
  from emogen_jax.data import input_pipeline as ip
  from emogen_jax.data.media import ffmpeg_exe
  videos = {os.path.splitext(os.path.basename(p))[0]: p
            for p in glob.glob(os.path.join(src, "**", "*"), recursive=True)
            if os.path.splitext(p)[1].lower() in (".mp4", ".avi", ".mov", ".mkv", ".flv")}
  dirs = []
  for ex in tfds.as_numpy(ip.dataset_builder(data_dir).as_dataset(split="train")):
    cid = ex["clip_id"].decode()
    d = os.path.join(out, cid)
    dirs.append(d)
    if os.path.exists(os.path.join(d, "audio.wav")):
      continue
    if cid not in videos:
      raise UserError(f"clip {cid} of {data_dir} has no video in --src {src}; pass the preprocessed videos")
    os.makedirs(d, exist_ok=True)
    for i, jpg in enumerate(ex["frames"]):
      with open(os.path.join(d, f"{i}.jpg"), "wb") as f:
        f.write(jpg)
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", videos[cid], "-vn", "-ac", "1",
                    "-ar", "16000", "-acodec", "pcm_s16le", os.path.join(d, "audio.wav")], check=True)
  return dirs


def _naive_augment(frames: list, rng: random.Random) -> list:
  """Per-frame numpy/OpenCV augmentation with one parameter draw per example (uint8 BGR in/out)."""
  import cv2
  if rng.random() > 0.8:
    return frames
  fire = [rng.random() < 0.3 for _ in range(7)]
  a, b, g = rng.uniform(0.8, 1.2), rng.uniform(-0.2, 0.2), rng.uniform(0.8, 1.2)
  clip = rng.uniform(1, 4)
  dh, ds, dv = rng.uniform(-20, 20), rng.uniform(-50, 50), rng.uniform(-50, 50)
  perm = rng.sample(range(3), 3)
  shift = np.array([rng.uniform(-20, 20) for _ in range(3)], np.float32)
  sigma = rng.uniform(10, 50) ** 0.5
  noise = np.random.default_rng(rng.getrandbits(32)).normal(0, sigma, frames[0].shape).astype(np.float32)
  out = []
  for img in frames:
    if fire[0]:
      lab = cv2.cvtColor(img, cv2.COLOR_BGR2LAB)
      lab[:, :, 0] = cv2.createCLAHE(clip, (8, 8)).apply(np.ascontiguousarray(lab[:, :, 0]))
      img = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
    if fire[1]:
      hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.float32)
      hsv[..., 0] = np.mod(hsv[..., 0] + dh, 180)
      hsv[..., 1:] = np.clip(hsv[..., 1:] + (ds, dv), 0, 255)
      img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    x = img.astype(np.float32)
    if fire[2]:
      x = np.clip(x * a + 255 * b, 0, 255)
    if fire[3]:
      x = 255 * (x / 255) ** g
    if fire[4]:
      x = np.clip(x + shift, 0, 255)
    if fire[5]:
      x = x[..., perm]
    if fire[6]:
      x = np.clip(x + noise, 0, 255)
    out.append(x.astype(np.uint8))
  return out


def naive_example(dirs: list, rng: random.Random):
  """One generator example the original's way (Wav2Lip/EmoGen Dataset.__getitem__)."""
  import cv2
  import librosa
  from emogen_jax.data import audio
  while True:
    d = rng.choice(dirs)
    names = glob.glob(os.path.join(d, "*.jpg"))
    if len(names) <= 15:
      continue
    img, wrong = rng.choice(names), rng.choice(names)
    while wrong == img:
      wrong = rng.choice(names)
    f = int(os.path.basename(img)[:-4])
    g = int(os.path.basename(wrong)[:-4])
    window = [os.path.join(d, f"{i}.jpg") for i in range(f, f + 5)]
    wrong_window = [os.path.join(d, f"{i}.jpg") for i in range(g, g + 5)]
    if f < 1 or not all(os.path.isfile(p) for p in window + wrong_window):
      continue
    frames = [cv2.resize(cv2.imread(p), (96, 96)) for p in window + wrong_window]
    wav, _ = librosa.load(os.path.join(d, "audio.wav"), sr=audio.SAMPLE_RATE)
    mel = audio.melspectrogram(wav).T  # (T, 80), as the original
    start = int(80 * f / 25)
    if start + 16 > len(mel) or int(80 * (f + 3) / 25) + 16 > len(mel):
      continue
    sync_mel = mel[start:start + 16].T
    mels = np.stack([mel[int(80 * (f + i - 1) / 25):][:16].T for i in range(5)])
    frames = _naive_augment(frames, rng)
    x = np.asarray(frames, np.float32) / 255.0
    target, ref = x[:5], x[5:]
    face = np.concatenate([np.zeros_like(ref), ref], axis=-1)
    return {"frames": face, "mel": mels[..., None], "sync_mel": sync_mel[..., None], "target": target,
            "emotion": np.int32(0)}


def bench_naive(dirs: list, batch: int, examples: int) -> dict:
  rng = random.Random(0)
  naive_example(dirs, rng)  # imports and caches outside the timing
  n_batches = max(1, examples // batch)
  c0, t0 = _cpu(), time.perf_counter()
  for _ in range(n_batches):
    exs = [naive_example(dirs, rng) for _ in range(batch)]
    b = {k: np.stack([e[k] for e in exs]) for k in exs[0]}
  wall, cpu = time.perf_counter() - t0, _cpu() - c0
  assert b["target"].shape == (batch, 5, 96, 96, 3)
  n = n_batches * batch
  return {"examples": n, "wall_s": wall, "cpu_s": cpu, "examples_per_s": n / wall,
          "examples_per_cpu_s": n / cpu}


_WORKER: dict = {}


def _worker_init(dirs: list, ready) -> None:
  _WORKER["dirs"] = dirs
  naive_example(dirs, random.Random(-1))  # imports and caches outside the timing
  ready.put(os.getpid())


def _worker_batch(args) -> tuple:
  """One collated batch in a worker process (what a DataLoader worker does): (batch, CPU s)."""
  index, batch = args
  c0 = time.process_time()
  rng = random.Random(index)
  exs = [naive_example(_WORKER["dirs"], rng) for _ in range(batch)]
  b = {k: np.stack([e[k] for e in exs]) for k in exs[0]}
  return b, time.process_time() - c0


def bench_naive_workers(dirs: list, batch: int, examples: int, workers: int) -> dict:
  """The naive loader in ``workers`` processes, like torch DataLoader(num_workers=workers):
  each worker builds whole batches, the main process receives them (pickled through a pipe,
  where DataLoader would use shared memory: ~50 ms per 55 MB batch, small next to the ~1 s
  it takes to build one)."""
  import multiprocessing as mp
  ctx = mp.get_context("spawn")  # no fork of a process whose TF threads are running
  ready = ctx.Manager().Queue()
  n_batches = max(workers, examples // batch)
  with ctx.Pool(workers, initializer=_worker_init, initargs=(dirs, ready)) as pool:
    for _ in range(workers):
      ready.get(timeout=600)  # every worker warmed up
    t0 = time.perf_counter()
    cpu = 0.0
    for b, c in pool.imap(_worker_batch, [(i, batch) for i in range(n_batches)]):
      cpu += c
    wall = time.perf_counter() - t0
  assert b["target"].shape == (batch, 5, 96, 96, 3)
  n = n_batches * batch
  return {"workers": workers, "examples": n, "wall_s": wall, "cpu_s_in_workers": cpu,
          "examples_per_s": n / wall, "examples_per_cpu_s": n / cpu}


@cli_main
def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data-dir", required=True, help="preprocessed dataset (data_tools.preprocess)")
  p.add_argument("--src", required=True, help="the videos it was made from (for the naive loader's wavs)")
  p.add_argument("--work-dir", default=None, help="where the naive per-frame JPEGs go (default DATA/naive_layout)")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--batches", type=int, default=100, help="timed batches of our pipeline")
  p.add_argument("--naive-examples", type=int, default=128, help="timed examples of the 1-process naive loader")
  p.add_argument("--naive-workers", type=int, default=2,
                 help="worker processes of the multi-process naive loader (0: skip it)")
  p.add_argument("--json", default=None, help="also write the results here")
  args = p.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  work = args.work_dir or os.path.join(args.data_dir, "naive_layout")
  dirs = export_naive_layout(args.data_dir, args.src, work)
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  load_before = os.getloadavg()
  ours = bench_ours(args.data_dir, args.batch, args.batches)
  naive = bench_naive(dirs, args.batch, args.naive_examples)
  res = {
      "cores": cores, "batch": args.batch, "load_avg_before": load_before, "ours": ours,
      "naive": naive,
      "ours_examples_per_s_per_core_wall": ours["examples_per_s"] / cores,
      "ratio_wall_vs_naive_1proc": ours["examples_per_s"] / naive["examples_per_s"],
      "ratio_per_core_cpu": ours["examples_per_cpu_s"] / naive["examples_per_cpu_s"],
  }
  print(f"ours : {ours['examples_per_s']:8.1f} examples/s wall on {cores} cores "
        f"({res['ours_examples_per_s_per_core_wall']:.1f}/s per core), "
        f"{ours['examples_per_cpu_s']:.1f} examples per CPU-second")
  print(f"naive, 1 process: {naive['examples_per_s']:8.1f} examples/s wall, "
        f"{naive['examples_per_cpu_s']:.1f} examples per CPU-second")
  if args.naive_workers:
    multi = bench_naive_workers(dirs, args.batch, args.naive_examples * args.naive_workers,
                                args.naive_workers)
    res["naive_workers"] = multi
    res["ratio_wall_vs_naive_workers"] = ours["examples_per_s"] / multi["examples_per_s"]
    print(f"naive, {multi['workers']} worker processes: {multi['examples_per_s']:8.1f} examples/s wall")
  res["load_avg_after"] = os.getloadavg()
  print(f"ratio (wall): {res['ratio_wall_vs_naive_1proc']:.1f}x the 1-process naive loader"
        + (f", {res['ratio_wall_vs_naive_workers']:.1f}x the {args.naive_workers}-process one"
           if args.naive_workers else "")
        + f"; per CPU-second: {res['ratio_per_core_cpu']:.1f}x")
  print(json.dumps(res))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
