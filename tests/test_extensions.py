"""WASM extensions end to end: the seed's two tests, then jobs, traps, bad pointers, round trips."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import BUILT_EXTENSIONS, wait_for_async
from wasm_guests import data, make_extension, module

from daemon.app import open_app
from daemon.config import DaemonConfig
from daemon.core import Core
from daemon.errors import ExtensionError, JobCancelled, JobFailed
from rpc.dispatch import Dispatcher

TEST_EXT = BUILT_EXTENSIONS / "test-extension"


def counter_input(target: int, current: int = 0, spin: int = 0) -> dict[str, str]:
    state = {"current": current, "target": target}
    if spin:
        state["spin"] = spin
    return {"extension_id": "test-extension", "export_fn": "execute_test_counter",
            "state_json": json.dumps(state)}


async def info_when(lib: Any, job_id: str, pred: Callable[[Any], bool],
                    timeout: float = 30.0) -> Any:
    """Poll ``jobs.info`` until ``pred`` holds; returns that info."""
    async def matching() -> Any:
        info = await lib.jobs.info(job_id)
        return info if pred(info) else None
    return await wait_for_async(matching, timeout, f"job {job_id} to reach the expected state")


async def drain_queue(core: Core, lib: Any) -> None:
    """Everything queued before now has been started: a native no-op job queued last has run."""
    from jobtypes import TEST_JOB_TYPES
    noop = next(t for t in TEST_JOB_TYPES if t.name == "test.noop")
    if noop.name not in core.job_types:
        core.job_types.register(noop)
    await (await lib.jobs.get_handle(await lib.jobs.dispatch_by_name(noop.name, {}))).wait()


async def new_core(data_dir: Path, **cfg: object) -> Core:
    config = DaemonConfig(data_dir=data_dir, socket_path=data_dir / "x.sock", **cfg)  # type: ignore[arg-type]
    return (await open_app(data_dir, config)).core


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    assert TEST_EXT.is_dir(), "run `make extensions` first (make test does)"
    data_dir = tmp_path / "data"
    shutil.copytree(TEST_EXT, data_dir / "extensions" / "test-extension")
    c = await new_core(data_dir)
    yield c
    await c.shutdown()


# --- the seed's two tests ---------------------------------------------------------------------
async def test_load_wasm_extension(core: Core, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    pm = core.plugin_manager
    assert pm is not None
    await pm.load_plugin("test-extension")
    loaded = await pm.list_plugins()
    assert "test-extension" in loaded
    init = [r for r in caplog.records if "✓ Test extension initialized!" in r.getMessage()]
    assert init and init[0].name == "sd.ext.test-extension"
    assert "[test-extension]" in init[0].getMessage()
    info = pm.info("test-extension")
    assert {j["name"] for j in info.jobs} == {"counter", "fail", "trap", "read_file"}


async def test_dispatch_wasm_job(core: Core, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await core.plugin_manager.load_plugin("test-extension")
    library = await core.libraries.create_library("Test")
    job_id = await library.jobs.dispatch_by_name("wasm_job", {
        "extension_id": "test-extension",
        "export_fn": "execute_test_counter",
        "state_json": '{"current": 0, "target": 10}',
    })
    handle = await library.jobs.get_handle(job_id)
    out = await handle.wait()
    assert out == {"current": 10, "target": 10}
    msgs = [r.getMessage() for r in caplog.records if r.name == "sd.ext.test-extension"]
    assert any("Starting counter (current: 0, target: 10)" in m for m in msgs)
    assert any("Counted 1/10 (10% complete)" in m for m in msgs)
    assert any("Counted 10/10 (100% complete)" in m for m in msgs)
    assert any("✓ Completed! Processed 10 items" in m for m in msgs)
    assert any("ping echo" in m and "test-extension" in m for m in msgs)  # the round trip
    info = await library.jobs.info(job_id)
    assert info.items == 10 and info.progress == pytest.approx(1.0)
    assert info.checkpoints >= 10 and info.extension_id == "test-extension"


# --- beyond the seed -------------------------------------------------------------------------
async def test_progress_and_checkpoints_visible_while_running(core: Core) -> None:
    await core.plugin_manager.load_plugin("test-extension")
    lib = await core.libraries.create_library("L")
    sub = core.events.subscribe(["job.progress", "job.cancelled"], lib.id)
    job_id = await lib.jobs.dispatch_by_name("wasm_job", counter_input(200, spin=2_000_000))
    info = await info_when(lib, job_id, lambda i: i.status == "running" and i.items >= 3)
    assert 0 < info.progress < 1 and info.checkpoints >= 2
    assert info.checkpoint["current"] >= 2 and info.message.startswith("Counted ")
    await lib.jobs.cancel(job_id)
    progress_seen = []
    while True:
        ev = await asyncio.wait_for(sub.get(), 10)
        if type(ev).__name__ == "JobProgress":
            progress_seen.append(ev.items)
        else:
            break
    assert progress_seen and progress_seen == sorted(progress_seen)


async def test_pause_and_resume_continue_from_checkpoint(core: Core,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await core.plugin_manager.load_plugin("test-extension")
    lib = await core.libraries.create_library("L")
    job_id = await lib.jobs.dispatch_by_name("wasm_job", counter_input(60, spin=3_000_000))
    await info_when(lib, job_id, lambda i: i.items >= 5)
    await lib.jobs.pause(job_id)
    await info_when(lib, job_id, lambda i: i.status == "paused")
    at = (await lib.jobs.info(job_id)).checkpoint["current"]
    assert 5 <= at < 60
    await lib.jobs.resume(job_id)
    out = await (await lib.jobs.get_handle(job_id)).wait()
    assert out["current"] == 60
    msgs = [r.getMessage() for r in caplog.records if r.name == "sd.ext.test-extension"]
    assert any(f"Starting counter (current: {at}, target: 60)" in m for m in msgs)
    counted = [m for m in msgs if "Counted " in m]
    assert len(counted) == 60  # each step exactly once across the two runs
    assert (await lib.jobs.info(job_id)).items == 60


async def test_cancel(core: Core) -> None:
    await core.plugin_manager.load_plugin("test-extension")
    lib = await core.libraries.create_library("L")
    job_id = await lib.jobs.dispatch_by_name("wasm_job", counter_input(10_000, spin=1_000_000))
    await info_when(lib, job_id, lambda i: i.items >= 2)
    await lib.jobs.cancel(job_id)
    with pytest.raises(JobCancelled):
        await (await lib.jobs.get_handle(job_id)).wait()
    assert (await lib.jobs.info(job_id)).items < 10_000


async def test_trap_fails_job_and_plugin_stays_usable(core: Core) -> None:
    await core.plugin_manager.load_plugin("test-extension")
    lib = await core.libraries.create_library("L")
    job_id = await lib.jobs.dispatch_by_name("wasm_job", {
        "extension_id": "test-extension", "export_fn": "execute_test_trap", "state_json": "{}"})
    with pytest.raises(JobFailed) as exc:
        await (await lib.jobs.get_handle(job_id)).wait()
    assert "unreachable" in str(exc.value)
    fail_id = await lib.jobs.dispatch_by_name("wasm_job", {
        "extension_id": "test-extension", "export_fn": "execute_test_fail", "state_json": "{}"})
    with pytest.raises(JobFailed, match="failed with code 2"):
        await (await lib.jobs.get_handle(fail_id)).wait()
    ok_id = await lib.jobs.dispatch_by_name("wasm_job", counter_input(3))
    assert (await (await lib.jobs.get_handle(ok_id)).wait())["current"] == 3


async def test_unknown_export_and_unloaded_extension(core: Core) -> None:
    await core.plugin_manager.load_plugin("test-extension")
    lib = await core.libraries.create_library("L")
    bad = await lib.jobs.dispatch_by_name("wasm_job", {
        "extension_id": "test-extension", "export_fn": "wasm_alloc", "state_json": "{}"})
    with pytest.raises(JobFailed, match="not a job export registered"):
        await (await lib.jobs.get_handle(bad)).wait()


async def test_job_of_an_unloaded_extension_pauses_until_it_is_loaded(core: Core) -> None:
    """Never lost: a queued job whose extension is not loaded pauses, and runs once it is."""
    lib = await core.libraries.create_library("L")
    job_id = await lib.jobs.dispatch_by_name("wasm_job", counter_input(3))
    info = await info_when(lib, job_id, lambda i: i.status == "paused")
    assert any("test-extension is not loaded" in w for w in info.warnings)
    await core.plugin_manager.load_plugin("test-extension")  # resumes it
    assert (await (await lib.jobs.get_handle(job_id)).wait())["current"] == 3


async def test_concurrent_jobs_limit_does_not_hold_global_slots(core: Core) -> None:
    """Jobs waiting for their extension's concurrent_jobs gate leave job slots to others."""
    pm = core.plugin_manager
    await pm.load_plugin("test-extension")
    pm._plugins["test-extension"].gate = asyncio.Semaphore(1)  # as a manifest saying 1 would
    lib = await core.libraries.create_library("L")
    slow = [await lib.jobs.dispatch_by_name("wasm_job", counter_input(40, spin=2_000_000))
            for _ in range(3)]

    async def running() -> list[str]:
        statuses = [(await lib.jobs.info(j)).status for j in slow]
        return statuses if "running" in statuses else []
    statuses = await wait_for_async(running, 10, "one of the jobs to run")
    assert statuses.count("running") == 1, statuses
    from jobtypes import TEST_JOB_TYPES  # a native job still gets a slot meanwhile
    core.job_types.register(TEST_JOB_TYPES[2])
    native = await lib.jobs.dispatch_by_name("test.noop", {})
    await asyncio.wait_for((await lib.jobs.get_handle(native)).wait(), 5)
    assert [(await lib.jobs.info(j)).status for j in slow].count("completed") < 3
    for j in slow:
        assert (await (await lib.jobs.get_handle(j)).wait())["current"] == 40


async def test_unload_pauses_running_jobs_and_reload_resumes(core: Core) -> None:
    pm = core.plugin_manager
    await pm.load_plugin("test-extension")
    lib = await core.libraries.create_library("L")
    job_id = await lib.jobs.dispatch_by_name("wasm_job", counter_input(100, spin=3_000_000))
    await info_when(lib, job_id, lambda i: i.items >= 3)
    await pm.unload_plugin("test-extension")
    info = await lib.jobs.info(job_id)
    assert info.status == "paused" and 3 <= info.checkpoint["current"] < 100
    assert "test-extension" not in await pm.list_plugins()
    await drain_queue(core, lib)
    assert (await lib.jobs.info(job_id)).status == "paused"  # stays paused while unloaded
    await pm.load_plugin("test-extension")  # and continues by itself once loaded
    assert (await (await lib.jobs.get_handle(job_id)).wait())["current"] == 100


async def test_module_cache_second_load_skips_compile(core: Core) -> None:
    pm = core.plugin_manager
    await pm.load_plugin("test-extension")
    await pm.unload_plugin("test-extension")
    await pm.load_plugin("test-extension")
    assert pm.info("test-extension").from_cache is True
    entries = list((core.data_dir / "extensions" / ".cache").glob("*.cwasm"))
    assert len(entries) == 1
    entries[0].write_bytes(b"corrupt")  # a corrupt entry is ignored and rebuilt
    await pm.reload_plugin("test-extension")
    assert pm.info("test-extension").from_cache is False
    assert entries[0].stat().st_size > 1000


async def test_out_of_bounds_pointer_fails_cleanly(core: Core, tmp_path: Path) -> None:
    wat = module("""
      (func (export "plugin_init") (result i32)
        (call $log (i32.const 1) (i32.const 0x7fff0000) (i32.const 64))
        (i32.const 0))
    """, ("log",))
    src = make_extension(tmp_path / "src", "oob-guest", wat)
    with pytest.raises(ExtensionError, match="out of bounds"):
        await core.plugin_manager.install(src)
    info = core.plugin_manager.info("oob-guest")
    assert info.state == "failed" and "out of bounds" in info.error
    # The daemon goes on: the good extension still works.
    await core.plugin_manager.load_plugin("test-extension")
    lib = await core.libraries.create_library("L")
    j = await lib.jobs.dispatch_by_name("wasm_job", counter_input(2))
    assert (await (await lib.jobs.get_handle(j)).wait())["current"] == 2


async def test_spacedrive_call_answers_like_the_socket(core: Core, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The guest logs the raw reply of spacedrive_call; compare with the socket's answer."""
    caplog.set_level(logging.INFO)
    method, payload = "query:test.ping.v1", '{"n":[1,2,{"x":"y"}],"s":"\\u00e9"}'
    wat = module(f"""
      {data(16, method)}
      {data(128, payload)}
      (func (export "plugin_init") (result i32)
        (local $r i32)
        (local.set $r (call $call (i32.const 16) (i32.const {len(method)}) (i32.const 0)
                                  (i32.const 128) (i32.const {len(payload.encode())})))
        (call $log (i32.const 1) (i32.add (local.get $r) (i32.const 4)) (i32.load (local.get $r)))
        (i32.const 0))
    """, ("call", "log"))
    await core.plugin_manager.install(make_extension(tmp_path / "src", "echo-guest", wat))
    reply = next(r.getMessage() for r in caplog.records if r.name == "sd.ext.echo-guest")
    guest = json.loads(reply.split("] ", 1)[1])
    from rpc.client import Client
    from rpc.server import RpcServer
    sock = tmp_path / "s.sock"
    server = RpcServer(Dispatcher(core), sock, max_line=1 << 20)
    await server.start()
    try:
        async with await Client.connect(sock) as c:
            via_socket = await c.call(method, json.loads(payload))
    finally:
        await server.stop()
    assert guest == {"ok": via_socket}
    assert via_socket == {"echo": {"n": [1, 2, {"x": "y"}], "s": "é"}}


async def test_unloaded_guest_that_ignores_the_pause_loses_its_rights(core: Core, tmp_path: Path) -> None:
    """A job looping on spacedrive_call (never checking for interruption) is cut off at unload."""
    method, payload = "query:test.ping.v1", "{}"
    wat = module(f"""
      {data(16, method)}
      {data(64, payload)}
      (data (i32.const 8) "run")
      (func (export "plugin_init") (result i32)
        (call $register (i32.const 8) (i32.const 3) (i32.const 8) (i32.const 3) (i32.const 1)))
      (func (export "run") (param i32 i32 i32 i32) (result i32)
        (loop $forever
          (global.set $bump (i32.const 4096))
          (drop (call $call (i32.const 16) (i32.const {len(method)}) (i32.const 0)
                            (i32.const 64) (i32.const 2)))
          (br $forever))
        (i32.const 0))
    """, ("call", "register"))
    pm = core.plugin_manager
    await pm.install(make_extension(tmp_path / "src", "stubborn", wat))
    lib = await core.libraries.create_library("L")
    job_id = await lib.jobs.dispatch_by_name("wasm_job", {
        "extension_id": "stubborn", "export_fn": "run", "state_json": "{}"})
    await info_when(lib, job_id, lambda i: i.status == "running")
    await pm.unload_plugin("stubborn", grace=0.3)
    with pytest.raises(JobFailed, match="extension stubborn was unloaded"):
        await asyncio.wait_for((await lib.jobs.get_handle(job_id)).wait(), 10)


async def test_user_paused_job_is_not_resumed_by_a_load(core: Core) -> None:
    pm = core.plugin_manager
    await pm.load_plugin("test-extension")
    lib = await core.libraries.create_library("L")
    job_id = await lib.jobs.dispatch_by_name("wasm_job", counter_input(100, spin=3_000_000))
    await info_when(lib, job_id, lambda i: i.items >= 2)
    await lib.jobs.pause(job_id)
    await info_when(lib, job_id, lambda i: i.status == "paused")
    await pm.reload_plugin("test-extension")
    await drain_queue(core, lib)
    assert (await lib.jobs.info(job_id)).status == "paused"  # the user's pause stands
