"""Cross-clip references (reference_sampling="other_clip") on real TFDS shards: the pairing rule,
determinism, and exact resume through the training loop's segment/skip rule."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from emogen_jax.data import input_pipeline as ip
from emogen_jax.errors import UserError
from emogen_jax.train import loop, recipe
from emogen_jax.train.stages import emogen as emogen_stage
from tests import _pipeline_fixtures as fx


@pytest.fixture(scope="module")
def data(preprocessed_data, tmp_path_factory):
  """The suite's tiny corpus rebuilt from its clip cache with the random (clip-level) split, so
  that the training split holds clips of all three actors (the actor split leaves it one)."""
  d = preprocessed_data
  data_dir = str(tmp_path_factory.mktemp("random_split"))
  fx.run_preprocess(["--src", d["src"], "--data-dir", data_dir, "--cache-dir", d["cache_dir"],
                     "--stage", "build", "--split", "random", "--jobs", "2"])
  import tensorflow_datasets as tfds
  clips = {}
  for ex in tfds.as_numpy(ip.dataset_builder(data_dir).as_dataset(split="train")):
    clips[ex["clip_id"].decode()] = {"actor": ex["actor"].decode(), "emotion": int(ex["emotion"]),
                                     "frames": np.stack([fx.decode_jpeg_cv2(j) for j in ex["frames"]]),
                                     "valid": ex["valid"]}
  return {"data_dir": data_dir, "clips": clips}


def _examples(it, n):
  batches = [next(it) for _ in range(n)]
  return {k: np.concatenate([b[k].reshape((-1,) + b[k].shape[2:]) for b in batches]) for k in batches[0]}


def test_the_corpus_can_test_the_rule(data):
  actors = {c["actor"] for c in data["clips"].values()}
  assert len(actors) >= 2
  for a in actors:  # every actor has several clips, all of different emotions
    emos = [c["emotion"] for c in data["clips"].values() if c["actor"] == a]
    assert len(emos) >= 2 and len(set(emos)) == len(emos)


@pytest.mark.parametrize("train", [True, False])
def test_reference_is_another_clip_of_the_same_actor_with_another_emotion(data, train):
  it = ip.create_dataset("generator", data["data_dir"], "train", per_device_batch=4, num_devices=1,
                         augment=False, with_metadata=True, seed=3, train=train, eval_windows=2,
                         reference_sampling="other_clip")
  if train:
    ex = _examples(it, 6)
    n = len(ex["mask"])
  else:  # the whole finite pass
    batches = list(it)
    ex = {k: np.concatenate([b[k].reshape((-1,) + b[k].shape[2:]) for b in batches]) for k in batches[0]}
    n = int(ex["mask"].sum())
  assert n >= 8
  targets = set()
  for i in range(n):
    cid, rid = ex["clip_id"][i].decode(), ex["ref_clip_id"][i].decode()
    clip, ref = data["clips"][cid], data["clips"][rid]
    targets.add(cid)
    assert rid != cid and ref["actor"] == clip["actor"]
    assert ex["emotion"][i] == clip["emotion"] and ex["ref_emotion"][i] == ref["emotion"]
    assert ref["emotion"] != clip["emotion"]  # every actor offers another emotion here
    f, g = int(ex["start"][i]), int(ex["other_start"][i])
    assert clip["valid"][f:f + 5].all() and ref["valid"][g:g + 5].all()
    np.testing.assert_array_equal(np.rint(ex["target"][i] * 255), clip["frames"][f:f + 5])
    np.testing.assert_array_equal(np.rint(ex["frames"][i, ..., 3:] * 255), ref["frames"][g:g + 5])
    assert not ex["frames"][i, ..., :3].any()
  assert len(targets) >= 3
  if not train:  # a finite pass: every clip is a target exactly eval_windows times
    ids = [c.decode() for c in ex["clip_id"][:n]]
    assert sorted(ids) == sorted(list(data["clips"]) * 2)


def test_reference_index_rule():
  pick = lambda emos, m: int(ip._reference_index(tf.constant(emos, tf.int64), tf.constant(m)))
  assert [pick([0, 0, 1, 1], m) for m in range(4)] == [2, 2, 0, 0]  # the next of another emotion
  assert [pick([3, 3, 3], m) for m in range(3)] == [1, 2, 0]        # none: the next clip
  assert pick([5], 0) == 0                                            # alone: itself


def test_same_seed_same_pairs_other_seed_other_pairs(data):
  mk = lambda seed: ip.create_dataset("generator", data["data_dir"], "train", per_device_batch=4,
                                      num_devices=1, seed=seed, with_metadata=True,
                                      reference_sampling="other_clip")
  a, b, c = _examples(mk(5), 4), _examples(mk(5), 4), _examples(mk(6), 4)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not (np.array_equal(a["ref_clip_id"], c["ref_clip_id"])
              and np.array_equal(a["frames"], c["frames"]))


def test_resume_inside_a_segment_sees_the_uninterrupted_batches(data):
  config = recipe.load_config("emogen", data_dir=data["data_dir"], batch_size=2,
                              data_segment_steps=4, reference_sampling="other_clip")
  run = lambda start: {s: b for s, b in loop.train_batches(
      config, emogen_stage, start_step=start, end_step=7, per_device_batch=2, log=lambda m: None)}
  whole, resumed = run(0), run(5)
  assert sorted(resumed) == [5, 6]
  for s in (5, 6):
    for k in whole[s]:
      np.testing.assert_array_equal(whole[s][k], resumed[s][k])
  assert not np.array_equal(whole[4]["frames"], whole[5]["frames"])


def test_unknown_mode_is_a_user_error(data):
  with pytest.raises(UserError, match="reference_sampling"):
    ip.create_dataset("generator", data["data_dir"], "train", per_device_batch=1, num_devices=1,
                      reference_sampling="neighbour")
  assert emogen_stage.REFERENCE_SAMPLING == ip.REFERENCE_SAMPLING
  with pytest.raises(UserError, match="config.reference_sampling='neighbour'"):
    emogen_stage.validate_config(recipe.load_config("emogen", reference_sampling="neighbour"))
  with pytest.raises(UserError, match="config.same_clip_fraction=-0.1"):
    emogen_stage.validate_config(recipe.load_config("emogen", same_clip_fraction=-0.1))


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_same_clip_fraction_mixes_in_the_original_reference(data, fraction):
  it = ip.create_dataset("generator", data["data_dir"], "train", per_device_batch=4, num_devices=1,
                         augment=False, with_metadata=True, seed=3, reference_sampling="other_clip",
                         same_clip_fraction=fraction)
  ex = _examples(it, 12)
  own = other = 0
  for i in range(len(ex["mask"])):
    cid, rid = ex["clip_id"][i].decode(), ex["ref_clip_id"][i].decode()
    clip, ref = data["clips"][cid], data["clips"][rid]
    f, g = int(ex["start"][i]), int(ex["other_start"][i])
    np.testing.assert_array_equal(np.rint(ex["frames"][i, ..., 3:] * 255), ref["frames"][g:g + 5])
    if rid == cid:  # the original's rule: another start of the target's own clip
      own += 1
      assert g != f and ex["ref_emotion"][i] == ex["emotion"][i]
    else:
      other += 1
      assert ref["actor"] == clip["actor"] and ref["emotion"] != clip["emotion"]
  if fraction == 1.0:
    assert other == 0
  else:  # both kinds, drawn per clip read (16 windows each)
    assert own >= 4 and other >= 4


def test_same_clip_fraction_is_deterministic_and_training_only(data):
  mk = lambda train, seed=5: ip.create_dataset(
      "generator", data["data_dir"], "train", per_device_batch=4, num_devices=1, seed=seed,
      train=train, with_metadata=True, reference_sampling="other_clip", same_clip_fraction=0.5)
  a, b = _examples(mk(True), 6), _examples(mk(True), 6)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  evaluation = list(mk(False))  # validation keeps the cross-clip references
  for batch in evaluation:
    assert (batch["clip_id"] != batch["ref_clip_id"]).all()
  with pytest.raises(UserError, match="same_clip_fraction=1.5"):
    ip.create_dataset("generator", data["data_dir"], "train", per_device_batch=1, num_devices=1,
                      reference_sampling="other_clip", same_clip_fraction=1.5)
