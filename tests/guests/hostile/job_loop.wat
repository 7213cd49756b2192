;; A job that spins without ever returning to the host: "time limit".
(module
  (import "spacedrive" "register_job" (func $register (param i32 i32 i32 i32 i32) (result i32)))
;; @include prelude
;; @include register_run
  (func (export "run") (param i32 i32 i32 i32) (result i32)
    (loop $forever (br $forever))
    (i32.const 0)))
