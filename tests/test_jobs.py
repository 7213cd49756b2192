"""The job system through the embedding API: dispatch, wait, pause/resume, cancel, failure, queueing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for_async
from jobtypes import TEST_JOB_TYPES

from daemon.app import open_app
from daemon.config import DaemonConfig
from daemon.core import Core
from daemon.errors import InvalidParams, InvalidState, JobCancelled, JobFailed, NotFound


async def open_core(path: Path, **config: object) -> Core:
    cfg = DaemonConfig(data_dir=path, socket_path=path / "unused.sock", **config)  # type: ignore[arg-type]
    return (await open_app(path, cfg, job_types=TEST_JOB_TYPES)).core


async def drain_queue(lib: Any) -> None:
    """Everything queued before now has been started: a no-op job queued last has run."""
    await (await lib.jobs.get_handle(await lib.jobs.dispatch_by_name("test.noop", {}))).wait()


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    c = await open_core(tmp_path / "data")
    yield c
    await c.shutdown()


async def test_dispatch_and_wait(core: Core) -> None:
    lib = await core.libraries.create_library("L")
    job_id = await lib.jobs.dispatch_by_name("test.steps", {"count": 5})
    out = await (await lib.jobs.get_handle(job_id)).wait()
    assert out == {"done": 5, "started_at": 0}
    info = await lib.jobs.info(job_id, transitions=True)
    assert info.status == "completed" and info.items == 5 and info.bytes == 50
    assert info.progress == 1.0 and info.checkpoint == {"next": 5} and info.checkpoints == 5
    assert [t.status for t in info.transitions] == ["queued", "running", "completed"]
    assert info.started_at <= info.finished_at


async def test_async_handler(core: Core) -> None:
    lib = await core.libraries.create_library("L")
    job_id = await lib.jobs.dispatch_by_name("test.async_steps", {"count": 3})
    assert await (await lib.jobs.get_handle(job_id)).wait() == {"done": 3}
    info = await lib.jobs.info(job_id)
    assert info.warnings == ["warning 0"] and info.items == 3


async def test_bad_input_and_unknown_type(core: Core) -> None:
    lib = await core.libraries.create_library("L")
    with pytest.raises(InvalidParams, match="count"):
        await lib.jobs.dispatch_by_name("test.steps", {"count": "many"})
    with pytest.raises(NotFound, match="no job type"):
        await lib.jobs.dispatch_by_name("nope", {})
    with pytest.raises(NotFound):
        await lib.jobs.info("missing")


async def test_failure_carries_message(core: Core) -> None:
    lib = await core.libraries.create_library("L")
    job_id = await lib.jobs.dispatch_by_name("test.steps", {"count": 5, "fail_at": 2})
    with pytest.raises(JobFailed, match="boom at step 2"):
        await (await lib.jobs.get_handle(job_id)).wait()
    info = await lib.jobs.info(job_id)
    assert info.status == "failed" and info.error == "boom at step 2" and info.items == 2


async def test_progress_visible_while_running(core: Core) -> None:
    lib = await core.libraries.create_library("L")
    sub = core.events.subscribe(["job.progress", "job.completed"])
    job_id = await lib.jobs.dispatch_by_name("test.steps", {"count": 40, "delay": 0.02})

    async def midway() -> bool:
        i = await lib.jobs.info(job_id)
        return i.status == "running" and 5 <= i.items < 40

    await wait_for_async(midway)
    info = await lib.jobs.info(job_id)
    assert 0 < info.progress < 1 and info.message.startswith("step ")
    await (await lib.jobs.get_handle(job_id)).wait()
    kinds, progress = [], []
    while True:
        ev = await asyncio.wait_for(sub.get(), 5)
        kinds.append(ev.kind if hasattr(ev, "kind") else type(ev).__name__)
        if type(ev).__name__ == "JobProgress":
            progress.append(ev.items)
        if type(ev).__name__ == "JobCompleted":
            break
    assert progress and progress == sorted(progress)
    assert progress[-1] == 40  # the final state is always delivered
    assert len(progress) < 40  # coalesced


async def test_pause_resume_continues_from_checkpoint(core: Core, tmp_path: Path) -> None:
    lib = await core.libraries.create_library("L")
    record = tmp_path / "record.txt"
    job_id = await lib.jobs.dispatch_by_name(
        "test.steps", {"count": 30, "delay": 0.02, "record": str(record)})

    async def started() -> bool:
        return (await lib.jobs.info(job_id)).items >= 5
    await wait_for_async(started)
    assert await lib.jobs.pause(job_id) == "pause_requested"

    async def paused() -> bool:
        return (await lib.jobs.info(job_id)).status == "paused"
    await wait_for_async(paused)
    info = await lib.jobs.info(job_id)
    at = info.checkpoint["next"]
    assert 5 <= at < 30
    await wait_for_async(lambda: core.job_contexts.get(job_id) is None, 10, "the job's handler to end")
    assert len(record.read_text().splitlines()) == at  # really stopped at its checkpoint
    assert (await lib.jobs.info(job_id)).checkpoint["next"] == at
    assert await lib.jobs.resume(job_id) == "queued"
    out = await (await lib.jobs.get_handle(job_id)).wait()
    assert out == {"done": 30, "started_at": at}
    steps = [int(line.split()[1]) for line in record.read_text().splitlines()]
    assert steps == list(range(30))  # nothing redone, nothing skipped
    hist = [t.status for t in (await lib.jobs.info(job_id, transitions=True)).transitions]
    assert hist == ["queued", "running", "paused", "queued", "running", "completed"]


async def test_cancel_running_and_queued(tmp_path: Path) -> None:
    core = await open_core(tmp_path / "d", max_running_jobs=1)
    try:
        lib = await core.libraries.create_library("L")
        running = await lib.jobs.dispatch_by_name("test.steps", {"count": 1000, "delay": 0.01})
        queued = await lib.jobs.dispatch_by_name("test.steps", {"count": 3})

        async def is_running() -> bool:
            return (await lib.jobs.info(running)).status == "running"
        await wait_for_async(is_running)
        assert (await lib.jobs.info(queued)).status == "queued"
        assert await lib.jobs.cancel(queued) == "cancelled"
        assert await lib.jobs.cancel(running) == "cancel_requested"
        with pytest.raises(JobCancelled):
            await (await lib.jobs.get_handle(running)).wait()
        with pytest.raises(JobCancelled):
            await (await lib.jobs.get_handle(queued)).wait()
        assert (await lib.jobs.info(running)).items < 1000
        with pytest.raises(InvalidState):
            await lib.jobs.resume(running)
    finally:
        await core.shutdown()


async def test_more_jobs_than_workers_all_finish_fifo(tmp_path: Path) -> None:
    core = await open_core(tmp_path / "d", max_running_jobs=2)
    try:
        lib = await core.libraries.create_library("L")
        ids = [await lib.jobs.dispatch_by_name("test.steps", {"count": 3, "delay": 0.01})
               for _ in range(8)]
        statuses = [(await lib.jobs.info(j)).status for j in ids]
        assert statuses.count("running") <= 2 and "queued" in statuses
        for j in ids:
            await (await lib.jobs.get_handle(j)).wait()
        started = [(await lib.jobs.info(j)).started_at for j in ids]
        assert started == sorted(started)  # FIFO
        assert {(await lib.jobs.info(j)).status for j in ids} == {"completed"}
    finally:
        await core.shutdown()


async def test_clean_shutdown_pauses_and_restart_resumes(tmp_path: Path) -> None:
    data = tmp_path / "d"
    core = await open_core(data)
    lib = await core.libraries.create_library("L")
    job_id = await lib.jobs.dispatch_by_name("test.steps", {"count": 60, "delay": 0.02})

    async def going() -> bool:
        return (await lib.jobs.info(job_id)).items >= 3
    await wait_for_async(going)
    await core.shutdown()
    core = await open_core(data)
    try:
        lib = core.libraries.get(lib.id)
        out = await (await lib.jobs.get_handle(job_id)).wait()
        assert out["done"] == 60 and out["started_at"] >= 3
        hist = [(t.status, t.note) for t in (await lib.jobs.info(job_id, transitions=True)).transitions]
        assert ("paused", "paused for shutdown") in hist
    finally:
        await core.shutdown()


async def test_user_paused_job_stays_paused_after_restart(tmp_path: Path) -> None:
    data = tmp_path / "d"
    core = await open_core(data, max_running_jobs=1)
    lib = await core.libraries.create_library("L")
    blocker = await lib.jobs.dispatch_by_name("test.steps", {"count": 3, "delay": 0.05})
    job_id = await lib.jobs.dispatch_by_name("test.steps", {"count": 3})
    assert await lib.jobs.pause(job_id) == "paused"
    await (await lib.jobs.get_handle(blocker)).wait()
    await core.shutdown()
    core = await open_core(data)
    try:
        lib = core.libraries.get(lib.id)
        await drain_queue(lib)
        assert (await lib.jobs.info(job_id)).status == "paused"
        await lib.jobs.resume(job_id)
        assert (await (await lib.jobs.get_handle(job_id)).wait())["done"] == 3
    finally:
        await core.shutdown()


async def test_two_cores_in_one_process(tmp_path: Path) -> None:
    a = await open_core(tmp_path / "a")
    b = await open_core(tmp_path / "b")
    try:
        la = await a.libraries.create_library("A")
        assert len(b.libraries) == 0
        j = await la.jobs.dispatch_by_name("test.noop", {})
        await (await la.jobs.get_handle(j)).wait()
    finally:
        await a.shutdown()
        await b.shutdown()


async def test_same_data_dir_twice_is_refused(core: Core) -> None:
    from daemon.errors import DataDirLocked
    with pytest.raises(DataDirLocked, match="in use"):
        await open_core(core.data_dir)


async def test_warnings_are_bounded(core: Core) -> None:
    lib = await core.libraries.create_library("L")
    job_id = await lib.jobs.dispatch_by_name("test.warn", {"count": 1500})
    assert await (await lib.jobs.get_handle(job_id)).wait() == 1500
    warnings = (await lib.jobs.info(job_id)).warnings
    assert len(warnings) == 1001
    assert warnings[:2] == ["w0", "w1"] and warnings[-1] == "500 more warnings not kept"


async def test_completed_event_carries_only_small_outputs(core: Core) -> None:
    lib = await core.libraries.create_library("L")
    sub = core.events.subscribe(["job.completed"])
    small = await lib.jobs.dispatch_by_name("test.big_output", {"size": 10})
    big = await lib.jobs.dispatch_by_name("test.big_output", {"size": 200_000})
    for j in (small, big):
        await (await lib.jobs.get_handle(j)).wait()
    events = {ev.job_id: ev for ev in [await asyncio.wait_for(sub.get(), 5) for _ in range(2)]}
    assert events[small].output == "x" * 10
    assert events[big].output is None  # too large for an event ...
    assert (await lib.jobs.info(big)).output == "x" * 200_000  # ... but kept with the job


async def test_concurrent_deletes_of_one_library(core: Core) -> None:
    from daemon.errors import LibraryNotFound
    lib = await core.libraries.create_library("L")
    results = await asyncio.gather(core.libraries.delete_library(lib.id),
                                   core.libraries.delete_library(lib.id), return_exceptions=True)
    assert results.count(None) == 1
    assert sum(isinstance(r, LibraryNotFound) for r in results) == 1
    assert len(core.libraries) == 0
