"""The training loop, the same for every stage: ``train_and_evaluate(config, workdir)``.

The config's ``stage`` names the stage module (``emogen_jax.train.stages.get``), which provides
the state, the steps and the optional hooks (``emogen_jax.train.stages.base.Stage``).
Steps run under ``jax.pmap`` over the local devices (axis "batch"); the global batch is split evenly
over ``jax.device_count()`` devices (all hosts). Checkpoints: ``W/checkpoints/<step>/`` (orbax,
async, last ``keep_checkpoints`` kept); a run on a workdir with checkpoints resumes from the latest.
Exact resume: the state holds step, RNG, optimizer states and stage extras (the EmoGen sync
weight); the training stream is re-seeded with (seed, s) at every multiple s of
``data_segment_steps`` (default: checkpoint_every_steps) and a resume inside a segment skips the
batches already used, so a resumed run sees the same batches as an uninterrupted one (keep the
segment length unchanged across a resume; a change is warned about). SIGTERM or SIGINT saves a checkpoint and exits cleanly.
Feedback (process 0 only): progress lines, TensorBoard + console via clu, validation every
``eval_every_steps``, sample grids under W/samples/, W/final_metrics.json at the end.
``config.validation`` splits a run in two when validation needs what training does not: "none"
trains without validating, a later "only" run validates the checkpoint (and the initial state).
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from emogen_jax import allocator, onednn_conv
from emogen_jax.data import files
from emogen_jax.errors import UserError
from emogen_jax.models import checkpoints
from emogen_jax.train import checkpoints as train_checkpoints
from emogen_jax.train import config as train_config
from emogen_jax.train import stages
from emogen_jax.train.stages.base import AXIS, pmap_train_step
from emogen_jax.train.state import TrainState, replicate, unreplicate_to_host

_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


class NonFiniteLossError(UserError):
  """A training loss or gradient became NaN/inf; the run stops without saving that state."""


# ------------------------------------------------------------------------------------------ data

def stream_seed(seed: int, step: int) -> int:
  """The 32-bit seed of the training-stream segment that starts at ``step``."""
  return int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1)[0] & 0x7FFFFFFF)


def synthetic_stream(stage, *, seed: int, split: str, per_device_batch: int) -> Iterator[dict]:
  """Random batches of the stage's task, a function of (seed, split, index) only.

  Each index draws the GLOBAL batch and keeps this process's slice, so a batch does not depend
  on how the devices are spread over hosts (multi-host tests compare against one host).
  """
  local, total = jax.local_device_count(), jax.device_count()
  lo = jax.process_index() * local * per_device_batch
  index = 0
  while True:
    rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], index])
    batch = stage.fake_batch(rng, total * per_device_batch)
    yield {k: v[lo:lo + local * per_device_batch].reshape((local, per_device_batch) + v.shape[1:])
           for k, v in batch.items()}
    index += 1


def make_stream(config, stage, split: str, *, seed: int, per_device_batch: int,
                min_batches: int = 0) -> Iterator[dict]:
  if config.synthetic_data:
    return synthetic_stream(stage, seed=seed, split=split, per_device_batch=per_device_batch)
  from emogen_jax.data import input_pipeline  # tf.data: imported only when real data is used
  kwargs = {}
  if config.get("shuffle_buffer", 0):
    kwargs["shuffle_buffer"] = int(config.shuffle_buffer)
  if config.get("windows_per_clip", 0):  # the pipeline uses it for training streams only
    kwargs["windows_per_clip"] = int(config.windows_per_clip)
  if stage.TASK == "generator":
    kwargs["reference_sampling"] = config.reference_sampling
    kwargs["same_clip_fraction"] = float(config.get("same_clip_fraction", 0.0))
  if split != "train":
    kwargs["eval_windows"] = int(config.eval_windows)
    kwargs["min_batches"] = min_batches
  return iter(input_pipeline.create_dataset(stage.TASK, config.data_dir, split,
                                            per_device_batch=per_device_batch,
                                            num_devices=jax.local_device_count(), seed=seed,
                                            train=split == "train", **kwargs))


def _segment(config) -> int:
  """Steps per training-stream segment (see train_batches); config may be a dict."""
  get = config.get
  return int(get("data_segment_steps", 0) or 0) or int(get("checkpoint_every_steps", 0) or 0) \
      or 1_000_000_000


def train_batches(config, stage, *, start_step: int, end_step: int, per_device_batch: int,
                  log: Callable[[str], None]) -> Iterator[tuple[int, dict]]:
  """(step, batch) for step = start_step .. end_step - 1: the stream of segment s0 (the last
  multiple of the segment length <= step) is seeded with stream_seed(seed, s0), so the batch of a
  step is the same whether or not the run was interrupted before it."""
  segment = _segment(config)
  step = start_step
  s0 = step - step % segment
  it = make_stream(config, stage, "train", seed=stream_seed(config.seed, s0),
                   per_device_batch=per_device_batch)
  if step > s0:
    log(f"data: re-creating the training stream of segment {s0} and skipping {step - s0} batches")
    for _ in range(step - s0):
      next(it)
  while step < end_step:
    if step % segment == 0 and step != s0:
      s0 = step
      it = make_stream(config, stage, "train", seed=stream_seed(config.seed, s0),
                       per_device_batch=per_device_batch)
    try:
      batch = next(it)
    except StopIteration:
      raise UserError(f"the training stream of {config.data_dir!r} ended at step {step}; the "
                      "input pipeline should repeat the training split") from None
    yield step, batch
    step += 1


# ---------------------------------------------------------------------------------- feedback

def _is_finite_tree(tree) -> bool:
  return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(tree))


def check_finite(pending: list[tuple[int, dict]], *, last_good: int | None, workdir: str):
  """Raises NonFiniteLossError naming the first step and term that went NaN/inf."""
  for step, metrics in pending:
    for name, value in metrics.items():
      if not np.isfinite(value):
        kept = (f"the last good checkpoint (step {last_good}) is kept in "
                f"{os.path.join(workdir, checkpoints.CHECKPOINTS_SUBDIR)}" if last_good is not None
                else "no checkpoint was written")
        raise NonFiniteLossError(f"training stopped: {name} = {value} at step {step + 1}; {kept}; "
                                 "lower the learning rate or check the data")


def _fmt(metrics: dict[str, float]) -> str:
  return " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


# ---------------------------------------------------------------------------------- training

class _StopSignal:
  """SIGTERM or SIGINT (Ctrl-C) -> finish the current step, save, exit cleanly (handlers are
  installed only in the main thread)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received = False
    self.name = ""
    self._previous: dict[int, Any] = {}

  def __enter__(self):
    for sig in self.SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. called from a worker): no handler
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = True
    self.name = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)

  def any_process(self) -> bool:
    if jax.process_count() == 1:
      return self.received
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.array([self.received], np.int32))
    if not self.name:
      self.name = "a stop signal on another host"
    return bool(np.any(flags))


def restore(manager, host_state: TrainState, meta: dict[str, Any], config, workdir: str,
            log: Callable[[str], None]) -> tuple[TrainState, int | None]:
  """(state, step of the restored checkpoint or None): the latest checkpoint of ``workdir`` put into
  ``host_state``, after checking that it was trained against the same frozen networks."""
  try:
    restored = train_checkpoints.restore_training(
        manager, models_target=host_state.trained_models(), train_target=_train_item(host_state))
  except (ValueError, KeyError, TypeError) as e:  # a state of another shape than the config's
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise UserError(f"the checkpoint in --workdir {workdir} does not fit this config ({first}); "
                    "resume with the config it was started with, or start a new --workdir") from None
  if restored is None:
    return host_state, None
  step, models, train, old_meta = restored
  host_state = host_state.replace(
      step=train["step"], rng=train["rng"], opt_state=train["opt_state"],
      extras=train["extras"], params={k: v["params"] for k, v in models.items()},
      batch_stats={k: v["batch_stats"] for k, v in models.items() if "batch_stats" in v})
  log(f"resuming from the checkpoint of step {step} in {workdir}")
  _check_frozen(old_meta.get("frozen", {}), meta.get("frozen", {}), workdir)
  old = old_meta.get("config", {})
  if old and _segment(old) != _segment(config):
    log(f"warning: data segment length {_segment(config)} differs from the saved run's "
        f"{_segment(old)} (data_segment_steps / checkpoint_every_steps changed): the resumed "
        "run sees other batches than an uninterrupted one would")
  return host_state, step


def evaluate(p_eval, state, config, stage, *, per_device: int, limit: int) -> tuple[dict, int, int]:
  """(metrics, batches, examples) of one validation pass: each batch's means over its real
  examples (mask 1), weighted by how many there are. Several hosts pad their shard's pass to the
  common length ``limit`` (see eval_steps)."""
  it = make_stream(config, stage, "validation", seed=config.seed, per_device_batch=per_device,
                   min_batches=limit if jax.process_count() > 1 else 0)
  sums: dict[str, float] = {}
  n = examples = 0
  while limit == 0 or n < limit:
    try:
      batch = next(it)
    except StopIteration:
      break
    m = jax.device_get(p_eval(state, batch))
    w = float(np.asarray(m.pop("examples"))[0])
    for k, v in m.items():
      sums[k] = sums.get(k, 0.0) + float(np.asarray(v)[0]) * w
    n += 1
    examples += w
  if n == 0:
    raise UserError(f"the validation split of {config.data_dir!r} is empty; preprocess more "
                    "clips or change the split options")
  return {k: v / max(examples, 1.0) for k, v in sums.items()}, n, int(examples)


class Feedback:
  """Progress lines, TensorBoard scalars and the validation history of one run.

  Training metrics arrive as device arrays per step (``add``) and are fetched only at ``flush``,
  so logging does not stall the device pipeline; a flush checks them for NaN/inf first.
  """

  def __init__(self, config, workdir: str, main: bool, log: Callable[[str], None]):
    self.config, self.workdir, self.log = config, workdir, log
    self.writer = _writer(workdir, main)
    self.history: list[dict[str, Any]] = []  # [{"step": s, **validation metrics, "examples": n}]
    self.last_train: dict[str, float] = {}
    self._pending: list[tuple[int, Any]] = []
    self._t, self._steps = time.time(), 0

  def add(self, step: int, metrics) -> None:
    self._pending.append((step, metrics))
    self._steps += 1

  def flush(self, step: int, *, last_saved: int | None) -> None:
    host = [(s, {k: float(np.asarray(v)[0]) for k, v in jax.device_get(m).items()})
            for s, m in self._pending]
    self._pending = []
    check_finite(host, last_good=last_saved, workdir=self.workdir)
    if not host:
      return
    means = {k: float(np.mean([m[k] for _, m in host])) for k in host[-1][1]}
    self.last_train = means
    rate = self._steps / max(time.time() - self._t, 1e-9)
    batch = self.config.batch_size
    self.writer.write_scalars(step, {**{f"train/{k}": v for k, v in means.items()},
                                     "steps_per_sec": rate, "examples_per_sec": rate * batch})
    self.log(f"step {step}/{int(self.config.num_train_steps)}: {_fmt(means)} | {rate:.3g} steps/s "
             f"{rate * batch:.3g} examples/s")
    self._t, self._steps = time.time(), 0

  def validation(self, step: int, metrics: dict[str, float], batches: int, examples: int) -> None:
    self.history.append({"step": int(step), **metrics, "examples": int(examples)})
    if 0 < batches < self.config.eval_batches:
      self.log(f"validation: only {batches} of {self.config.eval_batches} batches available")
    self.writer.write_scalars(step, {f"val/{k}": v for k, v in metrics.items()})
    self.log(f"validation at step {step} ({batches} batches, {examples} examples): {_fmt(metrics)}")

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()


class Saver:
  """Saves replicated states as training checkpoints and remembers the last good step."""

  def __init__(self, manager, meta: dict[str, Any], last_saved: int | None):
    self.manager, self.meta, self.last_saved = manager, meta, last_saved

  def __call__(self, state, step: int) -> None:
    host = unreplicate_to_host(state)
    if not (_is_finite_tree(host.params) and _is_finite_tree(host.opt_state)):
      raise NonFiniteLossError(f"training stopped: non-finite parameters at step {step}; the last "
                               f"good checkpoint (step {self.last_saved}) is kept")
    train_checkpoints.save_training(self.manager, step, models=host.trained_models(),
                                    train=_train_item(host), meta=self.meta)
    self.last_saved = step


def _every(n: int, done: int, is_last: bool) -> bool:
  return bool(n) and (done % n == 0 or is_last)


def train_and_evaluate(config, workdir: str, *, log: Callable[[str], None] | None = None) -> dict:
  """Trains ``config.stage`` in ``workdir`` (resuming from its latest checkpoint); returns the
  final validation metrics (also written to W/final_metrics.json)."""
  main = jax.process_index() == 0
  if log is None:
    log = (lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)) if main \
        else (lambda msg: None)
  if config.data_dir:  # as typed (relative, ~); the checkpoint paths resolve themselves when loaded
    config.data_dir = files.user_path(config.data_dir)
  # Every config value is checked before the convolutions are routed (which may build oneDNN).
  train_config.validate(config, device_count=jax.device_count())
  with onednn_conv.cpu_convolutions(config.get("cpu_convolutions", "auto"), log=log,
                                    where="config.cpu_convolutions"):
    return _train_and_evaluate(config, workdir, log)


def _train_and_evaluate(config, workdir: str, log: Callable[[str], None]) -> dict:
  main = jax.process_index() == 0
  stage = stages.get(config.stage)
  workdir = files.check_output_dir(workdir, "--workdir", "training workdir")
  check_resume(config, workdir)
  check_validation_mode(config, stage, workdir)
  os.makedirs(workdir, exist_ok=True)
  n_devices, n_local = jax.device_count(), jax.local_device_count()
  per_device = config.batch_size // n_devices
  per_device_eval = (int(config.get("eval_batch_size", 0)) or config.batch_size) // n_devices
  log(f"stage {config.stage}: {jax.process_count()} process(es), {n_devices} device(s) "
      f"({n_local} local, {jax.devices()[0].platform}), global batch {config.batch_size} = "
      f"{n_devices} x {per_device}, width {config.width}, {config.compute_dtype}; "
      f"{allocator.describe()}")
  if config.synthetic_data:
    log("data: synthetic random batches (config.synthetic_data=True)")

  # ------------------------------------------------------------------ state, restored if saved
  mode = str(config.get("validation", "during"))
  setup = stage.prepare(config, log=log)
  host_state = stage.init_state(config, jax.random.PRNGKey(config.seed), setup)
  # Every run of this config and setup starts from this state: an "only" run validates it as the
  # step-0 baseline that a "none" run left out.
  initial = None
  if mode == "only" and config.get("eval_at_start", False):  # what the eval step reads
    initial = {"params": host_state.params, "batch_stats": host_state.batch_stats,
               "extras": host_state.extras}
  manager = train_checkpoints.training_manager(workdir, keep=config.keep_checkpoints)
  meta = {**stage.checkpoint_meta(config, setup), "config": json.loads(config.to_json_best_effort())}
  host_state, restored_step = restore(manager, host_state, meta, config, workdir, log)
  start_step = int(host_state.step)
  save = Saver(manager, meta, last_saved=restored_step)
  state = replicate(host_state)
  del host_state

  # ------------------------------------------------------------------ compiled steps, feedback
  step_options = getattr(stage, "train_step_options", None)
  compiled_steps: dict[tuple, Callable] = {}

  def train_step_for(state):
    """The pmapped step for this state (a stage may need another one after a validation)."""
    options = step_options(config, state) if step_options is not None else {}
    key = tuple(sorted(options.items()))
    if key not in compiled_steps:
      compiled_steps[key] = pmap_train_step(stage.make_train_step(config, setup, **options))
    return compiled_steps[key]

  p_train = train_step_for(state)
  p_eval = None if mode == "none" else jax.pmap(stage.make_eval_step(config, setup), axis_name=AXIS)
  limit = 0 if mode == "none" else eval_steps(config, stage, per_device_eval)
  feedback = Feedback(config, workdir, main, log)
  sampler = None if mode == "only" else _make_sampler(config, stage, setup, workdir, per_device,
                                                      main, log)
  after_validation = getattr(stage, "after_validation", None)

  def validate(state, step):
    metrics, batches, examples = evaluate(p_eval, state, config, stage,
                                          per_device=per_device_eval, limit=limit)
    feedback.validation(step, metrics, batches, examples)
    return metrics

  # ------------------------------------------------------------------ the loop
  num_steps = int(config.num_train_steps)
  val_metrics: dict[str, float] = {}
  if mode == "only":
    return _validate_only(config, workdir, state, initial, restored_step, validate, feedback,
                          manager, main, log)
  if start_step >= num_steps:
    log(f"already at step {start_step} >= num_train_steps={num_steps}: nothing to train")
  else:
    log(f"training steps {start_step + 1}..{num_steps}")
  if mode == "during" and config.get("eval_at_start", False) and start_step == 0 and num_steps > 0:
    validate(state, 0)  # the baseline the learning curve starts from
  try:
    with _StopSignal() as stop:
      for step, batch in train_batches(config, stage, start_step=start_step, end_step=num_steps,
                                       per_device_batch=per_device, log=log):
        state, metrics = p_train(state, batch)
        feedback.add(step, metrics)
        done = step + 1
        is_last = done == num_steps
        stop_now = stop.any_process()
        if done % config.log_every_steps == 0 or is_last or stop_now:
          feedback.flush(done, last_saved=save.last_saved)
        if mode == "during" and _every(config.eval_every_steps, done, is_last):
          feedback.flush(done, last_saved=save.last_saved)
          val_metrics = validate(state, done)
          if after_validation is not None:
            state = after_validation(config, state, val_metrics, log)
            p_train = train_step_for(state)
        if sampler is not None and _every(config.sample_every_steps, done, is_last):
          sampler(state, done)
        if _every(config.checkpoint_every_steps, done, is_last) or stop_now:
          feedback.flush(done, last_saved=save.last_saved)
          save(state, done)
          log(f"checkpoint: step {done} -> {os.path.join(workdir, 'checkpoints', str(done))}")
        if stop_now:
          manager.wait_until_finished()
          log(f"{stop.name}: saved step {done}; exiting (run again with the same --workdir to "
              "resume)")
          manager.close()
          feedback.close()
          return {"stopped_at": done, **val_metrics}
  except BaseException:
    # A crash or a non-finite stop must not lose the checkpoint whose async write is running.
    manager.wait_until_finished()
    raise

  # ------------------------------------------------------------------ final validation, summary
  manager.wait_until_finished()
  manager.close()
  final_step = max(start_step, num_steps)
  if not val_metrics and mode == "during":
    val_metrics = validate(state, final_step)
  return _finish(config, workdir, final_step, val_metrics, feedback, main, log)


def _finish(config, workdir: str, step: int, val_metrics: dict, feedback: "Feedback", main: bool,
            log, earlier: dict | None = None) -> dict:
  """The run's summary (W/final_metrics.json, over the fields of ``earlier``)."""
  history = feedback.history
  summary = {**(earlier or {}), "stage": config.stage, "step": step, "validation": val_metrics,
             "validation_examples": history[-1]["examples"] if history else 0,
             "validation_history": history}
  if feedback.last_train or not earlier:
    summary["train"] = feedback.last_train
  if main:
    files.write_file(os.path.join(workdir, "final_metrics.json"),
                     json.dumps(summary, indent=2, sort_keys=True))
  feedback.close()
  if val_metrics:
    log(f"done: {config.stage} step {step}, validation {_fmt(val_metrics)} (W/final_metrics.json)")
  else:
    log(f"done: {config.stage} step {step}, not validated (config.validation='none'; validate "
        "with --config.validation=only)")
  return summary


def _validate_only(config, workdir: str, state, initial, restored_step: int | None, validate,
                   feedback: "Feedback", manager, main: bool, log) -> dict:
  """config.validation == "only": the initial state as step 0 (with eval_at_start), then the latest
  checkpoint; the summary keeps what the training run wrote (its last training metrics)."""
  manager.close()
  val_metrics: dict[str, float] = {}
  if initial is not None:
    val_metrics = validate(state.replace(**{k: replicate(v) for k, v in initial.items()}), 0)
  if restored_step is not None and restored_step > 0:
    val_metrics = validate(state, restored_step)
  earlier = {}
  path = os.path.join(workdir, "final_metrics.json")
  if os.path.isfile(path):
    with open(path) as f:
      earlier = json.load(f)
  return _finish(config, workdir, restored_step or 0, val_metrics, feedback, main, log, earlier)


def eval_steps(config, stage, per_device: int) -> int:
  """Validation batches per evaluation, the same on every host (0: until the stream ends).

  Each host reads its own shard of the split, and shards can differ by a clip: a host whose
  pass ended early would leave the others waiting in a collective. So with several hosts every
  host runs the longest host's pass (config.eval_batches=0) or config.eval_batches batches
  (capped by that pass), its shorter stream padded with masked examples."""
  want = int(config.eval_batches)
  if jax.process_count() == 1 or config.synthetic_data:
    return want
  from emogen_jax.data import input_pipeline
  longest = max(input_pipeline.eval_pass_batches(
      stage.TASK, config.data_dir, "validation", global_batch=jax.local_device_count() * per_device,
      eval_windows=int(config.eval_windows), process_count=jax.process_count()))
  return min(want, longest) if want else longest


# Config fields that fix the shape of the saved state: a resume must keep them.
RESUME_FIXED = ("stage", "width", "lr_schedule")


def check_validation_mode(config, stage, workdir: str) -> None:
  """config.validation cases that cannot give the figures of a run that validates as it goes."""
  mode = str(config.get("validation", "during"))
  every, steps = int(config.eval_every_steps), int(config.num_train_steps)
  if mode == "none" and hasattr(stage, "after_validation") and 0 < every < steps:
    raise UserError(f"config.validation='none' would skip the validations every {every} steps, "
                    f"after which the {config.stage} stage changes its training (the sync weight "
                    f"switch); use config.validation='during', or eval_every_steps=0 (validate "
                    f"only at the end)")
  if mode == "only" and not config.get("eval_at_start", False) \
      and checkpoints.latest_step_dir(workdir) is None:
    raise UserError(f"config.validation='only' but --workdir {workdir} has no checkpoint to "
                    "validate; train first (config.validation='during' or 'none'), or set "
                    "config.eval_at_start=True to validate the initial state")


def check_resume(config, workdir: str) -> None:
  """Before anything is built: a workdir with checkpoints must hold a run of this stage with the
  same state shape (else orbax fails deep inside the restore)."""
  step_dir = checkpoints.latest_step_dir(workdir)
  if step_dir is None:
    return
  old = checkpoints.load_meta(step_dir).get("config", {})
  step = os.path.basename(step_dir)
  if old.get("stage", config.stage) != config.stage:
    raise UserError(f"--workdir {workdir} holds a {old['stage']} run (step {step}), but the config "
                    f"trains {config.stage}; give each stage its own --workdir")
  changed = [f"{k}={old[k]!r} -> {config[k]!r}" for k in RESUME_FIXED
             if k in old and k in config and old[k] != config[k]]
  if changed:
    raise UserError(f"--workdir {workdir} holds a run (step {step}) whose config differs in "
                    f"{', '.join(changed)}; these fix the shape of the saved state: resume with the "
                    "saved values or start a new --workdir")


def _check_frozen(saved: dict, now: dict, workdir: str) -> None:
  """A resumed run must use the frozen networks (expert, VGG) its first part trained against."""
  for name, info in now.items():
    old = saved.get(name)
    if old and old.get("fingerprint") != info.get("fingerprint"):
      raise UserError(f"the frozen {name} now given ({info.get('source')}) is not the one the run in "
                      f"{workdir} started with ({old.get('source')}; weights differ); pass that "
                      "checkpoint again, or start a new --workdir")


def _train_item(state: TrainState) -> dict[str, Any]:
  """The checkpoint's `train` item: what a resume needs beyond the networks (`models` item)."""
  return {"step": state.step, "rng": state.rng, "opt_state": state.opt_state,
          "extras": state.extras}


def _writer(workdir: str, main: bool):
  from clu import metric_writers
  return metric_writers.create_default_writer(workdir, just_logging=not main)


def _make_sampler(config, stage, setup, workdir, per_device, main, log):
  """(state, step) -> writes W/samples/step_<step>.png from a fixed validation batch, for stages
  with a ``make_sampler`` hook (the generator)."""
  if not hasattr(stage, "make_sampler") or not config.sample_every_steps:
    return None
  generate, image = stage.make_sampler(config, setup)
  p_gen = jax.pmap(generate, axis_name=AXIS)
  batch = next(make_stream(config, stage, "validation", seed=config.seed,
                           per_device_batch=per_device))

  def sample(state, step):
    generated = np.asarray(jax.device_get(p_gen(state, batch)))[0]
    if not main:
      return
    import cv2
    out = os.path.join(workdir, "samples", f"step_{step:08d}.png")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    first = {k: np.asarray(v)[0] for k, v in batch.items()}
    cv2.imwrite(out, image(first, generated))  # frames are BGR, as cv2 writes them
    log(f"samples: {out} (reference | masked input | generated | target)")

  return sample
