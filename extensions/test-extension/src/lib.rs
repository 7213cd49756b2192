//! Test extension: a resumable counter job that exercises every job host
//! function and the `spacedrive_call` round trip, plus two jobs that fail on
//! purpose (`fail` returns an error, `trap` panics → wasm trap).
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
