"""Errors from a sparsemm server: the status code, its message and the field at fault."""

from __future__ import annotations

import grpc

from sparsemm.v1 import errors_pb2

DETAILS_KEY = "grpc-status-details-bin"
BAD_REQUEST = "google.rpc.BadRequest"


class SparsemmError(Exception):
    """A call the server refused or could not complete.

    ``code`` is the grpc.StatusCode, ``field`` the request field, formula term or
    column at fault ("" when none), ``message`` the server's one-line explanation.
    """

    def __init__(self, code: grpc.StatusCode, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    @property
    def bad_input(self) -> bool:
        """Whether the caller's input was at fault (the CLI exits 2 for these)."""
        return self.code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.OUT_OF_RANGE,
        )

    @staticmethod
    def from_rpc(err: grpc.RpcError) -> SparsemmError:
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        message = (err.details() if hasattr(err, "details") else None) or str(code)
        metadata = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
        return SparsemmError(code, message, _field(metadata))


def _field(metadata: object) -> str:
    """The first field violation of a google.rpc.BadRequest in the status details."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key != DETAILS_KEY:
            continue
        status = errors_pb2.RpcStatus.FromString(value)
        for detail in status.details:
            if detail.type_url.endswith("/" + BAD_REQUEST):
                bad = errors_pb2.BadRequest.FromString(detail.value)
                if bad.field_violations:
                    return str(bad.field_violations[0].field)
    return ""
