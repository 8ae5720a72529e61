"""How good is ``solver.memory.estimate``?  Estimated vs measured memory of fits.

    python -m benchmarks.memory_estimate [--problems a,b] [--out benchmarks/results]

Each problem runs in a fresh process: prepare (the data pass), estimate, then reset
the peak RSS (``/proc/self/clear_refs``) and fit as a server worker does (fit, then the
conditional modes with their SDs).  ``fit_mb`` = peak RSS during the fit - RSS before
it; ``total_mb`` = peak RSS - RSS before the data pass (so it also counts the
cross-products, GLMMs' row buffer and the data pass's transient batches).  The
estimate (what the fit holds after the data pass, cross-products included) should be
at least ``fit_mb`` and near ``total_mb``: admission control errs high.
Writes ``OUT/memory-<timestamp>.csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

OUT = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
MB = 2**20


def _crossed(n: int, na: int, nb: int, band: int | None, seed: int = 7) -> pa.Table:
    """y ~ x + (1 | a) + (1 | b): b fully crossed with a, or within a band of a."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, na, n)
    if band is None:
        b = rng.integers(0, nb, n)
    else:
        b = (a * nb // na + rng.integers(0, band, n)) % nb
    x = rng.normal(size=n)
    y = x + rng.normal(size=na)[a] + rng.normal(size=nb)[b] + rng.normal(size=n)
    return pa.table({"y": y, "x": x, "a": a.astype(str), "b": b.astype(str)})


def _binary(n: int, seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    patient = np.arange(n) // 10
    physician = rng.integers(0, n // 200, n)
    x = rng.normal(size=n)
    eta = -0.5 + 0.8 * x + rng.normal(size=n // 10)[patient] + 0.5 * rng.normal(size=n // 200)[
        physician]  # fmt: skip
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    return pa.table({"y": y, "x": x, "patient": patient, "physician": physician})


def _insteval() -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(DATA / "InstEval.parquet")


# name: (formula, data, family)
PROBLEMS: dict[str, tuple[str, Callable[[], pa.Table], str]] = {
    "insteval": ("y ~ service + (1 | s) + (1 | d) + (1 | dept:service)", _insteval, "gaussian"),
    "crossed_60k": ("y ~ x + (1 | a) + (1 | b)", lambda: _crossed(60_000, 3000, 2500, None),
                    "gaussian"),
    "banded_150k": ("y ~ x + (1 | a) + (1 | b)", lambda: _crossed(150_000, 30_000, 8000, 40),
                    "gaussian"),
    "nested_200k": ("y ~ x + (1 | a) + (1 | b)", lambda: _crossed(200_000, 20_000, 2000, 1),
                    "gaussian"),
    "binary_50k": ("y ~ x + (1 | patient) + (1 | physician)", lambda: _binary(50_000),
                   "binomial"),
}  # fmt: skip


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def measure(name: str) -> dict[str, Any]:
    """One problem in this process (``--one``)."""
    from sparsemm import solver
    from sparsemm.solver import memory

    formula, make, family = PROBLEMS[name]
    table = make()
    gc.collect()
    start_rss = _status("VmRSS")
    data = solver.prepare(formula, table, family=family)
    started = time.perf_counter()
    est = memory.estimate(data)
    estimate_s = time.perf_counter() - started
    gc.collect()
    prepared_hwm = _status("VmHWM")  # the data pass's peak
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = _status("VmRSS")
    if family == "gaussian":
        model: Any = solver.LinearMixedModel(data)
    else:
        model = solver.GeneralizedLinearMixedModel(data, solver.family(family))
    fitted = model.fit()
    fitted.ranef()
    fit_s = time.perf_counter() - started - estimate_s
    return {"problem": name, "rows": data.cp.n, "q": est.q, "factor": est.factor,
            "n2": est.n2, "nnz_L_symbolic": est.nnz_L,
            "nnz_L_fit": fitted.result.diagnostics.nnz_L,
            "estimate_mb": round(est.total_bytes / MB, 1),
            "fit_mb": round((_status("VmHWM") - before) / MB, 1),
            "total_mb": round((max(prepared_hwm, _status("VmHWM")) - start_rss) / MB, 1),
            "estimate_s": round(estimate_s, 3), "fit_s": round(fit_s, 2),
            "detail": est.describe()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problems", default=",".join(PROBLEMS))
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one)))
        return 0
    rows = []
    for name in args.problems.split(","):
        cmd = [sys.executable, "-m", "benchmarks.memory_estimate", "--one", name]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    _write(rows, args.out)
    return 0


def _write(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(out / f"memory-{stamp}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = ["problem", "rows", "q", "factor", "n2", "nnz_L_symbolic", "nnz_L_fit",
            "estimate_mb", "fit_mb", "total_mb", "estimate_s", "fit_s"]  # fmt: skip
    lines = [f"Memory estimate vs measured, {time.strftime('%Y-%m-%d %H:%M')} (fit_mb: "
             "peak RSS of fit + ranef - RSS before; total_mb: from before the data pass)", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]  # fmt: skip
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    (out / f"memory-{stamp}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
