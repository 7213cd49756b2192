;; The start function never returns: instantiating the module runs guest code, stopped
;; by the epoch deadline ("time limit") like any other.
(module
;; @include prelude
  (func $spin (loop $forever (br $forever)))
  (start $spin)
  (func (export "plugin_init") (result i32) (i32.const 0)))
