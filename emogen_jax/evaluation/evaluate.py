"""Evaluation of a generator on a preprocessed split: PSNR, SSIM, LSE-D/LSE-C, EmoAcc, FID.

    python -m emogen_jax.evaluate --checkpoint CKPT --data-dir DATA --out eval/ \\
        [--split test] [--syncnet S] [--emotion-classifier E] [--inception F] [--max-clips N]

Each test clip is regenerated frame by frame exactly as the inference CLI does it (same core:
``emogen_jax.inference.renderer.Renderer``): generator input [zeros, the frame's own crop], mel window of
frame f from int(80 * f / 25), the clip's own emotion. Against the ground-truth crops (96x96):

* PSNR and SSIM (skimage) over the frames where the preprocessing found a face;
* LSE-D / LSE-C with a SyncNet (``--syncnet``, ours or converted), the syncnet_python protocol
  (``emogen_jax.evaluation.metrics.lse``: offset search over +-15 frames, mean distance at the best offset,
  confidence = median - minimum), per clip, averaged over clips; the ground truth's values are
  reported too as the reference point. Our SyncNet's embeddings are L2-normalised, so the numbers
  are on a different scale than syncnet_python's (the paper's LSE-C 6.663 is not comparable);
* EmoAcc (``--emotion-classifier``, an EmotionDiscriminator checkpoint): every clip is generated
  with each of the six target emotions; a clip counts as recognised when the classifier's mean
  softmax over its 5-frame windows peaks at the target; the classifier's accuracy on the real
  clips is reported as its own reference. ``--independent-classifier`` scores the same clips
  with a second one the generator never trained against (another configs/emotion_disc.py run,
  its own seed and stream): the honest figure, since the generator's emotion loss was fitted to
  the first. ``--emotion-frames N`` scores emotions on each clip's first N frames only (the
  eleven extra generations per clip are most of the evaluation's time; PSNR/SSIM/LSE keep the
  whole clip). Each classifier also gets the NEUTRAL-reference EmoAcc, the case users have: the
  reference frames come from the same actor's neutral clip (its first NEU clip in the split)
  and the label asks for each of the six emotions (clips of actors without one are counted
  under ``neutral_reference_missing``);
* FID (``--inception``, Keras InceptionV3 "notop" weights, e.g.
  inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5): 2048-d pool features of generated
  vs real crops (resized to 299, RGB); otherwise "not computed".

Writes ``metrics.json`` and ``metrics.md`` into ``--out``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Callable, Iterator

import cv2
import numpy as np

from emogen_jax.data.emotions import EMOTIONS
from emogen_jax.data import files
from emogen_jax.data import timing
from emogen_jax.errors import ArgumentParser, UserError, cli_main
from emogen_jax.evaluation import metrics
from emogen_jax.inference import renderer as infer
from emogen_jax.inference.stream import ordered_map
from emogen_jax.models import checkpoints

WINDOW = timing.FRAMES_PER_WINDOW  # frames per SyncNet / emotion-classifier window
FID_NOT_COMPUTED = "not computed (no Inception weights; --inception)"


# ---------------------------------------------------------------------------- data


def split_names(data_dir: str, split: str) -> list[str]:
  """The split names to read: one, or every non-empty one for "all"."""
  from emogen_jax.data import input_pipeline
  info = input_pipeline.dataset_info(data_dir)
  avail = {k: v for k, v in info["splits"].items() if v > 0}
  if split == "all":
    return sorted(avail)
  if split not in avail:
    listing = ", ".join(f"{k}={v}" for k, v in info["splits"].items()) or "none"
    raise UserError(f"split {split!r} of {data_dir} is empty or missing (clips per split: "
                    f"{listing}); pick another --split")
  return [split]


def iter_clips(data_dir: str, split: str, max_clips: int | None = None) -> Iterator[dict]:
  """Whole clips of the preprocessed dataset, in dataset order (deterministic).

  Yields {"clip_id": str, "frames": (N, 96, 96, 3) uint8 BGR, "valid": (N,) bool,
  "mel": (80, T) float32, "emotion": int, "split": str, "actor": str}; with split "all" a clip present in two
  splits (the random protocol's validation == test) is read once.
  """
  from emogen_jax.data import input_pipeline
  seen = set()
  count = 0
  for name in split_names(data_dir, split):
    for ex in input_pipeline.read_clips(data_dir, name).as_numpy_iterator():
      cid = ex["clip_id"].decode() if isinstance(ex["clip_id"], bytes) else str(ex["clip_id"])
      if cid in seen:
        continue
      seen.add(cid)
      # OpenCV wrote BGR crops; its decoder gives them back as BGR.
      frames = np.stack([cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
                         for b in ex["frames"]])
      yield {"clip_id": cid, "frames": frames, "valid": np.asarray(ex["valid"], bool),
             "mel": np.asarray(ex["mel"], np.float32), "emotion": int(ex["emotion"]), "split": name,
             "actor": ex["actor"].decode() if isinstance(ex["actor"], bytes) else str(ex["actor"])}
      count += 1
      if max_clips is not None and count >= max_clips:
        return


def neutral_references(data_dir: str, split: str) -> dict[str, dict]:
  """{actor: {"clip_id", "frames"}}: each actor's first neutral (NEU) clip of the split, the
  reference frames of the neutral-reference EmoAcc (only those clips' JPEGs are decoded)."""
  from emogen_jax.data import input_pipeline
  neutral = EMOTIONS.index("NEU")
  out: dict[str, dict] = {}
  for name in split_names(data_dir, split):
    for ex in input_pipeline.read_clips(data_dir, name).as_numpy_iterator():
      actor = ex["actor"].decode()
      if int(ex["emotion"]) != neutral or actor in out:
        continue
      frames = np.stack([cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
                         for b in ex["frames"]])
      out[actor] = {"clip_id": ex["clip_id"].decode(), "frames": frames}
  return out


def emotion_scores(pred: list[int], target: list[int]) -> dict:
  """EmoAcc overall, per target emotion and the confusion matrix (rows: target)."""
  pred, target = np.asarray(pred), np.asarray(target)
  return {"emo_acc": metrics.accuracy(pred, target),
          "emo_acc_per_target": {EMOTIONS[e]: metrics.accuracy(pred[target == e], target[target == e])
                                 for e in range(len(EMOTIONS))},
          "emo_confusion": metrics.confusion_matrix(pred, target, len(EMOTIONS)).tolist()}


def lower_half_windows(frames: np.ndarray) -> np.ndarray:
  """(N, 96, 96, 3) uint8 -> (N - 4, 48, 96, 15) float32 in [0, 1]: lower halves of frames f..f+4
  stacked frame-major on channels (channel 3*t+c), SyncNet's face input for window f."""
  n = len(frames) - WINDOW + 1
  half = frames[:, frames.shape[1] // 2:].astype(np.float32) / 255.0
  return np.stack([np.concatenate(list(half[f:f + WINDOW]), axis=-1) for f in range(max(n, 0))]) \
      if n > 0 else np.zeros((0, 48, 96, 15), np.float32)


# ---------------------------------------------------------------------------- models


class FixedBatch:
  """Applies a jitted function in batches of one fixed size (padding the last), so it compiles once."""

  def __init__(self, fn: Callable, batch_size: int):
    import jax
    self.batch_size = batch_size
    self.trace_count = 0

    def counted(*args):
      self.trace_count += 1
      return fn(*args)

    self._fn = jax.jit(counted)
    self._compiled = False
    self._lock = threading.Lock()

  def _apply(self, chunk):
    if self._compiled:
      return self._fn(*chunk)
    with self._lock:  # evaluation threads share it: the first call compiles, once
      res = self._fn(*chunk)
      self._compiled = True
    return res

  def __call__(self, *arrays):
    n = len(arrays[0])
    b = self.batch_size
    outs = []
    for s in range(0, n, b):
      chunk = [a[s:s + b] for a in arrays]
      k = len(chunk[0])
      chunk = [np.concatenate([c, np.zeros((b - k,) + c.shape[1:], c.dtype)]) if k < b else c
               for c in chunk]
      res = self._apply(chunk)
      outs.append([np.asarray(r)[:k] for r in (res if isinstance(res, tuple) else (res,))])
    if not outs:
      raise ValueError("nothing to apply the function to")
    cat = [np.concatenate(parts) for parts in zip(*outs)]
    return tuple(cat) if len(cat) > 1 else cat[0]


def load_syncnet(checkpoint: str, batch_size: int = 32) -> FixedBatch:
  """A function (mel (B,80,16,1), faces (B,48,96,15)) -> (audio_emb, face_emb), inference mode."""
  model, variables, _ = checkpoints.load(checkpoint, "syncnet")
  return FixedBatch(lambda mel, faces: model.apply(variables, mel, faces, train=False), batch_size)


def load_emotion_classifier(checkpoint: str, batch_size: int = 16) -> FixedBatch:
  """A function (video (B,5,96,96,3) float in [0,1], BGR as in training) -> logits (B,6)."""
  model, variables, _ = checkpoints.load(checkpoint, "emotion_disc")
  return FixedBatch(lambda video: model.apply(variables, video), batch_size)


def sync_embeddings(syncnet: FixedBatch, frames: np.ndarray, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(video_emb, audio_emb) of every 5-frame window f (face frames f..f+4, mel window of f)."""
  n = min(len(frames) - WINDOW + 1, timing.num_mel_frames(len(frames), mel.shape[1]))
  if n < 1:
    raise ValueError(f"clip too short for a SyncNet window ({len(frames)} frames)")
  faces = lower_half_windows(frames[:n + WINDOW - 1])
  a, v = syncnet(timing.mel_windows(mel, n)[..., None], faces)
  return v, a


def clip_windows(frames: np.ndarray) -> np.ndarray:
  """(N, 96, 96, 3) uint8 -> (N // 5, 5, 96, 96, 3) float32 [0, 1]: non-overlapping 5-frame windows."""
  k = len(frames) // WINDOW
  return frames[:k * WINDOW].reshape((k, WINDOW) + frames.shape[1:]).astype(np.float32) / 255.0


def classify_clip(classifier: FixedBatch, frames: np.ndarray) -> int:
  """The classifier's label for a clip: argmax of the mean softmax over its 5-frame windows."""
  return classify_clips(classifier, [frames])[0]


def classify_clips(classifier: FixedBatch, clips: list[np.ndarray]) -> list[int]:
  """``classify_clip`` of each clip, all their windows in one call: a clip of 25 frames is 5
  windows, so one call per clip would fill a classifier batch of 16 a third and waste the rest."""
  windows = [clip_windows(frames) for frames in clips]
  logits = np.asarray(classifier(np.concatenate(windows)), np.float64)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  bounds = np.cumsum([0] + [len(w) for w in windows])
  return [int(np.argmax(p[a:b].mean(0))) for a, b in zip(bounds[:-1], bounds[1:])]


def render_labels(renderer, mels: np.ndarray, frames: np.ndarray, labels) -> list[np.ndarray]:
  """The clip generated once per label in ``labels``, all in one renderer call (the generator
  batch is filled across labels instead of padding the last batch of each)."""
  k = len(mels)
  out = renderer(np.concatenate([mels] * len(labels)), np.concatenate([frames] * len(labels)),
                 np.repeat(np.asarray(labels, np.int32), k))
  return [out[i * k:(i + 1) * k] for i in range(len(labels))]


class InceptionFeatures:
  """2048-d average-pool features of Keras InceptionV3 from a local "notop" weights file."""

  def __init__(self, weights: str, batch_size: int = 32):
    if not os.path.isfile(weights):
      raise UserError(f"Inception weights {weights!r} not found; give Keras InceptionV3 'notop' "
                      "weights (inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5)")
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # keep TensorFlow off the accelerator JAX uses
    import keras
    try:
      self.model = keras.applications.InceptionV3(include_top=False, weights=weights,
                                                  pooling="avg", input_shape=(299, 299, 3))
    except Exception as e:
      raise UserError(f"cannot load Inception weights {weights!r} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); expected Keras InceptionV3 "
                      "notop weights") from None
    self.batch_size = batch_size

  def __call__(self, crops_bgr: np.ndarray) -> np.ndarray:
    feats = []
    for s in range(0, len(crops_bgr), self.batch_size):
      x = np.stack([cv2.resize(c, (299, 299), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
                    for c in crops_bgr[s:s + self.batch_size]]).astype(np.float32)
      x = x / 127.5 - 1.0  # InceptionV3's preprocess_input
      feats.append(np.asarray(self.model(x, training=False)))
    return np.concatenate(feats).astype(np.float64)


# ---------------------------------------------------------------------------- evaluation


# Clips scored at once, each in its own thread: at the quickstart's width (0.25) one generator
# call at a time leaves a core a third idle (the host work between calls, small kernels); two
# calls at once generate 1.4x the frames per second, bit-identical (docs/design.md "CPU speed").
EVAL_THREADS = 2


def evaluate(checkpoint: str, data_dir: str, split: str = "test", syncnet: str | None = None,
             emotion_classifier: str | None = None, inception: str | None = None,
             max_clips: int | None = None, batch_size: int = 16, vshift: int = metrics.DEFAULT_VSHIFT,
             progress: bool = True, independent_classifier: str | None = None,
             emotion_frames: int | None = None) -> dict:
  """All metrics as a JSON-able dict (see the module docstring). emotion_frames: EmoAcc over each
  clip's first ``emotion_frames`` frames (None: the whole clip)."""
  from tqdm import tqdm
  if emotion_frames is not None and emotion_frames < WINDOW:
    raise UserError(f"emotion_frames={emotion_frames}: the emotion classifier needs at least one "
                    f"{WINDOW}-frame window")
  split_names(data_dir, split)  # a bad data dir or split fails here, before any model loads
  model, variables, meta = infer.load_generator(checkpoint)
  renderer = infer.Renderer(model, variables, batch_size)
  sync_fn = load_syncnet(syncnet) if syncnet else None
  # name -> (classifier, its checkpoint); "" names the in-training one (the historical keys)
  judges = {name: (load_emotion_classifier(path), path) for name, path in
            (("", emotion_classifier), ("_independent", independent_classifier)) if path}
  neutral = neutral_references(data_dir, split) if judges else {}
  emo = {name: {"pred": [], "target": [], "real": [], "neutral_pred": [], "neutral_target": []}
         for name in judges}
  neutral_missing = []
  incep = InceptionFeatures(inception) if inception else None

  def score_clip(clip: dict) -> dict:
    """One clip's figures (generation and classification; no shared state is written)."""
    n = timing.num_mel_frames(len(clip["frames"]), clip["mel"].shape[1])
    if n < WINDOW:
      return {"skipped": "too_short"}
    gt = clip["frames"][:n]
    valid = clip["valid"][:n]
    if not valid.any():
      return {"skipped": "no_valid_frame"}
    mels = timing.mel_windows(clip["mel"], n)
    gen = renderer(mels, gt, np.full((n,), clip["emotion"], np.int32))
    out = {"n": n, "no_face": int((~valid).sum()), "psnr": metrics.psnr(gen[valid], gt[valid]),
           "ssim": metrics.ssim(gen[valid], gt[valid]), "weight": int(valid.sum())}
    if sync_fn is not None:
      out["sync_gen"] = metrics.lse(*sync_embeddings(sync_fn, gen, clip["mel"]), vshift=vshift).as_dict()
      out["sync_gt"] = metrics.lse(*sync_embeddings(sync_fn, gt, clip["mel"]), vshift=vshift).as_dict()
    if judges:
      k = n if emotion_frames is None else min(n, emotion_frames)
      # the clip's own label is the generation above; the five others in one call
      others = iter(render_labels(renderer, mels[:k], gt[:k],
                                  [e for e in range(len(EMOTIONS)) if e != clip["emotion"]]))
      outs = [gen[:k] if e == clip["emotion"] else next(others) for e in range(len(EMOTIONS))]
      ref = neutral.get(clip["actor"])
      out["neutral_missing"] = ref is None or ref["clip_id"] == clip["clip_id"]
      neutral_outs = [] if out["neutral_missing"] else render_labels(
          # the neutral clip's frames, looped to this clip's length
          renderer, mels[:k], ref["frames"][np.arange(k) % len(ref["frames"])], range(len(EMOTIONS)))
      out["k"] = k
      # per classifier: the real clip, the six labels' clips, then the neutral-reference ones
      out["labels"] = {name: classify_clips(fn, [gt[:k]] + outs + neutral_outs)
                       for name, (fn, _) in judges.items()}
    if incep is not None:
      out["feats"] = (incep(gen[valid]), incep(gt[valid]))
    return out

  psnrs, ssims, weights = [], [], []
  sync_gen, sync_gt = [], []
  real_target = []
  feats_gen, feats_real = [], []
  skipped = {"too_short": [], "no_valid_frame": []}
  frames_total = frames_no_face = emotion_frames_total = 0
  clips = 0
  t0 = time.perf_counter()
  scored = ordered_map(score_clip, iter_clips(data_dir, split, max_clips), workers=EVAL_THREADS)
  for clip, r in tqdm(scored, desc="evaluating", unit="clip", disable=not progress, file=sys.stderr):
    if "skipped" in r:
      skipped[r["skipped"]].append(clip["clip_id"])
      continue
    clips += 1
    frames_total += r["n"]
    frames_no_face += r["no_face"]
    psnrs.append(r["psnr"])
    ssims.append(r["ssim"])
    weights.append(r["weight"])
    if sync_fn is not None:
      sync_gen.append(r["sync_gen"])
      sync_gt.append(r["sync_gt"])
    if judges:
      real_target.append(clip["emotion"])
      if r["neutral_missing"]:
        neutral_missing.append(clip["clip_id"])
      emotion_frames_total += r["k"]
      six = len(EMOTIONS)
      for name, labels in r["labels"].items():
        e = emo[name]
        e["real"].append(labels[0])
        e["pred"] += labels[1:1 + six]
        e["target"] += list(range(six))
        e["neutral_pred"] += labels[1 + six:]
        e["neutral_target"] += list(range(len(labels) - 1 - six))
    if incep is not None:
      feats_gen.append(r["feats"][0])
      feats_real.append(r["feats"][1])
  seconds = time.perf_counter() - t0
  if clips == 0:
    raise UserError(f"no clip of split {split!r} in {data_dir} could be evaluated "
                    f"(too short: {len(skipped['too_short'])}, no face: {len(skipped['no_valid_frame'])})")

  finite = [p for p in psnrs if np.isfinite(p)]
  result = {
      "checkpoint": os.path.abspath(checkpoint),
      "generator_width": float(meta.get("width", 1.0)),
      "data_dir": os.path.abspath(data_dir),
      "split": split,
      "clips": clips,
      "frames": frames_total,
      "frames_without_face_excluded_from_psnr_ssim": frames_no_face,
      "skipped_clips": {k: len(v) for k, v in skipped.items()},
      "skipped_clip_ids": skipped,
      # PSNR: frame-count-weighted mean of per-clip PSNR (identical clips give inf).
      "psnr": (float(np.average(finite, weights=[w for p, w in zip(psnrs, weights) if np.isfinite(p)]))
               if len(finite) == len(psnrs) else float("inf")),
      "ssim": float(np.average(ssims, weights=weights)),
      "seconds": seconds,
  }
  if sync_fn is not None:
    for name, rows in (("generated", sync_gen), ("ground_truth", sync_gt)):
      result[f"lse_{name}"] = {
          "lse_d": float(np.mean([r["lse_d"] for r in rows])),
          "lse_c": float(np.mean([r["lse_c"] for r in rows])),
          "offset_zero_fraction": float(np.mean([r["offset"] == 0 for r in rows])),
          "median_abs_offset": float(np.median([abs(r["offset"]) for r in rows])),
      }
    result["lse_d"] = result["lse_generated"]["lse_d"]
    result["lse_c"] = result["lse_generated"]["lse_c"]
    result["syncnet"] = os.path.abspath(syncnet)
    result["lse_vshift"] = vshift
  else:
    result["lse_d"] = result["lse_c"] = "not computed (no SyncNet; --syncnet)"
  for name, (_, path) in judges.items():
    r = emo[name]
    result.update({f"{k}{name}": v for k, v in emotion_scores(r["pred"], r["target"]).items()})
    result[f"classifier_acc_on_real{name}"] = metrics.accuracy(np.array(r["real"]),
                                                                np.array(real_target))
    result[f"emotion_classifier{name}"] = os.path.abspath(path)
    if r["neutral_pred"]:
      result.update({f"{k}{name}_neutral_reference": v for k, v in
                     emotion_scores(r["neutral_pred"], r["neutral_target"]).items()})
  if judges:
    # what EmoAcc averages: the first emotion_frames frames of each clip (None: whole clips)
    result["emotion_frames_per_clip"] = emotion_frames
    result["emotion_frames"] = emotion_frames_total
    result["neutral_reference_clips"] = clips - len(neutral_missing)
    result["neutral_reference_missing"] = neutral_missing
  if "" not in judges:  # an independent classifier alone still scores its own keys
    result["emo_acc"] = "not computed (no emotion classifier; --emotion-classifier)"
  if incep is not None:
    fg, fr = np.concatenate(feats_gen), np.concatenate(feats_real)
    if len(fg) < 2:
      result["fid"] = "not computed (fewer than 2 frames)"
    else:
      result["fid"] = metrics.fid_from_features(fg, fr)
      result["fid_frames"] = int(len(fg))
  else:
    result["fid"] = FID_NOT_COMPUTED
  result["compilations"] = {"generator": renderer.trace_count,
                            **({"syncnet": sync_fn.trace_count} if sync_fn else {}),
                            **{f"emotion_classifier{k}": fn.trace_count for k, (fn, _) in judges.items()}}
  return result


def _fmt(v) -> str:
  if isinstance(v, float):
    return "inf" if v == float("inf") else f"{v:.4f}"
  return str(v)


def to_markdown(r: dict) -> str:
  """The headline metrics as a markdown table (with the published numbers where they exist)."""
  rows = [
      ("PSNR (dB)", r["psnr"], "-"),
      ("SSIM", r["ssim"], "-"),
      ("LSE-D", r["lse_d"], "-"),
      ("LSE-C", r["lse_c"], "6.663 (syncnet_python scale)"),
      ("EmoAcc", f"{100 * r['emo_acc']:.1f} %" if isinstance(r["emo_acc"], float) else r["emo_acc"],
       "83.2 %"),
      ("FID", r["fid"], "5.29"),
  ]
  lines = [f"# Evaluation of {r['checkpoint']}", "",
           f"Split `{r['split']}` of `{r['data_dir']}`: {r['clips']} clips, {r['frames']} frames "
           f"({r['frames_without_face_excluded_from_psnr_ssim']} without a detected face left out of "
           f"PSNR/SSIM); skipped clips: {r['skipped_clips']}.", "",
           "| metric | value | published (CREMA-D) |", "|---|---|---|"]
  lines += [f"| {name} | {_fmt(v)} | {pub} |" for name, v, pub in rows]
  if "lse_ground_truth" in r:
    g = r["lse_ground_truth"]
    lines += ["", f"Ground-truth clips with the same SyncNet: LSE-D {_fmt(g['lse_d'])}, LSE-C "
              f"{_fmt(g['lse_c'])}, best offset 0 in {100 * g['offset_zero_fraction']:.0f} % of clips."]
  for name, title in (("", "in-training"), ("_independent", "independent")):
    if f"classifier_acc_on_real{name}" not in r:
      continue
    scope = ("whole clips" if r.get("emotion_frames_per_clip") is None else
             f"the first {r['emotion_frames_per_clip']} frames of each clip")
    lines += ["", f"Emotion classifier ({title}, `{r['emotion_classifier' + name]}`; EmoAcc over "
              f"{scope}): accuracy on "
              f"the real clips {100 * r['classifier_acc_on_real' + name]:.1f} %; EmoAcc "
              f"{100 * r['emo_acc' + name]:.1f} %, per target: "
              + metrics.per_target_text(r["emo_acc_per_target" + name], r.get("emo_confusion" + name))
              + "."]
    key = f"emo_acc{name}_neutral_reference"
    if key in r:
      lines += [f"With the reference frames from the actor's NEUTRAL clip ({r['neutral_reference_clips']} "
                f"clips): EmoAcc {100 * r[key]:.1f} %, per target: "
                + metrics.per_target_text(r[f"emo_acc_per_target{name}_neutral_reference"],
                                  r.get(f"emo_confusion{name}_neutral_reference"))
                + "."]
  return "\n".join(lines) + "\n"


def _json_safe(x):
  if isinstance(x, float) and not np.isfinite(x):
    return str(x)
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_json_safe(v) for v in x]
  return x


def _parser() -> ArgumentParser:
  p = ArgumentParser(prog="python -m emogen_jax.evaluate",
                              description="PSNR, SSIM, LSE-D/C, EmoAcc and FID of a generator "
                                          "on a preprocessed split.")
  p.add_argument("--checkpoint", required=True, help="generator: training workdir or checkpoint")
  p.add_argument("--data-dir", required=True, help="preprocessed dataset (data_tools.preprocess)")
  p.add_argument("--split", default="test", help="train, validation, test or all (default test)")
  p.add_argument("--syncnet", default=None, help="SyncNet checkpoint for LSE-D / LSE-C")
  p.add_argument("--emotion-classifier", default=None,
                 help="emotion discriminator checkpoint for EmoAcc")
  p.add_argument("--independent-classifier", default=None,
                 help="a second emotion classifier the generator never trained against (another "
                      "configs/emotion_disc.py run): EmoAcc reported beside the first")
  p.add_argument("--inception", default=None,
                 help="Keras InceptionV3 notop weights (.h5) for FID")
  p.add_argument("--max-clips", type=int, default=None, help="evaluate at most this many clips")
  p.add_argument("--emotion-frames", type=int, default=None,
                 help="EmoAcc over each clip's first N frames (default: the whole clip; the "
                      "six-emotion generations are most of the run time)")
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--out", required=True, help="folder for metrics.json and metrics.md")
  return p


@cli_main
def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.max_clips is not None and args.max_clips < 1:
    raise UserError(f"--max-clips must be at least 1, got {args.max_clips}")
  if args.batch_size < 1:
    raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
  if args.emotion_frames is not None and args.emotion_frames < WINDOW:
    raise UserError(f"--emotion-frames must be at least {WINDOW} (one classifier window), got "
                    f"{args.emotion_frames}")
  # Every path is checked before the long run, naming the flag.
  out = files.check_output_dir(args.out, "--out", "evaluation report folder")
  for path in (args.checkpoint, args.syncnet, args.emotion_classifier, args.independent_classifier):
    if path is not None:
      checkpoints.resolve_checkpoint(path)
  checkpoint, syncnet, classifier, independent = (None if p is None else files.user_path(p) for p in (
      args.checkpoint, args.syncnet, args.emotion_classifier, args.independent_classifier))
  inception = None
  if args.inception is not None:
    inception = files.input_file(args.inception, "Inception weights", "give Keras InceptionV3 'notop' "
                                 "weights (inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5)")
  data_dir = files.user_path(args.data_dir)
  if not os.path.isdir(data_dir):
    what = "is a file, not a folder" if os.path.exists(data_dir) else "does not exist"
    raise UserError(f"--data-dir {args.data_dir!r} {what}; give a dataset made by "
                    "python -m data_tools.preprocess")
  r = evaluate(checkpoint, data_dir, args.split, syncnet, classifier, inception, args.max_clips,
               args.batch_size, independent_classifier=independent,
               emotion_frames=args.emotion_frames)
  md = to_markdown(r)
  with files.made_dirs(out):  # created only now: a failed run leaves no empty folder
    files.write_file(os.path.join(out, "metrics.json"), json.dumps(_json_safe(r), indent=2))
    files.write_file(os.path.join(out, "metrics.md"), md)
  print(md)
  print(f"wrote {os.path.join(out, 'metrics.json')} and metrics.md ({r['clips']} clips, "
        f"{r['seconds']:.1f} s)")
  return 0


if __name__ == "__main__":
  from emogen_jax.allocator import use_fast_allocator
  use_fast_allocator()  # may re-execute this command with tcmalloc preloaded
  sys.exit(main())
