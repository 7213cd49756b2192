;; plugin_init never returns: stopped by the epoch deadline ("time limit").
(module
;; @include prelude
  (func (export "plugin_init") (result i32)
    (loop $forever (br $forever))
    (i32.const 0)))
