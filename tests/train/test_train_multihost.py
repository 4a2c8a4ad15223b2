"""(b) Multi-host training: 2 processes x 2 CPU devices on 127.0.0.1 (jax.distributed with gloo
collectives, through the CLI's --coordinator_address/--num_processes/--process_id) train 3
SyncNet steps to the same networks as 1 process x 4 devices (BatchNorm statistics and gradients
are averaged over all 4 devices of both hosts; each host feeds its own half of the global batch)."""

from __future__ import annotations

import os
import subprocess
import sys

from emogen_jax.models import checkpoints
from tests._train_fixtures import (REPO, drop_bias_before_bn, free_port, relative_diff,
                                   subprocess_env, train_cli)

_ARGS = ["--config", "configs/syncnet.py:smoke", "--config.synthetic_data=True",
         "--config.width=0.0625", "--config.batch_size=4", "--config.num_train_steps=3",
         "--config.eval_every_steps=0", "--config.eval_batches=1"]


def _train_two_processes(args: list[str], workdir: str, *, devices: int) -> list[tuple[str, str]]:
  """``python -m emogen_jax.train ARGS`` as 2 processes x ``devices`` CPU devices joined on
  127.0.0.1; asserts both exit 0 and returns their (stdout, stderr)."""
  port = free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "emogen_jax.train", *args, "--workdir", workdir,
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=subprocess_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=400))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, f"{out[-2000:]}\n{err[-4000:]}"
  return outs


def test_two_processes_match_one_process(tmp_path):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  outs = _train_two_processes(_ARGS, two, devices=2)
  # Only process 0 reports.
  assert "2 process(es), 4 device(s) (2 local" in outs[0][0]
  assert "checkpoint: step 3" in outs[0][0]
  assert "stage syncnet" not in outs[1][0] and "step 3/3" not in outs[1][0], outs[1][0][-1000:]

  train_cli(_ARGS + ["--workdir", one], devices=4)
  a, b = checkpoints.load_model(two, "syncnet"), checkpoints.load_model(one, "syncnet")
  stats = relative_diff(a["batch_stats"], b["batch_stats"])
  params = relative_diff(drop_bias_before_bn(a["params"]), drop_bias_before_bn(b["params"]))
  print(f"2x2 vs 1x4 after 3 steps: batch_stats {stats:.2e}, params {params:.2e}")
  # Float32 summation order differs (gloo all-reduce vs one host); after the first step Adam's
  # noise-driven moves of rounding-level gradients (see test_train_pmap) feed into later steps,
  # so 3 steps agree to ~1e-5 rather than to the ~1e-8 of a single step.
  assert stats < 1e-4 and params < 1e-4, (stats, params)
  assert checkpoints.load_meta(two)["step"] == 3


def test_two_hosts_validate_the_whole_split_like_one(tmp_path, preprocessed_data):
  """Real shards: the validation split's clips divide unevenly over 2 hosts, so their passes
  differ in length. Each host pads its pass to the longest (masked examples), so neither waits
  forever in a collective, and the figures of 2 processes x 1 device equal those of 1 process x
  2 devices over the same examples."""
  import json

  from emogen_jax.data import input_pipeline
  data_dir = preprocessed_data["data_dir"]
  splits = input_pipeline.dataset_builder(data_dir).info.splits
  n_val = int(splits["validation"].num_examples)
  per_host = [int(splits[s].num_examples) for s in input_pipeline.host_splits("validation", 2)]
  assert per_host[0] != per_host[1], per_host  # uneven shards: the case that used to hang
  args = ["--config", "configs/syncnet.py:smoke", f"--config.data_dir={data_dir}",
          "--config.width=0.0625", "--config.batch_size=2", "--config.eval_batches=0",
          "--config.eval_windows=3",
          # No step: the hosts train on their own shards (other batches than one process), so
          # only the initial networks are the same; the final validation still runs.
          "--config.num_train_steps=0"]
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  _train_two_processes(args, two, devices=1)
  train_cli(args + ["--workdir", one], devices=2)
  with open(os.path.join(two, "final_metrics.json")) as f:
    got = json.load(f)
  with open(os.path.join(one, "final_metrics.json")) as f:
    want = json.load(f)
  assert got["validation_examples"] == want["validation_examples"] == n_val * 3 * 2
  for k in ("accuracy", "loss"):
    assert abs(got["validation"][k] - want["validation"][k]) < 1e-5, (k, got, want)
