;; Checkpoints 100 MB of state: refused (2) with a warning; the job returns 10 + that code.
(module
  (import "spacedrive" "register_job" (func $register (param i32 i32 i32 i32 i32) (result i32)))
  (import "spacedrive" "job_checkpoint" (func $checkpoint (param i32 i32 i32) (result i32)))
;; @include prelude
;; @include register_run
;; @include jobid
  (func (export "run") (param $ctx i32) (param i32 i32 i32) (result i32)
    (i32.add (i32.const 10)
      (call $checkpoint (call $jobid (local.get $ctx)) (i32.const 4096) (i32.const 104857600)))))
