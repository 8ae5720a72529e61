"""The worker process: runs fits for the job manager, one at a time.

Started with the ``spawn`` method, it imports the solver once and then loops:
receive a ``FitTask`` on its pipe, fit, send back progress messages and one final
message.  Cancelling a job kills the process (the manager starts a new one), so a
fit never runs on a gRPC thread and can always be stopped.

Messages to the manager:
    ("ready",)                                  imports done
    ("rows", stage, rows)                       rows read so far in a pass
    ("iteration", k, objective)                 an objective evaluation
    ("done", result_json, extras)               the contract JSON, residual quantiles
    ("error", status_code_name, message, field) a fault in the input (or INTERNAL)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from ..solver.results import json_safe
from .task import FitTask

# the solver names its options as the CLI does; the service, as the request's fields
REQUEST_FIELDS = {
    "data": "source",
    "formula": "model.formula",
    "family": "model.family",
    "link": "model.link",
    "weights": "model.weights",
}


def worker_main(conn: Connection) -> None:
    # the terminal's Ctrl-C reaches the whole process group; the manager decides
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    from sparsemm import solver  # noqa: F401  (warm: the first fit should not pay for imports)

    conn.send(("ready",))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        conn.send(run_task(task, conn))


def _exit_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def run_task(task: FitTask, conn: Connection) -> tuple[Any, ...]:
    import pyarrow as pa

    from sparsemm import solver

    from .confined import AccessDenied

    try:
        result_json, extras = _fit(task, conn)
        return ("done", result_json, extras)
    except AccessDenied as exc:
        return ("error", "PERMISSION_DENIED", str(exc), "source")
    except solver.InputError as exc:
        return ("error", "INVALID_ARGUMENT", str(exc), REQUEST_FIELDS.get(exc.field, exc.field))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        return ("error", "INVALID_ARGUMENT", f"cannot read the data: {exc}", "source")
    except MemoryError:
        return ("error", "RESOURCE_EXHAUSTED", "the fit ran out of memory", "")
    except Exception:
        print(f"sparsemm worker: job {task.job_id} failed:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return ("error", "INTERNAL", "internal error during the fit (see the server log)", "")


def _source(task: FitTask) -> Any:
    from .confined import sql_source, table_source

    ref = task.source
    if ref.kind == "sql":
        os.chdir(ref.roots[0])  # relative paths in the query are under the first root
        return sql_source(ref.value, ref.roots)
    if ref.kind == "duckdb":
        return table_source(ref.value, ref.table, ref.roots)
    return ref.value  # a confined real path or glob, or the server's upload spool


def _fit(task: FitTask, conn: Connection) -> tuple[str, dict[str, Any]]:
    from sparsemm import solver

    started = time.perf_counter()

    def rows(stage: str, n: int) -> None:
        conn.send(("rows", stage, n))

    def iteration(k: int, value: float) -> None:
        conn.send(("iteration", k, value))

    data = solver.prepare(task.formula, _source(task), weights=task.weights, progress=rows,
                          family=task.family)  # fmt: skip
    read_s = time.perf_counter() - started
    model: Any
    if task.family == "gaussian":
        model = solver.LinearMixedModel(data, reml=task.reml, ordering=task.ordering)
    else:
        fam = solver.family(task.family, task.link)
        model = solver.GeneralizedLinearMixedModel(data, fam, ordering=task.ordering)
    fitted = model.fit(progress=iteration)
    timings = {"read_s": read_s, "fit_s": time.perf_counter() - started - read_s}
    extras = _outputs(task, fitted)
    timings["total_s"] = time.perf_counter() - started
    out = fitted.result.to_dict()
    out["timings"] = timings
    return json.dumps(json_safe(out)), extras


def _outputs(task: FitTask, fitted: Any) -> dict[str, Any]:
    """Write the tables the job keeps; the scaled residuals' quantiles (as the CLI's)."""
    import pyarrow.parquet as pq

    from sparsemm.summary import residual_quantiles

    extras: dict[str, Any] = {}
    if task.ranef or task.fitted:
        os.makedirs(task.out_dir, exist_ok=True)
    if task.ranef:
        extras["ranef_path"] = os.path.join(task.out_dir, "ranef.parquet")
        pq.write_table(fitted.ranef(), extras["ranef_path"])
    if task.fitted or task.residual_quantiles:
        table = fitted.fitted()
        if task.fitted:
            extras["fitted_path"] = os.path.join(task.out_dir, "fitted.parquet")
            pq.write_table(table, extras["fitted_path"])
        if task.residual_quantiles:  # lme4's "Scaled residuals", as the CLI shows them
            extras["residual_quantiles"] = residual_quantiles(table.column("pearson").to_numpy())
    return extras
