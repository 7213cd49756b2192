//! `extension!`: declares an extension's lifecycle hooks and jobs.

/// Generates the entry points of an extension, and the `spacedrive_abi` custom
/// section declaring [`crate::ABI_VERSION`] (ABI.md §8).
///
/// ```ignore
/// spacedrive_sdk::extension! {
///     init = init;          // optional: fn() -> Result<(), String>
///     cleanup = cleanup;    // optional: fn() -> Result<(), String>
///     jobs = [
///         // (job name, export name, handler [, resumable = bool])
///         ("counter", execute_test_counter, counter, resumable = true),
///         ("fail", execute_test_fail, fail),
///     ];
/// }
/// ```
///
/// A handler is `fn(&JobContext, &mut S) -> JobResult` where `S` is any
/// `Serialize + DeserializeOwned` type (inferred from the handler; use
/// `serde_json::Value` for "anything"). `resumable` defaults to `false`.
///
/// Generated exports:
/// * `plugin_init() -> i32`: calls `register_job` for every job (in order),
///   then `init`. Returns 0 ok, 1 if `register_job` failed, 2 if `init`
///   returned `Err` (logged at error level).
/// * `plugin_cleanup() -> i32`: runs `cleanup`; 0 ok, 1 if it returned `Err`.
/// * one `extern "C" fn <export>(ctx_ptr, ctx_len, state_ptr, state_len) -> i32`
///   per job: parses the context and state JSON, runs the handler, and
///   returns 0 (completed; final state checkpointed first), 1 (interrupted;
///   current state checkpointed first), 2 (`Failed(msg)`, msg logged at error
///   level), 3 (bad context JSON), 4 (bad state JSON), 5 (final checkpoint
///   refused by the host).
///
/// `wasm_alloc`, `wasm_free` and `memory` come from the SDK itself.
#[macro_export]
macro_rules! extension {
    (
        $(init = $init:path;)?
        $(cleanup = $cleanup:path;)?
        jobs = [
            $( ($name:literal, $export:ident, $handler:path $(, resumable = $resumable:expr)?) ),* $(,)?
        ] $(;)?
    ) => {
        const _: () = {
            const __SD_JOBS: &[$crate::__private::JobDecl] = &[
                $(
                    $crate::__private::JobDecl {
                        name: $name,
                        export: ::core::stringify!($export),
                        resumable: $crate::__sd_flag!($($resumable)?),
                    },
                )*
            ];

            // ABI.md §8: the module declares the ABI version it was built for.
            #[link_section = "spacedrive_abi"]
            #[used]
            static __SD_ABI_VERSION: [u8; 1] = [$crate::ABI_VERSION as u8];

            #[no_mangle]
            pub extern "C" fn plugin_init() -> i32 {
                $crate::__private::plugin_init(__SD_JOBS, $crate::__sd_opt_fn!($($init)?))
            }

            #[no_mangle]
            pub extern "C" fn plugin_cleanup() -> i32 {
                $crate::__private::plugin_cleanup($crate::__sd_opt_fn!($($cleanup)?))
            }

            $(
                #[no_mangle]
                pub extern "C" fn $export(ctx_ptr: usize, ctx_len: usize, state_ptr: usize, state_len: usize) -> i32 {
                    // SAFETY: the host passes buffers it allocated in this
                    // module's memory with wasm_alloc (ABI v1).
                    unsafe { $crate::__private::run_job(ctx_ptr, ctx_len, state_ptr, state_len, $handler) }
                }
            )*
        };
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __sd_opt_fn {
    () => {
        ::core::option::Option::None
    };
    ($f:path) => {
        ::core::option::Option::Some($f)
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __sd_flag {
    () => {
        false
    };
    ($e:expr) => {
        $e
    };
}
