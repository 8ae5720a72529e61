"""Run problems x backends; print a Markdown table, write CSV and Markdown results.

    python -m benchmarks.run [--problems insteval,ehr_100k] [--backends sparsemm,lme4]
                             [--repeat K] [--out benchmarks/results] [--force-lme4]

Missing synthetic EHR data is generated into the cache directory first. lme4 is
skipped for problems above ``--lme4-max-rows`` (1M) unless ``--force-lme4``: at 1M
rows it takes about 20 minutes (``--reference`` reuses an earlier result). Every
repetition is one CSV row; the Markdown table shows per problem and backend the
fastest repetition, the largest peak RSS, the objective, its absolute difference
from lme4's, the speed ratio lme4 / sparsemm and convergence.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from benchmarks import backends, ehr_generator
from benchmarks.problems import CACHE, DEFAULT_PROBLEMS, EHR_SEED, Problem, all_problems

OUT = Path(__file__).resolve().parent / "results"
Row = dict[str, Any]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problems", default=",".join(DEFAULT_PROBLEMS))
    p.add_argument("--backends", default="sparsemm,lme4")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--lme4-max-rows", type=int, default=1_000_000)
    p.add_argument("--force-lme4", action="store_true", help="run lme4 at any size")
    p.add_argument("--timeout", type=float, default=None, help="seconds per fit")
    p.add_argument(
        "--ranef", action="store_true",
        help="sparsemm also writes conditional modes with conditional SDs (extra: outputs_s)",
    )  # fmt: skip
    p.add_argument(
        "--reference",
        type=Path,
        action="append",
        default=[],
        help="earlier results CSV whose lme4 rows serve as reference when "
        "this run has none for a problem (repeatable)",
    )
    return p.parse_args(argv)


def select(names: str, known: dict[str, Any], kind: str) -> list[str]:
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise SystemExit(f"unknown {kind}: {', '.join(unknown)}; known: {', '.join(known)}")
    return chosen


def ensure_data(problem: Problem) -> int | None:
    """Generate a missing synthetic dataset; return the row count, None if no data."""
    if not problem.data.exists() and problem.ehr_rows is not None:
        print(f"generating {problem.data.name} ({problem.ehr_rows} rows) ...", flush=True)
        start = time.perf_counter()
        ehr_generator.write(problem.ehr_rows, problem.data, EHR_SEED)
        print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    if not problem.data.exists():
        return None
    return pq.ParquetFile(problem.data).metadata.num_rows


def run_one(backend: str, problem: Problem, repeat: int, args: argparse.Namespace) -> Row:
    """One fit as a CSV row; raises ``backends.Skipped``."""
    row: Row = {"problem": problem.name, "backend": backend, "repeat": repeat}
    if args.ranef:
        problem = replace(problem, ranef=True)
    try:
        result = backends.BACKENDS[backend](problem, timeout=args.timeout, cache=args.cache)
    except backends.BackendError as err:
        print(f"  FAILED: {err}", flush=True)
        return row | {"status": "failed", "error": str(err)}
    fields = asdict(result)
    extra = fields.pop("extra")
    if problem.true_beta:  # the markdown's check of the fixed effects (``recovery``)
        extra["true_beta"] = dict(problem.true_beta)
    print(
        f"  {result.seconds:.2f} s, {result.peak_rss_mb:.0f} MB, objective {result.objective:.6f}",
        flush=True,
    )
    return row | fields | {"status": "ok", "extra": json.dumps(extra)}


def run_problem(problem: Problem, names: list[str], args: argparse.Namespace) -> list[Row]:
    rows = ensure_data(problem)
    if rows is None:
        print(f"skip {problem.name}: {problem.data} does not exist", flush=True)
        return []
    out: list[Row] = []
    for backend in names:
        if backend == "lme4" and rows > args.lme4_max_rows and not args.force_lme4:
            print(f"skip lme4 on {problem.name}: {rows} rows > --lme4-max-rows", flush=True)
            continue
        for k in range(args.repeat):
            print(f"{problem.name} / {backend} #{k + 1}", flush=True)
            try:
                out.append(run_one(backend, problem, k, args))
            except backends.Skipped as why:
                print(f"skip {backend}: {why}", flush=True)
                break
    return out


def load_reference(paths: list[Path]) -> dict[str, Row]:
    """The fastest successful lme4 row per problem in earlier results CSVs."""
    rows: list[Row] = []
    for path in paths:
        with path.open(newline="") as f:
            rows += [r for r in csv.DictReader(f) if r["backend"] == "lme4" and r["status"] == "ok"]
    for r in rows:
        r.update(seconds=float(r["seconds"]), objective=float(r["objective"]), status="ok")
    return {r["problem"]: _best([q for q in rows if q["problem"] == r["problem"]]) for r in rows}


def summarise(rows: list[Row], reference: dict[str, Row] | None = None) -> list[Row]:
    """Per (problem, backend): best time, max RSS, objective, comparison with lme4."""
    keys = list(dict.fromkeys((r["problem"], r["backend"]) for r in rows))
    best = {key: _best([r for r in rows if (r["problem"], r["backend"]) == key]) for key in keys}
    for (problem, _), row in best.items():
        ref = best.get((problem, "lme4")) or (reference or {}).get(problem)
        if ref and row is not ref and ref["status"] == "ok" and row["status"] == "ok":
            row["objective_diff"] = abs(row["objective"] - ref["objective"])
            row["speed_ratio"] = ref["seconds"] / row["seconds"]
    return list(best.values())


def _best(group: list[Row]) -> Row:
    ok = [r for r in group if r["status"] == "ok"]
    if not ok:
        return dict(group[0])
    row = dict(min(ok, key=lambda r: r["seconds"]))
    row["peak_rss_mb"] = max(float(r["peak_rss_mb"]) for r in ok)
    row["runs"] = len(ok)
    return row


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, spec)


def markdown(summary: list[Row]) -> str:
    titles = [
        "problem",
        "backend",
        "seconds",
        "data pass s",
        "fit s",
        "evaluations",
        "s / evaluation",
        "first evaluation s",
        "nnz(L)",
        "peak RSS MB",
        "objective",
        "abs diff vs lme4",
        "lme4 / sparsemm",
        "fixed effects vs generating",
        "converged",
    ]
    lines = ["| " + " | ".join(titles) + " |", "|---|---|" + "---:|" * 11 + "---|---|"]
    for r in summary:
        if r["status"] != "ok":
            lines.append(f"| {r['problem']} | {r['backend']} | failed |" + " |" * 12)
            continue
        ratio = _fmt(r.get("speed_ratio"), ".1f") if r["backend"] != "lme4" else ""
        extra = json.loads(r.get("extra") or "{}")
        read_s = extra.get("read_s", extra.get("read_seconds"))
        cells = [
            r["problem"],
            r["backend"],
            _fmt(r["seconds"], ".2f"),
            _fmt(read_s, ".2f"),
            _fmt(extra.get("fit_s"), ".2f"),
            _fmt(extra.get("evaluations"), "d"),
            _fmt(extra.get("evaluation_s"), ".2f"),
            _fmt(extra.get("first_evaluation_s"), ".2f"),
            _fmt(extra.get("nnz_L"), ",d"),
            _fmt(r["peak_rss_mb"], ".0f"),
            _fmt(r["objective"], ".4f"),
            _fmt(r.get("objective_diff"), ".2e"),
            ratio,
            recovery(extra),
            _converged(r),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def recovery(extra: dict[str, Any], within: float = 2.0) -> str:
    """Whether each fixed effect is within ``within`` standard errors of its generating
    value (``extra["true_beta"]``, against ``extra["fixed_effects"]``: term -> [estimate,
    SE]): "4/4 within 2 SE (largest 1.3)", or naming those outside."""
    truth, fitted = extra.get("true_beta") or {}, extra.get("fixed_effects") or {}
    z = {t: abs(fitted[t][0] - v) / fitted[t][1] for t, v in truth.items() if t in fitted}
    if not z:
        return ""
    outside = [f"{t} {z[t]:.1f}" for t in z if z[t] > within]
    detail = ", ".join(outside) if outside else f"largest {max(z.values()):.1f}"
    return f"{len(z) - len(outside)}/{len(z)} within {within:g} SE ({detail})"


def _converged(row: Row) -> str:
    extra = json.loads(row.get("extra") or "{}")
    flag = {True: "yes", False: "no"}.get(extra.get("converged"), "")
    notes = [str(m).replace("|", "/") for m in extra.get("messages") or []]
    return "; ".join([flag, *notes])


def header() -> str:
    return (
        f"Benchmarks {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node()}: "
        f"{backends.THREADS} cores, BLAS/OpenMP threads pinned to {backends.THREADS}, "
        f"peak RSS by {backends.RSS_METHOD}. sparsemm seconds = CLI total_s "
        "(read + fit); lme4 seconds = lmer() alone.\n\n"
    )


def write(rows: list[Row], summary: list[Row], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    csv_path, md_path = out / f"{stamp}.csv", out / f"{stamp}.md"
    columns = [
        "problem",
        "backend",
        "repeat",
        "status",
        "seconds",
        "peak_rss_mb",
        "objective",
        "nobs",
        "error",
        "extra",
    ]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(header() + markdown(summary))
    return csv_path, md_path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    problems = all_problems(args.cache)
    chosen = select(args.problems, problems, "problems")
    names = select(args.backends, backends.BACKENDS, "backends")
    rows = [r for name in chosen for r in run_problem(problems[name], names, args)]
    if not rows:
        raise SystemExit("nothing ran")
    summary = summarise(rows, load_reference(args.reference))
    print("\n" + header() + markdown(summary))
    for path in write(rows, summary, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
