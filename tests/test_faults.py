"""Fault injection: the real server against moto's server through a proxy that
adds latency, answers 500s or throttling errors, resets connections or
black-holes requests, switched while the test runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from tests import faults
from tests.support import Answer, Secretcache
from tests.test_integration import AUTH, TOKEN, MotoTestCase

T = TypeVar("T")


def timed(call: Callable[[], T]) -> tuple[T, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


class FaultTestCase(MotoTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(setattr, self.proxy, "fault", None)

    def start_cache(self, *args: str) -> Secretcache:
        return self.start({"SECRETCACHE_TOKEN": TOKEN}, args)

    def get(self, server: Secretcache, name: str, **params: str) -> Answer:
        query = "".join(f"&{k}={v}" for k, v in params.items())
        return server.request(
            "GET", f"/secretsmanager/get?secretId={name}{query}", headers=AUTH
        )

    def value(self, answer: Answer) -> Any:
        self.assertEqual(answer.status, 200, answer.body)
        return json.loads(answer.json()["SecretString"])

    def set_fault(self, fault: faults.Fault | None) -> None:
        self.proxy.fault = fault


class StaleIfErrorTests(FaultTestCase):
    def test_stale_through_an_outage_and_fresh_after_it(self) -> None:
        server = self.start_cache("--ttl", "1", "--max-attempts", "2")
        name = self.secret("db", {"password": "before"})
        self.assertEqual(self.value(self.get(server, name)), {"password": "before"})
        for fault in (faults.server_error(), faults.throttling(), faults.reset):
            self.set_fault(fault)
            time.sleep(1.1)
            answer = self.get(server, name)
            self.assertEqual(self.value(answer), {"password": "before"})
            self.assertEqual(answer.headers["x-secretcache-cache"], "stale")
        self.sm.put_secret_value(
            SecretId=name, SecretString=json.dumps({"password": "after"})
        )
        self.set_fault(None)
        # Reads are answered stale at once until the back-off after the last
        # failure has passed (1, 2, then 4 s, each up to doubled by jitter),
        # then a background refresh brings the new value.
        deadline = time.monotonic() + 10
        seen = self.value(self.get(server, name))
        while seen != {"password": "after"} and time.monotonic() < deadline:
            time.sleep(0.1)
            seen = self.value(self.get(server, name))
        self.assertEqual(seen, {"password": "after"})

    def test_not_found_is_never_masked_by_a_stale_value(self) -> None:
        server = self.start_cache("--ttl", "1")
        name = self.secret("gone", {"password": "old"})
        self.value(self.get(server, name))
        self.sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
        time.sleep(1.1)
        answer = self.get(server, name)
        self.assertEqual(answer.status, 404)
        self.assertEqual(answer.json()["__type"], "ResourceNotFoundException")

    def test_failed_forced_refresh_returns_the_error_and_keeps_the_value(self) -> None:
        server = self.start_cache()
        name = self.secret("kept", {"password": "cached"})
        self.value(self.get(server, name))
        time.sleep(1.1)  # past the one-second window that answers refreshes
        self.set_fault(faults.server_error())
        answer = self.get(server, name, refreshNow="true")
        self.assertEqual(answer.status, 502)
        self.assertEqual(answer.json()["__type"], "InternalServiceError")
        self.set_fault(None)
        answer = self.get(server, name)
        self.assertEqual(answer.headers["x-secretcache-cache"], "hit")
        self.assertEqual(self.value(answer), {"password": "cached"})


class ColdKeyDuringAnOutageTests(FaultTestCase):
    """With nothing cached, an outage is answered quickly with its mapped status,
    after the configured attempts and no more."""

    def check(self, fault: faults.Fault, status: int, code: str) -> None:
        server = self.start_cache("--max-attempts", "3")
        name = self.secret("cold", {"password": "x"})
        self.set_fault(fault)
        answer, seconds = timed(lambda: self.get(server, name))
        self.assertEqual((answer.status, answer.json()["__type"]), (status, code))
        self.assertEqual(self.proxy.calls[name], 3)
        # Two backoffs of at most 0.2 s and 0.4 s, plus loopback round trips.
        self.assertLess(seconds, 2.0)

    def test_server_errors_are_a_502(self) -> None:
        self.check(faults.server_error(), 502, "InternalServiceError")

    def test_throttling_is_a_429(self) -> None:
        self.check(faults.throttling(), 429, "ThrottlingException")

    def test_connection_reset_is_a_502(self) -> None:
        self.check(faults.reset, 502, "UpstreamError")

    def test_client_errors_are_not_retried(self) -> None:
        server = self.start_cache("--max-attempts", "3")
        name = self.secret("denied", {"password": "x"})
        self.set_fault(faults.json_error(400, "AccessDeniedException", "no"))
        answer = self.get(server, name)
        self.assertEqual(answer.status, 403)
        self.assertEqual(self.proxy.calls[name], 1)

    def test_a_burst_costs_one_upstream_call_per_attempt(self) -> None:
        server = self.start_cache("--max-attempts", "2")
        name = self.secret("burst", {"password": "x"})
        self.set_fault(faults.server_error())
        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(lambda _: self.get(server, name), range(40)))
        self.assertEqual({a.status for a in answers}, {502})
        # Requests that arrive after a failed fetch start a new one; the pool
        # cannot send all 40 at the same instant, so allow a few rounds.
        self.assertLessEqual(self.proxy.calls[name], 2 * 3)


class BlackHoleTests(FaultTestCase):
    def test_black_holed_upstream_is_a_504_within_budget_while_others_answer(
        self,
    ) -> None:
        server = self.start_cache(
            "--upstream-timeout", "0.4", "--request-timeout", "1.2"
        )
        cached = self.secret("cached", {"password": "warm"})
        cold = self.secret("cold", {"password": "unreachable"})
        self.value(self.get(server, cached))
        hole = faults.BlackHole()
        self.addCleanup(hole.release)
        self.set_fault(faults.only_for(cold, hole))
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(timed, lambda: self.get(server, cold))
            time.sleep(0.1)
            pings = [timed(lambda: server.request("GET", "/ping")) for _ in range(5)]
            hits = [timed(lambda: self.get(server, cached)) for _ in range(5)]
            answer, seconds = slow.result(10)
        self.assertEqual(
            (answer.status, answer.json()["__type"]), (504, "UpstreamTimeout")
        )
        self.assertGreaterEqual(seconds, 0.4)
        self.assertLess(seconds, 1.2 + 0.5)
        self.assertEqual({a.body for a, _ in pings}, {b"healthy"})
        self.assertEqual({a.headers["x-secretcache-cache"] for a, _ in hits}, {"hit"})
        self.assertLess(max(s for _, s in pings + hits), 0.25)
        self.assertGreaterEqual(hole.held, 1)

    def test_through_a_black_hole_only_the_first_stale_answer_waits(self) -> None:
        server = self.start_cache(
            "--ttl", "1", "--upstream-timeout", "0.4", "--request-timeout", "1.2"
        )
        name = self.secret("held", {"password": "kept"})
        self.value(self.get(server, name))
        hole = faults.BlackHole()
        self.addCleanup(hole.release)
        self.set_fault(hole)
        time.sleep(1.1)
        first, waited = timed(lambda: self.get(server, name))
        self.assertEqual(self.value(first), {"password": "kept"})
        self.assertEqual(first.headers["x-secretcache-cache"], "stale")
        self.assertGreaterEqual(waited, 0.4)  # at least one upstream timeout
        # Secrets Manager was just found unreachable: no more waiting on it.
        later = [timed(lambda: self.get(server, name)) for _ in range(5)]
        self.assertEqual(
            {a.headers["x-secretcache-cache"] for a, _ in later}, {"stale"}
        )
        self.assertLess(max(s for _, s in later), 0.25)


class ShutdownTests(FaultTestCase):
    def test_sigterm_with_a_request_in_flight_exits_0_within_2s(self) -> None:
        server = self.start_cache("--upstream-timeout", "30", "--request-timeout", "60")
        name = self.secret("inflight", {"password": "x"})
        hole = faults.BlackHole()
        self.addCleanup(hole.release)
        self.set_fault(hole)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self.get, server, name)
            deadline = time.monotonic() + 5
            while hole.held == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            self.assertEqual(hole.held, 1)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            status = server.process.wait(5)
            elapsed = time.monotonic() - started
            # After the grace period the in-flight request's connection is
            # closed: the client is not left hanging, and gets no wrong answer.
            with self.assertRaises((ConnectionError, OSError)):
                pending.result(5)
        self.assertEqual(status, 0, server.output())
        self.assertLess(elapsed, 2.0)

    def test_sigterm_lets_a_request_in_flight_finish(self) -> None:
        server = self.start_cache()
        name = self.secret("finishing", {"password": "in-time"})
        self.set_fault(faults.latency(0.5))
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self.get, server, name)
            deadline = time.monotonic() + 5
            while self.proxy.calls[name] == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            answer = pending.result(5)
            status = server.process.wait(5)
            elapsed = time.monotonic() - started
        self.assertEqual(self.value(answer), {"password": "in-time"})
        self.assertEqual(status, 0, server.output())
        self.assertLess(elapsed, 2.0)


class SteadyClientTests(FaultTestCase):
    def test_a_steady_client_never_waits_after_its_first_call(self) -> None:
        # Refresh-ahead starts at 75-90 % of the TTL: 3-3.6 s here, ahead of
        # expiry by more than the 0.3 s the slowed upstream takes.
        server = self.start_cache("--ttl", "4")
        name = self.secret("steady", {"password": "x"})
        self.value(self.get(server, name))
        self.set_fault(faults.latency(0.3))
        outcomes = []
        slowest = 0.0
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            answer, seconds = timed(lambda: self.get(server, name))
            outcomes.append(answer.headers["x-secretcache-cache"])
            slowest = max(slowest, seconds)
            time.sleep(0.1)
        self.assertEqual(set(outcomes), {"hit"})
        # Slower than 0.3 s would mean a read waited for the slowed upstream.
        self.assertLess(slowest, 0.25)
        # Eight seconds at a TTL of 4 s: refreshed ahead at least twice.
        self.assertGreaterEqual(self.proxy.calls[name], 3)


class PrefetchTests(FaultTestCase):
    def test_ready_only_after_prefetch_and_prefetched_keys_are_hits(self) -> None:
        names = [self.secret(f"p{i}", {"password": str(i)}) for i in range(3)]
        missing = "PrefetchTests/does-not-exist"
        self.set_fault(faults.latency(0.8))
        started = time.monotonic()
        server = self.start_cache("--prefetch", ",".join([*names, missing]))
        statuses = []
        while time.monotonic() - started < 10:
            status = server.request("GET", "/ready").status
            statuses.append(status)
            if status == 200:
                break
            time.sleep(0.05)
        self.assertEqual(statuses[0], 503)
        self.assertEqual(statuses[-1], 200)
        # Concurrent: four fetches slowed by 0.8 s each end well before 3.2 s.
        self.assertLess(time.monotonic() - started, 3.0)
        self.set_fault(None)
        for i, name in enumerate(names):
            answer = self.get(server, name)
            self.assertEqual(answer.headers["x-secretcache-cache"], "hit")
            self.assertEqual(self.value(answer), {"password": str(i)})
        self.assertIn("prefetch", server.output())
        self.assertEqual(server.process.poll(), None)


class ConnectionFloodTests(FaultTestCase):
    def test_over_the_limit_is_429_while_ping_answers_and_fds_stay_bounded(
        self,
    ) -> None:
        server = self.start_cache("--max-connections", "20")
        name = self.secret("flood", {"password": "x"})
        self.value(self.get(server, name))
        fd_dir = f"/proc/{server.process.pid}/fd"
        before = len(os.listdir(fd_dir))
        held = []
        try:
            for _ in range(300):
                s = socket.create_connection(("127.0.0.1", server.port))
                held.append(s)
            time.sleep(0.3)
            during = len(os.listdir(fd_dir))
            self.assertEqual(server.request("GET", "/ping").body, b"healthy")
            answer = self.get(server, name)
            self.assertEqual(answer.status, 429)
            self.assertEqual(answer.json()["__type"], "TooManyConnections")
        finally:
            for s in held:
                s.close()
        # 20 served + at most 64 waiting refusals, whatever the flood's size.
        self.assertLess(during - before, 20 + 64 + 10)
        time.sleep(0.3)
        self.assertEqual(self.value(self.get(server, name)), {"password": "x"})
        self.assertLessEqual(len(os.listdir(fd_dir)), before + 2)
