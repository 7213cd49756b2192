;; plugin_init asks the daemon to shut down, lists another library's jobs, and
;; sends a payload that is not JSON; it logs each raw reply.
(module
  (import "spacedrive" "spacedrive_call" (func $call (param i32 i32 i32 i32 i32) (result i32)))
  (import "spacedrive" "spacedrive_log" (func $log (param i32 i32 i32)))
;; @include prelude
  (data (i32.const 16) "action:core.shutdown.input.v1")
  (data (i32.const 64) "query:jobs.list.v1")
  (data (i32.const 96) "{LIB_BYTES}")
  (data (i32.const 128) "{}")
  (data (i32.const 144) "query:test.ping.v1")
  (data (i32.const 176) "{not json")
  (func $show (param $r i32)
    (call $log (i32.const 1) (i32.add (local.get $r) (i32.const 4)) (i32.load (local.get $r))))
  (func (export "plugin_init") (result i32)
    (call $show (call $call (i32.const 16) (i32.const 29) (i32.const 0) (i32.const 128) (i32.const 2)))
    (call $show (call $call (i32.const 64) (i32.const 18) (i32.const 96) (i32.const 128) (i32.const 2)))
    (call $show (call $call (i32.const 144) (i32.const 18) (i32.const 0) (i32.const 176) (i32.const 9)))
    (i32.const 0)))
