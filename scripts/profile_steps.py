"""Where a training step's time goes, by operation kind, from a jax.profiler trace of the real step.

  python scripts/profile_steps.py --stages emogen --sizes reference --reference-batch 2
  python scripts/profile_steps.py --stages syncnet,emotion_disc --sizes smoke,reference

For each stage/size: our pmapped step (as scripts/bench_train.py builds it) runs once to warm up,
then ``--steps`` steps under ``jax.profiler.trace`` (host tracer level 3, which records every
XLA:CPU kernel). Each kernel's time is attributed from the compiled HLO:
  - a kernel that contains a convolution: "conv forward", "conv input-grad" or "conv weight-grad"
    (a convolution under a ``transpose(...)`` of the gradient is backward; it is the weight
    gradient when its result has the shape of one of the step's conv kernels);
  - a kernel that contains a dot: "matmul" (the dense layers, the LSTM);
  - otherwise by the source of the operation (the HLO's stack frames): BatchNorm, LSTM, the
    optimizer (optax), the losses, VGG-19; what is left is "other elementwise / copies";
  - "outside traced kernels": the untraced step's wall time minus the kernels' (dispatch,
    argument handling, host<->device transfers, waits between kernels; on a loaded machine,
    waits for a core). It also holds XLA:CPU's own (Eigen) convolutions, every convolution
    outside a YNNPACK fusion once ``emogen_jax.xla_cpu`` leaves them out of those: such a
    kernel hands its work to the thread pool and its trace event ends at the hand-over (the
    whole full-width SyncNet step's 47 convolution events sum to ~26 ms), so their time is
    not in the kernels' sum; where the step is mostly convolutions this row is mostly them.
On more than one thread kernels can overlap; the shares are of the summed kernel time.
"""

from __future__ import annotations

import argparse
import ast
import collections
import glob
import os
import re
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+?(?:\[[^\]]*\])?)(?:\{[^}]*\})? (\w[\w\-]*)\(")
_COMP = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_FRAME = re.compile(r"stack_frame_id=(\d+)")
_OPNAME = re.compile(r'op_name="([^"]*)"')


def _shape(s: str) -> tuple[int, ...]:
  m = re.search(r"\[([\d,]*)\]", s)
  return tuple(int(d) for d in m.group(1).split(",") if d) if m else ()


def _tables(hlo: str):
  """The HLO text's stack-frame tables -> {frame id: [(file, line), ... innermost first]}."""
  files, locs, frames = {}, {}, {}
  section = None
  for line in hlo.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      section = line
      continue
    if not line.strip():
      section = None if section == "StackFrames" else section
      continue
    if section == "FileNames":
      i, name = line.split(" ", 1)
      files[int(i)] = name.strip('"')
    elif section == "FileLocations":
      i = int(line.split(" ", 1)[0])
      f = int(re.search(r"file_name_id=(\d+)", line).group(1))
      ln = int(re.search(r" line=(\d+)", line).group(1))
      locs[i] = (f, ln)
    elif section == "StackFrames":
      i = int(line.split(" ", 1)[0])
      loc = int(re.search(r"file_location_id=(\d+)", line).group(1))
      parent = int(re.search(r"parent_frame_id=(\d+)", line).group(1))
      frames[i] = (loc, parent)

  def chain(fid):
    out, seen = [], set()
    while fid in frames and fid not in seen:
      seen.add(fid)
      loc, parent = frames[fid]
      f, ln = locs.get(loc, (None, 0))
      out.append((files.get(f, ""), ln))
      fid = parent
    return out

  return {fid: chain(fid) for fid in frames}


_CLASS_CACHE: dict[str, list] = {}


def _enclosing_class(path: str, line: int) -> str | None:
  """Name of the class whose body holds ``line`` of a source file of ours (ast), or None."""
  if path not in _CLASS_CACHE:
    try:
      tree = ast.parse(open(path).read())
      _CLASS_CACHE[path] = [(n.lineno, n.end_lineno, n.name) for n in ast.walk(tree)
                            if isinstance(n, ast.ClassDef)]
    except (OSError, SyntaxError):
      _CLASS_CACHE[path] = []
  for lo, hi, name in _CLASS_CACHE[path]:
    if lo <= line <= hi:
      return name
  return None


_LINES: dict[str, list[str]] = {}


def _source_line(path: str, line: int) -> str:
  if path not in _LINES:
    try:
      _LINES[path] = open(path).read().splitlines()
    except OSError:
      _LINES[path] = []
  return _LINES[path][line - 1] if 0 < line <= len(_LINES[path]) else ""


def _source_kind(chain) -> str | None:
  # Library frames (optax, flax) are left out of the HLO's stack frames: the optimizer shows
  # as the step's line that calls it.
  for path, line in chain:
    base = os.path.basename(path)
    text = _source_line(path, line)
    if ".update(" in text or "apply_updates" in text:
      return "optimizer (Adam)"
    if "emogen_jax" in path:
      cls = _enclosing_class(path, line) if os.path.exists(path) else None
      if cls == "BatchNorm":
        return "BatchNorm"
      if cls == "LSTM":
        return "LSTM (elementwise)"
      if base == "vgg.py":
        return "VGG-19 (elementwise, pools)"
      if base == "losses.py":
        return "losses"
  return None


def _computations(hlo: str) -> dict[str, list[str]]:
  """{computation name: its instruction lines} of the compiled module's text."""
  comps: dict[str, list[str]] = collections.defaultdict(list)
  current = None
  for line in hlo.splitlines():
    m = _COMP.match(line)
    if m and line.rstrip().endswith("{"):
      current = m.group(1)
      continue
    if current and _INSTR.match(line):
      comps[current].append(line)
  return comps


def classify(hlo: str, kernel_shapes: set[tuple[int, ...]]) -> dict[str, str]:
  """{HLO instruction name: kind} for every instruction of the compiled module."""
  chains = _tables(hlo)
  comps = _computations(hlo)

  def kind_of_lines(lines, depth=0) -> str | None:
    conv = dot = None
    src = None
    for line in lines:
      m = _INSTR.match(line)
      op = m.group(3)
      if op == "convolution":
        name = (_OPNAME.search(line) or [None, ""])[1] if _OPNAME.search(line) else ""
        backward = "transpose(" in name
        shape = _shape(m.group(2))
        window = re.search(r"window=\{size=([\dx]+)", line)
        big_window = window and max(int(d) for d in window.group(1).split("x")) > 7
        # A weight gradient convolves the activations with the output gradient: its "window"
        # is the activation's spatial size (our kernels are at most 7x7), or, where that is
        # tiny, its result has a kernel's shape.
        if big_window or tuple(sorted(shape)) in {tuple(sorted(k)) for k in kernel_shapes}:
          conv = "conv weight-grad"
        else:
          conv = conv or ("conv input-grad" if backward else "conv forward")
      elif op == "dot":
        dot = "matmul (dense, LSTM)"
      if src is None:
        f = _FRAME.search(line)
        if f:
          src = _source_kind(chains.get(int(f.group(1)), []))
      c = _CALLS.search(line)
      if c and depth < 3 and op in ("fusion", "call", "custom-call"):
        sub = kind_of_lines(comps.get(c.group(1), []), depth + 1)
        if sub and sub.startswith("conv"):
          conv = conv or sub
        elif sub and sub.startswith("matmul"):
          dot = dot or sub
        elif sub and src is None:
          src = sub
    return conv or dot or src

  kinds = {}
  for comp, lines in comps.items():
    for line in lines:
      name = _INSTR.match(line).group(1)
      kinds[name] = kind_of_lines([line]) or "other elementwise / copies"
  return kinds


def describe(hlo: str) -> dict[str, str]:
  """{HLO instruction name: "op shape window op_name"}, the innermost convolution or dot of a
  fusion standing in for it: what --top prints beside each kernel."""
  comps = _computations(hlo)
  lines = {_INSTR.match(line).group(1): line for body in comps.values() for line in body}

  def short(line: str, depth: int = 0) -> str:
    m = _INSTR.match(line)
    c = _CALLS.search(line)
    if c and depth < 3:
      for sub in comps.get(c.group(1), []):
        if _INSTR.match(sub).group(3) in ("convolution", "dot"):
          return short(sub, depth + 1)
    window = re.search(r"window=\{([^}]*)\}", line)
    op_name = _OPNAME.search(line)
    return " ".join(x for x in (m.group(3), m.group(2), window.group(1) if window else "",
                               op_name.group(1)[-60:] if op_name else "") if x)

  return {name: short(line) for name, line in lines.items()}


def profile(stage: str, size: str, *, batch, steps: int, dtype: str, top: int = 0) -> dict:
  import jax
  import numpy as np
  from bench_train import build
  from jax.profiler import ProfileData

  ours = build(stage, size, batch=batch, dtype=dtype)
  hlo = ours["compiled"].as_text()
  kernels = {tuple(np.shape(x)) for x in jax.tree_util.tree_leaves(
      jax.device_get(ours["host_state"].params)) if np.ndim(x) == 4}
  kinds = classify(hlo, kernels)
  desc = describe(hlo)
  ours["run"]()
  t0 = time.perf_counter()
  for _ in range(steps):
    ours["run"]()
  untraced = (time.perf_counter() - t0) / steps
  out = tempfile.mkdtemp(prefix="profile_steps_")
  opts = jax.profiler.ProfileOptions()
  opts.host_tracer_level = 3
  opts.python_tracer_level = 0
  t0 = time.perf_counter()
  with jax.profiler.trace(out, profiler_options=opts):
    for _ in range(steps):
      ours["run"]()
  wall = (time.perf_counter() - t0) / steps
  path = glob.glob(os.path.join(out, "**", "*.xplane.pb"), recursive=True)[0]
  totals: dict[str, float] = collections.Counter()
  per_kernel: dict[str, float] = collections.Counter()
  for plane in ProfileData.from_file(path).planes:
    if plane.name != "/host:CPU":
      continue
    for line in plane.lines:
      if line.name == "python":
        continue
      for ev in line.events:
        name = ev.name
        if name.startswith(("end:", "ThreadpoolListener", "ThunkExecutor")):
          continue
        kind = kinds.get(name, kinds.get(name.split(":")[0], "other kernels (not in the HLO)"))
        totals[kind] += ev.duration_ns / 1e9 / steps
        per_kernel[name.split(":")[0]] += ev.duration_ns / 1e9 / steps
  busy = sum(totals.values())
  # The tracer slows the step down; the gaps are taken against the untraced step's time.
  on_cpu = jax.devices()[0].platform == "cpu"
  totals["outside traced kernels"] = max(0.0, untraced - busy) if on_cpu else 0.0
  return {"stage": stage, "size": size, "batch": ours["config"].batch_size,
          "width": float(ours["config"].width), "step_s": untraced, "traced_step_s": wall,
          "kernel_s": busy,
          "kinds": dict(sorted(totals.items(), key=lambda kv: -kv[1])),
          "top": [(name, t, kinds.get(name, "?"), desc.get(name, ""))
                  for name, t in per_kernel.most_common(top)]}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--stages", default="syncnet,emotion_disc,emogen")
  p.add_argument("--sizes", default="smoke,reference")
  p.add_argument("--smoke-batch", type=int, default=None)
  p.add_argument("--reference-batch", type=int, default=2)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--top", type=int, default=0, help="also list the N longest kernels (summed over "
                 "their calls in a step) with the convolution or dot inside each")
  args = p.parse_args(argv)
  for stage in [s for s in args.stages.split(",") if s]:
    for size in [s for s in args.sizes.split(",") if s]:
      batch = args.smoke_batch if size == "smoke" else args.reference_batch
      r = profile(stage, size, batch=batch, steps=max(1, args.steps), dtype=args.dtype, top=args.top)
      total = sum(r["kinds"].values())
      print(f"{stage} {size} (width {r['width']}, batch {r['batch']}): step {r['step_s']:.3f} s "
            f"({r['traced_step_s']:.3f} s traced), kernels {r['kernel_s']:.3f} s; "
            f"load {open('/proc/loadavg').read().split()[0]}")
      for kind, s in r["kinds"].items():
        print(f"  {kind:<32} {s * 1e3:9.1f} ms  {100 * s / max(total, 1e-12):5.1f} %")
      if r["top"]:
        print(f"  the {len(r['top'])} longest kernels:")
      for name, s, kind, what in r["top"]:
        print(f"    {s * 1e3:8.1f} ms  {kind:<24} {name:<28} {what}")
  return 0


if __name__ == "__main__":
  from emogen_jax.allocator import use_fast_allocator
  use_fast_allocator()  # may re-execute this command with tcmalloc preloaded
  sys.exit(main())
