"""Backends: one ``run(problem) -> Result`` per solver, each run as a child process.

- ``sparsemm``: ``python -m sparsemm fit --data PATH --formula F --format json [--ml]``
  (the contract of DESIGN.md §5); ``seconds`` is the CLI's own ``timings.total_s``
  (read + fit), the wall time of the process is in ``extra["wall_s"]``.
- ``lme4``: ``Rscript lme4_fit.R`` on a CSV copy of the Parquet file (no arrow
  package in R here); ``seconds`` is the elapsed time of ``lmer()`` alone.

The objective is the REML criterion for REML problems and -2 logLik for ML ones,
on lme4's scale, so the two backends compare directly.

Peak RSS is the child's ``ru_maxrss`` as ``/usr/bin/time -f %M`` reports it (GNU time,
a small process, forks the command). Linux carries a process's high-water mark across
``exec``, so a child forked straight from this (large) Python process would report at
least our own RSS; RUSAGE_CHILDREN is worse still (maximum over all children ever).
Without GNU time we fall back to ``os.wait4`` on the child (an upper bound) and say so
in ``extra["rss_method"]``.
BLAS/OpenMP threads are pinned to the number of usable cores and recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from benchmarks.problems import CACHE, REPO, Problem

THREADS = len(os.sched_getaffinity(0))
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
RSS_METHOD = "gnu-time %M" if GNU_TIME else "wait4 (upper bound)"
LME4_SCRIPT = Path(__file__).resolve().parent / "lme4_fit.R"


@dataclass(frozen=True)
class Result:
    """One timed fit of one problem by one backend."""

    backend: str
    problem: str
    seconds: float
    peak_rss_mb: float
    objective: float  # REML criterion, or -2 logLik for ML
    nobs: int
    extra: dict[str, Any] = field(default_factory=dict)


class Skipped(Exception):
    """The backend cannot run here (missing tool or package); not a failure."""


class BackendError(Exception):
    """The backend ran and failed."""


@dataclass(frozen=True)
class Child:
    """A finished child process and what it cost."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_mb: float


def pinned_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({name: str(THREADS) for name in THREAD_VARS})
    return env


def run_child(cmd: list[str], cwd: Path = REPO, timeout: float | None = None) -> Child:
    """Run ``cmd``, measuring wall time and peak RSS of that child alone."""
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "maxrss"
        wrapped = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *cmd] if GNU_TIME else cmd
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        with out.open("wb") as fout, err.open("wb") as ferr:
            returncode, wall, maxrss_kb = _spawn(wrapped, cwd, fout, ferr, timeout)
        words = rss_file.read_text().split() if rss_file.exists() else []
        if words and words[-1].isdigit():  # GNU time's last line is %M
            maxrss_kb = int(words[-1])
        return Child(returncode, out.read_text(), err.read_text(), wall, maxrss_kb / 1024)


def _spawn(
    cmd: list[str], cwd: Path, out: IO[bytes], err: IO[bytes], timeout: float | None
) -> tuple[int, float, int]:
    """Start, wait with ``os.wait4``; return (exit code, wall seconds, ru_maxrss kB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=pinned_env(), stdout=out, stderr=err, start_new_session=True
    )  # a timeout kills the whole group
    kill = lambda: os.killpg(proc.pid, signal.SIGKILL)  # noqa: E731
    timer = threading.Timer(timeout, kill) if timeout else None
    if timer:
        timer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if timer:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4 above
    return proc.returncode, wall, usage.ru_maxrss


def last_json_line(text: str) -> dict[str, Any]:
    """The last line of ``text`` that parses as a JSON object."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise BackendError(f"no JSON object in output: {text[-500:]!r}")


def _failure(name: str, child: Child) -> BackendError:
    tail = child.stderr.strip().splitlines()[-5:]
    return BackendError(f"{name} exited {child.returncode}: " + " | ".join(tail))


def _common(child: Child) -> dict[str, Any]:
    return {"wall_s": child.wall_s, "threads": THREADS, "rss_method": RSS_METHOD}


def sparsemm_python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else shutil.which("python3") or "python3"


def run_sparsemm(problem: Problem, timeout: float | None = None, cache: Path = CACHE) -> Result:
    """Fit with the sparsemm CLI (in-process mode, JSON output)."""
    cmd = [sparsemm_python(), "-m", "sparsemm", "fit", "--data", str(problem.data)]
    cmd += ["--formula", problem.formula, "--format", "json", "--family", problem.family]
    cmd += [] if problem.reml else ["--ml"]
    with tempfile.TemporaryDirectory() as tmp:
        ranef = Path(tmp) / "ranef.parquet"
        child = run_child(cmd + (["--ranef", str(ranef)] if problem.ranef else []), timeout=timeout)
        ranef_rows = pq.read_metadata(ranef).num_rows if ranef.exists() else None
    if child.returncode != 0:
        raise _failure("sparsemm", child)
    out = last_json_line(child.stdout)
    timings, diagnostics = out.get("timings", {}), out.get("diagnostics") or {}
    objective = out["reml_criterion"] if problem.method == "REML" else -2.0 * out["loglik"]
    extra = {
        "read_s": timings.get("read_s"),
        "fit_s": timings.get("fit_s"),
        "nnz_L": diagnostics.get("nnz_L"),
        "outputs_s": timings.get("outputs_s"),  # writing --ranef (conditional SDs included)
        "ranef_rows": ranef_rows,
        "converged": out.get("converged"),
        "singular": out.get("singular"),
        "messages": out.get("messages", []),
        "theta": out.get("theta"),
        # every evaluation of the objective (and gradient), the checks' included, where the
        # CLI times them (LMMs); else the optimizer's count alone, not timed (GLMMs)
        "evaluations": timings.get("evaluations", diagnostics.get("evaluations")),
        "optimizer_evaluations": diagnostics.get("evaluations"),
        "evaluation_s": timings.get("evaluation_s"),  # the median evaluation
        "first_evaluation_s": timings.get("first_evaluation_s"),
        "fixed_effects": {f["term"]: [f["estimate"], f["std_error"]] for f in out["fixed_effects"]},
    } | _common(child)
    seconds = timings.get("total_s", child.wall_s)
    return Result(
        "sparsemm", problem.name, seconds, child.peak_rss_mb, objective, int(out["nobs"]), extra
    )


def csv_copy(parquet: Path, cache: Path = CACHE) -> Path:
    """A CSV copy of ``parquet`` in ``cache`` (dictionary columns as strings), reused
    while newer than its source. Written batch by batch to keep memory bounded."""
    out = cache / f"{parquet.stem}.csv"
    if out.exists() and out.stat().st_mtime >= parquet.stat().st_mtime:
        return out
    cache.mkdir(parents=True, exist_ok=True)
    source = pq.ParquetFile(parquet)
    schema = pa.schema([_plain(f) for f in source.schema_arrow])
    tmp = out.with_name(out.name + ".part")
    with pacsv.CSVWriter(tmp, schema) as writer:
        for batch in source.iter_batches(batch_size=1 << 20):
            writer.write_table(pa.Table.from_batches([batch]).cast(schema))
    tmp.replace(out)
    return out


def _plain(f: pa.Field) -> pa.Field:
    return f.with_type(pa.string()) if pa.types.is_dictionary(f.type) else f


def lme4_available() -> str | None:
    """None when Rscript with lme4 is usable, else the reason it is not."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        return "Rscript not found"
    probe = [rscript, "-e", "quit(status = !requireNamespace('lme4', quietly = TRUE))"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        return "R package lme4 not installed"
    return None


def run_lme4(problem: Problem, timeout: float | None = None, cache: Path = CACHE) -> Result:
    """Fit with lme4::lmer via Rscript; time is lmer() alone."""
    reason = lme4_available()
    if reason:
        raise Skipped(reason)
    cmd = ["Rscript", str(LME4_SCRIPT), "--csv", str(csv_copy(problem.data, cache))]
    cmd += ["--formula", problem.formula, "--factors", ",".join(problem.factors)]
    cmd += ["--family", problem.family] + ([] if problem.reml else ["--ml"])
    child = run_child(cmd, timeout=timeout)
    if child.returncode == 3:
        raise Skipped("R package lme4 not installed")
    if child.returncode != 0:
        raise _failure("lme4", child)
    out = last_json_line(child.stdout)
    keys = ("read_seconds", "converged", "singular", "messages", "theta", "lme4_version")
    extra = {k: out.get(k) for k in keys} | _common(child)
    return Result(
        "lme4",
        problem.name,
        float(out["seconds"]),
        child.peak_rss_mb,
        float(out["objective"]),
        int(out["nobs"]),
        extra,
    )


BACKENDS: dict[str, Callable[..., Result]] = {"sparsemm": run_sparsemm, "lme4": run_lme4}
