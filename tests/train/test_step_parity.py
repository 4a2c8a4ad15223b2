"""Training steps against an independent PyTorch version of each (``tests/_torch_steps.py``).

For each stage (SyncNet, emotion disc, EmoGen iteration) both sides start from the same weights
(through ``emogen_jax.convert``), take STEPS steps on the same batches, and are compared:
every loss term at every step, then the parameters and BatchNorm running statistics after the
last step. EmoGen runs with every term on (w_sync, w_pl, w_emo > 0; a random VGG-19) at the
reference learning rates.

How close is "the same" in float32: at the first step the loss terms agree to ~1e-6 relative;
each Adam step then carries the gradients' rounding differences into the parameters, and a
randomly initialised deep BatchNorm network amplifies them (tiny batches, 1x1 feature maps).
Adam's update lr * m / (sqrt(v) + eps) is +-lr wherever the gradient is well above eps, whatever
its size, so wherever a gradient is near its own rounding noise a float32 step may move the
parameter either way: after three steps two correct float32 implementations differ by ~0.1
relative in what they moved the generator. So the yardstick is the same PyTorch steps run in
float64 (near exact): our float32 step must land as close to it as PyTorch's float32 step does
(within MOVES_VS_FLOOR times), in every loss term, parameter move and running statistic. The conv
biases that feed a BatchNorm (whose gradient is 0 up to rounding: the batch mean cancels them)
are left out of the moves. A wrong step (gradient ascent, a loss term dropped or mis-weighted,
the disc trained on generated frames) changes a loss term or moves parameters by O(lr) the other
way: differences of order 1.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emogen_jax.models import EmotionDiscriminator, Generator, SyncNet, VGG19Features
from emogen_jax.train import state as train_state
from emogen_jax.train.stages import emogen as emogen_step
from emogen_jax.train.stages import emotion_disc as emotion_disc_step
from emogen_jax.train.stages import syncnet as syncnet_step
from tests._model_fixtures import random_variables
from tests._train_fixtures import drop_bias_before_bn, load_config, relative_diff

torch = pytest.importorskip("torch")
_torch_steps = pytest.importorskip("tests._torch_steps")

STEPS = 3
WIDTH = 0.0625
# Measured (seed 0, 2-core CPU; "x / y": ours / PyTorch's float32 step, each against float64):
# parameter moves 0.130 / 0.097 (generator, w_sync 0.03), 2.6e-3 / 2.6e-3 (disc within EmoGen);
# generator running statistics 5.8e-5 / 2.7e-5; loss terms <= 1.5e-4 relative (<= 1e-6 at the
# first step). At full width (EMOGEN_FULL_WIDTH_PARITY=1, batch 2) the perceptual term drifts to
# ~1e-3 by the third step: loss terms and statistics, like the moves, may be MOVES_VS_FLOOR x as
# far from float64 as PyTorch's float32 run is.
LOSS_RTOL = 1e-3
STATS_RTOL = 5e-4
MOVE_RTOL = 5e-3
MOVES_VS_FLOOR = 3.0
# bfloat16 against float32 (an 8-bit mantissa: ~4e-3 per rounding). Measured: loss terms within
# 1.0 % (sync; L1 and emotion terms within 3e-4), running statistics 1.4e-3, parameter moves 0.92
# relative (cosine ~0.58: Adam turns each element's gradient into +-lr, and bfloat16 flips the
# sign of the small ones; unrelated moves would give 1.41, gradient ascent 2).
BF16_LOSS_RTOL = 0.03
BF16_MOVE_RTOL = 1.2
BF16_STATS_RTOL = 0.01


# Variables drawn in numpy with the shapes of ``init`` (compiling the inits costs more than the steps
# on a 2-core CPU); random BatchNorm running statistics, so their update is visible in the result.
def _syncnet_vars(width, seed):
  return random_variables(SyncNet(width=width), jnp.zeros((1, 80, 16, 1)), jnp.zeros((1, 48, 96, 15)),
                          train=False, seed=seed)


def _disc_vars(width, seed):
  return random_variables(EmotionDiscriminator(width=width), jnp.zeros((1, 5, 96, 96, 3)), seed=seed)


def _state(mod, config, models, **kwargs):
  return train_state.create_state(rng=jax.random.PRNGKey(0), models=models,
                                  optimizers=mod.make_optimizers(config), **kwargs)


def _jax_run(mod, config, setup, state, batches):
  """STEPS pmapped steps (one device, as the trainer runs them) on ``batches``: (per-step
  metrics, final host state)."""
  devices = jax.devices()[:1]
  step = jax.pmap(mod.make_train_step(config, setup), axis_name="batch", devices=devices)
  rep = train_state.replicate(state, devices=devices)
  metrics = []
  for b in batches:
    rep, m = step(rep, {k: v[None] for k, v in b.items()})
    metrics.append({k: float(v[0]) for k, v in m.items()})
  return metrics, train_state.unreplicate_to_host(rep)


def _host(tree):
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def _moves(after, before):
  return jax.tree_util.tree_map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                                drop_bias_before_bn(after), drop_bias_before_bn(before))


def _compare(kind, ours_state, theirs, exact, start_params, start_stats=None):
  """One network's parameter moves and running statistics, ours and PyTorch's float32 run
  (``theirs``) each against PyTorch's float64 run (``exact``): {name: relative difference}."""
  exact_moves = _moves(exact[kind]["params"], start_params)
  out = {f"{kind}_moves": relative_diff(_moves(ours_state.params[kind], start_params), exact_moves),
         f"{kind}_moves_floor": relative_diff(_moves(theirs[kind]["params"], start_params),
                                              exact_moves),
         f"{kind}_moved": relative_diff(drop_bias_before_bn(exact[kind]["params"]),
                                        drop_bias_before_bn(_host(start_params)))}
  if start_stats is not None:
    exact_stats = exact[kind]["batch_stats"]
    out[f"{kind}_stats"] = relative_diff(ours_state.batch_stats[kind], exact_stats)
    out[f"{kind}_stats_moved"] = relative_diff(exact_stats, _host(start_stats))
    out[f"{kind}_stats_floor"] = relative_diff(theirs[kind]["batch_stats"], exact_stats)
  return out


def _both_precisions(torch_steps, *args, **kwargs):
  """PyTorch's steps in float32 and in float64: (terms32, final32, terms64, final64)."""
  return (*torch_steps(*args, **kwargs, dtype=torch.float32),
          *torch_steps(*args, **kwargs, dtype=torch.float64))


def run_single_network(name, mod, make_vars, torch_steps, batch, seed=0):
  """A one-network stage (``name`` = its config and kind) both ways, compared."""
  config = load_config(name, None, width=WIDTH, batch_size=batch)
  state = _state(mod, config, {name: make_vars(WIDTH, seed)})
  rng = np.random.default_rng(seed)
  batches = [mod.fake_batch(rng, batch) for _ in range(STEPS)]
  ours, final = _jax_run(mod, config, None, state, batches)
  start = _host(state.trained_models()[name])
  theirs_terms, theirs, exact_terms, exact = _both_precisions(
      torch_steps, start, WIDTH, batches, lr=config.learning_rate, b1=config.b1, b2=config.b2)
  return {"ours": ours, "theirs": theirs_terms, "exact": exact_terms,
          **_compare(name, final, theirs, exact, start["params"], start.get("batch_stats"))}


def run_emogen(width=WIDTH, batch=2, seed=0, compute_dtype="float32", w_sync=0.03):
  """EmoGen at the reference config (lr 1e-4, disc lr 1e-6, w_pl = w_emo = 0.01) with the sync
  term switched on (w_sync 0.03; 0: before the switch) and random frozen networks (expert,
  VGG-19 of width 0.125)."""
  config = load_config("emogen", None, width=width, batch_size=batch, w_sync=w_sync,
                       allow_random_init=True, seed=seed, compute_dtype=compute_dtype)
  assert config.w_pl > 0 and config.w_emo > 0
  vgg_width = emogen_step.RANDOM_VGG_WIDTH
  # What emogen_step.prepare returns for a run with these frozen networks.
  setup = {"syncnet": _syncnet_vars(width, seed + 1), "syncnet_width": width,
           "emotion_disc": _disc_vars(width, seed + 2), "disc_width": width,
           "disc_original_layout": False, "use_vgg": True, "vgg_width": vgg_width,
           "vgg19": random_variables(VGG19Features(width=vgg_width), jnp.zeros((1, 96, 96, 3)),
                                     seed=seed + 3)}
  gen_vars = random_variables(Generator(width=width), jnp.zeros((1, 5, 80, 16, 1)),
                              jnp.zeros((1, 5, 96, 96, 6)), jnp.zeros((1,), jnp.int32), train=False,
                              seed=seed)
  state = _state(emogen_step, config,
                 {"generator": gen_vars, "emotion_disc": {"params": setup["emotion_disc"]["params"]}},
                 extras={"w_sync": float(config.w_sync)},
                 frozen={"syncnet": setup["syncnet"], "vgg19": setup["vgg19"]})
  rng = np.random.default_rng(seed)
  batches = [emogen_step.fake_batch(rng, batch) for _ in range(STEPS)]
  ours, final = _jax_run(emogen_step, config, setup, state, batches)
  return config, setup, state, batches, ours, final


def emogen_parity(run):
  config, setup, state, batches, ours, final = run
  width = config.width
  start = _host(state.trained_models())
  variables = {**start, "syncnet": _host(setup["syncnet"]), "vgg19": _host(setup["vgg19"])}
  widths = {"generator": width, "emotion_disc": setup["disc_width"],
            "syncnet": setup["syncnet_width"], "vgg19": setup["vgg_width"]}
  theirs_terms, theirs, exact_terms, exact = _both_precisions(
      _torch_steps.emogen_steps, variables, widths, batches, lr=config.learning_rate,
      disc_lr=config.disc_learning_rate, b1=config.b1, b2=config.b2,
      w_sync=float(state.extras["w_sync"]), w_pl=config.w_pl, w_emo=config.w_emo)
  return {"ours": ours, "theirs": theirs_terms, "exact": exact_terms,
          **_compare("generator", final, theirs, exact, start["generator"]["params"],
                     start["generator"]["batch_stats"]),
          **_compare("emotion_disc", final, theirs, exact, start["emotion_disc"]["params"])}


def _check(r, kinds_with_stats=(), not_ours=()):
  """not_ours: terms that the PyTorch step computes and ours does not (they must be absent)."""
  print({k: v for k, v in r.items() if k not in ("ours", "theirs", "exact")})
  for step, (ours, theirs, exact) in enumerate(zip(r["ours"], r["theirs"], r["exact"], strict=True)):
    print("step", step, {k: (ours.get(k), v, exact[k]) for k, v in theirs.items()})
    assert not set(not_ours) & set(ours), (not_ours, sorted(ours))
    for name, value in exact.items():
      if name in not_ours:
        continue
      floor = MOVES_VS_FLOOR * abs(theirs[name] - value)
      assert ours[name] == pytest.approx(value, rel=LOSS_RTOL, abs=max(1e-7, floor)), (
          step, name, ours[name], theirs[name], value)
  for key in [k for k in r if k.endswith("_moves")]:
    kind = key[:-len("_moves")]
    assert r[f"{kind}_moved"] > 0, r  # the steps did move the network (not a vacuous comparison)
    # As close to the float64 step as PyTorch's own float32 step is.
    assert r[key] < MOVES_VS_FLOOR * r[f"{kind}_moves_floor"] + MOVE_RTOL, (key, r)
  for kind in kinds_with_stats:
    assert r[f"{kind}_stats_moved"] > 1e-3, r
    assert r[f"{kind}_stats"] < max(STATS_RTOL, MOVES_VS_FLOOR * r[f"{kind}_stats_floor"]), (
        kind, r[f"{kind}_stats"], r[f"{kind}_stats_floor"])


def test_syncnet_step_matches_pytorch():
  _check(run_single_network("syncnet", syncnet_step, _syncnet_vars, _torch_steps.syncnet_steps,
                            batch=4), kinds_with_stats=("syncnet",))


def test_emotion_disc_step_matches_pytorch():
  _check(run_single_network("emotion_disc", emotion_disc_step, _disc_vars,
                            _torch_steps.emotion_disc_steps, batch=2))


@pytest.fixture(scope="module")
def emogen_float32():
  return run_emogen()


def test_emogen_iteration_matches_pytorch(emogen_float32):
  r = emogen_parity(emogen_float32)
  for ours in r["ours"]:  # every term is on and contributes
    assert ours["w_sync"] > 0 and ours["sync"] > 0 and ours["perceptual"] > 0 and ours["emo"] > 0
  _check(r, kinds_with_stats=("generator",))


def test_emogen_iteration_before_the_sync_switch_matches_pytorch():
  """w_sync 0: our step has no sync term (nor the expert's forward) where the PyTorch iteration
  computes it and multiplies it by 0; every other term and the update must agree."""
  r = emogen_parity(run_emogen(w_sync=0.0))
  for ours in r["ours"]:
    assert ours["w_sync"] == 0 and ours["perceptual"] > 0 and ours["emo"] > 0
  _check(r, kinds_with_stats=("generator",), not_ours=("sync",))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EMOGEN_FULL_WIDTH_PARITY"),
                    reason="full-width EmoGen parity (several minutes on a 2-core CPU): set "
                           "EMOGEN_FULL_WIDTH_PARITY=1")
def test_emogen_iteration_matches_pytorch_full_width():
  _check(emogen_parity(run_emogen(width=1.0, batch=2)), kinds_with_stats=("generator",))


def test_emogen_bfloat16_iteration_stays_near_float32(emogen_float32):
  """config.compute_dtype="bfloat16" (activations in bfloat16; params, BatchNorm statistics,
  losses and Adam in float32) from the same state on the same batches as the float32 run."""
  *_, ours32, final32 = emogen_float32
  config, _, state, _, ours16, final16 = run_emogen(compute_dtype="bfloat16")
  start = _host(state.params["generator"])
  terms = {k: max(abs(a[k] - b[k]) / abs(b[k]) for a, b in zip(ours16, ours32))
           for k in ("loss", "l1", "sync", "perceptual", "emo", "disc_loss")}
  moves = relative_diff(_moves(final16.params["generator"], start),
                        _moves(final32.params["generator"], start))
  stats = relative_diff(final16.batch_stats["generator"], final32.batch_stats["generator"])
  print("bfloat16 vs float32:", terms, "moves", moves, "stats", stats)
  for name, rel in terms.items():
    assert np.isfinite(rel) and rel < BF16_LOSS_RTOL, (name, rel)
  assert moves < BF16_MOVE_RTOL and stats < BF16_STATS_RTOL, (moves, stats)


def test_emogen_step_variants_follow_the_sync_weight_without_a_conditional():
  """The loop asks the stage which step suits the state (``train_step_options``): the sync term
  is differentiated once w_sync > 0. Neither variant may hold a conditional: XLA:CPU runs the
  convolutions of a conditional's backward with its generic kernels (the expert's first-layer
  input gradient 107 ms against 6 ms at full width, docs/design.md "CPU speed")."""
  config = load_config("emogen", None, width=0.0625, batch_size=2, allow_random_init=True)
  setup = emogen_step.prepare(config, log=lambda *a: None)
  state = emogen_step.init_state(config, jax.random.PRNGKey(0), setup)
  devices = jax.devices()[:1]
  rep = train_state.replicate(state, devices=devices)
  assert emogen_step.train_step_options(config, rep) == {"sync_gradient": False}
  on = rep.replace(extras={"w_sync": train_state.replicate(np.float32(0.03), devices=devices)})
  assert emogen_step.train_step_options(config, on) == {"sync_gradient": True}
  batch = {k: v[None] for k, v in emogen_step.fake_batch(np.random.default_rng(0), 2).items()}
  convolutions = {}
  for sync_gradient, s in ((False, rep), (True, on)):
    step = emogen_step.make_train_step(config, setup, sync_gradient=sync_gradient)
    hlo = jax.pmap(step, axis_name="batch", devices=devices).lower(s, batch).as_text()
    assert "stablehlo.case" not in hlo and "stablehlo.if" not in hlo, sync_gradient
    convolutions[sync_gradient] = hlo.count("stablehlo.convolution")
  # The sync-on step differentiates through the expert: its input gradients are convolutions the
  # sync-off step does not have.
  assert convolutions[True] > convolutions[False], convolutions
