"""Helpers for the model tests: cheap random variables and PyTorch replicas of the originals.

``random_variables`` draws variables with the structure that ``module.init`` would produce (read
via ``jax.eval_shape``, so nothing is compiled) from numpy: initialising a Flax model the usual way
costs a long compile on a 2-core CPU.

The PyTorch replicas follow the layer tables of docs/design.md with the original code's module structure
(ModuleList of Sequential blocks, each block a ``conv_block`` Sequential), so their state_dict keys
are the original checkpoint keys, and ``load_flax_into_torch`` doubles as a check of the Flax
naming convention (name '.' -> '_', ``conv_block.0`` -> ``conv``, ``conv_block.1`` -> ``bn``).
"""

from __future__ import annotations

import re

import jax
import numpy as np


def random_variables(module, *args, seed: int = 0, gain: float = 1.0, fresh: bool = False, **kwargs):
  """Variables shaped like ``module.init(key, *args, **kwargs)`` with random numpy values (no compile
  of ``init``, which takes tens of seconds on a busy 2-core CPU).

  Kernels ~ N(0, gain^2/fan_in). Default: biases and BatchNorm shift ~ N(0, 0.1), BatchNorm scale
  ~ U(0.5, 1.5), running mean ~ N(0, 0.1), running var ~ U(0.5, 1.5), so that inference mode is
  not an identity (parity tests). ``fresh=True``: the statistics of a newly initialised network
  (BatchNorm scale/var 1, shift/mean 0, biases ~ N(0, 0.01)), what the inference tests need.
  """
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    shape = leaf.shape
    if name.startswith("kernel"):
      fan_in = int(np.prod(shape[:-1]))
      return (gain * rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    if fresh:
      if name in ("scale", "var"):
        return np.ones(shape, np.float32)
      if name.startswith("bias"):
        return (0.01 * rng.standard_normal(shape)).astype(np.float32)
      return np.zeros(shape, np.float32)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _ch(c, width):
  return max(1, int(round(c * width)))


def torch_models(width: float):
  """PyTorch replicas (Generator, SyncNet, QualityDiscriminator) at a channel ``width``."""
  import torch
  from torch import nn

  class Conv2d(nn.Module):
    def __init__(self, cin, cout, k, s, p, residual=False):
      super().__init__()
      self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, k, s, p), nn.BatchNorm2d(cout))
      self.act = nn.ReLU()
      self.residual = residual

    def forward(self, x):
      out = self.conv_block(x)
      if self.residual:
        out = out + x
      return self.act(out)

  class NoNormConv2d(nn.Module):
    def __init__(self, cin, cout, k, s, p):
      super().__init__()
      self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, k, s, p))
      self.act = nn.LeakyReLU(0.01)

    def forward(self, x):
      return self.act(self.conv_block(x))

  class Conv2dTranspose(nn.Module):
    def __init__(self, cin, cout, k, s, p, output_padding=0):
      super().__init__()
      self.conv_block = nn.Sequential(nn.ConvTranspose2d(cin, cout, k, s, p, output_padding),
                                      nn.BatchNorm2d(cout))
      self.act = nn.ReLU()

    def forward(self, x):
      return self.act(self.conv_block(x))

  c = lambda n: _ch(n, width)
  res = lambda n: Conv2d(c(n), c(n), 3, 1, 1, residual=True)
  seq = nn.Sequential

  def audio_encoder(res256):
    return seq(Conv2d(1, c(32), 3, 1, 1), res(32), res(32),
               Conv2d(c(32), c(64), 3, (3, 1), 1), res(64), res(64),
               Conv2d(c(64), c(128), 3, 3, 1), res(128), res(128),
               Conv2d(c(128), c(256), 3, (3, 2), 1), *[res(256) for _ in range(res256)],
               Conv2d(c(256), c(512), 3, 1, 0), Conv2d(c(512), c(512), 1, 1, 0))

  class Generator(nn.Module):
    def __init__(self):
      super().__init__()
      self.face_encoder_blocks = nn.ModuleList([
          seq(Conv2d(6, c(16), 7, 1, 3)),
          seq(Conv2d(c(16), c(32), 3, 2, 1), res(32), res(32)),
          seq(Conv2d(c(32), c(64), 3, 2, 1), res(64), res(64), res(64)),
          seq(Conv2d(c(64), c(128), 3, 2, 1), res(128), res(128)),
          seq(Conv2d(c(128), c(256), 3, 2, 1), res(256), res(256)),
          seq(Conv2d(c(256), c(512), 3, 2, 1), res(512)),
          seq(Conv2d(c(512), c(512), 3, 1, 0), Conv2d(c(512), c(512), 1, 1, 0))])
      self.audio_encoder = audio_encoder(1)
      self.emotion_encoder = seq(nn.Linear(6, c(512)), nn.LeakyReLU(0.2),
                                 nn.Linear(c(512), c(512)), nn.LeakyReLU(0.2))
      self.face_decoder_blocks = nn.ModuleList([
          seq(Conv2d(2 * c(512), c(512), 1, 1, 0)),
          seq(Conv2dTranspose(2 * c(512), c(512), 3, 1, 0), res(512)),
          seq(Conv2dTranspose(2 * c(512), c(512), 3, 2, 1, 1), res(512), res(512)),
          seq(Conv2dTranspose(c(512) + c(256), c(384), 3, 2, 1, 1), res(384), res(384)),
          seq(Conv2dTranspose(c(384) + c(128), c(256), 3, 2, 1, 1), res(256), res(256)),
          seq(Conv2dTranspose(c(256) + c(64), c(128), 3, 2, 1, 1), res(128), res(128)),
          seq(Conv2dTranspose(c(128) + c(32), c(64), 3, 2, 1, 1), res(64), res(64))])
      self.output_block = seq(Conv2d(c(64) + c(16), c(32), 3, 1, 1),
                              nn.Conv2d(c(32), 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, mel, face, emotion):
      """Single frames, NCHW: mel (N, 1, 80, 16), face (N, 6, 96, 96), emotion (N, 6)."""
      a = self.audio_encoder(mel)
      e = self.emotion_encoder(emotion)[:, :, None, None]
      feats = []
      x = face
      for f in self.face_encoder_blocks:
        x = f(x)
        feats.append(x)
      x = torch.cat([a, e], dim=1)
      for f in self.face_decoder_blocks:
        x = f(x)
        x = torch.cat((x, feats.pop()), dim=1)
      return self.output_block(x)

  class SyncNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.face_encoder = seq(
          Conv2d(15, c(32), 7, 1, 3),
          Conv2d(c(32), c(64), 5, (1, 2), 1), res(64), res(64),
          Conv2d(c(64), c(128), 3, 2, 1), res(128), res(128), res(128),
          Conv2d(c(128), c(256), 3, 2, 1), res(256), res(256),
          Conv2d(c(256), c(512), 3, 2, 1), res(512), res(512),
          Conv2d(c(512), c(512), 3, 2, 1), Conv2d(c(512), c(512), 3, 1, 0),
          Conv2d(c(512), c(512), 1, 1, 0))
      self.audio_encoder = audio_encoder(2)

    def forward(self, mel, faces):
      a = self.audio_encoder(mel).reshape(mel.shape[0], -1)
      v = self.face_encoder(faces).reshape(faces.shape[0], -1)
      return nn.functional.normalize(a, p=2, dim=1), nn.functional.normalize(v, p=2, dim=1)

  class QualityDiscriminator(nn.Module):
    def __init__(self):
      super().__init__()
      nn_ = NoNormConv2d
      self.face_encoder_blocks = nn.ModuleList([
          seq(nn_(3, c(32), 7, 1, 3)),
          seq(nn_(c(32), c(64), 5, (1, 2), 2), nn_(c(64), c(64), 5, 1, 2)),
          seq(nn_(c(64), c(128), 5, 2, 2), nn_(c(128), c(128), 5, 1, 2)),
          seq(nn_(c(128), c(256), 5, 2, 2), nn_(c(256), c(256), 5, 1, 2)),
          seq(nn_(c(256), c(512), 3, 2, 1), nn_(c(512), c(512), 3, 1, 1)),
          seq(nn_(c(512), c(512), 3, 2, 1), nn_(c(512), c(512), 3, 1, 1)),
          seq(nn_(c(512), c(512), 3, 1, 0), nn_(c(512), c(512), 1, 1, 0))])
      self.binary_pred = seq(nn.Conv2d(c(512), 1, 1, 1, 0), nn.Sigmoid())

    def forward(self, frames):
      """frames (N, 3, 96, 96) -> (N, 1)."""
      x = frames[:, :, frames.shape[2] // 2:]
      for f in self.face_encoder_blocks:
        x = f(x)
      return self.binary_pred(x).view(len(x), -1)

  return Generator(), SyncNet(), QualityDiscriminator()


def _flax_path(torch_module_path: str) -> str:
  """'face_encoder_blocks.0.0.conv_block.1' -> 'face_encoder_blocks_0_0/bn'."""
  path = torch_module_path.replace(".conv_block.0", "/conv").replace(".conv_block.1", "/bn")
  return re.sub(r"\.(\d+)", r"_\1", path)


def load_flax_into_torch(torch_model, variables) -> int:
  """Copies Flax ``variables`` into ``torch_model`` by name; returns the number of tensors set."""
  import torch
  from torch import nn

  flat = {}
  for col in variables:
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables[col])[0]:
      flat["/".join(p.key for p in path)] = np.asarray(leaf)
  used = set()

  def take(key):
    used.add(key)
    return torch.from_numpy(np.ascontiguousarray(flat[key]))

  count = 0
  with torch.no_grad():
    for name, m in torch_model.named_modules():
      base = _flax_path(name)
      if isinstance(m, nn.ConvTranspose2d):
        m.weight.copy_(take(base + "/kernel").permute(2, 3, 0, 1))  # kernel[a,b,i,o] = w[i,o,a,b]
        m.bias.copy_(take(base + "/bias"))
      elif isinstance(m, nn.Conv2d):
        m.weight.copy_(take(base + "/kernel").permute(3, 2, 0, 1))
        m.bias.copy_(take(base + "/bias"))
      elif isinstance(m, nn.Linear):
        m.weight.copy_(take(base + "/kernel").T)
        m.bias.copy_(take(base + "/bias"))
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(take(base + "/scale"))
        m.bias.copy_(take(base + "/bias"))
        m.running_mean.copy_(take(base + "/mean"))
        m.running_var.copy_(take(base + "/var"))
      else:
        continue
      count += 1
  unused = sorted(set(flat) - used)
  assert not unused, f"Flax variables without a PyTorch counterpart: {unused[:5]}"
  return count


def torch_emotion_disc(width: float):
  """PyTorch DISCEMO (nn.Conv2d / nn.Linear / nn.LSTM) at a channel ``width``, keys as the
  original's (``conv_1.0``, ``projector.0``, ``rnn_1``, ``cls.0``). ``forward(frames)`` takes real
  frames (B, T, 3, 96, 96) -> logits (B, 6)."""
  from torch import nn

  chans = [3] + [_ch(c, width) for c in (64, 128, 256, 512, 512)]
  hidden, embed = _ch(2048, width), _ch(512, width)

  class EmotionDisc(nn.Module):
    def __init__(self):
      super().__init__()
      for k in range(1, 6):
        setattr(self, f"conv_{k}", nn.Sequential(nn.Conv2d(chans[k - 1], chans[k], 3, 2, 1),
                                                 nn.LeakyReLU(0.3)))
      self.projector = nn.Sequential(nn.Linear(chans[5] * 3 * 3, hidden), nn.LeakyReLU(0.3),
                                     nn.Linear(hidden, embed))
      self.rnn_1 = nn.LSTM(embed, embed, 1, batch_first=True)
      self.cls = nn.Sequential(nn.Linear(embed, 6))

    def forward(self, frames):
      b, t = frames.shape[:2]
      x = frames.reshape((b * t,) + frames.shape[2:])
      for k in range(1, 6):
        x = getattr(self, f"conv_{k}")(x)
      x = self.projector(x.reshape(b, t, -1))
      x, _ = self.rnn_1(x)
      return self.cls(x[:, -1])

  return EmotionDisc()


def torch_vgg19(width: float):
  """torchvision's ``vgg19().features`` rebuilt from nn.Conv2d / nn.ReLU / nn.MaxPool2d at a channel
  ``width`` (same module indices, so the keys are ``features.{i}.weight``). ``forward(x)`` -> the
  five max-pool outputs."""
  from torch import nn

  cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"]
  layers, cin = [], 3
  for v in cfg:
    if v == "M":
      layers.append(nn.MaxPool2d(2, 2))
    else:
      layers += [nn.Conv2d(cin, _ch(v, width), 3, padding=1), nn.ReLU()]
      cin = _ch(v, width)

  class VGG(nn.Module):
    def __init__(self):
      super().__init__()
      self.features = nn.Sequential(*layers)

    def forward(self, x):
      outs = []
      for layer in self.features:
        x = layer(x)
        if isinstance(layer, nn.MaxPool2d):
          outs.append(x)
      return outs

  return VGG()
