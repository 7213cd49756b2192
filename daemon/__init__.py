"""sd daemon: the Core, its libraries, jobs and the WebAssembly plugin manager."""

__version__ = "0.1.0"
