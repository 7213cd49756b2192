;; Reports progress for a job id it made up (16 zero bytes): refused, the job fails.
(module
  (import "spacedrive" "register_job" (func $register (param i32 i32 i32 i32 i32) (result i32)))
  (import "spacedrive" "job_report_progress" (func $progress (param i32 f32 i32 i32)))
;; @include prelude
;; @include register_run
  (func (export "run") (param i32 i32 i32 i32) (result i32)
    (call $progress (i32.const 512) (f32.const 0.5) (i32.const 0) (i32.const 0))
    (i32.const 0)))
