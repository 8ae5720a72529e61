"""Benchmark problems as data: a dataset, a formula, REML or ML, and its factor columns.

``factors`` names the columns that lme4 must treat as factors (grouping factors and
factor covariates); the R side converts them after reading the CSV copy. Synthetic
EHR problems carry ``ehr_rows`` and live in the cache directory, where the runner
generates them when missing (``ehr_generator``, seed ``EHR_SEED``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks import ehr_generator

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".cache"
EHR_SEED = 20240601

INSTEVAL_FORMULA = "y ~ service + (1 | s) + (1 | d) + (1 | dept:service)"
INSTEVAL_FACTORS = ("s", "d", "dept", "service")


@dataclass(frozen=True)
class Problem:
    """One benchmark problem; ``data`` is a Parquet file."""

    name: str
    data: Path
    formula: str
    reml: bool = True
    factors: tuple[str, ...] = ()
    ehr_rows: int | None = None  # synthetic: generate ``data`` with this many rows
    family: str = "gaussian"
    true_beta: tuple[tuple[str, float], ...] = ()  # generating fixed effects, by term
    ranef: bool = False  # sparsemm also writes the conditional modes and SDs (timed)

    @property
    def method(self) -> str:
        if self.family != "gaussian":
            return "Laplace"
        return "REML" if self.reml else "ML"


def ehr(name: str, rows: int, cache: Path = CACHE) -> Problem:
    """The synthetic EHR problem with ``rows`` encounters."""
    return Problem(
        name=name,
        data=cache / f"ehr_{rows}_seed{EHR_SEED}.parquet",
        formula=ehr_generator.FORMULA,
        factors=ehr_generator.FACTORS,
        ehr_rows=rows,
        true_beta=_named(TRUE.beta),
    )


def ehr_binary(name: str, rows: int, cache: Path = CACHE) -> Problem:
    """The synthetic EHR adverse-event GLMM (binomial, Laplace) with ``rows`` encounters."""
    base = ehr(name, rows, cache)
    return Problem(
        name, base.data, ehr_generator.ADVERSE_FORMULA, False, base.factors, rows, "binomial",
        _named(TRUE.adverse_beta),
    )  # fmt: skip


TRUE = ehr_generator.TRUE_PARAMS


def _named(beta: tuple[float, ...]) -> tuple[tuple[str, float], ...]:
    return tuple(zip(TRUE.beta_names, beta))


def all_problems(cache: Path = CACHE) -> dict[str, Problem]:
    """Every known problem by name, in the order they are run."""
    insteval = REPO / "tests" / "data" / "InstEval.parquet"
    problems = [
        Problem("insteval", insteval, INSTEVAL_FORMULA, True, INSTEVAL_FACTORS),
        Problem("insteval_ml", insteval, INSTEVAL_FORMULA, False, INSTEVAL_FACTORS),
        ehr("ehr_100k", 100_000, cache),
        ehr("ehr_1m", 1_000_000, cache),
        ehr("ehr_10m", 10_000_000, cache),
        ehr("ehr_30m", 30_000_000, cache),
        ehr_binary("ehr_binary_100k", 100_000, cache),
        ehr_binary("ehr_binary_1m", 1_000_000, cache),
    ]
    return {p.name: p for p in problems}


DEFAULT_PROBLEMS = ("insteval", "ehr_100k", "ehr_1m", "ehr_10m")
