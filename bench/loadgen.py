"""A small HTTP/1.1 keep-alive load generator (asyncio on uvloop): N connections, each
sending GETs back to back for a fixed time; requests/s, latency percentiles and errors.
Used where wrk is not installed; both apps of a comparison get the same generator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import uvloop


async def _connection(
    host: str, port: int, path_of: Callable[[int], str], headers: str, until: float
) -> tuple[list[float], int]:
    reader, writer = await asyncio.open_connection(host, port)
    latencies: list[float] = []
    errors = 0
    n = 0
    while time.perf_counter() < until:
        path = path_of(n)
        n += 1
        start = time.perf_counter()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - start)
        if status != 200:
            errors += 1
    writer.close()
    return latencies, errors


def run(
    url: str,
    *,
    key: str,
    connections: int,
    seconds: float,
    path_of: Callable[[int], str] | None = None,
) -> dict[str, float]:
    """Load `url` (or the paths path_of(n) gives on its host) from `connections` at once."""
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    paths = path_of or (lambda _n: "/" + path)
    headers = f"Authorization: Bearer {key}\r\n"

    async def main() -> list[tuple[list[float], int]]:
        until = time.perf_counter() + seconds
        return await asyncio.gather(
            *(_connection(host, int(port), paths, headers, until) for _ in range(connections))
        )

    started = time.perf_counter()
    results = uvloop.run(main())
    elapsed = time.perf_counter() - started
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = sum(e for _, e in results)

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": errors,
    }
