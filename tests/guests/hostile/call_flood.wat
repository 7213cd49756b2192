;; A job making {CALLS} spacedrive_calls as fast as it can; counts replies that
;; are errors (rate limited) and checkpoints {"errors": N}.
(module
  (import "spacedrive" "register_job" (func $register (param i32 i32 i32 i32 i32) (result i32)))
  (import "spacedrive" "spacedrive_call" (func $call (param i32 i32 i32 i32 i32) (result i32)))
  (import "spacedrive" "job_checkpoint" (func $checkpoint (param i32 i32 i32) (result i32)))
;; @include prelude
;; @include register_run
;; @include jobid
  (data (i32.const 16) "query:test.ping.v1")
  (data (i32.const 40) "{}")
  (data (i32.const 128) "{\"errors\":          }")
  (func (export "run") (param $ctx i32) (param i32 i32 i32) (result i32)
    (local $i i32) (local $r i32) (local $errors i32) (local $p i32) (local $id i32)
    (local.set $id (call $jobid (local.get $ctx)))
    (loop $again
      (global.set $bump (i32.const 4096))  ;; reuse the reply buffer
      (local.set $r (call $call (i32.const 16) (i32.const 18) (i32.const 0) (i32.const 40) (i32.const 2)))
      ;; an error reply starts {"error" - its 3rd byte is 'e'
      (if (i32.eq (i32.load8_u (i32.add (local.get $r) (i32.const 6))) (i32.const 101))
        (then (local.set $errors (i32.add (local.get $errors) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const {CALLS}))))
    (local.set $p (i32.const 147))
    (loop $digit
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $errors) (i32.const 10))))
      (local.set $errors (i32.div_u (local.get $errors) (i32.const 10)))
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (br_if $digit (local.get $errors)))
    (drop (call $checkpoint (local.get $id) (i32.const 128) (i32.const 21)))
    (i32.const 0)))
