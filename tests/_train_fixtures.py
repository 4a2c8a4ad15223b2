"""Helpers of the training tests: configs, subprocess runs of the trainer, pytree comparisons.

Multi-device and multi-process runs happen in subprocesses (XLA_FLAGS must be set before JAX
starts). They share one persistent XLA compilation cache per test session so that repeated runs
of the same step (e.g. train, stop, resume) compile it once.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import jax
import numpy as np

from emogen_jax.train.recipe import load_config  # noqa: F401  (re-exported for the tests)

from tests import REPO, subprocess_env  # noqa: F401  (used by the training tests)


def train_cli(args: list[str], *, devices: int = 1, timeout: float = 300, extra_env=None,
              check: bool = True) -> subprocess.CompletedProcess:
  """Runs ``python -m emogen_jax.train ARGS`` in a fresh process on ``devices`` CPU devices."""
  env = subprocess_env(devices)
  env.update(extra_env or {})
  proc = subprocess.run([sys.executable, "-m", "emogen_jax.train", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"train exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
                         f"stderr:\n{proc.stderr[-4000:]}")
  return proc


def run_python(code: str, *, devices: int = 1, timeout: float = 300) -> str:
  """Runs ``code`` in a fresh interpreter with ``devices`` CPU devices; returns its stdout."""
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(devices),
                        capture_output=True, text=True, timeout=timeout)
  sys.stderr.write(proc.stderr[-3000:])
  if proc.returncode != 0:
    raise AssertionError(f"subprocess exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
                         f"stderr:\n{proc.stderr[-6000:]}")
  return proc.stdout


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def drop_bias_before_bn(params):
  """params without the conv biases that feed a BatchNorm (modules holding both `conv` and `bn`).

  BatchNorm subtracts the batch mean, so such a bias has an analytically zero gradient and what
  autodiff returns is rounding noise; Adam's first step divides it by its own magnitude and moves
  the bias by up to +-lr in a direction set by that noise, which differs between two summation
  orders (8 devices vs 1) without meaning anything.
  """
  if isinstance(params, dict):
    if "conv" in params and "bn" in params:
      params = {**params, "conv": {k: v for k, v in params["conv"].items() if k != "bias"}}
    return {k: drop_bias_before_bn(v) for k, v in params.items()}
  return params


def relative_diff(a, b) -> float:
  """||a - b|| / ||b|| over whole pytrees (all leaves as one vector)."""
  la = [np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(a)]
  lb = [np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(b)]
  assert len(la) == len(lb)
  num = np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(la, lb)))
  return float(num / max(np.sqrt(sum(np.sum(y ** 2) for y in lb)), 1e-30))


def assert_trees_equal(a, b):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=jax.tree_util.keystr(path))


def first_moments(state):
  """Adam's first moments after one step, (1 - b1) * gradient, of every trained network."""
  import optax
  out = {}
  for kind, opt in state.opt_state.items():
    for s in jax.tree_util.tree_leaves(opt, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)):
      if isinstance(s, optax.ScaleByAdamState):
        out[kind] = drop_bias_before_bn(s.mu)
  return out


def clear_gradient_params(a, b, threshold: float = 1e-6):
  """Params of a and b (flattened) where both runs' first-step gradients are well above Adam's
  eps (1e-8) and agree in sign.

  Adam's first update is lr * g / (|g| + eps): +-lr wherever |g| >> eps, a rounding-noise-driven
  value where the gradient is about eps or comes from cancellation. And where another summation
  order flips the sign of a small gradient (the gradients themselves are checked against their
  noise floor), the update flips by 2 lr. Only the params whose gradient both runs agree on can
  be compared across summation orders; a wrong update (a scaled learning rate, optimizer state
  out of step) moves those too.
  """
  ma, mb = first_moments(a), first_moments(b)
  xs, ys = [], []
  for kind in mb:
    pa = drop_bias_before_bn(a.params[kind])
    pb = drop_bias_before_bn(b.params[kind])
    leaves = map(jax.tree_util.tree_leaves, (pa, pb, ma[kind], mb[kind]))
    for x, y, ga, gb in zip(*leaves):
      ga, gb = np.asarray(ga), np.asarray(gb)
      # mu = 0.5 * g (b1 = 0.5)
      keep = (np.abs(gb) > threshold * 0.5) & (np.abs(ga) > threshold * 0.5) & (ga * gb > 0)
      xs.append(np.asarray(x)[keep])
      ys.append(np.asarray(y)[keep])
  return xs, ys
