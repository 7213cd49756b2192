;; plugin_init logs {LINES} lines: the daemon rate-limits them and says how many it dropped.
(module
  (import "spacedrive" "spacedrive_log" (func $log (param i32 i32 i32)))
;; @include prelude
  (data (i32.const 16) "flood line")
  (func (export "plugin_init") (result i32)
    (local $i i32)
    (loop $again
      (call $log (i32.const 1) (i32.const 16) (i32.const 10))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const {LINES}))))
    (i32.const 0)))
