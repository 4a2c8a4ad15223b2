"""(a) One pmapped step on 8 simulated CPU devices equals the single-device step on the same
global batch, for the generator (EmoGen) and SyncNet stages: gradients and metrics are pmean-ed
and BatchNorm statistics are taken over the global batch, so the device count does not matter.

What "equal" can mean in float32: BatchNorm statistics and metrics agree to ~1e-7. Gradients of a
randomly initialised deep BatchNorm network are ill-conditioned: merely permuting the examples of
the batch on ONE device changes the generator's gradient by ~1e-3 relative. So gradients are
checked against that noise floor, and params to 1e-5 relative where both runs' gradients are
clearly above Adam's eps and of one sign (Adam's first update is lr * g / (|g| + eps): +-lr
wherever |g| >> eps, but a noise-driven value where g is rounding noise, e.g. conv biases feeding
BatchNorm, and 2 lr apart where the summation order flips the sign of a small gradient).
"""

from __future__ import annotations

import json

import pytest

from tests._train_fixtures import run_python

_SCRIPT = r"""
import json, sys, time
import jax, numpy as np
from tests._train_fixtures import (clear_gradient_params, drop_bias_before_bn, first_moments,
                                  load_config, relative_diff)
from emogen_jax.train import state as train_state
from emogen_jax.train.stages import emogen as emogen_step, syncnet as syncnet_step

assert jax.device_count() == 8, jax.devices()
out = {}
for name, mod in (("syncnet", syncnet_step), ("emogen", emogen_step)):
  # The reference learning rate (the smoke variants' faster rates scale Adam's noise-driven moves).
  config = load_config(name, width=0.0625, batch_size=8, learning_rate=1e-4)
  setup = mod.prepare(config, log=lambda *a: None)
  state = mod.init_state(config, jax.random.PRNGKey(3), setup)
  batch = mod.fake_batch(np.random.default_rng(5), 8)
  step = mod.make_train_step(config, setup)

  def run(devices, batch):
    n = len(devices)
    p = jax.pmap(step, axis_name="batch", devices=devices)
    rep = train_state.replicate(state, devices=devices)
    b = {k: v.reshape((n, 8 // n) + v.shape[1:]) for k, v in batch.items()}
    new, metrics = p(rep, b)
    return train_state.unreplicate_to_host(new), {k: float(v[0]) for k, v in metrics.items()}

  t0 = time.time()
  multi, m_multi = run(jax.devices(), batch)
  t1 = time.time()
  single, m_single = run(jax.devices()[:1], batch)
  perm = np.random.default_rng(0).permutation(8)
  permuted, _ = run(jax.devices()[:1], {k: v[perm] for k, v in batch.items()})
  print(name, "8 devices", round(t1 - t0, 1), "s; 1 device", round(time.time() - t1, 1), "s",
        file=sys.stderr)
  compared = clear_gradient_params(multi, single)
  out[name] = {
      "params_clear_grad": relative_diff(*compared),
      # The share of params compared there (the check is not vacuous).
      "params_clear_grad_share": (sum(x.size for x in compared[0]) / sum(
          x.size for x in jax.tree_util.tree_leaves(drop_bias_before_bn(single.params)))),
      "params": relative_diff(drop_bias_before_bn(multi.params), drop_bias_before_bn(single.params)),
      "batch_stats": relative_diff(multi.batch_stats, single.batch_stats),
      "grads": relative_diff(first_moments(multi), first_moments(single)),
      "grads_noise_floor": relative_diff(first_moments(permuted), first_moments(single)),
      "moved": relative_diff(single.params, jax.device_get(state.params)),
      "stats_moved": relative_diff(single.batch_stats, jax.device_get(state.batch_stats)),
      "metrics": {k: [m_multi[k], m_single[k]] for k in m_single},
  }
print("RESULT", json.dumps(out))
"""


@pytest.fixture(scope="module")
def pmap_results():
  stdout = run_python(_SCRIPT, devices=8, timeout=900)
  line = [l for l in stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("stage", ["syncnet", "emogen"])
def test_pmapped_step_equals_single_device_step(pmap_results, stage):
  r = pmap_results[stage]
  print(stage, {k: v for k, v in r.items() if k != "metrics"})
  # The step did something (so the equalities below are not vacuous).
  assert r["moved"] > 1e-5 and r["stats_moved"] > 1e-3, r
  # BatchNorm statistics over the global batch, not per device (per-device stats differ by ~1).
  assert r["batch_stats"] < 1e-5, r
  # Gradients: pmean-ed over devices (a missing pmean is off by ~8x, unsynced BN by O(1)).
  assert r["grads"] < 10 * r["grads_noise_floor"] + 1e-5, r
  # Params within 1e-5 relative where the update is not noise-driven (both runs' gradients clear
  # of eps and of one sign), and everywhere within the noise-driven +-lr moves of Adam's first
  # step.
  assert r["params_clear_grad"] < 1e-5 and r["params_clear_grad_share"] > 0.5, r
  assert r["params"] < 2e-4, r
  for name, (multi, single) in r["metrics"].items():
    # Gradient norms carry the gradient noise above; losses and accuracies are forward values.
    rel = 1e-3 if "grad_norm" in name else 1e-5
    assert multi == pytest.approx(single, rel=rel, abs=1e-6), (name, multi, single)
