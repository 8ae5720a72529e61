"""Admission control by estimated memory: ``solver.memory.estimate``, the server's
``MemoryBudget``, and fits refused (RESOURCE_EXHAUSTED) or waiting for memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparsemm import solver
from sparsemm.server import ConfigError, ServerConfig, SparseMMServer
from sparsemm.server.admission import MemoryBudget
from sparsemm.solver.memory import FIT_OVERHEAD_BYTES, MB, estimate, symbolic_nnz_L
from sparsemm_client import Client, Progress, SparsemmError
from tests.service_helpers import CODE, FORMULA, SLOW_FORMULA, config, data_root, running, wait_for

CROSSED = "y ~ x + (1 | a) + (1 | b)"  # a dense Schur block of 600 x 600: ~17 MB


def _crossed(n: int = 8000, na: int = 1000, nb: int = 600) -> pa.Table:
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, na, n), rng.integers(0, nb, n)
    y = rng.normal(size=na)[a] + rng.normal(size=nb)[b] + rng.normal(size=n)
    return pa.table({"y": y, "x": rng.normal(size=n), "a": a.astype(str), "b": b.astype(str)})


def test_estimate_follows_the_factor_the_fit_uses() -> None:
    data = solver.prepare(CROSSED, _crossed())
    schur = estimate(data)
    assert schur.factor == "dense Schur complement" and schur.n2 == 600 and schur.q == 1600
    assert FIT_OVERHEAD_BYTES + 6 * 8 * 600**2 <= schur.total_bytes < FIT_OVERHEAD_BYTES + 30 * MB
    assert "600 x 600" in schur.describe() and schur.describe().startswith("~")
    sparse = estimate(data, ordering="metis")  # CHOLMOD: nnz(L) from symbolic analysis
    model = solver.LinearMixedModel(data, ordering="metis")
    model.solve(model.tmap.start())
    assert sparse.factor == "CHOLMOD" and sparse.exact_L
    assert 0.7 * model.pls.nnz_L() <= sparse.nnz_L <= model.pls.nnz_L()  # supernodes pad
    glmm = solver.prepare(
        "cbind(incidence, size - incidence) ~ period + (1 | herd)",
        str(Path(__file__).parent / "data" / "cbpp.parquet"),
        family="binomial",
    )
    assert estimate(glmm).rows_bytes > 0 and estimate(data).rows_bytes == 0  # fmt: skip


def test_symbolic_nnz_L_is_exact_for_a_simplicial_factor() -> None:
    import scipy.sparse as sp
    from sksparse.cholmod import analyze

    rng = np.random.default_rng(1)
    A = sp.random(300, 300, density=0.01, random_state=rng, format="csc")
    A = sp.tril(A + A.T + sp.eye(300) * 10, format="csc")
    f = analyze(A, mode="simplicial", ordering_method="amd")
    f.cholesky_inplace(A)
    assert symbolic_nnz_L(A, f.P()) == f.L().nnz


def test_memory_budget_refuses_waits_in_order_and_releases() -> None:
    budget = MemoryBudget(100 * MB)
    refusal = budget.refusal(101 * MB, "a dense block")
    assert refusal is not None and "101 MB" in refusal and "100 MB: a dense block" in refusal
    assert budget.refusal(100 * MB, "") is None and MemoryBudget(None).refusal(10**12, "") is None
    assert budget.acquire("a", 60 * MB, lambda: False, lambda used: None)
    order: list[str] = []

    def take(job: str, nbytes: int) -> None:
        if budget.acquire(job, nbytes, lambda: False, lambda used: order.append(f"{job} waits")):
            order.append(job)

    big = threading.Thread(target=take, args=("big", 80 * MB))
    big.start()
    wait_for(lambda: order == ["big waits"])
    small = threading.Thread(target=take, args=("small", 10 * MB))  # fits, but big came first
    small.start()
    time.sleep(0.2)
    assert order == ["big waits", "small waits"]
    budget.release("a")
    big.join(2)
    small.join(2)
    assert order == ["big waits", "small waits", "big", "small"] and budget.in_use == 90 * MB
    assert not budget.acquire("late", 20 * MB, lambda: True, lambda used: None)  # cancelled
    with pytest.raises(ConfigError):
        SparseMMServer(ServerConfig("127.0.0.1:0", ("/",), memory_budget_bytes=0))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    base = tmp_path_factory.mktemp("memory")
    root = data_root(base)
    pq.write_table(_crossed(), root / "crossed.parquet")
    cfg = config(root, base / "s.duckdb", None, workers=2, memory_budget_bytes=190 * MB)
    with running(cfg) as target, Client(target) as c:
        yield c


def test_a_fit_beyond_the_budget_is_refused(client: Client) -> None:
    events: list[Progress] = []
    small = client.fit(FORMULA, "sleepstudy.parquet", progress=events.append)
    assert FIT_OVERHEAD_BYTES < small.message.memory_estimate_bytes < FIT_OVERHEAD_BYTES + MB
    (admitted,) = [e for e in events if e.kind == "memory"]
    assert not admitted.waiting and admitted.budget_bytes == 190 * MB
    big = "y ~ x + (1 + x | a) + (1 + x | b) + (1 | c)"  # a 3,100-column dense block
    with pytest.raises(SparsemmError) as err:
        client.fit(big, "slow.parquet")
    assert err.value.code == CODE.RESOURCE_EXHAUSTED
    assert "190 MB" in err.value.message and "dense Schur block" in err.value.message
    assert client.health() == "SERVING"


def test_fits_wait_for_memory_and_leave_the_wait_when_cancelled(client: Client) -> None:
    hog = client.submit(SLOW_FORMULA, "slow.parquet")  # ~174 MB of the 190 MB budget
    hogging: list[Progress] = []
    threading.Thread(target=_quietly, args=(client, hog.job_id, hogging.append)).start()
    wait_for(lambda: any(e.kind == "memory" for e in hogging), timeout=20)  # admitted
    events: list[Progress] = []
    waiter = client.submit(CROSSED, "crossed.parquet")
    second = client.submit(CROSSED, "crossed.parquet")
    watch = threading.Thread(target=lambda: client.wait(waiter.job_id, progress=events.append))
    watch.start()
    wait_for(lambda: any(e.kind == "memory" and e.waiting for e in events), timeout=20)
    (waiting,) = [e for e in events if e.kind == "memory"]
    assert waiting.in_use_bytes > 100 * MB and waiting.estimate_bytes > 10 * MB
    started = time.monotonic()
    assert client.cancel(second.job_id).state == "CANCELLED"  # queued or waiting: gone at once
    assert time.monotonic() - started < 1.0
    client.cancel(hog.job_id)  # frees its memory: the waiter goes on
    watch.join(30)
    assert client.job(waiter.job_id).state == "SUCCEEDED"
    assert [e.waiting for e in events if e.kind == "memory"] == [True, False]


def _quietly(client: Client, job_id: str, progress) -> None:  # type: ignore[no-untyped-def]
    try:
        client.wait(job_id, progress=progress)
    except SparsemmError:
        pass  # cancelled
