;; Grows memory one page at a time until refused, then checkpoints how many
;; pages it got as {"pages": N} and completes.
(module
  (import "spacedrive" "register_job" (func $register (param i32 i32 i32 i32 i32) (result i32)))
  (import "spacedrive" "job_checkpoint" (func $checkpoint (param i32 i32 i32) (result i32)))
;; @include prelude
;; @include register_run
;; @include jobid
  (data (i32.const 128) "{\"pages\":          }")
  (func (export "run") (param $ctx i32) (param i32 i32 i32) (result i32)
    (local $pages i32) (local $p i32) (local $id i32)
    (local.set $id (call $jobid (local.get $ctx)))
    (block $refused
      (loop $grow
        (br_if $refused (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (br $grow)))
    ;; write memory.size in decimal, right-aligned in the 10 spaces
    (local.set $pages (memory.size))
    (local.set $p (i32.const 146))
    (loop $digit
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $pages) (i32.const 10))))
      (local.set $pages (i32.div_u (local.get $pages) (i32.const 10)))
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (br_if $digit (local.get $pages)))
    (drop (call $checkpoint (local.get $id) (i32.const 128) (i32.const 20)))
    (i32.const 0)))
