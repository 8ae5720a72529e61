"""Graceful shutdown: running jobs get the grace period (and no more), queued jobs run
after the restart, interrupted ones are failed with the reason; an unreachable server
is one line and exit status 1."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparsemm.cli import main
from sparsemm.server import SparseMMServer
from sparsemm.server.store import JobRecord, JobStore
from sparsemm_client import Client
from tests.service_helpers import FORMULA, SLOW_FORMULA, config, data_root, free_port, wait_for

MEDIUM = "y ~ x + (1 | a) + (1 | b)"  # about a second: a 950 x 950 dense Schur block


def _crossed(n: int = 16_000, na: int = 2000, nb: int = 950) -> pa.Table:
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, na, n), rng.integers(0, nb, n)
    y = rng.normal(size=na)[a] + rng.normal(size=nb)[b] + rng.normal(size=n)
    return pa.table({"y": y, "x": rng.normal(size=n), "a": a.astype(str), "b": b.astype(str)})


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = data_root(tmp_path_factory.mktemp("shutdown"))
    pq.write_table(_crossed(), root / "crossed.parquet")
    return root


def _record(state: Path, job_id: str) -> JobRecord:
    store = JobStore(str(state))
    try:
        rec = store.get(job_id)
    finally:
        store.close()
    assert rec is not None
    return rec


def test_shutdown_waits_for_a_running_job_then_queued_jobs_run_after_restart(
    root: Path, tmp_path: Path
) -> None:
    cfg = config(root, tmp_path / "s.duckdb", None, workers=1)
    srv = SparseMMServer(cfg)
    with Client(f"127.0.0.1:{srv.start()}") as c:
        running = c.submit(MEDIUM, "crossed.parquet")
        queued = c.submit(FORMULA, "sleepstudy.parquet", ml=True)
        wait_for(lambda: c.job(running.job_id).state == "RUNNING", timeout=20)
    asked, started = time.time(), time.monotonic()
    srv.stop(grace=120)
    stopped = time.time()
    rec = _record(tmp_path / "s.duckdb", running.job_id)
    assert rec.state == "SUCCEEDED" and rec.finished_unix is not None  # finished in the grace
    assert asked < rec.finished_unix < stopped  # stop waited for it ...
    assert stopped - rec.finished_unix < 2.0 and time.monotonic() - started < 60  # ... no longer
    assert _record(tmp_path / "s.duckdb", queued.job_id).state == "QUEUED"
    srv = SparseMMServer(cfg)
    try:
        with Client(f"127.0.0.1:{srv.start()}") as c:
            assert c.wait(queued.job_id, timeout=20).to_dict()["method"] == "ML"
    finally:
        srv.stop(grace=0.5)


def test_shutdown_gives_a_long_job_the_grace_period_then_fails_it(
    root: Path, tmp_path: Path
) -> None:
    srv = SparseMMServer(config(root, tmp_path / "s.duckdb", None, workers=1))
    with Client(f"127.0.0.1:{srv.start()}") as c:
        job = c.submit(SLOW_FORMULA, "slow.parquet")
        wait_for(lambda: c.job(job.job_id).state == "RUNNING", timeout=20)
    started = time.monotonic()
    srv.stop(grace=1.5)
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 6.0, elapsed
    rec = _record(tmp_path / "s.duckdb", job.job_id)
    assert rec.state == "FAILED" and rec.error_code == "ABORTED"
    assert "shut down while this job was running" in (rec.error_message or "")


def test_an_unreachable_server_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    server = f"127.0.0.1:{free_port()}"  # nothing listens there
    for argv in (["fit", "--data", "x.parquet", "--formula", FORMULA, "--format", "json"],
                 ["anova", "--job", "a", "--job", "b"]):  # fmt: skip
        assert main([argv[0], "--quiet", "--server", server, *argv[1:]]) == 1
        out = capsys.readouterr()
        assert out.out == "" and out.err.count("\n") == 1
        assert out.err.startswith(f"sparsemm: error: cannot reach the sparsemm server at {server}")
