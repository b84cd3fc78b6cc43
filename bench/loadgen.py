"""A small closed-loop HTTP/1.1 load generator, bench/run.py's fallback when
wrk is not installed: ``--connections`` keep-alive connections, each sending
the next request as soon as the previous answer is in, for ``--seconds``.
Prints one JSON object in the shape bench/wrk_hit.lua prints.

    python bench/loadgen.py --port 8015 --path '/secretsmanager/get?secretId=x' \
        --header 'X-Aws-Parameters-Secrets-Token: t' --connections 16 --seconds 10

One Python process on one core saturates at a few thousand requests/s, well
below what wrk reaches, so with it the throughput ratio measures the load
generator as much as the servers; latency percentiles include its own queueing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def run(
    host: str,
    port: int,
    path: str,
    headers: list[str],
    connections: int,
    seconds: float,
) -> dict[str, object]:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        + "".join(f"{h}\r\n" for h in headers)
        + "\r\n"
    ).encode("latin-1")
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    received = [0]
    deadline = 0.0

    async def worker() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            errors["connect"] += 1
            return
        clock = time.perf_counter
        try:
            while clock() < deadline:
                started = clock()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                latencies.append(clock() - started)
                received[0] += len(head) + len(body)
                if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
                    errors["status"] += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            errors["read"] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    us = 1e6
    return {
        "requests": len(latencies),
        "duration_us": int(elapsed * us),
        "bytes": received[0],
        "errors": errors,
        "latency_us": {
            "p50": int(percentile(latencies, 50) * us),
            "p90": int(percentile(latencies, 90) * us),
            "p99": int(percentile(latencies, 99) * us),
            "p99.9": int(percentile(latencies, 99.9) * us),
            "max": int((latencies[-1] if latencies else 0) * us),
            "mean": (sum(latencies) / len(latencies) * us) if latencies else 0.0,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    result = asyncio.run(
        run(
            args.host,
            args.port,
            args.path,
            args.header,
            args.connections,
            args.seconds,
        )
    )
    print("BENCH_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
