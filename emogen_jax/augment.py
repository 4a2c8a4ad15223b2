"""The SPEC's training augmentations as TensorFlow ops, identical across the frames of one example.

``augment_examples(frames, seed)`` takes ``frames`` float32 (K, T, H, W, 3) BGR in
[0, 255] (K examples of T frames) and returns the same shape, clipped to [0, 255].
Each example draws ONE set of parameters, used for all its T frames (for the generator
T = 10: the 5 target and the 5 reference frames see the same transform), so the
temporal and target/reference consistency the models learn from is preserved.

With probability ``p_all`` (0.8) an example is augmented at all; then each of these
fires independently with probability ``p`` (0.3), in this order (an albumentations-like
Compose):

* brightness/contrast: x * a + b * 255, a ~ U[0.8, 1.2], b ~ U[-0.2, 0.2];
* gamma: 255 * (x / 255) ** g, g ~ U[0.8, 1.2];
* CLAHE: exact OpenCV CLAHE (``cv2.createCLAHE``, 8x8 tiles, clip limit ~ U[1, 4]) on
  the L channel of Lab, run through ``tf.numpy_function`` ONLY on the examples that
  drew it (about 24% of them; a 96x96 frame takes ~0.1 ms), so it stays cheap; cv2
  releases the GIL, so tf.data's parallel map still scales;
* hue/saturation/value shift: hue ~ U[-20, 20] in OpenCV units (180 = full turn),
  saturation and value ~ U[-50, 50] on 0..255, as albumentations' HueSaturationValue;
* channel shuffle: a random permutation of the 3 channels;
* RGB shift: a per-channel offset ~ U[-20, 20];
* Gaussian noise: variance ~ U[10, 50] on the 0..255 scale (fresh noise per pixel and
  frame; the variance is per example).

Randomness is stateless (``tf.random.stateless_*`` from ``seed``), so a seed gives the
same augmentations on every run whatever the parallelism. Heavier ops (HSV, CLAHE,
noise) are computed only for the examples that drew them (gather -> op -> scatter).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

P_ALL = 0.8
P_EACH = 0.3
NUM_OPS = 7


def _apply_where(x: tf.Tensor, flag: tf.Tensor, fn, *params) -> tf.Tensor:
  """x with fn(x[i], params[i]) for the examples i where flag[i]; the others untouched."""
  sel = tf.where(flag)[:, 0]

  def run():
    xs = tf.gather(x, sel)
    ps = [tf.gather(p, sel) for p in params]
    return tf.tensor_scatter_nd_update(x, sel[:, None], fn(xs, *ps))

  return tf.cond(tf.size(sel) > 0, run, lambda: x)


def _bcast(p: tf.Tensor, rank: int) -> tf.Tensor:
  """(K,) or (K, C) parameters -> broadcastable against (K, T, H, W, C)."""
  if p.shape.rank == 1:
    return tf.reshape(p, [-1] + [1] * (rank - 1))
  return tf.reshape(p, [-1] + [1] * (rank - 2) + [p.shape[-1]])


def _hsv_shift(x, dh, ds, dv):
  rgb = tf.reverse(x, axis=[-1]) / 255.0
  hsv = tf.image.rgb_to_hsv(rgb)
  h = tf.math.floormod(hsv[..., 0] + _bcast(dh, 4) / 180.0, 1.0)
  s = tf.clip_by_value(hsv[..., 1] + _bcast(ds, 4) / 255.0, 0.0, 1.0)
  v = tf.clip_by_value(hsv[..., 2] + _bcast(dv, 4) / 255.0, 0.0, 1.0)
  out = tf.image.hsv_to_rgb(tf.stack([h, s, v], axis=-1)) * 255.0
  return tf.reverse(out, axis=[-1])


def _clahe_numpy(x: np.ndarray, clip: np.ndarray) -> np.ndarray:
  import cv2
  out = np.empty_like(x)
  for i in range(x.shape[0]):
    op = cv2.createCLAHE(clipLimit=float(clip[i]), tileGridSize=(8, 8))
    for t in range(x.shape[1]):
      img = np.clip(x[i, t] + 0.5, 0, 255).astype(np.uint8)
      lab = cv2.cvtColor(img, cv2.COLOR_BGR2LAB)
      lab[:, :, 0] = op.apply(lab[:, :, 0])
      out[i, t] = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
  return out


def _clahe(x, clip):
  y = tf.numpy_function(_clahe_numpy, [x, clip], tf.float32, stateful=False)
  return tf.ensure_shape(y, x.shape)


def _noise_fn(seed):
  def fn(x, sigma):
    n = tf.random.stateless_normal(tf.shape(x), seed=seed)
    return x + n * _bcast(sigma, 5)
  return fn


def augment_examples(frames: tf.Tensor, seed: tf.Tensor, p_all: float = P_ALL,
                     p: float = P_EACH) -> tf.Tensor:
  """(K, T, H, W, 3) float32 BGR 0..255 -> augmented, same shape, in [0, 255]."""
  x = tf.convert_to_tensor(frames, tf.float32)
  k = tf.shape(x)[0]
  seeds = tf.random.experimental.stateless_split(seed, num=12)
  u = lambda i, shape, lo=0.0, hi=1.0: tf.random.stateless_uniform(shape, seeds[i], lo, hi)
  apply_all = u(0, [k]) < p_all
  fire = (u(1, [k, NUM_OPS]) < p) & apply_all[:, None]

  # brightness / contrast (cheap: computed for all, blended by the flag)
  a = tf.where(fire[:, 0], u(2, [k], 0.8, 1.2), 1.0)
  b = tf.where(fire[:, 0], u(3, [k], -0.2, 0.2) * 255.0, 0.0)
  x = x * _bcast(a, 5) + _bcast(b, 5)
  # gamma (on the clipped image: a power of a negative number is undefined)
  g = tf.where(fire[:, 1], u(4, [k], 0.8, 1.2), 1.0)
  x = tf.clip_by_value(x, 0.0, 255.0)
  x = _apply_where(x, fire[:, 1], lambda xs, gs: 255.0 * tf.pow(xs / 255.0, _bcast(gs, 5)), g)
  # CLAHE (exact OpenCV, only for the examples that drew it)
  clip = u(5, [k], 1.0, 4.0)
  x = _apply_where(x, fire[:, 2], _clahe, clip)
  # hue / saturation / value
  hsv = u(6, [k, 3], -1.0, 1.0) * tf.constant([20.0, 50.0, 50.0])
  x = _apply_where(x, fire[:, 3], lambda xs, d: _hsv_shift(xs, d[:, 0], d[:, 1], d[:, 2]), hsv)
  # channel shuffle: argsort of 3 uniforms is a uniform random permutation
  perm = tf.argsort(u(7, [k, 3]), axis=-1)
  perm = tf.where(fire[:, 4:5], perm, tf.range(3)[None, :])
  x = tf.gather(x, perm, axis=4, batch_dims=1)
  # RGB shift
  shift = tf.where(fire[:, 5:6], u(8, [k, 3], -20.0, 20.0), 0.0)
  x = x + _bcast(shift, 5)
  # Gaussian noise, variance 10..50
  sigma = tf.sqrt(u(9, [k], 10.0, 50.0))
  x = _apply_where(x, fire[:, 6], _noise_fn(seeds[10]), sigma)
  return tf.clip_by_value(x, 0.0, 255.0)
