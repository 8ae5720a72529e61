"""The worker process: runs fits for the job manager, one at a time.

Started with the ``spawn`` method, it imports the solver once and then loops:
receive a task on its pipe (a ``FitTask``: ``fitting``; a ``CompareTask``:
``comparison``; a ``PredictTask`` or ``ConfintTask``: ``after_fit``), run it, send back progress
messages and one final message.
Cancelling a job kills the process (the manager starts a new one), so a fit never
runs on a gRPC thread and can always be stopped.

Messages to the manager:
    ("ready",)                                  imports done
    ("rows", stage, rows)                       rows read so far in a pass
    ("memory", bytes, detail)                   the fit's estimate; answered ("go",)
                                                or ("refuse", message) (``admission``)
    ("iteration", k, objective)                 an objective evaluation
    ("done", result_json, extras)               the contract JSON, residual quantiles
    ("error", status_code_name, message, field) a fault in the input (or INTERNAL)
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from .disclosure import DisclosurePolicy
from .task import CompareTask, ConfintTask, PredictTask, Task

# the solver names its options as the CLI does; the service, as the request's fields
REQUEST_FIELDS = {
    "data": "source",
    "formula": "model.formula",
    "family": "model.family",
    "link": "model.link",
    "weights": "model.weights",
    "models": "models",
    "parm": "parameters",
    "which": "parameters",
}


def worker_main(conn: Connection, policy: DisclosurePolicy | None = None) -> None:
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
        conn.send(run_task(task, conn, policy))


def _exit_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def run_task(
    task: Task, conn: Connection, policy: DisclosurePolicy | None = None
) -> tuple[Any, ...]:
    import pyarrow as pa

    from sparsemm import solver

    from .after_fit import SourceChanged, run_confint, run_predict
    from .comparison import run_comparison
    from .confined import AccessDenied
    from .disclosure import DisclosureRefused
    from .fitting import AdmissionRefused, Channel, run_fit
    from .outputs import OutputRefused

    channel = Channel(conn)
    try:
        if isinstance(task, CompareTask):
            result_json, extras = run_comparison(task, channel, policy)
        elif isinstance(task, PredictTask):
            result_json, extras = run_predict(task, channel, policy)
        elif isinstance(task, ConfintTask):
            result_json, extras = run_confint(task, channel, policy)
        else:
            result_json, extras = run_fit(task, channel, policy)
        return ("done", result_json, extras)
    except AccessDenied as exc:
        return ("error", "PERMISSION_DENIED", str(exc), "source")
    except SourceChanged as exc:
        return ("error", "FAILED_PRECONDITION", str(exc), exc.field)
    except DisclosureRefused as exc:
        field = REQUEST_FIELDS.get(exc.field, exc.field)
        return ("error", "FAILED_PRECONDITION", str(exc), field)
    except OutputRefused as exc:
        return ("error", exc.code, exc.message, exc.field)
    except AdmissionRefused as exc:
        return ("error", "RESOURCE_EXHAUSTED", str(exc), "")
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
