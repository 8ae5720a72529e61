"""DuckDB sources whose file access is confined to the data roots (worker side).

``sql:`` queries and ``duckdb:PATH:TABLE`` tables run in a DuckDB connection with
``allowed_directories`` set to the roots, external access otherwise disabled, no
extension loading, and the configuration locked, so neither a query nor a view
stored in a database can read outside the roots.  Relative paths in a query are
relative to the first root (the worker's working directory).  Implements the
solver's ``Source`` protocol.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from sparsemm.solver import InputError

FIELD = "source"


class AccessDenied(InputError):
    """The query tried to read outside the data roots."""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class ConfinedDuckDBSource:
    relation_sql: str
    roots: tuple[str, ...]
    database: str | None
    description: str

    def _connect(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(":memory:")
        dirs = ", ".join(_literal(r.rstrip(os.sep) + os.sep) for r in self.roots)
        con.execute(f"SET allowed_directories = [{dirs}]")
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        if self.database is not None:
            con.execute(f"ATTACH {_literal(self.database)} AS src (READ_ONLY)")
            con.execute("USE src")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except duckdb.PermissionException:
            raise AccessDenied(f"{self.description} reads outside the data roots", FIELD) from None
        except duckdb.Error as exc:
            raise InputError(f"cannot read {self.description}: {exc}", FIELD) from None

    def schema(self) -> pa.Schema:
        with self._errors():
            con = self._connect()
            try:
                sql = f"SELECT * FROM ({self.relation_sql}) AS src LIMIT 0"
                return con.sql(sql).to_arrow_reader(1).schema
            finally:
                con.close()

    def batches(self, columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        select = ", ".join(_quote(c) for c in columns)
        sql = f"SELECT {select} FROM ({self.relation_sql}) AS src"
        with self._errors():
            con = self._connect()
            try:
                for batch in con.sql(sql).to_arrow_reader(batch_rows):
                    if batch.num_rows:
                        yield batch
            finally:
                con.close()


def sql_source(query: str, roots: tuple[str, ...]) -> ConfinedDuckDBSource:
    return ConfinedDuckDBSource(query, roots, None, "the sql: query")


def table_source(database: str, table: str, roots: tuple[str, ...]) -> ConfinedDuckDBSource:
    name = os.path.basename(database)
    return ConfinedDuckDBSource(
        f"SELECT * FROM {_quote(table)}", roots, database, f"table '{table}' of {name}"
    )
