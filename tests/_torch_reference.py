"""The original PyTorch networks re-written with torch.nn.functional, for parity tests.

Each function takes a PyTorch-style state dict ``sd`` (name -> torch tensor, as the original
code's ``state_dict()``) and NCHW inputs, and computes what the original module's ``forward``
computes. Layer hyper-parameters (strides, paddings, residual flags) are written out here from the
reference description, independently of the Flax model code; channel counts come from the weights,
so the functions work at any width.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# (stride, padding, residual) per conv block; the kernel size comes from the weight.
R = (1, 1, True)
GEN_FACE_ENCODER = (
    ((1, 3, False),),
    ((2, 1, False), R, R),
    ((2, 1, False), R, R, R),
    ((2, 1, False), R, R),
    ((2, 1, False), R, R),
    ((2, 1, False), R),
    ((1, 0, False), (1, 0, False)),
)
GEN_AUDIO_ENCODER = (
    (1, 1, False), R, R,
    ((3, 1), 1, False), R, R,
    (3, 1, False), R, R,
    ((3, 2), 1, False), R,
    (1, 0, False), (1, 0, False),
)
# First layer of each decoder block: ("c", stride, pad) conv or ("t", stride, pad, out_pad)
# transposed conv, followed by ``n_res`` residual blocks.
GEN_DECODER = (
    (("c", 1, 0), 0),
    (("t", 1, 0, 0), 1),
    (("t", 2, 1, 1), 2),
    (("t", 2, 1, 1), 2),
    (("t", 2, 1, 1), 2),
    (("t", 2, 1, 1), 2),
    (("t", 2, 1, 1), 2),
)
SYNC_FACE_ENCODER = (
    (1, 3, False),
    ((1, 2), 1, False), R, R,
    (2, 1, False), R, R, R,
    (2, 1, False), R, R,
    (2, 1, False), R, R,
    (2, 1, False),
    (1, 0, False),
    (1, 0, False),
)
SYNC_AUDIO_ENCODER = (
    (1, 1, False), R, R,
    ((3, 1), 1, False), R, R,
    (3, 1, False), R, R,
    ((3, 2), 1, False), R, R,
    (1, 0, False), (1, 0, False),
)
# (stride, padding) of the quality discriminator's LeakyReLU(0.01) convs.
QUAL_BLOCKS = (
    ((1, 3),),
    (((1, 2), 2), (1, 2)),
    ((2, 2), (1, 2)),
    ((2, 2), (1, 2)),
    ((2, 1), (1, 1)),
    ((2, 1), (1, 1)),
    ((1, 0), (1, 0)),
)
VGG_CONVS = ((0, 2), (5, 7), (10, 12, 14, 16), (19, 21, 23, 25), (28, 30, 32, 34))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _bn(sd, prefix, x, train):
  # In train mode F.batch_norm updates sd's running stats in place, like the original module.
  return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"],
                      sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], training=train,
                      momentum=0.1, eps=1e-5)


def conv_bn(sd, prefix, x, stride, padding, residual=False, train=False):
  y = F.conv2d(x, sd[f"{prefix}.conv_block.0.weight"], sd[f"{prefix}.conv_block.0.bias"],
               stride=stride, padding=padding)
  y = _bn(sd, f"{prefix}.conv_block.1", y, train)
  if residual:
    y = y + x
  return F.relu(y)


def convt_bn(sd, prefix, x, stride, padding, output_padding, train=False):
  y = F.conv_transpose2d(x, sd[f"{prefix}.conv_block.0.weight"], sd[f"{prefix}.conv_block.0.bias"],
                         stride=stride, padding=padding, output_padding=output_padding)
  return F.relu(_bn(sd, f"{prefix}.conv_block.1", y, train))


def generator(sd, audio, face, emotion, train=False):
  """EmoGen's generator forward. audio (B, T, 1, 80, 16), face (B, 6, T, 96, 96), emotion (B, 6)
  one-hot -> (B, 3, T, 96, 96). Frames are folded time-major, as the original does."""
  b, t = audio.shape[:2]
  audio = torch.cat([audio[:, i] for i in range(t)], dim=0)
  face = torch.cat([face[:, :, i] for i in range(t)], dim=0)
  emotion = emotion.repeat(t, 1)

  a = audio
  for j, (s, p, res) in enumerate(GEN_AUDIO_ENCODER):
    a = conv_bn(sd, f"audio_encoder.{j}", a, s, p, res, train)
  e = F.leaky_relu(F.linear(emotion, sd["emotion_encoder.0.weight"], sd["emotion_encoder.0.bias"]), 0.2)
  e = F.leaky_relu(F.linear(e, sd["emotion_encoder.2.weight"], sd["emotion_encoder.2.bias"]), 0.2)
  e = e.view(e.shape[0], -1, 1, 1)

  feats = []
  x = face
  for i, block in enumerate(GEN_FACE_ENCODER):
    for j, (s, p, res) in enumerate(block):
      x = conv_bn(sd, f"face_encoder_blocks.{i}.{j}", x, s, p, res, train)
    feats.append(x)

  x = torch.cat([a, e], dim=1)
  for i, (first, n_res) in enumerate(GEN_DECODER):
    if first[0] == "c":
      x = conv_bn(sd, f"face_decoder_blocks.{i}.0", x, first[1], first[2], False, train)
    else:
      x = convt_bn(sd, f"face_decoder_blocks.{i}.0", x, first[1], first[2], first[3], train)
    for j in range(1, n_res + 1):
      x = conv_bn(sd, f"face_decoder_blocks.{i}.{j}", x, 1, 1, True, train)
    x = torch.cat([x, feats.pop()], dim=1)

  x = conv_bn(sd, "output_block.0", x, 1, 1, False, train)
  x = torch.sigmoid(F.conv2d(x, sd["output_block.1.weight"], sd["output_block.1.bias"]))
  return torch.stack(torch.split(x, b, dim=0), dim=2)


def syncnet(sd, mel, faces, train=False):
  """Wav2Lip SyncNet_color forward: mel (B, 1, 80, 16), faces (B, 15, 48, 96) -> (audio, face)
  embeddings, L2-normalised."""
  v = faces
  for j, (s, p, res) in enumerate(SYNC_FACE_ENCODER):
    v = conv_bn(sd, f"face_encoder.{j}", v, s, p, res, train)
  a = mel
  for j, (s, p, res) in enumerate(SYNC_AUDIO_ENCODER):
    a = conv_bn(sd, f"audio_encoder.{j}", a, s, p, res, train)
  a = F.normalize(a.view(a.shape[0], -1), p=2, dim=1)
  v = F.normalize(v.view(v.shape[0], -1), p=2, dim=1)
  return a, v


def quality_disc(sd, faces):
  """Wav2Lip_disc_qual forward on frames (N, 3, 96, 96) -> (N, 1) probabilities."""
  x = faces[:, :, faces.shape[2] // 2:]
  for i, block in enumerate(QUAL_BLOCKS):
    for j, (s, p) in enumerate(block):
      pre = f"face_encoder_blocks.{i}.{j}.conv_block.0"
      x = F.leaky_relu(F.conv2d(x, sd[f"{pre}.weight"], sd[f"{pre}.bias"], stride=s, padding=p), 0.01)
  x = F.conv2d(x, sd["binary_pred.0.weight"], sd["binary_pred.0.bias"])
  return torch.sigmoid(x).view(x.shape[0], -1)


@functools.lru_cache(maxsize=None)
def _lstm(input_size, hidden):
  """An LSTM module used only as the shape of the computation (its weights come from sd)."""
  return torch.nn.LSTM(input_size, hidden, 1, batch_first=True)


def emotion_disc(sd, video):
  """DISCEMO forward exactly as the original: video (N, C, T, H, W), folded with a plain view."""
  n, c, t, h, w = video.shape
  x = video.contiguous().view(t * n, c, h, w)
  for k in range(1, 6):
    x = F.leaky_relu(F.conv2d(x, sd[f"conv_{k}.0.weight"], sd[f"conv_{k}.0.bias"], stride=2,
                              padding=1), 0.3)
  x = x.view(n, t, -1)
  x = F.leaky_relu(F.linear(x, sd["projector.0.weight"], sd["projector.0.bias"]), 0.3)
  x = F.linear(x, sd["projector.2.weight"], sd["projector.2.bias"])
  hidden = sd["rnn_1.weight_hh_l0"].shape[1]
  lstm = _lstm(x.shape[-1], hidden).to(x.device)
  # functional_call (not load_state_dict) so that a training step's gradient reaches sd's tensors.
  x, _ = torch.func.functional_call(
      lstm, {k[len("rnn_1."):]: v for k, v in sd.items() if k.startswith("rnn_1.")}, (x,))
  return F.linear(x[:, -1], sd["cls.0.weight"], sd["cls.0.bias"])


def emotion_disc_frames(sd, frames):
  """DISCEMO on real frames: frames (N, T, C, H, W) -> logits, same layers as ``emotion_disc``."""
  n, t, c, h, w = frames.shape
  # (N, C, T, H, W) whose plain view gives real frames = frames as (N*T, C, H, W).
  return emotion_disc(sd, frames.reshape(n * t, c, h, w).reshape(n, c, t, h, w))


def vgg19_features(sd, images, normalize=True):
  """torchvision vgg19().features: images (N, 3, H, W) RGB in [0, 1] -> the 5 max-pool outputs."""
  x = images
  if normalize:
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
  outs = []
  for stage in VGG_CONVS:
    for idx in stage:
      x = F.relu(F.conv2d(x, sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"], padding=1))
    x = F.max_pool2d(x, 2, 2)
    outs.append(x)
  return outs
