"""The error hierarchy shared by the daemon, the RPC layer and the CLI.

Every class has a code of its own (sent as the JSON-RPC error code) and a stable
``kind`` string; a second class with a taken code fails when this module loads.
``error_body`` is the one place an error becomes the ``{"code", "message", "data"}``
object that socket clients and guests both receive; CLI exit codes are mapped in
``rpc.cli_common`` and nowhere else.
Codes -32768..-32000 follow JSON-RPC 2.0; our own live in -32000..-32099.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SdError(Exception):
    """Base class: a failure with a stable code that is safe to show a client."""

    code: ClassVar[int] = -32000
    kind: ClassVar[str] = "error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        taken = _BY_CODE.get(cls.code)
        if taken is not None:
            raise TypeError(f"error code {cls.code} of {cls.__name__} is already "
                            f"{taken.__name__}'s: every error class needs a code of its own")
        _BY_CODE[cls.code] = cls

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        return error_body(self)

    @classmethod
    def from_dict(cls, err: dict[str, Any]) -> SdError:
        """Rebuild the most specific error class for a JSON-RPC error object."""
        klass = _BY_CODE.get(err.get("code", 0), SdError)
        inst = klass(str(err.get("message", "")), err.get("data"))
        if klass is SdError:
            inst.code = int(err.get("code", SdError.code))  # type: ignore[misc]
        return inst


def error_body(err: SdError) -> dict[str, Any]:
    """The JSON error object of ``err``, the same for socket clients and guests."""
    body: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.data is not None:
        body["data"] = err.data
    return body


_BY_CODE: dict[int, type[SdError]] = {SdError.code: SdError}


# --- JSON-RPC 2.0 protocol errors -------------------------------------------
class ParseError(SdError):
    code = -32700
    kind = "parse_error"


class InvalidRequest(SdError):
    code = -32600
    kind = "invalid_request"


class MethodNotFound(SdError):
    code = -32601
    kind = "method_not_found"


class InvalidParams(SdError):
    code = -32602
    kind = "invalid_params"


class InternalError(SdError):
    code = -32603
    kind = "internal_error"


# --- sd errors ------------------------------------------------------------------
class LibraryRequired(SdError):
    code = -32001
    kind = "library_required"


class LibraryNotFound(SdError):
    code = -32002
    kind = "library_not_found"


class PermissionDenied(SdError):
    code = -32003
    kind = "permission_denied"


class RateLimited(SdError):
    code = -32004
    kind = "rate_limited"


class TooLarge(SdError):
    code = -32005
    kind = "too_large"


class NotFound(SdError):
    """A named thing (job, extension, entry ...) does not exist."""

    code = -32006
    kind = "not_found"


class InvalidState(SdError):
    """The operation does not apply in the target's current state."""

    code = -32007
    kind = "invalid_state"


class JobFailed(SdError):
    code = -32010
    kind = "job_failed"


class JobCancelled(SdError):
    code = -32011
    kind = "job_cancelled"


class ExtensionError(SdError):
    """An extension could not be installed, loaded or run."""

    code = -32020
    kind = "extension_error"


class LibraryUnavailable(SdError):
    """The library exists but cannot be used (its database is corrupt or unreadable)."""

    code = -32040
    kind = "library_unavailable"


class DiskFull(SdError):
    """A write failed for lack of space (SQLITE_FULL, ENOSPC); nothing committed is lost."""

    code = -32041
    kind = "disk_full"


class ShuttingDown(SdError):
    code = -32030
    kind = "shutting_down"


class DataDirLocked(SdError):
    """Another daemon holds the data dir's lock."""

    code = -32031
    kind = "data_dir_locked"


class SocketInUse(SdError):
    """The socket path is served by another daemon, or is not a socket."""

    code = -32032
    kind = "socket_in_use"


class ConnectError(SdError):
    """Client side only: the daemon's socket could not be reached."""

    code = -32099
    kind = "cannot_connect"

