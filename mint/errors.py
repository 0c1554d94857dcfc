"""MinT's one error type, and the tables that map its codes onto gRPC status codes and HTTP statuses.

Every layer raises `MintError(code, message)`; the server interceptor (`mint.server`) turns it into a
gRPC status, and the SDK turns a gRPC status back into the same error on the client. Messages are
written for the client who will read them: they name the offending value and what would be valid.
"""

from __future__ import annotations

import enum

import grpc


class Code(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    FAILED_PRECONDITION = "failed_precondition"
    PERMISSION_DENIED = "permission_denied"
    UNAUTHENTICATED = "unauthenticated"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    ABORTED = "aborted"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    DATA_LOSS = "data_loss"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"


GRPC_STATUS: dict[Code, grpc.StatusCode] = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Code.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.ABORTED: grpc.StatusCode.ABORTED,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Code.CANCELLED: grpc.StatusCode.CANCELLED,
    Code.DATA_LOSS: grpc.StatusCode.DATA_LOSS,
    Code.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
}
_FROM_GRPC = {status: code for code, status in GRPC_STATUS.items()}

# The HTTP door's statuses (services/gateway/http), as Google's API guidelines map the same codes.
HTTP_STATUS: dict[Code, int] = {
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.ABORTED: 409,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.CANCELLED: 499,
    Code.INTERNAL: 500,
    Code.DATA_LOSS: 500,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
}


class MintError(Exception):
    """An error a client can act on: a code from `Code` and a message naming what was wrong."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return GRPC_STATUS[self.code]

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def __repr__(self) -> str:
        return f"MintError({self.code.name}, {self.message!r})"

    def __reduce__(self):  # survives pickling (multiprocessing), which replays __init__ with these arguments
        return (MintError, (self.code, self.message))

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> MintError:
        status = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        return cls(_FROM_GRPC.get(status, Code.INTERNAL), details or status.name)


def invalid(message: str) -> MintError:
    return MintError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> MintError:
    return MintError(Code.NOT_FOUND, message)


def precondition(message: str) -> MintError:
    return MintError(Code.FAILED_PRECONDITION, message)
