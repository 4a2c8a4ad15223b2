"""Training of the three EmoGen stages: lip-sync expert, emotion discriminator, generator.

  python -m emogen_jax.train --config configs/emogen.py --workdir W --config.data_dir=D
  python -m emogen_jax.train --config configs/syncnet.py:smoke --workdir W --config.synthetic_data=True

The config's ``stage`` picks the step module (emogen_jax/{syncnet,emotion_disc,emogen}_step.py).
Steps run under ``jax.pmap`` over the local devices (axis "batch"); the global batch is split evenly
over ``jax.device_count()`` devices (all hosts). Checkpoints: ``W/checkpoints/<step>/`` (orbax,
async, last ``keep_checkpoints`` kept); a run on a workdir with checkpoints resumes from the latest.
Exact resume: the state holds step, RNG, optimizer states and stage extras (the EmoGen sync
weight); the training stream is re-seeded with (seed, s) at every multiple s of
``data_segment_steps`` (default: checkpoint_every_steps) and a resume inside a segment skips the
batches already used, so a resumed run sees the same batches as an uninterrupted one (keep the
segment length unchanged across a resume; a change is warned about). SIGTERM saves a checkpoint and exits cleanly.
Feedback (process 0 only): progress lines, TensorBoard + console via clu, validation every
``eval_every_steps``, sample grids under W/samples/, W/final_metrics.json at the end.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from emogen_jax.errors import UserError, cli_main
from emogen_jax.models import checkpoints
from emogen_jax.train import config as train_config
from emogen_jax.train import distributed
from emogen_jax.train.stages import emogen as emogen_step, emotion_disc as emotion_disc_step, syncnet as syncnet_step
from emogen_jax.train.state import TrainState, replicate, unreplicate_to_host

STAGES = {"syncnet": syncnet_step, "emotion_disc": emotion_disc_step, "emogen": emogen_step}
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


def sample_grid(batch: dict, generated: np.ndarray, max_examples: int = 4) -> np.ndarray:
  """uint8 BGR image: one row per (example, frame): reference | masked input | generated | target."""
  rows = []
  for b in range(min(max_examples, generated.shape[0])):
    for t in range(generated.shape[1]):
      face = batch["face"][b, t]
      tiles = [face[..., 3:6], face[..., 0:3], generated[b, t], batch["target"][b, t]]
      rows.append(np.concatenate(tiles, axis=1))
  grid = np.concatenate(rows, axis=0)
  return (np.clip(grid, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _fmt(metrics: dict[str, float]) -> str:
  return " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


# ---------------------------------------------------------------------------------- training

class _StopSignal:
  """SIGTERM -> finish the current step, save, exit cleanly (installed only in the main thread)."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. called from a worker): no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def any_process(self) -> bool:
    if jax.process_count() == 1:
      return self.received
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.array([self.received], np.int32))
    return bool(np.any(flags))


def train_and_evaluate(config, workdir: str, *, log: Callable[[str], None] | None = None) -> dict:
  """Trains ``config.stage`` in ``workdir`` (resuming from its latest checkpoint); returns the
  final validation metrics (also written to W/final_metrics.json)."""
  main = jax.process_index() == 0
  if log is None:
    log = (lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)) if main \
        else (lambda msg: None)
  train_config.validate(config, device_count=jax.device_count())
  stage = STAGES[config.stage]
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  n_devices, n_local = jax.device_count(), jax.local_device_count()
  per_device = config.batch_size // n_devices
  log(f"stage {config.stage}: {jax.process_count()} process(es), {n_devices} device(s) "
      f"({n_local} local, {jax.devices()[0].platform}), global batch {config.batch_size} = "
      f"{n_devices} x {per_device}, width {config.width}, {config.compute_dtype}")
  if config.synthetic_data:
    log("data: synthetic random batches (config.synthetic_data=True)")

  setup = stage.prepare(config, log=log)
  host_state = stage.init_state(config, jax.random.PRNGKey(config.seed), setup)
  manager = checkpoints.training_manager(workdir, keep=config.keep_checkpoints)
  meta = {**stage.checkpoint_meta(config, setup), "config": json.loads(config.to_json_best_effort())}

  restored = checkpoints.restore_training(
      manager, models_target=host_state.trained_models(), train_target=_train_item(host_state))
  if restored is not None:
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
  start_step = int(host_state.step)
  last_saved = start_step if restored is not None else None

  writer = _writer(workdir, main)
  state = replicate(host_state)
  del host_state
  p_train = jax.pmap(stage.make_train_step(config, setup), axis_name="batch", donate_argnums=(0,))
  p_eval = jax.pmap(stage.make_eval_step(config, setup), axis_name="batch")

  limit = eval_steps(config, stage, per_device)

  def evaluate(state, step) -> dict[str, float]:
    # Several hosts: each pads its shard's pass to the common length (see eval_steps).
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
      # batch means over its real examples (mask 1), weighted by how many there are
      w = float(np.asarray(m.pop("examples"))[0])
      for k, v in m.items():
        sums[k] = sums.get(k, 0.0) + float(np.asarray(v)[0]) * w
      n += 1
      examples += w
    if n == 0:
      raise UserError(f"the validation split of {config.data_dir!r} is empty; preprocess more "
                      "clips or change the split options")
    metrics = {k: v / max(examples, 1.0) for k, v in sums.items()}
    history.append({"step": int(step), **metrics, "examples": int(examples)})
    if 0 < n < config.eval_batches:
      log(f"validation: only {n} of {config.eval_batches} batches available")
    writer.write_scalars(step, {f"val/{k}": v for k, v in metrics.items()})
    log(f"validation at step {step} ({n} batches, {int(examples)} examples): {_fmt(metrics)}")
    return metrics

  sampler = _make_sampler(config, stage, setup, workdir, per_device, main, log)

  def save(state, step):
    nonlocal last_saved
    host = unreplicate_to_host(state)
    if not (_is_finite_tree(host.params) and _is_finite_tree(host.opt_state)):
      raise NonFiniteLossError(f"training stopped: non-finite parameters at step {step}; the last "
                               f"good checkpoint (step {last_saved}) is kept")
    checkpoints.save_training(manager, step, models=host.trained_models(),
                              train=_train_item(host), meta=meta)
    last_saved = step

  num_steps = int(config.num_train_steps)
  val_metrics: dict[str, float] = {}
  history: list[dict[str, Any]] = []  # [{"step": s, **validation metrics}]
  last_train: dict[str, float] = {}
  pending: list[tuple[int, Any]] = []
  if start_step >= num_steps:
    log(f"already at step {start_step} >= num_train_steps={num_steps}: nothing to train")
  else:
    log(f"training steps {start_step + 1}..{num_steps}")
  if config.get("eval_at_start", False) and start_step == 0 and num_steps > 0:
    evaluate(state, 0)  # the baseline the learning curve starts from
  t_log, steps_since_log = time.time(), 0

  def flush_pending(step):
    nonlocal pending, t_log, steps_since_log, last_train
    host = [(s, {k: float(np.asarray(v)[0]) for k, v in jax.device_get(m).items()})
            for s, m in pending]
    pending = []
    check_finite(host, last_good=last_saved, workdir=workdir)
    if not host:
      return
    means = {k: float(np.mean([m[k] for _, m in host])) for k in host[-1][1]}
    last_train = means
    dt = max(time.time() - t_log, 1e-9)
    rate = steps_since_log / dt
    writer.write_scalars(step, {**{f"train/{k}": v for k, v in means.items()},
                                "steps_per_sec": rate,
                                "examples_per_sec": rate * config.batch_size})
    log(f"step {step}/{num_steps}: {_fmt(means)} | {rate:.3g} steps/s "
        f"{rate * config.batch_size:.3g} examples/s")
    t_log, steps_since_log = time.time(), 0

  try:
    with _StopSignal() as stop:
      batches = train_batches(config, stage, start_step=start_step, end_step=num_steps,
                              per_device_batch=per_device, log=log)
      for step, batch in batches:
        state, metrics = p_train(state, batch)
        pending.append((step, metrics))
        done = step + 1
        steps_since_log += 1
        is_last = done == num_steps
        stop_now = stop.any_process()
        if done % config.log_every_steps == 0 or is_last or stop_now:
          flush_pending(done)
        if config.eval_every_steps and (done % config.eval_every_steps == 0 or is_last):
          flush_pending(done)
          val_metrics = evaluate(state, done)
          state = _after_validation(config, state, val_metrics, log)
        if sampler is not None and config.sample_every_steps and (
            done % config.sample_every_steps == 0 or is_last):
          sampler(state, done)
        if (config.checkpoint_every_steps and done % config.checkpoint_every_steps == 0) \
            or is_last or stop_now:
          flush_pending(done)
          save(state, done)
          log(f"checkpoint: step {done} -> {os.path.join(workdir, 'checkpoints', str(done))}")
        if stop_now:
          manager.wait_until_finished()
          log(f"SIGTERM: saved step {done}; exiting (run again with the same --workdir to resume)")
          manager.close()
          writer.close()
          return {"stopped_at": done, **val_metrics}
  except BaseException:
    # A crash or a non-finite stop must not lose the checkpoint whose async write is running.
    manager.wait_until_finished()
    raise

  manager.wait_until_finished()
  manager.close()
  final_step = max(start_step, num_steps)
  if not val_metrics:
    val_metrics = evaluate(state, final_step)
  summary = {"stage": config.stage, "step": final_step, "validation": val_metrics,
             "validation_examples": history[-1]["examples"] if history else 0,
             "train": last_train, "validation_history": history}
  if main:
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
      json.dump(summary, f, indent=2, sort_keys=True)
  writer.flush()
  writer.close()
  log(f"done: {config.stage} step {final_step}, validation {_fmt(val_metrics)} "
      f"(W/final_metrics.json)")
  return summary


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


def _after_validation(config, state, val_metrics, log):
  """EmoGen: switch the sync-loss weight on for good once the validation sync loss is low."""
  if config.stage != "emogen":
    return state
  w = float(np.asarray(jax.device_get(state.extras["w_sync"]))[0])
  new = emogen_step.maybe_enable_sync(config, w, val_metrics)
  if new != w:
    log(f"validation sync loss {val_metrics['sync']:.4f} < {config.sync_threshold}: "
        f"w_sync {w} -> {new} from now on")
    extras = dict(state.extras)
    extras["w_sync"] = replicate(np.float32(new))
    state = state.replace(extras=extras)
  return state


def _writer(workdir: str, main: bool):
  from clu import metric_writers
  return metric_writers.create_default_writer(workdir, just_logging=not main)


def _make_sampler(config, stage, setup, workdir, per_device, main, log):
  """(state, step) -> writes W/samples/step_<step>.png from a fixed validation batch (generator)."""
  if stage is not emogen_step or not config.sample_every_steps:
    return None
  p_gen = jax.pmap(emogen_step.make_generate(config, setup), axis_name="batch")
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
    cv2.imwrite(out, sample_grid(first, generated))  # frames are BGR, as cv2 writes them
    log(f"samples: {out} (reference | masked input | generated | target)")

  return sample


# --------------------------------------------------------------------------------------- CLI

def _flag_values():
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
      "config", None, "Training config file, e.g. configs/emogen.py or configs/emogen.py:smoke; "
      "override fields with --config.FIELD=VALUE.", flag_values=fv, lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples "
                      "(an existing one resumes from its latest checkpoint).", flag_values=fv)
  flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.",
                      flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.", flag_values=fv)
  return fv


def _check_config_path(argv):
  for i, arg in enumerate(argv[1:], start=1):
    value = None
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    if value is not None:
      path = value.split(":", 1)[0]
      if not os.path.isfile(path):
        raise UserError(f"--config {path!r} is not a file; use one of configs/syncnet.py, "
                        "configs/emotion_disc.py, configs/emogen.py (optionally with :smoke)")


@cli_main
def main(argv=None) -> int:
  from absl import flags
  argv = list(sys.argv if argv is None else [sys.argv[0]] + list(argv))
  fv = _flag_values()
  if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
    print(__doc__)
    print(fv.main_module_help() if hasattr(fv, "main_module_help") else fv.get_help())
    return 0
  _check_config_path(argv)
  saved_argv = sys.argv
  try:
    # ml_collections' config flag finds the --config.FIELD overrides in sys.argv itself.
    sys.argv = argv
    fv(argv)
    config = fv["config"].value
    if config is not None:
      config.stage  # noqa: B018 - a config file that failed to load raises here
  except (flags.Error, ValueError, AttributeError, KeyError, OSError) as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    # A config file that raised: its own message is the last line of the quoted traceback.
    msg = lines[-1] if any(l.startswith("Traceback") for l in lines) else " ".join(lines)
    raise UserError(f"bad command line: {msg[:400]} (see --help)") from None
  finally:
    sys.argv = saved_argv
  if config is None:
    raise UserError("--config is required, e.g. --config configs/emogen.py:smoke")
  if not fv["workdir"].value:
    raise UserError("--workdir is required: the directory for checkpoints and logs")
  distributed.initialize(fv["coordinator_address"].value, fv["num_processes"].value,
                         fv["process_id"].value)
  summary = train_and_evaluate(config, fv["workdir"].value)
  return 0 if summary else 1


if __name__ == "__main__":
  sys.exit(main())
