"""Confining server-side sources to the data roots.

A client names a source as in DESIGN.md §5; the server resolves it under its
``--data-root`` directories and refuses anything else:

- a path with a ``..`` component, or one outside every root (checked on the path as
  written, before looking at the disk, so the answer does not reveal what exists
  outside the roots), then again on its real path (no symlink escapes);
- relative paths are looked up under each root in turn; a directory or glob is
  checked file by file;
- ``duckdb:PATH:TABLE`` confines PATH; ``sql:`` queries run in a DuckDB whose
  file access is restricted to the roots (``confined``), so they are checked there.

The solver then reads the resolved real paths, not what the client wrote.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import duckdb
import grpc

from .errors import ServiceError, invalid
from .task import SourceRef

FIELD = "source"
MAX_SOURCE_CHARS = 16_384


def _denied(spec: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.PERMISSION_DENIED, f"source '{spec}' is outside the data roots", FIELD
    )


def _missing(spec: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.NOT_FOUND, f"source '{spec}' does not exist under the data roots", FIELD
    )


class DataRoots:
    """The directories a server may read data from (real paths, checked at start-up)."""

    def __init__(self, roots: list[str] | tuple[str, ...]) -> None:
        if not roots:
            raise ValueError("at least one --data-root is needed")
        real = []
        for r in roots:
            if not os.path.isdir(r):
                raise ValueError(f"--data-root {r}: not a directory")
            real.append(os.path.realpath(r))
        self.roots = tuple(real)

    def within(self, path: str) -> bool:
        return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots)

    def resolve(self, spec: str) -> SourceRef:
        if not spec.strip():
            raise invalid("source is empty: name a file, glob, duckdb:PATH:TABLE or sql:", FIELD)
        if len(spec) > MAX_SOURCE_CHARS or "\x00" in spec:
            raise invalid("source is too long or holds a NUL character", FIELD)
        if spec.startswith("sql:"):
            return self._sql(spec)
        if spec.startswith("duckdb:"):
            path, sep, table = spec[len("duckdb:") :].rpartition(":")
            if not sep or not path or not table:
                raise invalid(f"a duckdb source is 'duckdb:PATH.duckdb:TABLE', got '{spec}'", FIELD)
            _, real = self._files(path, spec)
            if len(real) != 1 or not os.path.isfile(real[0]):
                raise invalid(f"'{path}' is not a DuckDB database file", FIELD)
            return SourceRef("duckdb", real[0], table, self.roots)
        return self._path_source(spec)

    def _sql(self, spec: str) -> SourceRef:
        query = spec[4:].strip()
        try:
            statements = duckdb.extract_statements(query) if query else []
        except duckdb.Error as exc:
            raise invalid(f"cannot parse the sql: source: {exc}", FIELD) from None
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise invalid("an sql: source must be exactly one SELECT statement", FIELD)
        return SourceRef("sql", query, "", self.roots)

    def _path_source(self, spec: str) -> SourceRef:
        pattern, real = self._files(spec, spec)
        return SourceRef("path", pattern if _is_glob(spec) else real[0], "", self.roots)

    def _candidates(self, path: str) -> list[str]:
        """Absolute spellings of ``path`` that lie (as written) under a root."""
        if ".." in Path(path).parts:
            raise _denied(path)
        if os.path.isabs(path):
            absolute = os.path.normpath(path)
            if not self.within(absolute):
                raise _denied(path)
            return [absolute]
        return [os.path.normpath(os.path.join(r, path)) for r in self.roots]

    def _files(self, path: str, spec: str) -> tuple[str, list[str]]:
        """The first spelling of ``path`` under a root that exists, and the real paths it
        names (a file, a directory, a glob's matches), all checked to be under a root."""
        for candidate in self._candidates(path):
            matches = sorted(glob.glob(candidate)) if _is_glob(path) else [candidate]
            matches = [m for m in matches if os.path.exists(m)]
            if matches:
                return candidate, self._confined(matches, spec)
        raise _missing(spec)

    def _confined(self, matches: list[str], spec: str) -> list[str]:
        out = []
        for m in matches:
            real = os.path.realpath(m)
            if not self.within(real):
                raise _denied(spec)
            if os.path.isdir(real):
                for base, dirs, names in os.walk(real):
                    for name in dirs + names:
                        if not self.within(os.path.realpath(os.path.join(base, name))):
                            raise _denied(spec)
            out.append(real)
        return out


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")
