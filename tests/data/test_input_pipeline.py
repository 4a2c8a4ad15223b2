"""tf.data pipelines on real TFDS shards of the synthetic corpus: contents, sampling rules, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from emogen_jax.data import timing
from emogen_jax.data import augment as augment_lib
from emogen_jax.data import input_pipeline as ip
from emogen_jax.errors import UserError
from tests import _pipeline_fixtures as fx


@pytest.fixture(scope="module")
def data(preprocessed_data):
  d = preprocessed_data
  # every clip of the dataset with its stored frames decoded by OpenCV (BGR), validity and mel
  clips = {}
  import tensorflow_datasets as tfds
  b = ip.dataset_builder(d["data_dir"])
  for split in ip.SPLITS:
    for ex in tfds.as_numpy(b.as_dataset(split=split)):
      clips[ex["clip_id"].decode()] = {
          "split": split, "frames": np.stack([fx.decode_jpeg_cv2(j) for j in ex["frames"]]),
          "valid": ex["valid"], "mel": ex["mel"], "emotion": int(ex["emotion"])}
  return {**d, "clips": clips}


def _take(it, n):
  return [next(it) for _ in range(n)]


def _flat(batches):
  """list of (D, B, ...) batches -> dict of (N, ...) arrays."""
  return {k: np.concatenate([b[k].reshape((-1,) + b[k].shape[2:]) for b in batches]) for k in batches[0]}


def _assert_frames(got, want):
  """float [0,1] frames vs uint8 frames decoded by OpenCV: the same pixels (TF decodes like libjpeg ISLOW)."""
  np.testing.assert_array_equal(np.rint(got * 255.0), want.astype(np.float32))


def test_generator_batches_match_the_stored_clips(data):
  it = ip.create_dataset("generator", data["data_dir"], "train", per_device_batch=3, num_devices=2,
                         augment=False, with_metadata=True, seed=1)
  ex = _flat(_take(it, 3))
  assert ex["frames"].shape == (18, 5, 96, 96, 6) and ex["frames"].dtype == np.float32
  assert ex["mel"].shape == (18, 5, 80, 16, 1) and ex["sync_mel"].shape == (18, 80, 16, 1)
  assert ex["target"].shape == (18, 5, 96, 96, 3) and ex["emotion"].dtype == np.int32
  for i in range(18):
    clip = data["clips"][ex["clip_id"][i].decode()]
    assert clip["split"] == "train"
    f, g = int(ex["start"][i]), int(ex["other_start"][i])
    assert f >= 1 and g != f
    assert clip["valid"][f:f + 5].all() and clip["valid"][g:g + 5].all()
    _assert_frames(ex["target"][i], clip["frames"][f:f + 5])
    _assert_frames(ex["frames"][i, ..., 3:], clip["frames"][g:g + 5])
    assert not ex["frames"][i, ..., :3].any()  # the whole target is masked
    for t in range(5):  # frame f+t hears the mel window of frame f+t-1
      np.testing.assert_array_equal(ex["mel"][i, t, ..., 0], timing.mel_window(clip["mel"], f + t - 1))
    np.testing.assert_array_equal(ex["sync_mel"][i, ..., 0], timing.mel_window(clip["mel"], f))
    assert ex["emotion"][i] == clip["emotion"]


def test_syncnet_labels_follow_the_window_positions(data):
  it = ip.create_dataset("syncnet", data["data_dir"], "train", per_device_batch=8, num_devices=1,
                         augment=False, with_metadata=True, seed=3)
  ex = _flat(_take(it, 6))
  assert ex["frames"].shape == (48, 48, 96, 15) and ex["label"].dtype == np.float32
  assert set(ex) == {"mel", "frames", "label", "mask", "clip_id", "start", "other_start"}
  np.testing.assert_array_equal(ex["mask"], np.ones(48, np.float32))  # training streams: no padding
  assert 0.25 < ex["label"].mean() < 0.75
  for i in range(48):
    clip = data["clips"][ex["clip_id"][i].decode()]
    f, v = int(ex["start"][i]), int(ex["other_start"][i])  # v: where the faces come from
    assert ex["label"][i] == float(v == f)
    assert clip["valid"][v:v + 5].all()
    np.testing.assert_array_equal(ex["mel"][i, ..., 0], timing.mel_window(clip["mel"], f))
    # lower halves stacked frame-major: channel 3*t + c
    faces = ex["frames"][i].reshape(48, 96, 5, 3).transpose(2, 0, 1, 3)
    _assert_frames(faces, clip["frames"][v:v + 5, 48:])


def test_emotion_task_and_windows_only_over_valid_frames(data):
  split = data["clips"][fx.PARTIAL]["split"]  # sample the split holding the partially faceless clip
  it = ip.create_dataset("emotion", data["data_dir"], split, per_device_batch=16, num_devices=1,
                         augment=False, with_metadata=True, train=True, windows_per_clip=16)
  ex = _flat(_take(it, 8))
  assert ex["frames"].shape == (128, 5, 96, 96, 3) and set(ex) >= {"frames", "emotion"}
  for i in range(128):
    clip = data["clips"][ex["clip_id"][i].decode()]
    f = int(ex["start"][i])
    assert clip["valid"][f:f + 5].all()
    assert ex["emotion"][i] == clip["emotion"]
  _assert_frames(ex["frames"][0], data["clips"][ex["clip_id"][0].decode()]["frames"][ex["start"][0]:][:5])
  # the partially faceless clip: its windows avoid the blanked frames
  starts = ex["start"][ex["clip_id"] == fx.PARTIAL.encode()]
  assert len(starts) > 0
  for f in starts:
    assert not set(range(f, f + 5)) & set(fx.BLANK_FRAMES)


def test_same_seed_same_batches_other_seed_other_batches(data):
  mk = lambda seed: ip.create_dataset("generator", data["data_dir"], "train", per_device_batch=4,
                                      num_devices=1, seed=seed, with_metadata=True)
  a, b, c = _take(mk(0), 3), _take(mk(0), 3), _take(mk(1), 3)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x["target"], z["target"]) for x, z in zip(a, c))


def test_streams_run_without_the_autotuner(data):
  """Deleting a tf.data iterator joins the autotuner's thread, which sleeps between its rounds
  (up to ~20 s measured): with it, every training stream re-created at a checkpoint segment
  stalled the loop that long. Every stream, train and eval, is built without it."""
  for task, train in (("syncnet", True), ("generator", True), ("emotion", False)):
    split = "train" if train else "validation"
    it = ip.create_dataset(task, data["data_dir"], split, per_device_batch=2, num_devices=1, seed=0,
                           train=train)
    assert it.dataset.options().autotune.enabled is False, task
    assert next(it)["frames"].shape[:2] == (1, 2)
    it.close()


def test_whole_clip_reads_run_without_the_autotuner(data, monkeypatch):
  """The evaluation reads whole clips; with the autotuner the end of a split stood still ~23 s
  in 2 of 3 quickstart evaluations (the iterator's teardown waiting for the autotuner's sleep)."""
  from emogen_jax.evaluation import evaluate as ev
  ds = ip.read_clips(data["data_dir"], "validation")
  assert ds.options().autotune.enabled is False
  made = []

  def recorded(*args):
    made.append(ip_read_clips(*args))
    return made[-1]

  ip_read_clips = ip.read_clips
  monkeypatch.setattr(ip, "read_clips", recorded)
  clips = list(ev.iter_clips(data["data_dir"], "validation"))
  ev.neutral_references(data["data_dir"], "validation")
  assert len(made) == 2 and all(d.options().autotune.enabled is False for d in made)
  assert [c["clip_id"] for c in clips] == [ex["clip_id"].decode() for ex in ds.as_numpy_iterator()]


def test_eval_streams_are_deterministic_finite_and_balanced(data):
  n_clips = sum(c["split"] == "validation" for c in data["clips"].values())
  mk = lambda: list(ip.create_dataset("syncnet", data["data_dir"], "validation", per_device_batch=3,
                                      num_devices=2, train=False, with_metadata=True, eval_windows=2))
  a, b = mk(), mk()
  n = n_clips * 2 * 2  # 2 windows per clip, each in sync and off sync
  assert len(a) == math.ceil(n / 6)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  ex = _flat(a)
  first = {k: v[:n] for k, v in ex.items()}
  assert first["label"].mean() == 0.5
  for i in range(n):
    assert first["label"][i] == float(first["start"][i] == first["other_start"][i])
  # the padding of the last batch cycles from the first examples, and is masked out
  np.testing.assert_array_equal(ex["frames"][n:], ex["frames"][:len(ex["frames"]) - n])
  assert ex["mask"].dtype == np.float32 and a[-1]["mask"].shape == (2, 3)
  np.testing.assert_array_equal(ex["mask"], (np.arange(len(ex["mask"])) < n).astype(np.float32))
  # a batch size that does not divide the split: the cycled copies get mask 0
  gen = _flat(list(ip.create_dataset("generator", data["data_dir"], "validation", per_device_batch=5,
                                     num_devices=1, train=False, with_metadata=True, eval_windows=2)))
  m = n_clips * 2
  assert len(gen["mask"]) == 5 * math.ceil(m / 5) > m
  np.testing.assert_array_equal(gen["mask"], (np.arange(len(gen["mask"])) < m).astype(np.float32))
  np.testing.assert_array_equal(gen["start"][m:], gen["start"][:len(gen["start"]) - m])
  assert len(set(zip(gen["clip_id"][:m], gen["start"][:m]))) == m  # the real examples are distinct
  # no augmentation: the faces are the stored frames
  clip = data["clips"][first["clip_id"][0].decode()]
  v = int(first["other_start"][0])
  _assert_frames(first["frames"][0].reshape(48, 96, 5, 3).transpose(2, 0, 1, 3), clip["frames"][v:v + 5, 48:])
  # repeat=True keeps cycling in the same order
  rep = ip.create_dataset("syncnet", data["data_dir"], "validation", per_device_batch=3, num_devices=2,
                          train=False, repeat=True)
  more = _take(rep, len(a) + 2)
  np.testing.assert_array_equal(more[0]["frames"], a[0]["frames"])
  assert all(m["mask"].all() for m in more)  # cycling forever: nothing is padding


def test_per_host_sharding_splits_the_clips(data):
  ids = []
  for p in range(2):
    ds, n = ip.build_tf_dataset("emotion", data["data_dir"], "train", global_batch=1, train=False,
                                with_metadata=True, eval_windows=1, process_index=p, process_count=2)
    ids.append({x["clip_id"][0] for x in ds.as_numpy_iterator()})
  n_train = sum(c["split"] == "train" for c in data["clips"].values())
  assert not ids[0] & ids[1]
  assert len(ids[0] | ids[1]) == n_train


def test_hosts_agree_on_the_evaluation_pass_length(data):
  """Shards of an odd number of clips give passes of different lengths; padded to the longest
  (mask 0), every host runs the same number of pmapped evaluation steps and still counts each
  of its real examples once."""
  n_train = sum(c["split"] == "train" for c in data["clips"].values())
  assert n_train % 2 == 1  # the shards differ by a clip
  want = ip.eval_pass_batches("syncnet", data["data_dir"], "train", global_batch=2, eval_windows=1,
                              process_count=2)
  assert want[0] != want[1]
  for p in range(2):
    ds, n = ip.build_tf_dataset("syncnet", data["data_dir"], "train", global_batch=2, train=False,
                                eval_windows=1, process_index=p, process_count=2)
    assert len(list(ds.as_numpy_iterator())) == want[p] == -(-n // 2)
    padded, n2 = ip.build_tf_dataset("syncnet", data["data_dir"], "train", global_batch=2,
                                     train=False, eval_windows=1, process_index=p, process_count=2,
                                     min_batches=max(want))
    batches = list(padded.as_numpy_iterator())
    assert n2 == n and len(batches) == max(want)
    assert sum(float(b["mask"].sum()) for b in batches) == n


def test_augmentation_is_identical_across_frames_and_changes_examples():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (16, 1, 96, 96, 3), dtype=np.uint8)
  frames = np.repeat(img, 10, axis=1)  # 16 examples of 10 identical frames
  out = augment_lib.augment_examples(tf.constant(frames), tf.constant([5, 6], tf.int64)).numpy()
  assert out.shape == frames.shape and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_array_equal(out, np.repeat(out[:, :1], 10, axis=1))  # same transform on every frame
  changed = np.abs(out - frames / 255.0).reshape(16, -1).max(axis=1) > 2 / 255
  assert 4 <= changed.sum() <= 16  # p(augmented) ~ 0.8 * (1 - 0.7^7) ~ 0.74
  again = augment_lib.augment_examples(tf.constant(frames), tf.constant([5, 6], tf.int64)).numpy()
  np.testing.assert_array_equal(out, again)
  # the point-operation table: contrast 1.2, brightness +0.1, gamma 1, shift (0, 10, -300)
  lut = augment_lib.point_lut(1.2, 0.1, 1.0, (0, 10, -300))[0]
  v = np.arange(256)
  np.testing.assert_array_equal(lut[:, 0], np.clip(np.rint(v * 1.2 + 25.5), 0, 255))
  np.testing.assert_array_equal(lut[:, 1], np.clip(np.clip(np.rint(v * 1.2 + 25.5), 0, 255) + 10, 0, 255))
  assert not lut[:, 2].any()


def test_augmented_training_batches_stay_in_range(data):
  it = ip.create_dataset("generator", data["data_dir"], "train", per_device_batch=8, num_devices=1, seed=0)
  b = next(it)
  for k in ("frames", "target"):
    assert 0.0 <= b[k].min() and b[k].max() <= 1.0
  assert not b["frames"][..., :3].any()
  assert tf.config.get_visible_devices("GPU") == []


def test_user_errors(data, tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    ip.create_dataset("generator", str(tmp_path / "nope"), "train", per_device_batch=1, num_devices=1)
  with pytest.raises(UserError, match="no preprocessed dataset"):
    ip.dataset_info(str(tmp_path))
  with pytest.raises(UserError, match="empty or missing"):
    ip.create_dataset("generator", data["data_dir"], "dev", per_device_batch=1, num_devices=1)
  with pytest.raises(UserError, match="unknown task"):
    ip.create_dataset("lipsync", data["data_dir"], "train", per_device_batch=1, num_devices=1)
  with pytest.raises(UserError, match="per_device_batch"):
    ip.create_dataset("generator", data["data_dir"], "train", per_device_batch=0, num_devices=1)
  info = ip.dataset_info(data["data_dir"])
  assert info["splits"] == {s: sum(c["split"] == s for c in data["clips"].values()) for s in ip.SPLITS}
  assert info["report"]["clips_written"] == info["splits"]


def test_training_config_sets_the_windows_drawn_per_clip(data):
  """config.windows_per_clip reaches the training stream: with no example shuffle, runs of that
  many consecutive examples share a clip (and so its emotion), where the default's 16 do."""
  from emogen_jax.train import loop, recipe, stages
  stage = stages.get("emotion_disc")

  def emotions(**overrides):
    config = recipe.load_config("emotion_disc", data_dir=data["data_dir"], shuffle_buffer=1,
                                **overrides)
    it = loop.make_stream(config, stage, "train", seed=0, per_device_batch=8)
    return np.concatenate([next(it)["emotion"].reshape(-1) for _ in range(4)])

  two, default = emotions(windows_per_clip=2), emotions()
  assert (two[0::2] == two[1::2]).all()
  assert (two[1:-1:2] != two[2::2]).sum() >= 4  # 16 clips in 32 examples (16 windows: 2 clips)
  assert (default[:16] == default[0]).all() and (default[16:] == default[16]).all()
