"""Paths the user types, and outputs written whole or not at all.

Every CLI and the notebook API go through these helpers, so that a path works however it is
typed (relative, ``~``, spaces, non-ASCII) and an output is either the finished file or absent:

* ``user_path``: ``~`` expanded and made absolute (orbax refuses relative paths, and a later
  change of directory must not change which file is meant).
* ``input_file``: an existing file, or one line saying it is missing or is a folder.
* ``check_output_file`` / ``check_output_dir``: run BEFORE any work, so a long run cannot fail at
  its end on an unwritable folder: the parent folder exists and is writable, the output is not a
  folder (a file), an existing output is replaced only by the same kind of output.
* ``atomic_file`` / ``atomic_dir``: the output is written under a hidden temporary name in its
  own folder (so the final rename never crosses filesystems, i.e. never copies) and renamed into
  place only when complete; on any failure, Ctrl-C or SIGTERM (``errors.cli_main`` turns SIGTERM
  into an exception so that this cleanup runs) the temporary is removed.
* ``made_dirs``: creates an output folder and removes what it created if the run fails, so a
  failed run leaves no empty folders behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Callable, Iterator, Sequence

from emogen_jax.errors import UserError

TEMP_MARK = ".tmp-"  # hidden temporaries are named .<name>.tmp-<random>[.ext]


def user_path(path: str | os.PathLike) -> str:
  """``path`` as typed by a user -> an absolute path (``~`` expanded, symlinks kept)."""
  return os.path.abspath(os.path.expanduser(os.fspath(path)))


def input_file(path: str | os.PathLike, what: str, hint: str = "check the path") -> str:
  """The absolute path of an existing file ``what`` (e.g. "face file"); a UserError otherwise."""
  p = user_path(path)
  if os.path.isdir(p):
    raise UserError(f"{what} {os.fspath(path)!r} is a folder, not a file; {hint}")
  if not os.path.isfile(p):
    raise UserError(f"{what} {os.fspath(path)!r} does not exist; {hint}")
  return p


def _check_parent(path: str, flag: str) -> None:
  parent = os.path.dirname(path)
  if not os.path.isdir(parent):
    what = "is a file" if os.path.exists(parent) else "does not exist"
    raise UserError(f"{flag}: the folder {parent!r} {what}; create it or choose another {flag}")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"{flag}: the folder {parent!r} is not writable; choose another {flag}")


def check_output_file(path: str | os.PathLike, flag: str, extensions: Sequence[str] = (),
                      kind: str = "") -> str:
  """Checks that ``path`` can be written as a file; returns it absolute.

  extensions: accepted endings (lower case, with the dot); an existing file is replaced only when
  it has one of them, i.e. is the same kind of output. kind: its name in messages ("mp4 video").
  """
  p = user_path(path)
  kind = kind or (extensions[0].lstrip(".") + " file" if extensions else "file")
  if extensions and not p.lower().endswith(tuple(extensions)):
    raise UserError(f"{flag} {os.fspath(path)!r} must end in {' or '.join(extensions)} "
                    f"(it is written as a {kind})")
  if os.path.isdir(p):
    raise UserError(f"{flag} {os.fspath(path)!r} is a folder; give the path of the {kind} to write")
  if os.path.lexists(p) and not os.path.isfile(p):
    raise UserError(f"{flag} {os.fspath(path)!r} exists and is not a regular file; choose another {flag}")
  _check_parent(p, flag)
  if os.path.exists(p) and not os.access(p, os.W_OK):
    raise UserError(f"{flag} {os.fspath(path)!r} exists and is read-only; choose another {flag}")
  return p


def check_output_dir(path: str | os.PathLike, flag: str, kind: str = "output folder",
                     is_same_kind: Callable[[str], bool] | None = None,
                     parents: bool = True) -> str:
  """Checks that ``path`` can be (created and) written as a folder; returns it absolute.

  An existing folder must be writable and, when ``is_same_kind`` is given and the folder is not
  empty, hold the same kind of output (it may be replaced or added to); parents=True allows
  missing parent folders (created by ``made_dirs``), as long as the nearest existing one is a
  writable folder.
  """
  p = user_path(path)
  if os.path.exists(p) and not os.path.isdir(p):
    raise UserError(f"{flag} {os.fspath(path)!r} is a file, not a folder; give the {kind} to write")
  if os.path.isdir(p):
    if not os.access(p, os.W_OK | os.X_OK):
      raise UserError(f"{flag} {os.fspath(path)!r} is not writable; choose another {flag}")
    if is_same_kind is not None and os.listdir(p) and not is_same_kind(p):
      raise UserError(f"{flag} {os.fspath(path)!r} already holds something else than a {kind}; "
                      f"remove it or choose another {flag}")
    return p
  if not parents:
    _check_parent(p, flag)
    return p
  q = os.path.dirname(p)
  while not os.path.exists(q):
    q = os.path.dirname(q)
  if not os.path.isdir(q):
    raise UserError(f"{flag} {os.fspath(path)!r}: {q!r} is a file, not a folder")
  if not os.access(q, os.W_OK | os.X_OK):
    raise UserError(f"{flag} {os.fspath(path)!r}: the folder {q!r} is not writable; choose "
                    f"another {flag}")
  return p


def temp_name(path: str) -> str:
  """A fresh hidden name next to ``path`` that keeps its extension (ffmpeg picks the format by it)."""
  folder, name = os.path.split(user_path(path))
  ext = os.path.splitext(name)[1]
  return os.path.join(folder, f".{name}{TEMP_MARK}{uuid.uuid4().hex[:8]}{ext}")


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.lexists(path):
    try:
      os.remove(path)
    except OSError:
      pass


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path in ``path``'s folder to write; renamed onto ``path`` when the block
  ends normally, removed when it raises (including KeyboardInterrupt and errors.Terminated)."""
  final = user_path(path)
  tmp = temp_name(final)
  try:
    yield tmp
    if not os.path.isfile(tmp):
      raise UserError(f"nothing was written to {final}")
    os.replace(tmp, final)
  except BaseException:
    _remove(tmp)
    raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[str]:
  """Like ``atomic_file`` for a folder: the block fills a temporary folder (not yet created) that
  replaces ``path`` (and what it held) at the end; a failure leaves ``path`` as it was."""
  final = user_path(path)
  tmp = temp_name(final)
  old = None
  try:
    yield tmp
    if not os.path.isdir(tmp):
      raise UserError(f"nothing was written to {final}")
    if os.path.lexists(final):
      old = temp_name(final)
      os.replace(final, old)
    os.replace(tmp, final)
  except BaseException:
    _remove(tmp)
    if old is not None and not os.path.lexists(final):
      os.replace(old, final)  # put the previous output back
      old = None
    raise
  finally:
    if old is not None:
      _remove(old)


@contextlib.contextmanager
def made_dirs(path: str | os.PathLike) -> Iterator[str]:
  """Creates folder ``path`` and its missing parents; if the block raises, removes the outermost
  one it created when no file was written under it (a failed run leaves no empty folders)."""
  p = user_path(path)
  top = None
  q = p
  while not os.path.exists(q):
    top = q
    q = os.path.dirname(q)
  try:
    os.makedirs(p, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create the folder {p!r} ({e.strerror})") from None
  try:
    yield p
  except BaseException:
    if top is not None and not any(names for _, _, names in os.walk(top)):
      shutil.rmtree(top, ignore_errors=True)
    raise


def write_file(path: str | os.PathLike, data: str | bytes) -> str:
  """Writes ``data`` (text as UTF-8) to ``path`` atomically; returns the absolute path."""
  if isinstance(data, str):
    data = data.encode("utf-8")
  with atomic_file(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
  return user_path(path)
