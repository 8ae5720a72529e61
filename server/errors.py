"""Service errors: a gRPC status code, a message, and the request field at fault.

The field travels in the standard ``grpc-status-details-bin`` trailer as a
``google.rpc.Status`` holding a ``google.rpc.BadRequest`` (see proto/.../errors.proto),
so that any gRPC client can read which field was wrong.  Messages never carry
tracebacks, secrets or file contents.
"""

from __future__ import annotations

from typing import NamedTuple

import grpc
from google.protobuf import any_pb2

from sparsemm.v1 import errors_pb2

BAD_REQUEST_TYPE_URL = "type.googleapis.com/google.rpc.BadRequest"
DETAILS_KEY = "grpc-status-details-bin"


class ServiceError(Exception):
    """A fault the caller can fix (or must be told about), with its status code."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def invalid(message: str, field: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message, field)


class _Status(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, bytes], ...]


class Status(_Status, grpc.Status):
    """The value ``ServicerContext.abort_with_status`` takes."""


def status_of(err: ServiceError) -> Status:
    details = []
    if err.field:
        violation = errors_pb2.BadRequest.FieldViolation(field=err.field, description=err.message)
        bad = errors_pb2.BadRequest(field_violations=[violation])
        details.append(any_pb2.Any(type_url=BAD_REQUEST_TYPE_URL, value=bad.SerializeToString()))
    status = errors_pb2.RpcStatus(code=err.code.value[0], message=err.message, details=details)
    return Status(err.code, err.message, ((DETAILS_KEY, status.SerializeToString()),))


def code_named(name: str) -> grpc.StatusCode:
    """A status code from its name (as the store keeps it); UNKNOWN for anything else."""
    return grpc.StatusCode.__members__.get(name, grpc.StatusCode.UNKNOWN)
