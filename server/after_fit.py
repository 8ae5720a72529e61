"""Tasks on a finished fit inside a worker process: predictions (``PredictTask``) and
confidence intervals (``ConfintTask``).

The job store keeps a fit's result (the contract JSON), not its factor or its
conditional modes, so the worker **refits** the job's model on the job's source
(resolved afresh under the data roots, as ``CompareModels`` does for REML jobs):

    source -> solver.prepare -> (checks of the request) -> memory admission
    -> model.fit -> the refit checked against the kept result -> the task's numbers

The refit is deterministic, so it reproduces the job's fit; it is checked against the
kept ``nobs`` and ``theta`` (1e-6) and refused with FAILED_PRECONDITION when they
differ (the source changed since the fit).  The numbers then equal an in-process
``sparsemm predict`` or ``sparsemm confint`` (fit, then predict or profile) exactly.
Jobs on uploaded data cannot be refitted (the server drops the upload when the fit
ends); the servicer refuses them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..solver.errors import InputError
from ..solver.results import json_safe
from .disclosure import DisclosurePolicy
from .fitting import Channel, estimate, model, prepare, source_of
from .task import ConfintTask, FitRef, PredictTask

THETA_RTOL = 1e-6


class SourceChanged(InputError):
    """The refit does not reproduce the job's kept result (FAILED_PRECONDITION)."""


def read_base(ref: FitRef, channel: Channel, policy: DisclosurePolicy | None) -> Any:
    """The cross-products of the fit's model (under the policy's design check)."""
    data = prepare(ref.fit, channel)
    if policy is not None:
        policy.check_design(data)
    return data


def refit(ref: FitRef, data: Any, channel: Channel) -> Any:
    """The fit again, admitted by memory and checked against the kept result."""
    memory = estimate(ref.fit, data)
    channel.admit(memory.total_bytes, memory.describe())
    fitted = model(ref.fit, data).fit(progress=channel.iteration)
    theta = np.asarray(fitted.sol.theta, dtype=float)
    same = fitted.result.nobs == ref.nobs and len(theta) == len(ref.theta)
    if not same or not np.allclose(theta, ref.theta, rtol=THETA_RTOL, atol=THETA_RTOL):
        raise SourceChanged(
            f"the refit of job '{ref.job_id}' does not reproduce its result ({fitted.result.nobs}"
            f" rows, theta {theta.tolist()}; the job kept {ref.nobs} rows, theta "
            f"{list(ref.theta)}): its source changed since the fit", "job_id",
        )  # fmt: skip
    return fitted


def run_predict(
    task: PredictTask, channel: Channel, policy: DisclosurePolicy | None = None
) -> tuple[str, dict[str, Any]]:
    from ..solver.predict import select_columns

    base = task.base
    out: dict[str, Any] = {"fit_job_id": base.job_id, "rows": 0, "null_rows": 0,
                           "fit_method": "REML" if base.fit.reml else "ML",
                           "fit_nobs": base.nobs, "written": "", "withheld": False}  # fmt: skip
    if policy is not None and not policy.allow_row_outputs:
        out["withheld"] = True  # nothing is read: the answer would be withheld anyway
        out["disclosure"] = policy.record(None, ["predictions per row"], [])
        return json.dumps(json_safe(out)), {}
    data = read_base(base, channel, policy)
    select_columns(data.design, task.re_form)  # a bad re_form fails before the refit
    fitted = refit(base, data, channel)
    table = fitted.predict(source_of(task.newdata), re_form=task.re_form,
                           allow_new_levels=task.allow_new_levels, se_fit=task.se_fit)  # fmt: skip
    out.update(rows=table.num_rows, null_rows=table.column("fit").null_count,
               fit_method=fitted.result.method)  # fmt: skip
    if policy is not None:
        out["disclosure"] = policy.record(None, [], [])
    extras = _keep(task, table)
    out["written"] = extras.pop("written", "")
    return json.dumps(json_safe(out)), extras


def _keep(task: PredictTask, table: Any) -> dict[str, str]:
    """Write the predictions where asked on the server, or keep them for the call."""
    import pyarrow.parquet as pq

    from .outputs import write_parquet

    if task.out_path:
        write_parquet(table, task.out_path, task.output_root, "out_path")
        return {"written": task.out_path}
    os.makedirs(task.out_dir, exist_ok=True)
    path = os.path.join(task.out_dir, "predictions.parquet")
    pq.write_table(table, path)
    return {"predictions_path": path}


def run_confint(
    task: ConfintTask, channel: Channel, policy: DisclosurePolicy | None = None
) -> tuple[str, dict[str, Any]]:
    """lme4's confint of the refitted fit: the object ``sparsemm confint`` prints, with
    the fit's job id and the timings of the refit and the intervals."""
    import time

    from ..solver.confint import confint

    started = time.perf_counter()
    fitted = refit(task.base, read_base(task.base, channel, policy), channel)
    fit_s = time.perf_counter() - started
    out = confint(fitted, task.method, task.level, list(task.parm) or None)
    out["timings"] = {"fit_s": fit_s, "confint_s": time.perf_counter() - started - fit_s}
    return json.dumps(json_safe(out)), {"fit_job_id": task.base.job_id}
