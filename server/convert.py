"""The one place that converts between protobuf messages and the solver's types.

Requests become a validated ``FitTask``, ``CompareTask``, ``PredictTask`` or
``ConfintTask`` (plain data for a worker process); the solver's result, kept as the JSON
contract, becomes a ``FitResult`` message (a comparison's, a ``LikelihoodRatioTest``; a
prediction's, a ``Prediction``; intervals, ``ConfidenceIntervals``) that also carries
that JSON verbatim; job records become ``Job`` messages; Arrow tables become
``ArrowBatch`` messages, each a self-contained IPC stream under a size cap.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sparsemm.v1 import sparsemm_pb2 as pb

from .errors import invalid
from .store import JobRecord
from .task import CompareTask, ConfintTask, FitRef, FitTask, PredictTask, SourceRef

MAX_FORMULA_CHARS = 10_000
MAX_NAME_CHARS = 1_000
ARROW_MESSAGE_BYTES = 1 << 20  # target size of one ArrowBatch (well under the gRPC limit)


def _word(enum: Any, value: int, prefix: str, field: str) -> str | None:
    """The lower-case word of an enum value; None for UNSPECIFIED."""
    try:
        name = enum.Name(value)
    except ValueError:
        raise invalid(f"{field}: unknown value {value}", field) from None
    word = name[len(prefix) :].lower()
    return None if word == "unspecified" else word


def _value(enum: Any, prefix: str, word: str) -> int:
    """The enum value of a word ("gaussian", "REML", ...); UNSPECIFIED if unknown."""
    try:
        return int(enum.Value(prefix + word.upper()))
    except ValueError:
        return 0


def fit_task(
    job_id: str,
    source: SourceRef,
    model: pb.ModelSpec,
    outputs: pb.OutputOptions,
    out_dir: str,
    written: tuple[str, str, str] = ("", "", ""),
) -> FitTask:
    """Validate a model spec (field names as in the request) and make the worker's task;
    ``written``: (ranef path, fitted path, output root) on the server, resolved."""
    formula = model.formula.strip()
    if not formula:
        raise invalid("model.formula is empty", "model.formula")
    if len(formula) > MAX_FORMULA_CHARS:
        raise invalid(
            f"model.formula is longer than {MAX_FORMULA_CHARS} characters", "model.formula"
        )
    family = _word(pb.Family, model.family, "FAMILY_", "model.family") or "gaussian"
    link = _word(pb.Link, model.link, "LINK_", "model.link")
    method = _word(pb.Method, model.method, "METHOD_", "model.method")
    if family == "gaussian":
        if link not in (None, "identity"):
            raise invalid(f"link {link}: the gaussian family uses the identity link", "model.link")
        if method not in (None, "reml", "ml"):
            message = f"method {method}: a gaussian model is fitted by REML or ML"
            raise invalid(message, "model.method")
    elif method not in (None, "ml", "laplace"):
        message = f"method {method}: a {family} model is fitted by the Laplace approximation"
        raise invalid(message, "model.method")
    if len(model.weights) > MAX_NAME_CHARS:
        raise invalid("model.weights is too long", "model.weights")
    ordering = _word(pb.Ordering, model.ordering, "ORDERING_", "model.ordering") or "auto"
    for name in ("satterthwaite", "icc"):
        if getattr(outputs, name) and family != "gaussian":
            message = f"outputs.{name} needs a linear mixed model (gaussian family)"
            raise invalid(message, f"outputs.{name}")
    return FitTask(
        job_id=job_id,
        source=source,
        formula=formula,
        family=family,
        link=link,
        reml=family == "gaussian" and method in (None, "reml"),
        weights=model.weights or None,
        ordering=ordering,
        ranef=outputs.ranef or bool(written[0]),
        fitted=outputs.fitted or bool(written[1]),
        residual_quantiles=outputs.residual_quantiles,
        out_dir=out_dir,
        ranef_out=written[0],
        fitted_out=written[1],
        output_root=written[2],
        satterthwaite=outputs.satterthwaite,
        icc=outputs.icc,
    )


def model_spec(task: FitTask) -> pb.ModelSpec:
    method = pb.METHOD_REML if task.reml else pb.METHOD_ML
    return pb.ModelSpec(
        formula=task.formula,
        family=_value(pb.Family, "FAMILY_", task.family),
        link=_value(pb.Link, "LINK_", task.link or "unspecified"),
        method=method if task.family == "gaussian" else pb.METHOD_LAPLACE,
        weights=task.weights or "",
        ordering=_value(pb.Ordering, "ORDERING_", task.ordering),
    )


def for_comparison(task: FitTask, field: str) -> FitTask:
    """The fit a likelihood-ratio test needs of ``task``: by ML, no tables kept."""
    if task.family != "gaussian":
        message = "likelihood-ratio comparisons are of linear mixed models (gaussian family)"
        raise invalid(message, field)
    return replace(task, reml=False, ranef=False, fitted=False, residual_quantiles=False,
                   satterthwaite=False, icc=False)  # fmt: skip


def job(rec: JobRecord) -> pb.Job:
    task = rec.task
    msg = pb.Job(
        job_id=rec.job_id,
        state=_value(pb.JobState, "JOB_STATE_", rec.state),
        source=rec.source_name,
        kind=_value(pb.JobKind, "JOB_KIND_", task.kind),
        created_unix=rec.created_unix,
        started_unix=rec.started_unix or 0.0,
        finished_unix=rec.finished_unix or 0.0,
    )
    if isinstance(task, CompareTask):
        msg.models.extend(model_spec(f) for f in task.fits)
    elif isinstance(task, (PredictTask, ConfintTask)):
        msg.model.CopyFrom(model_spec(task.base.fit))
        msg.fit_job_id = task.base.job_id
    else:
        msg.model.CopyFrom(model_spec(task))
        msg.outputs.CopyFrom(
            pb.OutputOptions(
                ranef=task.ranef, fitted=task.fitted, residual_quantiles=task.residual_quantiles,
                ranef_path=task.ranef_out, fitted_path=task.fitted_out,
                satterthwaite=task.satterthwaite, icc=task.icc,
            )
        )  # fmt: skip
    if rec.error_code:
        msg.error.CopyFrom(
            pb.JobError(
                code=rec.error_code, message=rec.error_message or "", field=rec.error_field or ""
            )
        )
    return msg


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _set(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The keys of ``d`` whose values are not None (optional fields left unset)."""
    return {k: d[k] for k in keys if d.get(k) is not None}


def fit_result(result_json: str, extras: dict[str, Any]) -> pb.FitResult:
    """The result message from the contract JSON (kept verbatim in ``result_json``)."""
    d = json.loads(result_json)
    msg = pb.FitResult(
        formula=d["formula"],
        family=_value(pb.Family, "FAMILY_", d["family"]),
        link=_value(pb.Link, "LINK_", d["link"]),
        method=_value(pb.Method, "METHOD_", d["method"]),
        nobs=d["nobs"],
        ngroups=[pb.GroupCount(group=g, levels=n) for g, n in d["ngroups"].items()],
        fixed_effects=[
            pb.FixedEffect(
                term=fe["term"],
                estimate=_num(fe["estimate"]),
                std_error=_num(fe["std_error"]),
                statistic=_num(fe["statistic"]),
                **{k: _num(v) for k, v in _set(fe, "df", "p_value").items()},
            )
            for fe in d["fixed_effects"]
        ],
        variance_components=[
            pb.VarianceComponent(
                group=vc["group"], **_set(vc, "term", "term2", "variance", "sd", "corr")
            )
            for vc in d["variance_components"]
        ],
        theta=[_num(t) for t in d["theta"]],
        loglik=_num(d["loglik"]),
        aic=_num(d["aic"]),
        bic=_num(d["bic"]),
        deviance=_num(d["deviance"]),
        converged=d["converged"],
        singular=d["singular"],
        messages=d["messages"],
        residual_quantiles=extras.get("residual_quantiles", []),
        result_json=result_json,
        memory_estimate_bytes=extras.get("memory_estimate_bytes", 0),
        written=pb.WrittenTables(
            ranef_path=extras.get("ranef_written", ""),
            fitted_path=extras.get("fitted_written", ""),
        ),
        **_set(d, "sigma", "reml_criterion"),
    )
    if "diagnostics" in d:
        msg.diagnostics.CopyFrom(_diagnostics(d["diagnostics"]))
    if "disclosure" in d:
        msg.disclosure.CopyFrom(_disclosure(d["disclosure"]))
    if d.get("icc") is not None:
        msg.icc.CopyFrom(_icc(d["icc"]))
    if "timings" in d:
        msg.timings.CopyFrom(
            pb.Timings(
                **{
                    k: _num(v)
                    for k, v in d["timings"].items()
                    if k in ("read_s", "fit_s", "total_s")
                }
            )
        )
    return msg


def comparison(result_json: str) -> pb.LikelihoodRatioTest:
    """The test message from its JSON (``LikelihoodRatio.to_dict``), kept verbatim."""
    d = json.loads(result_json)

    def line(m: dict[str, Any]) -> pb.AnovaLine:
        nums = {k: _num(m[k]) for k in ("aic", "bic", "loglik", "deviance")}
        return pb.AnovaLine(formula=m["formula"], npar=m["npar"], **nums)

    return pb.LikelihoodRatioTest(
        small=line(d["small"]), big=line(d["big"]), chisq=_num(d["chisq"]), df=d["df"],
        p_value=_num(d["p"]), result_json=result_json,
    )  # fmt: skip


def fit_ref(job_id: str, task: FitTask, result_json: str, source: SourceRef) -> FitRef:
    """A finished fit to refit on ``source`` (its own, resolved afresh): the summary only."""
    d = json.loads(result_json)
    fit = replace(task, source=source, ranef=False, fitted=False, residual_quantiles=False,
                  ranef_out="", fitted_out="", output_root="", satterthwaite=False,
                  icc=False)  # fmt: skip
    return FitRef(job_id, fit, tuple(float(t) for t in d["theta"]), int(d["nobs"]))


def predict_task(
    job_id: str,
    base: FitRef,
    newdata: SourceRef,
    request: pb.PredictRequest,
    out_dir: str,
    written: tuple[str, str] = ("", ""),
) -> PredictTask:
    """The worker's task for a PredictRequest; ``written``: (out path, output root)."""
    re_form = request.re_form if request.HasField("re_form") else None
    if re_form is not None and (not re_form.strip() or len(re_form) > MAX_FORMULA_CHARS):
        raise invalid("re_form is empty or too long (unset it for every term)", "re_form")
    return PredictTask(
        job_id=job_id, base=base, newdata=newdata, re_form=re_form,
        allow_new_levels=not request.refuse_new_levels, se_fit=request.se_fit,
        out_dir=out_dir, out_path=written[0], output_root=written[1],
    )  # fmt: skip


def prediction(result_json: str) -> pb.Prediction:
    """A prediction job's message from its JSON (``after_fit.run_predict``), kept verbatim."""
    d = json.loads(result_json)
    msg = pb.Prediction(
        fit_job_id=d["fit_job_id"], rows=d["rows"], null_rows=d["null_rows"],
        fit_method=_value(pb.Method, "METHOD_", d["fit_method"]), fit_nobs=d["fit_nobs"],
        written_path=d["written"], withheld=d["withheld"], result_json=result_json,
    )  # fmt: skip
    if "disclosure" in d:
        msg.disclosure.CopyFrom(_disclosure(d["disclosure"]))
    return msg


def confint_task(job_id: str, base: FitRef, request: pb.ConfidenceIntervalsRequest) -> ConfintTask:
    method = _word(pb.IntervalMethod, request.method, "INTERVAL_METHOD_", "method") or "profile"
    level = request.level or 0.95
    if not 0.0 < level < 1.0:
        raise invalid(f"level {level:g} is not between 0 and 1", "level")
    parm = tuple(request.parameters)
    if len(parm) > MAX_NAME_CHARS or any(not p or len(p) > MAX_NAME_CHARS for p in parm):
        raise invalid("parameters: too many, or an empty or too long name", "parameters")
    return ConfintTask(job_id, base, method, level, parm)


def intervals(result_json: str, fit_job_id: str) -> pb.ConfidenceIntervals:
    """Intervals' message from their JSON (``solver.confint``), kept verbatim."""
    d = json.loads(result_json)
    rows = [pb.Interval(parameter=r["parameter"], **_set(r, "estimate", "lower", "upper"))
            for r in d["intervals"]]  # fmt: skip
    return pb.ConfidenceIntervals(
        fit_job_id=fit_job_id, method=_value(pb.IntervalMethod, "INTERVAL_METHOD_", d["method"]),
        level=d["level"], fit_method=_value(pb.Method, "METHOD_", d["fit_method"]),
        intervals=rows, messages=d["messages"], result_json=result_json,
        **_set(d, "deviance"),
    )  # fmt: skip


def _icc(d: dict[str, Any]) -> pb.Icc:
    def values(m: dict[str, Any]) -> list[pb.GroupValue]:
        return [pb.GroupValue(group=g, value=_num(v)) for g, v in m.items()]

    return pb.Icc(
        var_fixed=_num(d["var_fixed"]), var_residual=_num(d["var_residual"]),
        by_group=values(d["by_group"]), design_effect=values(d["design_effect"]),
        note=d["note"] or "", **_set(d, "adjusted", "conditional", "var_random"),
    )  # fmt: skip


def _disclosure(d: dict[str, Any]) -> pb.Disclosure:
    return pb.Disclosure(
        min_group_size=d["min_group_size"],
        max_saturation=d["max_saturation"],
        row_outputs_allowed=d["row_outputs_allowed"],
        ranef_withheld=[pb.WithheldLevels(**w) for w in d["ranef_withheld"]],
        withheld=d["withheld"],
        notes=d["notes"],
    )


def _diagnostics(d: dict[str, Any]) -> pb.FitDiagnostics:
    checks = [
        pb.Diagnostic(
            code=c["code"],
            severity=_value(pb.Severity, "SEVERITY_", c["severity"]),
            message=c["message"],
            **_set(c, "value", "tolerance"),
        )
        for c in d.get("checks", [])
    ]
    return pb.FitDiagnostics(
        checks=checks,
        optimizer=d.get("optimizer", ""),
        evaluations=d.get("evaluations", 0),
        q=d.get("q", 0),
        nnz_ztz=d.get("nnz_ZtZ", 0),
        nnz_l=d.get("nnz_L", 0),
        ordering=d.get("ordering", ""),
    )


def state_word(value: int) -> str | None:
    """A JobState filter as the store spells it ("SUCCEEDED"); None for UNSPECIFIED."""
    word = _word(pb.JobState, value, "JOB_STATE_", "state")
    return None if word is None else word.upper()


def progress(event: tuple[Any, ...]) -> pb.Progress:
    """A progress event: ("rows", stage, rows), ("iteration", k, objective) or
    ("memory", estimate, budget, in_use, waiting, detail)."""
    if event[0] == "rows":
        return pb.Progress(rows_read=pb.RowsRead(stage=event[1], rows=event[2]))
    if event[0] == "memory":
        _, estimate, budget, in_use, waiting, detail = event
        return pb.Progress(memory=pb.MemoryAdmission(
            estimate_bytes=estimate, budget_bytes=budget, in_use_bytes=in_use, waiting=waiting,
            detail=detail,
        ))  # fmt: skip
    return pb.Progress(iteration=pb.OptimizerIteration(evaluation=event[1], objective=event[2]))


def arrow_batches(path: str, max_bytes: int = ARROW_MESSAGE_BYTES) -> Iterator[pb.ArrowBatch]:
    """A Parquet file as ArrowBatch messages of about ``max_bytes`` each."""
    reader = pq.ParquetFile(path)
    sent = False
    for batch in reader.iter_batches(batch_size=65_536):
        rows = max(1, int(batch.num_rows * max_bytes / max(batch.nbytes, 1)))
        for offset in range(0, batch.num_rows, rows):
            part = batch.slice(offset, rows)
            sent = True
            yield pb.ArrowBatch(row_count=part.num_rows, data=_ipc_stream(part))
    if not sent:  # an empty table still tells its schema
        empty = pa.RecordBatch.from_pylist([], schema=reader.schema_arrow)
        yield pb.ArrowBatch(row_count=0, data=_ipc_stream(empty))


def _ipc_stream(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()
