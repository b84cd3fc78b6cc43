"""Benchmarks for secretcache, against a bare twisted.web server and a direct
botocore call measured in the same run on the same machine.

    python bench/run.py                 # everything, about 4 minutes
    python bench/run.py --quick         # shorter loads, one run each
    python bench/run.py --only hit      # one section (repeatable)
    tox -e bench [-- --quick]

Sections: hit (throughput and latency of cache hits vs the reference server),
miss (a cold fetch vs one botocore call), storm (upstream calls for a burst of
cold requests and for a refresh storm), isolation (hit latency while another
key refreshes through a slow upstream), startup (exec to listening, and RSS).
Prints a table with each target and writes bench/results/<timestamp>.json and
.png. bench/README.md says what every number means.

Run from the root of a checkout, in an environment where secretcache is
installed (``pip install .``; the servers run from a scratch directory, so
they use the installed package, not the checkout) together with its ``test``
extra (moto's server, boto3). wrk is used when it is on PATH, else the slower
bench/loadgen.py. matplotlib is needed for the chart only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from tests import faults  # noqa: E402
from tests.support import (  # noqa: E402
    FAKE_CREDENTIALS,
    REGION,
    CountingProxy,
    Moto,
    clean_environment,
    free_port,
    wait_for_port,
)

TOKEN = "bench-token-5c2e9a"  # noqa: S105 - a made-up token for this run
TOKEN_HEADER = "X-Aws-Parameters-Secrets-Token"  # noqa: S105 - a name
HIT_ID = "bench/secret"
HIT_PATH = f"/secretsmanager/get?secretId={HIT_ID}"
SECRET_BYTES = 200
SLOW_PREFIX = "bench/slow-"
SLOW_KEYS = 4
SLOW_SECONDS = 0.3
SECTIONS = ("hit", "miss", "storm", "isolation", "startup")
FLOOR_IMPORTS = (
    "import twisted.internet.reactor, klein, treq, botocore.auth, botocore.credentials"
)
LUA = os.path.join(HERE, "wrk_hit.lua")
LOADGEN = os.path.join(HERE, "loadgen.py")
REFERENCE = os.path.join(HERE, "reference_server.py")
SERVER_CPU = 0
LOAD_CPU = 1


@dataclass(frozen=True)
class Profile:
    name: str
    runs: int
    seconds: int
    warmup: int
    connections: tuple[int, ...]
    miss_samples: int
    burst: int
    isolation_seconds: int
    startup_repeats: int
    rss_secrets: int


FULL = Profile("full", 3, 10, 3, (16, 64), 30, 100, 10, 5, 1000)
QUICK = Profile("quick", 1, 3, 1, (16, 64), 10, 100, 3, 2, 1000)

# Targets: (key, text). The checks themselves are in each section.
TARGETS = {
    "hit_rps": "≥ 0.80x ref",
    "hit_p99": "≤ 1.50x ref",
    "miss": "≤ 1.30x botocore",
    "burst": "= 1 call",
    "storm": "= 1 call",
    "isolation": "≤ 1.50x idle",
    "rss": "≤ 64 MiB",
    "startup": "≤ floor + 0.20 s",
}


def secret_string(name: str) -> str:
    """A JSON secret of exactly SECRET_BYTES bytes, different per name."""
    head = json.dumps({"username": "bench", "name": name, "password": ""})
    digest = hashlib.sha256(name.encode()).hexdigest() * 8
    filler = SECRET_BYTES - len(head)
    if filler < 0:
        raise ValueError(f"secret name too long: {name}")
    return head[:-2] + digest[:filler] + '"}'


# Processes.


def pinned(cpu: int) -> list[str]:
    """The taskset prefix pinning a command to ``cpu``, when that is possible."""
    if PIN and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


PIN = (os.cpu_count() or 1) >= 2


class Server:
    """A child process listening on ``port``; its output goes to a file."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        port: int,
        env: dict[str, str],
        cwd: str,
        cpu: int | None = SERVER_CPU,
    ) -> None:
        self.name = name
        self.port = port
        self.log = tempfile.NamedTemporaryFile(
            prefix=f"bench-{name}-", suffix=".log", delete=False
        )
        prefix = pinned(cpu) if cpu is not None else []
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [*prefix, *args],
            env=env,
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port, self.process)
        except RuntimeError:
            # stop() removes the log: read it first.
            output = self.output()
            self.stop()
            raise RuntimeError(f"{name} did not start:\n{output[-3000:]}") from None

    def output(self) -> str:
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def status(self, field: str = "VmRSS") -> int:
        """A /proc/PID/status field in KiB."""
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        os.unlink(self.log.name)


def request(
    port: int, path: str, *, token: bool = True, timeout: float = 15
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {TOKEN_HEADER: TOKEN} if token else {}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


class Bench:
    """Moto, the counting proxy and the servers, started when first needed
    and all stopped by ``close``."""

    def __init__(self, profile: Profile, loadgen: str) -> None:
        self.profile = profile
        self.loadgen = loadgen
        self.scratch = tempfile.mkdtemp(prefix="secretcache-bench-")
        self._moto: Moto | None = None
        self._sm: Any = None
        self._proxy: CountingProxy | None = None
        self._servers: dict[str, Server] = {}
        self._created: set[str] = set()
        self._lock = threading.Lock()
        self._fault_rules: dict[str, faults.Fault] = {}

    # Upstream.

    @property
    def moto(self) -> Moto:
        if self._moto is None:
            self._moto = Moto()
            self._sm = self._moto.client()
        return self._moto

    @property
    def proxy(self) -> CountingProxy:
        if self._proxy is None:
            self._proxy = CountingProxy(self.moto.port)
            self._proxy.fault = self._fault
        return self._proxy

    def _fault(self, handler: Any, document: dict[str, Any]) -> bool:
        secret_id = str(document.get("SecretId", ""))
        for prefix, fault in list(self._fault_rules.items()):
            if secret_id.startswith(prefix):
                return fault(handler, document)
        return False

    def slow_down(self, prefix: str, seconds: float | None) -> None:
        """Hold the proxy's answers for ids starting with ``prefix``."""
        if seconds is None:
            self._fault_rules.pop(prefix, None)
        else:
            self._fault_rules[prefix] = faults.latency(seconds)

    def create_secrets(self, names: Iterable[str]) -> None:
        todo = [n for n in names if n not in self._created]
        sm = self._sm if self._moto is not None else self.moto.client()

        def create(name: str) -> None:
            sm.create_secret(Name=name, SecretString=secret_string(name))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, todo))
        self._created.update(todo)

    # Servers.

    def secretcache_env(self, upstream: str) -> dict[str, str]:
        return clean_environment(
            **FAKE_CREDENTIALS,
            AWS_REGION=REGION,
            SECRETCACHE_TOKEN=TOKEN,
            AWS_ENDPOINT_URL_SECRETS_MANAGER=upstream,
        )

    def secretcache(self, name: str, upstream: str, args: Sequence[str] = ()) -> Server:
        """A shared secretcache instance by name, started on first use."""
        if name not in self._servers:
            self._servers[name] = self.start_secretcache(name, upstream, args)
        return self._servers[name]

    def start_secretcache(
        self,
        name: str,
        upstream: str,
        args: Sequence[str] = (),
        command: Sequence[str] | None = None,
    ) -> Server:
        port = free_port()
        command = command or [sys.executable, "-m", "secretcache"]
        server = Server(
            name,
            [*command, "--port", f"tcp:{port}:interface=127.0.0.1", *args],
            port,
            self.secretcache_env(upstream),
            self.scratch,
        )
        deadline = time.monotonic() + 15
        while request(port, "/ready", token=False)[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready:\n{server.output()[-3000:]}")
            time.sleep(0.05)
        return server

    @property
    def proxied(self) -> Server:
        """secretcache behind the counting proxy, TTL long enough that the
        hit key never expires during a run."""
        return self.secretcache("proxied", self.proxy.url, ["--ttl", "3600"])

    @property
    def direct(self) -> Server:
        """secretcache talking to moto directly, default settings."""
        return self.secretcache("direct", self.moto.url)

    def reference(self, size: int) -> Server:
        if "reference" not in self._servers:
            port = free_port()
            self._servers["reference"] = Server(
                "reference",
                [sys.executable, REFERENCE, "--port", str(port), "--size", str(size)],
                port,
                clean_environment(),
                self.scratch,
            )
        return self._servers["reference"]

    def close(self) -> None:
        for server in self._servers.values():
            server.stop()
        if self._proxy is not None:
            self._proxy.stop()
        if self._moto is not None:
            self._moto.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # Load.

    def _cpu(self) -> tuple[float, float, float]:
        """(now, CPU seconds used by the whole machine, CPU seconds used by
        this harness, its servers, moto and its reaped load generators): the
        difference between two snapshots is what other processes used."""
        tick = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        # user, nice, system: time any process used, and steal: time the
        # hypervisor gave to other guests. Interrupts are left out: loopback
        # traffic is handled in softirq and would count as "other".
        machine = (v[0] + v[1] + v[2] + v[7]) / tick
        pids = [s.process.pid for s in self._servers.values()]
        if self._moto is not None:
            pids.append(self._moto.process.pid)
        ours = 0.0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                ours += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                pass
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            ours += usage.ru_utime + usage.ru_stime
        return time.monotonic(), machine, ours

    def load(
        self, port: int, path: str, connections: int, seconds: int
    ) -> dict[str, Any]:
        """One closed-loop run against ``port``: requests/s and latency (ms)."""
        if self.loadgen == "wrk":
            command = [
                *pinned(LOAD_CPU),
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                LUA,
                f"http://127.0.0.1:{port}{path}",
            ]
        else:
            command = [
                *pinned(LOAD_CPU),
                sys.executable,
                LOADGEN,
                "--port",
                str(port),
                "--path",
                path,
                "--header",
                f"{TOKEN_HEADER}: {TOKEN}",
                "--connections",
                str(connections),
                "--seconds",
                str(seconds),
            ]
        env = {**os.environ, "BENCH_TOKEN": TOKEN}
        before = self._cpu()
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=seconds + 60
        )
        after = self._cpu()
        line = next(
            (x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None
        )
        if line is None:
            raise RuntimeError(f"load generator failed:\n{done.stdout}\n{done.stderr}")
        raw = json.loads(line[len("BENCH_JSON ") :])
        latency = raw["latency_us"]
        errors = sum(raw["errors"].values())
        elapsed = after[0] - before[0]
        other = ((after[1] - before[1]) - (after[2] - before[2])) / elapsed
        return {
            "other_cpu": max(0.0, other),
            "rps": raw["requests"] / (raw["duration_us"] / 1e6),
            "requests": raw["requests"],
            "errors": errors,
            "p50": latency["p50"] / 1000,
            "p90": latency["p90"] / 1000,
            "p99": latency["p99"] / 1000,
            "p99.9": latency["p99.9"] / 1000,
            "max": latency["max"] / 1000,
        }


# Statistics.


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": med(values), "min": min(values), "max": max(values)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("rps", "p50", "p90", "p99", "p99.9", "max", "other_cpu")
    summary = {k: spread([r[k] for r in runs]) for k in keys}
    summary["errors"] = sum(r["errors"] for r in runs)
    summary["requests"] = sum(r["requests"] for r in runs)
    return summary


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


# Sections. Each returns its results (for the JSON) and table rows.


@dataclass
class Row:
    what: str
    value: str
    versus: str = ""
    ratio: str = ""
    target: str = ""
    ok: bool | None = None


def fmt(s: dict[str, float], digits: int = 2, thousands: bool = False) -> str:
    if thousands:
        main = f"{s['median']:,.0f}"
        if s["min"] == s["max"]:
            return main
        return f"{main} ({s['min']:,.0f}-{s['max']:,.0f})"
    main = f"{s['median']:.{digits}f}"
    if s["min"] == s["max"]:
        return main
    return f"{main} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def fmt_ratio(value: float, paired: Sequence[float] = ()) -> str:
    text = f"{value:.2f}x"
    if len(paired) > 1:
        text += f" ({min(paired):.2f}-{max(paired):.2f})"
    return text


def other_cpu_row(runs: Iterable[Iterable[dict[str, Any]]]) -> Row:
    """How much CPU other processes on the machine used during the runs."""
    values = [r["other_cpu"] for group in runs for r in group]
    busy = max(values) > 0.1
    return Row(
        "CPU used by other processes or stolen, cores",
        fmt(spread(values)),
        "NOISY: rerun on a quiet machine" if busy else "",
    )


def warm_hit(port: int) -> int:
    """Fetch the hit key until it is a hit; returns the body size."""
    for _ in range(3):
        status, headers, body = request(port, HIT_PATH)
        if status != 200:
            raise RuntimeError(f"GET {HIT_PATH}: {status} {body[:200]!r}")
        if headers.get("x-secretcache-cache") == "hit":
            return len(body)
    raise RuntimeError("the hit key is not a hit after three requests")


def section_hit(bench: Bench) -> tuple[dict[str, Any], list[Row]]:
    p = bench.profile
    bench.create_secrets([HIT_ID])
    sc = bench.proxied
    size = warm_hit(sc.port)
    ref = bench.reference(size)
    status, _, body = request(ref.port, HIT_PATH, token=False)
    assert status == 200 and len(body) == size, (status, len(body), size)
    calls_before = bench.proxy.calls[HIT_ID]
    results: dict[str, Any] = {"body_bytes": size, "connections": {}}
    rows: list[Row] = []
    all_runs: list[list[dict[str, Any]]] = []
    for connections in p.connections:
        print(f"  hit: {connections} connections", flush=True)
        for server in (sc, ref):
            bench.load(server.port, HIT_PATH, connections, p.warmup)
        runs: dict[str, list[dict[str, Any]]] = {"secretcache": [], "reference": []}
        all_runs.extend(runs.values())
        for _ in range(p.runs):
            runs["secretcache"].append(
                bench.load(sc.port, HIT_PATH, connections, p.seconds)
            )
            runs["reference"].append(
                bench.load(ref.port, HIT_PATH, connections, p.seconds)
            )
        s, r = summarise(runs["secretcache"]), summarise(runs["reference"])
        paired = {
            k: [
                ratio(a[k], b[k])
                for a, b in zip(runs["secretcache"], runs["reference"], strict=True)
            ]
            for k in ("rps", "p50", "p99", "p99.9")
        }
        results["connections"][str(connections)] = {
            "secretcache": s,
            "reference": r,
            "runs": runs,
            "ratio": {k: ratio(s[k]["median"], r[k]["median"]) for k in paired},
            "paired_ratios": paired,
        }
        rps_ratio = ratio(s["rps"]["median"], r["rps"]["median"])
        c = f"{connections} conns"
        rows.append(
            Row(
                f"{c}: requests/s",
                fmt(s["rps"], thousands=True),
                fmt(r["rps"], thousands=True),
                fmt_ratio(rps_ratio, paired["rps"]),
                TARGETS["hit_rps"] if connections == 16 else "",
                rps_ratio >= 0.8 if connections == 16 else None,
            )
        )
        for k in ("p50", "p99", "p99.9"):
            rv = ratio(s[k]["median"], r[k]["median"])
            target = k == "p99" and connections == 16
            rows.append(
                Row(
                    f"{c}: {k} ms",
                    fmt(s[k]),
                    fmt(r[k]),
                    fmt_ratio(rv, paired[k]),
                    TARGETS["hit_p99"] if target else "",
                    rv <= 1.5 if target else None,
                )
            )
        if s["errors"] or r["errors"]:
            rows.append(
                Row(
                    f"{c}: errors",
                    str(s["errors"]),
                    str(r["errors"]),
                    target="0",
                    ok=False,
                )
            )
    upstream = bench.proxy.calls[HIT_ID] - calls_before
    results["upstream_calls_during_load"] = upstream
    rows.append(other_cpu_row(all_runs))
    rows.append(
        Row(
            "upstream calls during the hit load",
            str(upstream),
            target="0",
            ok=upstream == 0,
        )
    )
    return results, rows


def section_miss(bench: Bench) -> tuple[dict[str, Any], list[Row]]:
    import botocore.session

    p = bench.profile
    warm = 3
    ids = [f"bench/miss-{i:03d}" for i in range(p.miss_samples + warm)]
    bench.create_secrets(ids)
    sc = bench.direct
    client = botocore.session.get_session().create_client(
        "secretsmanager",
        endpoint_url=bench.moto.url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto's fake key
    )
    connection = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=15)
    clock = time.perf_counter

    def through_secretcache(secret_id: str) -> float:
        started = clock()
        connection.request(
            "GET",
            f"/secretsmanager/get?secretId={secret_id}",
            headers={TOKEN_HEADER: TOKEN},
        )
        response = connection.getresponse()
        body = response.read()
        elapsed = clock() - started
        outcome = response.getheader("X-Secretcache-Cache")
        if response.status != 200 or outcome != "miss":
            raise RuntimeError(
                f"cold fetch: {response.status} {outcome} {body[:200]!r}"
            )
        return elapsed

    def direct(secret_id: str) -> float:
        started = clock()
        client.get_secret_value(SecretId=secret_id)
        return clock() - started

    print(f"  miss: {p.miss_samples} cold fetches each way", flush=True)
    secretcache_ms: list[float] = []
    botocore_ms: list[float] = []
    for i, secret_id in enumerate(ids):
        # Alternate which goes first, so drift in moto hits both alike.
        order = (
            (through_secretcache, direct)
            if i % 2 == 0
            else (direct, through_secretcache)
        )
        times = {f: f(secret_id) * 1000 for f in order}
        if i >= warm:
            secretcache_ms.append(times[through_secretcache])
            botocore_ms.append(times[direct])
    connection.close()
    s, b = spread(secretcache_ms), spread(botocore_ms)
    r = ratio(s["median"], b["median"])
    results = {
        "secretcache_ms": secretcache_ms,
        "botocore_ms": botocore_ms,
        "secretcache": s,
        "botocore": b,
        "ratio": r,
        "samples": p.miss_samples,
    }
    rows = [
        Row(
            f"cold fetch ms, median of {p.miss_samples}",
            fmt(s),
            fmt(b),
            fmt_ratio(r),
            TARGETS["miss"],
            r <= 1.3,
        )
    ]
    return results, rows


async def _requests(
    port: int, paths: Sequence[str], over: float
) -> list[tuple[int, str, float, float]]:
    """Open one connection per path, then send the requests spread evenly
    over ``over`` seconds (all at once for 0). Returns (status, outcome,
    seconds after the first send, latency) for each."""
    opened = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", port) for _ in paths)
    )
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    gap = over / max(1, len(paths) - 1)

    async def one(
        i: int, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, str, float, float]:
        await asyncio.sleep(max(0.0, start + i * gap - loop.time()))
        sent = loop.time()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{TOKEN_HEADER}: {TOKEN}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (x.partition(":") for x in lines[1:] if x)
        }
        await reader.readexactly(int(headers.get("content-length", "0")))
        writer.close()
        return (
            status,
            headers.get("x-secretcache-cache", "-"),
            sent - start,
            loop.time() - sent,
        )

    return await asyncio.gather(
        *(
            one(i, path, r, w)
            for i, (path, (r, w)) in enumerate(zip(paths, opened, strict=True))
        )
    )


def section_storm(bench: Bench) -> tuple[dict[str, Any], list[Row]]:
    n = bench.profile.burst
    burst_id, storm_id = "bench/burst", "bench/storm"
    bench.create_secrets([burst_id, storm_id])
    sc = bench.proxied
    calls = bench.proxy.calls
    rows: list[Row] = []
    results: dict[str, Any] = {}

    # A burst of cold requests for one key, all sent while its fetch is in
    # flight (the proxy holds that call 200 ms).
    print(f"  storm: {n} concurrent cold requests", flush=True)
    bench.slow_down(burst_id, 0.2)
    before = calls[burst_id]
    answers = asyncio.run(
        _requests(sc.port, [f"/secretsmanager/get?secretId={burst_id}"] * n, 0)
    )
    bench.slow_down(burst_id, None)
    burst_calls = calls[burst_id] - before
    outcomes = Counter(f"{status} {outcome}" for status, outcome, _, _ in answers)
    results["burst"] = {
        "requests": n,
        "upstream_calls": burst_calls,
        "answers": dict(outcomes),
        "send_span_ms": max(a[2] for a in answers) * 1000,
    }
    rows.append(
        Row(
            f"{n} concurrent cold requests: upstream calls",
            str(burst_calls),
            versus=", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())),
            target=TARGETS["burst"],
            ok=burst_calls == 1 and outcomes == Counter({"200 miss": n}),
        )
    )

    # The legacy client's refresh storm: n refresh=1 requests over 1 s.
    print(f"  storm: {n} refresh=1 requests within 1 s", flush=True)
    status, _, _ = request(sc.port, f"/cache?name={storm_id}")
    assert status == 200, status
    time.sleep(1.2)  # past the forced-refresh window of that first fetch
    before = calls[storm_id]
    answers = asyncio.run(
        _requests(sc.port, [f"/cache?name={storm_id}&refresh=1"] * n, 0.99)
    )
    storm_calls = calls[storm_id] - before
    outcomes = Counter(f"{status} {outcome}" for status, outcome, _, _ in answers)
    results["storm"] = {
        "requests": n,
        "upstream_calls": storm_calls,
        "answers": dict(outcomes),
        "send_span_ms": max(a[2] for a in answers) * 1000,
    }
    rows.append(
        Row(
            f"{n} refresh=1 in {results['storm']['send_span_ms'] / 1000:.2f} s: "
            "upstream calls",
            str(storm_calls),
            versus=", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())),
            target=TARGETS["storm"],
            ok=storm_calls == 1 and outcomes == Counter({"200 refresh": n}),
        )
    )
    return results, rows


class Refresher:
    """Keeps forcing refreshes of the slow keys, one after another, so that
    one refresh through the slowed upstream is always in flight; each key is
    revisited after the 1 s forced-refresh window has passed."""

    def __init__(self, port: int, keys: Sequence[str]) -> None:
        self.port = port
        self.keys = keys
        self.outcomes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        i = 0
        while not self._stop.is_set():
            key = self.keys[i % len(self.keys)]
            i += 1
            connection.request(
                "GET",
                f"/secretsmanager/get?secretId={key}&refreshNow=true",
                headers={TOKEN_HEADER: TOKEN},
            )
            response = connection.getresponse()
            response.read()
            self.outcomes[
                f"{response.status} {response.getheader('X-Secretcache-Cache')}"
            ] += 1
        connection.close()


def section_isolation(bench: Bench) -> tuple[dict[str, Any], list[Row]]:
    p = bench.profile
    slow = [f"{SLOW_PREFIX}{i}" for i in range(SLOW_KEYS)]
    bench.create_secrets([HIT_ID, *slow])
    sc = bench.proxied
    warm_hit(sc.port)
    for key in slow:
        status, _, _ = request(sc.port, f"/secretsmanager/get?secretId={key}")
        assert status == 200, status
    connections = 16
    bench.load(sc.port, HIT_PATH, connections, p.warmup)
    idle: list[dict[str, Any]] = []
    busy: list[dict[str, Any]] = []
    slow_calls = 0
    refresher_outcomes: Counter[str] = Counter()
    busy_seconds = 0.0
    print(f"  isolation: {p.runs} x (idle, refreshing)", flush=True)
    bench.slow_down(SLOW_PREFIX, SLOW_SECONDS)
    try:
        for _ in range(p.runs):
            idle.append(bench.load(sc.port, HIT_PATH, connections, p.isolation_seconds))
            before = sum(bench.proxy.calls[k] for k in slow)
            refresher = Refresher(sc.port, slow)
            started = time.monotonic()
            refresher.start()
            time.sleep(0.5)
            busy.append(bench.load(sc.port, HIT_PATH, connections, p.isolation_seconds))
            refresher.stop()
            busy_seconds += time.monotonic() - started
            slow_calls += sum(bench.proxy.calls[k] for k in slow) - before
            refresher_outcomes.update(refresher.outcomes)
    finally:
        bench.slow_down(SLOW_PREFIX, None)
    i, b = summarise(idle), summarise(busy)
    r = ratio(b["p99"]["median"], i["p99"]["median"])
    paired = [ratio(x["p99"], y["p99"]) for x, y in zip(busy, idle, strict=True)]
    results = {
        "connections": connections,
        "idle": i,
        "refreshing": b,
        "runs": {"idle": idle, "refreshing": busy},
        "ratio_p99": r,
        "paired_ratios_p99": paired,
        "upstream_calls_for_refreshed_keys": slow_calls,
        "upstream_calls_per_second": slow_calls / busy_seconds if busy_seconds else 0,
        "refresher_answers": dict(refresher_outcomes),
        "upstream_delay_s": SLOW_SECONDS,
    }
    rows = [
        Row(
            f"hit p99 ms, {connections} conns, while refreshing",
            fmt(b["p99"]),
            fmt(i["p99"]),
            fmt_ratio(r, paired),
            TARGETS["isolation"],
            r <= 1.5,
        ),
        Row(
            "hit requests/s, same runs",
            fmt(b["rps"], thousands=True),
            fmt(i["rps"], thousands=True),
            fmt_ratio(ratio(b["rps"]["median"], i["rps"]["median"])),
        ),
        other_cpu_row([idle, busy]),
        Row(
            "forced refreshes upstream during the load",
            f"{slow_calls} ({results['upstream_calls_per_second']:.1f}/s)",
            ", ".join(f"{k}: {v}" for k, v in sorted(refresher_outcomes.items())),
        ),
    ]
    return results, rows


def _time_to_listen(
    command: Sequence[str], port: int, env: dict[str, str], cwd: str
) -> float:
    """Seconds from exec to the port accepting a connection; then stops it."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [*pinned(SERVER_CPU), *command],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = started + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    elapsed = time.perf_counter() - started
                    break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{command} exited with {process.returncode}"
                    ) from None
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{command} not listening after 30 s") from None
                time.sleep(0.002)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return elapsed


def _floor_times(env: dict[str, str], cwd: str) -> tuple[float, float]:
    """Seconds from exec to the floor's imports done, and to its exit."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            *pinned(SERVER_CPU),
            sys.executable,
            "-c",
            FLOOR_IMPORTS + "\nimport sys; sys.stdout.write('.'); sys.stdout.flush()",
        ],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    marker = process.stdout.read(1)
    imported = time.perf_counter() - started
    if process.wait() != 0 or marker != b".":
        raise RuntimeError("the floor's imports failed")
    return imported, time.perf_counter() - started


def _floor_rss(env: dict[str, str], cwd: str) -> int:
    """VmRSS (KiB) of a Python that has made the floor's imports."""
    probe = (
        FLOOR_IMPORTS
        + "\nprint(next(x.split()[1] for x in open('/proc/self/status')"
        + " if x.startswith('VmRSS:')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip())


def twistd_command() -> list[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "twistd")
    twistd = beside if os.path.exists(beside) else shutil.which("twistd")
    if twistd is None:
        raise RuntimeError("twistd not found")
    return [twistd, "-n", "--pidfile=", "secretcache"]


def section_startup(bench: Bench) -> tuple[dict[str, Any], list[Row]]:
    p = bench.profile
    env = bench.secretcache_env(bench.moto.url)
    floor_exit: list[float] = []

    def floor_imports() -> float:
        imported, exited = _floor_times(env, bench.scratch)
        floor_exit.append(exited)
        return imported

    kinds: dict[str, Callable[[], float]] = {"floor": floor_imports}
    for name, command in (
        ("python -m secretcache", [sys.executable, "-m", "secretcache"]),
        ("twistd -n secretcache", twistd_command()),
    ):

        def start(command: list[str] = command) -> float:
            port = free_port()
            return _time_to_listen(
                [*command, "--port", f"tcp:{port}:interface=127.0.0.1"],
                port,
                env,
                bench.scratch,
            )

        kinds[name] = start
    print(f"  startup: {p.startup_repeats} alternating starts of each", flush=True)
    for measure in kinds.values():  # warm the page cache and .pyc files
        measure()
    del floor_exit[:]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(p.startup_repeats):
        for name, measure in kinds.items():
            times[name].append(measure())
    floor = spread(times["floor"])
    times["floor, to exit"] = floor_exit
    results: dict[str, Any] = {
        "seconds": times,
        "floor": floor,
        "floor_to_exit": spread(floor_exit),
    }
    rows = [
        Row(
            "floor: python -c 'import reactor, klein, treq, botocore…' s",
            fmt(floor, 3),
            f"to exit: {fmt(spread(floor_exit), 3)}",
        )
    ]
    for name in ("python -m secretcache", "twistd -n secretcache"):
        s = spread(times[name])
        results[name] = s
        over = s["median"] - floor["median"]
        rows.append(
            Row(
                f"exec → listening, {name} s",
                fmt(s, 3),
                f"floor {floor['median']:.3f}",
                f"{over:+.3f} s",
                TARGETS["startup"],
                over <= 0.2,
            )
        )

    # Memory: a fresh server, idle, then with rss_secrets secrets cached.
    n = p.rss_secrets
    print(f"  memory: creating and fetching {n} secrets", flush=True)
    names = [f"bench/rss-{i:04d}" for i in range(n)]
    bench.create_secrets(names)
    server = bench.start_secretcache("rss", bench.moto.url, ["--cache-size", str(n)])
    try:
        time.sleep(1)
        idle = server.status("VmRSS")
        local = threading.local()
        bad: Counter[str] = Counter()

        def fetch(name: str) -> None:
            if not hasattr(local, "c"):
                local.c = http.client.HTTPConnection(
                    "127.0.0.1", server.port, timeout=15
                )
            local.c.request(
                "GET",
                f"/secretsmanager/get?secretId={name}",
                headers={TOKEN_HEADER: TOKEN},
            )
            response = local.c.getresponse()
            response.read()
            if response.status != 200:
                bad[str(response.status)] += 1

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(fetch, names))
        outcomes = Counter(
            request(server.port, f"/secretsmanager/get?secretId={name}")[1].get(
                "x-secretcache-cache", "-"
            )
            for name in names[:: max(1, n // 20)]
        )
        time.sleep(1)
        loaded = server.status("VmRSS")
        peak = server.status("VmHWM")
    finally:
        server.stop()
    mib = 1024
    results["memory"] = {
        "secrets": n,
        "secret_bytes": SECRET_BYTES,
        "rss_idle_mib": idle / mib,
        "rss_cached_mib": loaded / mib,
        "hwm_mib": peak / mib,
        "fetch_errors": dict(bad),
        "sample_outcomes_after": dict(outcomes),
    }
    floor_rss = _floor_rss(bench.secretcache_env(bench.moto.url), bench.scratch)
    results["memory"]["rss_floor_mib"] = floor_rss / mib
    rows.append(
        Row(
            "RSS idle MiB",
            f"{idle / mib:.1f}",
            f"floor {floor_rss / mib:.1f} (python + those imports)",
        )
    )
    rows.append(
        Row(
            f"RSS with {n} x {SECRET_BYTES} B cached MiB",
            f"{loaded / mib:.1f}",
            f"peak {peak / mib:.1f}; +{(loaded - idle) / mib:.1f} over idle",
            target=TARGETS["rss"],
            ok=loaded / mib <= 64 and not bad and set(outcomes) == {"hit"},
        )
    )
    return results, rows


# Report.


def table(sections: list[tuple[str, str, list[Row]]]) -> str:
    header = Row("", "secretcache", "versus", "ratio", "target")
    all_rows = [header] + [r for _, _, rows in sections for r in rows]
    widths = [
        max(len(getattr(r, f)) for r in all_rows)
        for f in ("what", "value", "versus", "ratio", "target")
    ]

    def line(r: Row) -> str:
        cells = [r.what, r.value, r.versus, r.ratio, r.target]
        text = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
        verdict = "" if r.ok is None else ("ok" if r.ok else "MISSED")
        return ("  " + text + "  " + verdict).rstrip()

    out = [line(header)]
    for title, versus, rows in sections:
        out.append(f"{title}  [versus: {versus}]" if versus else title)
        out.extend(line(r) for r in rows)
    return "\n".join(out)


VERSUS = {
    "hit": (
        "1. Hit throughput and latency (median of runs, min-max)",
        "reference server",
    ),
    "miss": ("2. Miss cost", "one botocore get_secret_value to moto"),
    "storm": ("3. Coalescing and refresh storms", "answers: status outcome: count"),
    "isolation": (
        "4. Isolation (upstream for the refreshed keys slowed 300 ms)",
        "hits with no refresh running",
    ),
    "startup": ("5. Start-up and memory", ""),
}


def chart(results: dict[str, Any], path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        return "matplotlib is not installed: no chart"
    panels = []
    if "hit" in results:
        panels.append("hit")
    if "isolation" in results:
        panels.append("isolation")
    if not panels:
        return None
    figure, axes = plt.subplots(
        1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False
    )
    percentiles = ("p50", "p90", "p99", "p99.9")
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "hit":
            series = []
            for conns, data in results["hit"]["connections"].items():
                series.append((f"secretcache, {conns} conns", data["secretcache"]))
                series.append((f"reference, {conns} conns", data["reference"]))
            title = "Cache hit latency (median of runs, bars: min-max)"
        else:
            iso = results["isolation"]
            series = [
                ("hits, idle", iso["idle"]),
                ("hits, while refreshing via 300 ms upstream", iso["refreshing"]),
            ]
            title = f"Isolation, {iso['connections']} connections"
        width = 0.8 / len(series)
        for j, (label, s) in enumerate(series):
            xs = [
                i + (j - (len(series) - 1) / 2) * width for i in range(len(percentiles))
            ]
            ys = [s[k]["median"] for k in percentiles]
            low = [s[k]["median"] - s[k]["min"] for k in percentiles]
            high = [s[k]["max"] - s[k]["median"] for k in percentiles]
            ax.bar(xs, ys, width, yerr=[low, high], capsize=2, label=label)
        ax.set_xticks(range(len(percentiles)), percentiles)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(
            ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else "")
        )
        ax.set_ylabel("latency, ms (log)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None


def environment_info(bench: Bench) -> dict[str, Any]:
    probe = (
        "import json, sys, importlib.metadata as m, secretcache, os;"
        "print(json.dumps({'secretcache_path': os.path.dirname(secretcache.__file__),"
        "'python': sys.version.split()[0],"
        "**{p: m.version(p) for p in"
        " ('secretcache', 'twisted', 'klein', 'treq', 'botocore', 'moto')}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=bench.scratch, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(
            "secretcache is not installed in this environment (run `pip install .` "
            "with the test extra):\n" + done.stderr
        )
    info: dict[str, Any] = json.loads(done.stdout)
    installed = info["secretcache_path"]
    source = os.path.join(ROOT, "secretcache")
    differs = []
    for name in sorted(os.listdir(source)):
        if not name.endswith(".py"):
            continue
        other = os.path.join(installed, name)
        with open(os.path.join(source, name), "rb") as a:
            mine = a.read()
        if not os.path.exists(other):
            differs.append(name)
            continue
        with open(other, "rb") as b:
            if b.read() != mine:
                differs.append(name)
    info["installed_differs_from_checkout"] = differs
    try:
        commit = subprocess.run(
            ["git", "-C", ROOT, "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        commit = ""
    info["checkout"] = commit
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (x.split(":", 1)[1].strip() for x in f if x.startswith("model name")),
                "",
            )
    except OSError:
        pass
    info.update(
        cpu=cpu,
        cpus=os.cpu_count(),
        platform=platform.platform(),
        loadgen=bench.loadgen,
        pinned=bool(pinned(0)),
        profile=bench.profile.name,
    )
    if bench.loadgen == "wrk":
        version = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        info["wrk"] = (version.stdout + version.stderr).split("\n")[0].strip()
    return info


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Sections: " + ", ".join(SECTIONS),
    )
    parser.add_argument(
        "--quick", action="store_true", help="short loads, one run each"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        metavar="SECTION",
        help="run only this section (repeatable): " + ", ".join(SECTIONS),
    )
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk if on PATH (auto), or bench/loadgen.py",
    )
    parser.add_argument(
        "--results",
        default=os.path.join(HERE, "results"),
        help="where to write JSON and PNG",
    )
    args = parser.parse_args()
    profile = QUICK if args.quick else FULL
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "python"
    elif loadgen == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not on PATH")
    sections = [s for s in SECTIONS if not args.only or s in args.only]

    bench = Bench(profile, loadgen)
    started = time.monotonic()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    results: dict[str, Any] = {"timestamp": stamp}
    printed: list[tuple[str, str, list[Row]]] = []
    try:
        info = environment_info(bench)
        results["environment"] = info
        print(
            f"secretcache {info['secretcache']} ({info['secretcache_path']}), "
            f"Twisted {info['twisted']}, Klein {info['klein']}, "
            f"Python {info['python']}; "
            f"{info['cpus']} CPUs {info['cpu']}; load: {loadgen}; "
            f"{'server on cpu 0, load on cpu 1' if info['pinned'] else 'not pinned'}; "
            f"{profile.name} profile",
            flush=True,
        )
        if info["installed_differs_from_checkout"]:
            print(
                "warning: the installed secretcache differs from this checkout in "
                + ", ".join(info["installed_differs_from_checkout"])
                + " (pip install . to measure the checkout)",
                flush=True,
            )
        functions = {
            "hit": section_hit,
            "miss": section_miss,
            "storm": section_storm,
            "isolation": section_isolation,
            "startup": section_startup,
        }
        busy = os.getloadavg()[0]
        if busy > 0.5:
            print(
                f"warning: load average {busy:.2f} before starting: other work on "
                "this machine will add noise",
                flush=True,
            )
        for name in sections:
            load_before = os.getloadavg()[0]
            data, rows = functions[name](bench)
            data["load_average_before"] = load_before
            results[name] = data
            title, versus = VERSUS[name]
            if loadgen == "python" and name in ("hit", "isolation"):
                title += (
                    "\n  (load from bench/loadgen.py, which saturates before the"
                    " servers do: install wrk for meaningful ratios)"
                )
            printed.append((title, versus, rows))
    finally:
        bench.close()
    elapsed = time.monotonic() - started
    results["seconds"] = elapsed
    results["checks"] = [
        {"what": f"{title}: {r.what}", "value": r.value, "target": r.target, "ok": r.ok}
        for title, _, rows in printed
        for r in rows
        if r.ok is not None
    ]
    os.makedirs(args.results, exist_ok=True)
    base = os.path.join(args.results, stamp)
    with open(base + ".json", "w") as f:
        json.dump(results, f, indent=1)
    note = chart(results, base + ".png")
    print()
    print(table(printed))
    print()
    missed = [c for c in results["checks"] if not c["ok"]]
    met = len(results["checks"]) - len(missed)
    print(
        f"{met} of {len(results['checks'])} targets met; "
        f"{elapsed:.0f} s; results in {os.path.relpath(base)}.json"
        + ("" if note else f" and {os.path.relpath(base)}.png")
    )
    if note:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
