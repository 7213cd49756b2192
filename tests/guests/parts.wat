;; Shared pieces for the test guests. A guest file pulls one in with a line
;; ";; @include NAME"; tests/wasm_guests.py expands it before wat2wasm.

;; @part prelude
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 4096))
  (func $alloc (export "wasm_alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump)
      (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "wasm_free") (param i32 i32))
  (func (export "plugin_cleanup") (result i32) (i32.const 0))
;; @end

;; @part register_run
  ;; plugin_init registers one resumable job "run" whose export is "run".
  (data (i32.const 8) "run")
  (func (export "plugin_init") (result i32)
    (call $register (i32.const 8) (i32.const 3) (i32.const 8) (i32.const 3) (i32.const 1)))
;; @end

;; @part jobid
  ;; Parse the job id out of the ctx JSON ({"job_id":"<36 chars>", ...}) into
  ;; 16 raw bytes at offset 64, as the job host functions want it.
  (func $hex (param $c i32) (result i32)
    (if (result i32) (i32.le_u (local.get $c) (i32.const 57))
      (then (i32.sub (local.get $c) (i32.const 48)))
      (else (i32.sub (i32.or (local.get $c) (i32.const 32)) (i32.const 87)))))
  (func $jobid (param $ctx i32) (result i32)
    (local $i i32) (local $o i32) (local $c i32) (local $hi i32) (local $half i32)
    (local.set $i (i32.add (local.get $ctx) (i32.const 11)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $o) (i32.const 16)))
        (local.set $c (i32.load8_u (local.get $i)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $next (i32.eq (local.get $c) (i32.const 45)))  ;; '-'
        (if (local.get $half)
          (then
            (i32.store8 (i32.add (i32.const 64) (local.get $o))
              (i32.or (i32.shl (local.get $hi) (i32.const 4)) (call $hex (local.get $c))))
            (local.set $o (i32.add (local.get $o) (i32.const 1)))
            (local.set $half (i32.const 0)))
          (else
            (local.set $hi (call $hex (local.get $c)))
            (local.set $half (i32.const 1))))
        (br $next)))
    (i32.const 64))
;; @end
