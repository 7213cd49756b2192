//! Test extension: a resumable counter job that exercises every job host
//! function and the `spacedrive_call` round trip, plus two jobs that fail on
//! purpose (`fail` returns an error, `trap` panics → wasm trap), and
//! `read_file`, which reads a file entry with ABI v2's `entry_read` (its
//! manifest grants no file access: tests and the bench install a copy that does).
//!
//! No `unsafe`, no FFI: everything goes through `spacedrive_sdk`.

use serde::{Deserialize, Serialize};
use spacedrive_sdk::hint;
use spacedrive_sdk::prelude::*;

spacedrive_sdk::extension! {
    init = init;
    cleanup = cleanup;
    jobs = [
        ("counter", execute_test_counter, counter, resumable = true),
        ("fail", execute_test_fail, fail),
        ("trap", execute_test_trap, trap),
        ("read_file", execute_test_read_file, read_file),
    ];
}

fn init() -> Result<(), String> {
    log::info("✓ Test extension initialized!");
    Ok(())
}

fn cleanup() -> Result<(), String> {
    log::info("Test extension cleaned up");
    Ok(())
}

/// State of the counter job. `current` defaults to 0; `spin` (busy-loop
/// iterations per step, default 0) lets tests slow the job down, and is
/// omitted from checkpoints when 0 so a plain run's output is exactly
/// `{"current": N, "target": N}`.
#[derive(Debug, Serialize, Deserialize)]
struct CounterState {
    #[serde(default)]
    current: u64,
    target: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    spin: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn counter(ctx: &JobContext, state: &mut CounterState) -> JobResult {
    ctx.log(&format!(
        "Starting counter (current: {}, target: {})",
        state.current, state.target
    ));

    match ctx.ping(&json!({"from": "test-extension"})) {
        Ok(reply) => {
            let echo = reply.get("echo").unwrap_or(&reply);
            ctx.log(&format!("ping echo: {}", echo));
        }
        Err(e) => {
            let msg = format!("ping failed: {}", e);
            log::warn(&msg);
            ctx.add_warning(&msg);
        }
    }

    while state.current < state.target {
        hint::spin(state.spin);
        state.current += 1;
        let percent = (state.current as u128 * 100 / state.target as u128) as u64;
        let msg = format!("Counted {}/{} ({}% complete)", state.current, state.target, percent);
        ctx.log(&msg);
        ctx.report_progress(state.current as f32 / state.target as f32, &msg);
        ctx.increment_items(1);
        if let Err(e) = ctx.checkpoint(state) {
            return JobResult::failed(format!("checkpoint failed: {}", e));
        }
        if ctx.check_interrupt().should_stop() {
            return JobResult::Interrupted;
        }
    }

    ctx.log(&format!("✓ Completed! Processed {} items", state.target));
    JobResult::Completed
}

fn fail(_ctx: &JobContext, _state: &mut Value) -> JobResult {
    JobResult::failed("deliberate failure")
}

fn trap(_ctx: &JobContext, _state: &mut Value) -> JobResult {
    // panic = "abort": the panic hook logs the message, then the module
    // executes `unreachable` and the host sees a trap.
    panic!("deliberate trap")
}

/// State of `read_file`: reads entry `entry_id` from `offset` to its end (or
/// `max_calls` calls), `passes` times, through `Library::read_into` into one
/// page-aligned `buffer`-byte buffer. Output: `bytes`, `calls`, `fnv` (FNV-1a 64 of the bytes, hex, when
/// `checksum`), and `error`/`error_message` from the first refused call.
#[derive(Debug, Serialize, Deserialize)]
struct ReadState {
    entry_id: i64,
    #[serde(default)]
    offset: u64,
    #[serde(default = "default_buffer")]
    buffer: u32,
    #[serde(default)]
    max_calls: Option<u64>,
    #[serde(default)]
    checksum: bool,
    /// Read the range this many times (default 1): a bench amortising the job's start.
    #[serde(default = "one")]
    passes: u32,
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    calls: u64,
    #[serde(default)]
    fnv: Option<String>,
    #[serde(default)]
    error: Option<i64>,
    #[serde(default)]
    error_message: Option<String>,
}

fn default_buffer() -> u32 {
    1024 * 1024
}

fn one() -> u32 {
    1
}

fn read_file(ctx: &JobContext, st: &mut ReadState) -> JobResult {
    let lib = match ctx.library() {
        Some(lib) => lib,
        None => return JobResult::failed("the job has no library"),
    };
    // A page-aligned buffer: the kernel copies from the page cache fastest into one.
    let size = st.buffer as usize;
    let mut raw = vec![0u8; size + 4096];
    let skip = (4096 - raw.as_ptr() as usize % 4096) % 4096;
    let buf = &mut raw[skip..skip + size];
    let mut fnv: u64 = 0xcbf2_9ce4_8422_2325;
    let start = st.offset;
    'passes: for _ in 0..st.passes.max(1) {
        st.offset = start;
        while st.max_calls.map_or(true, |m| st.calls < m) {
            st.calls += 1;
            match lib.read_into(st.entry_id, st.offset, buf) {
                Ok(0) => break,
                Ok(n) => {
                    if st.checksum {
                        for &b in &buf[..n] {
                            fnv = (fnv ^ b as u64).wrapping_mul(0x100_0000_01b3);
                        }
                    }
                    st.bytes += n as u64;
                    st.offset += n as u64;
                }
                Err(e) => {
                    st.error = e.code();
                    st.error_message = Some(e.to_string());
                    break 'passes;
                }
            }
        }
    }
    if st.checksum {
        st.fnv = Some(format!("{:016x}", fnv));
    }
    JobResult::Completed
}
