"""The thin client: grpcio, protobuf and pyarrow, nothing of the solver.

    from sparsemm_client import Client
    with Client("127.0.0.1:50051", token=...) as c:
        m = c.fit("Reaction ~ Days + (Days | Subject)", "sleepstudy.parquet")
        print(m.summary()); m.fixef; m.ranef()

``data`` is a source on the server (a path or glob under its data roots,
``duckdb:PATH:TABLE``, ``sql:SELECT ...``) or a table to upload: a pyarrow Table,
RecordBatch or RecordBatchReader, a pandas DataFrame, or a DuckDB relation.  An
upload travels as one Arrow IPC stream cut into messages of ``chunk_bytes``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import pyarrow as pa

from sparsemm.v1 import sparsemm_pb2 as pb
from sparsemm.v1 import sparsemm_pb2_grpc as pb_grpc

from .errors import SparsemmError
from .result import Anova, ConfidenceIntervals, FitResult, Job, Progress

ProgressCallback = Callable[[Progress], None]
R = TypeVar("R")
UPLOAD_BATCH_ROWS = 65_536
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _read(path_or_bytes: str | bytes | None) -> bytes | None:
    if path_or_bytes is None or isinstance(path_or_bytes, bytes):
        return path_or_bytes
    with open(path_or_bytes, "rb") as f:
        return f.read()


def _enum(enum: Any, prefix: str, word: str | None, field: str) -> int:
    if word is None:
        return 0
    try:
        return int(enum.Value(prefix + word.upper()))
    except ValueError:
        raise SparsemmError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{field.split('.')[-1]} '{word}' is not known", field
        ) from None


def model_spec(
    formula: str,
    ml: bool = False,
    weights: str | None = None,
    family: str = "gaussian",
    link: str | None = None,
    ordering: str = "auto",
) -> pb.ModelSpec:
    return pb.ModelSpec(
        formula=formula,
        family=_enum(pb.Family, "FAMILY_", family, "model.family"),
        link=_enum(pb.Link, "LINK_", link, "model.link"),
        method=pb.METHOD_ML if ml else pb.METHOD_UNSPECIFIED,  # the family's default
        weights=weights or "",
        ordering=_enum(pb.Ordering, "ORDERING_", ordering, "model.ordering"),
    )


def output_options(
    ranef: bool,
    fitted: bool,
    residual_quantiles: bool,
    ranef_path: str | None = None,
    fitted_path: str | None = None,
    satterthwaite: bool = False,
    icc: bool = False,
) -> pb.OutputOptions:
    return pb.OutputOptions(
        ranef=ranef, fitted=fitted, residual_quantiles=residual_quantiles,
        ranef_path=ranef_path or "", fitted_path=fitted_path or "",
        satterthwaite=satterthwaite, icc=icc,
    )  # fmt: skip


class Client:
    """A connection to a sparsemm server.

    ``token`` is sent as a bearer token; ``tls_ca`` (a PEM path or bytes) turns on
    TLS with that CA, and ``tls_cert``/``tls_key`` present a client certificate for
    servers that require mutual TLS.
    """

    def __init__(
        self,
        target: str,
        token: str | None = None,
        tls_ca: str | bytes | None = None,
        *,
        tls_cert: str | bytes | None = None,
        tls_key: str | bytes | None = None,
        chunk_bytes: int = 1 << 20,
        max_message_bytes: int = 8 << 20,
    ) -> None:
        options = [("grpc.max_receive_message_length", max_message_bytes)]
        if tls_ca is not None or tls_cert is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca),
                private_key=_read(tls_key),
                certificate_chain=_read(tls_cert),
            )
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._stub = pb_grpc.SparseMMServiceStub(self._channel)
        self.chunk_bytes = chunk_bytes

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ fits

    def fit(
        self,
        formula: str,
        data: Any,
        *,
        ml: bool = False,
        weights: str | None = None,
        family: str = "gaussian",
        link: str | None = None,
        ordering: str = "auto",
        ranef: bool = True,
        fitted: bool = False,
        residual_quantiles: bool = True,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        name: str | None = None,
        ranef_path: str | None = None,
        fitted_path: str | None = None,
        satterthwaite: bool = False,
        icc: bool = False,
    ) -> FitResult:
        """Fit on the server and wait for the result (cancelled if this call is).

        ``ranef_path``/``fitted_path``: write that table to this Parquet path on the
        server (under its ``--output-root``) instead of keeping it for ``ranef()`` /
        ``fitted()``; ``result.written`` says where it went.  ``satterthwaite``: lmerTest's
        df and p-value of every fixed effect; ``icc``: performance::icc (LMMs only).
        """
        model = model_spec(formula, ml, weights, family, link, ordering)
        outputs = output_options(ranef, fitted, residual_quantiles, ranef_path, fitted_path,
                                 satterthwaite, icc)  # fmt: skip
        if isinstance(data, str):
            request = pb.FitRequest(source=data, model=model, outputs=outputs)
            call = self._stub.Fit(request, timeout=timeout, metadata=self._metadata)
            return self._follow(call, progress, lambda m, j, _: FitResult(m, j, self, data))
        data_name = name or "table"
        header = pb.UploadHeader(model=model, outputs=outputs, name=data_name)
        requests = self._upload(header, _reader(data))
        call = self._stub.FitUpload(requests, timeout=timeout, metadata=self._metadata)
        return self._follow(call, progress, lambda m, j, _: FitResult(m, j, self, data_name))

    def anova(
        self,
        *models: FitResult | str,
        data: str | None = None,
        weights: str | None = None,
        ordering: str = "auto",
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> Anova:
        """lme4's ``anova(m0, m1)``: a likelihood-ratio test of two nested LMMs.

        Without ``data``, ``models`` are two finished fits (``FitResult`` or job ids; an
        ML fit is used as kept, a REML fit refitted by ML on the server).  With ``data``
        (a server-side source), they are two formulas, fitted to it by ML.
        """
        if len(models) != 2:
            raise TypeError("anova() compares two models")
        if data is None:
            ids = [m.job_id if isinstance(m, FitResult) else m for m in models]
            request = pb.CompareModelsRequest(job_ids=ids)
        else:
            specs = [model_spec(str(f), True, weights, ordering=ordering) for f in models]
            request = pb.CompareModelsRequest(source=data, models=specs)
        call = self._stub.CompareModels(request, timeout=timeout, metadata=self._metadata)
        return self._follow(call, progress, Anova)

    def predict(
        self,
        job_id: str,
        newdata: Any,
        *,
        re_form: str | None = None,
        allow_new_levels: bool = True,
        se_fit: bool = False,
        out_path: str | None = None,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        name: str | None = None,
    ) -> pa.Table:
        """lme4's ``predict(m, newdata, re.form, allow.new.levels)`` of a finished LMM fit
        job: columns ``fit`` (and ``se_fit``), one row per new row, null where a row has
        missing values.  ``newdata``: a server-side source or a table to upload (as for
        ``fit``).  ``re_form``: None (every term), "NA" (none) or e.g. "~(1 | Subject)".

        The server refits the job's model on its source.  ``out_path``: write the
        predictions to this Parquet path on the server instead; the table returned is
        then empty.  Its schema metadata ``b"sparsemm.prediction"`` holds the server's
        account (JSON: rows, null_rows, written, withheld, disclosure, ...); under the
        server's disclosure control row-level predictions are withheld (``withheld``).
        """
        request = pb.PredictRequest(
            job_id=job_id, refuse_new_levels=not allow_new_levels, se_fit=se_fit,
            out_path=out_path or "", **({} if re_form is None else {"re_form": re_form}),
        )  # fmt: skip
        if isinstance(newdata, str):
            request.source = newdata
            call = self._stub.Predict(request, timeout=timeout, metadata=self._metadata)
        else:
            request.name = name or "table"
            requests = self._upload(request, _reader(newdata), pb.PredictUploadRequest)
            call = self._stub.PredictUpload(requests, timeout=timeout, metadata=self._metadata)
        return self._prediction(call, progress)

    def confint(
        self,
        job_id: str,
        method: str = "profile",
        level: float = 0.95,
        parm: list[str] | None = None,
        *,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> ConfidenceIntervals:
        """lme4's ``confint(m, method = "profile" | "Wald", level, parm)`` of a finished LMM
        fit job (its model refitted on the server): rows ``.sig01``, ..., ``.sigma``, then
        the fixed effects."""
        request = pb.ConfidenceIntervalsRequest(
            job_id=job_id, level=level, parameters=parm or [],
            method=_enum(pb.IntervalMethod, "INTERVAL_METHOD_", method, "method"),
        )  # fmt: skip
        call = self._stub.ConfidenceIntervals(request, timeout=timeout, metadata=self._metadata)
        return self._follow(call, progress, lambda m, j, _: ConfidenceIntervals(m, j))

    def _prediction(self, call: Any, progress: ProgressCallback | None) -> pa.Table:
        """A prediction's stream: job, progress, the result, then the batches."""
        result: Any = None
        batches: list[pa.RecordBatch] = []
        try:
            for response in call:
                kind = response.WhichOneof("event")
                if kind == "progress" and progress is not None:
                    progress(Progress.from_proto(response.progress))
                elif kind == "result":
                    result = response.result
                elif kind == "batch":
                    batches.extend(pa.ipc.open_stream(response.batch.data))
        except grpc.RpcError as err:
            raise SparsemmError.from_rpc(err) from None
        except BaseException:
            call.cancel()
            raise
        if result is None:
            raise SparsemmError(grpc.StatusCode.UNKNOWN, "the server ended without a result")
        meta = {b"sparsemm.prediction": result.result_json.encode()}
        if not batches:
            return pa.table({"fit": pa.array([], pa.float64())}).replace_schema_metadata(meta)
        return pa.Table.from_batches(batches).replace_schema_metadata(meta)

    def _upload(
        self, header: Any, reader: pa.RecordBatchReader, message: Any = pb.FitUploadRequest
    ) -> Iterator[Any]:
        """``message``s: the header, then the Arrow IPC stream in chunks."""
        yield message(header=header)
        for chunk in ipc_chunks(reader, self.chunk_bytes):
            yield message(arrow_ipc_chunk=chunk)

    def _follow(
        self, call: Any, progress: ProgressCallback | None, make: Callable[[Any, str, str], R]
    ) -> R:
        """Follow a job's stream to its result, made by ``make(result, job_id, source)``."""
        job_id = source = ""
        try:
            for response in call:
                kind = response.WhichOneof("event")
                if kind == "job":
                    job_id, source = response.job.job_id, response.job.source
                elif kind == "progress" and progress is not None:
                    progress(Progress.from_proto(response.progress))
                elif kind == "result":
                    return make(response.result, job_id, source)
        except grpc.RpcError as err:
            raise SparsemmError.from_rpc(err) from None
        except BaseException:
            call.cancel()  # Ctrl-C, or the progress callback failed: stop the fit
            raise
        raise SparsemmError(grpc.StatusCode.UNKNOWN, "the server ended the fit without a result")

    # ------------------------------------------------------------ jobs

    def submit(
        self,
        formula: str,
        source: str,
        *,
        ml: bool = False,
        weights: str | None = None,
        family: str = "gaussian",
        link: str | None = None,
        ordering: str = "auto",
        ranef: bool = True,
        fitted: bool = False,
        residual_quantiles: bool = True,
        ranef_path: str | None = None,
        fitted_path: str | None = None,
        satterthwaite: bool = False,
        icc: bool = False,
    ) -> Job:
        """Start a fit on a server-side source as a job that outlives this call."""
        outputs = output_options(ranef, fitted, residual_quantiles, ranef_path, fitted_path,
                                 satterthwaite, icc)  # fmt: skip
        request = pb.SubmitJobRequest(
            source=source, model=model_spec(formula, ml, weights, family, link, ordering),
            outputs=outputs,
        )  # fmt: skip
        return Job.from_proto(self._unary(self._stub.SubmitJob, request).job)

    def job(self, job_id: str) -> Job:
        return Job.from_proto(self._unary(self._stub.GetJob, pb.GetJobRequest(job_id=job_id)).job)

    def result(self, job_id: str) -> FitResult | Anova | ConfidenceIntervals:
        """The result of a job that succeeded: a fit's, a comparison's test, or confidence
        intervals (FAILED_PRECONDITION-like error otherwise)."""
        response = self._unary(self._stub.GetJob, pb.GetJobRequest(job_id=job_id))
        if response.HasField("comparison"):
            return Anova(response.comparison, job_id, response.job.source)
        if response.HasField("intervals"):
            return ConfidenceIntervals(response.intervals, job_id)
        if not response.HasField("result"):
            job = Job.from_proto(response.job)
            raise _job_error(job)
        return FitResult(response.result, job_id, self, response.job.source)

    def wait(
        self, job_id: str, progress: ProgressCallback | None = None, timeout: float | None = None
    ) -> FitResult | Anova | ConfidenceIntervals:
        """Watch a job to its end; its result, or its error raised (a prediction job's
        predictions come back from the ``predict`` call itself)."""
        job = None
        try:
            call = self._stub.WatchJob(
                pb.WatchJobRequest(job_id=job_id), timeout=timeout, metadata=self._metadata
            )
            for response in call:
                kind = response.WhichOneof("event")
                if kind == "job":
                    job = Job.from_proto(response.job)
                elif kind == "progress" and progress is not None:
                    progress(Progress.from_proto(response.progress))
                elif kind == "result":
                    return FitResult(response.result, job_id, self, job.source if job else "")
                elif kind == "comparison":
                    return Anova(response.comparison, job_id, job.source if job else "")
                elif kind == "intervals":
                    return ConfidenceIntervals(response.intervals, job_id)
        except grpc.RpcError as err:
            raise SparsemmError.from_rpc(err) from None
        if job is None:
            raise SparsemmError(grpc.StatusCode.UNKNOWN, f"no news of job '{job_id}'")
        raise _job_error(job)

    def cancel(self, job_id: str) -> Job:
        response = self._unary(self._stub.CancelJob, pb.CancelJobRequest(job_id=job_id))
        return Job.from_proto(response.job)

    def jobs(self, state: str | None = None, page_size: int = 100) -> list[Job]:
        """The caller's jobs, newest first (all pages)."""
        state_value = _enum(pb.JobState, "JOB_STATE_", state, "state")
        out: list[Job] = []
        token = ""
        while True:
            request = pb.ListJobsRequest(page_size=page_size, page_token=token, state=state_value)
            response = self._unary(self._stub.ListJobs, request)
            out.extend(Job.from_proto(j) for j in response.jobs)
            token = response.next_page_token
            if not token:
                return out

    # ------------------------------------------------------------ tables, health

    def ranef(self, job_id: str) -> pa.Table:
        return self._table(self._stub.GetRanef, pb.GetRanefRequest(job_id=job_id))

    def fitted(self, job_id: str) -> pa.Table:
        return self._table(self._stub.GetFitted, pb.GetFittedRequest(job_id=job_id))

    def _table(self, method: Any, request: Any) -> pa.Table:
        try:
            batches = [
                b
                for response in method(request, metadata=self._metadata)
                for b in pa.ipc.open_stream(response.batch.data)
            ]
        except grpc.RpcError as err:
            raise SparsemmError.from_rpc(err) from None
        if not batches:
            raise SparsemmError(grpc.StatusCode.UNKNOWN, "the server sent no table")
        return pa.Table.from_batches(batches)

    def health(self, service: str = "", timeout: float = 5.0) -> str:
        """The standard health check: SERVING, NOT_SERVING, ...  Needs no token."""
        # HealthCheckRequest{string service = 1} and HealthCheckResponse{enum status = 1},
        # encoded by hand to keep grpcio-health-checking out of the client's dependencies
        encoded = service.encode("utf-8")
        request = (b"\n" + _varint(len(encoded)) + encoded) if encoded else b""
        check = self._channel.unary_unary(HEALTH_CHECK)
        try:
            reply = check(request, timeout=timeout)
        except grpc.RpcError as err:
            raise SparsemmError.from_rpc(err) from None
        status = reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0
        return HEALTH_STATUS.get(status, "UNKNOWN")

    def _unary(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self._metadata)
        except grpc.RpcError as err:
            raise SparsemmError.from_rpc(err) from None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _job_error(job: Job) -> SparsemmError:
    if job.error is None:
        return SparsemmError(
            grpc.StatusCode.FAILED_PRECONDITION, f"job '{job.job_id}' is {job.state.lower()}"
        )
    code = grpc.StatusCode.__members__.get(job.error.code, grpc.StatusCode.UNKNOWN)
    return SparsemmError(code, job.error.message, job.error.field)


def _reader(data: Any) -> pa.RecordBatchReader:
    """An Arrow reader over what the caller gave to upload."""
    if isinstance(data, pa.RecordBatchReader):
        return data
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    elif hasattr(data, "to_arrow_reader"):  # a DuckDB relation
        return data.to_arrow_reader(UPLOAD_BATCH_ROWS)
    elif hasattr(data, "iloc"):  # a pandas DataFrame
        data = pa.Table.from_pandas(data, preserve_index=False)
    if not isinstance(data, pa.Table):
        raise TypeError(
            "data must be a server-side source name, a pyarrow Table/RecordBatch/"
            f"RecordBatchReader, a pandas DataFrame or a DuckDB relation, not {type(data)}"
        )
    return pa.RecordBatchReader.from_batches(
        data.schema, data.to_batches(max_chunksize=UPLOAD_BATCH_ROWS)
    )


class _Sink:
    """A write-only file that hands its bytes out in chunks."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.closed = False

    def write(self, data: Any) -> int:
        self.buffer += bytes(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self, size: int, everything: bool = False) -> Iterator[bytes]:
        while len(self.buffer) >= size or (everything and self.buffer):
            chunk = bytes(self.buffer[:size])
            del self.buffer[:size]
            yield chunk


def ipc_chunks(reader: pa.RecordBatchReader, chunk_bytes: int) -> Iterator[bytes]:
    """One Arrow IPC stream of ``reader``'s batches, cut into pieces of ``chunk_bytes``;
    at most one batch is held in memory."""
    sink = _Sink()
    writer = pa.ipc.new_stream(sink, reader.schema)
    for batch in reader:
        writer.write_batch(batch)
        yield from sink.take(chunk_bytes)
    writer.close()
    yield from sink.take(chunk_bytes, everything=True)
