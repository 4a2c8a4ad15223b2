"""Metric math on cases whose answer is known."""

import numpy as np
import pytest

from emogen_jax.evaluation import metrics


def _frames(seed, n=3, h=40, w=48):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_identical_videos_psnr_inf_ssim_one():
  a = _frames(0)
  assert metrics.psnr(a, a.copy()) == float("inf")
  assert metrics.ssim(a, a.copy()) == pytest.approx(1.0, abs=1e-12)


def test_psnr_known_value():
  a = np.zeros((4, 4, 3), np.uint8)
  b = a + 5  # mse 25 -> 10 log10(255^2 / 25)
  assert metrics.psnr(a, b) == pytest.approx(10 * np.log10(255.0 ** 2 / 25.0), rel=1e-12)


def test_ssim_drops_with_noise_and_is_symmetric():
  from skimage import data
  a = data.astronaut()[::4, ::4][None]
  noisy = np.clip(a.astype(int) + np.random.default_rng(2).integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
  s = metrics.ssim(a, noisy)
  assert 0.0 < s < 0.8
  assert metrics.ssim(noisy, a) == pytest.approx(s, abs=1e-9)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("k", [-7, -1, 0, 3, 15])
def test_offset_search_recovers_a_known_shift(k):
  rng = np.random.default_rng(10 + k)
  n, vs = 60, 15
  e = _unit(rng.normal(size=(n + 40, 64)))
  # video window i shows audio window i - k: the picture lags the sound by k frames.
  video = e[20:20 + n]
  audio = e[20 + k:20 + k + n]
  res = metrics.lse(video, audio, vshift=vs)
  assert res.offset == k
  assert res.curve.shape == (2 * vs + 1,)
  # Perfect match at the best shift except where the shifted audio falls off the clip (zeros).
  expected_min = abs(k) / n * 1.0  # unmatched windows compare a unit vector with 0 -> distance 1
  assert res.min_dist == pytest.approx(expected_min, abs=1e-9)
  assert res.confidence > 1.0  # random unit vectors in 64-d are ~sqrt(2) apart


def test_distance_curve_against_brute_force():
  rng = np.random.default_rng(3)
  v, a, vs = rng.normal(size=(9, 5)), rng.normal(size=(7, 5)), 4
  curve = metrics.sync_distance_curve(v, a, vshift=vs)
  for j, d in enumerate(range(-vs, vs + 1)):
    dists = []
    for i in range(len(v)):
      ai = i + d
      other = a[ai] if 0 <= ai < len(a) else np.zeros(5)
      dists.append(np.linalg.norm(v[i] - other))
    assert curve[j] == pytest.approx(np.mean(dists), rel=1e-12)


def test_offset_search_confidence_is_median_minus_min():
  curve = np.array([5.0, 4.0, 1.0, 6.0, 7.0])
  res = metrics.offset_search(curve)
  assert res.offset == 2 - 2 and res.min_dist == 1.0 and res.confidence == pytest.approx(5.0 - 1.0)
  res = metrics.offset_search(np.array([0.5, 4.0, 3.0, 6.0, 7.0]))
  assert res.offset == 2  # index 0 = shift -2 -> offset +2


def test_frechet_distance_known_gaussians():
  # Same covariance: FID reduces to the squared mean distance.
  s = np.diag([1.0, 2.0, 3.0])
  assert metrics.frechet_distance(np.zeros(3), s, np.array([1.0, 2.0, 2.0]), s) == pytest.approx(9.0, abs=1e-6)
  # 1-d: (mu1-mu2)^2 + s1 + s2 - 2 sqrt(s1 s2)
  assert metrics.frechet_distance(np.array([0.0]), np.array([[4.0]]), np.array([1.0]),
                                  np.array([[1.0]])) == pytest.approx(1 + 4 + 1 - 4, abs=1e-9)
  f = np.random.default_rng(0).normal(size=(500, 4))
  assert metrics.fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
  # general covariances: against scipy's matrix square root
  from scipy import linalg
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
  s1, s2 = a @ a.T, b @ b.T
  ref = np.trace(s1 + s2 - 2 * np.real(linalg.sqrtm(s1 @ s2)))
  assert metrics.frechet_distance(np.zeros(6), s1, np.zeros(6), s2) == pytest.approx(ref, rel=1e-8)


def test_fid_is_fast_and_finite_for_few_samples_in_high_dimension():
  import time
  rng = np.random.default_rng(0)
  f1, f2 = rng.normal(size=(15, 2048)), rng.normal(size=(15, 2048)) + 0.5
  t = time.perf_counter()
  fid = metrics.fid_from_features(f1, f2)
  assert time.perf_counter() - t < 5  # scipy.linalg.sqrtm needs minutes on this singular case
  assert np.isfinite(fid) and fid > 2048 * 0.25  # at least the squared mean shift
  assert metrics.fid_from_features(f1, f1) == pytest.approx(0.0, abs=1e-6)
  # the low-rank form agrees with the covariance form
  g1, g2 = rng.normal(size=(7, 10)), rng.normal(size=(9, 10)) * 2
  full = metrics.frechet_distance(g1.mean(0), np.cov(g1, rowvar=False), g2.mean(0),
                                  np.cov(g2, rowvar=False))
  assert metrics.fid_from_features(g1, g2) == pytest.approx(full, rel=1e-8)


def test_accuracy_and_confusion():
  pred, tgt = np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2])
  assert metrics.accuracy(pred, tgt) == 0.75
  m = metrics.confusion_matrix(pred, tgt, 3)
  assert m.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_per_target_text_names_what_a_weak_target_is_read_as():
  names = ["ANG", "DIS", "NEU"]
  # rows: target; DIS mostly read as NEU, NEU split evenly between ANG and itself (50 %: not weak)
  confusion = [[4, 0, 0], [0, 1, 3], [2, 0, 2]]
  per_target = {n: row[i] / sum(row) for i, (n, row) in enumerate(zip(names, confusion))}
  assert metrics.per_target_text(per_target, confusion) == \
      "ANG 100 %, DIS 25 % (read as NEU 3 of 4), NEU 50 %"
  assert metrics.per_target_text(per_target, confusion, below=0.6) == \
      "ANG 100 %, DIS 25 % (read as NEU 3 of 4), NEU 50 % (read as ANG 2 of 4)"
  assert metrics.per_target_text(per_target) == "ANG 100 %, DIS 25 %, NEU 50 %"  # no matrix
