"""Soak under faults: sustained load over 50 secrets while the proxy between
secretcache and moto's server cycles through its faults and the secrets are
rotated. Reports requests served, status counts and upstream calls, and fails
(exit 1) on any wrong value, or on file descriptors or memory that keep growing.

    python bench/soak.py [--seconds 60] [--clients 8]

Run from the root of a checkout with the ``test`` extra installed. A value is
right when it belongs to the secret asked for and was current upstream at some
moment between (request start - TTL - stale-if-error) and the answer.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests import faults
from tests.support import CountingProxy, Moto, Secretcache

TOKEN = "soak-token-4e1d"  # noqa: S105 - a test token
TTL = 2.0
STALE = 30.0
FAULTS: list[tuple[str, Any]] = [
    ("none", None),
    ("latency 300 ms", lambda: faults.latency(0.3)),
    ("500s", faults.server_error),
    ("none", None),
    ("throttling", faults.throttling),
    ("resets", lambda: faults.reset),
    ("none", None),
    ("black hole", faults.BlackHole),
]


class History:
    """When each version of each secret became current upstream."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.versions: dict[str, list[float]] = {}

    def set(self, name: str, version: int, at: float) -> None:
        with self.lock:
            versions = self.versions.setdefault(name, [])
            assert version == len(versions)
            versions.append(at)

    def valid(self, name: str, version: int, started: float, ended: float) -> bool:
        with self.lock:
            versions = self.versions.get(name, [])
            if version >= len(versions) or versions[version] > ended:
                return False
            superseded = (
                versions[version + 1] if version + 1 < len(versions) else float("inf")
            )
        return superseded >= started - TTL - STALE - 1.0


def proc_stats(pid: int) -> tuple[int, int]:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return fds, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--secrets", type=int, default=50)
    args = parser.parse_args()

    moto = Moto()
    proxy = CountingProxy(moto.port)
    sm = moto.client()
    history = History()
    names = [f"soak/secret-{i:02d}" for i in range(args.secrets)]
    for name in names:
        sm.create_secret(Name=name, SecretString=json.dumps({"n": name, "v": 0}))
        history.set(name, 0, time.monotonic())
    server = Secretcache(
        {"SECRETCACHE_TOKEN": TOKEN, "AWS_ENDPOINT_URL_SECRETS_MANAGER": proxy.url},
        [
            "--ttl",
            str(TTL),
            "--stale-if-error",
            str(STALE),
            "--max-attempts",
            "2",
            "--upstream-timeout",
            "0.5",
            "--request-timeout",
            "1.5",
        ],
    )
    statuses: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    # Answers by the fault in force when they were sent: whether fresh values
    # come back once Secrets Manager does.
    by_fault: dict[str, Counter[str]] = {}
    current = ["none"]
    wrong: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        while not stop.is_set():
            name = rng.choice(names)
            started = time.monotonic()
            fault_then = current[0]
            try:
                connection.request(
                    "GET",
                    f"/secretsmanager/get?secretId={name}",
                    headers={"X-Aws-Parameters-Secrets-Token": TOKEN},
                )
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    statuses[f"connection error {type(e).__name__}"] += 1
                connection.close()
                connection = http.client.HTTPConnection(
                    "127.0.0.1", server.port, timeout=10
                )
                continue
            ended = time.monotonic()
            with lock:
                statuses[str(response.status)] += 1
                latencies.append(ended - started)
                answer = str(response.status)
                if response.status == 200:
                    answer = response.getheader("X-Secretcache-Cache") or "?"
                    outcomes[answer] += 1
                by_fault.setdefault(fault_then, Counter())[answer] += 1
                if response.status == 200:
                    value = json.loads(json.loads(body)["SecretString"])
                    if value["n"] != name or not history.valid(
                        name, value["v"], started, ended
                    ):
                        wrong.append(f"{name}: got {value} at {ended:.1f}")
        connection.close()

    def rotator() -> None:
        rng = random.Random(7)
        version = dict.fromkeys(names, 0)
        while not stop.wait(0.5):
            name = rng.choice(names)
            version[name] += 1
            # Recorded before the call returns: the new version may be served
            # as soon as Secrets Manager has it.
            history.set(name, version[name], time.monotonic())
            try:
                sm.put_secret_value(
                    SecretId=name,
                    SecretString=json.dumps({"n": name, "v": version[name]}),
                )
            except Exception as e:  # moto is local; this would be a harness bug
                print(f"rotation failed: {e}", file=sys.stderr)

    samples: list[tuple[float, int, int]] = []
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    threads.append(threading.Thread(target=rotator))
    started = time.monotonic()
    for t in threads:
        t.start()
    phase_seconds = max(2.0, args.seconds / (2 * len(FAULTS)))
    hole: Any = None
    phase = 0
    try:
        while time.monotonic() - started < args.seconds:
            label, make = FAULTS[phase % len(FAULTS)]
            if hole is not None:
                hole.release()
            fault = make() if make else None
            hole = fault if isinstance(fault, faults.BlackHole) else None
            proxy.fault = fault
            current[0] = label
            print(f"{time.monotonic() - started:5.1f}s  fault: {label}", flush=True)
            phase_end = time.monotonic() + phase_seconds
            while time.monotonic() < phase_end:
                fds, rss = proc_stats(server.process.pid)
                samples.append((time.monotonic() - started, fds, rss))
                time.sleep(1)
            phase += 1
    finally:
        proxy.fault = None
        if hole is not None:
            hole.release()
        stop.set()
        for t in threads:
            t.join(15)
        exit_status = server.stop()
        proxy.stop()
        moto.stop()

    elapsed = time.monotonic() - started
    total = sum(statuses.values())
    third = max(1, len(samples) // 3)
    fds_first = statistics.median(s[1] for s in samples[:third])
    fds_last = statistics.median(s[1] for s in samples[-third:])
    rss_first = statistics.median(s[2] for s in samples[:third])
    rss_last = statistics.median(s[2] for s in samples[-third:])
    latencies.sort()
    print()
    print(f"requests served: {total} in {elapsed:.0f} s ({total / elapsed:.0f}/s)")
    print("statuses:", dict(sorted(statuses.items())))
    print("cache outcomes of 200s:", dict(sorted(outcomes.items())))
    print("answers by the fault in force (hit/miss/stale/refresh, or status):")
    for label in dict.fromkeys(label for label, _ in FAULTS):
        if label in by_fault:
            print(f"  {label:16s}", dict(sorted(by_fault[label].items())))
    print(f"upstream GetSecretValue calls: {sum(proxy.calls.values())}")
    if latencies:
        p50 = latencies[len(latencies) // 2] * 1000
        p99 = latencies[int(len(latencies) * 0.99)] * 1000
        print(f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"open fds: median {fds_first} in the first third, {fds_last} in the last")
    print(f"RSS KiB: median {rss_first} in the first third, {rss_last} in the last")
    print(f"server exit status: {exit_status}")
    print(f"wrong values: {len(wrong)}")
    for line in wrong[:10]:
        print("  ", line)
    failures = []
    if wrong:
        failures.append("wrong values served")
    if fds_last > fds_first + 10:
        failures.append("file descriptors grew")
    if rss_last > rss_first * 1.2:
        failures.append("memory grew by more than 20 %")
    if exit_status != 0:
        failures.append("server did not exit cleanly")
    if not outcomes.get("stale"):
        failures.append("no stale serves: the faults did not bite")
    print("soak:", "FAILED: " + ", ".join(failures) if failures else "OK")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
