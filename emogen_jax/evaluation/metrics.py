"""Evaluation metrics as pure numpy functions: PSNR, SSIM, the paste-back seam, SyncNet offset search
/ LSE, FID, accuracy.

LSE follows the protocol of syncnet_python (used by Wav2Lip and EmoGen for LSE-D / LSE-C):
for every video window i, the Euclidean distance between its face embedding and the audio
embeddings of windows i + d for d in [-vshift, vshift] (audio zero-padded beyond the clip); the
distances are averaged over i per shift d. The best shift is the one with the smallest mean
distance; LSE-D is that smallest mean distance and LSE-C ("confidence") is the median of the
curve minus its minimum.

Offset sign: ``offset = video index - matching audio index``. A positive offset means the
picture lags the sound by ``offset`` frames (frame i shows what was said at frame i - offset).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from skimage.metrics import structural_similarity

DEFAULT_VSHIFT = 15


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
  """Peak signal-to-noise ratio in dB over all pixels of ``a`` and ``b`` (inf when identical)."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
  mse = np.mean((a - b) ** 2)
  if mse == 0:
    return float("inf")
  return float(10.0 * np.log10(data_range ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
  """Mean structural similarity of colour images (H, W, 3) or stacks (N, H, W, 3), averaged over N."""
  a = np.asarray(a)
  b = np.asarray(b)
  if a.shape != b.shape:
    raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
  if a.ndim == 3:
    a, b = a[None], b[None]
  vals = [structural_similarity(x.astype(np.float64), y.astype(np.float64), channel_axis=-1,
                                data_range=data_range) for x, y in zip(a, b)]
  return float(np.mean(vals))


def seam_energy(frame: np.ndarray, box) -> float:
  """Edge energy along a pasted box's border: the mean absolute step across its four sides.

  For each side, the difference between the pixel rows (columns) just inside and just outside the
  box (x1, y1, x2, y2), over all channels; sides on the frame's edge are skipped. A hard
  rectangle whose content differs from its surroundings has a high value; a face faded into the
  frame has about the picture's own edge energy there.
  """
  f = np.asarray(frame, np.float64)
  x1, y1, x2, y2 = (int(v) for v in box)
  h, w = f.shape[:2]
  steps = []
  if y1 > 0:
    steps.append(np.abs(f[y1, x1:x2] - f[y1 - 1, x1:x2]).ravel())
  if y2 < h:
    steps.append(np.abs(f[y2 - 1, x1:x2] - f[y2, x1:x2]).ravel())
  if x1 > 0:
    steps.append(np.abs(f[y1:y2, x1] - f[y1:y2, x1 - 1]).ravel())
  if x2 < w:
    steps.append(np.abs(f[y1:y2, x2 - 1] - f[y1:y2, x2]).ravel())
  return float(np.mean(np.concatenate(steps))) if steps else 0.0


def sync_distance_curve(video_emb: np.ndarray, audio_emb: np.ndarray,
                        vshift: int = DEFAULT_VSHIFT) -> np.ndarray:
  """Mean distance between video window i and audio window i + d, for d = -vshift..vshift.

  Args:
    video_emb: (N, D) face embeddings, one per video window.
    audio_emb: (M, D) audio embeddings, window j aligned with video window j; missing audio
      windows (beyond M or before 0) count as zero vectors, as in syncnet_python.
  Returns:
    (2 * vshift + 1,) float64; entry ``vshift + d`` is the mean over i of ||v_i - a_{i+d}||.
  """
  v = np.asarray(video_emb, np.float64)
  a = np.asarray(audio_emb, np.float64)
  if v.ndim != 2 or a.ndim != 2 or v.shape[1] != a.shape[1]:
    raise ValueError(f"embeddings must be (N, D) and (M, D), got {v.shape} and {a.shape}")
  n, dim = v.shape
  win = 2 * vshift + 1
  # Row i + vshift of the padded audio is audio window i.
  padded = np.zeros((n + 2 * vshift, dim))
  m = min(len(a), n + vshift)
  padded[vshift:vshift + m] = a[:m]
  # windows[i, j] = padded[i + j] = audio window i + j - vshift.
  idx = np.arange(n)[:, None] + np.arange(win)[None, :]
  dists = np.linalg.norm(v[:, None, :] - padded[idx], axis=-1)
  return dists.mean(axis=0)


@dataclasses.dataclass(frozen=True)
class SyncResult:
  offset: int          # frames; > 0: the picture lags the sound
  min_dist: float      # LSE-D: the mean distance at the best offset
  confidence: float    # LSE-C: median(curve) - min(curve)
  curve: np.ndarray    # (2 * vshift + 1,) mean distance per shift d = -vshift..vshift

  def as_dict(self) -> dict:
    return {"offset": self.offset, "lse_d": self.min_dist, "lse_c": self.confidence}


def offset_search(curve: np.ndarray) -> SyncResult:
  """The best shift of a distance curve (see ``sync_distance_curve``) with its distance and confidence."""
  curve = np.asarray(curve, np.float64)
  if curve.ndim != 1 or len(curve) % 2 != 1:
    raise ValueError(f"the curve must have 2 * vshift + 1 entries, got {curve.shape}")
  vshift = len(curve) // 2
  best = int(np.argmin(curve))
  minval = float(curve[best])
  # syncnet_python takes torch.median, the lower median; the curve length is odd so it is exact.
  conf = float(np.median(curve) - minval)
  return SyncResult(offset=vshift - best, min_dist=minval, confidence=conf, curve=curve)


def lse(video_emb: np.ndarray, audio_emb: np.ndarray, vshift: int = DEFAULT_VSHIFT) -> SyncResult:
  """Offset, LSE-D and LSE-C of one clip from its per-window face and audio embeddings."""
  return offset_search(sync_distance_curve(video_emb, audio_emb, vshift))


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
  """Tr(sqrt(S1 S2)) for symmetric PSD S1, S2.

  S1 S2 is similar to sqrt(S1) S2 sqrt(S1), which is symmetric PSD: the trace is the sum of the
  square roots of its eigenvalues. Two symmetric eigendecompositions are stable for the singular
  covariances of few samples and much faster than a general matrix square root (scipy's sqrtm
  on a singular 2048x2048 product takes minutes).
  """
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  m = root1 @ s2 @ root1
  ev = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sum(np.sqrt(np.clip(ev, 0, None))))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)) between two Gaussians (the FID formula)."""
  mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
  s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
  diff = mu1 - mu2
  return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * _trace_sqrt_product(s1, s2))


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
  """FID between two sets of (N, D) activations (e.g. Inception pool features).

  With fewer samples than dimensions the covariances are low-rank: S1 = A^T A, S2 = B^T B with
  A, B the centred features over sqrt(N - 1), and Tr(sqrt(S1 S2)) is the sum of the singular
  values of A B^T (N1 x N2), which is exact and cheap.
  """
  f1 = np.asarray(feats1, np.float64)
  f2 = np.asarray(feats2, np.float64)
  mu1, mu2 = f1.mean(0), f2.mean(0)
  if min(len(f1), len(f2)) < f1.shape[1]:
    a = (f1 - mu1) / np.sqrt(max(len(f1) - 1, 1))
    b = (f2 - mu2) / np.sqrt(max(len(f2) - 1, 1))
    tr_sqrt = float(np.sum(np.linalg.svd(a @ b.T, compute_uv=False)))
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.sum(a * a) + np.sum(b * b) - 2.0 * tr_sqrt)
  return frechet_distance(mu1, np.cov(f1, rowvar=False), mu2, np.cov(f2, rowvar=False))


def accuracy(predicted: np.ndarray, target: np.ndarray) -> float:
  predicted = np.asarray(predicted)
  target = np.asarray(target)
  if predicted.shape != target.shape or predicted.size == 0:
    raise ValueError(f"need equal non-empty label arrays, got {predicted.shape} and {target.shape}")
  return float(np.mean(predicted == target))


def confusion_matrix(predicted: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
  """(num_classes, num_classes) counts; row = target, column = prediction."""
  m = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(m, (np.asarray(target), np.asarray(predicted)), 1)
  return m


def per_target_text(per_target: dict, confusion=None, below: float = 0.5) -> str:
  """Per-target EmoAcc as text, e.g. "ANG 100 %, DIS 4 % (read as NEU 23 of 24), ...": a target
  under ``below`` names the emotion its clips were most often read as (from the confusion
  matrix, rows: target, in ``per_target``'s order), which says what the generator made of it."""
  parts, names = [], list(per_target)
  for e, (name, acc) in enumerate(per_target.items()):
    text = f"{name} {100 * acc:.0f} %"
    row = np.asarray(confusion[e]) if confusion is not None else None
    if row is not None and acc < below and row.sum() > 0:
      wrong = row.copy()
      wrong[e] = 0
      if wrong.max() > 0:
        text += f" (read as {names[int(wrong.argmax())]} {int(wrong.max())} of {int(row.sum())})"
    parts.append(text)
  return ", ".join(parts)
