"""JSON-RPC 2.0 over the socket, byte for byte: every error case, batches, ordering, garbage."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, raw_exchange


class Conn:
    def __init__(self, path: Path) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(10)
        self.s.connect(str(path))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.s.sendall(data)

    def line(self) -> Any:
        while b"\n" not in self.buf:
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self.s.close()


def req(method: str, id: Any = 1, payload: Any = None, library_id: Any = None) -> bytes:
    params = {"library_id": library_id, "payload": payload if payload is not None else {}}
    return json.dumps({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).encode() + b"\n"


def one(daemon: Daemon, data: bytes) -> Any:
    return json.loads(raw_exchange(daemon.socket, data))


def test_ping_roundtrip(daemon: Daemon) -> None:
    r = one(daemon, req("query:test.ping.v1", 7, {"a": [1, "b"]}))
    assert r == {"jsonrpc": "2.0", "id": 7, "result": {"echo": {"a": [1, "b"]}}}


def test_params_may_be_omitted(daemon: Daemon) -> None:
    r = one(daemon, b'{"jsonrpc":"2.0","id":"s","method":"query:test.ping.v1"}\n')
    assert r["id"] == "s" and r["result"] == {"echo": {}}


@pytest.mark.parametrize("line,code", [
    (b'{"jsonrpc":"2.0","id":1,"method":"query:nope.v1"}', -32601),
    (b'{"jsonrpc": "2.0", "method": "x", "id": 1, broken', -32700),
    (b'"just a string"', -32600),
    (b'{"jsonrpc":"1.0","id":1,"method":"query:test.ping.v1"}', -32600),
    (b'{"jsonrpc":"2.0","id":1}', -32600),
    (b'{"jsonrpc":"2.0","id":1,"method":5}', -32600),
    (b'{"jsonrpc":"2.0","id":1,"method":"query:test.ping.v1","params":[1]}', -32602),
    (b'{"jsonrpc":"2.0","id":1,"method":"query:test.ping.v1","params":{"bogus":1}}', -32602),
    (b'{"jsonrpc":"2.0","id":1,"method":"action:libraries.create.input.v1","params":{"payload":{"name":3}}}', -32602),
    (b'{"jsonrpc":"2.0","id":1,"method":"query:jobs.list.v1"}', -32001),
    (b'{"jsonrpc":"2.0","id":1,"method":"query:jobs.list.v1","params":{"library_id":"nope"}}', -32002),
    (b'[]', -32600),
])
def test_error_cases(daemon: Daemon, line: bytes, code: int) -> None:
    r = one(daemon, line + b"\n")
    assert r["jsonrpc"] == "2.0"
    assert r["error"]["code"] == code, r
    assert isinstance(r["error"]["message"], str) and r["error"]["message"]


def test_invalid_params_names_the_field(daemon: Daemon) -> None:
    r = one(daemon, req("action:libraries.create.input.v1", 1, {"name": 3}))
    assert r["error"]["code"] == -32602
    assert "$.name" in r["error"]["message"]
    r = one(daemon, req("action:libraries.create.input.v1", 1, {"nam": "x"}))
    assert r["error"]["code"] == -32602 and "`nam`" in r["error"]["message"]


def test_parse_error_has_null_id(daemon: Daemon) -> None:
    r = one(daemon, b"{oops\n")
    assert r["id"] is None and r["error"]["code"] == -32700


def test_batch_per_member_errors(daemon: Daemon) -> None:
    batch = [1, {"jsonrpc": "2.0", "id": 2, "method": "query:test.ping.v1", "params": {"payload": {"k": 1}}},
             {"jsonrpc": "2.0", "method": "query:test.ping.v1"},  # notification: no answer
             {"jsonrpc": "2.0", "id": 4, "method": "query:nope.v1"},
             {"foo": "bar"}]
    r = one(daemon, json.dumps(batch).encode() + b"\n")
    assert isinstance(r, list) and len(r) == 4
    by_id = {x["id"]: x for x in r if x["id"] is not None}
    assert by_id[2]["result"] == {"echo": {"k": 1}}
    assert by_id[4]["error"]["code"] == -32601
    nulls = [x for x in r if x["id"] is None]
    assert len(nulls) == 2 and all(x["error"]["code"] == -32600 for x in nulls)


def test_batch_of_invalid_members(daemon: Daemon) -> None:
    r = one(daemon, b"[1,2,3]\n")
    assert len(r) == 3 and all(x["error"]["code"] == -32600 for x in r)


def test_notifications_get_no_response(daemon: Daemon) -> None:
    c = Conn(daemon.socket)
    c.send(b'{"jsonrpc":"2.0","method":"query:test.ping.v1"}\n')
    c.send(b'[{"jsonrpc":"2.0","method":"query:test.ping.v1"},{"jsonrpc":"2.0","method":"query:nope.v1"}]\n')
    c.send(req("query:test.ping.v1", 99))
    assert c.line()["id"] == 99  # the first thing that comes back
    c.close()


def test_slow_request_does_not_hold_up_others(daemon: Daemon) -> None:
    c = Conn(daemon.socket)
    c.send(req("query:test.sleep.v1", "slow", {"seconds": 1.5}))
    c.send(req("query:test.ping.v1", "fast"))
    first = c.line()
    second = c.line()
    assert first["id"] == "fast"
    assert second["id"] == "slow" and second["result"] == {"slept": 1.5}
    c.close()


def test_huge_line_gets_an_error_and_daemon_goes_on(daemon: Daemon) -> None:
    c = Conn(daemon.socket)
    chunk = b"x" * (1 << 20)
    try:
        for _ in range(17):
            c.send(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = c.line()
    assert r["error"]["code"] == -32005 and "exceeds" in r["error"]["message"]
    c.close()
    assert one(daemon, req("query:core.status.v1"))["result"]["pid"] == daemon.proc.pid


def test_garbage_then_service_continues(daemon: Daemon) -> None:
    c = Conn(daemon.socket)
    for junk in (b"\x00\xff\xfe\n", b"null\n", b"{}\n", b"[[[[\n", b'{"jsonrpc":"2.0","id":{},"method":"x"}\n'):
        c.send(junk)
        r = c.line()
        assert r["error"]["code"] in (-32700, -32600), (junk, r)
    c.send(req("query:test.ping.v1", 5))
    assert c.line()["result"] == {"echo": {}}
    c.close()


def test_client_disconnecting_mid_request(daemon: Daemon) -> None:
    c = Conn(daemon.socket)
    c.send(req("query:test.sleep.v1", 1, {"seconds": 0.3}))
    c.send(b'{"jsonrpc":"2.0","id":2,"method":"query:te')  # half a line, then gone
    c.close()
    # A request of the same length sent later ends later: by then the first has
    # finished and found its client gone.
    assert one(daemon, req("query:test.sleep.v1", 3, {"seconds": 0.3}))["result"] == {"slept": 0.3}
    assert one(daemon, req("query:test.ping.v1"))["result"] == {"echo": {}}
    assert "Traceback" not in daemon.log()


def test_unknown_library_id_is_clear(daemon: Daemon) -> None:
    r = one(daemon, req("query:jobs.list.v1", 1, {}, "2b7c9a3e-0000-4000-8000-000000000000"))
    assert r["error"]["code"] == -32002
    assert "2b7c9a3e" in r["error"]["message"]


def test_checks_that_depend_on_the_call_run_on_every_call_of_a_connection(daemon: Daemon) -> None:
    """A connection remembers what the checks of a library-less operation concluded; the
    payload, the library and its existence are still checked on every call."""
    c = Conn(daemon.socket)
    c.send(req("query:test.ping.v1", 1, {"n": 1}))
    assert c.line()["result"] == {"echo": {"n": 1}}
    c.send(req("query:test.ping.v1", 2, [1]))
    assert c.line()["error"]["code"] == -32602
    c.send(req("query:test.ping.v1", 3, {"n": 3}))
    assert c.line()["result"] == {"echo": {"n": 3}}
    c.send(req("action:libraries.create.input.v1", 4, {"name": "L"}))
    lib = c.line()["result"]["id"]
    for i in (5, 6):
        c.send(req("query:tags.list.v1", i, {}, lib))
        assert c.line()["result"] == []
        c.send(req("query:tags.list.v1", 10 + i, {}))
        assert c.line()["error"]["code"] == -32001  # LibraryRequired, every time
    c.send(req("action:libraries.delete.input.v1", 7, {"id": lib}))
    assert c.line()["result"] == {"deleted": lib}
    c.send(req("query:tags.list.v1", 8, {}, lib))
    assert c.line()["error"]["code"] == -32002  # LibraryNotFound: the library is gone
    c.close()


def test_out_of_order_many_overlapping(daemon: Daemon) -> None:
    c = Conn(daemon.socket)
    for i in range(50):
        c.send(req("query:test.sleep.v1" if i % 5 == 0 else "query:test.ping.v1", i,
                   {"seconds": 0.2} if i % 5 == 0 else {"i": i}))
    got = {c.line()["id"] for _ in range(50)}
    assert got == set(range(50))
    c.close()


def test_pipelined_slow_requests_are_bounded_and_all_answered(daemon: Daemon) -> None:
    """3,000 slow requests pipelined on one connection: reading pauses at the in-flight cap,
    every request is still answered, and other clients are served meanwhile."""
    c = Conn(daemon.socket)
    n = 3000
    c.send(b"".join(req("query:test.sleep.v1", i, {"seconds": 0.2}) for i in range(n)))
    got = {c.line()["id"]}  # the daemon is working through them
    t = time.monotonic()
    assert one(daemon, req("query:core.status.v1"))["result"]["pid"] == daemon.proc.pid
    assert time.monotonic() - t < 1.0
    got |= {c.line()["id"] for _ in range(n - 1)}
    assert got == set(range(n))
    c.close()
