"""The servicer: validate, convert (``convert``), delegate (``jobs``); nothing else.

Every method maps ``ServiceError`` to its status (with the field in the status
details) and anything unexpected to INTERNAL without a traceback; the server keeps
serving either way.  Jobs belong to the caller's identity (``auth``): another
caller's job is NOT_FOUND.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import grpc
import pyarrow as pa

from sparsemm.v1 import sparsemm_pb2 as pb
from sparsemm.v1 import sparsemm_pb2_grpc as pb_grpc

from . import convert
from .auth import Authenticator
from .disclosure import DisclosurePolicy
from .errors import ServiceError, code_named, invalid, status_of
from .jobs import JobManager
from .outputs import OutputRefused, OutputRoot
from .paths import DataRoots
from .store import SUCCEEDED, JobRecord
from .task import CompareTask, ConfintTask, FitRef, FitTask, PredictTask, SourceRef

log = logging.getLogger("sparsemm.server")
F = TypeVar("F", bound=Callable[..., Any])
MAX_PAGE = 1_000
RESULT_FIELD = {"compare": "comparison", "predict": "prediction", "confint": "intervals"}


@contextlib.contextmanager
def _statuses(name: str, context: grpc.ServicerContext) -> Iterator[None]:
    """A ServiceError becomes its status; anything else is logged and INTERNAL."""
    try:
        yield
    except ServiceError as err:
        context.abort_with_status(status_of(err))
    except Exception:
        log.exception("%s failed", name)
        context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")


def _unary(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with _statuses(method.__name__, context):
            return method(self, request, context)

    return wrapper  # type: ignore[return-value]


def _streaming(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with _statuses(method.__name__, context):
            yield from method(self, request, context)

    return wrapper  # type: ignore[return-value]


def _job_id(value: str) -> str:
    if not value or len(value) > 64:
        raise invalid("job_id is empty or too long", "job_id")
    return value


class SparseMMServicer(pb_grpc.SparseMMServiceServicer):
    def __init__(
        self,
        jobs: JobManager,
        roots: DataRoots,
        auth: Authenticator,
        max_upload_bytes: int,
        output_root: OutputRoot | None = None,
        disclosure: DisclosurePolicy | None = None,
    ) -> None:
        self.jobs = jobs
        self.roots = roots
        self.auth = auth
        self.max_upload_bytes = max_upload_bytes
        self.output_root = output_root
        self.disclosure = disclosure

    # ------------------------------------------------------------ fits

    @_streaming
    def Fit(self, request: pb.FitRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        owner = self.auth.caller(context)
        rec = self._submit(owner, request.source, request.model, request.outputs)
        yield from self._follow(rec, owner, context, pb.FitResponse)

    @_streaming
    def FitUpload(
        self, requests: Iterator[pb.FitUploadRequest], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        owner = self.auth.caller(context)
        header = _upload_header(requests)
        job_id = uuid.uuid4().hex
        path = self.jobs.store.upload_path(job_id)
        task = convert.fit_task(
            job_id,
            SourceRef("upload", path),
            header.model,
            header.outputs,
            self.jobs.store.job_dir(job_id),
            self._written(header.outputs),
        )
        self.jobs.admit()  # before receiving what could not be queued anyway
        self._spool(requests, path, context)
        rec = self.jobs.submit(owner, f"upload:{header.name[:200] or 'table'}", task)
        yield from self._follow(rec, owner, context, pb.FitUploadResponse)

    @_streaming
    def CompareModels(
        self, request: pb.CompareModelsRequest, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        owner = self.auth.caller(context)
        job_id = uuid.uuid4().hex
        if request.job_ids:
            task, name = self._compare_jobs(owner, job_id, request)
        else:
            task, name = self._compare_models(job_id, request)
        rec = self.jobs.submit(owner, name, task)
        yield from self._follow(rec, owner, context, pb.CompareModelsResponse)

    # ------------------------------------------------------------ on finished fits

    @_streaming
    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        owner = self.auth.caller(context)
        if not request.source:
            raise invalid("source is empty: name the new rows (or use PredictUpload)", "source")
        base = self._fit_ref(owner, request.job_id, "predictions")
        job_id = uuid.uuid4().hex
        new, out_dir = self.roots.resolve(request.source), self.jobs.store.job_dir(job_id)
        task = convert.predict_task(job_id, base, new, request, out_dir, self._out_path(request))
        rec = self.jobs.submit(owner, request.source, task)
        yield from self._follow_prediction(rec, owner, context)

    @_streaming
    def PredictUpload(
        self, requests: Iterator[pb.PredictUploadRequest], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        owner = self.auth.caller(context)
        header = _upload_header(requests)
        if header.source:
            raise invalid("an upload's header names no source", "header.source")
        base = self._fit_ref(owner, header.job_id, "predictions")
        job_id = uuid.uuid4().hex
        path = self.jobs.store.upload_path(job_id)
        newdata, out_dir = SourceRef("upload", path), self.jobs.store.job_dir(job_id)
        task = convert.predict_task(job_id, base, newdata, header, out_dir, self._out_path(header))
        self.jobs.admit()
        self._spool(requests, path, context)
        rec = self.jobs.submit(owner, f"upload:{header.name[:200] or 'table'}", task)
        yield from self._follow_prediction(rec, owner, context)

    @_streaming
    def ConfidenceIntervals(
        self, request: pb.ConfidenceIntervalsRequest, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        owner = self.auth.caller(context)
        base = self._fit_ref(owner, request.job_id, "confidence intervals")
        task = convert.confint_task(uuid.uuid4().hex, base, request)
        rec = self.jobs.submit(owner, self.jobs.get(base.job_id, owner).source_name, task)
        yield from self._follow(rec, owner, context, pb.ConfidenceIntervalsResponse)

    def _follow_prediction(
        self, rec: JobRecord, owner: str, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        """The job's stream, then its predictions when kept for this call."""
        yield from self._follow(rec, owner, context, pb.PredictResponse)
        path = self.jobs.get(rec.job_id, owner).extras.get("predictions_path")
        if path and os.path.exists(path):
            for batch in convert.arrow_batches(path):
                yield pb.PredictResponse(batch=batch)

    def _fit_ref(self, owner: str, job_id: str, what: str) -> FitRef:
        """A finished LMM fit job of the caller, to refit on its source (``after_fit``)."""
        rec = self.jobs.get(_job_id(job_id), owner)
        task = rec.task

        def refuse(why: str) -> ServiceError:
            message = f"job '{rec.job_id}' {why}: {what} need a linear mixed model fit"
            return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, message, "job_id")

        if not isinstance(task, FitTask):
            raise refuse("is not a fit")
        if rec.state != SUCCEEDED or not rec.result_json:
            raise refuse(f"is {rec.state.lower()}")
        if task.family != "gaussian":
            raise refuse(f"is a generalized linear mixed model ({task.family})")
        if task.source.kind == "upload":
            raise refuse("is a fit to uploaded data, which the server no longer holds")
        return convert.fit_ref(
            rec.job_id, task, rec.result_json, self.roots.resolve(rec.source_name)
        )

    def _out_path(self, request: pb.PredictRequest) -> tuple[str, str]:
        """(where to write the predictions on the server, the output root), or ("", "")."""
        if not request.out_path:
            return ("", "")
        if self.output_root is None:
            message = "this server writes no tables: it was started without --output-root"
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, message, "out_path")
        try:
            return self.output_root.target(request.out_path, "out_path"), self.output_root.path
        except OutputRefused as exc:
            raise ServiceError(code_named(exc.code), exc.message, exc.field) from None

    def _submit(self, owner: str, source: str, model: Any, outputs: Any) -> JobRecord:
        ref = self.roots.resolve(source)
        job_id = uuid.uuid4().hex
        out_dir = self.jobs.store.job_dir(job_id)
        task = convert.fit_task(job_id, ref, model, outputs, out_dir, self._written(outputs))
        return self.jobs.submit(owner, source, task)

    def _written(self, outputs: pb.OutputOptions) -> tuple[str, str, str]:
        """Where the tables asked for on the server go: (ranef, fitted, output root)."""
        asked = (("ranef_path", outputs.ranef_path), ("fitted_path", outputs.fitted_path))
        if not any(given for _, given in asked):
            return ("", "", "")
        if self.output_root is None:
            field = next(f"outputs.{name}" for name, given in asked if given)
            message = "this server writes no tables: it was started without --output-root"
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, message, field)
        try:
            ranef, fitted = (
                self.output_root.target(given, f"outputs.{name}") if given else ""
                for name, given in asked
            )
        except OutputRefused as exc:
            raise ServiceError(code_named(exc.code), exc.message, exc.field) from None
        if ranef and ranef == fitted:
            raise invalid("ranef_path and fitted_path name the same file", "outputs.fitted_path")
        return ranef, fitted, self.output_root.path

    def _compare_models(
        self, job_id: str, request: pb.CompareModelsRequest
    ) -> tuple[CompareTask, str]:
        if len(request.models) != 2:
            raise invalid("give two models (or two job_ids) to compare", "models")
        ref = self.roots.resolve(request.source)
        out_dir = self.jobs.store.job_dir(job_id)
        fits = []
        for i, model in enumerate(request.models):
            try:
                fit = convert.fit_task(job_id, ref, model, pb.OutputOptions(), out_dir)
            except ServiceError as err:  # name the model at fault
                err.field = err.field.replace("model.", f"models[{i}].", 1)
                raise
            fits.append(convert.for_comparison(fit, f"models[{i}].family"))
        task = CompareTask(job_id, (fits[0], fits[1]), source_names=(request.source,) * 2)
        return task, request.source

    def _compare_jobs(
        self, owner: str, job_id: str, request: pb.CompareModelsRequest
    ) -> tuple[CompareTask, str]:
        """Two finished fits: an ML fit's result as kept, a REML fit refitted by ML."""
        if len(request.job_ids) != 2 or request.source or request.models:
            raise invalid("give two job_ids, or a source and two models", "job_ids")
        fits, kept, names = [], [], []
        for given in request.job_ids:
            rec = self.jobs.get(_job_id(given), owner)
            fit, result_json = self._kept_or_refit(rec)
            fits.append(fit)
            kept.append(result_json)
            names.append(rec.source_name)
        name = names[0] if names[0] == names[1] else " and ".join(names)
        task = CompareTask(job_id, (fits[0], fits[1]), (kept[0], kept[1]), (names[0], names[1]))
        return task, name

    def _kept_or_refit(self, rec: JobRecord) -> tuple[FitTask, str]:
        """A finished fit job's model by ML, and its kept result if it was an ML fit
        ("" when it must be refitted: on its source, resolved afresh)."""
        if not isinstance(rec.task, FitTask) or rec.state != SUCCEEDED or not rec.result_json:
            what = "not a fit" if not isinstance(rec.task, FitTask) else rec.state.lower()
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job '{rec.job_id}' is {what}: compare fits that succeeded",
                "job_ids",
            )
        task = convert.for_comparison(rec.task, "job_ids")
        if not rec.task.reml:
            return task, rec.result_json
        if task.source.kind == "upload":
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job '{rec.job_id}' is a REML fit to uploaded data, which the server no "
                "longer holds: fit it by ML (method METHOD_ML) to compare it",
                "job_ids",
            )
        return replace(task, source=self.roots.resolve(rec.source_name)), ""

    def _spool(
        self, requests: Iterator[pb.FitUploadRequest], path: str, context: grpc.ServicerContext
    ) -> None:
        """Write the uploaded Arrow IPC stream to ``path``, within the upload quota."""
        size = 0
        try:
            with open(path, "wb") as f:
                for msg in requests:
                    if msg.WhichOneof("payload") != "arrow_ipc_chunk":
                        raise invalid("only the first message of an upload is a header", "header")
                    size += len(msg.arrow_ipc_chunk)
                    if size > self.max_upload_bytes:
                        raise ServiceError(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the upload exceeds the quota of {self.max_upload_bytes} bytes",
                            "arrow_ipc_chunk",
                        )
                    f.write(msg.arrow_ipc_chunk)
            if not context.is_active():
                raise ServiceError(grpc.StatusCode.CANCELLED, "the upload was cancelled")
            try:
                with pa.OSFile(path) as spooled:
                    pa.ipc.open_stream(spooled)  # reads the schema only
            except (pa.ArrowInvalid, OSError):
                raise invalid("the upload is not an Arrow IPC stream", "arrow_ipc_chunk") from None
        except BaseException:
            if os.path.exists(path):
                os.remove(path)
            raise

    def _follow(
        self, rec: JobRecord, owner: str, context: grpc.ServicerContext, response: Any
    ) -> Iterator[Any]:
        """Stream a job this call started (``response``: the RPC's response message type,
        with fields job, progress and result); the job ends with the call."""
        reason = "the call ended before the fit finished (cancelled, or its deadline passed)"

        def cancel() -> None:  # runs on a gRPC thread: must not block
            self.jobs.cancel(rec.job_id, None, reason, wait=False)

        if not context.add_callback(cancel):
            cancel()
        for kind, payload in self.jobs.watch(rec.job_id, owner, context.is_active):
            if kind == "progress":
                yield response(progress=convert.progress(payload))
                continue
            yield response(job=convert.job(payload))
            if kind != "final":
                continue
            if payload.state != SUCCEEDED:
                raise ServiceError(
                    code_named(payload.error_code or "UNKNOWN"),
                    payload.error_message or "the job failed",
                    payload.error_field or "",
                )
            yield response(result=self._result(payload))

    # ------------------------------------------------------------ jobs

    @_unary
    def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.ServicerContext) -> Any:
        owner = self.auth.caller(context)
        rec = self._submit(owner, request.source, request.model, request.outputs)
        return pb.SubmitJobResponse(job=convert.job(rec))

    @_unary
    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> Any:
        rec = self.jobs.get(_job_id(request.job_id), self.auth.caller(context))
        out = pb.GetJobResponse(job=convert.job(rec))
        if rec.state == SUCCEEDED and rec.result_json:
            getattr(out, RESULT_FIELD.get(rec.task.kind, "result")).CopyFrom(self._result(rec))
        return out

    @_streaming
    def WatchJob(self, request: pb.WatchJobRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        owner = self.auth.caller(context)
        for kind, payload in self.jobs.watch(_job_id(request.job_id), owner, context.is_active):
            if kind == "progress":
                yield pb.WatchJobResponse(progress=convert.progress(payload))
                continue
            yield pb.WatchJobResponse(job=convert.job(payload))
            if kind == "final" and payload.state == SUCCEEDED and payload.result_json:
                field = RESULT_FIELD.get(payload.task.kind, "result")
                yield pb.WatchJobResponse(**{field: self._result(payload)})

    @_unary
    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> Any:
        owner = self.auth.caller(context)
        job_id = _job_id(request.job_id)
        rec = self.jobs.cancel(job_id, owner, f"cancelled by {owner}")
        if rec is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, f"no job '{job_id}'", "job_id")
        return pb.CancelJobResponse(job=convert.job(rec))

    @_unary
    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> Any:
        owner = self.auth.caller(context)
        size = request.page_size or 50
        if not 0 < size <= MAX_PAGE:
            raise invalid(f"page_size must be between 1 and {MAX_PAGE}", "page_size")
        try:
            offset = int(request.page_token or "0")
        except ValueError:
            offset = -1
        if offset < 0:
            raise invalid("page_token is not one this server gave", "page_token")
        state = convert.state_word(request.state)
        recs = self.jobs.store.owned(owner, state, size + 1, offset)
        token = str(offset + size) if len(recs) > size else ""
        return pb.ListJobsResponse(
            jobs=[convert.job(r) for r in recs[:size]], next_page_token=token
        )

    def _result(self, rec: JobRecord) -> Any:
        """A finished job's result message: a FitResult, or a comparison's test.  Row-level
        figures of jobs run before disclosure control was on are not returned."""
        assert rec.result_json is not None
        if isinstance(rec.task, CompareTask):
            return convert.comparison(rec.result_json)
        if isinstance(rec.task, PredictTask):
            return convert.prediction(rec.result_json)
        if isinstance(rec.task, ConfintTask):
            return convert.intervals(rec.result_json, rec.task.base.job_id)
        extras = rec.extras
        if self.disclosure is not None and not self.disclosure.allow_row_outputs:
            extras = {k: v for k, v in extras.items() if k != "residual_quantiles"}
        return convert.fit_result(rec.result_json, extras)

    # ------------------------------------------------------------ big tables

    @_streaming
    def GetRanef(self, request: pb.GetRanefRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        for batch in self._table(request.job_id, context, "ranef_path", "outputs.ranef"):
            yield pb.GetRanefResponse(batch=batch)

    @_streaming
    def GetFitted(
        self, request: pb.GetFittedRequest, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        for batch in self._table(request.job_id, context, "fitted_path", "outputs.fitted"):
            yield pb.GetFittedResponse(batch=batch)

    def _table(
        self, job_id: str, context: grpc.ServicerContext, key: str, option: str
    ) -> Iterator[pb.ArrowBatch]:
        rec = self.jobs.get(_job_id(job_id), self.auth.caller(context))
        self._disclosed(rec, key)
        if rec.state != SUCCEEDED:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job '{job_id}' is {rec.state.lower()}, not succeeded",
                "job_id",
            )
        path = rec.extras.get(key)
        written = rec.extras.get(key.replace("_path", "_written"))
        if written:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job '{job_id}' wrote this table on the server, to {written}",
                option,
            )
        if not path or not os.path.exists(path):
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job '{job_id}' did not keep this table: set {option}",
                option,
            )
        yield from convert.arrow_batches(path)

    def _disclosed(self, rec: JobRecord, key: str) -> None:
        """Refuse a table the disclosure policy withholds: row-level tables unless allowed,
        and tables kept by a job that ran before the policy (not filtered by it)."""
        policy = self.disclosure
        if policy is None:
            return
        filtered = rec.result_json is not None and '"disclosure"' in rec.result_json
        if (key == "fitted_path" and not policy.allow_row_outputs) or not filtered:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                "withheld by the server's disclosure control",
                "job_id",
            )


def _upload_header(requests: Iterator[Any]) -> Any:
    """The header an upload stream must open with (the rest are its Arrow chunks)."""
    first = next(requests, None)
    if first is None or first.WhichOneof("payload") != "header":
        raise invalid("the first message of an upload must be its header", "header")
    return first.header
