"""User-facing errors: one clear line naming the problem and the fix, never a deep traceback."""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import threading
from typing import Callable


class UserError(Exception):
  """An input the user can fix (a path, a flag, a file, a config value).

  The message is a single line that names the thing and says how to fix it.
  Command-line entry points print it as ``error: <message>`` and exit with status 2.
  """


class Terminated(KeyboardInterrupt):
  """SIGTERM received by a CLI. Raised like Ctrl-C's KeyboardInterrupt (which ``except
  Exception`` does not catch), so that every ``finally`` and context manager on the way out runs:
  temporary outputs are removed, nothing half-written stays behind."""


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose errors (a missing or malformed flag) are one ``UserError`` line, not usage text."""

  def error(self, message: str):
    raise UserError(f"{message} (see {self.prog} --help)")


def _raise_terminated(signum, frame):
  del signum, frame
  raise Terminated()


def cli_main(fn: Callable[..., int | None]) -> Callable[..., int]:
  """Wraps a CLI ``main``: a ``UserError`` becomes one line on stderr and exit code 2; Ctrl-C
  exits 130 and SIGTERM 143 after the cleanups have run (see ``Terminated``)."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs) -> int:
    previous = None
    if threading.current_thread() is threading.main_thread():
      previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
      code = fn(*args, **kwargs)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    except Terminated:
      print("terminated", file=sys.stderr)
      return 128 + signal.SIGTERM
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr)
      return 130
    finally:
      if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    return 0 if code is None else int(code)

  return wrapper
