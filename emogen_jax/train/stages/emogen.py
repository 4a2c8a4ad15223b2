"""EmoGen generator training step (docs/design.md "Training recipe"), validation and sampling.

One pmapped step (axis "batch") does, on the per-device batch:
  1. generator update:
       loss = w_sync * sync + w_pl * perceptual + w_emo * CE(emotion_disc(g), emotion)
              + (1 - w_sync - w_pl - w_emo) * L1(g, target)
     sync: the frozen expert in INFERENCE mode (docs/design.md "Deliberate differences") on the lower halves of the 5
     generated frames against label 1, with the window's sync_mel; perceptual: sum over the 5
     VGG-19 max-pool outputs of the MSE; the emotion disc is held fixed for this term;
  2. one emotion-disc update (its own Adam, lr disc_learning_rate) on the REAL target frames.
w_sync lives in the state (``extras["w_sync"]``): 0 until a validation sync loss below
sync_threshold, then sync_weight for good (``maybe_enable_sync``). Whether the step has the sync
term at all (and so differentiates through the expert) is fixed at compile time
(``train_step_options``): the loop compiles the second variant once, when the weight switches on.
Gradients and metrics are ``lax.pmean``-ed; BatchNorm statistics use the global batch.
Batch (per device): frames (B,5,96,96,6), mel (B,5,80,16,1), sync_mel (B,80,16,1),
target (B,5,96,96,3) in [0, 1], emotion (B,) int.
Validation also generates every window with each of the six labels (``emotion_probe``): the
emotion sensitivity (how much the label moves the pixels) and, with a FROZEN classifier
(config.emotion_classifier_checkpoint, a separate run of configs/emotion_disc.py, never the
disc trained here), EmoAcc overall and per target. The in-training disc's accuracy is no
evidence of emotion control: it scored 0.99 on generated clips of a generator that ignored
the label (docs/design.md "Emotion control").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emogen_jax.data.emotions import EMOTIONS
from emogen_jax.errors import UserError
from emogen_jax.models import EmotionDiscriminator, Generator, SyncNet, VGG19Features
from emogen_jax.models import checkpoints, factory
from emogen_jax.train import losses
from emogen_jax.train.stages.base import AXIS, apply_gradients, compute_dtype, nonfinite_hook
from emogen_jax.train.state import TrainState, adam, create_state, init_variables, learning_rate, replicate

NAME = "emogen"
TASK = "generator"
KINDS = ("generator", "emotion_disc")
# The generator's reference windows (emogen_jax.data.input_pipeline.REFERENCE_SAMPLING, repeated
# so that checking a config does not import TensorFlow).
REFERENCE_SAMPLING = ("same_clip", "other_clip")
# Width of the random VGG-19 a smoke run uses when w_pl > 0 and no weights are given.
RANDOM_VGG_WIDTH = 0.125


# ------------------------------------------------------------------------------------------ setup

def _network(config, kind: str, path: str, *, rng, width: float, log, random_note: str,
             missing: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
  """(variables, {"width", "original_layout", "random"}) of a network this stage does not start
  from scratch: loaded from ``path``; else, in a smoke run (allow_random_init), randomly
  initialised at ``width`` and said in the log; else a UserError (``missing``; None: optional)."""
  if path:
    module, variables, _ = checkpoints.load(path, kind)
    log(f"{kind}: loaded from {path} (width {module.width})")
    return variables, {"width": float(module.width), "random": False,
                       "original_layout": bool(getattr(module, "original_layout", False))}
  if missing is None:
    return None, {}
  if config.allow_random_init:
    args, kwargs = factory.example_inputs(kind)
    variables = init_variables(factory.build(kind, width), rng, *args, **kwargs)
    log(f"{kind}: {random_note}")
    return variables, {"width": float(width), "random": True, "original_layout": False}
  raise UserError(missing)


def validate_config(config) -> None:
  w = float(config.w_pl) + float(config.w_emo) + max(float(config.w_sync), float(config.sync_weight))
  if min(float(config.w_pl), float(config.w_emo), float(config.w_sync), float(config.sync_weight)) < 0 \
      or w >= 1:
    raise UserError(f"loss weights w_pl={config.w_pl}, w_emo={config.w_emo}, sync_weight="
                    f"{config.sync_weight} must be >= 0 with a sum below 1 (the L1 term gets 1 - "
                    "their sum)")
  if config.reference_sampling not in REFERENCE_SAMPLING:
    raise UserError(f"config.reference_sampling={config.reference_sampling!r}; use one of "
                    f"{', '.join(REFERENCE_SAMPLING)} (see configs/emogen.py)")
  share = float(config.get("same_clip_fraction", 0.0))
  if not 0.0 <= share <= 1.0:
    raise UserError(f"config.same_clip_fraction={share}; use a share between 0 and 1 (0: every "
                    "training reference from another clip)")


def prepare(config, *, log=print) -> dict[str, Any]:
  """Loads the expert, the initial emotion disc and VGG-19 named by the config (UserError if a
  reference run lacks one; a smoke run, allow_random_init, starts them from random init, saying so)."""
  rng = jax.random.PRNGKey(int(config.seed) + 7919)
  setup: dict[str, Any] = {"random_init": []}

  def network(name, kind, path, index, width, random_note, missing):
    variables, info = _network(config, kind, path, rng=jax.random.fold_in(rng, index), width=width,
                               log=log, random_note=random_note, missing=missing)
    if variables is not None:
      setup[name] = variables
      if info["random"]:
        setup["random_init"].append(name)
    return info

  # The expert only scores the validation windows until its weight switches on (after a
  # validation): a run that neither validates (config.validation "none") nor starts with the sync
  # term does not need it, and its expert may still be training (emogen_jax.train.recipe).
  validates = config.get("validation", "during") != "none"
  if float(config.w_sync) == 0 and not validates:
    log("syncnet: not loaded (config.validation='none' and w_sync=0: only validation uses the "
        "expert; validate this run with --config.validation=only)")
    setup["syncnet_width"] = None
  else:
    info = network("syncnet", "syncnet", config.syncnet_checkpoint, 1, config.width,
                   "no config.syncnet_checkpoint; the frozen expert is RANDOMLY initialised (smoke "
                   "run; its sync loss means nothing)",
                   "config.syncnet_checkpoint is empty: EmoGen training needs a trained lip-sync "
                   "expert; train one (python -m emogen_jax.train --config configs/syncnet.py "
                   "--workdir W) or convert Wav2Lip's lipsync_expert.pth (python -m "
                   "emogen_jax.convert --help), then pass --config.syncnet_checkpoint=PATH")
    setup["syncnet_width"] = info["width"]

  info = network("emotion_disc", "emotion_disc", config.emotion_disc_checkpoint, 2, config.width,
                 "no config.emotion_disc_checkpoint; starting it from random init (smoke run)",
                 "config.emotion_disc_checkpoint is empty: EmoGen training needs a trained "
                 "emotion discriminator; train one (python -m emogen_jax.train --config "
                 "configs/emotion_disc.py --workdir W) or convert the original DISCEMO checkpoint "
                 "(python -m emogen_jax.convert --help), then pass "
                 "--config.emotion_disc_checkpoint=PATH")
  setup["disc_width"], setup["disc_original_layout"] = info["width"], info["original_layout"]

  # Validation only (EmoAcc of the generated windows): never trained, never a loss term.
  if not validates:
    log("emotion_classifier: not loaded (config.validation='none')")
  else:
    info = network("emotion_classifier", "emotion_disc", config.emotion_classifier_checkpoint, 4,
                   config.width, "", None)
    if info:
      setup["classifier_width"] = info["width"]
      setup["classifier_original_layout"] = info["original_layout"]
    else:
      log("no config.emotion_classifier_checkpoint: validation reports the emotion sensitivity "
          "but no EmoAcc")

  setup["use_vgg"] = float(config.w_pl) > 0
  if not setup["use_vgg"]:
    log("perceptual loss off (config.w_pl = 0): VGG-19 not used")
  else:
    info = network("vgg19", "vgg19", config.vgg_checkpoint, 3, RANDOM_VGG_WIDTH,
                   f"no config.vgg_checkpoint; the perceptual loss uses a RANDOM VGG-19 of width "
                   f"{RANDOM_VGG_WIDTH} (smoke run)",
                   "config.vgg_checkpoint is empty but config.w_pl > 0: the perceptual loss needs "
                   "ImageNet VGG-19 weights converted with python -m emogen_jax.convert (see --help); "
                   "pass --config.vgg_checkpoint=PATH, or --config.w_pl=0 to train without it")
    setup["vgg_width"] = info["width"]
  return setup


def make_models(config, setup: dict[str, Any]):
  """(generator, expert, emotion_disc, vgg or None) flax modules for this config and setup."""
  dtype = compute_dtype(config)
  gen = Generator(width=config.width, dtype=dtype, bn_axis_name=AXIS)
  # The expert only ever runs in inference mode, so it needs no BatchNorm axis.
  expert = None if "syncnet" not in setup else SyncNet(width=setup["syncnet_width"], dtype=dtype)
  disc = EmotionDiscriminator(original_layout=setup["disc_original_layout"],
                              width=setup["disc_width"], dtype=dtype)
  # Frames are BGR; ImageNet VGG expects normalised RGB.
  vgg = (VGG19Features(width=setup["vgg_width"], bgr_input=True, normalize=True, dtype=dtype)
         if setup["use_vgg"] else None)
  return gen, expert, disc, vgg


def make_optimizers(config) -> dict[str, optax.GradientTransformation]:
  return {"generator": adam(learning_rate(config, config.learning_rate), config.b1, config.b2),
          "emotion_disc": adam(config.disc_learning_rate, config.b1, config.b2)}


def init_state(config, rng: jax.Array, setup: dict[str, Any]) -> TrainState:
  gen = Generator(width=config.width, dtype=compute_dtype(config))
  gen_vars = init_variables(gen, jax.random.fold_in(rng, 1), jnp.zeros((1, 5, 80, 16, 1)),
                      jnp.zeros((1, 5, 96, 96, 6)), jnp.zeros((1,), jnp.int32), train=False)
  frozen = {"syncnet": setup["syncnet"]} if "syncnet" in setup else {}
  if setup["use_vgg"]:
    frozen["vgg19"] = setup["vgg19"]
  if "emotion_classifier" in setup:
    frozen["emotion_classifier"] = {"params": setup["emotion_classifier"]["params"]}
  return create_state(rng=rng,
                      models={"generator": gen_vars,
                              "emotion_disc": {"params": setup["emotion_disc"]["params"]}},
                      optimizers=make_optimizers(config),
                      extras={"w_sync": float(config.w_sync)}, frozen=frozen)


def fake_batch(rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
  target = rng.uniform(0, 1, (batch, 5, 96, 96, 3)).astype(np.float32)
  ref = rng.uniform(0, 1, (batch, 5, 96, 96, 3)).astype(np.float32)
  return {"frames": np.concatenate([np.zeros_like(target), ref], axis=-1),
          "mel": rng.normal(0, 2, (batch, 5, 80, 16, 1)).clip(-4, 4).astype(np.float32),
          "sync_mel": rng.normal(0, 2, (batch, 80, 16, 1)).clip(-4, 4).astype(np.float32),
          "target": target,
          "emotion": rng.integers(0, 6, (batch,)).astype(np.int32)}


# ------------------------------------------------------------------------------------------ steps

def _sync_term(g, sync_mel, frozen, expert):
  """The frozen expert's sync loss of generated clips g against label 1."""
  a, v = expert.apply(frozen, sync_mel, losses.lower_half_stack(g), train=False)
  return losses.sync_loss(a, v, jnp.ones((g.shape[0],), jnp.float32))


def _perceptual_term(g, target, weights, vgg):
  """The perceptual loss of generated clips g against the target clips (B, T, 96, 96, 3), their
  frames through the frozen VGG-19."""
  frames = lambda x: x.reshape((-1,) + x.shape[2:])
  return losses.perceptual_loss(vgg.apply(weights, frames(g)), vgg.apply(weights, frames(target)))


def _generated_terms(g, batch, state: TrainState, disc_params, expert, disc, vgg,
                     with_sync: bool = True):
  """Loss terms of generated clips g (B,5,96,96,3); every one a float32 scalar.

  with_sync False (the training step before the switch, w_sync 0: all of a smoke run): no sync
  term at all, as in the original, whose weight would multiply it by 0; the validation still
  reports it (the switch reads it there). Skipping the expert's forward saves ~4 % of the smoke
  step. A static choice, not a ``lax.cond`` on w_sync: XLA:CPU runs the convolutions of a
  conditional's backward with its generic kernels, 3x slower for the expert (docs/design.md
  "CPU speed")."""
  terms = {"l1": losses.l1_loss(g, batch["target"])}
  if with_sync:
    terms["sync"] = _sync_term(g, batch["sync_mel"], state.frozen["syncnet"], expert)
  if vgg is not None:
    terms["perceptual"] = _perceptual_term(g, batch["target"], state.frozen["vgg19"], vgg)
  else:
    terms["perceptual"] = jnp.zeros((), jnp.float32)
  logits = disc.apply({"params": disc_params}, g)
  terms["emo"] = losses.cross_entropy(logits, batch["emotion"])
  terms["emo_accuracy"] = losses.accuracy(logits, batch["emotion"])
  return terms


def total_loss(terms, w_sync, w_pl: float, w_emo: float):
  sync = w_sync * terms["sync"] if "sync" in terms else 0.0
  return (sync + w_pl * terms["perceptual"] + w_emo * terms["emo"]
          + (1.0 - w_sync - w_pl - w_emo) * terms["l1"])


def _host_w_sync(state: TrainState) -> float:
  """The sync weight of a replicated state, read on the host."""
  return float(np.asarray(jax.device_get(state.extras["w_sync"]))[0])


def train_step_options(config, state: TrainState) -> dict[str, Any]:
  """Hook: the static options of ``make_train_step`` for this (replicated) state: the sync
  term is in the step once its weight is on."""
  return {"sync_gradient": _host_w_sync(state) > 0}


def make_train_step(config, setup: dict[str, Any], sync_gradient: bool | None = None):
  """The step for states whose w_sync is > 0 (sync_gradient True) or 0 (False: the step has no
  sync term, so a positive w_sync would be ignored). None: from config.w_sync."""
  if sync_gradient is None:
    sync_gradient = float(config.w_sync) > 0
  if sync_gradient and "syncnet" not in setup:
    raise UserError("this EmoGen checkpoint trains with the sync loss (its sync weight switched "
                    "on), which needs the expert, but config.validation='none' left it out; "
                    "resume with config.validation='during'")
  gen, expert, disc, vgg = make_models(config, setup)
  txs = make_optimizers(config)
  w_pl, w_emo = float(config.w_pl), float(config.w_emo)
  nonfinite = nonfinite_hook(config)

  def train_step(state: TrainState, batch: dict[str, Any]):
    w_sync = state.extras["w_sync"]
    # The emotion disc judges the generated clips but is not moved by the generator's loss.
    disc_fixed = jax.lax.stop_gradient(state.params["emotion_disc"])

    def gen_loss(params):
      g, new_vars = gen.apply({"params": params, "batch_stats": state.batch_stats["generator"]},
                              batch["mel"], batch["frames"], batch["emotion"], train=True,
                              mutable=["batch_stats"])
      terms = _generated_terms(g, batch, state, disc_fixed, expert, disc, vgg,
                               with_sync=sync_gradient)
      terms["l1"] = nonfinite(terms["l1"], state.step)
      return total_loss(terms, w_sync, w_pl, w_emo), (new_vars["batch_stats"], terms)

    (loss, (gen_bs, terms)), g_grads = jax.value_and_grad(gen_loss, has_aux=True)(
        state.params["generator"])
    g_params, g_opt, g_grads = apply_gradients(txs["generator"], g_grads,
                                               state.params["generator"], state.opt_state["generator"])

    # One emotion-disc step on the real target clips.
    def disc_loss(params):
      logits = disc.apply({"params": params}, batch["target"])
      return losses.cross_entropy(logits, batch["emotion"]), losses.accuracy(logits, batch["emotion"])

    (d_loss, d_acc), d_grads = jax.value_and_grad(disc_loss, has_aux=True)(
        state.params["emotion_disc"])
    d_params, d_opt, d_grads = apply_gradients(txs["emotion_disc"], d_grads,
                                               state.params["emotion_disc"],
                                               state.opt_state["emotion_disc"])

    metrics = {"loss": loss, **terms, "disc_loss": d_loss, "disc_accuracy": d_acc,
               "grad_norm": losses.global_norm(g_grads),
               "disc_grad_norm": losses.global_norm(d_grads)}
    metrics = jax.lax.pmean(metrics, AXIS)
    metrics["w_sync"] = w_sync
    new_state = state.replace(
        step=state.step + 1,
        params={"generator": g_params, "emotion_disc": d_params},
        batch_stats={"generator": gen_bs},
        opt_state={"generator": g_opt, "emotion_disc": d_opt})
    return new_state, metrics

  return train_step


def emotion_probe(generated: jax.Array, classify=None) -> dict[str, jax.Array]:
  """Per-example emotion-control figures of the clips generated for every target emotion.

  generated: (E, B, 5, 96, 96, 3), row e made with label e from the same inputs;
  classify: None or a frozen classifier, clips (B, 5, 96, 96, 3) -> logits (B, E).
  Returns (B,) arrays: "emo_sensitivity", the mean absolute pixel change (0-1 scale) between
  the clips of two labels, averaged over the E(E-1)/2 label pairs (0 for a generator that
  ignores the label); with ``classify``, "emo_acc" (share of the E targets recognised) and
  "emo_acc_<EMO>" per target.
  """
  n = generated.shape[0]
  diffs = [jnp.mean(jnp.abs(generated[a] - generated[b]).astype(jnp.float32), axis=(1, 2, 3, 4))
           for a in range(n) for b in range(a + 1, n)]
  out = {"emo_sensitivity": jnp.mean(jnp.stack(diffs), axis=0)}
  if classify is not None:
    pred = jnp.stack([jnp.argmax(classify(generated[e]), axis=-1) for e in range(n)])  # (E, B)
    hits = (pred == jnp.arange(n)[:, None]).astype(jnp.float32)
    out["emo_acc"] = jnp.mean(hits, axis=0)
    for e, name in enumerate(EMOTIONS[:n]):
      out[f"emo_acc_{name}"] = hits[e]
  return out


def make_eval_step(config, setup: dict[str, Any]):
  gen, expert, disc, vgg = make_models(config, setup)
  w_pl, w_emo = float(config.w_pl), float(config.w_emo)
  classifier = None
  if "emotion_classifier" in setup:
    classifier = EmotionDiscriminator(original_layout=setup["classifier_original_layout"],
                                      width=setup["classifier_width"], dtype=compute_dtype(config))

  def eval_step(state: TrainState, batch: dict[str, Any]):
    variables = state.variables("generator")
    # Every window generated with each of the six labels (one at a time: the memory of one
    # forward); the window's own label gives the loss terms below.
    per_label = jax.lax.map(
        lambda e: gen.apply(variables, batch["mel"], batch["frames"],
                            jnp.full_like(batch["emotion"], e), train=False),
        jnp.arange(len(EMOTIONS), dtype=batch["emotion"].dtype))
    g = per_label[batch["emotion"], jnp.arange(per_label.shape[1])]
    classify = None if classifier is None else (
        lambda clips: classifier.apply(state.frozen["emotion_classifier"], clips))
    probe = emotion_probe(per_label, classify)
    # per example (each term of a batch of 1), so that the padding of the last validation
    # batch (mask 0) is left out
    inputs = {k: batch[k] for k in ("sync_mel", "target", "emotion")}
    terms = jax.vmap(lambda g1, b1: _generated_terms(
        g1[None], jax.tree_util.tree_map(lambda x: x[None], b1), state, state.params["emotion_disc"],
        expert, disc, vgg))(g, inputs)
    terms["loss"] = total_loss(terms, state.extras["w_sync"], w_pl, w_emo)
    logits = disc.apply({"params": state.params["emotion_disc"]}, batch["target"])
    terms["disc_accuracy"] = losses.per_example(losses.accuracy, logits, batch["emotion"])
    terms.update(probe)
    return losses.masked_mean(terms, batch.get("mask"), AXIS)

  return eval_step


def sample_grid(batch: dict, generated: np.ndarray, max_examples: int = 4) -> np.ndarray:
  """uint8 BGR image: one row per (example, frame): reference | masked input | generated | target."""
  rows = []
  for b in range(min(max_examples, generated.shape[0])):
    for t in range(generated.shape[1]):
      face = batch["frames"][b, t]
      tiles = [face[..., 3:6], face[..., 0:3], generated[b, t], batch["target"][b, t]]
      rows.append(np.concatenate(tiles, axis=1))
  grid = np.concatenate(rows, axis=0)
  return (np.clip(grid, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_sampler(config, setup: dict[str, Any]):
  """Hook: (generate(state, batch) -> clips (B,5,96,96,3) in inference mode, sample_grid)."""
  gen = make_models(config, setup)[0]

  def generate(state: TrainState, batch: dict[str, Any]):
    return gen.apply(state.variables("generator"), batch["mel"], batch["frames"], batch["emotion"],
                     train=False)

  return generate, sample_grid


def maybe_enable_sync(config, w_sync: float, val_metrics: dict[str, float]) -> float:
  """The sync weight after a validation: switches to sync_weight once sync < threshold, stays on."""
  if w_sync == 0.0 and val_metrics.get("sync", np.inf) < float(config.sync_threshold):
    return float(config.sync_weight)
  return w_sync


def after_validation(config, state: TrainState, val_metrics: dict[str, float], log) -> TrainState:
  """Hook: switch the sync-loss weight on for good once the validation sync loss is low."""
  w = _host_w_sync(state)
  new = maybe_enable_sync(config, w, val_metrics)
  if new != w:
    log(f"validation sync loss {val_metrics['sync']:.4f} < {config.sync_threshold}: "
        f"w_sync {w} -> {new} from now on")
    state = state.replace(extras={**state.extras, "w_sync": replicate(np.float32(new))})
  return state


def checkpoint_meta(config, setup: dict[str, Any]) -> dict[str, Any]:
  # The frozen networks are not saved with the run (the expert alone is 16M parameters per
  # checkpoint); their fingerprints are, so that a resume refuses another expert or VGG. A
  # config.validation "none" run loads no expert, so its checkpoints name none (nothing to check).
  sources = {"syncnet": config.syncnet_checkpoint or "random init", "vgg19": config.vgg_checkpoint}
  return {"width": float(config.width), "stage": "emogen",
          "widths": {"generator": float(config.width), "emotion_disc": setup["disc_width"]},
          "original_layout": setup["disc_original_layout"],
          "frozen": {name: {"fingerprint": checkpoints.fingerprint(setup[name]), "source": src}
                     for name, src in sources.items() if name in setup}}
