"""Data: from media files to training batches.

- ``audio``: wav loading and the mel-spectrogram features.
- ``timing``: the time rules linking video frames to mel steps (windows, chunks).
- ``video_io``: reading frames from videos and images; ``media``: the ffmpeg binary.
- ``face_detection``: face detectors and the box helpers (pad, smooth, crop).
- ``emotions``: the emotion table (codes, names, label ids) and emotion mixes.
- ``files``: paths the user types and outputs written atomically (checked first).
- ``augment``: the training augmentations.
- ``input_pipeline``: the tf.data pipelines over the preprocessed shards.
"""
