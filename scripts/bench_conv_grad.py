"""Weight gradients of a stage's convolutions: XLA's own against the per-tap one, layer by layer.

`models.layers` computes a convolution's weight gradient as one matmul per kernel tap wherever
`layers._uses_tap_grad` says so (docs/design.md "CPU speed"). This benchmark checks that rule on
the layers a training step really has: it traces the stage's step, collects every convolution
(input shape, kernel shape, stride, how many times the step uses it), and times, each on
its own and the two in turn, XLA's weight gradient (autodiff of `lax.conv_general_dilated`)
against `layers.tap_weight_grad` on random operands of those shapes. The ratio > 1 means the
per-tap gradient is the faster one; the last column says which one the rule picks.

``--compare-torch`` times instead each part of every convolution of the step (``--all`` implied)
against PyTorch's kernels on the same operands, in turn: the forward, the input gradient and the
weight gradient, ours as the step computes them (``layers.conv2d`` with its gradient rules) and
PyTorch's ``conv2d`` and ``aten.convolution_backward`` on channels-last tensors; summed over the
step's uses, so it says which part of the convolutions a step's gap to PyTorch sits in (all
three parts for every layer: an upper bound where a step skips one, e.g. the first layer's input
gradient or a frozen network's weight gradient).

    python scripts/bench_conv_grad.py --stage syncnet --size reference --batch 16
    python scripts/bench_conv_grad.py --stage emogen --size smoke --batch 8 --all
    python scripts/bench_conv_grad.py --stage syncnet --size reference --batch 16 --compare-torch

``--onednn`` (with ``--compare-torch``) puts oneDNN's kernels on our side instead, through the FFI
binding that scripts/bench_onednn.py builds: PyTorch's library called from XLA (PyPI's oneDNN 3.2
where PyTorch 2.13 bundles 3.12).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def collect_convs(stage: str, size: str, batch: int, every: bool,
                  model_only: bool = False) -> dict:
  """{(x shape, kernel shape, strides): uses} of the stage's traced training step: the
  convolutions on the per-tap rule's path, or with ``every`` all plain NHWC ones it could take.
  ``model_only`` leaves out the convolutions that the gradient rules run themselves (the
  per-phase input gradients' stride-1 convolutions), which are part of their layer's input
  gradient."""
  import inspect

  import jax

  import bench_train
  from emogen_jax.models import layers

  seen: dict = {}
  uses_tap_grad = layers._uses_tap_grad

  def record(x_shape, kernel_shape, strides=(1, 1)):
    chosen = uses_tap_grad(x_shape, kernel_shape, strides)
    if model_only and any(f.function == "_conv_own_grad_bwd" for f in inspect.stack(0)):
      return chosen
    if chosen or every:
      key = (tuple(x_shape), tuple(kernel_shape), tuple(strides))
      seen[key] = seen.get(key, 0) + 1
    return chosen

  # The step that bench_train.py times (every EmoGen loss term on).
  mod, config, setup, state, fake = bench_train.stage_inputs(stage, size, batch=batch)
  step = mod.make_train_step(config, setup)
  layers._uses_tap_grad = record
  try:
    jax.eval_shape(jax.vmap(step, axis_name="batch"), jax.tree.map(lambda a: a[None], state),
                   {k: v[None] for k, v in fake.items()})
  finally:
    layers._uses_tap_grad = uses_tap_grad
  return seen


def time_layer(x_shape, kernel_shape, strides, repeats: int) -> tuple[float, float]:
  """Median ms of XLA's weight gradient and of the per-tap one (same operands, timed in turn)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from emogen_jax.models import layers

  padding = _same_padding(kernel_shape)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
  k = jnp.asarray(rng.standard_normal(kernel_shape, np.float32) * 0.05)
  conv = lambda x, k: layers._plain_conv(x, k, strides, padding, None)
  dy = jnp.asarray(rng.standard_normal(jax.eval_shape(conv, x, k).shape, np.float32))
  fns = {"xla": jax.jit(lambda x, k, dy: jax.vjp(lambda k_: conv(x, k_), k)[1](dy)[0]),
         "tap": jax.jit(lambda x, k, dy: layers.tap_weight_grad(x, dy, kernel_shape, strides,
                                                                 padding))}
  from bench_train import interleaved

  calls = {name: (lambda f=f: f(x, k, dy).block_until_ready()) for name, f in fns.items()}
  medians = interleaved(calls, repeats, warm_up=True)
  return tuple(1e3 * medians[name] for name in ("xla", "tap"))


PARTS = ("forward", "input gradient", "weight gradient")


def _same_padding(kernel_shape) -> tuple:
  """"Same"-size padding (the models' layers use it or a one-sided variant of the same cost)."""
  kh, kw = kernel_shape[:2]
  return ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2))


def conv_parts(x_shape, kernel_shape, strides, device: str = "cpu") -> tuple[dict, dict]:
  """The three parts of one convolution on the same random operands, as no-argument callables
  that return their result: (ours, PyTorch's), each {part: fn}. Ours go through
  ``layers.conv2d`` (its gradient rules); PyTorch's take NCHW views of channels-last tensors,
  the input padded beforehand as ours is (PyTorch pads symmetrically only), so that both
  compute the same sums."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from emogen_jax.models import layers

  padding = _same_padding(kernel_shape)
  rng = np.random.default_rng(0)
  x_np = rng.standard_normal(x_shape, np.float32)
  k_np = rng.standard_normal(kernel_shape, np.float32) * 0.05
  conv = lambda x, k: layers.conv2d(x, k, strides, padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x, k = jnp.asarray(x_np), jnp.asarray(k_np)
  dy_np = rng.standard_normal(jax.eval_shape(conv, x, k).shape, np.float32)
  dy = jnp.asarray(dy_np)
  fwd = jax.jit(conv)
  dx = jax.jit(lambda x, k, dy: jax.vjp(lambda x_: conv(x_, k), x)[1](dy)[0])
  dk = jax.jit(lambda x, k, dy: jax.vjp(lambda k_: conv(x, k_), k)[1](dy)[0])
  ours = {"forward": lambda: fwd(x, k).block_until_ready(),
          "input gradient": lambda: dx(x, k, dy).block_until_ready(),
          "weight gradient": lambda: dk(x, k, dy).block_until_ready()}

  (top, bottom), (left, right) = padding
  xp_np = np.pad(x_np, ((0, 0), (top, bottom), (left, right), (0, 0)))
  t = lambda a: torch.from_numpy(a).to(device).permute(0, 3, 1, 2)  # NHWC memory, NCHW view
  xt, dyt = t(xp_np), t(dy_np)
  kt = torch.from_numpy(k_np).to(device).permute(3, 2, 0, 1).contiguous()  # OIHW
  backward = lambda mask: torch.ops.aten.convolution_backward(
      dyt, xt, kt, None, list(strides), [0, 0], [1, 1], False, [0, 0], 1, mask)

  def timed(fn):
    def run():
      with torch.no_grad():
        out = fn()
      if device != "cpu":
        torch.cuda.synchronize()
      return out
    return run

  theirs = {"forward": timed(lambda: torch.nn.functional.conv2d(xt, kt, stride=strides)),
            "input gradient": timed(lambda: backward([True, False, False])[0]),
            "weight gradient": timed(lambda: backward([False, True, False])[1])}
  return ours, theirs


def time_parts(x_shape, kernel_shape, strides, repeats: int, device: str = "cpu") -> dict:
  """{part: (our median ms, PyTorch's median ms)} for one convolution, each pair timed in turn."""
  from bench_train import interleaved

  ours, theirs = conv_parts(x_shape, kernel_shape, strides, device)
  out = {}
  for part in PARTS:
    medians = interleaved({"ours": ours[part], "torch": theirs[part]}, repeats, warm_up=True)
    out[part] = (1e3 * medians["ours"], 1e3 * medians["torch"])
  return out


def compare_torch(convs: dict, repeats: int) -> None:
  """Prints each layer's three parts against PyTorch's, then their sums over the step's uses."""
  import jax
  import torch
  from bench_train import torch_device

  from emogen_jax.models import layers

  device = torch_device(jax.devices()[0].platform)
  print(f"PyTorch {torch.__version__} on {device}, {torch.get_num_threads()} threads; ms, "
        "ours / PyTorch")
  total = {part: [0.0, 0.0] for part in PARTS}
  for (x_shape, kernel_shape, strides), uses in sorted(
      convs.items(), key=lambda kv: -kv[1] * layers.conv_macs(*kv[0])):
    t = time_parts(x_shape, kernel_shape, strides, repeats, device)
    for part, (a, b) in t.items():
      total[part][0] += uses * a
      total[part][1] += uses * b
    print(f"  x{x_shape} k{kernel_shape} s{strides} x{uses}: " + ", ".join(
        f"{part} {a:.2f} / {b:.2f} ({b / a:.2f}x)" for part, (a, b) in t.items()), flush=True)
  print("summed over the step's uses: " + ", ".join(
      f"{part} {a:.1f} / {b:.1f} ms ({b / a:.2f}x)" for part, (a, b) in total.items()))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--stage", default="syncnet", choices=("syncnet", "emotion_disc", "emogen"))
  p.add_argument("--size", default="reference", choices=("smoke", "reference"))
  p.add_argument("--batch", type=int, default=None,
                 help="global batch (default: the smoke config's; 2 at the reference size, as "
                      "bench_train.py)")
  p.add_argument("--all", action="store_true",
                 help="every plain NHWC convolution of the step, not only those the rule sends "
                      "to the per-tap gradient")
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--compare-torch", action="store_true",
                 help="each convolution's forward, input gradient and weight gradient against "
                      "PyTorch's on the same operands (every convolution of the step)")
  p.add_argument("--onednn", action="store_true",
                 help="with --compare-torch: ours on oneDNN's kernels through the FFI binding of "
                      "emogen_jax/onednn_conv (built on first use; see scripts/bench_onednn.py)")
  args = p.parse_args(argv)
  if args.repeats < 1:
    p.error(f"--repeats {args.repeats}: give at least 1 (timed calls of each kernel)")
  if args.onednn and not args.compare_torch:
    p.error("--onednn times the binding's kernels against PyTorch's: add --compare-torch")
  from emogen_jax.allocator import use_fast_allocator
  use_fast_allocator()  # may re-execute this command with tcmalloc preloaded
  if args.batch is None and args.size == "reference":
    args.batch = 2
  from emogen_jax.models import layers

  convs = collect_convs(args.stage, args.size, args.batch, args.all or args.compare_torch,
                        model_only=args.compare_torch)
  print(f"{args.stage} {args.size} (batch {args.batch or 'default'}): {len(convs)} layer shapes")
  if args.compare_torch:
    if args.onednn:
      from emogen_jax.onednn_conv import binding
      try:
        binding.route_convolutions(binding.build())
      except binding.BuildError as e:
        p.exit(2, f"bench_conv_grad: {e}\n")
      print("ours: oneDNN's kernels (emogen_jax/onednn_conv)")
    compare_torch(convs, args.repeats)
    return 0
  total = {"xla": 0.0, "tap": 0.0}
  for (x_shape, kernel_shape, strides), uses in sorted(
      convs.items(), key=lambda kv: -kv[1] * layers.conv_macs(*kv[0])):
    xla, tap = time_layer(x_shape, kernel_shape, strides, args.repeats)
    total["xla"] += uses * xla
    total["tap"] += uses * tap
    picks = "tap" if layers._uses_tap_grad(x_shape, kernel_shape, strides) else "xla"
    print(f"  x{x_shape} k{kernel_shape} s{strides} x{uses}: XLA {xla:7.2f} ms, per tap "
          f"{tap:7.2f} ms, {xla / tap:4.2f}x  (rule: {picks})", flush=True)
  print(f"summed over the step's uses: XLA {total['xla']:.1f} ms, per tap {total['tap']:.1f} ms")
  return 0


if __name__ == "__main__":
  sys.exit(main())
