"""The servicer: validate, convert (``convert``), delegate (``jobs``); nothing else.

Every method maps ``ServiceError`` to its status (with the field in the status
details) and anything unexpected to INTERNAL without a traceback; the server keeps
serving either way.  Jobs belong to the caller's identity (``auth``): another
caller's job is NOT_FOUND.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import pyarrow as pa

from sparsemm.v1 import sparsemm_pb2 as pb
from sparsemm.v1 import sparsemm_pb2_grpc as pb_grpc

from . import convert
from .auth import Authenticator
from .errors import ServiceError, code_named, invalid, status_of
from .jobs import JobManager
from .paths import DataRoots
from .store import SUCCEEDED, JobRecord
from .task import SourceRef

log = logging.getLogger("sparsemm.server")
F = TypeVar("F", bound=Callable[..., Any])
MAX_PAGE = 1_000


def _unary(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except ServiceError as err:
            context.abort_with_status(status_of(err))
        except Exception:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")

    return wrapper  # type: ignore[return-value]


def _streaming(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from method(self, request, context)
        except ServiceError as err:
            context.abort_with_status(status_of(err))
        except Exception:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")

    return wrapper  # type: ignore[return-value]


def _job_id(value: str) -> str:
    if not value or len(value) > 64:
        raise invalid("job_id is empty or too long", "job_id")
    return value


class SparseMMServicer(pb_grpc.SparseMMServiceServicer):
    def __init__(
        self, jobs: JobManager, roots: DataRoots, auth: Authenticator, max_upload_bytes: int
    ) -> None:
        self.jobs = jobs
        self.roots = roots
        self.auth = auth
        self.max_upload_bytes = max_upload_bytes

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
        first = next(requests, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise invalid("the first message of an upload must be its header", "header")
        header = first.header
        job_id = uuid.uuid4().hex
        path = self.jobs.store.upload_path(job_id)
        task = convert.fit_task(
            job_id,
            SourceRef("upload", path),
            header.model,
            header.outputs,
            self.jobs.store.job_dir(job_id),
        )
        self.jobs.admit()  # before receiving what could not be queued anyway
        self._spool(requests, path, context)
        rec = self.jobs.submit(owner, f"upload:{header.name[:200] or 'table'}", task)
        yield from self._follow(rec, owner, context, pb.FitUploadResponse)

    def _submit(self, owner: str, source: str, model: Any, outputs: Any) -> JobRecord:
        ref = self.roots.resolve(source)
        job_id = uuid.uuid4().hex
        task = convert.fit_task(job_id, ref, model, outputs, self.jobs.store.job_dir(job_id))
        return self.jobs.submit(owner, source, task)

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
        """Stream a job this call started; the job ends with the call."""
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
            yield response(result=convert.fit_result(payload.result_json, payload.extras))

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
            out.result.CopyFrom(convert.fit_result(rec.result_json, rec.extras))
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
                result = convert.fit_result(payload.result_json, payload.extras)
                yield pb.WatchJobResponse(result=result)

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
        if rec.state != SUCCEEDED:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job '{job_id}' is {rec.state.lower()}, not succeeded",
                "job_id",
            )
        path = rec.extras.get(key)
        if not path or not os.path.exists(path):
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job '{job_id}' did not keep this table: set {option}",
                option,
            )
        yield from convert.arrow_batches(path)
