;; No wasm_alloc: refused at load, naming the export.
(module
  (memory (export "memory") 1)
  (func (export "wasm_free") (param i32 i32))
  (func (export "plugin_init") (result i32) (i32.const 0))
  (func (export "plugin_cleanup") (result i32) (i32.const 0)))
