//! `spacedrive-sdk`: guest SDK for sd WebAssembly extensions.
//!
//! Target: `wasm32-unknown-unknown`, ABI v2 (see `guest-sdk/ABI.md`). The
//! module produced by an extension imports only functions of the
//! `"spacedrive"` module and exports `memory`, `wasm_alloc`, `wasm_free`,
//! `plugin_init`, `plugin_cleanup` and one function per job.
//!
//! An extension needs no `unsafe` and no FFI of its own:
//!
//! ```ignore
//! use serde::{Deserialize, Serialize};
//! use spacedrive_sdk::prelude::*;
//!
//! spacedrive_sdk::extension! {
//!     init = init;
//!     jobs = [
//!         ("counter", execute_test_counter, counter, resumable = true),
//!     ];
//! }
//!
//! fn init() -> Result<(), String> {
//!     log::info("initialized");
//!     Ok(())
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! struct State { current: u64, target: u64 }
//!
//! fn counter(ctx: &JobContext, state: &mut State) -> JobResult {
//!     while state.current < state.target {
//!         state.current += 1;
//!         if ctx.check_interrupt().should_stop() {
//!             return JobResult::Interrupted;
//!         }
//!     }
//!     JobResult::Completed
//! }
//! ```

pub mod ffi;
pub mod files;
pub mod job_context;
pub mod library;
pub mod types;
mod macros;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use job_context::JobContext;
pub use library::Library;
pub use types::{CallError, CheckpointError, Interrupt, JobResult, LogLevel, Uuid, UuidParseError};

/// Re-exported so extensions can use the exact versions the SDK uses.
pub use serde;
/// Re-exported so extensions can use the exact versions the SDK uses.
pub use serde_json;

/// The ABI version this SDK implements (and every module built with it declares).
pub const ABI_VERSION: u32 = 2;

/// Method name of the host's echo query.
pub const PING_METHOD: &str = "query:test.ping.v1";

/// Everything an extension usually needs: `use spacedrive_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::log;
    pub use crate::types::{CallError, CheckpointError, Interrupt, JobResult, LogLevel, Uuid};
    pub use crate::files::{ContentHash, Entry, EntryKind, EntryOrder, EntryPage, EntryQuery, HashResult, TagRef};
    pub use crate::{JobContext, Library};
    pub use serde_json::{json, Value};
}

// ---------------------------------------------------------------------------
// Memory exports
// ---------------------------------------------------------------------------

/// Export `wasm_alloc(size: i32) -> i32`: allocates `size` bytes (alignment 1)
/// from Rust's global allocator and returns the offset, or 0 on failure
/// (out of memory, or a negative size).
///
/// `size == 0` returns the non-zero dangling offset 1, which must not be
/// written or read; freeing it (with size 0) is a no-op.
#[no_mangle]
pub extern "C" fn wasm_alloc(size: usize) -> *mut u8 {
    alloc_bytes(size)
}

/// Export `wasm_free(ptr: i32, size: i32)`: releases a block obtained from
/// `wasm_alloc(size)` (same size). `ptr == 0` or `size == 0` is a no-op.
///
/// # Safety
/// `ptr`/`size` must describe a live block from `wasm_alloc`.
#[no_mangle]
pub unsafe extern "C" fn wasm_free(ptr: *mut u8, size: usize) {
    free_bytes(ptr, size)
}

fn alloc_bytes(size: usize) -> *mut u8 {
    if size == 0 {
        return std::ptr::NonNull::<u8>::dangling().as_ptr();
    }
    // A negative i32 from the host arrives as a huge usize and fails here.
    match std::alloc::Layout::from_size_align(size, 1) {
        Ok(layout) if size <= i32::MAX as usize => unsafe { std::alloc::alloc(layout) },
        _ => std::ptr::null_mut(),
    }
}

unsafe fn free_bytes(ptr: *mut u8, size: usize) {
    if ptr.is_null() || size == 0 {
        return;
    }
    if let Ok(layout) = std::alloc::Layout::from_size_align(size, 1) {
        std::alloc::dealloc(ptr, layout)
    }
}

/// A reply buffer written by the host through `wasm_alloc`; freed on drop.
struct HostBuffer {
    ptr: *mut u8,
    size: usize,
}

impl HostBuffer {
    /// Takes ownership of a `spacedrive_call` reply (`[u32 LE n][n bytes]`).
    unsafe fn from_reply(ptr: *mut u8) -> Result<Self, CallError> {
        if ptr.is_null() {
            return Err(CallError::NoReply);
        }
        let mut len = [0u8; 4];
        std::ptr::copy_nonoverlapping(ptr, len.as_mut_ptr(), 4);
        let n = u32::from_le_bytes(len) as usize;
        Ok(HostBuffer { ptr, size: 4 + n })
    }

    fn body(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr.add(4), self.size - 4) }
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        unsafe { free_bytes(self.ptr, self.size) }
    }
}

// ---------------------------------------------------------------------------
// spacedrive_call
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct HostErrorBody {
    #[serde(default = "unknown_code")]
    code: i64,
    #[serde(default)]
    message: String,
}

fn unknown_code() -> i64 {
    -1
}

/// Decodes a reply envelope: `{"ok": <result>}` or
/// `{"error": {"code": <int>, "message": <str>}}`.
pub fn decode_reply<R: DeserializeOwned>(body: &[u8]) -> Result<R, CallError> {
    let mut envelope: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| CallError::Protocol(e.to_string()))?;
    if let Some(err) = envelope.remove("error") {
        let err: HostErrorBody = serde_json::from_value(err).map_err(|e| CallError::Protocol(e.to_string()))?;
        return Err(CallError::Host {
            code: err.code,
            message: err.message,
        });
    }
    match envelope.remove("ok") {
        Some(result) => serde_json::from_value(result).map_err(|e| CallError::Deserialize(e.to_string())),
        None => Err(CallError::Protocol("reply has neither \"ok\" nor \"error\"".to_string())),
    }
}

/// Calls a host operation with raw JSON payload bytes and returns the raw
/// reply envelope bytes (already copied out and freed).
pub fn call_raw(method: &str, library: Option<&Uuid>, payload_json: &[u8]) -> Result<Vec<u8>, CallError> {
    let reply = raw_call(method, library, payload_json)?;
    Ok(reply.body().to_vec())
}

fn raw_call(method: &str, library: Option<&Uuid>, payload_json: &[u8]) -> Result<HostBuffer, CallError> {
    let lib_ptr = match library {
        Some(id) => id.0.as_ptr(),
        None => std::ptr::null(),
    };
    unsafe {
        let ptr = ffi::spacedrive_call(method.as_ptr(), method.len(), lib_ptr, payload_json.as_ptr(), payload_json.len());
        HostBuffer::from_reply(ptr)
    }
}

/// Calls host operation `method` (e.g. `"query:test.ping.v1"`), optionally
/// scoped to a library, with `payload` serialized as JSON; decodes the
/// reply's `ok` value as `R`.
pub fn call<T, R>(method: &str, library: Option<&Uuid>, payload: &T) -> Result<R, CallError>
where
    T: Serialize + ?Sized,
    R: DeserializeOwned,
{
    let payload = serde_json::to_vec(payload).map_err(|e| CallError::Serialize(e.to_string()))?;
    let reply = raw_call(method, library, &payload)?;
    decode_reply(reply.body())
    // `reply` is dropped (wasm_free'd) here.
}

/// `query:test.ping.v1` without a library: result `{"echo": <payload>}`.
pub fn ping(payload: &Value) -> Result<Value, CallError> {
    call(PING_METHOD, None, payload)
}

// ---------------------------------------------------------------------------
// Logging
// ---------------------------------------------------------------------------

/// Logging through `spacedrive_log`.
pub mod log {
    use crate::ffi;
    use crate::types::LogLevel;

    /// Logs `message` at `level`.
    pub fn log(level: LogLevel, message: &str) {
        unsafe { ffi::spacedrive_log(level as i32, message.as_ptr(), message.len()) }
    }

    /// Level 0.
    pub fn debug(message: &str) {
        log(LogLevel::Debug, message)
    }

    /// Level 1.
    pub fn info(message: &str) {
        log(LogLevel::Info, message)
    }

    /// Level 2.
    pub fn warn(message: &str) {
        log(LogLevel::Warn, message)
    }

    /// Level 3.
    pub fn error(message: &str) {
        log(LogLevel::Error, message)
    }
}

// ---------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------

/// Optimisation barriers (rustc 1.63 has no stable `core::hint::black_box`).
pub mod hint {
    /// Returns `x` unchanged, but opaque to the optimiser (volatile read), so
    /// busy loops using it are not removed.
    #[inline(never)]
    pub fn black_box<T>(x: T) -> T {
        unsafe {
            let r = std::ptr::read_volatile(&x);
            std::mem::forget(x);
            r
        }
    }

    /// Spins `iterations` times doing nothing observable (there is no clock
    /// in wasm32-unknown-unknown; this is how a job slows itself down).
    pub fn spin(iterations: u64) {
        let mut i = 0u64;
        while black_box(i) < iterations {
            i += 1;
        }
    }
}

/// Support code for [`extension!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use crate::{ffi, log, JobContext, JobResult};

    /// Job export return codes.
    pub const CODE_COMPLETED: i32 = 0;
    /// See ABI.md.
    pub const CODE_INTERRUPTED: i32 = 1;
    /// Handler returned `JobResult::Failed`.
    pub const CODE_FAILED: i32 = 2;
    /// The context JSON could not be parsed.
    pub const CODE_BAD_CONTEXT: i32 = 3;
    /// The state JSON could not be parsed into the handler's state type.
    pub const CODE_BAD_STATE: i32 = 4;
    /// The final checkpoint (the job's output) was refused by the host.
    pub const CODE_CHECKPOINT_FAILED: i32 = 5;

    /// One job declared in `extension!`.
    pub struct JobDecl {
        pub name: &'static str,
        pub export: &'static str,
        pub resumable: bool,
    }

    /// Routes Rust panics to `spacedrive_log` (error level) before the
    /// panic=abort trap, so the host sees the message.
    pub fn install_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                log::error(&format!("extension {}", info));
            }))
        });
    }

    pub fn plugin_init(jobs: &[JobDecl], init: Option<fn() -> Result<(), String>>) -> i32 {
        install_panic_hook();
        for job in jobs {
            let rc = unsafe {
                ffi::register_job(
                    job.name.as_ptr(),
                    job.name.len(),
                    job.export.as_ptr(),
                    job.export.len(),
                    job.resumable as i32,
                )
            };
            if rc != 0 {
                log::error(&format!("register_job({:?}, {:?}) failed with code {}", job.name, job.export, rc));
                return 1;
            }
        }
        if let Some(init) = init {
            if let Err(msg) = init() {
                log::error(&format!("plugin_init failed: {}", msg));
                return 2;
            }
        }
        0
    }

    pub fn plugin_cleanup(cleanup: Option<fn() -> Result<(), String>>) -> i32 {
        install_panic_hook();
        if let Some(cleanup) = cleanup {
            if let Err(msg) = cleanup() {
                log::error(&format!("plugin_cleanup failed: {}", msg));
                return 1;
            }
        }
        0
    }

    unsafe fn bytes<'a>(ptr: usize, len: usize) -> &'a [u8] {
        if ptr == 0 || len == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(ptr as *const u8, len)
        }
    }

    fn trim_ascii(mut b: &[u8]) -> &[u8] {
        while let [first, rest @ ..] = b {
            if first.is_ascii_whitespace() { b = rest } else { break }
        }
        while let [rest @ .., last] = b {
            if last.is_ascii_whitespace() { b = rest } else { break }
        }
        b
    }

    /// Body of every generated job export.
    ///
    /// # Safety
    /// `(ctx_ptr, ctx_len)` and `(state_ptr, state_len)` must be readable
    /// guest memory (the host allocated them with `wasm_alloc`).
    pub unsafe fn run_job<S, F>(ctx_ptr: usize, ctx_len: usize, state_ptr: usize, state_len: usize, handler: F) -> i32
    where
        S: Serialize + DeserializeOwned,
        F: FnOnce(&JobContext, &mut S) -> JobResult,
    {
        install_panic_hook();
        run_job_bytes(bytes(ctx_ptr, ctx_len), bytes(state_ptr, state_len), handler)
    }

    /// Safe core of [`run_job`].
    pub fn run_job_bytes<S, F>(ctx_json: &[u8], state_json: &[u8], handler: F) -> i32
    where
        S: Serialize + DeserializeOwned,
        F: FnOnce(&JobContext, &mut S) -> JobResult,
    {
        let ctx = match JobContext::from_json(ctx_json) {
            Ok(ctx) => ctx,
            Err(e) => {
                log::error(&format!("invalid job context: {}", e));
                return CODE_BAD_CONTEXT;
            }
        };
        // Empty / all-whitespace / `null` state means "no state": parse as {}.
        let trimmed = trim_ascii(state_json);
        let state_json: &[u8] = if trimmed.is_empty() || trimmed == b"null" { b"{}" } else { state_json };
        let mut state: S = match serde_json::from_slice(state_json) {
            Ok(s) => s,
            Err(e) => {
                log::error(&format!("invalid job state: {}", e));
                return CODE_BAD_STATE;
            }
        };
        match handler(&ctx, &mut state) {
            JobResult::Completed => match ctx.checkpoint(&state) {
                Ok(()) => CODE_COMPLETED,
                Err(e) => {
                    log::error(&format!("final checkpoint failed: {}", e));
                    CODE_CHECKPOINT_FAILED
                }
            },
            JobResult::Interrupted => {
                if let Err(e) = ctx.checkpoint(&state) {
                    log::error(&format!("checkpoint on interrupt failed: {}", e));
                }
                CODE_INTERRUPTED
            }
            JobResult::Failed(msg) => {
                log::error(&msg);
                CODE_FAILED
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_ok_and_error() {
        let v: Value = decode_reply(br#"{"ok": {"echo": {"a": 1}}}"#).unwrap();
        assert_eq!(v["echo"]["a"], 1);
        let v: Option<u32> = decode_reply(br#"{"ok": null}"#).unwrap();
        assert_eq!(v, None);
        let e = decode_reply::<Value>(br#"{"error": {"code": 403, "message": "denied"}}"#).unwrap_err();
        assert_eq!(e, CallError::Host { code: 403, message: "denied".into() });
        assert!(matches!(decode_reply::<Value>(b"{}"), Err(CallError::Protocol(_))));
        assert!(matches!(decode_reply::<Value>(b"garbage"), Err(CallError::Protocol(_))));
        assert!(matches!(decode_reply::<u32>(br#"{"ok": "x"}"#), Err(CallError::Deserialize(_))));
    }

    #[test]
    fn alloc_free() {
        let p = wasm_alloc(0);
        assert!(!p.is_null());
        unsafe { wasm_free(p, 0) };
        let p = wasm_alloc(10);
        assert!(!p.is_null());
        unsafe { wasm_free(p, 10) };
        assert!(wasm_alloc(usize::MAX).is_null());
    }

    #[derive(Serialize, Deserialize)]
    struct S {
        #[serde(default)]
        n: u32,
    }

    #[test]
    fn run_job_codes() {
        let ctx = br#"{"job_id": "00000000-0000-0000-0000-000000000001", "library_id": "00000000-0000-0000-0000-000000000002", "extension_id": "x", "resumed": false}"#;
        let ok = |_: &JobContext, s: &mut S| {
            s.n += 1;
            JobResult::Completed
        };
        assert_eq!(__private::run_job_bytes(ctx, b"", ok), 0);
        assert_eq!(__private::run_job_bytes(ctx, b" null\n", ok), 0);
        assert_eq!(__private::run_job_bytes(ctx, br#"{"n": 1}"#, |_: &JobContext, _: &mut S| JobResult::Interrupted), 1);
        assert_eq!(__private::run_job_bytes(ctx, b"{}", |_: &JobContext, _: &mut S| JobResult::failed("x")), 2);
        assert_eq!(__private::run_job_bytes(b"{}", b"{}", ok), 3);
        assert_eq!(__private::run_job_bytes(ctx, br#"{"n": "x"}"#, ok), 4);
    }
}
