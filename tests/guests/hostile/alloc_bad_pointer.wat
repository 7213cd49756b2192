;; wasm_alloc returns {POINTER} (0, out of bounds, or overlapping the guest's own
;; data). plugin_init makes a spacedrive_call so the host must place a reply.
(module
  (import "spacedrive" "spacedrive_call" (func $call (param i32 i32 i32 i32 i32) (result i32)))
  (import "spacedrive" "spacedrive_log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "wasm_alloc") (param i32) (result i32) (i32.const {POINTER}))
  (func (export "wasm_free") (param i32 i32))
  (func (export "plugin_cleanup") (result i32) (i32.const 0))
  (data (i32.const 16) "query:test.ping.v1")
  (data (i32.const 64) "{}")
  (func (export "plugin_init") (result i32)
    (local $r i32)
    (local.set $r (call $call (i32.const 16) (i32.const 18) (i32.const 0) (i32.const 64) (i32.const 2)))
    (if (i32.eqz (local.get $r)) (then (return (i32.const 7))))
    (call $log (i32.const 1) (i32.add (local.get $r) (i32.const 4)) (i32.load (local.get $r)))
    (i32.const 0)))
