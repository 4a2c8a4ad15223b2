"""Training-config defaults shared by configs/{syncnet,emotion_disc,emogen}.py, and their checks."""

from __future__ import annotations

import os

import ml_collections

from emogen_jax import onednn_conv
from emogen_jax.errors import UserError
from emogen_jax.train import stages


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = ""                  # "syncnet" | "emotion_disc" | "emogen"
  c.data_dir = ""               # preprocessed dataset (python -m data_tools.preprocess)
  # Random in-memory batches instead of data_dir, deterministic per (seed, step): tests, benchmarks.
  c.synthetic_data = False
  c.seed = 0
  c.num_train_steps = 100_000
  c.batch_size = 16             # global batch: divided evenly over jax.device_count() devices
  c.width = 1.0                 # channel multiplier of every network (1.0 = reference size)
  c.compute_dtype = "float32"   # or "bfloat16": activations; params and optimizer stay float32
  # Convolution kernels on the CPU backend: "auto" (oneDNN's on an AVX-512 CPU where
  # scripts/install.sh built them, XLA's otherwise; the log says which), "xla" (XLA's own) or
  # "onednn" (oneDNN's through XLA's FFI, built with g++ on first use). On an AVX-512 CPU
  # oneDNN's make SyncNet and EmoGen steps 1.2-1.3x faster at full width, 1.2-1.6x at smoke
  # width, the disc's 1.03-1.08x (emogen_jax/onednn_conv). Other backends always run XLA's.
  c.cpu_convolutions = "auto"
  # Adam, as the original (lr per stage below).
  c.learning_rate = 1e-4
  c.b1 = 0.5
  c.b2 = 0.999
  # "constant" (the original's) or "cosine": decay to lr * lr_final_fraction over lr_decay_steps
  # (0 = num_train_steps). The SyncNet and generator optimizers; the emotion disc has its own.
  # With lr_decay_steps 0 a run resumed with a larger num_train_steps follows the new, longer
  # schedule from its step on; pin lr_decay_steps to extend a run exactly as planned.
  c.lr_schedule = "constant"
  c.lr_decay_steps = 0
  c.lr_final_fraction = 0.05
  # Feedback and checkpoints.
  c.log_every_steps = 100
  c.eval_every_steps = 3_000
  c.eval_batches = 50           # 0 = one whole pass over the validation split
  # Global validation batch (0 = batch_size). BatchNorm uses its running statistics in
  # validation and the means are weighted per example, so the figures do not depend on it; a
  # larger one validates faster where the training batch is tiny (the smoke configs).
  c.eval_batch_size = 0
  # Fixed windows per validation clip (evenly spaced; SyncNet scores each in and off sync).
  c.eval_windows = 2
  c.eval_at_start = False       # also validate before the first step (a learning-curve baseline)
  # "during": validate every eval_every_steps and at the end (the usual run). "none": train and
  # checkpoint without validating, so networks that only validation needs (EmoGen's expert while
  # its sync weight is 0) are not loaded and may still be training elsewhere. "only": no training:
  # validate the latest checkpoint, and with eval_at_start the initial state as step 0 (the same
  # figures as a "during" run that validates only before its first step and at the end;
  # emogen_jax.train.recipe runs EmoGen "none" then "only").
  c.validation = "during"
  c.checkpoint_every_steps = 10_000
  c.keep_checkpoints = 3
  c.sample_every_steps = 0      # 0 = no sample grids (only the generator stage makes them)
  # The training stream is re-seeded with (seed, s) at every multiple s of data_segment_steps
  # (0 = checkpoint_every_steps); a resume at step r re-creates the stream of its segment and skips
  # r - s batches, so resumed runs see exactly the batches of an uninterrupted run.
  c.data_segment_steps = 0
  c.shuffle_buffer = 0          # 0 = the input pipeline's default
  # Training examples drawn per clip read (0 = the input pipeline's default, 16): fewer windows
  # per read mean more distinct clips (and generator reference pairs) per step, at more decoding.
  c.windows_per_clip = 0
  # Smoke variants may start the frozen/auxiliary networks from random init (said in the log).
  c.allow_random_init = False
  # Tests only: make the loss non-finite at this step (-1 = never) to exercise the NaN stop.
  c.inject_nonfinite_at_step = -1
  return c


def apply_smoke(c: ml_collections.ConfigDict, batch_size: int) -> ml_collections.ConfigDict:
  """Tiny CPU variant: width 0.25, tiny batches, frequent feedback, random init allowed."""
  c.width = 0.25
  c.batch_size = batch_size
  c.num_train_steps = 20
  c.log_every_steps = 1
  c.eval_every_steps = 10
  c.eval_batches = 2
  # Small validation splits (a held-out actor or two): more windows per clip steady the figures.
  c.eval_windows = 6
  c.checkpoint_every_steps = 10
  c.keep_checkpoints = 2
  c.allow_random_init = True
  return c


COMPUTE_DTYPES = ("float32", "bfloat16")
LR_SCHEDULES = ("constant", "cosine")
VALIDATION_MODES = ("during", "none", "only")


def validate(c: ml_collections.ConfigDict, *, device_count: int) -> None:
  """One-line UserError for every config value a user can get wrong."""
  if c.stage not in stages.STAGE_NAMES:
    raise UserError(f"config.stage={c.stage!r} is not a training stage; use one of "
                    f"{', '.join(stages.STAGE_NAMES)} (configs/<stage>.py)")
  if c.compute_dtype not in COMPUTE_DTYPES:
    raise UserError(f"config.compute_dtype={c.compute_dtype!r}; use float32 or bfloat16")
  onednn_conv.check_choice(c.get("cpu_convolutions", "auto"), "config.cpu_convolutions")
  for name in ("num_train_steps", "batch_size", "log_every_steps", "eval_every_steps",
               "eval_batches", "eval_windows", "checkpoint_every_steps", "keep_checkpoints", "sample_every_steps",
               "data_segment_steps", "eval_batch_size", "shuffle_buffer", "windows_per_clip"):
    if int(c.get(name, 0)) < 0:
      raise UserError(f"config.{name}={c[name]} must not be negative")
  for name in ("batch_size", "log_every_steps", "keep_checkpoints", "eval_windows"):
    if int(c[name]) == 0:
      raise UserError(f"config.{name} must be at least 1")
  if not c.width > 0:
    raise UserError(f"config.width={c.width} must be > 0 (1.0 = reference size)")
  if c.get("validation", "during") not in VALIDATION_MODES:
    raise UserError(f"config.validation={c.validation!r}; use one of {', '.join(VALIDATION_MODES)}")
  if c.lr_schedule not in LR_SCHEDULES:
    raise UserError(f"config.lr_schedule={c.lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
  if not 0.0 <= float(c.lr_final_fraction) <= 1.0 or int(c.lr_decay_steps) < 0:
    raise UserError(f"config.lr_final_fraction={c.lr_final_fraction} must be in [0, 1] and "
                    f"config.lr_decay_steps={c.lr_decay_steps} >= 0")
  if not c.learning_rate > 0:
    raise UserError(f"config.learning_rate={c.learning_rate} must be > 0")
  for name in ("batch_size", "eval_batch_size"):
    if int(c.get(name, 0)) % device_count:
      raise UserError(f"config.{name}={c[name]} (global) does not divide evenly over the "
                      f"{device_count} devices; use a multiple of {device_count}")
  if c.synthetic_data and int(c.eval_batches) == 0:
    raise UserError("config.eval_batches=0 (a whole validation pass) needs a finite validation "
                    "split, but config.synthetic_data=True streams forever; set eval_batches >= 1")
  if not c.synthetic_data:
    if not c.data_dir:
      raise UserError("config.data_dir is empty: pass --config.data_dir=DIR (a dataset made by "
                      "python -m data_tools.preprocess), or --config.synthetic_data=True for random "
                      "batches")
    if not os.path.isdir(c.data_dir):
      raise UserError(f"config.data_dir={c.data_dir!r} is not a directory; preprocess a corpus "
                      "with python -m data_tools.preprocess and pass its output directory")
  stages.get(c.stage).validate_config(c)
