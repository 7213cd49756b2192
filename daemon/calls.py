"""Who calls an operation and what limits them.

Shared by the dispatcher (``rpc.dispatch``, the layer above) and the plugin
manager (here, in the domain): the domain builds a ``Caller`` for each guest and
reaches operations only through the ``DispatchFn`` it was given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from daemon.locations.fs import OpenFiles

CLIENT = "client"
EXTENSION = "extension"


class OperationSpec(Protocol):
    """What a policy needs to know of an operation."""

    @property
    def name(self) -> str: ...

    @property
    def explicit_grant(self) -> bool: ...

    @property
    def granted_by(self) -> tuple[str, ...]: ...


class Policy(Protocol):
    """What limits an extension caller: permissions and rates (see ``ExtensionPolicy``)."""

    def check(self, op: OperationSpec, library_id: str | None) -> None: ...

    def allows_library(self, library_id: str) -> bool: ...


@dataclass(eq=False)
class Caller:
    """Who is calling. ``session`` is the socket connection for clients."""

    kind: str
    extension_id: str | None = None
    uid: int | None = None
    policy: Policy | None = None
    session: Any = None
    memo: dict[str, Any] | None = None
    """A socket client's (None for others): filled by the dispatcher, per method, with what
    its checks concluded when they depend on nothing but the method (see ``Dispatcher.start``)."""

    def sees_library(self, library_id: str) -> bool:
        return self.policy is None or self.policy.allows_library(library_id)

    def sees_job(self, job_extension_id: str | None) -> bool:
        """Extensions see only their own jobs; clients see every job."""
        return self.extension_id is None or job_extension_id == self.extension_id

    def describe(self) -> str:
        return f"extension {self.extension_id}" if self.extension_id else f"client uid={self.uid}"


DispatchFn = Callable[[str, "str | None", Any, Caller], Any]
"""``(method, library_id, payload, caller) -> result``, callable from a worker thread:
the dispatcher's ``execute_from_thread``, handed to the plugin manager by the
composition root."""

ReadIntoFn = Callable[[str, int, int, memoryview, Caller, "OpenFiles | None"], int]
"""``(library_id, entry_id, offset, buffer, caller, files) -> bytes read``: ABI v2's
``entry_read`` with ``query:entries.read.v1``'s checks, the dispatcher's
``read_entry_into``. ``files`` are the job instance's open files (None: open, read, close)."""
