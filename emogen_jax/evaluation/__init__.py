"""Evaluation of trained models.

- ``metrics``: PSNR, SSIM, LSE-D/LSE-C, FID as functions of arrays.
- ``evaluate``: ``python -m emogen_jax.evaluate`` over a preprocessed split.
- ``sync_check``: ``python -m emogen_jax.sync_check``, finds out-of-sync clips with a SyncNet.
"""
