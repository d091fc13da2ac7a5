"""A small HTTP/1.1 keep-alive load generator (asyncio on uvloop): groups of connections,
each sending its requests back to back for a fixed time; requests/s, latency percentiles
and errors (any answer that is not 2xx, or a broken connection) per group and in all.
Used where wrk is not installed; every app of a comparison gets the same generator."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import uvloop

# What the n-th request of a connection sends: method, path and JSON body (b"" for none).
RequestOf = Callable[[int], tuple[str, str, bytes]]


@dataclass(frozen=True)
class Group:
    """Connections that send the same kind of request: back to back, or each one request
    every `interval` seconds (as a dashboard or a script polls), spread over the interval."""

    connections: int
    request_of: RequestOf
    interval: float = 0.0


async def _connection(
    host: str, port: int, group: Group, headers: str, until: float
) -> tuple[list[float], int]:
    reader, writer = await asyncio.open_connection(host, port)
    latencies: list[float] = []
    errors = 0
    n = 0
    next_at = time.perf_counter() + random.uniform(0, group.interval)
    while time.perf_counter() < until:
        if group.interval:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            next_at += group.interval
            if time.perf_counter() >= until:
                break
        method, path, body = group.request_of(n)
        n += 1
        extra = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" if body else ""
        start = time.perf_counter()
        try:
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}{extra}\r\n".encode() + body
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
            continue
        latencies.append(time.perf_counter() - start)
        if not 200 <= status < 300:
            errors += 1
    writer.close()
    return latencies, errors


def _summary(latencies: list[float], errors: int, elapsed: float) -> dict[str, float]:
    latencies = sorted(latencies)

    def pct(q: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "errors": errors,
    }


def run_groups(
    base_url: str, *, key: str, groups: dict[str, Group], seconds: float
) -> dict[str, dict[str, float]]:
    """Load `base_url` from every group at once; a summary per group and "all"."""
    hostport = base_url.split("://", 1)[1].rstrip("/")
    host, _, port = hostport.partition(":")
    headers = f"Authorization: Bearer {key}\r\n"

    async def main() -> list[list[tuple[list[float], int]]]:
        until = time.perf_counter() + seconds
        return await asyncio.gather(
            *(
                asyncio.gather(
                    *(
                        _connection(host, int(port), group, headers, until)
                        for _ in range(group.connections)
                    )
                )
                for group in groups.values()
            )
        )

    started = time.perf_counter()
    results = uvloop.run(main())
    elapsed = time.perf_counter() - started
    out: dict[str, dict[str, float]] = {}
    everything: list[float] = []
    all_errors = 0
    for name, per_connection in zip(groups, results, strict=True):
        latencies = [x for lat, _ in per_connection for x in lat]
        errors = sum(e for _, e in per_connection)
        out[name] = _summary(latencies, errors, elapsed)
        everything += latencies
        all_errors += errors
    out["all"] = _summary(everything, all_errors, elapsed)
    return out


def run(
    url: str,
    *,
    key: str,
    connections: int,
    seconds: float,
    path_of: Callable[[int], str] | None = None,
) -> dict[str, float]:
    """GET `url` (or the paths path_of(n) gives on its host) from `connections` at once."""
    scheme, rest = url.split("://", 1)
    hostport, _, path = rest.partition("/")
    paths = path_of or (lambda _n: "/" + path)
    group = Group(connections, lambda n: ("GET", paths(n), b""))
    return run_groups(f"{scheme}://{hostport}", key=key, groups={"get": group}, seconds=seconds)[
        "get"
    ]
