"""JSON-RPC 2.0 on msgspec: parse a line, run it through the dispatcher, encode the answer.

Framing (see README): one JSON text per line, UTF-8, terminated by ``\\n``.
Params are ``{"library_id": <uuid or null>, "payload": {...}}``.

Why not jsonrpcserver: measured in this repo (README, Dependencies) its
dispatch costs ~100 µs per call and it answers a batch with one bad member
with a single -32600 instead of one error per member (spec section 6).
This module does the whole protocol in a few µs.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
from collections.abc import Awaitable
from pathlib import Path
from time import perf_counter
from typing import Any, Literal

import msgspec

from daemon import errors
from daemon.calls import Caller
from daemon.libraries.db import disk_full
from rpc.dispatch import Dispatcher

log = logging.getLogger("sd.rpc")
# Method labels of requests that name no operation, or are not requests at all.
UNKNOWN, INVALID = "unknown", "invalid"

_UNSET = msgspec.UNSET


# gc=False on the per-request Structs: made and dropped on every request, and never part
# of a reference cycle (strings, numbers and raw bytes; a result never refers back to one),
# so the cycle collector need not track them (measured: ~25 ns a request less).
class Params(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    library_id: str | None = None
    payload: msgspec.Raw = msgspec.Raw(b"")  # decoded later, straight into the op's Struct


class Request(msgspec.Struct, gc=False):
    jsonrpc: str
    method: str
    params: Params | None = None
    id: int | str | None | msgspec.UnsetType = _UNSET


class _ParamsShape(msgspec.Struct, forbid_unknown_fields=True):
    library_id: str | None = None
    payload: Any = None


class _RequestShape(msgspec.Struct):
    """Request, with params checked but not captured: classifies what is wrong with a request."""

    jsonrpc: Literal["2.0"]
    method: str
    params: _ParamsShape | None = None
    id: int | str | None | msgspec.UnsetType = _UNSET


class _Result(msgspec.Struct, gc=False):
    jsonrpc: str
    id: Any
    result: Any


class _Error(msgspec.Struct):
    jsonrpc: str
    id: Any
    error: dict[str, Any]


class Notification(msgspec.Struct):
    jsonrpc: str
    method: str
    params: Any


_request = msgspec.json.Decoder(Request)
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_any = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_encode = _encoder.encode


def encode_error(id: Any, err: errors.SdError) -> bytes:
    return _encoder.encode(_Error("2.0", id, err.to_dict()))


def encode_notification(method: str, params: Any) -> bytes:
    return _encoder.encode(Notification("2.0", method, params))


def error_from_exception(exc: BaseException, method: str | None = None) -> errors.SdError:
    """Map any exception to an SdError: the one place where that happens."""
    if isinstance(exc, errors.SdError):
        return exc
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        # A write outside the databases (an extension install, loaded.json ...).
        return disk_full(Path(exc.filename or "the data dir"), exc.strerror or exc)
    log.exception("internal error in %s", method or "request", exc_info=exc)
    return errors.InternalError(f"internal error: {type(exc).__name__}: {exc}")


class JsonRpc:
    """Turns request lines into response bytes using a Dispatcher."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self._start = dispatcher.start
        self._ok = dispatcher.core.requests.ok
        self._error = dispatcher.core.requests.error

    def handle(self, line: bytes | msgspec.Raw,
               caller: Caller) -> bytes | None | Awaitable[bytes | None]:
        """Answer one line: the response now, None for no response, or an awaitable.

        Every request pays for this path, so it is written out with few calls.
        """
        try:
            req = _request.decode(line)
        except msgspec.DecodeError:  # a batch, or not a request
            if type(line) is bytes:
                stripped = line.lstrip()
                if stripped[:1] == b"[":
                    return self._batch(stripped, caller)
            return self._malformed(line)
        t0 = perf_counter()
        method = req.method
        if req.jsonrpc != "2.0":
            self._error(INVALID, str(errors.InvalidRequest.code), perf_counter() - t0)
            return None if req.id is _UNSET else encode_error(
                req.id, errors.InvalidRequest('"jsonrpc" must be "2.0"'))
        params = req.params
        try:
            if params is None:
                op, result = self._start(method, None, None, caller)
            else:
                op, result = self._start(method, params.library_id, params.payload, caller)
        except Exception as e:  # noqa: BLE001 - every error becomes a JSON-RPC error object
            err = error_from_exception(e, method)
            # Only registered names become label values, never a client's made-up ones.
            self._error(UNKNOWN if isinstance(err, errors.MethodNotFound) else method,
                        str(err.code), perf_counter() - t0)
            return None if req.id is _UNSET else encode_error(req.id, err)
        rid = req.id
        if op.is_async:
            return self._finish(result, rid, method, t0)
        if rid is _UNSET:  # a notification: run, never answered
            self._ok(method, perf_counter() - t0)
            return None
        try:
            out = _encode(_Result("2.0", rid, result))
        except (TypeError, msgspec.EncodeError) as e:
            return self._unencodable(e, rid, method, t0)
        self._ok(method, perf_counter() - t0)
        return out

    async def _finish(self, aw: Awaitable[Any], rid: Any, method: str, t0: float) -> bytes | None:
        try:
            result = await aw
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            err = error_from_exception(e, method)
            self._error(method, str(err.code), perf_counter() - t0)
            return None if rid is _UNSET else encode_error(rid, err)
        if rid is _UNSET:
            self._ok(method, perf_counter() - t0)
            return None
        try:
            out = _encode(_Result("2.0", rid, result))
        except (TypeError, msgspec.EncodeError) as e:
            return self._unencodable(e, rid, method, t0)
        self._ok(method, perf_counter() - t0)
        return out

    def _unencodable(self, exc: Exception, rid: Any, method: str, t0: float) -> bytes:
        """A handler's result that is not JSON: an internal error, answered as one."""
        err = error_from_exception(exc, method)
        self._error(method, str(err.code), perf_counter() - t0)
        return encode_error(rid, err)

    def _malformed(self, text: bytes | msgspec.Raw) -> bytes | None:
        """A request that did not decode as a Request: parse error, bad params or bad request."""
        err, rid, answer = self._classify(text)
        self._error(INVALID, str(err.code), 0.0)
        return encode_error(rid, err) if answer else None

    def _classify(self, text: bytes | msgspec.Raw) -> tuple[errors.SdError, Any, bool]:
        """(the error, the id to answer with, whether to answer at all)."""
        try:
            obj = _any.decode(text)
        except msgspec.DecodeError as e:
            return errors.ParseError(f"parse error: {e}"), None, True
        rid = None
        if isinstance(obj, dict):
            maybe = obj.get("id")
            if isinstance(maybe, (str, int)) and not isinstance(maybe, bool):
                rid = maybe
        try:
            msgspec.convert(obj, _RequestShape)
        except msgspec.ValidationError as e:
            if str(e).endswith("`$.params`") or "- at `$.params." in str(e):
                # A notification is never answered, even when wrong.
                return errors.InvalidParams(
                    f'params must be {{"library_id": <uuid or null>, "payload": {{...}}}}: '
                    f'{e}'), rid, "id" in obj
            return errors.InvalidRequest(f"invalid request: {e}"), rid, True
        return errors.InvalidRequest("invalid request"), rid, True

    # --- batches ------------------------------------------------------------------------
    def _batch(self, line: bytes, caller: Caller) -> bytes | None | Awaitable[bytes | None]:
        try:
            members = _raw_list.decode(line)
        except msgspec.ValidationError:
            return self._malformed(line)
        except msgspec.DecodeError as e:
            return encode_error(None, errors.ParseError(f"parse error: {e}"))
        if not members:
            return encode_error(None, errors.InvalidRequest("empty batch"))
        answers: list[bytes | None | Awaitable[bytes | None]] = []
        for raw in members:
            # A member is answered like a line of its own, but is never a batch itself.
            answers.append(self.handle(raw, caller))
        if any(inspect.isawaitable(a) for a in answers):
            return self._gather(answers)
        return _join(answers)  # type: ignore[arg-type]

    async def _gather(self, answers: list[bytes | None | Awaitable[bytes | None]]) -> bytes | None:
        done = await asyncio.gather(*(a if inspect.isawaitable(a) else _ready(a) for a in answers))
        return _join(list(done))


async def _ready(value: bytes | None) -> bytes | None:
    return value


def _join(parts: list[bytes | None]) -> bytes | None:
    present = [p for p in parts if p is not None]
    if not present:
        return None
    return b"[" + b",".join(present) + b"]"
