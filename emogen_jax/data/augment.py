"""The training augmentations, identical across the frames of one example.

``augment_examples(frames, seed)``: ``frames`` uint8 (K, T, H, W, 3) BGR (K examples of
T frames) -> float32 of the same shape in [0, 1]. Each example draws ONE set of
parameters used for all its T frames (for the generator T = 10: the 5 target and the 5
reference frames get the same transform), preserving the temporal and
target/reference consistency the models learn from.

With probability ``p_all`` (0.8) an example is augmented at all; then each of these
fires independently with probability ``p`` (0.3), applied in this order:

1. CLAHE: exact OpenCV CLAHE (8x8 tiles, clip limit ~ U[1, 4]) on the L channel of Lab;
2. hue/saturation/value shift: hue ~ U[-20, 20] in OpenCV units (180 = a full turn,
   wrapping), saturation and value ~ U[-50, 50] on 0..255, clipped (albumentations'
   HueSaturationValue on uint8);
3. brightness/contrast: x * a + 255 * b, a ~ U[0.8, 1.2], b ~ U[-0.2, 0.2];
4. gamma: 255 * (x / 255) ** g, g ~ U[0.8, 1.2];
5. RGB shift: a per-channel offset ~ U[-20, 20];
6. channel shuffle: a uniformly random permutation of the 3 channels;
7. Gaussian noise: variance ~ U[10, 50] on the 0..255 scale.

Implementation (chosen for speed; an example is 10 frames of 96x96): every parameter is
drawn with TF's stateless RNG from ``seed`` (so a seed gives the same augmentation on
every run whatever the parallelism). Ops 1-6 run on uint8 through ONE
``tf.numpy_function`` per batch that calls OpenCV only for the examples that drew
something: CLAHE per frame, the HSV shift as one colour conversion + LUT over the
example's frames at once, ops 3-5 composed into one 256-entry table per channel
(rounded/clipped to uint8 after each op, like albumentations' uint8 LUTs) applied with
one ``cv2.LUT`` call per example, the shuffle as a channel re-ordering. OpenCV releases
the GIL, so tf.data's parallel map scales; the same ops as pure TF kernels (gathers,
float pow, rgb_to_hsv) measured 3-6x slower. Op 7: one (H, W, 3) noise field per example
(drawn by TF's stateless RNG, only for the examples that drew the op) added to all its
frames (what albumentations does when the frames are additional targets of one call);
the addition, clipping and float conversion are dense ops that the input pipeline fuses
with its layout change into one XLA-compiled pass.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

P_ALL = 0.8
P_EACH = 0.3
OPS = ("clahe", "hsv", "brightness_contrast", "gamma", "rgb_shift", "channel_shuffle", "noise")


def point_lut(a: float, b: float, g: float, shift) -> np.ndarray:
  """Contrast a, brightness b (fraction of 255), gamma g, per-channel shift (3,) -> (1, 256, 3) uint8."""
  v = np.arange(256, dtype=np.float64)
  v = np.clip(np.rint(v * a + 255.0 * b), 0, 255)
  v = np.clip(np.rint(255.0 * (v / 255.0) ** g), 0, 255)
  return np.clip(v[:, None] + np.rint(np.asarray(shift, np.float64))[None, :], 0, 255).astype(np.uint8)[None]


def _cv2_numpy(x, fire, clip, hsv, a, b, g, shift, perm):
  """uint8 (K, T, H, W, 3) BGR -> ops 1-6 applied to the examples whose ``fire`` row says so."""
  import cv2
  out = x.copy()
  k, t, h, w, _ = x.shape
  ramp = np.arange(256, dtype=np.float64)
  for i in np.nonzero(fire[:, :6].any(axis=1))[0]:
    tall = out[i].reshape(t * h, w, 3)  # all frames as one image: one call per per-pixel op
    if fire[i, 0]:
      # Lab conversion is per pixel (one call for all frames); the CLAHE tiles are per frame.
      clahe = cv2.createCLAHE(clipLimit=float(clip[i]), tileGridSize=(8, 8))
      lab = cv2.cvtColor(tall, cv2.COLOR_BGR2LAB)
      for j in range(t):
        rows = slice(j * h, (j + 1) * h)
        lab[rows, :, 0] = clahe.apply(np.ascontiguousarray(lab[rows, :, 0]))
      tall[:] = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
    if fire[i, 1]:
      dh, ds, dv = (float(v) for v in hsv[i])
      lut = np.stack([np.mod(np.rint(ramp + dh), 180), np.clip(np.rint(ramp + ds), 0, 255),
                      np.clip(np.rint(ramp + dv), 0, 255)], axis=-1).astype(np.uint8)[None]
      tall[:] = cv2.cvtColor(cv2.LUT(cv2.cvtColor(tall, cv2.COLOR_BGR2HSV), lut), cv2.COLOR_HSV2BGR)
    if fire[i, 2:5].any():
      cv2.LUT(tall, point_lut(a[i], b[i], g[i], shift[i]), dst=tall)
    if fire[i, 5]:  # output channel c <- input channel perm[c] (8x faster than numpy fancy indexing)
      src = tall.copy()
      cv2.mixChannels([src], [tall], [int(perm[i, 0]), 0, int(perm[i, 1]), 1, int(perm[i, 2]), 2])
  return out


def augment_uint8(frames: tf.Tensor, seed: tf.Tensor, p_all: float = P_ALL, p: float = P_EACH):
  """Ops 1-6 on uint8 (K, T, H, W, 3) BGR; returns (frames uint8, noise_sigma (K,), noise_seed).

  ``noise_sigma`` is 0 for the examples that did not draw the Gaussian noise; pass the
  three to ``noise_fields`` and its result to ``to_unit_float`` (kept separate so that the
  float stage can be fused with what follows it).
  """
  x = tf.convert_to_tensor(frames)
  k = tf.shape(x)[0]
  seeds = tf.random.experimental.stateless_split(seed, num=12)
  u = lambda i, shape, lo=0.0, hi=1.0: tf.random.stateless_uniform(shape, seeds[i], lo, hi)
  apply_all = u(0, [k]) < p_all
  fire = (u(1, [k, len(OPS)]) < p) & apply_all[:, None]
  clip = u(2, [k], 1.0, 4.0)
  hsv = u(3, [k, 3], -1.0, 1.0) * tf.constant([20.0, 50.0, 50.0])
  a = tf.where(fire[:, 2], u(4, [k], 0.8, 1.2), 1.0)
  b = tf.where(fire[:, 2], u(5, [k], -0.2, 0.2), 0.0)
  g = tf.where(fire[:, 3], u(6, [k], 0.8, 1.2), 1.0)
  shift = tf.where(fire[:, 4:5], u(7, [k, 3], -20.0, 20.0), 0.0)
  perm = tf.argsort(u(8, [k, 3]), axis=-1)  # argsort of 3 uniforms: a uniform permutation

  def cv2_ops():
    y = tf.numpy_function(_cv2_numpy, [x, fire, clip, hsv, a, b, g, shift, perm], tf.uint8,
                          stateful=False)
    return tf.ensure_shape(y, x.shape)

  x = tf.cond(tf.reduce_any(fire[:, :6]), cv2_ops, lambda: x)
  sigma = tf.where(fire[:, 6], tf.sqrt(u(9, [k], 10.0, 50.0)), 0.0)  # variance 10..50
  return x, sigma, seeds[10]


def noise_fields(frames: tf.Tensor, sigma: tf.Tensor, noise_seed: tf.Tensor) -> tf.Tensor:
  """(K, 1, H, W, 3) float32: a Gaussian field of std ``sigma`` (0..255 scale) for the examples
  with sigma > 0, zeros for the others (only those fields are drawn)."""
  shape = tf.concat([tf.shape(frames)[:1], [1], tf.shape(frames)[2:]], 0)
  sel = tf.where(sigma > 0)
  drawn = tf.random.stateless_normal(tf.concat([tf.shape(sel)[:1], shape[1:]], 0), seed=noise_seed)
  drawn = drawn * tf.gather(sigma, sel[:, 0])[:, None, None, None, None]
  return tf.scatter_nd(tf.cast(sel, tf.int32), drawn, shape)


def to_unit_float(frames: tf.Tensor, noise: Optional[tf.Tensor] = None) -> tf.Tensor:
  """uint8 (K, T, H, W, 3) -> float32 in [0, 1], plus the (K, 1, H, W, 3) ``noise`` fields
  (one per example, shared by its T frames; 0..255 scale) when given, clipped.

  Dense elementwise ops without control flow, so that ``tf.function(jit_compile=True)``
  fuses cast, noise, clipping, scaling and whatever layout change follows into one pass
  (the input pipeline does that: ~6x cheaper than the same ops as separate TF kernels).
  The noise itself is drawn outside (``noise_fields``): XLA:CPU's Gaussian RNG is ~20x
  slower than TF's kernel.
  """
  x = tf.cast(frames, tf.float32)
  if noise is not None:
    x = tf.clip_by_value(x + noise, 0.0, 255.0)
  return x * (1.0 / 255.0)


def augment_examples(frames: tf.Tensor, seed: tf.Tensor, p_all: float = P_ALL,
                     p: float = P_EACH) -> tf.Tensor:
  """uint8 (K, T, H, W, 3) BGR -> float32 (K, T, H, W, 3) in [0, 1], augmented per example."""
  x, sigma, noise_seed = augment_uint8(frames, seed, p_all, p)
  return tf.function(to_unit_float, jit_compile=True)(x, noise_fields(x, sigma, noise_seed))
