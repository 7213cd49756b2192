;; Imports something outside ABI v1: refused at load, naming the import.
(module
  (import "env" "abort" (func $abort))
;; @include prelude
  (func (export "plugin_init") (result i32) (call $abort) (i32.const 0)))
