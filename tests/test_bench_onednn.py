"""The oneDNN binding (emogen_jax/onednn_conv) and scripts/bench_onednn.py: in both thread modes
the binding computes the three parts of every convolution geometry the models use as lax does, a
step routed through it has lax's gradients and really calls it, and the benchmark's end-to-end
run reports its rounds.

Builds the binding once (oneDNN's wheels from the package index, g++): skipped where either is
missing, with the reason."""

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import REPO

sys.path.insert(0, os.path.join(REPO, "scripts"))


@pytest.fixture(scope="module")
def library(tmp_path_factory):
  from emogen_jax.onednn_conv import binding
  cache = tmp_path_factory.mktemp("onednn")
  try:
    path = binding.build(str(cache))
  except binding.BuildError as e:
    pytest.skip(f"the oneDNN binding cannot be built here: {e}")
  binding.load(path)
  return path, str(cache)


# (x shape, kernel shape, strides, pads): every kind the models have (3x3 same, strided, 1x1,
# 7x7 and 5x5, the decoder's even phase kernels with uneven padding, an odd stride pair).
GEOMETRIES = [
    ((2, 12, 12, 8), (3, 3, 8, 16), (1, 1), ((1, 1), (1, 1))),
    ((2, 13, 11, 8), (3, 3, 8, 16), (2, 2), ((1, 1), (1, 1))),
    ((2, 8, 8, 16), (1, 1, 16, 4), (1, 1), ((0, 0), (0, 0))),
    ((2, 24, 24, 6), (7, 7, 6, 16), (1, 1), ((3, 3), (3, 3))),
    ((3, 10, 20, 5), (5, 5, 5, 7), (1, 2), ((2, 2), (2, 2))),
    ((2, 9, 9, 4), (2, 2, 4, 8), (1, 1), ((1, 0), (0, 1))),
    ((2, 9, 9, 4), (4, 4, 4, 8), (1, 1), ((1, 2), (2, 1))),
    # With threads="xla" on a pool of two or more threads (one per core: CI's and this machine's
    # two): a layer whose weight gradient splits over the batch and
    # whose kernel reorders split over output channels (48 in two blocks); two deep layers whose
    # weight gradient splits over output channels (72, 136: the last part short), one with an
    # odd batch that the forward splits unevenly.
    ((4, 20, 20, 16), (3, 3, 16, 48), (1, 1), ((1, 1), (1, 1))),
    ((3, 7, 7, 64), (3, 3, 64, 72), (1, 1), ((1, 1), (1, 1))),
    ((2, 6, 6, 40), (3, 3, 40, 136), (2, 2), ((1, 1), (1, 1))),
]


@pytest.mark.parametrize("threads", ["xla", "omp"])
@pytest.mark.parametrize("x_shape,k_shape,strides,pads", GEOMETRIES)
def test_parts_equal_lax(library, x_shape, k_shape, strides, pads, threads):
  import jax
  import jax.numpy as jnp

  from emogen_jax.onednn_conv import binding

  rng = np.random.default_rng(sum(x_shape) + sum(k_shape))
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  k = jnp.asarray(rng.standard_normal(k_shape), jnp.float32)

  def lax_conv(x_, k_):
    return jax.lax.conv_general_dilated(x_, k_, strides, pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  y, vjp = jax.vjp(lax_conv, x, k)
  dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  dx, dk = vjp(dy)
  ours = jax.jit(lambda x_, k_, dy_: (
      binding.forward(x_, k_, strides, pads, threads),
      binding.input_grad(dy_, k_, x_.shape, strides, pads, threads),
      binding.weight_grad(x_, dy_, k_.shape, strides, pads, threads)))
  for got, want in zip(ours(x, k, dy), (y, dx, dk)):
    assert got.shape == want.shape
    err = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
    assert err < 1e-5, err


# The plain case, a batch split with split reorders, and a weight gradient split by channels
# over an uneven batch.
@pytest.mark.parametrize("x_shape,k_shape,strides,pads",
                         [GEOMETRIES[0], GEOMETRIES[-3], GEOMETRIES[-2]])
def test_bfloat16_products(library, x_shape, k_shape, strides, pads):
  """math="bfloat16" (jax.default_matmul_precision("bfloat16")): each part within bfloat16's
  rounding of its float32 result, and, on a CPU with AMX, the forward and the input gradient not
  float32's result (the mode took effect) while the weight gradient is (oneDNN 3.2, the pinned
  version, keeps it in float32); the routed convolution takes it from JAX's setting at trace
  time."""
  import jax
  import jax.numpy as jnp

  from emogen_jax.models import layers
  from emogen_jax.onednn_conv import binding

  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  k = jnp.asarray(rng.standard_normal(k_shape), jnp.float32)
  y = binding.forward(x, k, strides, pads)
  dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  parts = lambda math: jax.jit(lambda x_, k_, dy_: (
      binding.forward(x_, k_, strides, pads, "xla", math),
      binding.input_grad(dy_, k_, x_.shape, strides, pads, "xla", math),
      binding.weight_grad(x_, dy_, k_.shape, strides, pads, "xla", math)))(x, k, dy)
  for i, (full, half) in enumerate(zip(parts("float32"), parts("bfloat16"))):
    err = float(jnp.max(jnp.abs(half - full)) / jnp.max(jnp.abs(full)))
    assert err < 2e-2, err  # bfloat16 keeps 8 bits: products within ~0.4 %, sums in float32
    if "amx_bf16" in binding.cpu_flags():
      assert err > 1e-4 if i < 2 else err < 1e-6, (i, err)
  undo = binding.route_convolutions(library[0])
  try:
    conv = lambda x_, k_: layers.conv2d(x_, k_, strides, pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert "bf16 = 0" in jax.jit(conv).lower(x, k).as_text()
    with jax.default_matmul_precision("bfloat16"):
      assert "bf16 = 1" in jax.jit(conv).lower(x, k).as_text()
  finally:
    undo()


@pytest.mark.parametrize("threads", ["xla", "omp"])
def test_routed_step_has_lax_gradients_and_calls_onednn(library, threads):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from emogen_jax.models import layers, vgg
  from emogen_jax.onednn_conv import binding

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = layers.ConvBN(8, 3, 2, 1)(x, train=True)
      x = layers.ConvBN(8, 3, 1, 1, residual=True)(x, train=True)
      return vgg.VGG19Features(width=1 / 16)(x[..., :3])[1]

  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, 3)), jnp.float32)
  variables = Net().init(jax.random.PRNGKey(0), x)

  def loss(params):
    out, _ = Net().apply({**variables, "params": params}, x, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(out))

  want = jax.grad(loss)(variables["params"])
  undo = binding.route_convolutions(library[0], threads)
  try:
    text = jax.jit(jax.grad(loss)).lower(variables["params"]).as_text()
    got = jax.jit(jax.grad(loss))(variables["params"])
  finally:
    undo()
  assert text.count("OnednnConvFwd") >= 4 and "OnednnConvBwdWeights" in text
  # Leaf by leaf against the largest gradient (the conv biases before a BatchNorm have a zero
  # gradient up to rounding, so their own scale is noise).
  scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree_util.tree_leaves(want))
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    err = float(jnp.max(jnp.abs(g - w))) / scale
    assert err < 1e-5, err
  # Undone: the models trace lax's convolutions again.
  assert "OnednnConv" not in jax.jit(jax.grad(loss)).lower(variables["params"]).as_text()


def test_bench_runs_every_variant(library, tmp_path):
  out = tmp_path / "rounds.json"
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "scripts", "bench_onednn.py"), "--stage", "syncnet",
       "--size", "smoke", "--batch", "4", "--steps", "1", "--rounds", "1", "--threads", "omp",
       "xla", "--cache-dir", library[1], "--json", str(out)],
      cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  (row,) = json.loads(out.read_text())
  assert row["xla_s"] > 0 and row["torch_s"] > 0
  # The baseline ran on XLA's kernels, whatever the library's default would take here.
  assert row["xla_onednn_calls"] == [0, 0, 0]
  assert row["order"] == ["xla", "onednn-omp", "onednn-xla"] and set(row["onednn"]) == {"omp", "xla"}
  for mode in row["onednn"].values():
    assert mode["step_s"] > 0
    # SyncNet's every convolution went to oneDNN, each part of each (its first layer too).
    fwd, dx, dw = mode["calls"]
    assert fwd > 0 and fwd == dw and 0 < dx <= fwd
    # The per-step figures divide by the step's runs: each run makes the same calls.
    assert mode["step_runs"] == 3 and fwd % 3 == 0 and dx % 3 == 0
    assert all(v > 0 for v in mode["ms_per_step"].values())
  # Both modes made the same calls: the split over XLA's pool is inside each call.
  assert row["onednn"]["omp"]["calls"] == row["onednn"]["xla"]["calls"]
  assert "XLA's kernels" in proc.stdout and "(xla threads)" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--rounds", "0"], "--rounds and --steps must be at least 1"),
    (["--batch", "0"], "--batch 0: give at least 1"),
    (["--stage", "foo"], "argument --stage: invalid choice: 'foo'"),
])
def test_bench_usage_errors(args, message):
  proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench_onednn.py"), *args],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], proc.stderr
  assert "Traceback" not in proc.stderr


def test_conv_grad_onednn_needs_compare_torch():
  proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench_conv_grad.py"),
                         "--onednn"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "add --compare-torch" in proc.stderr


def test_bench_counts_onednn_flops_as_xla_counts_its_convolutions(library):
  """bench_train's FLOPs of a routed step: XLA's cost analysis sees oneDNN's calls as free, so
  the benchmark counts them from the HLO, as XLA counts its own (padding left out)."""
  import jax
  import jax.numpy as jnp

  import bench_train
  from emogen_jax.onednn_conv import binding

  for x_shape, k_shape, strides, pads in GEOMETRIES:
    def make():  # a fresh function per lowering: jit keeps one trace per function
      def loss(x, k):
        y = jax.lax.conv_general_dilated(x, k, strides, pads,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jnp.sin(y))
      return jax.grad(loss, argnums=(0, 1))

    def routed(x, k):
      y = binding._make_conv("xla")(x, k, strides, pads, "float32")
      return jnp.sum(jnp.sin(y))

    args = (jnp.ones(x_shape), jnp.ones(k_shape))
    want = bench_train._flops(jax.jit(make()).lower(*args).compile())
    compiled = jax.jit(jax.grad(routed, argnums=(0, 1))).lower(*args).compile()
    assert compiled.as_text().count('custom_call_target="OnednnConv') == 3
    got = bench_train._flops(compiled)
    assert abs(got - want) <= 0.02 * want, (x_shape, k_shape, got, want)


def test_calls_leave_the_callers_openmp_threads_alone(library):
  """XLA may run a handler on the calling thread; oneDNN's one-thread setting must not stay
  there (it would leave PyTorch, or any OpenMP user on that thread, one thread)."""
  import ctypes

  import jax
  import jax.numpy as jnp

  from emogen_jax.onednn_conv import binding

  gomp = ctypes.CDLL("libgomp.so.1")
  gomp.omp_set_num_threads(3)
  x, k = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 8))
  for threads in ("xla", "omp"):
    f = jax.jit(lambda x_, k_: binding.forward(x_, k_, (1, 1), ((1, 1), (1, 1)), threads))
    jax.block_until_ready(f(x, k))
    assert gomp.omp_get_max_threads() == 3


def test_parts_under_vmap_equal_lax(library):
  """The validation steps vmap the models per example: a routed convolution under jax.vmap (the
  kernel shared, or batched too) and per-example gradients (vmap of grad) equal lax's."""
  import jax
  import jax.numpy as jnp

  from emogen_jax.onednn_conv import binding

  strides, pads = (2, 1), ((1, 1), (2, 0))
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.standard_normal((3, 2, 9, 8, 5)), jnp.float32)   # 3 examples of batch 2
  k = jnp.asarray(rng.standard_normal((3, 3, 5, 6)), jnp.float32)
  ks = jnp.asarray(rng.standard_normal((3, 3, 3, 5, 6)), jnp.float32)  # a kernel per example

  def lax_conv(x_, k_):
    return jax.lax.conv_general_dilated(x_, k_, strides, pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  conv = binding._make_conv("xla")
  ours = lambda x_, k_: conv(x_, k_, strides, pads, "float32")

  def close(got, want):
    err = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
    assert got.shape == want.shape and err < 1e-5, err

  shared = jax.jit(jax.vmap(ours, in_axes=(0, None)))
  close(shared(x, k), jax.vmap(lax_conv, in_axes=(0, None))(x, k))
  # The shared kernel's examples go to oneDNN as one call of batch 6.
  assert shared.lower(x, k).as_text().count("OnednnConvFwd") == 1
  close(jax.jit(jax.vmap(ours))(x, ks), jax.vmap(lax_conv)(x, ks))
  loss = lambda f: (lambda x_, k_: jnp.sum(jnp.sin(f(x_, k_))))
  per_example = lambda f: jax.jit(jax.vmap(jax.grad(loss(f), argnums=(0, 1)), in_axes=(0, None)))
  for got, want in zip(per_example(ours)(x, k), per_example(lax_conv)(x, k)):
    close(got, want)


def test_crops_and_empty_outputs_stay_on_lax(library):
  """Negative padding (a crop) and an empty output are lax's: oneDNN takes neither."""
  import jax
  import jax.numpy as jnp

  from emogen_jax.models import layers
  from emogen_jax.onednn_conv import binding

  undo = binding.route_convolutions(library[0])
  try:
    x, k = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 8))
    for pads in (((-1, 1), (1, 1)), ((0, 0), (-3, -3))):
      f = lambda x_, k_, p=pads: layers.conv2d(x_, k_, (1, 1), p,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
      assert "OnednnConv" not in jax.jit(f).lower(x, k).as_text()
      want = jax.lax.conv_general_dilated(x, k, (1, 1), pads,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
      np.testing.assert_allclose(jax.jit(f)(x, k), want, rtol=1e-6)
  finally:
    undo()


@pytest.fixture
def winograd_on(library, monkeypatch):
  """Winograd as the binding's default has it: on an AVX-512 CPU (else skipped), whatever
  EMOGEN_ONEDNN_WINOGRAD the developer's shell holds."""
  from emogen_jax.onednn_conv import binding
  monkeypatch.delenv(binding.WINOGRAD_ENV, raising=False)
  if not binding.winograd_enabled():
    pytest.skip("Winograd's transforms are compiled for AVX-512, which this CPU lacks")


def _rel_err(got, want) -> float:
  import jax.numpy as jnp
  assert got.shape == want.shape, (got.shape, want.shape)
  return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


# (x shape, Cout, pads, block): tiles cut by the image's edge (13, 11, 17 not multiples of 4 or
# 2), channel counts that leave a short group of the transforms' 64 (72, 80, 100), uneven and no
# padding; blocks of 3 tiles (many blocks over both threads), of 4 and 2 (a last block of one
# tile; with 2, also planned blocks left without tiles, which once wrote before the buffer) and
# of more tiles than the call has.
WINOGRAD_CASES = [
    ((2, 13, 11, 64), 64, ((1, 1), (1, 1)), 64),
    ((3, 12, 17, 72), 80, ((0, 2), (2, 1)), 3),
    ((3, 12, 17, 72), 80, ((0, 2), (2, 1)), 4),
    ((1, 12, 12, 64), 64, ((1, 1), (1, 1)), 2),
    ((1, 9, 10, 100), 64, ((0, 0), (0, 0)), 5),
    ((2, 8, 8, 16), 8, ((1, 1), (1, 1)), 1000),
]


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("x_shape,cout,pads,block", WINOGRAD_CASES)
def test_winograd_equals_lax(winograd_on, x_shape, cout, pads, block, tile):
  """Winograd's F(2x2) and F(4x4, 3x3) compute lax's convolution: F(2x2) to the direct
  kernels' rounding (1e-5 of the largest output, as test_parts_equal_lax), F(4x4), whose
  transforms multiply by up to 8 and 1/24, to 5e-5 (measured 0.8-2e-5 on the generator's
  layers)."""
  import jax
  import jax.numpy as jnp

  from emogen_jax.onednn_conv import binding

  rng = np.random.default_rng(sum(x_shape) + cout + block)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, x_shape[-1], cout)), jnp.float32)
  want = jax.lax.conv_general_dilated(x, k, (1, 1), pads, precision="highest",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  got = jax.jit(lambda x_, k_: binding.winograd(x_, k_, pads, tile=tile, block=block))(x, k)
  assert _rel_err(got, want) < (1e-5 if tile == 2 else 5e-5)


def test_winograd_is_float32_only(winograd_on):
  """Under bfloat16 products (JAX's default_matmul_precision) a layer that Winograd would take
  keeps oneDNN's direct kernels: the transformed operands' bfloat16 roundings lost 5.8 % of the
  largest output where the direct bfloat16 products lose under 2 %."""
  import jax
  import jax.numpy as jnp

  from emogen_jax.onednn_conv import binding

  x, k, pads = jnp.ones((2, 12, 12, 64)), jnp.ones((3, 3, 64, 64)), ((1, 1), (1, 1))
  conv = binding._make_conv("xla")
  loss = lambda math: lambda x_, k_: jnp.sum(jnp.sin(conv(x_, k_, (1, 1), pads, math)))
  grad = lambda math: jax.jit(jax.grad(loss(math), argnums=(0, 1))).lower(x, k).as_text()
  assert grad("float32").count("OnednnWinogradFwd") == 2
  text = grad("bfloat16")
  assert "OnednnWinograd" not in text and "OnednnConvFwd" in text and "OnednnConvBwdData" in text


def test_routed_layers_take_winograd_where_the_rule_says(library, winograd_on, monkeypatch):
  """Through the models' conv2d: a 3x3 stride-1 layer of >= 64 channels on a >= 12x12 image runs
  its forward and input gradient by Winograd's F(4x4) (the weight gradient stays oneDNN's
  direct), with lax's values and gradients, also under vmap (one call for the examples); on 6x6
  to 11x11 images with >= 256 channels by F(2x2); smaller layers, strided ones and
  EMOGEN_ONEDNN_WINOGRAD=0 keep the direct kernels."""
  import jax
  import jax.numpy as jnp

  from emogen_jax.models import layers
  from emogen_jax.onednn_conv import binding

  nhwc = ("NHWC", "HWIO", "NHWC")
  rng = np.random.default_rng(11)
  x = jnp.asarray(rng.standard_normal((2, 12, 14, 64)), jnp.float32)
  # Outputs of about unit size, as the models' (the loss's sine would magnify the rounding of
  # large ones into its gradient).
  k = jnp.asarray(rng.standard_normal((3, 3, 64, 72)) / 24, jnp.float32)
  pads = ((1, 1), (1, 1))

  def loss(conv):
    return lambda x_, k_: jnp.sum(jnp.sin(conv(x_, k_, (1, 1), pads, dimension_numbers=nhwc)))

  def hlo(f, *args):
    return jax.jit(f).lower(*args).as_text()

  want = jax.value_and_grad(loss(jax.lax.conv_general_dilated), argnums=(0, 1))(x, k)
  undo = binding.route_convolutions(library[0])
  try:
    grad = jax.value_and_grad(loss(layers.conv2d), argnums=(0, 1))
    text = hlo(grad, x, k)
    assert text.count("OnednnWinogradFwd") == 2 and text.count("OnednnConvBwdWeights") == 1
    assert "OnednnConvFwd" not in text and "OnednnConvBwdData" not in text
    got = jax.jit(grad)(x, k)
    assert abs(float(got[0] - want[0])) <= 1e-4 * abs(float(want[0]))
    for g, w in zip(got[1], want[1]):
      assert _rel_err(g, w) < 5e-5
    # Per example (the validation steps): the examples join one call.
    xs = x.reshape(2, 1, 12, 14, 64)
    per_example = jax.vmap(lambda x_: layers.conv2d(x_, k, (1, 1), pads, dimension_numbers=nhwc))
    assert hlo(per_example, xs).count("OnednnWinogradFwd") == 1
    lax_per_example = jax.vmap(
        lambda x_: jax.lax.conv_general_dilated(x_, k, (1, 1), pads, dimension_numbers=nhwc))
    assert _rel_err(jax.jit(per_example)(xs), lax_per_example(xs)) < 5e-5
    assert "tile = 4" in text
    # Images from 6x6 to 11x11 with >= 256 channels: F(2x2, 3x3).
    plain = lambda x_, k_, s=(1, 1): layers.conv2d(x_, k_, s, pads, dimension_numbers=nhwc)
    six = hlo(plain, jnp.ones((2, 6, 6, 256)), jnp.ones((3, 3, 256, 256)))
    assert "OnednnWinogradFwd" in six and "tile = 2" in six
    # Outside the rule: the direct kernels.
    for xs_, ks_, strides in [((2, 11, 14, 64), (3, 3, 64, 72), (1, 1)),    # under 12, few channels
                              ((2, 5, 5, 256), (3, 3, 256, 256), (1, 1)),   # image under 6
                              ((2, 12, 14, 32), (3, 3, 32, 72), (1, 1)),    # channels under 64
                              ((2, 24, 24, 64), (3, 3, 64, 64), (2, 2))]:   # strided
      text = hlo(functools.partial(plain, s=strides), jnp.ones(xs_), jnp.ones(ks_))
      assert "OnednnWinograd" not in text and "OnednnConvFwd" in text, (xs_, ks_, strides)
    wide = lambda x_, k_: layers.conv2d(x_, k_, (1, 1), ((3, 3), (3, 3)), dimension_numbers=nhwc)
    assert "OnednnWinograd" not in hlo(wide, x, k)  # padded by more than 2
    monkeypatch.setenv(binding.WINOGRAD_ENV, "0")
    assert "OnednnWinograd" not in hlo(plain, x, k)
  finally:
    undo()
  # oneDNN on its own OpenMP threads (bench_onednn's omp mode): the direct kernels.
  undo = binding.route_convolutions(library[0], "omp")
  try:
    monkeypatch.delenv(binding.WINOGRAD_ENV)
    assert "OnednnWinograd" not in hlo(plain, x, k)
  finally:
    undo()


# Uneven and no padding (the input gradient's padding is 2 minus the forward's on each side, so
# these swap sides), and the 6x6 images that F(2x2) takes.
@pytest.mark.parametrize("x_shape,pads,tile", [
    ((2, 12, 14, 64), ((0, 2), (2, 1)), "tile = 4"),
    ((2, 15, 14, 64), ((0, 0), (0, 0)), "tile = 4"),  # output 13x12: both sides >= 12
    ((2, 6, 7, 256), ((1, 1), (1, 0)), "tile = 2"),
])
def test_winograd_gradients_equal_lax(winograd_on, x_shape, pads, tile):
  """The routed convolution's forward and input gradient by Winograd (both calls in its HLO, of
  the tile the rule takes), its values and both gradients lax's to 5e-5."""
  import jax
  import jax.numpy as jnp

  from emogen_jax.onednn_conv import binding

  rng = np.random.default_rng(sum(x_shape))
  cin = x_shape[-1]
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, cin, cin)) / np.sqrt(9 * cin), jnp.float32)
  lax_conv = lambda x_, k_: jax.lax.conv_general_dilated(
      x_, k_, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  conv = binding._make_conv("xla")
  ours = lambda x_, k_: conv(x_, k_, (1, 1), pads, "float32")
  loss = lambda f: (lambda x_, k_: jnp.sum(jnp.sin(f(x_, k_))))
  grad = jax.value_and_grad(loss(ours), argnums=(0, 1))
  text = jax.jit(grad).lower(x, k).as_text()
  assert text.count("OnednnWinogradFwd") == 2 and text.count(tile) == 2
  (value, grads), (want_value, want_grads) = jax.jit(grad)(x, k), jax.value_and_grad(
      loss(lax_conv), argnums=(0, 1))(x, k)
  assert abs(float(value - want_value)) <= 1e-4 * abs(float(want_value))
  for g, w in zip(grads, want_grads):
    assert _rel_err(g, w) < 5e-5


def test_bench_counts_winograd_as_the_direct_convolution(winograd_on):
  """bench_train's FLOPs: a layer by Winograd counts as the direct convolution it computes (the
  model's FLOPs), as XLA counts its own."""
  import jax
  import jax.numpy as jnp

  import bench_train
  from emogen_jax.onednn_conv import binding

  pads = ((1, 1), (1, 1))
  args = (jnp.ones((2, 12, 13, 64)), jnp.ones((3, 3, 64, 64)))
  lax_loss = lambda x, k: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(
      x, k, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))))
  ours_loss = lambda x, k: jnp.sum(jnp.sin(binding._make_conv("xla")(x, k, (1, 1), pads,
                                                                      "float32")))
  want = bench_train._flops(jax.jit(jax.grad(lax_loss, argnums=(0, 1))).lower(*args).compile())
  compiled = jax.jit(jax.grad(ours_loss, argnums=(0, 1))).lower(*args).compile()
  assert compiled.as_text().count('custom_call_target="OnednnWinogradFwd"') == 2
  got = bench_train._flops(compiled)
  assert abs(got - want) <= 0.02 * want, (got, want)


def test_bench_winograd_reports_each_layer(library, winograd_on, tmp_path):
  """scripts/bench_winograd.py: per layer, the direct and both Winograd forms timed, their
  errors against lax's (F(4x4) within 5e-5, the others 1e-5) and the tile the rule takes."""
  out = tmp_path / "rows.json"
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "scripts", "bench_winograd.py"), "--layers",
       "12x13x64x72", "6x6x256x256", "8x8x32x32", "--batch", "2", "--repeats", "1", "--block",
       "8", "64", "--cache-dir", library[1], "--json", str(out)],
      cwd=tmp_path, capture_output=True, text=True, timeout=600,
      env={k: v for k, v in os.environ.items() if k != "EMOGEN_ONEDNN_WINOGRAD"})
  assert proc.returncode == 0, proc.stdout + proc.stderr
  rows = json.loads(out.read_text())
  assert [r["layer"] for r in rows] == ["12x13x64x72", "6x6x256x256", "8x8x32x32"]
  assert [r["rule_tile"] for r in rows] == [4, 2, 0]
  for row in rows:
    assert row["direct_s"] > 0 and row["direct_error"] < 1e-5
    assert set(row["winograd"]) == {"F2/8", "F2/64", "F4/8", "F4/64"}
    for name, v in row["winograd"].items():
      assert v["seconds"] > 0 and v["vs_direct"] > 0
      assert v["error"] < (5e-5 if name.startswith("F4") else 1e-5), (row["layer"], name, v)
  assert "the rule takes F(4x4)" in proc.stdout and "the rule takes direct" in proc.stdout


@pytest.mark.parametrize("args, env, message", [
    (["--layers", "12x12x64"], {}, "give HxWxCINxCOUT"),
    (["--batch", "0"], {}, "--batch, --repeats and --block must be at least 1"),
    ([], {"EMOGEN_ONEDNN_WINOGRAD": "off"}, "error: EMOGEN_ONEDNN_WINOGRAD='off'; set 0"),
])
def test_bench_winograd_usage_errors(args, env, message):
  proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench_winograd.py"), *args],
                        capture_output=True, text=True, timeout=120, env={**os.environ, **env})
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert message in proc.stderr.strip().splitlines()[-1], proc.stderr


@pytest.mark.parametrize("value", ["off", "false", "2"])
def test_winograd_switch_other_than_0_or_1_is_refused(value, monkeypatch):
  """EMOGEN_ONEDNN_WINOGRAD takes 0 or 1: an "off" must not silently leave Winograd on
  (tests/test_onednn_conv.py: the inference CLI's one line)."""
  from emogen_jax.errors import UserError
  from emogen_jax.onednn_conv import binding

  monkeypatch.setenv(binding.WINOGRAD_ENV, value)
  with pytest.raises(UserError, match=rf"^EMOGEN_ONEDNN_WINOGRAD='{value}'; set 0 "):
    binding.winograd_enabled()
  monkeypatch.setenv(binding.WINOGRAD_ENV, " 0 ")
  assert binding.winograd_enabled() is False
