"""The operations registry: every operation, registered once, with its contract.

An operation is a name (``query:<domain>.<name>.v1`` for reads,
``action:<domain>.<name>.input.v1`` for writes), a msgspec Struct for its
input, a handler, whether it needs a library, and which callers may use it.
Handlers are coroutines, or plain functions that must be safe to run on any
thread (they are run inline: on the loop for socket clients, on the guest's
thread for extensions).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from daemon.calls import CLIENT, EXTENSION, Caller
from daemon.core import Core
from daemon.libraries.manager import Library

__all__ = ["CLIENT", "EXTENSION", "ALL_CALLERS", "CLIENTS_ONLY", "Empty", "OpContext", "Operation",
           "OperationRegistry", "OPERATIONS"]

ALL_CALLERS = frozenset({CLIENT, EXTENSION})
CLIENTS_ONLY = frozenset({CLIENT})

_NAME = re.compile(r"^(query:[a-z_]+(\.[a-z_]+)+\.v[0-9]+|action:[a-z_]+(\.[a-z_]+)+\.input\.v[0-9]+)$")


class OpContext(msgspec.Struct, frozen=True, eq=False):
    """What an operation handler receives besides its input.

    A Struct rather than a dataclass: its constructor is native code (half the
    cost, measured). Frozen: a socket client's dispatcher reuses one across calls.
    """

    core: Core
    library: Library | None
    caller: Caller

    def need_library(self) -> Library:
        assert self.library is not None, "operation registered without library=True"
        return self.library


class Empty(msgspec.Struct, forbid_unknown_fields=True):
    """Input of operations that take nothing."""


@dataclass(frozen=True)
class Operation:
    name: str
    input_type: type[Any]
    handler: Callable[[OpContext, Any], Any]
    needs_library: bool
    callers: frozenset[str]
    summary: str
    # An extension may call it only if its manifest names it exactly (no prefix grant),
    # or names exactly one of ``granted_by`` (operations that already give that power).
    explicit_grant: bool = False
    granted_by: tuple[str, ...] = ()
    is_async: bool = field(init=False)
    decoder: msgspec.json.Decoder[Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.handler))
        object.__setattr__(self, "decoder", msgspec.json.Decoder(self.input_type))


class OperationRegistry:
    def __init__(self) -> None:
        self._ops: dict[str, Operation] = {}
        self.lookup: Callable[[str], Operation | None] = self._ops.get
        """``get`` without a method call of its own (the dispatcher's hot path)."""

    def register(self, name: str, input_type: type[Any] = Empty, *, library: bool = False,
                 callers: frozenset[str] = ALL_CALLERS, explicit_grant: bool = False,
                 granted_by: tuple[str, ...] = (),
                 ) -> Callable[[Callable[[OpContext, Any], Any]], Callable[[OpContext, Any], Any]]:
        """Decorator: register ``handler(ctx, input)`` as operation ``name``."""
        if not _NAME.match(name):
            raise ValueError(f"operation name {name!r} does not follow the naming scheme")

        def deco(handler: Callable[[OpContext, Any], Any]) -> Callable[[OpContext, Any], Any]:
            if name in self._ops:
                raise ValueError(f"operation {name} registered twice")
            self._ops[name] = Operation(name, input_type, handler, library, callers,
                                        (inspect.getdoc(handler) or "").split("\n")[0],
                                        explicit_grant, granted_by)
            return handler
        return deco

    def get(self, name: str) -> Operation | None:
        return self._ops.get(name)

    def __iter__(self) -> Iterator[Operation]:
        return iter(sorted(self._ops.values(), key=lambda op: op.name))


OPERATIONS = OperationRegistry()
"""Filled at import time by ``rpc.operations``; read-only afterwards."""
