"""Locating the ffmpeg binary: the system one, else the one bundled in imageio-ffmpeg's wheel."""

from __future__ import annotations

import functools
import shutil

from emogen_jax.errors import UserError


@functools.lru_cache(maxsize=None)
def ffmpeg_exe() -> str:
  exe = shutil.which("ffmpeg")
  if exe:
    return exe
  try:
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()
  except Exception as e:  # pragma: no cover - depends on the machine
    raise UserError("ffmpeg not found; install it (apt-get install ffmpeg) or `pip install imageio-ffmpeg`") from e
