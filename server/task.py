"""What a worker process is asked to do: plain, picklable data (no grpc, no protobuf).

The servicer turns a request into a ``FitTask``, a ``CompareTask`` or a task on a
finished fit (``PredictTask``, ``ConfintTask``) (``convert``), the
job manager hands it to a worker process (``worker``), and the store keeps it as JSON
(``task_from_json``) so that a queued job can run again after a restart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SourceRef:
    """A source already confined to the data roots (``paths``) or spooled by the server.

    kind: "path"   value is a real path (or an absolute glob) under a root
          "sql"    value is one SELECT, run by a DuckDB restricted to ``roots``
          "duckdb" value is a database file under a root, ``table`` a table in it
          "upload" value is the server's spool file (an Arrow IPC stream)
    """

    kind: str
    value: str
    table: str = ""
    roots: tuple[str, ...] = ()


@dataclass(frozen=True)
class FitTask:
    job_id: str
    source: SourceRef
    formula: str
    family: str = "gaussian"  # gaussian | binomial | poisson
    link: str | None = None  # None: the family's canonical link
    reml: bool = True  # gaussian models only; GLMMs use the Laplace approximation
    weights: str | None = None
    ordering: str = "auto"
    ranef: bool = False
    fitted: bool = False
    residual_quantiles: bool = False
    out_dir: str = ""  # where the worker writes ranef.parquet and fitted.parquet
    ranef_out: str = ""  # or where it writes the conditional modes, under output_root
    fitted_out: str = ""  # and the fitted values (``outputs``)
    output_root: str = ""
    satterthwaite: bool = False  # lmerTest's df and p-values (solver.inference.add_inference)
    icc: bool = False

    kind = "fit"

    @property
    def spool(self) -> str | None:
        """The server's copy of uploaded data, removed when the job ends."""
        return self.source.value if self.source.kind == "upload" else None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> FitTask:
        return FitTask.from_dict(json.loads(text))

    @staticmethod
    def from_dict(d: dict[str, Any]) -> FitTask:
        d = {k: v for k, v in d.items() if k != "kind"}
        src = d.pop("source")
        src["roots"] = tuple(src.get("roots", ()))
        return FitTask(source=SourceRef(**src), **d)


@dataclass(frozen=True)
class CompareTask:
    """A likelihood-ratio test of two LMMs (``solver.inference``).

    ``stored[i]`` is the result JSON of an ML fit kept by a finished job, used as it is;
    "" means: fit ``fits[i]`` (always by ML) first.
    """

    job_id: str
    fits: tuple[FitTask, FitTask]
    stored: tuple[str, str] = ("", "")
    source_names: tuple[str, str] = ("", "")  # as the client named the data

    kind = "compare"
    spool = None

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, **asdict(self)})


@dataclass(frozen=True)
class FitRef:
    """A finished fit job, to be refitted on its source (resolved afresh): ``fit`` its
    task, ``theta`` and ``nobs`` as the job kept them, against which the refit is checked
    (a source that changed since the fit is refused)."""

    job_id: str
    fit: FitTask
    theta: tuple[float, ...]
    nobs: int

    @staticmethod
    def from_dict(d: dict[str, Any]) -> FitRef:
        return FitRef(d["job_id"], FitTask.from_dict(d["fit"]), tuple(d["theta"]), d["nobs"])


@dataclass(frozen=True)
class PredictTask:
    """Predictions of a refitted fit on new rows (``solver.predict``)."""

    job_id: str
    base: FitRef
    newdata: SourceRef
    re_form: str | None = None  # None: every random-effects term
    allow_new_levels: bool = True
    se_fit: bool = False
    out_dir: str = ""  # where the worker keeps predictions.parquet for the call to stream
    out_path: str = ""  # or where it writes them, under output_root
    output_root: str = ""

    kind = "predict"

    @property
    def spool(self) -> str | None:
        return self.newdata.value if self.newdata.kind == "upload" else None

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, **asdict(self)})

    @staticmethod
    def from_dict(d: dict[str, Any]) -> PredictTask:
        d = {k: v for k, v in d.items() if k != "kind"}
        src = d.pop("newdata")
        src["roots"] = tuple(src.get("roots", ()))
        base = FitRef.from_dict(d.pop("base"))
        return PredictTask(base=base, newdata=SourceRef(**src), **d)


@dataclass(frozen=True)
class ConfintTask:
    """Confidence intervals of a refitted fit (``solver.confint``)."""

    job_id: str
    base: FitRef
    method: str = "profile"  # profile | wald
    level: float = 0.95
    parm: tuple[str, ...] = ()  # empty: every parameter

    kind = "confint"
    spool = None

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, **asdict(self)})

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ConfintTask:
        return ConfintTask(d["job_id"], FitRef.from_dict(d["base"]), d["method"], d["level"],
                           tuple(d["parm"]))  # fmt: skip


Task = FitTask | CompareTask | PredictTask | ConfintTask


def task_from_json(text: str) -> Task:
    d = json.loads(text)
    if d.get("kind") == "predict":
        return PredictTask.from_dict(d)
    if d.get("kind") == "confint":
        return ConfintTask.from_dict(d)
    if d.get("kind") != "compare":
        return FitTask.from_dict(d)
    a, b = (FitTask.from_dict(f) for f in d["fits"])
    (s0, s1), (n0, n1) = d["stored"], d["source_names"]
    return CompareTask(d["job_id"], (a, b), (s0, s1), (n0, n1))
