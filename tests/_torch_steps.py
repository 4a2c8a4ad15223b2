"""The three training steps written a second time in PyTorch, from torch.nn building blocks.

Nothing here calls our training code: the networks are the nn.Module replicas of
``tests._model_fixtures`` (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.LSTM, nn.Linear), the
losses are torch.nn.functional's (binary_cross_entropy, cross_entropy, l1_loss, mse_loss,
cosine_similarity), the optimizer is torch.optim.Adam, and the order of operations is the recipe's
(docs/design.md "Training recipe": generator update, then one emotion-disc update on the REAL target frames).
Only the weights come from our side, through ``emogen_jax.convert`` (flax -> torch before the
first step, torch -> flax after the last one), so that the two runs can be compared leaf by leaf.

Batches are our NHWC numpy batches (``<stage>.fake_batch``); each function permutes them to NCHW.
Every function returns (per-step loss terms as floats, final Flax variables by kind). With
``dtype=torch.float64`` the same steps run in double precision: the near-exact answer against
which the parity tests measure how far a float32 step (PyTorch's or ours) lands from it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from emogen_jax import convert
from tests._model_fixtures import torch_emotion_disc, torch_models, torch_vgg19

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _t(x, dtype=None) -> torch.Tensor:
  """A writable copy; floating arrays cast to ``dtype`` when given (integer labels kept)."""
  t = torch.from_numpy(np.array(x))
  return t.to(dtype) if dtype is not None and t.is_floating_point() else t


def _nchw(x, dtype=None) -> torch.Tensor:
  """(..., H, W, C) numpy -> (..., C, H, W) torch."""
  return _t(x, dtype).movedim(-1, -3)


def _load(net, kind: str, variables, width: float, dtype=torch.float32):
  net.load_state_dict({k: _t(v) for k, v in convert.flax_to_torch(kind, variables, width).items()})
  return net.to(dtype)


def _export(net, kind: str, width: float) -> dict:
  return convert.torch_to_flax(kind, {k: v.detach().numpy() for k, v in net.state_dict().items()},
                               width)


def _adam(net, lr: float, b1: float, b2: float):
  return torch.optim.Adam(net.parameters(), lr=lr, betas=(b1, b2), eps=1e-8)


def _sync_bce(a, v, y):
  """The sync loss: BCE of the cosine similarity of the two embeddings, taken as a probability."""
  return F.binary_cross_entropy(F.cosine_similarity(a, v), y)


def syncnet_steps(variables, width: float, batches, *, lr: float, b1: float, b2: float,
                  dtype=torch.float32):
  """Wav2Lip expert training: train-mode SyncNet, BCE of cos(audio, face) against the label."""
  net = _load(torch_models(width)[1], "syncnet", variables, width, dtype).train()
  opt = _adam(net, lr, b1, b2)
  terms = []
  for b in batches:
    a, v = net(_nchw(b["mel"], dtype), _nchw(b["frames"], dtype))
    loss = _sync_bce(a, v, _t(b["label"], dtype))
    opt.zero_grad()
    loss.backward()
    opt.step()
    terms.append({"loss": loss.item()})
  return terms, {"syncnet": _export(net, "syncnet", width)}


def emotion_disc_steps(variables, width: float, batches, *, lr: float, b1: float, b2: float,
                       dtype=torch.float32):
  """DISCEMO stand-alone training: cross-entropy of the clip's emotion."""
  net = _load(torch_emotion_disc(width), "emotion_disc", variables, width, dtype).train()
  opt = _adam(net, lr, b1, b2)
  terms = []
  for b in batches:
    loss = F.cross_entropy(net(_nchw(b["frames"], dtype)), _t(b["emotion"]).long())
    opt.zero_grad()
    loss.backward()
    opt.step()
    terms.append({"loss": loss.item()})
  return terms, {"emotion_disc": _export(net, "emotion_disc", width)}


def _vgg_input(frames_bgr):
  """BGR frames in [0, 1] (N, 3, H, W) -> ImageNet-normalised RGB, what the VGG weights expect."""
  rgb = frames_bgr.flip(1)
  mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype).view(1, 3, 1, 1)
  std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype).view(1, 3, 1, 1)
  return (rgb - mean) / std


def emogen_steps(variables, widths: dict, batches, *, lr: float, disc_lr: float, b1: float,
                 b2: float, w_sync: float, w_pl: float, w_emo: float, dtype=torch.float32):
  """EmoGen iterations: a generator update on the four-term loss (frozen inference-mode expert,
  frozen VGG, the emotion disc judging but not moved), then one emotion-disc update on the real
  target frames. ``variables``/``widths`` by kind: generator, syncnet, emotion_disc, vgg19."""
  gen = _load(torch_models(widths["generator"])[0], "generator", variables["generator"],
              widths["generator"], dtype).train()
  expert = _load(torch_models(widths["syncnet"])[1], "syncnet", variables["syncnet"],
                 widths["syncnet"], dtype).eval()
  disc = _load(torch_emotion_disc(widths["emotion_disc"]), "emotion_disc",
               variables["emotion_disc"], widths["emotion_disc"], dtype).train()
  vgg = _load(torch_vgg19(widths["vgg19"]), "vgg19", variables["vgg19"], widths["vgg19"],
              dtype).eval()
  for frozen in (expert, vgg):
    frozen.requires_grad_(False)
  g_opt = _adam(gen, lr, b1, b2)
  d_opt = _adam(disc, disc_lr, b1, b2)
  terms = []
  for b in batches:
    face = _nchw(b["frames"], dtype)              # (B, T, 6, 96, 96)
    mel = _nchw(b["mel"], dtype)                  # (B, T, 1, 80, 16)
    target = _nchw(b["target"], dtype)            # (B, T, 3, 96, 96)
    emotion = _t(b["emotion"]).long()
    bsz, steps = face.shape[:2]
    # The original folds clips time-major into frames (all first frames, then all second ...).
    fold = lambda x: torch.cat([x[:, i] for i in range(steps)], dim=0)
    out = gen(fold(mel), fold(face), F.one_hot(emotion, 6).to(dtype).repeat(steps, 1))
    g = torch.stack(torch.split(out, bsz, dim=0), dim=1)          # (B, T, 3, 96, 96)

    l1 = F.l1_loss(g, target)
    # Expert face input: lower halves of the T frames stacked on channels, frame-major.
    lower = torch.cat([g[:, i, :, g.shape[-2] // 2:] for i in range(steps)], dim=1)
    a, v = expert(_nchw(b["sync_mel"], dtype), lower)
    sync = _sync_bce(a, v, torch.ones(bsz, dtype=dtype))
    frames = lambda x: x.reshape((-1,) + x.shape[2:])
    perceptual = sum(F.mse_loss(fg, ft) for fg, ft in
                     zip(vgg(_vgg_input(frames(g))), vgg(_vgg_input(frames(target)))))
    emo = F.cross_entropy(disc(g), emotion)
    loss = w_sync * sync + w_pl * perceptual + w_emo * emo + (1 - w_sync - w_pl - w_emo) * l1
    g_opt.zero_grad()
    loss.backward()
    g_opt.step()

    # The emotion disc: one step on the real frames (its gradient from the generator loss is dropped).
    d_loss = F.cross_entropy(disc(target), emotion)
    d_opt.zero_grad()
    d_loss.backward()
    d_opt.step()
    terms.append({"loss": loss.item(), "l1": l1.item(), "sync": sync.item(),
                  "perceptual": perceptual.item(), "emo": emo.item(), "disc_loss": d_loss.item()})
  return terms, {"generator": _export(gen, "generator", widths["generator"]),
                 "emotion_disc": _export(disc, "emotion_disc", widths["emotion_disc"])}
