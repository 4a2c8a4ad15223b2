"""Weight conversion between PyTorch state dicts (the original EmoGen / Wav2Lip / torchvision code)
and our Flax variables.

  python -m emogen_jax.convert --kind generator --src checkpoint_step000123.pth --out ckpt/gen
  python -m emogen_jax.convert --kind vgg19 --src vgg19-dcbf9e60.pth --out ckpt/vgg19
  python -m emogen_jax.convert --reverse --kind syncnet --src ckpt/syncnet --out lipsync_expert.pth

Naming: a Flax submodule is named after the PyTorch module path with '.' -> '_'
(``face_encoder_blocks.1.2`` -> ``face_encoder_blocks_1_2``); inside the Wav2Lip conv blocks the
children ``conv`` / ``bn`` are ``conv_block.0`` / ``conv_block.1``. Leaves: Conv2d weight
(O, I, kh, kw) <-> kernel (kh, kw, I, O); ConvTranspose2d weight (I, O, kh, kw) <-> kernel
(kh, kw, I, O) (no spatial flip, see ``emogen_jax.models.layers.conv_transpose``); Linear weight
(O, I) <-> kernel (I, O); BatchNorm weight/bias/running_mean/running_var <-> params scale/bias and
batch_stats mean/var (``num_batches_tracked`` is not used by us: kept in the checkpoint meta and
restored on export, 0 when unknown); LSTM ``weight_ih_l0`` (4H, I) <-> ``kernel_ih`` (I, 4H) etc.

Which Flax module is a Conv, a transposed conv, a Dense or an LSTM is read off the model itself
(``nn.intercept_methods`` while tracing ``init``), so the mapping follows the model code.

The pure functions ``torch_to_flax`` / ``flax_to_torch`` work on numpy arrays; torch is imported
only to read and write ``.pth`` files.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import Any, Mapping

import numpy as np

from emogen_jax.data import files
from emogen_jax.errors import ArgumentParser, UserError, cli_main
from emogen_jax.models.factory import KINDS


# How the original code wraps each kind when saving (what ``--reverse`` writes).
_WRAPPED_IN_STATE_DICT = ("generator", "syncnet")

# Parts of a source file that we do not model: torchvision's vgg19-dcbf9e60.pth also holds the
# ImageNet classifier head, which the perceptual loss does not use.
_UNUSED_PREFIXES = {"vgg19": ("classifier.",)}

_LSTM_LEAVES = {"kernel_ih": "weight_ih_l0", "kernel_hh": "weight_hh_l0",
                "bias_ih": "bias_ih_l0", "bias_hh": "bias_hh_l0"}
_BN_LEAVES = {("params", "scale"): "weight", ("params", "bias"): "bias",
              ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


# ----------------------------------------------------------------------------- models


def build_model(kind: str, width: float = 1.0, original_layout: bool = False):
  """(module, example inputs as a tuple of arrays, extra call kwargs) for a model kind."""
  from emogen_jax.models import factory
  args, kwargs = factory.example_inputs(kind)
  return factory.build(kind, width, original_layout=original_layout), args, kwargs


def _template(kind: str, width: float = 1.0):
  """Shapes of the model's variables and the class of every submodule (by module path)."""
  import flax.linen as nn
  import jax

  model, inputs, kwargs = build_model(kind, width)
  classes: dict[tuple[str, ...], type] = {}

  def record(next_fun, args, kw, context):
    classes[tuple(context.module.path)] = type(context.module)
    return next_fun(*args, **kw)

  with nn.intercept_methods(record):
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs, **kwargs))
  return _unfreeze(shapes), classes


def _unfreeze(tree):
  if isinstance(tree, Mapping):
    return {k: _unfreeze(v) for k, v in tree.items()}
  return tree


def _flatten(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _set(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


# ----------------------------------------------------------------------------- mapping


def _torch_module_name(kind: str, name: str) -> str:
  """Flax submodule name -> PyTorch module path (``face_encoder_blocks_1_2`` -> ``...blocks.1.2``)."""
  if name == "conv":
    return "conv_block.0"
  if name == "bn":
    return "conv_block.1"
  if kind == "emotion_disc":
    m = re.fullmatch(r"(conv_\d+)_(\d+)", name)
    if m:  # DISCEMO's attributes are themselves called conv_1 .. conv_5
      return f"{m.group(1)}.{m.group(2)}"
    if name == "rnn_1":
      return name
  return re.sub(r"_(\d+)", r".\1", name)


def _leaf_rule(kind: str, path: tuple[str, ...], classes: Mapping[tuple[str, ...], type]):
  """(torch key, kind of transform) for one Flax leaf. Transforms: 'copy', 'linear', 'conv',
  'conv_transpose'."""
  coll, modules, leaf = path[0], path[1:-1], path[-1]
  cls = classes.get(tuple(modules))
  cls_name = cls.__name__ if cls is not None else "?"
  torch_module = ".".join(_torch_module_name(kind, m) for m in modules)
  if cls_name == "BatchNorm":
    return f"{torch_module}.{_BN_LEAVES[(coll, leaf)]}", "copy"
  if cls_name == "LSTM":
    return f"{torch_module}.{_LSTM_LEAVES[leaf]}", "linear" if leaf.startswith("kernel") else "copy"
  if leaf == "bias":
    return f"{torch_module}.bias", "copy"
  if leaf == "kernel":
    if cls_name == "Dense":
      return f"{torch_module}.weight", "linear"
    if cls_name == "Conv":
      return f"{torch_module}.weight", "conv"
    if cls_name == "ConvTranspose" and cls.__module__ == "emogen_jax.models.layers":
      return f"{torch_module}.weight", "conv_transpose"
  raise AssertionError(f"no PyTorch correspondence for {'/'.join(path)} (module {cls_name})")


# Axis permutation from our layout to PyTorch's, per leaf transform (the inverse goes back):
# Linear (I, O) -> (O, I); Conv2d (kh, kw, I, O) -> (O, I, kh, kw); ConvTranspose2d -> (I, O, kh, kw).
_TORCH_AXES = {"linear": (1, 0), "conv": (3, 2, 0, 1), "conv_transpose": (2, 3, 0, 1)}


def _to_torch_array(transform: str, a: np.ndarray) -> np.ndarray:
  return a.transpose(_TORCH_AXES[transform]) if transform in _TORCH_AXES else a


def _to_flax_array(transform: str, a: np.ndarray) -> np.ndarray:
  return a.transpose(np.argsort(_TORCH_AXES[transform])) if transform in _TORCH_AXES else a


def _shape_to_torch(transform: str, shape) -> tuple[int, ...]:
  return tuple(_to_torch_array(transform, np.empty(tuple(shape), np.bool_)).shape)


def expected_torch_layout(kind: str, width: float = 1.0):
  """The PyTorch state dict of ``kind``: ({torch key: shape}, {flax path: (torch key, transform)})."""
  layout, rules = _expected_torch_layout(kind, float(width))
  return dict(layout), dict(rules)


@functools.lru_cache(maxsize=None)  # tracing a model takes ~1 s; kind detection tries them all
def _expected_torch_layout(kind: str, width: float):
  shapes, classes = _template(kind, width)
  layout: dict[str, tuple[int, ...]] = {}
  rules: dict[tuple[str, ...], tuple[str, str]] = {}
  for path, sds in _flatten(shapes):
    key, transform = _leaf_rule(kind, path, classes)
    layout[key] = _shape_to_torch(transform, sds.shape)
    rules[path] = (key, transform)
    if path[0] == "batch_stats" and path[-1] == "mean":
      layout[key[:-len("running_mean")] + "num_batches_tracked"] = ()
  return layout, rules


def _short(keys, n=3) -> str:
  keys = sorted(keys)
  s = ", ".join(keys[:n])
  return s + (", ..." if len(keys) > n else "")


def normalize_state_dict(obj: Any) -> dict[str, np.ndarray]:
  """A raw state dict from a loaded checkpoint: unwraps ``{'state_dict': ...}`` and strips the
  ``module.`` prefix of DataParallel. Values become numpy arrays."""
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]
  elif callable(getattr(obj, "state_dict", None)):  # a whole pickled nn.Module (--trust-pickle)
    obj = obj.state_dict()
  if not isinstance(obj, Mapping) or not obj:
    raise UserError("the file holds no state dict (expected a dict of tensors, or a dict with a "
                    "'state_dict' entry); save the model's state_dict() and convert that")
  out = {}
  bad = []
  for k, v in obj.items():
    k = str(k)
    if k.startswith("module."):
      k = k[len("module."):]
    if hasattr(v, "detach"):  # a torch tensor
      v = v.detach().cpu()
      if str(v.dtype) == "torch.bfloat16":  # numpy has no bfloat16
        v = v.float()
      v = v.numpy()
    if not isinstance(v, (np.ndarray, np.generic)):
      bad.append(k)
      continue
    out[k] = np.asarray(v)
  if bad:
    raise UserError(f"the state dict has {len(bad)} entries that are not tensors ({_short(bad)}); "
                    "expected a state dict of a single model")
  return out


def _mismatch(kind: str, expected: Mapping[str, tuple], found: Mapping[str, np.ndarray]):
  """A description of how ``found`` differs from ``expected`` or None when it fits."""
  missing = set(expected) - set(found)
  extra = set(found) - set(expected)
  wrong = [k for k in set(expected) & set(found) if tuple(found[k].shape) != tuple(expected[k])]
  if not (missing or extra or wrong):
    return None
  parts = []
  if missing:
    parts.append(f"{len(missing)} missing keys ({_short(missing)})")
  if extra:
    parts.append(f"{len(extra)} unexpected keys ({_short(extra)})")
  if wrong:
    wrong.sort()
    shown = ", ".join(f"{k}: expected {tuple(expected[k])}, found {tuple(found[k].shape)}"
                      for k in wrong[:3])
    parts.append(f"{len(wrong)} shape mismatches ({shown}{', ...' if len(wrong) > 3 else ''})")
  return ", ".join(parts)


def detect_kind(state_dict: Mapping[str, np.ndarray]) -> str | None:
  """The kind whose key set overlaps ``state_dict``'s the most (None when nothing overlaps)."""
  best, best_score = None, 0.0
  keys = set(state_dict)
  for kind in KINDS:
    expected = set(expected_torch_layout(kind)[0])
    score = len(keys & expected) / len(keys | expected)
    if score > best_score:
      best, best_score = kind, score
  return best


def validate(kind: str, state_dict: Mapping[str, np.ndarray], width: float = 1.0):
  """Raises one UserError listing what differs between ``state_dict`` and the ``kind`` layout."""
  if kind not in KINDS:
    raise UserError(f"unknown model kind {kind!r}; valid kinds are {', '.join(KINDS)}")
  layout, rules = expected_torch_layout(kind, width)
  problem = _mismatch(kind, layout, state_dict)
  if problem is None:
    return layout, rules
  guess = detect_kind(state_dict)
  hint = ""
  if guess is not None and guess != kind:
    hint = f"; this looks like a {guess} checkpoint, not a {kind} (pass --kind {guess})"
  raise UserError(f"not a {kind} state dict (expected {len(layout)} keys, found "
                  f"{len(state_dict)}): {problem}{hint}")


def unused_keys(kind: str, state_dict: Mapping[str, np.ndarray]) -> list[str]:
  """Keys of ``state_dict`` that belong to parts we do not model (VGG-19's classifier head)."""
  prefixes = _UNUSED_PREFIXES.get(kind, ())
  return sorted(k for k in state_dict if k.startswith(prefixes)) if prefixes else []


def torch_to_flax(kind: str, state_dict: Mapping[str, np.ndarray], width: float = 1.0) -> dict:
  """PyTorch state dict (numpy arrays, ``module.`` stripped) -> Flax variables of ``kind``.

  Float weights become float32 (our parameter dtype); ``num_batches_tracked`` is dropped;
  ``unused_keys(kind, state_dict)`` (VGG-19's classifier) are ignored.
  """
  skip = set(unused_keys(kind, state_dict))
  state_dict = {k: v for k, v in state_dict.items() if k not in skip}
  _, rules = validate(kind, state_dict, width)
  variables: dict = {}
  for path, (key, transform) in rules.items():
    a = np.asarray(state_dict[key])
    if a.dtype != np.float32:
      a = a.astype(np.float32)
    _set(variables, path, np.ascontiguousarray(_to_flax_array(transform, a)))
  return variables


def flax_to_torch(kind: str, variables: Mapping, width: float = 1.0,
                  num_batches_tracked: int | Mapping[str, int] = 0) -> dict[str, np.ndarray]:
  """Flax variables of ``kind`` -> PyTorch state dict (numpy arrays), keys as the original model's.

  ``num_batches_tracked`` (int64 scalars, not used by us) is filled with the given value, or per
  key from a mapping (absent keys -> 0).
  """
  if kind not in KINDS:
    raise UserError(f"unknown model kind {kind!r}; valid kinds are {', '.join(KINDS)}")
  layout, rules = expected_torch_layout(kind, width)
  have = dict(_flatten(_unfreeze(variables)))
  missing = set(rules) - set(have)
  extra = set(have) - set(rules)
  wrong = [p for p in set(rules) & set(have)
           if _shape_to_torch(rules[p][1], np.shape(have[p])) != layout[rules[p][0]]]
  if missing or extra or wrong:
    fmt = lambda ps: _short(["/".join(p) for p in ps])
    raise UserError(f"the {kind} variables do not fit the {kind} model at width {width}: "
                    f"{len(missing)} missing ({fmt(missing)}), {len(extra)} unexpected "
                    f"({fmt(extra)}), {len(wrong)} of another shape ({fmt(wrong)})")
  out: dict[str, np.ndarray] = {}
  for path, (key, transform) in rules.items():
    out[key] = np.ascontiguousarray(_to_torch_array(transform, np.asarray(have[path])))
  for key, shape in layout.items():
    if key.endswith(".num_batches_tracked"):
      n = (num_batches_tracked.get(key, 0) if isinstance(num_batches_tracked, Mapping)
           else num_batches_tracked)
      out[key] = np.asarray(n, dtype=np.int64)
  return {k: out[k] for k in layout}


# ----------------------------------------------------------------------------- files


def load_torch_file(path: str, trust_pickle: bool = False) -> Any:
  path = files.user_path(path)
  if not os.path.exists(path):
    raise UserError(f"PyTorch checkpoint {path!r} does not exist")
  if os.path.isdir(path):
    raise UserError(f"{path!r} is a directory, not a PyTorch .pth file (to export one of our "
                    "checkpoints to PyTorch, pass --reverse)")
  try:
    import torch
  except ImportError:
    raise UserError("reading .pth files needs PyTorch: pip install -e '.[torch]' "
                    "(the CPU build is enough)") from None
  try:
    return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
  except Exception as e:  # torch raises many types here: pickle, zip, runtime errors
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "Unsupported global" in str(e):
      raise UserError(f"{path!r} holds Python objects besides tensors, which are not loaded "
                      "by default for safety; if you trust the file, pass --trust-pickle") from None
    raise UserError(f"{path!r} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                    f"{msg[:200]})") from None


def save_torch_file(path: str, kind: str, state_dict: Mapping[str, np.ndarray],
                    global_step: int = 0) -> None:
  """Writes a .pth as the original code saves ``kind``: generator and lip-sync expert wrapped like
  Wav2Lip's training checkpoints (``optimizer`` None, which its loader skips), others raw."""
  try:
    import torch
  except ImportError:
    raise UserError("writing .pth files needs PyTorch: pip install -e '.[torch]'") from None
  sd = {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
  obj = sd
  if kind in _WRAPPED_IN_STATE_DICT:
    obj = {"state_dict": sd, "optimizer": None, "global_step": int(global_step), "global_epoch": 0}
  with files.atomic_file(path) as tmp:
    torch.save(obj, tmp)


def check_checkpoint_out(out: str, kind: str | None = None) -> str:
  """The folder a conversion writes: new, empty, or a converted checkpoint of the same ``kind``
  (which is replaced); a file, a training workdir, other contents or another kind are refused."""
  from emogen_jax.models import checkpoints

  def is_model_checkpoint(d: str) -> bool:
    return (os.path.isdir(os.path.join(d, "models")) and checkpoints.latest_step_dir(d) is None
            and checkpoints.checkpoint_kinds(d) is not None)

  p = files.check_output_dir(out, "--out", "converted emogen_jax checkpoint",
                             is_same_kind=is_model_checkpoint)
  if kind is not None and os.path.isdir(p) and os.listdir(p):
    have = checkpoints.checkpoint_kinds(p)
    if have != [kind]:
      raise UserError(f"--out {out!r} holds a {' + '.join(have)} checkpoint, not a {kind}; "
                      "choose another --out (or remove that one first)")
  return p


def convert_file(src: str, out: str, kind: str | None = None, original_layout: bool | None = None,
                 trust_pickle: bool = False) -> tuple[str, dict]:
  """PyTorch ``.pth`` -> our checkpoint directory. Returns (kind, meta)."""
  from emogen_jax.models import checkpoints

  check_checkpoint_out(out, kind)
  sd = normalize_state_dict(load_torch_file(src, trust_pickle))
  if kind is None:
    kind = detect_kind(sd)
    if kind is None:
      raise UserError(f"{src!r} matches none of the known models ({', '.join(KINDS)})")
    check_checkpoint_out(out, kind)
  variables = torch_to_flax(kind, sd)
  meta: dict[str, Any] = {"width": 1.0, "source": files.user_path(src), "converted_from": "pytorch"}
  ignored = unused_keys(kind, sd)
  if ignored:
    meta["ignored_keys"] = ignored
  if kind == "emotion_disc":
    # An original DISCEMO checkpoint was trained on the channel/time-mixed "frames".
    meta["original_layout"] = True if original_layout is None else bool(original_layout)
  nbt = {k: int(v) for k, v in sd.items() if k.endswith(".num_batches_tracked") and int(v) != 0}
  if nbt:
    meta["torch_num_batches_tracked"] = nbt
  checkpoints.save_models(out, {kind: variables}, **meta)
  return kind, meta


def export_file(src: str, out: str, kind: str | None = None) -> tuple[str, dict]:
  """Our checkpoint (or training workdir) -> PyTorch ``.pth`` the original code loads."""
  from emogen_jax.models import checkpoints

  where = checkpoints.resolve_checkpoint(src)
  files.check_output_file(out, "--out", (".pth", ".pt"), "PyTorch state dict")
  models = checkpoints.load_models(where)
  meta = checkpoints.load_meta(where)
  if kind is None:
    if len(models) != 1:
      raise UserError(f"{src!r} holds {', '.join(sorted(models))}; pick one with --kind")
    kind = next(iter(models))
  if kind not in models:
    raise UserError(f"{src!r} holds {', '.join(sorted(models)) or 'no models'}, not a {kind}")
  width = float(meta.get("width", 1.0))
  if width != 1.0:
    raise UserError(f"{src!r} holds a width-{width} {kind}; only width 1.0 models have a "
                    "PyTorch counterpart")
  sd = flax_to_torch(kind, models[kind], num_batches_tracked=meta.get("torch_num_batches_tracked", 0))
  save_torch_file(out, kind, sd, global_step=int(meta.get("step", 0) or 0))
  return kind, meta


@cli_main
def main(argv=None):
  p = ArgumentParser(
      prog="python -m emogen_jax.convert",
      description="Convert weights between PyTorch .pth files (original EmoGen generator and "
                  "emotion discriminator, Wav2Lip lip-sync expert and quality discriminator, "
                  "torchvision vgg19-dcbf9e60.pth) and emogen_jax checkpoints.")
  p.add_argument("--kind", choices=KINDS, default=None,
                 help="model kind; detected from the keys when omitted")
  p.add_argument("--src", required=True,
                 help="a .pth file (or, with --reverse, our checkpoint directory / training workdir)")
  p.add_argument("--out", required=True,
                 help="output checkpoint directory (or, with --reverse, the .pth file to write)")
  p.add_argument("--reverse", action="store_true",
                 help="export our checkpoint to a PyTorch state dict the original code loads")
  p.add_argument("--layout", choices=("original", "frames"), default="original",
                 help="emotion_disc only: 'original' (default) for a checkpoint of the original code, "
                      "which folded (N,C,T,H,W) into channel/time-mixed frames; 'frames' for one "
                      "trained on real frames")
  p.add_argument("--trust-pickle", action="store_true",
                 help="allow arbitrary Python objects in the .pth (only for files you trust)")
  args = p.parse_args(argv)

  if args.reverse:
    kind, meta = export_file(args.src, args.out, args.kind)
    print(f"wrote PyTorch {kind} state dict to {args.out}")
    if kind == "emotion_disc" and not meta.get("original_layout", False):
      print("note: this emotion discriminator was trained on real frames; the original code "
            "folds clips differently, so its logits there will not match ours")
  else:
    kind, meta = convert_file(args.src, args.out, args.kind,
                              original_layout=args.layout == "original", trust_pickle=args.trust_pickle)
    extra = f", original_layout={meta['original_layout']}" if "original_layout" in meta else ""
    print(f"converted {kind} from {args.src} to {files.user_path(args.out)}{extra}")
    if meta.get("ignored_keys"):
      print(f"ignored {len(meta['ignored_keys'])} keys not used by our {kind} "
            f"({_short(meta['ignored_keys'])})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
