"""Shared pieces of the service's end-to-end tests (``tests/test_service*.py``).

A data root with sleepstudy, cbpp and a slow synthetic table, a token file, server
configs on a free loopback port, a running server as a context manager, and the
comparison of remote and in-process results to 1e-10.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sparsemm.server import ServerConfig, SparseMMServer

DATA = Path(__file__).parent / "data"
FORMULA = "Reaction ~ Days + (Days | Subject)"
SLOW_FORMULA = "y ~ x + (1 + x | a) + (1 | b) + (1 | c)"  # ~20 s: crossed factors, 3000 levels
TOKEN, BOB_TOKEN = "s3cret-alice", "s3cret-bob"
CODE = grpc.StatusCode


def slow_table(n: int = 30_000, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    a, b, c = rng.integers(0, 1500, n), rng.integers(0, 1500, n), rng.integers(0, 100, n)
    x = rng.normal(size=n)
    y = (1 + x + rng.normal(size=1500)[a] + rng.normal(size=1500)[b]
         + 0.5 * rng.normal(size=100)[c] + rng.normal(size=n))  # fmt: skip
    return pa.table({"y": y, "x": x, "a": [f"a{i}" for i in a], "b": [f"b{i}" for i in b],
                     "c": c.astype(np.int64)})  # fmt: skip


def data_root(base: Path) -> Path:
    """A data root holding sleepstudy, cbpp and slow.parquet."""
    root = base / "root"
    root.mkdir()
    shutil.copy(DATA / "sleepstudy.parquet", root / "sleepstudy.parquet")
    shutil.copy(DATA / "cbpp.parquet", root / "cbpp.parquet")
    pq.write_table(slow_table(), root / "slow.parquet")
    return root


def write_token_file(path: Path) -> Path:
    digest = hashlib.sha256(BOB_TOKEN.encode()).hexdigest()
    path.write_text(f"# name token\nalice {TOKEN}\nbob sha256:{digest}\n")
    return path


def config(root: Path, state: Path, token_file: Path | None, **kw: Any) -> ServerConfig:
    return ServerConfig(listen="127.0.0.1:0", data_roots=(str(root),), state=str(state),
                        token_file=str(token_file) if token_file else None, **kw)  # fmt: skip


@contextmanager
def running(cfg: ServerConfig, grace: float = 0.5) -> Iterator[str]:
    """A started server's target, stopped on exit."""
    srv = SparseMMServer(cfg)
    port = srv.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        srv.stop(grace=grace)


def close(a: Any, b: Any, path: str = "") -> None:
    """Equal strings and structure; numbers within 1e-10 (relative to their size)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-10, abs_tol=1e-10), (path, a, b)
    else:
        assert a == b, (path, a, b)


def contract(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in ("timings",)}


def finite(obj: Any) -> Any:
    return json.loads(json.dumps(obj, allow_nan=True).replace("NaN", "null"))


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
