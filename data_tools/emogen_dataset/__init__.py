"""TFDS builder of the preprocessed clip dataset (manual input: the per-clip cache of data_tools.preprocess)."""

from data_tools.emogen_dataset.builder import EmogenClips, NAME, VERSION

__all__ = ["EmogenClips", "NAME", "VERSION"]
