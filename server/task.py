"""What a worker process is asked to do: plain, picklable data (no grpc, no protobuf).

The servicer turns a request into a ``FitTask`` (``convert``), the job manager hands it
to a worker process (``worker``), and the store keeps it as JSON so that a queued job
can run again after a restart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


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

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> FitTask:
        d = json.loads(text)
        src = d.pop("source")
        src["roots"] = tuple(src.get("roots", ()))
        return FitTask(source=SourceRef(**src), **d)
