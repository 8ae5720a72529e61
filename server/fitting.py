"""Fitting a ``FitTask`` inside a worker process (``worker``), reporting to the manager.

    source (confined) -> solver.prepare -> memory estimate, admitted by the manager
    -> model -> fit -> the contract JSON + extras

``Channel`` is the worker's end of its pipe: progress goes out as messages
(``worker`` lists them).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ..solver.results import evaluation_timings, json_safe
from .disclosure import DisclosurePolicy
from .task import FitTask, SourceRef


class AdmissionRefused(Exception):
    """The job manager refused the fit's estimated memory (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class Channel:
    """Progress messages to the job manager, and the memory admission handshake."""

    conn: Connection

    def admit(self, nbytes: int, detail: str) -> None:
        """Ask to go on with a fit estimated to hold ``nbytes``; wait for the answer."""
        self.conn.send(("memory", nbytes, detail))
        reply = self.conn.recv()
        if reply[0] != "go":
            raise AdmissionRefused(reply[1])

    def rows(self, stage: str, n: int) -> None:
        self.conn.send(("rows", stage, n))

    def iteration(self, k: int, value: float) -> None:
        self.conn.send(("iteration", k, value))


def task_source(task: FitTask) -> Any:
    """What ``solver.prepare`` reads: a path, the upload spool, or a confined DuckDB."""
    return source_of(task.source)


def source_of(ref: SourceRef) -> Any:
    """A confined source as the solver reads it (``task_source``)."""
    from .confined import sql_source, table_source

    if ref.kind == "sql":
        os.chdir(ref.roots[0])  # relative paths in the query are under the first root
        return sql_source(ref.value, ref.roots)
    if ref.kind == "duckdb":
        return table_source(ref.value, ref.table, ref.roots)
    return ref.value  # a confined real path or glob, or the server's upload spool


def prepare(task: FitTask, channel: Channel) -> Any:
    """The cross-products of the task's model (rows kept only for GLMMs)."""
    from sparsemm import solver

    return solver.prepare(task.formula, task_source(task), weights=task.weights,
                          progress=channel.rows, family=task.family)  # fmt: skip


def model(task: FitTask, data: Any) -> Any:
    """The model object whose ``fit`` runs the optimizer."""
    from sparsemm import solver

    if task.family == "gaussian":
        return solver.LinearMixedModel(data, reml=task.reml, ordering=task.ordering)
    fam = solver.family(task.family, task.link)
    return solver.GeneralizedLinearMixedModel(data, fam, ordering=task.ordering)


def estimate(task: FitTask, data: Any) -> Any:
    """``solver.memory.estimate`` of the task's fit."""
    from sparsemm.solver.memory import estimate

    return estimate(data, task.ordering)


def run_fit(
    task: FitTask, channel: Channel, policy: DisclosurePolicy | None = None
) -> tuple[str, dict[str, Any]]:
    started = time.perf_counter()
    data = prepare(task, channel)
    notes = policy.check_design(data) if policy is not None else []
    memory = estimate(task, data)
    channel.admit(memory.total_bytes, memory.describe())
    read_s = time.perf_counter() - started
    fitted = model(task, data).fit(progress=channel.iteration)
    timings = {"read_s": read_s, "fit_s": time.perf_counter() - started - read_s}
    timings |= evaluation_timings(fitted.evaluation_s)
    extras, withheld = _outputs(task, fitted, data, policy)
    extras["memory_estimate_bytes"] = memory.total_bytes
    timings["total_s"] = time.perf_counter() - started
    out = fitted.result.to_dict()
    if task.satterthwaite or task.icc:
        from sparsemm.solver.inference import add_inference

        add_inference(out, fitted, task.satterthwaite, task.icc)
    if policy is not None:
        out["disclosure"] = policy.record(withheld[0], withheld[1], notes)
    out["timings"] = timings
    return json.dumps(json_safe(out)), extras


Withheld = tuple[list[dict[str, Any]] | None, list[str]]  # (ranef levels, row outputs)


def _outputs(
    task: FitTask, fitted: Any, data: Any, policy: DisclosurePolicy | None
) -> tuple[dict[str, Any], Withheld]:
    """Write the tables: kept with the job (for GetRanef, GetFitted) or where the client
    asked on the server; the scaled residuals' quantiles (as the CLI's).  Under a
    disclosure policy, small levels and row-level outputs are withheld."""
    extras: dict[str, Any] = {}
    ranef_withheld = None
    if task.ranef:
        table = fitted.ranef()
        if policy is not None:
            table, ranef_withheld = policy.withhold_ranef(data, table)
        extras.update(_table(task, table, "ranef", task.ranef_out))
    if policy is not None and not policy.allow_row_outputs:
        words = (
            (task.fitted, "fitted values and residuals"),
            (task.residual_quantiles, "the quantiles of the scaled residuals"),
        )
        return extras, (ranef_withheld, [w for asked, w in words if asked])
    extras.update(_row_outputs(task, fitted))
    return extras, (ranef_withheld, [])


def _row_outputs(task: FitTask, fitted: Any) -> dict[str, Any]:
    from sparsemm.summary import residual_quantiles

    extras: dict[str, Any] = {}
    if task.fitted or task.residual_quantiles:
        table = fitted.fitted()
        if task.fitted:
            extras.update(_table(task, table, "fitted", task.fitted_out))
        if task.residual_quantiles:  # lme4's "Scaled residuals", as the CLI shows them
            extras["residual_quantiles"] = residual_quantiles(table.column("pearson").to_numpy())
    return extras


def _table(task: FitTask, table: Any, name: str, target: str) -> dict[str, str]:
    """Write one table; its extras entry: {name_path: kept} or {name_written: target}."""
    import pyarrow.parquet as pq

    from .outputs import write_parquet

    if target:
        write_parquet(table, target, task.output_root, f"outputs.{name}_path")
        return {f"{name}_written": target}
    os.makedirs(task.out_dir, exist_ok=True)
    path = os.path.join(task.out_dir, f"{name}.parquet")
    pq.write_table(table, path)
    return {f"{name}_path": path}
