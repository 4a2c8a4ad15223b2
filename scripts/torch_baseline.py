"""The PyTorch side of the speed comparisons (scripts/bench_train.py --compare-torch,
scripts/bench_infer.py): the original networks as the tests' PyTorch reference functions
(tests/_torch_reference.py), fed the same weights as our models (``convert.flax_to_torch``) and
the same batches, trained with torch.optim.Adam.

Each ``*_step`` builder returns a no-argument callable that runs one step to completion, so that
the caller can time it interleaved with ours in one process. The iterations are the original's,
with the work that ours leaves out left out on both sides too: the frozen expert runs in
inference mode, the emotion disc gets no gradient from the generator's loss, and the perceptual
loss's target features are computed without a gradient.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from emogen_jax import convert
from tests import _torch_reference as ref

_STATS = (".running_mean", ".running_var", ".num_batches_tracked")


def state_dict(kind: str, variables, width: float, device: str, trainable: bool = True):
  """Our Flax variables -> {key: torch tensor} on ``device``; weights require grad when
  ``trainable`` (BatchNorm statistics never do)."""
  sd = {}
  for k, v in convert.flax_to_torch(kind, variables, width).items():
    t = torch.from_numpy(np.array(v)).to(device)
    if trainable and not k.endswith(_STATS):
      t.requires_grad_(True)
    sd[k] = t
  return sd


def params(sd):
  return [t for t in sd.values() if t.requires_grad]


def adam(sd, lr: float, b1: float, b2: float):
  return torch.optim.Adam(params(sd), lr=lr, betas=(b1, b2), eps=1e-8)


def tensor(x, device: str):
  return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def nchw(x, device: str):
  """(..., H, W, C) numpy -> (..., C, H, W) torch."""
  return tensor(np.moveaxis(np.asarray(x), -1, -3), device)


def _sync(device: str):
  if device.startswith("cuda"):
    torch.cuda.synchronize()


def _sync_loss(a, v, y):
  return F.binary_cross_entropy(F.cosine_similarity(a, v).clamp(0, 1), y)


def syncnet_step(sd, batch, config, device: str):
  """One SyncNet training step (BatchNorm in training mode), as the original's loop."""
  opt = adam(sd, config.learning_rate, config.b1, config.b2)
  mel, faces, y = nchw(batch["mel"], device), nchw(batch["frames"], device), tensor(batch["label"], device)

  def step():
    a, v = ref.syncnet(sd, mel, faces, train=True)
    loss = _sync_loss(a, v, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    _sync(device)
    return loss.item()

  return step


def _disc_update(sd, opt, frames, labels):
  logits = ref.emotion_disc_frames(sd, frames)
  loss = F.cross_entropy(logits, labels)
  opt.zero_grad(set_to_none=True)
  loss.backward()
  opt.step()
  return loss


def emotion_disc_step(sd, batch, config, device: str):
  """One emotion-disc training step on (B, T, C, H, W) frames."""
  opt = adam(sd, config.learning_rate, config.b1, config.b2)
  video, labels = nchw(batch["frames"], device), tensor(batch["emotion"], device).long()

  def step():
    loss = _disc_update(sd, opt, video, labels)
    _sync(device)
    return loss.item()

  return step


def _emogen_inputs(batch, device: str) -> dict:
  """The iteration's batch in PyTorch's layouts: mel (B, T, 1, 80, 16), face (B, 6, T, 96, 96),
  sync_mel, target (B, T, 3, 96, 96), labels (B,) and their one-hot rows."""
  labels = tensor(batch["emotion"], device).long()
  return {"mel": nchw(batch["mel"], device),
          "face": nchw(batch["frames"], device).permute(0, 2, 1, 3, 4),
          "sync_mel": nchw(batch["sync_mel"], device), "target": nchw(batch["target"], device),
          "labels": labels, "onehot": F.one_hot(labels, 6).float()}


def _expert_loss(s_sd, sync_mel, g):
  """The frozen expert's sync loss of generated clips g (B, T, 3, 96, 96) against label 1."""
  b, t = g.shape[:2]
  a, v = ref.syncnet(s_sd, sync_mel, g[:, :, :, 48:].reshape(b, t * 3, 48, 96), train=False)
  return _sync_loss(a, v, torch.ones(b, device=g.device))


def _perceptual_loss(v_sd, g, target):
  """The sum over VGG-19's pools of the MSE, the target's features without a gradient; BGR
  frames -> normalised RGB, as our VGG19Features(bgr_input=True, normalize=True)."""
  frames = lambda x: x.reshape(-1, 3, 96, 96).flip(1)
  fg = ref.vgg19_features(v_sd, frames(g))
  with torch.no_grad():
    ft = ref.vgg19_features(v_sd, frames(target))
  return sum(F.mse_loss(x, y) for x, y in zip(fg, ft))


def emogen_step(nets, batch, config, device: str, w_sync: float):
  """One EmoGen iteration: the generator update (sync, perceptual, emotion and L1 terms), then
  one emotion-disc update on the real target frames. ``nets``: state dicts "generator",
  "syncnet" (frozen), "emotion_disc", "vgg19" (frozen; None without the perceptual loss)."""
  g_sd, s_sd, d_sd, v_sd = nets["generator"], nets["syncnet"], nets["emotion_disc"], nets["vgg19"]
  g_opt = adam(g_sd, config.learning_rate, config.b1, config.b2)
  d_opt = adam(d_sd, config.disc_learning_rate, config.b1, config.b2)
  w_pl, w_emo = float(config.w_pl), float(config.w_emo)
  x = _emogen_inputs(batch, device)
  d_params = params(d_sd)

  def step():
    for p in d_params:
      p.requires_grad_(False)
    g = ref.generator(g_sd, x["mel"], x["face"], x["onehot"], train=True).permute(0, 2, 1, 3, 4)
    loss = (w_sync * _expert_loss(s_sd, x["sync_mel"], g)
            + w_emo * F.cross_entropy(ref.emotion_disc_frames(d_sd, g), x["labels"])
            + (1.0 - w_sync - w_pl - w_emo) * F.l1_loss(g, x["target"]))
    if v_sd is not None:
      loss = loss + w_pl * _perceptual_loss(v_sd, g, x["target"])
    g_opt.zero_grad(set_to_none=True)
    loss.backward()
    g_opt.step()
    for p in d_params:
      p.requires_grad_(True)
    _disc_update(d_sd, d_opt, x["target"], x["labels"])
    _sync(device)
    return loss.item()

  return step


def emogen_parts(nets, batch, generated, device: str) -> dict:
  """The EmoGen iteration's parts, each a forward and the gradient the iteration takes of it, as
  no-argument callables (the same parts as scripts/bench_train.py's ``emogen_parts``):
  "generator" (train mode, L1 loss, gradient of its weights), "perceptual" (VGG-19 of
  ``generated`` with its gradient and of the target without), "sync expert" and "emotion disc on
  generated" (gradients of ``generated`` (B, T, H, W, 3) only) and "emotion disc update" (the
  gradient of its weights on the target; no optimizer anywhere)."""
  g_sd, s_sd, d_sd, v_sd = nets["generator"], nets["syncnet"], nets["emotion_disc"], nets["vgg19"]
  x = _emogen_inputs(batch, device)
  gen = nchw(generated, device)
  g_params, d_params = params(g_sd), params(d_sd)
  d_frozen = {k: v.detach() for k, v in d_sd.items()}

  def grad_of_generated(loss):  # the gradient of the loss of a fresh copy of ``generated``
    g = gen.clone().requires_grad_(True)
    return torch.autograd.grad(loss(g), [g])

  def done(grads):
    _sync(device)
    return grads

  parts = {
      "generator": lambda: done(torch.autograd.grad(F.l1_loss(ref.generator(
          g_sd, x["mel"], x["face"], x["onehot"], train=True).permute(0, 2, 1, 3, 4),
          x["target"]), g_params)),
      "perceptual": lambda: done(grad_of_generated(
          lambda g: _perceptual_loss(v_sd, g, x["target"]))),
      "sync expert": lambda: done(grad_of_generated(
          lambda g: _expert_loss(s_sd, x["sync_mel"], g))),
      "emotion disc on generated": lambda: done(grad_of_generated(
          lambda g: F.cross_entropy(ref.emotion_disc_frames(d_frozen, g), x["labels"]))),
      "emotion disc update": lambda: done(torch.autograd.grad(
          F.cross_entropy(ref.emotion_disc_frames(d_sd, x["target"]), x["labels"]), d_params)),
  }
  if v_sd is None:
    del parts["perceptual"]
  return parts


def generator_forward(sd, mel, face, emotion, device: str):
  """Inference: frames mel (N, 80, 16, 1), face (N, 96, 96, 6), emotion (N,) -> a callable that
  generates the N frames (BatchNorm with running statistics, no gradient)."""
  mel_t = nchw(mel, device)[:, None]                                # (N, 1, 1, 80, 16)
  face_t = nchw(face, device)[:, :, None]                           # (N, 6, 1, 96, 96)
  onehot = F.one_hot(tensor(emotion, device).long(), 6).float()

  def run():
    with torch.inference_mode():
      out = ref.generator(sd, mel_t, face_t, onehot, train=False)
    _sync(device)
    return out

  return run
