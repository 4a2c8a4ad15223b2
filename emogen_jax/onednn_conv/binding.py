"""Builds the oneDNN binding, registers it with XLA and routes the models' convolutions to it.

`build(cache_dir)` fetches oneDNN (the PyPI wheels ``onednn-cpu-gomp`` and
``onednn-devel-cpu-gomp``, version ``ONEDNN_VERSION``) and compiles ``onednn_conv.cc`` against it
and jaxlib's FFI headers with g++; `load(library)` registers its four handlers with XLA;
`route_convolutions()` sends every plain float32 NHWC convolution of the models (those that
`models.layers.conv2d` and VGG-19's layers compute) to them, with the custom VJP below: oneDNN's
direct kernels, or for the layers `winograd_tile` names Winograd's (forward and input gradient).
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile

from emogen_jax.errors import UserError

ONEDNN_VERSION = "2023.2.0"        # oneDNN 3.2, the newest OpenMP build on PyPI
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_conv.cc")
TARGETS = ("OnednnConvFwd", "OnednnConvBwdData", "OnednnConvBwdWeights", "OnednnWinogradFwd")


class BuildError(UserError):
  """The binding could not be built; the message is one line naming the step and the fix."""


def default_cache_dir() -> str:
  """$XDG_CACHE_HOME/emogen_jax/onednn_conv (~/.cache/... when XDG_CACHE_HOME is unset)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "emogen_jax", "onednn_conv")


def library_path(cache_dir: str | None = None) -> str:
  """Where `build` puts the binding of this source, oneDNN version and jaxlib (whose FFI headers
  it is compiled against), built or not."""
  import importlib.metadata

  cache_dir = os.path.abspath(cache_dir or default_cache_dir())
  try:
    jaxlib = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    jaxlib = "none"
  with open(SOURCE, "rb") as f:
    digest = hashlib.sha256(f.read() + ONEDNN_VERSION.encode() + jaxlib.encode()).hexdigest()[:12]
  return os.path.join(cache_dir, f"libonednn_conv-{digest}.so")


@functools.cache  # read once: asked per layer while a step is traced (winograd_tile)
def cpu_flags() -> frozenset[str]:
  """This CPU's feature flags as Linux's /proc/cpuinfo names them (empty where it cannot tell)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


def has_avx512() -> bool:
  """Whether this CPU has AVX-512 (False where it cannot tell), the CPUs on which oneDNN's kernels
  were measured faster than XLA's."""
  return "avx512f" in cpu_flags()


def build(cache_dir: str | None = None, log=None) -> str:
  """Path of the compiled binding under ``cache_dir``, built if missing (the name carries a hash
  of the source, oneDNN's version and jaxlib's, so an edited source or a new jaxlib builds anew);
  ``log`` hears of a build before it starts (under a minute: two wheels fetched, one C++ file
  compiled)."""
  fix = "give a writable folder" if cache_dir else "set XDG_CACHE_HOME to a writable folder"
  cache_dir = os.path.abspath(cache_dir or default_cache_dir())
  library = library_path(cache_dir)
  if os.path.exists(library):
    return library
  compiler = shutil.which("g++")
  if compiler is None:
    raise BuildError("g++ not found: the oneDNN binding is C++; install it (apt-get install g++)")
  try:
    os.makedirs(cache_dir, exist_ok=True)
    lock = open(os.path.join(cache_dir, ".build.lock"), "w")
  except OSError as e:
    raise BuildError(f"cannot write the binding's cache folder {cache_dir} ({e.strerror}); "
                     f"{fix}") from None
  # Processes that start together (the quickstart trains two stages at once) build it once:
  # the first builds, the others wait for it and find the library.
  with lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if os.path.exists(library):
      return library
    # Said once the build is certain to start here (not by a process that found it built).
    if log is not None:
      log(f"building oneDNN's convolutions for XLA into {cache_dir} (once, under a minute)")
    _build(cache_dir, library, compiler)
  return library


def _build(cache_dir: str, library: str, compiler: str) -> None:
  import jax.ffi

  wheels = os.path.join(cache_dir, f"wheels-{ONEDNN_VERSION}")
  onednn = os.path.join(cache_dir, f"onednn-{ONEDNN_VERSION}")
  # The marker is written last: a build stopped half-way through the extraction extracts again.
  marker = os.path.join(onednn, ".extracted")
  if not os.path.exists(marker):
    os.makedirs(wheels, exist_ok=True)
    pip = subprocess.run(
        # Short timeouts: offline, the install script's every run tries this (and goes on).
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--timeout", "15",
         "--retries", "1", "-d", wheels,
         f"onednn-cpu-gomp=={ONEDNN_VERSION}", f"onednn-devel-cpu-gomp=={ONEDNN_VERSION}"],
        capture_output=True, text=True)
    if pip.returncode != 0:
      last = (pip.stderr.strip().splitlines() or ["no output"])[-1]
      raise BuildError(f"pip could not fetch oneDNN {ONEDNN_VERSION} ({last}); the binding needs "
                       "the package index (or the two wheels placed in " + wheels + ")")
    for wheel in glob.glob(os.path.join(wheels, "onednn*.whl")):
      try:
        z = zipfile.ZipFile(wheel)
      except zipfile.BadZipFile:
        os.remove(wheel)
        raise BuildError(f"{wheel} is not a wheel (a broken download); removed: run again") from None
      with z:
        for name in z.namelist():
          # The wheels keep the library and headers under <name>.data/data/{lib,include}/.
          parts = name.split("/")
          if len(parts) > 3 and parts[1] == "data" and parts[2] in ("lib", "include"):
            target = os.path.join(onednn, *parts[2:])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
              shutil.copyfileobj(src, dst)
    open(marker, "w").close()
  lib_dir = os.path.join(onednn, "lib")
  if not os.path.exists(os.path.join(lib_dir, "libdnnl.so")):
    sonames = sorted(glob.glob(os.path.join(lib_dir, "libdnnl.so.*")))
    if not sonames:
      raise BuildError(f"no libdnnl.so in {lib_dir}: delete {onednn} and run again")
    os.symlink(os.path.basename(sonames[0]), os.path.join(lib_dir, "libdnnl.so"))
  tmp = library + f".tmp{os.getpid()}"
  cc = subprocess.run(
      [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
       "-I", os.path.join(onednn, "include"), "-I", jax.ffi.include_dir(), SOURCE,
       "-L", lib_dir, "-ldnnl", f"-Wl,-rpath,{lib_dir}", "-o", tmp],
      capture_output=True, text=True)
  if cc.returncode != 0:
    first = next((l for l in cc.stderr.splitlines() if "error" in l), cc.stderr.strip()[:200])
    raise BuildError(f"g++ could not compile {SOURCE}: {first}")
  os.replace(tmp, library)


# XLA's FFI registry is per process and refuses a second registration of a name: the handlers
# registered first stay. Another copy of the same build (the same file name: the same source and
# oneDNN version, in another cache folder) is the same code and is not registered again.
_loaded: list[str] = []


def load(library: str) -> None:
  """Registers the handlers of the compiled ``library`` with XLA's CPU platform (once per
  process)."""
  import jax

  if _loaded:
    if os.path.basename(_loaded[0]) != os.path.basename(library):
      raise BuildError(f"this process already runs another build of the oneDNN binding "
                       f"({_loaded[0]}); start a new process to use {library}")
    return
  try:
    lib = ctypes.cdll.LoadLibrary(library)
  except OSError as e:
    raise BuildError(f"cannot load the oneDNN binding {library} ({e}); delete "
                     f"{os.path.dirname(library)} to build it again") from None
  missing = [name for name in TARGETS if not hasattr(lib, name)]
  if missing:
    raise BuildError(f"the oneDNN binding {library} lacks {', '.join(missing)}; delete "
                     f"{os.path.dirname(library)} to build it again")
  for name in TARGETS:
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
  _loaded.append(library)


THREADS = ("xla", "omp")
# The products' precision: "float32", or "bfloat16" (the float32 operands' bfloat16 roundings,
# float32 sums: what jax.default_matmul_precision("bfloat16") asks for; AMX runs it).
MATH = ("float32", "bfloat16")


def _attrs(strides, pads, threads, math="float32") -> dict:
  import numpy as np

  if threads not in THREADS:
    raise ValueError(f"threads={threads!r}; use one of {', '.join(THREADS)}")
  if math not in MATH:
    raise ValueError(f"math={math!r}; use one of {', '.join(MATH)}")
  (pt, pb), (pl, pr) = pads
  return dict(sh=np.int64(strides[0]), sw=np.int64(strides[1]), pt=np.int64(pt),
              pb=np.int64(pb), pl=np.int64(pl), pr=np.int64(pr),
              pool=np.int64(threads == "xla"), bf16=np.int64(math == "bfloat16"))


def _out_shape(x_shape, kernel_shape, strides, pads) -> tuple:
  n, h, w, _ = x_shape
  kh, kw, _, o = kernel_shape
  return (n, (h + sum(pads[0]) - kh) // strides[0] + 1, (w + sum(pads[1]) - kw) // strides[1] + 1,
          o)


# Each part takes `threads`: "xla" (oneDNN without threads of its own, each call split over XLA's
# thread pool) or "omp" (oneDNN's OpenMP team per call, as PyTorch runs it), and `math` (MATH).
# Under jax.vmap (the validation steps compute their metrics per example) the rules of `_parts`
# apply.
def forward(x, kernel, strides, pads, threads="xla", math="float32"):
  """y = conv(x, kernel): x (B, H, W, Cin), kernel (kh, kw, Cin, Cout), float32."""
  tile = winograd_tile(x.shape, kernel.shape, strides, pads, threads, math)
  if tile:
    return winograd(x, kernel, pads, tile, part="forward")
  return _parts(_key(strides), _key(pads), threads, None, None, math)[0](x, kernel)


def input_grad(dy, kernel, x_shape, strides, pads, threads="xla", math="float32"):
  """dx (x_shape) of y = conv(x, kernel), from dy."""
  # At stride 1, dx is the convolution of dy with the kernel flipped in space and transposed,
  # padded by kernel size - 1 - the forward's padding on each side.
  (pt, pb), (pl, pr) = pads
  flipped = ((2 - pt, 2 - pb), (2 - pl, 2 - pr))
  tile = winograd_tile(dy.shape, kernel.shape[:2] + kernel.shape[2:][::-1], strides, flipped,
                       threads, math)
  if tile:
    import jax.numpy as jnp
    return winograd(dy, jnp.swapaxes(kernel[::-1, ::-1], 2, 3), flipped, tile,
                    part="input gradient")
  return _parts(_key(strides), _key(pads), threads, tuple(x_shape[1:]), None, math)[1](dy, kernel)


def weight_grad(x, dy, kernel_shape, strides, pads, threads="xla", math="float32"):
  """dkernel (kernel_shape) of y = conv(x, kernel), from x and dy."""
  return _parts(_key(strides), _key(pads), threads, None, tuple(kernel_shape), math)[2](x, dy)


def _key(value):
  return tuple(_key(v) for v in value) if isinstance(value, (tuple, list)) else int(value)


def _batched(part, axis_size, in_batched, a, b):
  """``part(a, b)`` for each of ``axis_size`` examples of a vmap. With only the activations
  batched (the kernel shared, as when a model runs per example), the examples join the batch
  of one call; otherwise one call per example (a batched kernel, or a weight gradient, which
  must stay per example)."""
  import jax
  import jax.numpy as jnp

  a_batched, b_batched = in_batched
  if a_batched and not b_batched and part.merges:
    out = part(a.reshape(axis_size * a.shape[1], *a.shape[2:]), b)
    return out.reshape(axis_size, a.shape[1], *out.shape[1:]), True
  a = a if a_batched else jnp.broadcast_to(a, (axis_size, *a.shape))
  b = b if b_batched else jnp.broadcast_to(b, (axis_size, *b.shape))
  return jax.lax.map(lambda ab: part(*ab), (a, b)), True


def _part(target, shape_of, merges, attrs):
  """The FFI call ``target`` on two operands, with its vmap rule (``merges``: see `_batched`)."""
  import jax
  import jax.numpy as jnp
  from jax import custom_batching

  @custom_batching.custom_vmap
  def part(a, b):
    return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(tuple(shape_of(a, b)), jnp.float32))(
        a, b, **attrs)

  part.merges = merges
  part.def_vmap(functools.partial(_batched, part))
  return part


@functools.cache
def _parts(strides, pads, threads, x_tail, kernel_shape, math="float32"):
  """The three FFI calls for one geometry, each with its vmap rule (``x_tail``: the input's
  shape without its batch, for the input gradient; ``kernel_shape`` for the weight gradient)."""
  attrs = _attrs(strides, pads, threads, math)
  return (_part("OnednnConvFwd", lambda x, k: _out_shape(x.shape, k.shape, strides, pads), True,
                attrs),
          _part("OnednnConvBwdData", lambda dy, k: (dy.shape[0], *x_tail), True, attrs),
          _part("OnednnConvBwdWeights", lambda x, dy: kernel_shape, False, attrs))


# Winograd's F(4x4, 3x3) (onednn_conv.cc): a quarter of the direct convolution's products, plus
# transforms that cost about as much as a matmul over few channels. Measured per layer against
# oneDNN's direct kernels (docs/design.md "Winograd's F(4x4, 3x3) in the binding";
# scripts/bench_winograd.py): 1.1-2.2x from 64 channels in and out on images of 12x12 and more,
# slower with fewer channels; on the 6x6 images of 256 channels and more F(2x2, 3x3) (4/9 of the
# products, over smaller tiles that waste less at the edge) 1.1-1.3x, F(4x4) there 0.7-0.8x.
WINOGRAD_BLOCK = 64          # tiles per matmul: the block's transforms stay in the core's caches
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_MIN_SIZE = 12       # F(4x4) from here
WINOGRAD_SMALL = (6, 256)    # F(2x2) on images from 6x6 with this many channels
# EMOGEN_ONEDNN_WINOGRAD=0 (read when a step is traced): oneDNN's direct kernels for every layer.
WINOGRAD_ENV = "EMOGEN_ONEDNN_WINOGRAD"


def winograd_enabled() -> bool:
  """Whether `forward` may take Winograd's algorithm on this CPU (AVX-512 and FMA, for which its
  transforms are compiled; not switched off). An EMOGEN_ONEDNN_WINOGRAD other than 0 or 1 is a
  UserError (an "off" or "false" must not silently mean on)."""
  value = os.environ.get(WINOGRAD_ENV, "1").strip()
  if value not in ("0", "1"):
    raise UserError(f"{WINOGRAD_ENV}={value!r}; set 0 (oneDNN's direct kernels for every layer) "
                    "or 1 / leave it unset (Winograd's algorithm where it was measured faster)")
  return value == "1" and {"avx512f", "fma"} <= cpu_flags()


def winograd_rule() -> str:
  """`winograd_tile`'s rule in a few words (for the logs and messages)."""
  return (f"3x3 stride-1 layers of >= {WINOGRAD_MIN_CHANNELS} channels on images from "
          f"{WINOGRAD_MIN_SIZE}x{WINOGRAD_MIN_SIZE} by Winograd's F(4x4, 3x3), from "
          f"{WINOGRAD_SMALL[0]}x{WINOGRAD_SMALL[0]} with >= {WINOGRAD_SMALL[1]} channels by F(2x2)")


def winograd_tile(x_shape, kernel_shape, strides, pads, threads, math="float32") -> int:
  """The output tile (4 or 2) of the Winograd F(tile x tile, 3x3) that `forward` computes this
  convolution by, 0 for the direct kernels: oneDNN on XLA's threads, float32 products (the
  transformed operands' bfloat16 roundings lose too much), a 3x3 kernel at stride 1 padded by at
  most 2, channel counts and the image's sides as above."""
  _, h, w, _ = x_shape
  kh, kw, cin, cout = kernel_shape
  channels, side = min(cin, cout), min(h, w)
  if not (threads == "xla" and math == "float32" and (kh, kw) == (3, 3)
          and tuple(strides) == (1, 1) and all(0 <= int(p) <= 2 for pair in pads for p in pair)
          and channels >= WINOGRAD_MIN_CHANNELS and winograd_enabled()):
    return 0
  if side >= WINOGRAD_MIN_SIZE:
    return 4
  return 2 if side >= WINOGRAD_SMALL[0] and channels >= WINOGRAD_SMALL[1] else 0


def winograd(x, kernel, pads, tile=4, block=WINOGRAD_BLOCK, part="forward"):
  """y = conv(x, kernel) for a 3x3 kernel at stride 1 by Winograd's F(tile x tile, 3x3), tile 2
  or 4, on an AVX-512 CPU: x (B, H, W, Cin), kernel (3, 3, Cin, Cout), pads ((top, bottom),
  (left, right)) of at most 2, float32 throughout (under bfloat16 products `forward` keeps the
  direct kernels: the transformed operands' bfloat16 roundings lose too much). ``part`` names
  what the call computes for EMOGEN_ONEDNN_STATS: "forward" or "input gradient"."""
  return _winograd_part(_key(pads), tile, block, part)(x, kernel)


@functools.cache
def _winograd_part(pads, tile, block, part):
  import numpy as np

  (pt, pb), (pl, pr) = pads
  attrs = dict(pt=np.int64(pt), pb=np.int64(pb), pl=np.int64(pl), pr=np.int64(pr),
               tile=np.int64(tile), block=np.int64(block),
               part=np.int64(("forward", "input gradient").index(part)))
  return _part("OnednnWinogradFwd", lambda x, k: _out_shape(x.shape, k.shape, (1, 1), pads),
               True, attrs)


def _make_conv(threads):
  import jax

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
  def conv(x, kernel, strides, pads, math):
    return forward(x, kernel, strides, pads, threads, math)

  def conv_fwd(x, kernel, strides, pads, math):
    return forward(x, kernel, strides, pads, threads, math), (x, kernel)

  def conv_bwd(strides, pads, math, res, dy):
    x, kernel = res
    return (input_grad(dy, kernel, x.shape, strides, pads, threads, math),
            weight_grad(x, dy, kernel.shape, strides, pads, threads, math))

  conv.defvjp(conv_fwd, conv_bwd)
  return conv


def products_math(precision) -> str:
  """"bfloat16" where the caller allows products of bfloat16 roundings: the conv's own
  ``precision="bfloat16"`` (or "BF16_BF16_F32") or, without one, jax.default_matmul_precision
  set so (the JAX_DEFAULT_MATMUL_PRECISION setting) at trace time; else "float32". XLA:CPU's own
  kernels ignore both."""
  import jax

  value = precision if precision is not None else jax.config.jax_default_matmul_precision
  value = getattr(value, "name", value)  # a lax.DotAlgorithmPreset
  return "bfloat16" if isinstance(value, str) and value.lower() in _BF16_NAMES else "float32"


# JAX's names for bfloat16 products summed in float32 (a precision, or the dot algorithm).
_BF16_NAMES = ("bfloat16", "bf16", "bf16_bf16_f32")


def route_convolutions(library: str, threads: str = "xla"):
  """Sends the models' plain float32 NHWC convolutions to oneDNN from now on (dilated, grouped
  and other dtypes stay on lax), run on ``threads`` (see `forward`); returns a function that
  undoes it."""
  import types

  import flax.linen as nn
  import jax.numpy as jnp

  from emogen_jax.models import layers, vgg

  _attrs((1, 1), ((0, 0), (0, 0)), threads)  # an unknown `threads` fails here
  load(library)
  conv = _make_conv(threads)  # oneDNN's convolution with its gradient
  own_conv2d, own_nn = layers.conv2d, vgg.nn

  def conv2d(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, precision=None):
    plain = (layers.is_plain_nhwc(lhs, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                                  feature_group_count)
             and lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
             # oneDNN takes no negative padding (a crop) and no empty output
             and all(int(p) >= 0 for pair in padding for p in pair)
             and min(_out_shape(lhs.shape, rhs.shape, window_strides, padding)) > 0)
    if not plain:
      return own_conv2d(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                        dimension_numbers, feature_group_count, precision)
    return conv(lhs, rhs, tuple(int(s) for s in window_strides),
                tuple((int(lo), int(hi)) for lo, hi in padding), products_math(precision))

  # Every models module that took `layers.conv2d` by name (the emotion disc imports it).
  import emogen_jax.models  # noqa: F401  (its submodules, so that they are in sys.modules)
  # A copy taken in one step: another thread may import while we look (the quickstart's demo
  # routes beside its other work; iterating sys.modules itself then failed once).
  holders = [m for name, m in sys.modules.copy().items()
             if name.startswith("emogen_jax.models") and getattr(m, "conv2d", None) is own_conv2d]
  for m in holders:
    m.conv2d = conv2d
  # VGG-19 builds plain nn.Conv layers (lax's convolution): give them this one.
  vgg.nn = types.SimpleNamespace(Conv=functools.partial(nn.Conv, conv_general_dilated=conv2d),
                                 relu=nn.relu)

  def undo():
    for m in holders:
      m.conv2d = own_conv2d
    vgg.nn = own_nn

  return undo
