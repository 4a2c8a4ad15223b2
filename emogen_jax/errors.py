"""User-facing errors: one clear line naming the problem and the fix, never a deep traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable


class UserError(Exception):
  """An input the user can fix (a path, a flag, a file, a config value).

  The message is a single line that names the thing and says how to fix it.
  Command-line entry points print it as ``error: <message>`` and exit with status 2.
  """


def cli_main(fn: Callable[..., int | None]) -> Callable[..., int]:
  """Wraps a CLI ``main`` so that a ``UserError`` becomes one line on stderr and exit code 2."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs) -> int:
    try:
      code = fn(*args, **kwargs)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr)
      return 130
    return 0 if code is None else int(code)

  return wrapper
