"""``execute_json_operation``: the single dispatch point.

Socket clients and WASM guests reach every operation through ``Dispatcher.start``:
it does all validation (method, caller, permissions, rate limits, library,
payload) synchronously, then calls the handler. The socket server and the
guests' ``spacedrive_call`` both go through it, so both get the same checks;
they differ only in which thread awaits a coroutine handler.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from msgspec import Raw

from daemon import errors
from daemon.calls import CLIENT, Caller
from daemon.core import Core
from daemon.libraries.manager import Library
from daemon.locations.fs import OpenFiles
from rpc import operations as _operations  # noqa: F401 - registers every operation
from rpc.operations import entries
from rpc.registry import OPERATIONS, OpContext, Operation

READ_OPERATION = "query:entries.read.v1"
_lookup = OPERATIONS.lookup

LOCAL = Caller(CLIENT)
"""An in-process caller with a client's rights (tests, the embedding API)."""


class Dispatcher:
    """Routes ``(method, library_id, payload, caller)`` to an operation."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.loop = asyncio.get_running_loop()

    def start(self, method: str, library_id: str | None, payload: Any,
              caller: Caller) -> tuple[Operation, Any]:
        """Validate the call, then call the handler.

        Returns the operation and what its handler returned: the result of a plain
        handler, or a coroutine to await when ``op.is_async``.
        """
        memo = caller.memo
        known = None if memo is None else memo.get(method)
        if known is None:
            op, library = self._authorize(method, library_id, caller)
            ctx = OpContext(self.core, library, caller)
            if memo is not None and library is None and caller.policy is None:
                # A client without a policy, an operation without a library: the checks
                # passed on the method's registration alone, which never changes. The
                # next call of it on this connection skips straight to its payload.
                memo[method] = (op, ctx)
        else:
            op, ctx = known
        if type(payload) is Raw and len(payload) > 4:  # a socket request's, as sent ("null": 4)
            try:
                value = op.decoder.decode(payload)
            except (msgspec.ValidationError, msgspec.DecodeError) as e:
                raise _invalid_payload(op, e) from None
        else:
            value = _decode(op, payload)
        return op, op.handler(ctx, value)

    def _authorize(self, method: str, library_id: str | None,
                   caller: Caller) -> tuple[Operation, Library | None]:
        """Every check but the payload's: the method, the caller, its policy, the library."""
        op = _lookup(method)
        if op is None:
            raise errors.MethodNotFound(f"unknown method {method!r}", {"method": method})
        if caller.kind not in op.callers:
            raise errors.PermissionDenied(f"{method} may not be called by {caller.describe()}")
        if caller.policy is not None:
            caller.policy.check(op, library_id)
        library = None
        if op.needs_library:
            if library_id is None:
                raise errors.LibraryRequired(f"{method} needs a library id",
                                             {"method": method})
            library = self.core.libraries.get(library_id)
        return op, library

    async def execute_json_operation(self, method: str, library_id: str | None, payload: Any,
                                     caller: Caller = LOCAL) -> Any:
        """Validate and run one operation; returns its result or raises an SdError."""
        op, result = self.start(method, library_id, payload, caller)
        if op.is_async:
            result = await result
        return result

    def read_entry_into(self, library_id: str, entry_id: int, offset: int, buf: memoryview,
                        caller: Caller, files: OpenFiles | None = None) -> int:
        """ABI v2 ``entry_read``: ``query:entries.read.v1``'s checks (caller, grant, rate,
        library), then its bytes straight into ``buf``. Blocking: a guest's thread only."""
        _, library = self._authorize(READ_OPERATION, library_id, caller)
        assert library is not None  # entries.read is registered with library=True
        return entries.read_into(library.db, entry_id, offset, buf, files)

    def execute_from_thread(self, method: str, library_id: str | None, payload: Any,
                            caller: Caller) -> Any:
        """The same, for a worker thread (a guest): coroutine handlers run on the loop."""
        op, result = self.start(method, library_id, payload, caller)
        if not op.is_async:
            return result
        return asyncio.run_coroutine_threadsafe(result, self.loop).result()


def _decode(op: Operation, payload: Any) -> Any:
    try:
        if type(payload) is bytes and payload and payload != b"null":
            return op.decoder.decode(payload)  # what guests send: checked first
        if isinstance(payload, (bytes, bytearray, memoryview, Raw)):
            n = len(payload)
            if n and not (n == 4 and bytes(payload) == b"null"):
                return op.decoder.decode(payload)
            payload = None
        if payload is None:
            return msgspec.convert({}, op.input_type)
        return msgspec.convert(payload, op.input_type)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise _invalid_payload(op, e) from None


def _invalid_payload(op: Operation, e: msgspec.ValidationError | msgspec.DecodeError,
                     ) -> errors.InvalidParams:
    if isinstance(e, msgspec.ValidationError):
        return errors.InvalidParams(f"invalid payload for {op.name}: {e}", {"method": op.name})
    return errors.InvalidParams(f"payload for {op.name} is not valid JSON: {e}",
                                {"method": op.name})
