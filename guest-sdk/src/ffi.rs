//! Raw host imports of the ABI (wasm import module `"spacedrive"`): v1's nine and
//! v2's `entry_read`.
//!
//! Everything here is `unsafe` and byte-level; extensions should use the safe
//! wrappers in the crate root ([`crate::call`], [`crate::log`]) and in
//! [`crate::JobContext`] instead. See `guest-sdk/ABI.md` for the contract.
//!
//! On wasm32 every pointer and `usize` below is an `i32` in the wasm
//! signature: an offset into the guest's exported `memory`. A "job id pointer"
//! points at the 16 raw bytes of the job's UUID (RFC 4122 byte order).
//!
//! Only functions that the guest actually calls end up as imports of the final
//! module (the linker drops unused ones), so a module imports a subset of
//! these functions.

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "spacedrive")]
extern "C" {
    /// Runs a host operation. `library_id_ptr` is 0 for none, else a pointer
    /// to 16 UUID bytes. Returns a pointer to a host-written reply buffer
    /// (4-byte little-endian length `n`, then `n` bytes of UTF-8 JSON
    /// envelope), allocated via the guest's `wasm_alloc(4 + n)`; the guest
    /// must release it with `wasm_free(ptr, 4 + n)`. 0 = allocation failed.
    pub fn spacedrive_call(
        method_ptr: *const u8,
        method_len: usize,
        library_id_ptr: *const u8,
        payload_ptr: *const u8,
        payload_len: usize,
    ) -> *mut u8;

    /// Logs a UTF-8 message. Level: 0 debug, 1 info, 2 warn, 3 error.
    pub fn spacedrive_log(level: i32, msg_ptr: *const u8, msg_len: usize);

    /// Declares a job (only valid during `plugin_init`). Returns 0 on success.
    pub fn register_job(
        name_ptr: *const u8,
        name_len: usize,
        export_ptr: *const u8,
        export_len: usize,
        resumable: i32,
    ) -> i32;

    /// Reports progress (0.0 ..= 1.0) with a status message.
    pub fn job_report_progress(job_id_ptr: *const u8, progress: f32, msg_ptr: *const u8, msg_len: usize);

    /// Durably stores the job's JSON state. Returns 0 when saved.
    pub fn job_checkpoint(job_id_ptr: *const u8, state_ptr: *const u8, state_len: usize) -> i32;

    /// 0 = continue, 1 = pause requested, 2 = cancel requested.
    pub fn job_check_interrupt(job_id_ptr: *const u8) -> i32;

    /// Attaches a non-fatal warning to the job.
    pub fn job_add_warning(job_id_ptr: *const u8, msg_ptr: *const u8, msg_len: usize);

    /// Adds `n` to the job's processed-items counter.
    pub fn job_increment_items(job_id_ptr: *const u8, n: i64);

    /// Adds `n` to the job's processed-bytes counter.
    pub fn job_increment_bytes(job_id_ptr: *const u8, n: i64);

    /// ABI v2. Reads up to `buf_len` bytes (at most 16 MiB) of file entry
    /// `entry_id` of library `library_id_ptr` (16 UUID bytes) at `offset`
    /// straight into `buf_ptr`. Returns the bytes read (0 at or past the end
    /// of the file) or a negative host error code (-32003 not permitted, ...).
    pub fn entry_read(library_id_ptr: *const u8, entry_id: i64, offset: i64, buf_ptr: *mut u8, buf_len: usize) -> i64;
}

/// Native (non-wasm) stand-ins with the same signatures, so the SDK and
/// extensions can be type-checked and unit-tested on the build machine.
/// They never talk to a host: calls fail (null reply), logs go to stderr,
/// checkpoints "succeed", interrupts never happen.
#[cfg(not(target_arch = "wasm32"))]
mod native {
    #![allow(clippy::missing_safety_doc)]

    unsafe fn text<'a>(ptr: *const u8, len: usize) -> std::borrow::Cow<'a, str> {
        if ptr.is_null() || len == 0 {
            return std::borrow::Cow::Borrowed("");
        }
        String::from_utf8_lossy(std::slice::from_raw_parts(ptr, len))
    }

    pub unsafe fn spacedrive_call(
        _method_ptr: *const u8,
        _method_len: usize,
        _library_id_ptr: *const u8,
        _payload_ptr: *const u8,
        _payload_len: usize,
    ) -> *mut u8 {
        std::ptr::null_mut()
    }

    pub unsafe fn spacedrive_log(level: i32, msg_ptr: *const u8, msg_len: usize) {
        eprintln!("[spacedrive-sdk native log {}] {}", level, text(msg_ptr, msg_len));
    }

    pub unsafe fn register_job(
        _name_ptr: *const u8,
        _name_len: usize,
        _export_ptr: *const u8,
        _export_len: usize,
        _resumable: i32,
    ) -> i32 {
        0
    }

    pub unsafe fn job_report_progress(_job_id_ptr: *const u8, _progress: f32, _msg_ptr: *const u8, _msg_len: usize) {}

    pub unsafe fn job_checkpoint(_job_id_ptr: *const u8, _state_ptr: *const u8, _state_len: usize) -> i32 {
        0
    }

    pub unsafe fn job_check_interrupt(_job_id_ptr: *const u8) -> i32 {
        0
    }

    pub unsafe fn job_add_warning(_job_id_ptr: *const u8, msg_ptr: *const u8, msg_len: usize) {
        eprintln!("[spacedrive-sdk native warning] {}", text(msg_ptr, msg_len));
    }

    pub unsafe fn job_increment_items(_job_id_ptr: *const u8, _n: i64) {}

    pub unsafe fn job_increment_bytes(_job_id_ptr: *const u8, _n: i64) {}

    pub unsafe fn entry_read(_library_id_ptr: *const u8, _entry_id: i64, _offset: i64, _buf_ptr: *mut u8, _buf_len: usize) -> i64 {
        -32603
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;
