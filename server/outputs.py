"""Tables written on the server: Parquet files under the ``--output-root`` directory.

A client may ask for the conditional modes or the fitted values to be written to a
path on the server instead of kept for streaming.  The same confinement as the data
roots, stricter where writing needs it:

- the path is relative to the root (or absolute under it, as written), has no ``..``
  component and ends in ``.parquet``;
- no component below the root may be a symlink (checked when asked, and again when
  written, by walking the directories with ``O_NOFOLLOW`` from the root's descriptor,
  so a symlink planted in between cannot redirect the write);
- an existing file is never replaced (ALREADY_EXISTS): the table goes to a temporary
  file in the same directory, then is hard-linked to its name, which fails if taken.

Missing directories below the root are created.  No grpc here: errors are
``OutputRefused`` with the name of a status code, mapped by the servicer or worker.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import PurePath

import pyarrow as pa
import pyarrow.parquet as pq

MAX_PATH_CHARS = 4_096
_DENIED, _INVALID = "PERMISSION_DENIED", "INVALID_ARGUMENT"


class OutputRefused(Exception):
    def __init__(self, message: str, code: str, field: str) -> None:
        super().__init__(message)
        self.message, self.code, self.field = message, code, field


@dataclass(frozen=True)
class OutputRoot:
    path: str  # a real path, a writable directory

    @staticmethod
    def open(path: str) -> OutputRoot:
        if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"--output-root {path}: not a writable directory")
        return OutputRoot(os.path.realpath(path))

    def target(self, given: str, field: str) -> str:
        """The absolute path to write ``given`` to, refused unless confined and free."""
        parts = self._parts(given, field)
        target = os.path.join(self.path, *parts)
        at = self.path
        for part in parts:
            at = os.path.join(at, part)
            if os.path.islink(at):
                raise OutputRefused(f"output path '{given}' goes through a symlink", _DENIED, field)
            if not os.path.exists(at):
                break
        if os.path.lexists(target):
            raise OutputRefused(f"output path '{given}' exists already", "ALREADY_EXISTS", field)
        return target

    def _parts(self, given: str, field: str) -> tuple[str, ...]:
        if not given.strip() or len(given) > MAX_PATH_CHARS or "\x00" in given:
            raise OutputRefused("output path is empty, too long or holds a NUL", _INVALID, field)
        if not given.endswith(".parquet"):
            raise OutputRefused(f"output path '{given}' must end in .parquet", _INVALID, field)
        path = PurePath(given)
        if ".." in path.parts:
            raise OutputRefused(f"output path '{given}' is outside the output root", _DENIED, field)
        if path.is_absolute():
            try:
                path = PurePath(os.path.normpath(given)).relative_to(self.path)
            except ValueError:
                message = f"output path '{given}' is outside the output root"
                raise OutputRefused(message, _DENIED, field) from None
        return tuple(p for p in path.parts if p not in ("", "."))


def write_parquet(table: pa.Table, target: str, root: str, field: str) -> None:
    """Write ``table`` to ``target`` (from ``OutputRoot.target``) without following a
    symlink below ``root`` and without replacing a file."""
    rel = PurePath(target).relative_to(root).parts
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in rel[:-1]:
            inner = _enter(fd, part, target, field)
            os.close(fd)
            fd = inner
        _write_new(table, fd, rel[-1], target, field)
    finally:
        os.close(fd)


def _enter(fd: int, name: str, target: str, field: str) -> int:
    """The descriptor of directory ``name`` in ``fd``, created if missing."""
    try:
        try:
            os.mkdir(name, 0o750, dir_fd=fd)
        except FileExistsError:
            pass
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
    except OSError:
        message = f"cannot write '{target}': not a plain directory"
        raise OutputRefused(message, _DENIED, field) from None


def _write_new(table: pa.Table, fd: int, name: str, target: str, field: str) -> None:
    tmp = f".{name}.{uuid.uuid4().hex}.tmp"
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640, dir_fd=fd)
    try:
        with os.fdopen(out, "wb") as f:
            pq.write_table(table, f)
        os.link(tmp, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
    except FileExistsError:
        raise OutputRefused(f"'{target}' exists already", "ALREADY_EXISTS", field) from None
    finally:
        os.unlink(tmp, dir_fd=fd)
