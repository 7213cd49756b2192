"""What an extension may call: method prefixes, libraries and a request rate.

Operations registered with ``explicit_grant=True`` (reading file bytes, hashing them,
adding locations) need their exact name in ``permissions.methods``, or the exact name of
one of their ``granted_by`` operations (reading bytes grants hashing them); a prefix is
not enough.

Checked by the dispatcher for every ``spacedrive_call`` (``Dispatcher.start``),
the same place every socket request is checked.
"""

from __future__ import annotations

import threading
import time
import uuid

from daemon import errors
from daemon.calls import OperationSpec
from daemon.config import ExtensionLimits
from daemon.extensions.manifest import Manifest


class ExtensionPolicy:
    def __init__(self, manifest: Manifest, limits: ExtensionLimits) -> None:
        perms = manifest.permissions
        self.extension_id = manifest.id
        self.prefixes = tuple(perms.methods)
        # Compared as canonical text: a manifest may spell an id in upper case or without hyphens.
        self.libraries = None if perms.libraries == "*" else frozenset(
            str(uuid.UUID(lib)) for lib in perms.libraries)
        self.rate = min(perms.rate_limits.requests_per_minute, limits.requests_per_minute) / 60.0
        self.burst = max(self.rate, 1.0)  # one second's worth
        self._tokens = self.burst
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._granted: set[str] = set()  # operation names already found granted

    def check(self, op: OperationSpec, library_id: str | None) -> None:
        if op.name not in self._granted:
            self._check_grant(op)
        if library_id is not None and self.libraries is not None and library_id not in self.libraries:
            raise errors.PermissionDenied(
                f"extension {self.extension_id} has no access to library {library_id}")
        if not self.take_request():
            raise errors.RateLimited(
                f"extension {self.extension_id} exceeded {self.rate * 60:.0f} requests per minute")

    def take_request(self) -> bool:
        """Take one request from the rate (calls, trigger dispatches); False: none left."""
        lock = self._lock
        lock.acquire()  # not ``with``: this runs on every guest call, and costs half as much
        try:
            now = time.monotonic()
            tokens = self._tokens + (now - self._last) * self.rate
            self._last = now
            if tokens > self.burst:
                tokens = self.burst
            if tokens < 1.0:
                self._tokens = tokens
                return False
            self._tokens = tokens - 1.0
            return True
        finally:
            lock.release()

    def _check_grant(self, op: OperationSpec) -> None:
        """Refuse an operation the manifest does not grant; remember one it does."""
        if op.explicit_grant and any(name in self.prefixes for name in op.granted_by):
            self._granted.add(op.name)  # e.g. reading bytes grants hashing them
            return
        if not self.prefixes or not op.name.startswith(self.prefixes):
            raise errors.PermissionDenied(
                f"extension {self.extension_id} has no permission to call {op.name}",
                {"method": op.name, "granted": list(self.prefixes)})
        if op.explicit_grant and op.name not in self.prefixes:
            raise errors.PermissionDenied(
                f"extension {self.extension_id} has no permission to call {op.name}: it needs "
                f"an explicit grant (its exact name in permissions.methods), not a prefix",
                {"method": op.name, "granted": list(self.prefixes)})
        self._granted.add(op.name)

    def allows_library(self, library_id: str) -> bool:
        return self.libraries is None or library_id in self.libraries
