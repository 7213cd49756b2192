;; plugin_init traps: the extension is marked failed with the trap's reason.
(module
;; @include prelude
  (func (export "plugin_init") (result i32) unreachable))
