;; Logs bytes that are not UTF-8: the call fails with a clear reason.
(module
  (import "spacedrive" "spacedrive_log" (func $log (param i32 i32 i32)))
;; @include prelude
  (data (i32.const 16) "\ff\fe\fd bad")
  (func (export "plugin_init") (result i32)
    (call $log (i32.const 1) (i32.const 16) (i32.const 7))
    (i32.const 0)))
