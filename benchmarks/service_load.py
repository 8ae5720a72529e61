"""Load on a local sparsemm server: N concurrent clients submitting small fits.

    python -m benchmarks.service_load [--clients 8] [--requests 5] [--workers 2]
        [--memory-budget-mb 24] [--mix sleepstudy,crossed] [--out benchmarks/results]

Starts ``sparsemm serve`` on a free loopback port (a temporary data root and state),
then ``--clients`` threads, each with its own connection, fit ``--requests`` models in
turn (``Client.fit``: the Fit RPC with its progress stream; no tables kept), cycling
through ``--mix``: ``sleepstudy`` (180 rows, a 2 x 18 random-effects block) and
``crossed`` (8,000 rows, two crossed factors, a 600 x 600 dense Schur block, ~18 MB
estimated: with the default budget of 24 MB, one at a time, the excess waits).
Meanwhile the server's process tree (server and workers) is sampled every 50 ms for
its resident memory, against its idle footprint after a warm-up fit per worker.
Reports throughput, latency percentiles, refusals by status code, fits that waited
for memory, and the server's peak RSS (the tree's, and the server process's own)
against its budget; writes ``OUT/service-load-<timestamp>.csv`` (one row per
request) and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
MB = 2**20
PROBLEMS = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleepstudy.parquet"),
    "crossed": ("y ~ x + (1 | a) + (1 | b)", "crossed.parquet"),
}


@dataclass(frozen=True)
class Request:
    client: int
    index: int
    problem: str
    started: float  # seconds since the load began
    latency_s: float
    status: str  # OK or a gRPC status code name
    waited_for_memory: bool
    memory_estimate_mb: float


def _crossed(n: int = 8000, na: int = 1000, nb: int = 600) -> pa.Table:
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, na, n), rng.integers(0, nb, n)
    y = rng.normal(size=na)[a] + rng.normal(size=nb)[b] + rng.normal(size=n)
    return pa.table({"y": y, "x": rng.normal(size=n), "a": a.astype(str), "b": b.astype(str)})


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(base: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    root = base / "data"
    root.mkdir()
    shutil.copy(DATA / "sleepstudy.parquet", root / "sleepstudy.parquet")
    pq.write_table(_crossed(), root / "crossed.parquet")
    target = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "sparsemm", "serve", "--listen", target, "--data-root",
           str(root), "--state", str(base / "state.duckdb"), "--workers", str(args.workers),
           "--max-queue", str(args.max_queue)]  # fmt: skip
    if args.memory_budget_mb:
        cmd += ["--memory-budget-mb", str(args.memory_budget_mb)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if "serving on" not in proc.stdout.readline():
        proc.kill()
        raise SystemExit("the server did not start")
    return proc, target


class TreeRSS:
    """Peak resident memory of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.pid, self.every_s = pid, every_s
        self.peak = self.peak_own = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            own = _rss(self.pid)
            self.peak_own = max(self.peak_own, own)
            self.peak = max(self.peak, own + sum(_rss(p) for p in _tree(self.pid)[1:]))


def _tree(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [c for c, p in parents.items() if p in frontier]
        tree += frontier
    return tree


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            line = next((ln for ln in f if ln.startswith("VmRSS:")), "VmRSS: 0 kB")
        return int(line.split()[1]) * 1024
    except OSError:
        return 0


def run_client(target: str, k: int, args: argparse.Namespace, t0: float) -> list[Request]:
    from sparsemm_client import Client, SparsemmError

    mix = args.mix.split(",")
    out = []
    with Client(target) as client:
        for i in range(args.requests):
            problem = mix[(k + i) % len(mix)]
            formula, source = PROBLEMS[problem]
            events: list = []
            started = time.perf_counter()
            status, estimate = "OK", 0.0
            try:
                fit = client.fit(formula, source, ranef=False, residual_quantiles=False,
                                 progress=events.append, timeout=args.timeout)  # fmt: skip
                estimate = fit.message.memory_estimate_bytes / MB
            except SparsemmError as err:
                status = err.code.name
            waited = any(e.kind == "memory" and e.waiting for e in events)
            out.append(Request(k, i, problem, round(started - t0, 4),
                               round(time.perf_counter() - started, 4), status, waited,
                               round(estimate, 1)))  # fmt: skip
    return out


def run(args: argparse.Namespace) -> tuple[list[Request], dict[str, float]]:
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    with tempfile.TemporaryDirectory(prefix="sparsemm-load-") as tmp:
        proc, target = start_server(Path(tmp), args)
        try:
            from sparsemm_client import Client

            with Client(target) as warm:  # workers import the solver: not part of the load
                for _ in range(args.workers):
                    warm.fit(*PROBLEMS["sleepstudy"], ranef=False)
            time.sleep(0.5)
            idle, idle_own = sum(_rss(p) for p in _tree(proc.pid)), _rss(proc.pid)
            results: list[list[Request]] = [[] for _ in range(args.clients)]
            with TreeRSS(proc.pid) as rss:
                t0 = time.perf_counter()
                threads = [threading.Thread(target=lambda k=k: results[k].extend(
                    run_client(target, k, args, t0))) for k in range(args.clients)]  # fmt: skip
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(30)
    totals = {"wall_s": wall, "peak_rss_mb": rss.peak / MB, "idle_rss_mb": idle / MB,
              "peak_own_mb": rss.peak_own / MB, "idle_own_mb": idle_own / MB,
              "load_before": load_before}  # fmt: skip
    return [r for rs in results for r in rs], totals


def summary(requests: list[Request], totals: dict[str, float], args: argparse.Namespace) -> str:
    ok = [r.latency_s for r in requests if r.status == "OK"]
    p50, p90, p99 = np.percentile(ok, [50, 90, 99]) if ok else (float("nan"),) * 3
    codes: dict[str, int] = {}
    for r in requests:
        codes[r.status] = codes.get(r.status, 0) + 1
    budget = f"{args.memory_budget_mb} MB" if args.memory_budget_mb else "none"
    rows = [
        ("clients x requests", f"{args.clients} x {args.requests} ({args.mix})"),
        ("server workers / queue / memory budget", f"{args.workers} / {args.max_queue} / {budget}"),
        ("wall time", f"{totals['wall_s']:.1f} s"),
        ("throughput", f"{len(ok) / totals['wall_s']:.2f} fits/s"),
        ("latency p50 / p90 / p99 / max", f"{p50:.2f} / {p90:.2f} / {p99:.2f} / "
         f"{max(ok, default=float('nan')):.2f} s"),
        ("outcomes", ", ".join(f"{k}: {v}" for k, v in sorted(codes.items()))),
        ("fits that waited for memory", str(sum(r.waited_for_memory for r in requests))),
        ("RSS idle after warm-up: server + workers (server process)",
         f"{totals['idle_rss_mb']:.0f} MB ({totals['idle_own_mb']:.0f} MB)"),
        ("peak RSS under load: server + workers (server process)",
         f"{totals['peak_rss_mb']:.0f} MB ({totals['peak_own_mb']:.0f} MB), "
         f"+{totals['peak_rss_mb'] - totals['idle_rss_mb']:.0f} MB over idle"),
    ]  # fmt: skip
    lines = [f"sparsemm service load, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores "
             f"(1-minute load average before the run: {totals['load_before']:.2f}; "
             f"`python -m benchmarks.service_load {' '.join(sys.argv[1:])}`)",
             "", "| measure | value |", "|---|---|"]  # fmt: skip
    return "\n".join(lines + [f"| {k} | {v} |" for k, v in rows]) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=5, help="fits per client")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--memory-budget-mb", type=int, default=24, help="0: none")
    p.add_argument("--mix", default="sleepstudy,crossed")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per fit")
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    requests, totals = run(args)
    text = summary(requests, totals, args)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(args.out / f"service-load-{stamp}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(requests[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in requests)
    (args.out / f"service-load-{stamp}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
