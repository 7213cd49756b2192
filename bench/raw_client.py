"""A minimal raw-socket client: ``python -m bench.raw_client CLIENTS SLICE_S ROUNDS SOCKET...``.

Opens CLIENTS connections to each SOCKET. Each connection sends one ping line,
waits for its answer line and sends the next (sequential per connection); one
epoll loop drives them, so the client costs little next to the server. For
each of ROUNDS rounds it measures each socket in turn for SLICE_S seconds
(after a short warm-up), so the servers' figures are interleaved and share the
machine's noise. Prints one JSON object: ``{"calls_per_s": [[per round] per socket],
"answered": [all answers per socket], "bad": n}``; an answer without ``"result"`` is bad.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time

from bench.common import PING, PING_PAYLOAD

REQUEST = (b'{"jsonrpc":"2.0","id":1,"method":"' + PING.encode()
           + b'","params":{"library_id":null,"payload":' + PING_PAYLOAD.rstrip() + b"}}\n")
WARMUP_S = 0.1


class Target:
    """CLIENTS idle connections to one server."""

    def __init__(self, path: str, clients: int) -> None:
        self.socks = []
        for _ in range(clients):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            s.setblocking(False)
            self.socks.append(s)

    def measure(self, seconds: float) -> tuple[float, int, int]:
        """(answers per second, bad answers) over ``seconds`` after the warm-up, and every
        answer received (warm-up included)."""
        ep = select.epoll()
        by_fd = {s.fileno(): s for s in self.socks}
        bufs = {fd: b"" for fd in by_fd}
        for fd, s in by_fd.items():
            ep.register(fd, select.EPOLLIN)
            s.send(REQUEST)
        calls = bad = answered = 0
        t0 = time.perf_counter()
        counting_from = t0 + WARMUP_S
        end = counting_from + seconds
        counting = False
        in_flight = len(by_fd)
        while True:
            now = time.perf_counter()
            if not counting and now >= counting_from:
                counting, calls, bad, t0 = True, 0, 0, now
            stop = now >= end
            if stop and not in_flight:
                break
            for fd, _ in ep.poll(1.0):
                s = by_fd[fd]
                data = bufs[fd] + s.recv(1 << 16)
                if not data:
                    raise RuntimeError("server closed the connection")
                answers = data.count(b"\n")
                if not answers:
                    bufs[fd] = data
                    continue
                *lines, bufs[fd] = data.split(b"\n")
                answered += answers
                for line in lines:
                    if not stop:
                        calls += 1
                        if b'"result"' not in line:
                            bad += 1
                in_flight -= answers
                if not stop:
                    for _ in range(answers):
                        s.send(REQUEST)
                    in_flight += answers
        elapsed = end - t0
        ep.close()
        return calls / elapsed, bad, answered

    def close(self) -> None:
        for s in self.socks:
            s.close()


def main(argv: list[str]) -> None:
    clients, slice_s, rounds, paths = int(argv[0]), float(argv[1]), int(argv[2]), argv[3:]
    targets = [Target(p, clients) for p in paths]
    rates: list[list[float]] = [[] for _ in targets]
    answered = [0 for _ in targets]
    bad = 0
    for _ in range(rounds):
        for i, t in enumerate(targets):
            rate, b, n = t.measure(slice_s)
            rates[i].append(rate)
            answered[i] += n
            bad += b
    for t in targets:
        t.close()
    print(json.dumps({"calls_per_s": rates, "answered": answered, "bad": bad}))


if __name__ == "__main__":
    main(sys.argv[1:])
