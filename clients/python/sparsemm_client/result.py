"""A fit as the server returned it, with lme4-like accessors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from sparsemm.v1 import sparsemm_pb2 as pb

from .anova import format_anova
from .confint import format_confint
from .summary import format_summary

if TYPE_CHECKING:
    from .client import Client


@dataclass(frozen=True)
class JobError:
    code: str
    message: str
    field: str


@dataclass(frozen=True)
class Job:
    job_id: str
    state: str  # QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED
    source: str
    formula: str  # a comparison's: its two formulas joined by " vs "
    created_unix: float
    started_unix: float | None
    finished_unix: float | None
    error: JobError | None
    kind: str = "FIT"  # FIT | COMPARE | PREDICT
    fit_job_id: str = ""  # a prediction's fit

    @property
    def done(self) -> bool:
        return self.state in ("SUCCEEDED", "FAILED", "CANCELLED")

    @staticmethod
    def from_proto(msg: pb.Job) -> Job:
        error = None
        if msg.HasField("error"):
            error = JobError(msg.error.code, msg.error.message, msg.error.field)
        compare = msg.kind == pb.JOB_KIND_COMPARE
        return Job(
            job_id=msg.job_id,
            state=pb.JobState.Name(msg.state).removeprefix("JOB_STATE_"),
            source=msg.source,
            formula=" vs ".join(m.formula for m in msg.models) if compare else msg.model.formula,
            created_unix=msg.created_unix,
            started_unix=msg.started_unix or None,
            finished_unix=msg.finished_unix or None,
            error=error,
            kind=pb.JobKind.Name(msg.kind).removeprefix("JOB_KIND_").replace("UNSPECIFIED", "FIT"),
            fit_job_id=msg.fit_job_id,
        )


@dataclass(frozen=True)
class Progress:
    """A progress event: rows read in a pass, an evaluation of the objective, or the
    fit's memory estimate against the server's budget (``waiting`` for room, or admitted)."""

    kind: str  # "rows" | "iteration" | "memory"
    stage: str = ""
    rows: int = 0
    evaluation: int = 0
    objective: float = float("nan")
    estimate_bytes: int = 0
    budget_bytes: int = 0  # 0: no budget
    in_use_bytes: int = 0
    waiting: bool = False
    detail: str = ""

    @staticmethod
    def from_proto(msg: pb.Progress) -> Progress:
        kind = msg.WhichOneof("event")
        if kind == "rows_read":
            return Progress("rows", stage=msg.rows_read.stage, rows=msg.rows_read.rows)
        if kind == "memory":
            m = msg.memory
            return Progress(
                "memory", estimate_bytes=m.estimate_bytes, budget_bytes=m.budget_bytes,
                in_use_bytes=m.in_use_bytes, waiting=m.waiting, detail=m.detail,
            )  # fmt: skip
        it = msg.iteration
        return Progress("iteration", evaluation=it.evaluation, objective=it.objective)


class FitResult:
    """The result of a remote fit.

    ``to_dict()`` is the JSON contract of DESIGN.md §5, exactly as ``sparsemm fit
    --format json`` prints it; ``fixef``, ``varcorr``, ``theta``, ``sigma`` ... read
    it; ``ranef()`` and ``fitted()`` fetch the big tables from the server.
    """

    def __init__(
        self, message: pb.FitResult, job_id: str, client: Client | None, data_name: str = ""
    ) -> None:
        self.message = message
        self.job_id = job_id
        self.data_name = data_name
        self._client = client

    @cached_property
    def _dict(self) -> dict[str, Any]:
        return dict(json.loads(self.message.result_json))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.message.result_json)  # a fresh copy

    def to_json(self) -> str:
        return str(self.message.result_json)

    def __getattr__(self, name: str) -> Any:
        # the contract's scalars: formula, nobs, ngroups, theta, sigma, loglik, aic, ...
        if name.startswith("_") or name not in self._dict:
            raise AttributeError(name)
        return self._dict[name]

    @property
    def fixef(self) -> dict[str, float]:
        """Fixed-effect estimates by term (lme4's ``fixef``)."""
        return {fe["term"]: fe["estimate"] for fe in self._dict["fixed_effects"]}

    @property
    def varcorr(self) -> list[dict[str, Any]]:
        """Variance components, as lme4's ``as.data.frame(VarCorr(m))``."""
        return [dict(vc) for vc in self._dict["variance_components"]]

    @property
    def residual_quantiles(self) -> list[float]:
        return list(self.message.residual_quantiles)

    @property
    def disclosure(self) -> dict[str, Any] | None:
        """What the server's disclosure control withheld (None when it is off)."""
        d = self._dict.get("disclosure")
        return dict(d) if d is not None else None

    @property
    def written(self) -> dict[str, str]:
        """Tables written on the server: {"ranef" | "fitted": absolute path there}."""
        w = self.message.written
        return {k: v for k, v in (("ranef", w.ranef_path), ("fitted", w.fitted_path)) if v}

    def summary(self, data_name: str | None = None) -> str:
        """lme4's ``summary(m)`` as text (scaled residuals when the fit kept them)."""
        name = self.data_name if data_name is None else data_name
        return format_summary(self._dict, name, self.residual_quantiles or None)

    def ranef(self) -> pa.Table:
        """Conditional modes and SDs: group, level, term, condval, condsd."""
        return self._need_client().ranef(self.job_id)

    def fitted(self) -> pa.Table:
        """Fitted values and residuals in row order (fit with ``fitted=True``)."""
        return self._need_client().fitted(self.job_id)

    def to_pandas(self) -> Any:
        """The fixed effects as a pandas DataFrame (term, estimate, std_error, statistic)."""
        import pandas as pd

        return pd.DataFrame(self._dict["fixed_effects"])

    def _need_client(self) -> Client:
        if self._client is None:
            raise RuntimeError("this result is detached from its client")
        return self._client

    def __repr__(self) -> str:
        return f"<sparsemm FitResult job={self.job_id} formula={self._dict['formula']!r}>"


class Anova:
    """A likelihood-ratio test of two nested models (lme4's ``anova(m0, m1)``).

    ``small`` and ``big`` are the two models' lines (formula, npar, aic, bic, loglik,
    deviance), ``chisq``, ``df`` and ``p`` the test; ``to_dict()`` is the JSON that
    ``sparsemm anova --format json`` prints, ``table()`` its text.
    """

    def __init__(self, message: pb.LikelihoodRatioTest, job_id: str, data_name: str) -> None:
        self.message = message
        self.job_id = job_id
        self.data_name = data_name
        d = json.loads(message.result_json)
        self.small: dict[str, Any] = d["small"]
        self.big: dict[str, Any] = d["big"]
        self.chisq: float = d["chisq"]
        self.df: int = d["df"]
        self.p: float = d["p"]

    def to_dict(self) -> dict[str, Any]:
        return dict(json.loads(self.message.result_json))

    def to_json(self) -> str:
        return str(self.message.result_json)

    def table(self, data_name: str | None = None) -> str:
        return format_anova(self.to_dict(), self.data_name if data_name is None else data_name)

    def __repr__(self) -> str:
        return f"<sparsemm Anova chisq={self.chisq:.6g} df={self.df} p={self.p:.4g}>"


class ConfidenceIntervals:
    """lme4's ``confint(m, method, level)`` of a fit job: one row per parameter (``.sig01``,
    ..., ``.sigma``, the fixed effects) with ``estimate``, ``lower``, ``upper`` (None where
    there is no bound); ``to_dict()`` is the JSON ``sparsemm confint --format json``
    prints, ``table()`` its text."""

    def __init__(self, message: pb.ConfidenceIntervals, job_id: str) -> None:
        self.message = message
        self.job_id = job_id
        self.fit_job_id = message.fit_job_id
        d = json.loads(message.result_json)
        self.method: str = d["method"]
        self.level: float = d["level"]
        self.rows: list[dict[str, Any]] = d["intervals"]

    def to_dict(self) -> dict[str, Any]:
        return dict(json.loads(self.message.result_json))

    def to_json(self) -> str:
        return str(self.message.result_json)

    def table(self) -> str:
        return format_confint(self.to_dict())

    def bounds(self) -> dict[str, tuple[float | None, float | None]]:
        """{parameter: (lower, upper)}."""
        return {r["parameter"]: (r["lower"], r["upper"]) for r in self.rows}

    def __repr__(self) -> str:
        return f"<sparsemm ConfidenceIntervals {self.method} {self.level:g} job={self.job_id}>"
