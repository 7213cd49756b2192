;; A long job that checks for interruption regularly: may run past the time slice.
;; Loops {ITERATIONS} times calling job_check_interrupt, then completes.
(module
  (import "spacedrive" "register_job" (func $register (param i32 i32 i32 i32 i32) (result i32)))
  (import "spacedrive" "job_check_interrupt" (func $interrupt (param i32) (result i32)))
;; @include prelude
;; @include register_run
;; @include jobid
  (func (export "run") (param $ctx i32) (param i32 i32 i32) (result i32)
    (local $i i32) (local $id i32)
    (local.set $id (call $jobid (local.get $ctx)))
    (loop $again
      (if (call $interrupt (local.get $id)) (then (return (i32.const 1))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const {ITERATIONS}))))
    (i32.const 0)))
