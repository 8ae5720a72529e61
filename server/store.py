"""The durable job store: one embedded DuckDB file (``--state PATH``).

One row per job: who submitted it, its task (JSON, enough to run it again), its
state, and when it ended its result (the contract JSON plus the residual quantiles)
or its error.  Large outputs live next to the file, under ``PATH.files/``.  DuckDB
locks the file, so two servers cannot share a state by accident.

After a restart ``recover`` fails the jobs that were running (the worker died with
the old server) and returns the queued ones so that they run again.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import duckdb

from .task import Task, task_from_json

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "QUEUED",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id VARCHAR PRIMARY KEY,
    owner VARCHAR NOT NULL,
    state VARCHAR NOT NULL,
    source_name VARCHAR NOT NULL,
    task_json VARCHAR NOT NULL,
    created_unix DOUBLE NOT NULL,
    started_unix DOUBLE,
    finished_unix DOUBLE,
    error_code VARCHAR,
    error_message VARCHAR,
    error_field VARCHAR,
    result_json VARCHAR,
    extras_json VARCHAR
)
"""
_COLUMNS = (
    "job_id, owner, state, source_name, task_json, created_unix, started_unix, "
    "finished_unix, error_code, error_message, error_field, result_json, extras_json"
)


@dataclass
class JobRecord:
    job_id: str
    owner: str
    state: str
    source_name: str
    task: Task
    created_unix: float
    started_unix: float | None = None
    finished_unix: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_field: str | None = None
    result_json: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_row(row: tuple[Any, ...]) -> JobRecord:
        job_id, owner, state, source_name, task_json, *times_and_errors, result, extras = row
        created, started, finished, code, message, fld = times_and_errors
        return JobRecord(
            job_id, owner, state, source_name, task_from_json(task_json), created, started,
            finished, code, message, fld, result, json.loads(extras) if extras else {},
        )  # fmt: skip


class JobStore:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.files_dir = self.path + ".files"
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        os.makedirs(self.files_dir, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._con = duckdb.connect(self.path)
        except duckdb.Error as exc:
            raise ValueError(f"--state {path}: cannot open the job store: {exc}") from None
        self._con.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def job_dir(self, job_id: str) -> str:
        return os.path.join(self.files_dir, "jobs", job_id)

    def upload_path(self, job_id: str) -> str:
        os.makedirs(os.path.join(self.files_dir, "uploads"), exist_ok=True)
        return os.path.join(self.files_dir, "uploads", f"{job_id}.arrows")

    def insert(self, rec: JobRecord) -> None:
        with self._lock:
            self._con.execute(
                f"INSERT INTO jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    rec.job_id,
                    rec.owner,
                    rec.state,
                    rec.source_name,
                    rec.task.to_json(),
                    rec.created_unix,
                    rec.started_unix,
                    rec.finished_unix,
                    rec.error_code,
                    rec.error_message,
                    rec.error_field,
                    rec.result_json,
                    json.dumps(rec.extras),
                ],
            )

    def started(self, job_id: str) -> None:
        self._update(job_id, state=RUNNING, started_unix=time.time())

    def finished(
        self,
        job_id: str,
        state: str,
        result_json: str | None = None,
        extras: dict[str, Any] | None = None,
        error: tuple[str, str, str] | None = None,
    ) -> None:
        code, message, fld = error if error is not None else (None, None, None)
        self._update(
            job_id,
            state=state,
            finished_unix=time.time(),
            result_json=result_json,
            extras_json=json.dumps(extras or {}),
            error_code=code,
            error_message=message,
            error_field=fld,
        )

    def _update(self, job_id: str, **values: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._lock:
            self._con.execute(
                f"UPDATE jobs SET {sets} WHERE job_id = ?", [*values.values(), job_id]
            )

    def get(self, job_id: str, owner: str | None = None) -> JobRecord | None:
        sql = f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?"
        args: list[Any] = [job_id]
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        with self._lock:
            row = self._con.execute(sql, args).fetchone()
        return JobRecord.from_row(row) if row else None

    def owned(self, owner: str, state: str | None, limit: int, offset: int) -> list[JobRecord]:
        sql = f"SELECT {_COLUMNS} FROM jobs WHERE owner = ?"
        args: list[Any] = [owner]
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        sql += " ORDER BY created_unix DESC, job_id LIMIT ? OFFSET ?"
        with self._lock:
            rows = self._con.execute(sql, [*args, limit, offset]).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def recover(self) -> list[JobRecord]:
        """Fail the jobs a previous server left running; return the queued ones, oldest first."""
        reason = "interrupted: the server stopped while this job was running; submit it again"
        with self._lock:
            self._con.execute(
                "UPDATE jobs SET state = ?, finished_unix = ?, error_code = 'ABORTED', "
                "error_message = ?, error_field = '' WHERE state = ?",
                [FAILED, time.time(), reason, RUNNING],
            )
            rows = self._con.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE state = ? ORDER BY created_unix", [QUEUED]
            ).fetchall()
        return [JobRecord.from_row(r) for r in rows]
