"""Data sources: a name for some rows, read as Arrow record batches of bounded size.

    SOURCE = PATH.parquet | GLOB*.parquet | PATH.csv | PATH.arrow (IPC file or stream)
           | duckdb:PATH.duckdb:TABLE | sql:SELECT ...   | an in-memory Arrow table

Only the columns the formula needs are read (projection pushdown).  Parquet is
read with pyarrow so that dictionary columns (pandas Categoricals) keep their
dictionary order, which fixes the level order of factors; CSV, DuckDB tables and
SQL are read by the embedded DuckDB.  A source can be read more than once: the
model needs one pass for the levels and one for the cross-products.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.ipc as ipc

from .errors import InputError

DEFAULT_BATCH_ROWS = 1 << 20


class Source(Protocol):
    """Rows that can be read, in batches, as often as needed."""

    @property
    def description(self) -> str: ...

    def schema(self) -> pa.Schema: ...

    def batches(self, columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]: ...


@dataclass(frozen=True)
class ArrowTableSource:
    """An Arrow table already in memory (tests, uploads, the Python API)."""

    table: pa.Table
    description: str = "arrow table"

    def schema(self) -> pa.Schema:
        return self.table.schema

    def batches(self, columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        yield from self.table.select(list(columns)).to_batches(max_chunksize=batch_rows)


@dataclass(frozen=True)
class ParquetSource:
    """One Parquet file, a directory or a glob of them, read with pyarrow."""

    paths: tuple[str, ...]
    description: str

    def _dataset(self) -> ds.Dataset:
        return ds.dataset(list(self.paths), format="parquet")

    def schema(self) -> pa.Schema:
        return self._dataset().schema

    def batches(self, columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        # bounded read-ahead: memory should follow the groups, not the rows in flight
        scanner = self._dataset().scanner(
            columns=list(columns), batch_size=batch_rows, batch_readahead=1, fragment_readahead=1
        )
        for batch in scanner.to_batches():
            if batch.num_rows:
                yield batch


@dataclass(frozen=True)
class ArrowIPCSource:
    """An Arrow IPC file or stream on disk (the service spools uploads to one)."""

    path: str
    description: str

    def _reader(self) -> pa.RecordBatchReader:
        try:
            return ipc.open_file(self.path).to_reader()  # type: ignore[attr-defined]
        except pa.ArrowInvalid:
            return ipc.open_stream(self.path)

    def schema(self) -> pa.Schema:
        return self._reader().schema

    def batches(self, columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        for batch in self._reader():
            batch = batch.select(list(columns))
            for offset in range(0, batch.num_rows, batch_rows):
                yield batch.slice(offset, batch_rows)


@dataclass(frozen=True)
class DuckDBSource:
    """A query over the embedded DuckDB: a CSV file, a database table or SQL."""

    relation_sql: str
    database: str | None
    description: str

    def _connect(self) -> duckdb.DuckDBPyConnection:
        if self.database is None:
            return duckdb.connect()
        return duckdb.connect(self.database, read_only=True)

    def _read(self, select: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
        con = self._connect()
        try:
            reader = con.sql(f"SELECT {select} FROM ({self.relation_sql}) AS src").to_arrow_reader(
                batch_rows
            )
            yield from reader
        except duckdb.Error as exc:
            raise InputError(f"cannot read {self.description}: {_one_line(exc)}", "data") from None
        finally:
            con.close()

    def schema(self) -> pa.Schema:
        con = self._connect()
        try:
            sql = f"SELECT * FROM ({self.relation_sql}) AS src LIMIT 0"
            return con.sql(sql).to_arrow_reader(1).schema
        except duckdb.Error as exc:
            raise InputError(f"cannot read {self.description}: {_one_line(exc)}", "data") from None
        finally:
            con.close()

    def batches(self, columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        select = ", ".join(_quote(c) for c in columns)
        for batch in self._read(select, batch_rows):
            if batch.num_rows:
                yield batch


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def open_source(spec: str | pa.Table | Source) -> Source:
    """Resolve a source name (see module docstring) to a Source."""
    if isinstance(spec, pa.Table):
        return ArrowTableSource(spec)
    if not isinstance(spec, str):
        return spec
    if spec.startswith("sql:"):
        return _sql_source(spec[4:].strip())
    if spec.startswith("duckdb:"):
        return _duckdb_table_source(spec)
    return _file_source(spec)


def _sql_source(query: str) -> Source:
    try:
        statements = duckdb.extract_statements(query) if query else []
    except duckdb.Error as exc:
        raise InputError(f"cannot parse the sql: source: {_one_line(exc)}", "data") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise InputError("an sql: source must be exactly one SELECT statement", "data")
    return DuckDBSource(query, None, "sql query")


def _duckdb_table_source(spec: str) -> Source:
    path, sep, table = spec[len("duckdb:") :].rpartition(":")
    if not sep or not path or not table:
        raise InputError(f"a duckdb source is 'duckdb:PATH.duckdb:TABLE', got '{spec}'", "data")
    if not os.path.isfile(path):
        raise InputError(f"DuckDB database '{path}' does not exist", "data")
    return DuckDBSource(f"SELECT * FROM {_quote(table)}", path, f"table '{table}' of {path}")


def _file_source(spec: str) -> Source:
    paths = sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec]
    if not paths or not all(os.path.exists(p) for p in paths):
        raise InputError(f"data source '{spec}' does not exist", "data")
    lower = paths[0].lower()
    if lower.endswith((".csv", ".csv.gz", ".tsv")):
        files = "[" + ", ".join(_sql_literal(p) for p in paths) + "]"
        # R's write.csv writes missing values as NA
        query = f"SELECT * FROM read_csv_auto({files}, nullstr = ['NA', ''])"
        return DuckDBSource(query, None, spec)
    if lower.endswith((".arrow", ".arrows", ".ipc", ".feather")):
        return ArrowIPCSource(paths[0], spec)
    if lower.endswith(".parquet") or os.path.isdir(paths[0]):
        return ParquetSource(tuple(paths), spec)
    raise InputError(
        f"cannot tell the format of '{spec}': use .parquet, .csv, .arrow, "
        "duckdb:PATH:TABLE or sql:SELECT ...",
        "data",
    )
