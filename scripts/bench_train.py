"""Training-step throughput per stage: examples/s and achieved FLOP/s (XLA cost analysis).

  python scripts/bench_train.py                                  # all stages, smoke + reference
  python scripts/bench_train.py --stages emogen --sizes reference --reference-batch 2 --steps 1
  python scripts/bench_train.py --json bench_train.json
  python scripts/bench_train.py --compare-torch --stages syncnet --sizes reference --reference-batch 16
  python scripts/bench_train.py --compare-torch --parts --stages emogen --sizes reference --reference-batch 2

--compare-torch also builds the same step in PyTorch from the tests' reference networks
(tests/_torch_reference.py via scripts/torch_baseline.py: same initial weights, same batch) and
times one step of each in turn, so that both see the same machine load; the row gains the
PyTorch step time and ``speedup_vs_torch`` (PyTorch time / ours: >= 1 means ours is as fast).
With --parts (EmoGen only) each part of the iteration is timed too, ours and PyTorch's in turn:
the generator's forward and weight gradient, the perceptual VGG-19 (both clips' features, the
generated frames' gradient), the sync expert and the emotion disc on the generated frames (their
gradients) and the emotion disc's update (its weight gradient), no optimizer: where the
iteration's gap to PyTorch lies (``emogen_parts``; tests/test_bench_train.py checks that both
sides compute the same gradients).
Each row also times a float32 2048x2048 matmul in the same process (``matmul_rate``) and prints
the achieved rates (ours, PyTorch's with the same FLOP count) as a share of it: the headroom a
faster kernel could still find (``--no-peak`` skips it). The FLOPs are the model's: layers run by
Winograd's algorithm (fewer products) count as their direct convolution, so they can pass 100 %.

Each stage's real pmapped train step (emogen_jax/train/stages/) on random in-memory batches over
all local devices, the state donated or not as in the training loop
(``stages.base.pmap_train_step``): compile time, then the median time of --steps steps after
one warm-up step. FLOPs per step come from
``jax.pmap(step).lower(...).compile().cost_analysis()`` (per device, times the device count).
"smoke" = the configs' :smoke variant (width 0.25, its batch); "reference" =
width 1.0 at --reference-batch (the configs' own batches, 128/64/16, take minutes per step on a
CPU; pass them explicitly on an accelerator). EmoGen's reference size includes the perceptual
loss with a full-width (random) VGG-19, like a real run with w_pl = 0.01.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # torch_baseline

from emogen_jax import allocator  # noqa: E402
from emogen_jax.errors import cli_main  # noqa: E402

STAGE_CONFIGS = {"syncnet": "syncnet", "emotion_disc": "emotion_disc", "emogen": "emogen"}


def _config(stage: str, size: str, batch: int | None):
  spec = importlib.util.spec_from_file_location(f"_cfg_{stage}",
                                                os.path.join(REPO, "configs", f"{stage}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("smoke" if size == "smoke" else None)
  c.synthetic_data = True
  c.allow_random_init = True
  if batch:
    c.batch_size = batch
  return c


_ONEDNN_CALL = re.compile(  # a compiled HLO line: result shape, part, both operands' shapes
    r"= f32\[([\d,]*)\]\S* custom-call\(.*?custom_call_target=\"Onednn(?:Conv|Winograd)"
    r"(Fwd|BwdData|BwdWeights)\""
    r", operand_layout_constraints=\{f32\[([\d,]*)\]\S*, f32\[([\d,]*)\].*backend_config=\{([^}]*)\}")


def _taps(size: int, out: int, k: int, stride: int, pad_lo: int) -> int:
  """Kernel taps over real (not padding) input, summed over the output positions of one axis."""
  return sum(1 for o in range(out) for i in range(k) if 0 <= o * stride - pad_lo + i < size)


def _onednn_flops(hlo: str) -> float:
  """FLOPs of the oneDNN convolutions in ``hlo`` (config.cpu_convolutions=onednn), which XLA's
  cost analysis counts as none; counted as XLA counts its own convolutions (multiply-adds on
  real input only, padding left out), the same for each of the three parts. Winograd's calls
  count as the direct convolution they compute (the model's FLOPs, not the fewer products)."""
  total = 0.0
  for out, part, a, b, attrs in _ONEDNN_CALL.findall(hlo):
    dims = lambda text: [int(d) for d in text.split(",") if d]
    x, y, w = {"Fwd": (a, out, b), "BwdData": (out, a, b), "BwdWeights": (a, b, out)}[part]
    (n, h, wd, c), (_, oh, ow, o), (kh, kw, _, _) = dims(x), dims(y), dims(w)
    at = {k: int(v) for k, v in re.findall(r"(\w+) = (-?\d+) : i64", attrs)}
    total += 2.0 * n * c * o * (_taps(h, oh, kh, at.get("sh", 1), at["pt"])
                                * _taps(wd, ow, kw, at.get("sw", 1), at["pl"]))
  return total


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = float((cost or {}).get("flops", float("nan")))
  hlo = compiled.as_text()
  return flops + _onednn_flops(hlo) if "custom_call_target=\"Onednn" in hlo else flops


def write_rows(path: str | None, rows: list[dict]) -> None:
  """The result rows as a JSON list (nothing without a path)."""
  if path:
    with open(path, "w") as f:
      json.dump(rows, f, indent=2)


def interleaved(fns: dict, repeats: int, warm_up: bool = False) -> dict[str, float]:
  """{name: no-argument callable} -> {name: median seconds}, calling one of each in turn
  ``repeats`` times, so that every callable sees the same machine load; with ``warm_up`` each
  is called once first, untimed (compiles, first-touch pages)."""
  import numpy as np
  if warm_up:
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return {name: float(np.median(t)) for name, t in times.items()}


def matmul_rate(n: int = 2048, repeats: int = 7) -> float:
  """GFLOP/s of a jitted float32 (n, n) @ (n, n) on the default device, best of ``repeats``: the
  dense arithmetic rate that a direct convolution (a matmul in disguise) can at best approach."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
  mm = jax.jit(jnp.matmul)
  mm(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    mm(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / best / 1e9


def _load() -> str:
  try:
    return " ".join(open("/proc/loadavg").read().split()[:3])
  except OSError:
    return "n/a"


def stage_inputs(stage: str, size: str, *, batch: int | None, dtype: str = "float32",
                 sync_on: bool = True):
  """One stage/size as the benchmarks run it: (stage module, config, setup, host state, random
  batch); the global batch a multiple of the local devices, random VGG-19 weights for the
  full-width perceptual term, EmoGen's sync term on unless ``sync_on`` is False."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from emogen_jax.models import VGG19Features
  from emogen_jax.train import stages

  config = _config(stage, size, batch)
  config.compute_dtype = dtype
  if stage == "emogen" and sync_on:
    # The sync term on (as after the switch), so that every loss term costs its share.
    config.w_sync = float(config.sync_weight)
  mod = stages.get(stage)
  n = jax.local_device_count()
  if config.batch_size % n:
    config.batch_size = n * max(1, config.batch_size // n)
  setup = mod.prepare(config, log=lambda *_: None)
  if stage == "emogen" and setup.get("use_vgg") and size == "reference":
    setup["vgg_width"] = 1.0
    setup["vgg19"] = VGG19Features().init(jax.random.PRNGKey(1), jnp.zeros((1, 96, 96, 3)))
    setup["random_init"].append("vgg19")
  host_state = mod.init_state(config, jax.random.PRNGKey(0), setup)
  batch_np = mod.fake_batch(np.random.default_rng(0), config.batch_size)
  return mod, config, setup, host_state, batch_np


def build(stage: str, size: str, *, batch: int | None, dtype: str, sync_on: bool = True) -> dict:
  """Our pmapped step for one stage/size on a random batch: {"run": one step, blocking,
  "compiled", "config", "setup", "host_state", "batch"}."""
  import jax
  import numpy as np
  from emogen_jax.train.stages.base import pmap_train_step
  from emogen_jax.train.state import replicate

  mod, config, setup, host_state, batch_np = stage_inputs(stage, size, batch=batch, dtype=dtype,
                                                          sync_on=sync_on)
  n = jax.local_device_count()
  per_device = config.batch_size // n
  holder = {"state": replicate(host_state)}
  sharded = {k: v.reshape((n, per_device) + v.shape[1:]) for k, v in batch_np.items()}

  # The step as the training loop compiles it (state donated on accelerators).
  p_step = pmap_train_step(mod.make_train_step(config, setup))
  t0 = time.perf_counter()
  compiled = p_step.lower(holder["state"], sharded).compile()
  compile_s = time.perf_counter() - t0

  # The step runs the executable compiled above: calling p_step would compile it a second time.
  def run():
    holder["state"], m = compiled(holder["state"], sharded)
    jax.block_until_ready(m)
    return float(np.asarray(m["loss"])[0])

  return {"run": run, "holder": holder, "compiled": compiled, "compile_s": compile_s, "config": config,
          "setup": setup, "host_state": host_state, "batch": batch_np, "devices": n,
          "platform": jax.devices()[0].platform}


def torch_nets(ours: dict, device: str) -> dict:
  """The EmoGen iteration's four networks as PyTorch state dicts from our built state and setup
  (the expert and VGG-19 frozen; VGG-19 None without the perceptual loss)."""
  import jax
  import torch_baseline as tb

  config, setup, state = ours["config"], ours["setup"], jax.device_get(ours["host_state"])
  return {"generator": tb.state_dict("generator", state.variables("generator"), config.width, device),
          "syncnet": tb.state_dict("syncnet", setup["syncnet"], setup["syncnet_width"], device,
                                   trainable=False),
          "emotion_disc": tb.state_dict("emotion_disc", state.variables("emotion_disc"),
                                        setup["disc_width"], device),
          "vgg19": (tb.state_dict("vgg19", jax.device_get(setup["vgg19"]), setup["vgg_width"],
                                  device, trainable=False) if setup.get("use_vgg") else None)}


def matmul_math() -> tuple[str, str]:
  """(ours, PyTorch's) products' precision: under JAX's default_matmul_precision("bfloat16")
  (JAX_DEFAULT_MATMUL_PRECISION=bfloat16; our oneDNN convolutions honour it, XLA's kernels do
  not: emogen_jax/onednn_conv) PyTorch's CPU oneDNN is set to the same (torch.backends.mkldnn's
  fp32_precision "bf16"), so that the ratio compares like with like; otherwise it is set back to
  its default. "bfloat16" on PyTorch's side only where that setting took."""
  from emogen_jax.onednn_conv import binding
  ours = binding.products_math(None)
  try:
    import torch
    value = "bf16" if ours == "bfloat16" else "none"
    torch.backends.mkldnn.conv.fp32_precision = value
    torch.backends.mkldnn.matmul.fp32_precision = value
    theirs = ours
  except (ImportError, AttributeError):
    theirs = "float32"
  return ours, theirs


def _math_label(row: dict, kernels: str) -> str:
  """"(products at bfloat16: ...) " for a row measured under JAX's bfloat16 setting, naming
  which side actually ran them; "" otherwise."""
  if row["matmul_math"] != "bfloat16":
    return ""
  ours = "ours" if kernels == "onednn" else "not ours (XLA's kernels ignore it)"
  theirs = {"bfloat16": "PyTorch's", "float32": "not PyTorch's", None: ""}[
      row.get("torch_matmul_math")]
  return f"(products at bfloat16: {', '.join(filter(None, (ours, theirs)))}) "


def torch_device(platform: str) -> str:
  """PyTorch's device for our JAX platform: the GPU where both have one, else the CPU."""
  import torch
  return "cuda" if platform == "gpu" and torch.cuda.is_available() else "cpu"


def build_torch(stage: str, ours: dict):
  """The same step in PyTorch, from the same initial weights and batch (scripts/torch_baseline.py)."""
  import jax
  import torch_baseline as tb

  device = torch_device(ours["platform"])
  config, state, batch = ours["config"], jax.device_get(ours["host_state"]), ours["batch"]
  if stage == "syncnet":
    sd = tb.state_dict("syncnet", state.variables("syncnet"), config.width, device)
    return tb.syncnet_step(sd, batch, config, device), device
  if stage == "emotion_disc":
    sd = tb.state_dict("emotion_disc", state.variables("emotion_disc"), config.width, device)
    return tb.emotion_disc_step(sd, batch, config, device), device
  return tb.emogen_step(torch_nets(ours, device), batch, config, device,
                        float(config.w_sync)), device


def emogen_parts(ours: dict, generated) -> dict:
  """The EmoGen iteration's parts as our pmapped functions, on the built state and batch, each a
  forward and the gradient the iteration takes of it: {name: blocking no-argument callable}, the
  names and the work of scripts/torch_baseline.py's ``emogen_parts``. ``generated`` (B, T, H, W,
  3) stands for the generator's output where a part starts from it. Every array is an argument
  of the compiled function, none a closed-over constant that XLA could fold at compile time."""
  import jax
  from emogen_jax.train import losses
  from emogen_jax.train.stages import emogen
  from emogen_jax.train.stages.base import AXIS

  config, setup, state = ours["config"], ours["setup"], ours["holder"]["state"]
  gen, expert, disc, vgg = emogen.make_models(config, setup)
  shard = lambda x: x.reshape((ours["devices"], -1) + x.shape[1:])
  d = {k: shard(v) for k, v in ours["batch"].items()}
  g = shard(generated)

  def generator(params, batch_stats, mel, face, emotion, target):
    out, _ = gen.apply({"params": params, "batch_stats": batch_stats}, mel, face, emotion,
                       train=True, mutable=["batch_stats"])
    return losses.l1_loss(out, target)

  # The step's own terms (train/stages/emogen.py), so that the parts time what the step runs.
  perceptual = lambda g, weights, target: emogen._perceptual_term(g, target, weights, vgg)
  sync_expert = lambda g, weights, sync_mel: emogen._sync_term(g, sync_mel, weights, expert)

  def disc_loss(params, frames_, emotion):
    return losses.cross_entropy(disc.apply({"params": params}, frames_), emotion)

  # (loss, its arguments; the gradient is taken of the first)
  frozen, params = state.frozen, state.params  # replicated: a leading device axis
  calls = {"generator": (generator, (params["generator"], state.batch_stats["generator"],
                                     d["mel"], d["frames"], d["emotion"], d["target"]))}
  if vgg is not None:
    calls["perceptual"] = (perceptual, (g, frozen["vgg19"], d["target"]))
  if "syncnet" in frozen:
    calls["sync expert"] = (sync_expert, (g, frozen["syncnet"], d["sync_mel"]))
  calls["emotion disc on generated"] = (lambda g, p, e: disc_loss(p, g, e),
                                        (g, params["emotion_disc"], d["emotion"]))
  calls["emotion disc update"] = (disc_loss, (params["emotion_disc"], d["target"], d["emotion"]))

  def part(loss, args):
    step = jax.pmap(jax.grad(loss), axis_name=AXIS)
    return lambda: jax.block_until_ready(step(*args))

  return {name: part(loss, args) for name, (loss, args) in calls.items()}


def bench_parts(ours: dict, steps: int) -> dict:
  """Each part of the EmoGen iteration (``emogen_parts``), ours and PyTorch's, all timed in turn
  ``steps`` times: {part: {"ours_s", "torch_s", "speedup_vs_torch"}}."""
  import numpy as np
  import torch_baseline as tb

  device = torch_device(ours["platform"])
  generated = np.random.default_rng(1).uniform(0, 1, ours["batch"]["target"].shape)
  generated = generated.astype(np.float32)
  mine = emogen_parts(ours, generated)
  theirs = tb.emogen_parts(torch_nets(ours, device), ours["batch"], generated, device)
  fns = {}
  for name in mine:
    fns[("ours", name)], fns[("torch", name)] = mine[name], theirs[name]
  medians = interleaved(fns, steps, warm_up=True)
  return {name: {"ours_s": round(medians[("ours", name)], 4),
                 "torch_s": round(medians[("torch", name)], 4),
                 "speedup_vs_torch": round(medians[("torch", name)] / medians[("ours", name)], 3)}
          for name in mine}


def bench(stage: str, size: str, *, batch: int | None, steps: int, dtype: str,
          compare_torch: bool = False, peak: bool = True, sync_on: bool = True,
          parts: bool = False) -> dict:
  """Compile, one warm-up step, then ``steps`` timed steps (median); with ``compare_torch`` the
  PyTorch step is timed in the same loop, one of each in turn, so both see the same machine load;
  with ``parts`` (EmoGen, with ``compare_torch``) also each part of the iteration
  (``bench_parts``)."""

  ours = build(stage, size, batch=batch, dtype=dtype, sync_on=sync_on)
  config = ours["config"]
  flops_per_step = _flops(ours["compiled"]) * ours["devices"]
  loss = ours["run"]()  # warm-up (also checks the step runs)
  torch_step = None
  our_math, torch_math = matmul_math()
  if compare_torch:
    torch_step, their_device = build_torch(stage, ours)
    torch_math = torch_math if their_device == "cpu" else "float32"
    torch_step()
  medians = interleaved({"ours": ours["run"], **({"torch": torch_step} if torch_step else {})},
                        steps)
  loss = ours["run"]()
  step_s = medians["ours"]
  row = {"stage": stage, "size": size, "width": float(config.width), "dtype": dtype,
         "matmul_math": our_math, **({"w_sync": float(config.w_sync)} if stage == "emogen" else {}),
         **({"torch_matmul_math": torch_math} if torch_step else {}),
         "devices": ours["devices"], "platform": ours["platform"], "batch": config.batch_size,
         "compile_s": round(ours["compile_s"], 2), "step_s": round(step_s, 4),
         "examples_per_s": round(config.batch_size / step_s, 3),
         "gflop_per_step": round(flops_per_step / 1e9, 3),
         "achieved_gflop_per_s": round(flops_per_step / step_s / 1e9, 3),
         "loss": loss, "loadavg": _load(), "malloc": allocator.describe(),
         "step_runs": steps + 2}  # the warm-up, the timed steps, the one for the loss above
  if torch_step is not None:
    import torch
    t_s = medians["torch"]
    row.update(torch_step_s=round(t_s, 4), torch_device=their_device,
               torch_threads=torch.get_num_threads(), speedup_vs_torch=round(t_s / step_s, 3),
               torch_achieved_gflop_per_s=round(flops_per_step / t_s / 1e9, 3))  # same FLOPs
  if parts:
    row["parts"] = bench_parts(ours, steps)
  if peak:
    row["matmul_gflop_per_s"] = round(matmul_rate(), 1)
  return row


@cli_main  # a UserError (a bad setting, a failed oneDNN build) is one line
def main(argv=None) -> int:
  from emogen_jax import onednn_conv
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--stages", default="syncnet,emotion_disc,emogen")
  p.add_argument("--sizes", default="smoke,reference", help="smoke and/or reference")
  p.add_argument("--smoke-batch", type=int, default=None, help="default: the :smoke config's")
  p.add_argument("--reference-batch", type=int, default=2,
                 help="global batch at reference size (default 2: CPU-friendly)")
  p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--json", default=None, help="also write the rows to this JSON file")
  p.add_argument("--compare-torch", action="store_true",
                 help="also time the same step in PyTorch (the tests' reference networks, same "
                      "weights and batch), interleaved with ours; prints the speed ratio")
  p.add_argument("--parts", action="store_true",
                 help="with --compare-torch, EmoGen only: also time each part of the iteration "
                      "(generator, perceptual VGG-19, sync expert, emotion disc on the generated "
                      "frames, emotion-disc update), ours and PyTorch's in turn")
  p.add_argument("--sync-off", action="store_true",
                 help="EmoGen with the sync weight still 0 (before the switch: every smoke run)")
  p.add_argument("--no-peak", action="store_true",
                 help="skip the float32 matmul rate that the achieved rates are compared with")
  p.add_argument("--cpu-convolutions", default="auto", choices=onednn_conv.CHOICES,
                 help="our convolution kernels on the CPU (config.cpu_convolutions): auto (the "
                      "library's default), xla or onednn (built with g++ on first use); the rows "
                      "name the kernels used")
  args = p.parse_args(argv)
  stage_list = [s for s in args.stages.split(",") if s]
  if args.sync_off and "emogen" not in stage_list:
    p.error("--sync-off only changes the emogen stage; add emogen to --stages or drop --sync-off")
  if args.parts and (stage_list != ["emogen"] or not args.compare_torch):
    p.error("--parts times the EmoGen iteration's parts against PyTorch's: use it with "
            "--stages emogen --compare-torch")
  with onednn_conv.cpu_convolutions(args.cpu_convolutions, where="--cpu-convolutions") as kernels:
    rows = []
    for stage in stage_list:
      if stage not in STAGE_CONFIGS:
        p.error(f"unknown stage {stage!r}; use {', '.join(STAGE_CONFIGS)}")
      for size in [s for s in args.sizes.split(",") if s]:
        if size not in ("smoke", "reference"):
          p.error(f"unknown size {size!r}; use smoke or reference")
        batch = args.smoke_batch if size == "smoke" else args.reference_batch
        row = bench(stage, size, batch=batch, steps=max(1, args.steps), dtype=args.dtype,
                    compare_torch=args.compare_torch, peak=not args.no_peak,
                    sync_on=not args.sync_off, parts=args.parts)
        row["cpu_convolutions"] = kernels
        rows.append(row)
        print(f"{row['stage']:>12} {row['size']:>9} width {row['width']:<5} batch {row['batch']:>4} "
              + _math_label(row, kernels)
              + f"on {row['devices']} {row['platform']}: step {row['step_s']:.3f} s, "
              f"{row['examples_per_s']:.2f} examples/s, {row['gflop_per_step']:.1f} GFLOP/step, "
              f"{row['achieved_gflop_per_s']:.1f} GFLOP/s achieved (compile {row['compile_s']:.0f} s)"
              + (f"; PyTorch ({row['torch_device']}, {row['torch_threads']} threads) "
                 f"{row['torch_step_s']:.3f} s: ours {row['speedup_vs_torch']:.2f}x"
                 if "torch_step_s" in row else "") + f"; load {row['loadavg']}; {row['malloc']}",
              flush=True)
        for name, part in row.get("parts", {}).items():
          print(f"  {name:<26} ours {part['ours_s']:.3f} s, PyTorch {part['torch_s']:.3f} s: "
                f"ours {part['speedup_vs_torch']:.2f}x", flush=True)
        if "matmul_gflop_per_s" in row:
          rate = row["matmul_gflop_per_s"]
          print(f"  float32 matmul on this device {rate:.0f} GFLOP/s: the step achieves "
                f"{100 * row['achieved_gflop_per_s'] / rate:.0f} %"
                + (f", PyTorch's {100 * row['torch_achieved_gflop_per_s'] / rate:.0f} %"
                   if "torch_achieved_gflop_per_s" in row else "") + " of it", flush=True)
  write_rows(args.json, rows)
  return 0


if __name__ == "__main__":
  from emogen_jax.allocator import use_fast_allocator
  use_fast_allocator()  # may re-execute this command with tcmalloc preloaded
  sys.exit(main())
