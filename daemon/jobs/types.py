"""Job types and the registry that finds them by name.

A job type is a NAME, a RESUMABLE flag, a msgspec input Struct and a handler
``handler(ctx, input) -> output``. A coroutine handler runs on the event loop;
a plain function runs in a worker thread of its own (the WASM job holds its
thread for the whole run).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daemon.errors import InvalidParams, NotFound

if TYPE_CHECKING:
    from daemon.jobs.context import JobContext

Handler = Callable[["JobContext", Any], Any]


@dataclass(frozen=True)
class JobType:
    name: str
    resumable: bool
    input_type: type[Any]
    handler: Handler
    description: str = ""
    # Which extension a job of this type belongs to, read from its input (wasm_job).
    owner: Callable[[Any], str | None] | None = None
    # A semaphore a job of this type must hold before it takes a global job slot
    # (an extension's concurrent_jobs), so waiting for it never blocks other jobs.
    gate: Callable[[Any], asyncio.Semaphore | None] | None = None
    # What a job of this type is called where it is shown, from its input
    # (``<extension>:<job>`` for wasm_job); None: the type's name.
    label: Callable[[Any], str | None] | None = None
    # A note for each "running" transition (e.g. the extension version it runs on).
    run_note: Callable[[Any], str | None] | None = None
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.handler))


class JobRegistry:
    """Job types by name. One per Core; tests may register their own."""

    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}

    def register(self, job_type: JobType) -> JobType:
        if job_type.name in self._types:
            raise ValueError(f"job type {job_type.name!r} is already registered")
        self._types[job_type.name] = job_type
        return job_type

    def get(self, name: str) -> JobType:
        try:
            return self._types[name]
        except KeyError:
            raise NotFound(f"no job type named {name!r}", {"known": sorted(self._types)}) from None

    def __contains__(self, name: str) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[JobType]:
        return iter(sorted(self._types.values(), key=lambda t: t.name))

    def decode_input(self, job_type: JobType, raw: Any) -> Any:
        """Validate a job's input against its type's Struct; a bad field is InvalidParams."""
        import msgspec

        try:
            if isinstance(raw, (bytes, bytearray, memoryview)):
                return msgspec.json.decode(raw, type=job_type.input_type)
            return msgspec.convert(raw, job_type.input_type)
        except msgspec.ValidationError as e:
            raise InvalidParams(f"invalid input for job {job_type.name!r}: {e}") from None
        except msgspec.DecodeError as e:
            raise InvalidParams(f"job input is not valid JSON: {e}") from None
