"""``emogen_clips``: clip-level records (JPEG face crops, mel, labels, frame validity).

Stage 2 of ``data_tools.preprocess``. The manual directory is the clip cache written by
stage 1: ``<manual_dir>/clips/<clip_id>.pkl`` (one per clip, status "ok" or "skipped")
and ``<manual_dir>/splits.json`` ({split: [clip_id, ...]}). Each record holds:

* ``frames``: the clip's face crops, one JPEG per video frame (BGR crops encoded by
  OpenCV, so a JPEG decoder returns RGB; flip channels for BGR), 25 fps;
* ``valid``: bool per frame, False where the detector found no face (the crop there
  comes from an interpolated box and must not be trained on); frames are never
  dropped, so frame i stays aligned with the audio at i / 25 s;
* ``mel``: (80, T) float32 log-mel of the clip's 16 kHz mono audio (emogen_jax.data.audio);
* ``emotion`` (ClassLabel over EMOTIONS), ``intensity`` (XX/LO/MD/HI), ``actor``,
  ``sentence``, ``clip_id``, ``num_frames``.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import tensorflow_datasets as tfds

from emogen_jax.data.emotions import EMOTIONS, INTENSITIES

NAME = "emogen_clips"
VERSION = "1.0.0"


class EmogenClips(tfds.core.GeneratorBasedBuilder):
  """Talking-face clips preprocessed for EmoGen (CREMA-D naming, or any corpus with a labels CSV)."""

  name = NAME
  VERSION = tfds.core.Version(VERSION)
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  This dataset is built from your own videos (e.g. CREMA-D's VideoFlash/*.flv converted
  to 25 fps mp4, or MEAD with a labels CSV). Do not call download_and_prepare directly:
  run `python -m data_tools.preprocess --src VIDEO_DIR --data-dir DATA_DIR`; it detects
  faces, extracts audio into a per-clip cache (DATA_DIR/cache, the manual directory of
  this builder) and then builds this dataset from it.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "clip_id": tfds.features.Text(),
            "frames": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
            "valid": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
            "mel": tfds.features.Tensor(shape=(80, None), dtype=np.float32),
            "emotion": tfds.features.ClassLabel(names=list(EMOTIONS)),
            "intensity": tfds.features.ClassLabel(names=list(INTENSITIES)),
            "actor": tfds.features.Text(),
            "sentence": tfds.features.Text(),
            "num_frames": tfds.features.Scalar(dtype=np.int32),
        }),
    )

  def _split_generators(self, dl_manager):
    cache = os.fspath(dl_manager.manual_dir)
    with open(os.path.join(cache, "splits.json")) as f:
      splits = json.load(f)
    return {name: self._generate_examples(cache, ids) for name, ids in splits.items() if ids}

  def _generate_examples(self, cache, clip_ids):
    for cid in clip_ids:
      with open(os.path.join(cache, "clips", f"{cid}.pkl"), "rb") as f:
        rec = pickle.load(f)
      if rec.get("status") != "ok":
        continue
      yield cid, {
          "clip_id": cid,
          "frames": list(rec["frames"]),
          "valid": np.asarray(rec["valid"], np.bool_),
          "mel": np.asarray(rec["mel"], np.float32),
          "emotion": EMOTIONS.index(rec["emotion"]),
          "intensity": INTENSITIES.index(rec["intensity"]),
          "actor": rec["actor"],
          "sentence": rec["sentence"],
          "num_frames": len(rec["frames"]),
      }
