"""``sd ext new``: the files of a new extension, in Rust or C.

Each scaffold has a manifest, one resumable job ``count`` (counts to the state's
``target``, checkpointing every step) and ``test_<name>.py``, which builds the
extension, installs it into a real daemon and runs the job. Inside the sd source
tree's ``extensions/`` the new directory is part of the build (a Rust crate joins
the Cargo workspace; a C directory is added to its ``exclude``); anywhere else a
Rust crate is its own workspace. Both are built by ``scripts/build-extensions.sh``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from daemon.errors import InvalidParams
from daemon.extensions.manifest import ID_RE, MAX_ID

LANGS = ("rust", "c")


def source_tree() -> Path | None:
    """The sd source tree this CLI runs from (an editable install), if it is one."""
    root = Path(__file__).resolve().parent.parent
    ok = (root / "guest-sdk" / "c" / "spacedrive.h").is_file() and \
        (root / "scripts" / "build-extensions.sh").is_file()
    return root if ok else None


def scaffold(ext_id: str, lang: str, parent: Path, root: Path) -> tuple[Path, list[str], str | None]:
    """Write the extension ``parent/ext_id``; returns (its directory, the files written,
    a note on the source tree's Cargo.toml if it was changed)."""
    if len(ext_id) > MAX_ID or not ID_RE.fullmatch(ext_id):
        raise InvalidParams(f"extension id {ext_id!r} must match [a-z0-9][a-z0-9-]* "
                            f"(at most {MAX_ID} characters)")
    if lang not in LANGS:
        raise InvalidParams(f"--lang must be one of {', '.join(LANGS)}")
    parent = parent.resolve()
    dest = parent / ext_id
    if dest.exists():
        raise InvalidParams(f"{dest} already exists")
    in_tree = parent == root / "extensions"
    stem = ext_id.replace("-", "_")
    files: dict[str, str] = {
        "manifest.json": _manifest(ext_id, f"{stem}.wasm", lang),
        f"test_{stem}.py": _TEST.format(ext_id=ext_id, root=str(root), stem=stem),
    }
    if lang == "rust":
        sdk = "../../guest-sdk" if in_tree else str(root / "guest-sdk")
        files["Cargo.toml"] = _CARGO.format(ext_id=ext_id, sdk=sdk,
                                            own_workspace="" if in_tree else _OWN_WORKSPACE)
        files["src/lib.rs"] = _LIB_RS.format(ext_id=ext_id)
    else:
        files[f"{stem}.c"] = _C.format(ext_id=ext_id)
    note = _exclude_from_workspace(root, ext_id) if in_tree and lang == "c" else None
    for name, text in files.items():
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return dest, sorted(files), note


def _exclude_from_workspace(root: Path, ext_id: str) -> str:
    """Cargo rejects a member glob match without a Cargo.toml: exclude the C directory."""
    cargo = root / "Cargo.toml"
    text = cargo.read_text()
    m = re.search(r"^exclude = \[(.*?)\]", text, re.M | re.S)
    if m is None:
        raise InvalidParams(f"{cargo} has no [workspace] exclude = [...] line to add "
                            f"extensions/{ext_id} to")
    entries = re.findall(r'"([^"]*)"', m.group(1))
    entries.append(f"extensions/{ext_id}")
    new = "exclude = [" + ", ".join(json.dumps(e) for e in entries) + "]"
    cargo.write_text(text[:m.start()] + new + text[m.end():])
    return f'added "extensions/{ext_id}" to [workspace] exclude in {cargo}'


def _manifest(ext_id: str, wasm_file: str, lang: str) -> str:
    name = " ".join(part.capitalize() for part in ext_id.split("-"))
    return json.dumps({
        "id": ext_id, "name": name, "version": "0.1.0",
        "description": f"{name}: a resumable counting job ({'Rust' if lang == 'rust' else 'C'})",
        "author": "", "wasm_file": wasm_file,
        "permissions": {"methods": [], "libraries": "*",
                        "rate_limits": {"requests_per_minute": 600, "concurrent_jobs": 1},
                        "max_memory_mb": 64},
    }, indent=2) + "\n"


_OWN_WORKSPACE = """
# Outside the sd source tree this crate is a workspace of its own, with the
# release profile of sd's workspace.
[workspace]

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
debug = false
strip = "debuginfo"
incremental = false
"""

_CARGO = """[package]
name = "{ext_id}"
version = "0.1.0"
edition = "2021"
rust-version = "1.63"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
spacedrive-sdk = {{ path = "{sdk}" }}
serde = {{ version = "1.0", features = ["derive"] }}
serde_json = "1.0"
{own_workspace}"""

_LIB_RS = """//! {ext_id}: one resumable job, `count`, that counts from the state's `current`
//! (default 0) to its `target`, checkpointing every step: paused, cancelled or
//! killed, it goes on from the last checkpoint. Build: `make extensions`.

use serde::{{Deserialize, Serialize}};
use spacedrive_sdk::prelude::*;

spacedrive_sdk::extension! {{
    jobs = [
        // (job name, export, handler, resumable)
        ("count", execute_count, count, resumable = true),
    ];
}}

#[derive(Serialize, Deserialize)]
struct State {{
    #[serde(default)]
    current: u64,
    target: u64,
}}

fn count(ctx: &JobContext, state: &mut State) -> JobResult {{
    ctx.log(&format!("counting from {{}} to {{}}", state.current, state.target));
    while state.current < state.target {{
        state.current += 1;
        let msg = format!("{{}}/{{}}", state.current, state.target);
        ctx.report_progress(state.current as f32 / state.target as f32, &msg);
        ctx.increment_items(1);
        if let Err(e) = ctx.checkpoint(state) {{
            return JobResult::failed(format!("checkpoint failed: {{}}", e));
        }}
        if ctx.check_interrupt().should_stop() {{
            return JobResult::Interrupted;
        }}
    }}
    JobResult::Completed // the SDK checkpoints the final state: the job's output
}}
"""

_C = """/* {ext_id}: one resumable job, "count", that counts from the state's "current"
 * (default 0) to its "target", checkpointing every step: paused, cancelled or
 * killed, it goes on from the last checkpoint. Build: `make extensions`
 * (zig cc against guest-sdk/c/spacedrive.h). */
#define SPACEDRIVE_IMPLEMENTATION
#include "spacedrive.h"

/* {{"current":N,"target":N}}: the resume point, and the output once complete. */
static int32_t save(sd_job *job, uint64_t current, uint64_t target) {{
    sd_jw w = {{0}};
    sd_jw_object(&w);
    sd_jw_key(&w, "current");
    sd_jw_u64(&w, current);
    sd_jw_key(&w, "target");
    sd_jw_u64(&w, target);
    sd_jw_end(&w);
    int32_t rc = sd_job_checkpoint_jw(job, &w);
    sd_jw_free(&w);
    return rc;
}}

static int32_t count(sd_job *job, sd_json state) {{
    uint64_t current = 0, target;
    sd_json cur = sd_json_get(state, "current");
    if (cur.ptr && !sd_json_u64(cur, &current))
        return sd_job_fail(job, "\\"current\\" must be a non-negative integer");
    if (!sd_json_u64(sd_json_get(state, "target"), &target))
        return sd_job_fail(job, "the state needs {{\\"target\\": N}}");
    sd_logf(SD_INFO, "counting from %llu to %llu", (unsigned long long)current,
            (unsigned long long)target);
    sd_buf msg = {{0}};
    while (current < target) {{
        current++;
        sd_buf_clear(&msg);
        sd_buf_printf(&msg, "%llu/%llu%c", (unsigned long long)current,
                      (unsigned long long)target, 0);
        sd_job_progress(job, (float)current / (float)target, msg.ptr ? msg.ptr : "");
        sd_job_items(job, 1);
        if (save(job, current, target) != 0) {{
            sd_buf_free(&msg);
            return sd_job_fail(job, "checkpoint failed");
        }}
        if (sd_job_check_interrupt(job) != SD_CONTINUE) {{
            sd_buf_free(&msg);
            return SD_JOB_INTERRUPTED;
        }}
    }}
    sd_buf_free(&msg);
    if (save(job, current, target) != 0) return sd_job_fail(job, "checkpoint failed");
    return SD_JOB_COMPLETED; /* the output is the last checkpoint */
}}

#define JOBS(JOB) JOB("count", execute_count, count, SD_RESUMABLE)
SD_EXTENSION(JOBS, 0, 0)
"""

_TEST = '''"""{ext_id} end to end: build it, install it into a real sd daemon, run its job.

Run with the pytest of sd's venv: pytest {ext_id}/test_{stem}.py
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SD_ROOT = Path({root!r})  # the sd source tree that made this scaffold
BIN = Path(sys.executable).parent
EXT_ID = {ext_id!r}


def sd(sock: Path, *args: str) -> Any:
    r = subprocess.run([str(BIN / "sd"), "--socket", str(sock), "--json", *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def wait_ready(daemon: subprocess.Popen[bytes], sock: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert daemon.poll() is None, "sd-daemon exited"
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
            return
        except OSError:
            assert time.monotonic() < deadline, "sd-daemon not ready"
            time.sleep(0.05)


def test_count_job_runs_in_the_daemon() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))  # a socket path has 107 bytes
    try:
        subprocess.run(["bash", str(SD_ROOT / "scripts" / "build-extensions.sh"), "-q",
                        str(HERE), "--out", str(tmp / "built")], check=True, timeout=1800)
        sock = tmp / "sd.sock"
        with open(tmp / "daemon.log", "wb") as log:
            daemon = subprocess.Popen([str(BIN / "sd-daemon"), "--data-dir", str(tmp / "data"),
                                       "--socket", str(sock)], stdout=log, stderr=log)
        try:
            wait_ready(daemon, sock)
            installed = sd(sock, "ext", "install", str(tmp / "built" / EXT_ID))
            assert installed["state"] == "loaded", installed
            sd(sock, "library", "create", "test")
            job = sd(sock, "job", "run", EXT_ID, "count", "--state", '{{"target": 5}}')["job_id"]
            info = sd(sock, "job", "watch", job)
            assert info["status"] == "completed", info
            assert info["output"] == {{"current": 5, "target": 5}} and info["items"] == 5
        finally:
            daemon.terminate()
            daemon.wait(30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
'''
