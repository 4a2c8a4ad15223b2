"""The training stages in order, on one preprocessed corpus, with the learnability targets.

  1. the lip-sync expert (configs/syncnet.py)          -> W/syncnet
  2. the emotion discriminator (configs/emotion_disc.py) -> W/emotion_disc
  3. the independent emotion classifier, the judge of EmoAcc (configs/emotion_disc.py with
     another seed: its own init and training stream)  -> W/emotion_judge
  4. EmoGen (configs/emogen.py), with 1. as its frozen expert, 2. as its initial emotion
     discriminator and 3. scoring its validation windows -> W/emogen

``train_stages`` is shared by ``python -m emogen_jax.quickstart`` and
``scripts/reproduce_training.py``. The lip-sync expert does not depend on the two emotion
classifiers, so (``parallel=True``, the default) it trains in a child process beside them
(docs/design.md "CPU speed": 702 -> 640 s on the quickstart corpus, 2 cores, identical results).
Nor does EmoGen's training need it while the sync weight is 0 (all of a smoke run): EmoGen trains
next, without validating (config.validation "none"), while the expert's process goes on at idle
priority on the cycles EmoGen leaves; EmoGen's two validations (the initial state and the last
step) follow once the expert is done (config.validation "only"), with the same figures.
A stage whose workdir already holds the final metrics of the requested step count is skipped
(its figures are read back); an unfinished one resumes from its latest checkpoint. The EmoGen
stage validates once before its first step, the baseline of the "validation L1 falls" target.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import math
import os
import re
import sys
import time
from typing import Any, Callable

from emogen_jax.errors import UserError

# The trainings of the recipe, in order (the judge is a second run of the emotion_disc stage).
TRAININGS = ("syncnet", "emotion_disc", "emotion_judge", "emogen")
# The judge is a second configs/emotion_disc.py run (its own seed, so its own init and training
# stream): EmoGen never trains against it, so its EmoAcc of generated clips is honest; EmoGen's
# validation reports it (config.emotion_classifier_checkpoint).
CONFIG_OF = {"emotion_judge": "emotion_disc"}
JUDGE_SEED_OFFSET = 1000
# Validations per run (10 unless named). EmoGen's generates every window with all six labels: on
# the quickstart corpus one takes as long as ~100 training steps (30-45 s), so it validates once at
# the end (plus the baseline before the first step) and spends the time on training steps, which
# emotion control needs (docs/design.md "Emotion control").
# SyncNet and the two emotion classifiers validate twice (half way and at the end) and still
# checkpoint ten times, so their training streams keep the segments, and the weights the bits, of
# ten validations: the eight left out cost 1-2 s each of SyncNet's (the quickstart's first 264 s
# wait for it) and ~0.7 s each of the classifiers' (while SyncNet trains beside them).
VALIDATIONS = {"emogen": 1, "syncnet": 2, "emotion_disc": 2, "emotion_judge": 2}
# Checkpoints per run (as many as validations unless named). EmoGen still saves half way, so a
# stopped quickstart resumes from there; the training stream keeps this cadence as its segment
# length, as when a validation came with every checkpoint.
CHECKPOINTS = {"emogen": 2, "syncnet": 10, "emotion_disc": 10, "emotion_judge": 10}
# EmoGen's validation windows per clip (the smoke configs' 6 otherwise): each window is generated
# with all six labels, so its two validations (the baseline before the first step and the end)
# cost ~24 s each on the quickstart corpus at 6; the trained generator does not depend on them.
EMOGEN_EVAL_WINDOWS = 3
# What a CPU smoke run (width 0.25) on the synthetic corpus must reach to count as "learns".
TARGETS = {"syncnet_accuracy": 0.75, "emotion_accuracy": 0.60, "emogen_l1_decrease": 0.30}
TARGET_TEXT = {"syncnet_accuracy": "SyncNet validation accuracy (in sync vs off sync)",
               "emotion_accuracy": "emotion-disc validation accuracy (6 classes)",
               "emogen_l1_decrease": "EmoGen validation L1 decrease (1 - last/first)"}
_STEP_LINE = re.compile(r"^step (\d+)/(\d+): (.*)$")


def configs_dir() -> str:
  """The repository's configs/ folder (next to the emogen_jax package in a source checkout)."""
  return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def load_config(name: str, variant: str | None = "smoke", **overrides):
  """configs/<name>.py:<variant> as a ConfigDict, with ``overrides`` applied."""
  path = os.path.join(configs_dir(), f"{name}.py")
  if not os.path.isfile(path):
    raise UserError(f"training config {path} not found; run from a source checkout of emogen_jax "
                    "(git clone ... && pip install -e .), which has the configs/ folder")
  spec = importlib.util.spec_from_file_location(f"_emogen_cfg_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config(variant)
  for k, v in overrides.items():
    config[k] = v
  return config


def finished_summary(workdir: str, steps: int, validated: bool = True) -> dict | None:
  """W/final_metrics.json when the run in W reached ``steps`` (and, with ``validated``, was
  validated there: a config.validation "none" run was not), else None."""
  path = os.path.join(workdir, "final_metrics.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  if int(summary.get("step", -1)) < steps or (validated and not summary.get("validation")):
    return None
  return summary


def scalar_history(workdir: str, tag: str) -> dict[int, float]:
  """{step: value} of one scalar from W's TensorBoard event files (the record of earlier runs)."""
  import tensorflow as tf
  out: dict[int, float] = {}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    try:
      for event in tf.compat.v1.train.summary_iterator(path):
        for v in event.summary.value:
          if v.tag == tag:
            out[int(event.step)] = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") \
                else float(v.simple_value)
    except tf.errors.DataLossError:  # a run killed while writing: keep what was read
      continue
  return out


class StageProgress:
  """A ``log`` for train.train_and_evaluate: a tqdm bar over the steps (moved by its step lines,
  with their metrics as the postfix); every other line is printed above the bar."""

  def __init__(self, name: str, total: int, enabled: bool = True):
    from tqdm import tqdm
    self.bar = tqdm(total=total, desc=name, unit="step", disable=not enabled, file=sys.stderr,
                    dynamic_ncols=True)
    self.enabled = enabled

  def __call__(self, msg: str) -> None:
    if not self.enabled:
      print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
      return
    m = _STEP_LINE.match(msg)
    if m:
      done = int(m.group(1))
      self.bar.update(max(0, done - self.bar.n))
      self.bar.set_postfix_str(m.group(3)[:90], refresh=True)
    else:
      self.bar.write(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr)

  def close(self) -> None:
    self.bar.close()


def cadence(name: str, steps: int, eval_every: int = 0) -> tuple[int, int]:
  """(validate every, checkpoint every) in steps for a recipe run of ``steps``: VALIDATIONS[name]
  validations and CHECKPOINTS[name] checkpoints per run, neither closer than 25 steps; a nonzero
  ``eval_every`` sets both. The checkpoint cadence is also the training stream's segment length."""
  def every(per_run: int) -> int:
    return int(eval_every) or max(steps // per_run, min(steps, 25))
  validations = VALIDATIONS.get(name, 10)
  return every(validations), every(CHECKPOINTS.get(name, validations))


def run_stage(name: str, workdir: str, *, data_dir: str, steps: int, width: float = 0.25,
              seed: int = 0, eval_every: int = 0, eval_batches: int = 0, progress: bool = True,
              validation: str = "during", **extra) -> dict:
  """Trains one stage (smoke config + overrides) in ``workdir``; returns its final summary plus
  ``wall_s`` and ``skipped`` (True when the workdir had already finished these steps).
  ``validation`` is config.validation: "none" trains only, a later "only" validates; the summary
  keeps both parts' times (``train_wall_s``, ``validation_wall_s``, their sum ``wall_s``)."""
  done = finished_summary(workdir, steps, validated=validation != "none")
  if done is not None:
    return {**done, "wall_s": done.get("wall_s", 0.0), "skipped": True}
  from emogen_jax.train import loop as train
  eval_steps, checkpoint_steps = cadence(name, steps, eval_every)
  if name == "emogen":  # a sample grid with each checkpoint
    extra.setdefault("sample_every_steps", checkpoint_steps)
  config = load_config(CONFIG_OF.get(name, name), data_dir=data_dir, width=width, seed=seed, num_train_steps=steps,
                       eval_every_steps=eval_steps, checkpoint_every_steps=checkpoint_steps,
                       eval_batches=eval_batches, log_every_steps=max(1, min(25, steps // 50)),
                       validation=validation, **extra)
  log = StageProgress(name, steps, enabled=progress)
  t0 = time.time()
  try:
    summary = train.train_and_evaluate(config, workdir, log=log)
  finally:
    log.close()
  if "stopped_at" in summary:  # SIGTERM / Ctrl-C: the loop saved a checkpoint and returned
    raise UserError(f"the {name} training stopped at step {summary['stopped_at']} (checkpoint saved "
                    f"in {workdir}); run the same command again to resume")
  wall = round(time.time() - t0, 1)
  times = {"wall_s": wall}
  if validation == "none":
    times["train_wall_s"] = wall
  elif validation == "only":
    times["validation_wall_s"] = wall
    times["wall_s"] = round(float(summary.get("train_wall_s", 0.0)) + wall, 1)
  summary.update(times, skipped=False)
  # Kept with the run, so that a later call that skips this stage reports its wall time too.
  _store_fields(workdir, **times)
  return summary


def _store_fields(workdir: str, **fields) -> None:
  """Adds ``fields`` to the run's W/final_metrics.json (nothing when it has none)."""
  path = os.path.join(workdir, "final_metrics.json")
  if os.path.isfile(path):
    with open(path) as f:
      stored = json.load(f)
    stored.update(fields)
    with open(path, "w") as f:
      json.dump(stored, f, indent=2, sort_keys=True)


# The stage trained in a child process (parallel=True), and those trained beside it. EmoGen
# trains beside it too (``emogen_beside``): at smoke settings its sync weight stays 0, so the
# expert only scores EmoGen's validations, which wait for it (config.validation "none", then
# "only"). Meanwhile the expert's process runs at idle priority and takes only the cycles that
# EmoGen's training leaves (docs/design.md "CPU speed").
BACKGROUND = "syncnet"
BESIDE = ("emotion_disc", "emotion_judge")
BACKGROUND_LOG = "train_log.txt"


def lower_priority(pid: int) -> int:
  """Every thread of process ``pid`` into the idle scheduling class (Linux SCHED_IDLE: it runs
  only on a core that no other thread wants), else to nice 19; threads it starts later inherit
  that. Returns how many threads were lowered (0 where the platform allows neither)."""
  try:
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
  except OSError:
    tids = [pid]
  lowered = 0
  for tid in tids:
    try:
      os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
      lowered += 1
      continue
    except (AttributeError, OSError):
      pass
    try:
      os.setpriority(os.PRIO_PROCESS, tid, 19)
      lowered += 1
    except (AttributeError, OSError):
      pass
  return lowered


def _run_stage_logged(conn, log_path: str, name: str, workdir: str, kwargs: dict) -> None:
  """run_stage in a child process, every line it (and the native libraries) prints going to
  ``log_path`` (the parent's progress bars keep the terminal); sends ("ok", summary) or
  ("error", message, is_user_error) through ``conn``."""
  try:
    with open(log_path, "a", buffering=1) as f:
      os.dup2(f.fileno(), 1)
      os.dup2(f.fileno(), 2)
      with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        summary = run_stage(name, workdir, **{**kwargs, "progress": False})
    conn.send(("ok", summary))
  except BaseException as e:  # reported to the parent, which raises it there
    conn.send(("error", f"{type(e).__name__}: {e}" if not isinstance(e, UserError) else str(e),
               isinstance(e, UserError)))
  finally:
    conn.close()


class _Background:
  """One stage training in a spawned child process; ``result`` follows its log with a progress
  bar (or plain lines) until it ends and returns its summary; ``stop`` ends it early."""

  def __init__(self, name: str, workdir: str, steps: int, kwargs: dict, progress: bool):
    import multiprocessing
    self.name, self.steps, self.progress = name, steps, progress
    self.log_path = os.path.join(workdir, BACKGROUND_LOG)
    os.makedirs(workdir, exist_ok=True)
    self._offset = os.path.getsize(self.log_path) if os.path.isfile(self.log_path) else 0
    ctx = multiprocessing.get_context("spawn")  # not fork: the parent holds JAX's and TF's threads
    self._conn, child_conn = ctx.Pipe(duplex=False)
    self._proc = ctx.Process(target=_run_stage_logged, name=f"emogen-{name}", daemon=True,
                             args=(child_conn, self.log_path, name, workdir,
                                   {**kwargs, "steps": steps}))
    self._proc.start()
    child_conn.close()

  def result(self) -> dict:
    log = StageProgress(self.name, self.steps, enabled=self.progress)
    step_line = re.compile(r"(step \d+/\d+: .*)$")
    try:
      while not self._conn.poll(1.0):
        self._follow(log, step_line)
        if not self._proc.is_alive() and not self._conn.poll(0):
          raise UserError(f"the {self.name} training process ended without a result (exit "
                          f"status {self._proc.exitcode}: out of memory or killed?); its log is "
                          f"{self.log_path}; rerun to resume it")
      self._follow(log, step_line)
      reply = self._conn.recv()
    finally:
      log.close()
    self._proc.join()
    if reply[0] == "ok":
      return reply[1]
    if reply[2]:
      raise UserError(reply[1])
    raise RuntimeError(f"the {self.name} training failed: {reply[1]} (its log: {self.log_path})")

  def running(self) -> bool:
    return self._proc.is_alive()

  def yield_cores(self) -> int:
    """The child's threads to idle priority (``lower_priority``): from now on it trains on the
    cycles the parent leaves. Returns how many threads were lowered."""
    return lower_priority(self._proc.pid)

  def stop(self) -> None:
    if self._proc.is_alive():
      self._proc.terminate()
      self._proc.join()

  def _follow(self, log: StageProgress, step_line) -> None:
    """Moves the bar by the step lines the child wrote since the last call."""
    if not os.path.isfile(self.log_path):
      return
    with open(self.log_path, "rb") as f:
      f.seek(self._offset)
      data = f.read()
    complete = data.rfind(b"\n") + 1  # a half-written last line waits for the next call
    self._offset += complete
    for line in data[:complete].decode("utf-8", errors="replace").splitlines():
      m = step_line.search(line)
      if m:
        log(m.group(1))


def _emogen_beside(background: "_Background", workdir: str, steps: int, kwargs: dict, banner,
                   title: str, expert: str) -> dict:
  """EmoGen's training (config.validation "none": it needs neither the expert nor the judge)
  while the expert's process, lowered to idle priority, finishes beside it."""
  lowered = background.yield_cores()
  banner(f"{title}, {steps} steps -> {workdir} ({expert} goes on beside it at idle priority, "
         f"{lowered} threads; EmoGen validates once it is done)")
  return run_stage("emogen", workdir, steps=steps, validation="none", **kwargs)


def _first_l1(workdir: str, summary: dict) -> float:
  """EmoGen's validation L1 before its first step: from the run's history, or (after a resume,
  whose history starts later) from the TensorBoard record of the first run."""
  hist = summary.get("validation_history") or []
  if hist and int(hist[0].get("step", -1)) == 0:
    return float(hist[0]["l1"])
  recorded = scalar_history(workdir, "val/l1")
  if 0 in recorded:
    return recorded[0]
  return float(hist[0]["l1"]) if hist else float("nan")


def train_stages(data_dir: str, workdir: str, *, syncnet_steps: int, emotion_steps: int,
                 emogen_steps: int, width: float = 0.25, seed: int = 0, eval_every: int = 0,
                 eval_batches: int = 0, progress: bool = True, parallel: bool = True,
                 banner: Callable[[str], None] | None = None,
                 after_emogen_training: Callable[[dict[str, str]], Any] | None = None,
                 cpu_convolutions: str = "auto") -> dict[str, Any]:
  """Runs the stages into W/{syncnet,emotion_disc,emotion_judge,emogen}; returns the figures,
  per-stage wall times, the targets and which were met (also written to W/stages.json).

  parallel: SyncNet trains in a child process beside the two emotion classifiers (its log in
  W/syncnet/train_log.txt); its wall time then overlaps theirs.

  eval_batches: validation batches per evaluation; 0 (the default) scores the whole validation
  split, each clip at the smoke configs' eval_windows fixed windows.

  after_emogen_training: called with the workdirs once EmoGen has trained beside the expert,
  while the expert (at idle priority) finishes: work that needs the generator, the disc and the
  judge but not the expert (the quickstart's demo and test evaluation) fills the cores that the
  expert's tail alone leaves. Its wall time (``results["after_emogen_training_s"]``) counts as
  beside the expert's. Not called when EmoGen did not train beside the expert now.

  cpu_convolutions: every training's config.cpu_convolutions ("auto", "xla" or "onednn").
  """
  if not os.path.isdir(data_dir):
    raise UserError(f"data dir {data_dir!r} not found; preprocess a corpus first "
                    "(python -m data_tools.preprocess --src VIDEOS --data-dir DIR)")
  for key, n in (("syncnet_steps", syncnet_steps), ("emotion_steps", emotion_steps),
                 ("emogen_steps", emogen_steps)):
    if int(n) < 1:
      raise UserError(f"{key}={n} must be at least 1")
  banner = banner or (lambda text: print(f"\n=== {text} ===", flush=True))
  os.makedirs(workdir, exist_ok=True)
  dirs = {name: os.path.abspath(os.path.join(workdir, name)) for name in TRAININGS}
  common = {"data_dir": os.path.abspath(data_dir), "width": width, "seed": seed,
            "eval_every": eval_every, "eval_batches": eval_batches, "progress": progress,
            "cpu_convolutions": cpu_convolutions}
  steps = {"syncnet": int(syncnet_steps), "emotion_disc": int(emotion_steps),
           "emotion_judge": int(emotion_steps), "emogen": int(emogen_steps)}
  extra = {"emogen": {"eval_at_start": True, "eval_windows": EMOGEN_EVAL_WINDOWS,
                      "syncnet_checkpoint": dirs["syncnet"],
                      "emotion_disc_checkpoint": dirs["emotion_disc"],
                      "emotion_classifier_checkpoint": dirs["emotion_judge"]},
           "emotion_judge": {"seed": seed + JUDGE_SEED_OFFSET}}
  titles = {"syncnet": "lip-sync expert (SyncNet)", "emotion_disc": "emotion discriminator",
            "emotion_judge": "independent emotion classifier (the judge of EmoAcc; another seed)",
            "emogen": "EmoGen generator (frozen expert + emotion disc from the stages above)"}
  # EmoGen can train beside the expert when it validates only before its first step and at its end.
  emogen_beside = parallel and (not eval_every or int(eval_every) >= steps["emogen"])
  runs = {}
  background = None
  if parallel and finished_summary(dirs[BACKGROUND], steps[BACKGROUND]) is None:
    banner(f"training 1/{len(TRAININGS)}: {titles[BACKGROUND]}, {steps[BACKGROUND]} steps -> "
           f"{dirs[BACKGROUND]}, in a second process beside trainings 2 and 3 (its log: "
           f"{os.path.join(dirs[BACKGROUND], BACKGROUND_LOG)})")
    background = _Background(BACKGROUND, dirs[BACKGROUND], steps[BACKGROUND],
                             {**common, **extra.get(BACKGROUND, {})}, progress)
  try:
    for i, name in enumerate(TRAININGS, 1):
      if name == BACKGROUND and background is not None:
        continue
      trained = None
      if name == "emogen" and background is not None and emogen_beside and background.running():
        trained = _emogen_beside(background, dirs[name], steps[name],
                                 {**common, **extra.get(name, {})}, banner,
                                 f"training {i}/{len(TRAININGS)}: {titles[name]}",
                                 f"training 1/{len(TRAININGS)} ({titles[BACKGROUND]})")
      if trained is not None and after_emogen_training is not None:
        t0 = time.time()
        after_emogen_training(dict(dirs))
        # Kept with EmoGen's run (its validation keeps the field), for a later call's accounting.
        _store_fields(dirs[name], after_training_s=round(time.time() - t0, 1))
      if name == "emogen" and background is not None:  # EmoGen validates with the expert: wait
        banner(f"waiting for training 1/{len(TRAININGS)} ({titles[BACKGROUND]}) to finish")
        runs[BACKGROUND] = background.result()
        background = None
      if name == "emogen" and (trained is not None or finished_summary(
          dirs[name], steps[name], validated=False) is not None):
        # Trained (now, or by an earlier call that stopped before validating): validate it.
        banner(f"EmoGen's validations (before its first step and at step {steps[name]}), with "
               "the finished expert")
        runs[name] = run_stage(name, dirs[name], steps=steps[name], validation="only",
                               **{**common, **extra.get(name, {})})
        runs[name]["skipped"] = bool(runs[name]["skipped"] and (trained or {}).get("skipped", True))
        if runs[name]["skipped"]:
          print(f"{name}: already trained and validated at step {runs[name]['step']} in "
                f"{dirs[name]}; skipped", flush=True)
        continue
      banner(f"training {i}/{len(TRAININGS)}: {titles[name]}, {steps[name]} steps -> {dirs[name]}")
      runs[name] = run_stage(name, dirs[name], steps=steps[name], **{**common, **extra.get(name, {})})
      if runs[name]["skipped"]:
        print(f"{name}: already trained to step {runs[name]['step']} in {dirs[name]}; skipped",
              flush=True)
  finally:
    if background is not None:  # a failure (or Ctrl-C) in the emotion classifiers' trainings
      background.stop()

  sync, emo, gen = runs["syncnet"], runs["emotion_disc"], runs["emogen"]
  # Whether EmoGen did train beside the expert (now, or in the run whose figures were read back).
  emogen_beside = parallel and "validation_wall_s" in gen
  after_s = gen.get("after_training_s")  # after_emogen_training's wall time (now or earlier)
  first_l1 = _first_l1(dirs["emogen"], gen)
  last_l1 = float(gen["validation"]["l1"])
  results: dict[str, Any] = {
      "syncnet_accuracy": float(sync["validation"]["accuracy"]),
      "syncnet_loss": float(sync["validation"]["loss"]),
      "emotion_accuracy": float(emo["validation"]["accuracy"]),
      "emotion_loss": float(emo["validation"]["loss"]),
      "emogen_first_l1": first_l1,
      "emogen_last_l1": last_l1,
      "emogen_l1_decrease": 1.0 - last_l1 / first_l1 if first_l1 and math.isfinite(first_l1)
                            else float("nan"),
      "emogen_val_sync": gen["validation"].get("sync"),
      # Emotion control on the validation actors (the judge's EmoAcc of windows generated for
      # all six targets; the label sensitivity in 0-1 pixel units).
      "emogen_emo_acc": gen["validation"].get("emo_acc"),
      "emogen_emo_acc_per_target": {k[len("emo_acc_"):]: v for k, v in gen["validation"].items()
                                    if k.startswith("emo_acc_")},
      "emogen_emo_sensitivity": gen["validation"].get("emo_sensitivity"),
      "emotion_judge_accuracy": float(runs["emotion_judge"]["validation"]["accuracy"]),
      # How many validation examples each final figure averages (SyncNet: windows in and off sync).
      "validation_examples": {name: int(runs[name].get("validation_examples", 0))
                              for name in TRAININGS},
      "wall_s": {name: runs[name]["wall_s"] for name in TRAININGS},
      # The trainings' wall time as this recipe runs them (SyncNet beside the two classifiers
      # when parallel), from the per-stage times (earlier runs' for skipped stages).
      "training_wall_s": round(training_wall_s(
          {name: runs[name]["wall_s"] for name in TRAININGS}, parallel, emogen_beside,
          float(gen.get("validation_wall_s", 0.0)), after_s or 0.0), 1),
      "after_emogen_training_s": after_s,
      "parallel_trainings": ({BACKGROUND: list(BESIDE) + (["emogen"] if emogen_beside else [])}
                             if parallel else {}),
      "skipped": {name: runs[name]["skipped"] for name in TRAININGS},
      "steps": steps,
      "workdirs": dirs,
      "width": width,
      "targets": dict(TARGETS),
  }
  results["passed"] = {k: bool(results[k] >= t) for k, t in TARGETS.items()}
  with open(os.path.join(workdir, "stages.json"), "w") as f:
    json.dump(results, f, indent=2)
  return results


def training_wall_s(walls: dict[str, float], parallel: bool, emogen_beside: bool = False,
                    emogen_validation_s: float = 0.0, after_training_s: float = 0.0) -> float:
  """The trainings' total wall time from the per-stage ones: with ``parallel`` SyncNet's
  overlaps the emotion classifiers' (their sum) and, with ``emogen_beside``, EmoGen's training
  (its wall time but the ``emogen_validation_s`` of its validations, which follow SyncNet's end)
  and the ``after_training_s`` of the work done after it while SyncNet finished."""
  if not parallel:
    return float(sum(walls.values()))
  beside = sum(walls[k] for k in BESIDE)
  after = walls["emogen"]
  if emogen_beside:
    beside += walls["emogen"] - emogen_validation_s + after_training_s
    after = emogen_validation_s
  return float(max(walls[BACKGROUND], beside) + after)


def target_lines(results: dict) -> list[str]:
  """One line per target: value, threshold, PASS/FAIL."""
  return [f"{TARGET_TEXT[k]}: {results[k]:.3f} (target >= {t}) "
          f"{'PASS' if results['passed'][k] else 'FAIL'}" for k, t in TARGETS.items()]
