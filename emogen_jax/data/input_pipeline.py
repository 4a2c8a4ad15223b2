"""tf.data input pipelines over the preprocessed ``emogen_clips`` dataset (see data_tools.preprocess).

``create_dataset(task, data_dir, split, per_device_batch=..., ...)`` returns a Python
iterator of dicts of numpy arrays with leading dims (num_devices, per_device_batch):

* "syncnet":   mel (80,16,1) f32, frames (48,96,15) f32 in [0,1] (lower halves of 5
  frames stacked frame-major on channels: channel 3*t+c), label () f32 (1 in sync);
* "emotion":   frames (5,96,96,3) f32 in [0,1], emotion () int32;
* "generator": frames (5,96,96,6) f32 ([zeros, reference] per frame), mel (5,80,16,1)
  f32 (frame i of the target window f uses the window of frame f+i-1), sync_mel
  (80,16,1) f32 (window of f), target (5,96,96,3) f32 in [0,1], emotion () int32.

Every batch also has ``mask`` () f32: 1 for a real example, 0 for the padding that
completes the last batch of a finite evaluation stream (always 1 in training streams and
in repeated ones), so that metrics can weight by it and count each example once.

Frames are BGR (as stored by OpenCV). ``with_metadata=True`` adds ``clip_id`` (bytes),
``start`` (f: target / mel window start), ``other_start`` (g: the generator's
reference start, or SyncNet's face start; equal to f for in-sync examples), and for the
generator ``ref_clip_id`` / ``ref_emotion`` (the clip the reference window comes from) for
tests and debugging.

Sampling follows docs/design.md "Training recipe", restricted to windows of valid frames (frames
where a face was detected): a target window f has 5 valid frames and its mel windows
inside the clip's mel (generator: f >= 1); the generator's reference window and
SyncNet's off-sync window start at a uniformly drawn other start g != f of the same clip
with 5 valid frames; SyncNet is in sync with p = 0.5.

Generator references (``reference_sampling``): "same_clip" is the original's rule above; with
it the reference already shows the target's emotion, so the L1 term is minimised by copying
the reference and the emotion label is never needed (measured: the generator ignored it).
"other_clip" (ours) takes the reference window from ANOTHER clip of the SAME actor, of
another emotion whenever the actor's clips near it in the stream offer one, while the target
(and so every loss) keeps the label's emotion: copying the reference is then wrong, and
the label is the only source of the target's expression. ``same_clip_fraction`` (training
streams of "other_clip" only) gives that share of the clips the original's reference instead,
so the generator also meets references that already show the asked-for emotion (as at test
time with a clip's own frames, or a neutral face asked to stay neutral); 0 = never.

Training streams (train=True): files and clips shuffled, repeated forever; each clip read
and decoded once yields ``windows_per_clip`` examples (only the JPEGs those windows use
are decoded), then examples are shuffled across clips, augmented (emogen_jax.data.augment,
one parameter set per example, shared by all its frames) and batched. All randomness is
stateless and keyed by (seed, clip read index), so the same seed gives the same batches.

Evaluation streams (train=False): no augmentation, no shuffling, clips in dataset order;
each clip yields ``eval_windows`` fixed windows evenly spaced over its valid starts, the
reference / off-sync start g being the valid start half the clip away; SyncNet yields
each window twice (in sync, then off sync), so labels are balanced. One pass is finite;
its last batch is completed by cycling from the first examples (so every batch is full
and a small split still yields a batch), those copies having ``mask`` 0; ``repeat=True``
cycles forever, in the same order each pass.

Multi-host: process i of n (jax.process_index() / process_count()) reads the i-th of n
even sub-splits of the clips (tfds.even_splits). TensorFlow is kept off accelerators
(tf.config.set_visible_devices([], "GPU"/"TPU") when a pipeline is created).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import weakref
from typing import Iterator, Optional

import tensorflow as tf

from emogen_jax.data import augment as augment_lib
from emogen_jax.data import timing
from emogen_jax.errors import UserError

TASKS = ("syncnet", "emotion", "generator")
SPLITS = ("train", "validation", "test")
DATASET_NAME = "emogen_clips"
T = timing.FRAMES_PER_WINDOW
MEL_WINDOW = timing.MEL_WINDOW
IMG = 96


# ----------------------------------------------------------------------------- discovery


def _hide_accelerators() -> None:
  """TensorFlow must never take GPU/TPU memory from JAX."""
  try:
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (RuntimeError, ValueError):
    pass  # already initialised (devices were hidden by an earlier call) or no such type


def _dataset_dir(data_dir: str) -> str:
  data_dir = os.fspath(data_dir)
  hint = f"run `python -m data_tools.preprocess --src VIDEOS --data-dir {data_dir}` first"
  if not os.path.isdir(data_dir):
    raise UserError(f"data dir {data_dir} does not exist; {hint}")
  candidates = [data_dir, os.path.join(data_dir, DATASET_NAME)]
  for base in candidates:
    if os.path.isfile(os.path.join(base, "dataset_info.json")):
      return base
    if os.path.isdir(base):
      versions = sorted((v for v in os.listdir(base)
                         if os.path.isfile(os.path.join(base, v, "dataset_info.json"))),
                        key=lambda v: tuple(int(p) for p in v.split(".") if p.isdigit()))
      if versions:
        return os.path.join(base, versions[-1])
  raise UserError(f"{data_dir} holds no preprocessed dataset ({DATASET_NAME}/<version>/"
                  f"dataset_info.json not found); {hint}")


def dataset_builder(data_dir: str):
  """The TFDS reader of a preprocessed dataset (data_dir or its emogen_clips/<version>), for
  code that reads whole clips rather than training windows (evaluation, sync checks)."""
  _hide_accelerators()  # before TF first lists devices
  import tensorflow_datasets as tfds
  return tfds.builder_from_directory(_dataset_dir(data_dir))


def without_autotuner(ds):
  """``ds`` without tf.data's autotuner. Its thread sleeps between rounds (up to ~20 s here) and
  deleting an iterator waits for that thread: every re-created training stream, and the end of
  every whole-clip read, stood still that long. Without it the AUTOTUNE maps keep their initial
  parallelism, which is plenty here (docs/design.md "CPU speed")."""
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.with_options(options)


def read_clips(data_dir: str, split: str):
  """The whole clips of one split in dataset order, as a tf.data.Dataset of TFDS examples (for
  evaluation and other readers of whole clips); without the autotuner (``without_autotuner``)."""
  import tensorflow_datasets as tfds
  ds = dataset_builder(data_dir).as_dataset(
      split=split, shuffle_files=False,
      read_config=tfds.ReadConfig(add_tfds_id=False, try_autocache=False))
  return without_autotuner(ds)


def dataset_info(data_dir: str) -> dict:
  """{"dir", "splits": {split: clips}, "num_clips", "report" (the preprocess report or None)}."""
  builder = dataset_builder(data_dir)
  splits = {name: int(info.num_examples) for name, info in builder.info.splits.items()}
  report = None
  for p in (os.path.join(data_dir, "preprocess_report.json"),):
    if os.path.isfile(p):
      with open(p) as f:
        report = json.load(f)
  return {"dir": _dataset_dir(data_dir), "splits": splits, "num_clips": sum(splits.values()),
          "report": report}


# ----------------------------------------------------------------------------- window rules


def _window_masks(valid: tf.Tensor, mel_steps: tf.Tensor):
  """-> (any_ok, sync_ok, gen_ok) bool (N,): same rule as data_tools.preprocess.window_starts."""
  n = tf.shape(valid)[0]
  v = tf.cast(valid, tf.int32)
  csum = tf.concat([[0], tf.cumsum(v)], axis=0)
  f = tf.range(n)
  end = tf.minimum(f + T, n)
  any_ok = (f + T <= n) & (tf.gather(csum, end) - tf.gather(csum, f) == T)
  fits = lambda fr: timing.window_fits(fr, mel_steps)
  sync_ok = any_ok & fits(f)
  gen_ok = any_ok & (f >= 1) & fits(f + 3)
  return any_ok, sync_ok, gen_ok


def _other_start(cand: tf.Tensor, f: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
  """A start from ``cand`` (sorted, contains every f) other than f; u in [0,1) picks it uniformly."""
  n = tf.shape(cand)[0]
  pos_f = tf.searchsorted(cand, f)
  r = tf.minimum(tf.cast(u * tf.cast(n - 1, tf.float32), tf.int32), n - 2)
  r = r + tf.cast(r >= pos_f, tf.int32)
  return tf.gather(cand, r)


# ----------------------------------------------------------------------------- per-clip examples


def _decode_frames(jpegs: tf.Tensor, idx: tf.Tensor) -> tf.Tensor:
  """Decodes jpegs[idx] (any shape of indices), each distinct frame once -> uint8 BGR idx.shape+(96,96,3)."""
  flat = tf.reshape(idx, [-1])
  uniq, pos = tf.unique(flat)
  imgs = tf.map_fn(lambda s: tf.ensure_shape(tf.io.decode_jpeg(s, channels=3, dct_method="INTEGER_ACCURATE"), (IMG, IMG, 3)),
                   tf.gather(jpegs, uniq), fn_output_signature=tf.TensorSpec((IMG, IMG, 3), tf.uint8),
                   parallel_iterations=16)
  # INTEGER_ACCURATE is libjpeg's ISLOW, what OpenCV's imdecode uses: identical pixels.
  imgs = tf.reverse(imgs, axis=[-1])  # JPEG decoders return RGB; the crops were BGR
  return tf.reshape(tf.gather(imgs, pos), tf.concat([tf.shape(idx), [IMG, IMG, 3]], 0))


def _mel_windows(mel_t: tf.Tensor, frames: tf.Tensor) -> tf.Tensor:
  """mel_t (M, 80), frame indices (...) -> (..., 80, 16, 1): each frame's mel window."""
  start = timing.mel_start(frames)
  idx = start[..., None] + tf.range(MEL_WINDOW)
  w = tf.gather(mel_t, idx)  # (..., 16, 80)
  return tf.expand_dims(tf.linalg.matrix_transpose(w), -1)


def _clip_examples(task: str, clip: dict, seed: tf.Tensor, k: int, train: bool,
                   with_metadata: bool, ref_clip: Optional[dict] = None) -> dict:
  """One clip -> k raw examples (leading dim k): uint8 frames, mel windows, labels.

  ``frames`` is (k, 10, 96, 96, 3) for the generator (target then reference window) and
  (k, 5, 96, 96, 3) otherwise; float conversion and augmentation happen per batch
  (``_finish``), so the example shuffle buffer holds compact uint8 frames. ``ref_clip``
  (generator only): take the reference windows from that clip (any of its valid starts)
  instead of another start of ``clip``.
  """
  jpegs, valid, mel = clip["frames"], clip["valid"], clip["mel"]
  mel_t = tf.transpose(mel)  # (M, 80)
  any_ok, sync_ok, gen_ok = _window_masks(valid, tf.shape(mel)[1])
  target_ok = {"syncnet": sync_ok, "emotion": any_ok, "generator": gen_ok}[task]
  cand_f = tf.cast(tf.where(target_ok)[:, 0], tf.int32)
  n_f = tf.shape(cand_f)[0]
  if ref_clip is None:
    ref_jpegs, cand_g = jpegs, tf.cast(tf.where(any_ok)[:, 0], tf.int32)
  else:
    ref_any_ok = _window_masks(ref_clip["valid"], tf.shape(ref_clip["mel"])[1])[0]
    ref_jpegs, cand_g = ref_clip["frames"], tf.cast(tf.where(ref_any_ok)[:, 0], tf.int32)
  n_g = tf.shape(cand_g)[0]
  seeds = tf.random.experimental.stateless_split(seed, num=3)
  if train:
    pick = tf.random.stateless_uniform([k], seeds[0], 0, n_f, dtype=tf.int32)
    f = tf.gather(cand_f, pick)
    if ref_clip is None:
      g = _other_start(cand_g, f, tf.random.stateless_uniform([k], seeds[1]))
    else:
      g = tf.gather(cand_g, tf.random.stateless_uniform([k], seeds[1], 0, n_g, dtype=tf.int32))
    in_sync = tf.random.stateless_uniform([k], seeds[2]) < 0.5
  else:
    f = tf.gather(cand_f, _spread(k, n_f))
    if ref_clip is None:
      g = tf.gather(cand_g, (tf.searchsorted(cand_g, f) + n_g // 2) % n_g)
    else:
      g = tf.gather(cand_g, _spread(k, n_g))
    in_sync = tf.ones([k], tf.bool)
    if task == "syncnet":  # every window in sync, then off sync
      f, g = tf.concat([f, f], 0), tf.concat([g, g], 0)
      in_sync = tf.concat([in_sync, tf.zeros([k], tf.bool)], 0)
  steps = tf.range(T)
  out = {"emotion": tf.fill(tf.shape(f), tf.cast(clip["emotion"], tf.int32))}
  if task == "generator":
    # (k, 10): target, reference; one decode of each distinct frame when both share a clip
    if ref_clip is None:
      out["frames"] = _decode_frames(jpegs, tf.concat([f[:, None] + steps, g[:, None] + steps], 1))
    else:
      out["frames"] = tf.concat([_decode_frames(jpegs, f[:, None] + steps),
                                 _decode_frames(ref_jpegs, g[:, None] + steps)], axis=1)
    out["mel"] = _mel_windows(mel_t, f[:, None] + steps - 1)
    out["sync_mel"] = _mel_windows(mel_t, f)
  elif task == "syncnet":
    g = tf.where(in_sync, f, g)
    idx = g[:, None] + steps
    out["mel"] = _mel_windows(mel_t, f)
    out["label"] = tf.cast(in_sync, tf.float32)
  else:
    idx = f[:, None] + steps
  if task != "generator":
    out["frames"] = _decode_frames(jpegs, idx)
  if with_metadata:
    out.update(clip_id=tf.fill(tf.shape(f), clip["clip_id"]), start=f, other_start=g)
    if task == "generator":
      ref = clip if ref_clip is None else ref_clip
      out.update(ref_clip_id=tf.fill(tf.shape(f), ref["clip_id"]),
                 ref_emotion=tf.fill(tf.shape(f), tf.cast(ref["emotion"], tf.int32)))
  return out


def _spread(k: int, n: tf.Tensor) -> tf.Tensor:
  """k positions evenly spread over range(n) (the fixed windows of an evaluation stream)."""
  pos = tf.cast((tf.range(k, dtype=tf.float32) + 0.5) * tf.cast(n, tf.float32) / k, tf.int32)
  return tf.minimum(pos, n - 1)


# ----------------------------------------------------------------------------- reference clips

REFERENCE_SAMPLING = ("same_clip", "other_clip")
# Clips of one actor gathered before each picks its reference clip among the others: with 4 of
# CREMA-D's six emotions spread evenly, a clip finds another emotion in the group nearly always.
REFERENCE_GROUP = 4


def _reference_index(emotion: tf.Tensor, m: tf.Tensor) -> tf.Tensor:
  """Member m of a group of clips (their emotions (n,)) -> the member whose frames are its
  reference: the next one (cyclically) of another emotion, else the next one, else m itself
  (a group of one: only the end of a finite pass can leave a clip alone)."""
  n = tf.shape(emotion)[0]

  def among_others():  # only built for n >= 2: an argmax over no candidate is an error
    order = (m + tf.range(1, n)) % n
    other = tf.gather(emotion, order) != emotion[m]
    first_other = tf.cast(tf.argmax(tf.cast(other, tf.int32)), tf.int32)
    return tf.where(tf.reduce_any(other), tf.gather(order, first_other), order[0])

  return tf.cond(n < 2, lambda: m, among_others)


def _pair_with_other_clips(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Clips -> {"clip", "ref"} pairs: every clip once as the target, its reference another clip of
  the SAME actor, of another emotion when one is near (``_reference_index``).

  Clips of an actor are gathered REFERENCE_GROUP at a time as they stream past
  (group_by_window), so no clip is read twice and nothing is looked up: the pairing follows the
  stream's (seeded) order, which keeps it deterministic and lets a resume skip to any batch."""

  def sized(ex):
    return {**ex, "n_frames": tf.shape(ex["valid"])[0], "n_mel": tf.shape(ex["mel"])[1]}

  def unpad(grp, m):
    nf, nm = grp["n_frames"][m], grp["n_mel"][m]
    return {"frames": grp["frames"][m, :nf], "valid": grp["valid"][m, :nf],
            "mel": grp["mel"][m, :, :nm], "emotion": grp["emotion"][m],
            "clip_id": grp["clip_id"][m]}

  def pairs(grp):
    n = tf.shape(grp["emotion"], out_type=tf.int64)[0]
    return tf.data.Dataset.range(n).map(lambda m: {
        "clip": unpad(grp, tf.cast(m, tf.int32)),
        "ref": unpad(grp, _reference_index(grp["emotion"], tf.cast(m, tf.int32)))})

  ds = ds.map(sized).group_by_window(
      key_func=lambda ex: tf.strings.to_hash_bucket_fast(ex["actor"], 1 << 62),
      reduce_func=lambda _, window: window.padded_batch(REFERENCE_GROUP),
      window_size=REFERENCE_GROUP)
  return ds.flat_map(pairs)


def _assemble(task: str, x: tf.Tensor) -> dict:
  """float frames (B, T', 96, 96, 3) -> the task's image inputs."""
  if task == "generator":
    ref = x[:, T:]
    return {"frames": tf.concat([tf.zeros_like(ref), ref], axis=-1), "target": x[:, :T]}
  if task == "syncnet":
    lower = x[:, :, IMG // 2:]  # (B, 5, 48, 96, 3)
    return {"frames": tf.reshape(tf.transpose(lower, [0, 2, 3, 1, 4]), [-1, IMG // 2, IMG, 3 * T])}
  return {"frames": x}


def _float_stage(task: str, do_augment: bool):
  """uint8 frames (+ the noise parameters when augmenting) -> the task's float image inputs, as
  ONE XLA-compiled function: cast, noise, clipping, /255 and the layout change (zero-masked
  generator input, SyncNet's stacked lower halves) fuse into a single pass over the batch
  (measured ~6x cheaper than the same ops as separate TF kernels)."""
  if do_augment:
    fn = lambda frames, noise: _assemble(task, augment_lib.to_unit_float(frames, noise))
  else:
    fn = lambda frames: _assemble(task, augment_lib.to_unit_float(frames))
  return tf.function(fn, jit_compile=True, autograph=False)


def _finish(task: str, batch: dict, seed: tf.Tensor, do_augment: bool, float_stage) -> dict:
  """A batch of raw examples -> the task's model inputs (augmented once per example)."""
  out = dict(batch)
  frames = out.pop("frames")
  if do_augment:
    x, sigma, noise_seed = augment_lib.augment_uint8(frames, seed)
    out.update(float_stage(x, augment_lib.noise_fields(x, sigma, noise_seed)))
  else:
    out.update(float_stage(frames))
  if "mask" not in out:  # no padding in this stream
    out["mask"] = tf.ones(tf.shape(frames)[:1], tf.float32)
  if task == "syncnet":
    out.pop("emotion")
  return out


# ----------------------------------------------------------------------------- datasets


def build_tf_dataset(task: str, data_dir: str, split: str, *, global_batch: int, seed: int = 0,
                     train: bool = True, augment: Optional[bool] = None,
                     shuffle_buffer: int = 512, num_parallel=tf.data.AUTOTUNE,
                     windows_per_clip: int = 16, eval_windows: int = 2, repeat: Optional[bool] = None,
                     with_metadata: bool = False, process_index: int = 0,
                     process_count: int = 1, min_batches: int = 0,
                     reference_sampling: str = "same_clip",
                     same_clip_fraction: float = 0.0) -> tuple:
  """The tf.data.Dataset of batches with leading dim global_batch (create_dataset's core).

  A finite evaluation pass is padded (mask 0) to at least ``min_batches`` batches: hosts of a
  multi-host run must run the same number of pmapped steps (see ``eval_pass_batches``).
  Returns (dataset, num_examples_per_pass or None for infinite training streams). Iterate
  an augmented dataset through ``NumpyBatches`` (or close the iterator before exiting):
  see its docstring.
  """
  import tensorflow_datasets as tfds
  if task not in TASKS:
    raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
  if reference_sampling not in REFERENCE_SAMPLING:
    raise UserError(f"reference_sampling={reference_sampling!r}; use one of "
                    f"{', '.join(REFERENCE_SAMPLING)}")
  other_clip = task == "generator" and reference_sampling == "other_clip"
  if not 0.0 <= float(same_clip_fraction) <= 1.0:
    raise UserError(f"same_clip_fraction={same_clip_fraction!r}; use a share between 0 and 1")
  own_share = float(same_clip_fraction) if other_clip and train else 0.0
  builder = dataset_builder(data_dir)
  splits = {name: int(info.num_examples) for name, info in builder.info.splits.items()}
  if split not in splits or splits[split] == 0:
    avail = ", ".join(f"{k}={v}" for k, v in splits.items()) or "none"
    raise UserError(f"split {split!r} of {data_dir} is empty or missing (clips per split: {avail}); "
                    "preprocess more actors/clips or use another split")
  split_spec = host_splits(split, process_count)[process_index]
  num_clips = int(builder.info.splits[split_spec].num_examples)
  if num_clips == 0:
    raise UserError(f"split {split!r} has no clip for process {process_index} of {process_count}; "
                    "use fewer hosts or a bigger split")
  do_augment = train if augment is None else bool(augment)
  if do_augment:
    # The augmentation's OpenCV calls run inside tf.data's parallel map on 96x96 images:
    # OpenCV's own thread pool only adds overhead (and oversubscribes the cores) there.
    # NOTE: process-wide setting.
    import cv2
    cv2.setNumThreads(1)
  repeat = train if repeat is None else bool(repeat)
  read_config = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=4,
                                add_tfds_id=False, try_autocache=False)
  ds = builder.as_dataset(split=split_spec, shuffle_files=train, read_config=read_config)
  keep = ("frames", "valid", "mel", "emotion", "clip_id") + (("actor",) if other_clip else ())
  ds = ds.map(lambda ex: {k: ex[k] for k in keep})
  base_seed = tf.constant([seed, 0x5EED], tf.int64)
  if train:
    ds = ds.shuffle(min(num_clips, 256), seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  k = windows_per_clip if train else eval_windows

  if other_clip:
    ds = _pair_with_other_clips(ds)

  def per_clip(i, clip):
    s = tf.random.experimental.stateless_fold_in(base_seed, i)
    if not other_clip:
      return _clip_examples(task, clip, s, k, train, with_metadata)
    other = lambda: _clip_examples(task, clip["clip"], s, k, train, with_metadata,
                                   ref_clip=clip["ref"])
    if own_share == 0.0:
      return other()
    # Drawn per clip read, keyed like every other draw: the same (seed, read) picks the same.
    own = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(s, 0x0C11)) \
        < own_share
    return tf.cond(own, lambda: _clip_examples(task, clip["clip"], s, k, train, with_metadata),
                   other)

  ds = ds.enumerate().map(per_clip, num_parallel_calls=num_parallel, deterministic=True)
  ds = ds.unbatch()
  num_examples = None
  if train:
    ds = ds.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
  elif not repeat:
    num_examples = eval_pass_examples(task, num_clips, k)
    num_batches = max(math.ceil(num_examples / global_batch), int(min_batches))
    ds = ds.repeat().take(num_batches * global_batch)
    # the last batch is completed by cycling from the first examples: mask 0 marks those copies
    ds = ds.enumerate().map(lambda i, ex: {**ex, "mask": tf.cast(i < num_examples, tf.float32)})
  ds = ds.batch(global_batch, drop_remainder=True)
  aug_seed = tf.constant([seed, 0xA06], tf.int64)
  float_stage = _float_stage(task, do_augment)

  def finish(i, batch):
    return _finish(task, batch, tf.random.experimental.stateless_fold_in(aug_seed, i), do_augment,
                   float_stage)

  ds = ds.enumerate().map(finish, num_parallel_calls=num_parallel, deterministic=True)
  return ds, num_examples


def host_splits(split: str, process_count: int = 1) -> list[str]:
  """The TFDS split spec each host reads (index = process index): even sub-splits of the clips."""
  import tensorflow_datasets as tfds
  if process_count == 1:
    return [split]
  return tfds.even_splits(split, n=process_count, drop_remainder=False)


def eval_pass_examples(task: str, num_clips: int, eval_windows: int) -> int:
  """Examples in one evaluation pass over ``num_clips`` clips (SyncNet: each window twice)."""
  return num_clips * eval_windows * (2 if task == "syncnet" else 1)


def eval_pass_batches(task: str, data_dir: str, split: str, *, global_batch: int,
                      eval_windows: int, process_count: int = 1) -> list[int]:
  """Batches in one evaluation pass of each host (index = process index), from the split sizes
  alone: every host can compute every host's count, so they agree on a common pass length
  without a collective."""
  info = dataset_builder(data_dir).info
  return [math.ceil(eval_pass_examples(task, int(info.splits[s].num_examples), eval_windows)
                    / global_batch) for s in host_splits(split, process_count)]


def create_dataset(task: str, data_dir: str, split: str, *, per_device_batch: int,
                   num_devices: Optional[int] = None, seed: int = 0, train: bool = True,
                   augment: Optional[bool] = None, shuffle_buffer: int = 512,
                   num_parallel=tf.data.AUTOTUNE, windows_per_clip: int = 16,
                   eval_windows: int = 2, repeat: Optional[bool] = None,
                   with_metadata: bool = False, prefetch: int = 2,
                   min_batches: int = 0, reference_sampling: str = "same_clip",
                   same_clip_fraction: float = 0.0) -> Iterator[dict]:
  """Batches of ``task`` examples from ``split``: dicts of numpy arrays, leading dims
  (num_devices, per_device_batch). See the module docstring for the contents and rules.

  Args:
    task: "syncnet", "emotion" or "generator".
    data_dir: the --data-dir given to data_tools.preprocess.
    split: "train", "validation" or "test".
    per_device_batch: examples per device per step.
    num_devices: local devices (default jax.local_device_count()).
    seed: the same seed gives the same stream.
    train: True: shuffled, repeated, augmented; False: deterministic fixed windows.
    augment: override (default = train).
    shuffle_buffer: example-level shuffle buffer (train).
    num_parallel: parallel clip reads/decodes (tf.data.AUTOTUNE by default).
    windows_per_clip: examples drawn per clip read when training (amortises decoding: JPEG
      decoding is most of the pipeline's cost; 16 windows of a ~70-frame clip decode ~4
      frames per example, 8 windows ~6). With the default shuffle buffer (512 examples) a
      batch still mixes examples of ~32 clips.
    eval_windows: fixed windows per clip when not training.
    repeat: default = train; with train=False, True cycles the fixed stream forever.
    with_metadata: also return clip_id, start and other_start per example.
    prefetch: batches prefetched.
    min_batches: pad a finite evaluation pass (mask 0) to at least this many batches.
    reference_sampling: generator only: "same_clip" (the original: the reference window is
      another start of the target's clip) or "other_clip" (another clip of the same actor,
      of another emotion when possible; see ``_pair_with_other_clips``).
    same_clip_fraction: with "other_clip", the share of training clips that take the
      original's reference instead (drawn per clip read).
  """
  _hide_accelerators()
  if per_device_batch < 1:
    raise UserError(f"per_device_batch must be >= 1, got {per_device_batch}")
  import jax
  if num_devices is None:
    num_devices = jax.local_device_count()
  if num_devices < 1:
    raise UserError(f"num_devices must be >= 1, got {num_devices}")
  ds, _ = build_tf_dataset(task, data_dir, split, global_batch=num_devices * per_device_batch,
                           seed=seed, train=train, augment=augment, shuffle_buffer=shuffle_buffer,
                           num_parallel=num_parallel, windows_per_clip=windows_per_clip,
                           eval_windows=eval_windows, repeat=repeat, with_metadata=with_metadata,
                           process_index=jax.process_index(), process_count=jax.process_count(),
                           min_batches=min_batches, reference_sampling=reference_sampling,
                           same_clip_fraction=same_clip_fraction)

  def to_devices(batch):
    return {k: tf.reshape(v, tf.concat([[num_devices, per_device_batch], tf.shape(v)[1:]], 0))
            for k, v in batch.items()}

  ds = ds.map(to_devices, num_parallel_calls=tf.data.AUTOTUNE).prefetch(prefetch)
  # Re-created at every checkpoint segment: with the autotuner each one stalled training.
  return NumpyBatches(without_autotuner(ds))


class NumpyBatches:
  """Iterator of numpy batches over a tf.data.Dataset that shuts its threads down at exit.

  The augmentation calls OpenCV through tf.numpy_function: a tf.data thread still
  running Python while the interpreter finalises can hang or abort the process. So the
  underlying TF iterator is released by ``close()``, on garbage collection, and by an
  atexit hook (which runs before finalisation).
  """

  def __init__(self, ds: tf.data.Dataset):
    self.dataset = ds
    self._it = iter(ds)
    ref = weakref.ref(self)
    atexit.register(lambda: ref() is not None and ref().close())

  def __iter__(self):
    return self

  def __next__(self):
    if self._it is None:
      raise StopIteration
    return tf.nest.map_structure(lambda t: t._numpy(), next(self._it))  # pylint: disable=protected-access

  def close(self) -> None:
    it, self._it = self._it, None
    del it
