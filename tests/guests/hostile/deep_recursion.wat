;; Unbounded recursion in plugin_init: a stack-overflow trap, not a crash.
(module
;; @include prelude
  (func $down (param $n i32) (result i32)
    (i32.add (call $down (i32.add (local.get $n) (i32.const 1))) (i32.const 1)))
  (func (export "plugin_init") (result i32) (call $down (i32.const 0))))
