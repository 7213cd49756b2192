"""WebAssembly extension hosting: loading, sandboxing and the host/guest call path."""
