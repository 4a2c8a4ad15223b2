"""Inference: a face video or image + speech + an emotion -> a talking-face video.

- ``renderer``: the core (face boxes, generator batches, paste-back, the frame/mel schedule).
- ``stream``: the threaded stream (decode and detect, generate, paste) with bounded queues.
- ``cli``: ``python -m emogen_jax.infer``.
- ``api``: the notebook API (``TalkingFace``).
"""
