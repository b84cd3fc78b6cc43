"""The Lambda extension: the event loop on a fake clock (freeze and thaw
included), and the real entry point as a child process against the
Extensions API emulator and moto's server."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from secretcache.cache import Outcome, SecretCache
from secretcache.extension import PREFETCH_WAIT, ExtensionService
from secretcache.extensions_emulator import ExtensionProcess, ExtensionsEmulator
from secretcache.lambda_serve import on_invoke
from secretcache.secret import SecretKey
from secretcache.service import SecretcacheService
from tests import faults
from tests.support import FAKE_CREDENTIALS, REGION, clean_environment, free_port
from tests.test_cache import Fetches
from tests.test_integration import MotoTestCase

NOW = 1_800_000_000.0


class FakeEvents:
    """event/next as Deferreds the test fires."""

    def __init__(self) -> None:
        self.waiting: list[Deferred[dict[str, Any]]] = []

    def next_event(self) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        self.waiting.append(d)
        return d

    def send(self, event: dict[str, Any]) -> None:
        self.waiting.pop(0).callback(event)


class ExtensionServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.events = FakeEvents()
        self.prefetch: Deferred[None] = Deferred()
        self.invokes: list[float] = []
        self.shutdowns: list[tuple[float, int]] = []
        self.service = ExtensionService(
            self.events,
            self.clock,
            lambda: self.prefetch,
            self.invokes.append,
            lambda left, status: self.shutdowns.append((left, status)),
        )

    def test_first_next_waits_for_prefetch(self) -> None:
        self.service.startService()
        self.assertEqual(self.events.waiting, [])
        self.prefetch.callback(None)
        self.assertEqual(len(self.events.waiting), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_first_next_waits_at_most_one_second(self) -> None:
        self.service.startService()
        self.clock.advance(PREFETCH_WAIT - 0.01)
        self.assertEqual(self.events.waiting, [])
        self.clock.advance(0.02)
        self.assertEqual(len(self.events.waiting), 1)
        self.prefetch.callback(None)  # later: no second loop
        self.assertEqual(len(self.events.waiting), 1)

    def test_invoke_runs_the_hook_with_the_gap_and_polls_again(self) -> None:
        self.prefetch.callback(None)
        self.service.startService()
        self.clock.advance(5)
        self.events.send({"eventType": "INVOKE", "requestId": "r1"})
        self.assertEqual(self.invokes, [5.0])
        self.assertEqual(len(self.events.waiting), 1)

    def test_shutdown_reports_time_left_before_the_deadline(self) -> None:
        self.prefetch.callback(None)
        self.service.startService()
        deadline_ms = (NOW + 2) * 1000
        self.events.send(
            {
                "eventType": "SHUTDOWN",
                "shutdownReason": "spindown",
                "deadlineMs": deadline_ms,
            }
        )
        [(left, status)] = self.shutdowns
        self.assertEqual(status, 0)
        self.assertAlmostEqual(left, 2 - 0.3)
        self.assertEqual(self.events.waiting, [])

    def test_lost_api_shuts_down_non_zero_after_retries(self) -> None:
        self.prefetch.callback(None)
        self.service.startService()
        for _ in range(3):
            self.events.waiting.pop(0).errback(ConnectionError("gone"))
            self.clock.advance(1)
        self.assertEqual([status for _, status in self.shutdowns], [1])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_stop_cancels_the_poll_and_leaves_no_timer(self) -> None:
        self.service.startService()
        self.service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.prefetch.callback(None)
        self.assertEqual(self.events.waiting, [])


class FreezeTests(SynchronousTestCase):
    """Lambda freezes the process between invocations: no timer fires. A jump
    of the clock without running timers stands for a freeze; the INVOKE that
    ends it must start the refreshes that the timers would have."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.fetches = Fetches()
        self.cache = SecretCache(self.fetches, self.clock, ttl=100, jitter=lambda: 0.0)
        self.root = SecretcacheService()
        self.root.cache = self.cache
        self.closed: list[bool] = []
        self.root.close_idle_upstream = lambda: self.closed.append(True)
        self.key = SecretKey("db")
        d = self.cache.get(self.key)
        self.fetches.answer("v1")
        self.successResultOf(d)
        self.successResultOf(self.cache.get(self.key))  # read: in use

    def freeze(self, seconds: float) -> None:
        self.clock.rightNow += seconds  # time passes, no timer runs

    def test_invoke_after_a_freeze_refreshes_in_use_entries_in_the_background(
        self,
    ) -> None:
        self.freeze(80)  # past the refresh point (75 %), before expiry
        on_invoke(self.root)(80.0)
        self.assertEqual(len(self.fetches.pending), 1)
        # The invocation's request does not wait for that refresh.
        value, outcome = self.successResultOf(self.cache.get(self.key))
        self.assertEqual((value.raw_body.decode(), outcome), ("v1", Outcome.HIT))
        self.fetches.answer("v2")
        value, _ = self.successResultOf(self.cache.get(self.key))
        self.assertEqual(value.raw_body.decode(), "v2")

    def test_long_freeze_drops_pooled_connections(self) -> None:
        on_invoke(self.root)(10.0)
        self.assertEqual(self.closed, [])
        on_invoke(self.root)(300.0)
        self.assertEqual(self.closed, [True])

    def test_entries_nobody_read_are_not_refreshed(self) -> None:
        other = SecretKey("unread")
        d = self.cache.get(other)
        self.fetches.answer("x")
        self.successResultOf(d)
        # "db" was read after its fetch; "unread" only fetched.
        self.freeze(80)
        on_invoke(self.root)(80.0)
        self.assertEqual(len(self.fetches.pending), 1)


TOKEN = "lambda-session-token-77ab"


class LifecycleTests(MotoTestCase):
    """``python -m secretcache`` as Lambda starts an extension."""

    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(setattr, self.proxy, "fault", None)
        self.port = free_port()

    def env(self, **extra: str) -> dict[str, str]:
        return clean_environment(
            **FAKE_CREDENTIALS,
            AWS_REGION=REGION,
            AWS_SESSION_TOKEN=TOKEN,
            AWS_ENDPOINT_URL_SECRETS_MANAGER=self.proxy.url,
            PARAMETERS_SECRETS_EXTENSION_HTTP_PORT=str(self.port),
            SECRETCACHE_EXTENSION_NAME="secretcache",
            **extra,
        )

    def launch(
        self, emulator: ExtensionsEmulator, **extra: str
    ) -> tuple[ExtensionProcess, Any]:
        log = open(self.mktemp(), "w+b")
        self.addCleanup(log.close)
        process = ExtensionProcess(
            emulator,
            [sys.executable, "-m", "secretcache"],
            self.env(**extra),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(process.kill)
        return process, log

    def emulator(self, **kwargs: Any) -> ExtensionsEmulator:
        emulator = ExtensionsEmulator(**kwargs)
        self.addCleanup(emulator.close)
        return emulator

    def get(self, name: str) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(
                "GET",
                f"/secretsmanager/get?secretId={name}",
                headers={"X-Aws-Parameters-Secrets-Token": TOKEN},
            )
            response = connection.getresponse()
            headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, headers, response.read()
        finally:
            connection.close()

    def output(self, log: Any) -> str:
        log.seek(0)
        return str(log.read().decode("utf-8", "replace"))

    def test_lifecycle_with_the_session_token_as_the_default_token(self) -> None:
        name = self.secret("db", {"password": "lambda-pw"})
        accepting: list[bool] = []

        def port_open(_: str) -> None:
            with socket.socket() as s:
                accepting.append(s.connect_ex(("127.0.0.1", self.port)) == 0)

        emulator = self.emulator(on_register=port_open)
        process, log = self.launch(emulator, SECRETCACHE_PREFETCH=name)
        self.assertTrue(emulator.wait_for_init(), self.output(log))
        # The port accepted connections before register was sent.
        self.assertEqual(accepting, [True])
        [extension] = emulator.extensions.values()
        self.assertEqual(extension.name, "secretcache")
        self.assertEqual(extension.events, {"INVOKE", "SHUTDOWN"})
        self.assertTrue(emulator.invoke())
        status, headers, body = self.get(name)
        self.assertEqual(status, 200, body)
        # Prefetched before the first next: already a hit.
        self.assertEqual(headers["x-secretcache-cache"], "hit")
        self.assertEqual(
            json.loads(json.loads(body)["SecretString"])["password"], "lambda-pw"
        )
        self.assertTrue(emulator.invoke())
        exit_status, seconds, killed = process.shut_down()
        self.assertEqual((exit_status, killed), (0, False), self.output(log))
        self.assertLess(seconds, 1.5)
        output = self.output(log)
        self.assertNotIn(TOKEN, output)
        self.assertNotIn("lambda-pw", output)

    def test_slow_prefetch_delays_the_first_next_by_at_most_a_second(self) -> None:
        name = self.secret("slow", {"password": "x"})
        self.proxy.fault = faults.latency(3.0)
        emulator = self.emulator()
        process, log = self.launch(emulator, SECRETCACHE_PREFETCH=name)
        self.assertTrue(emulator.wait_for_init(), self.output(log))
        registered = emulator.first("register")
        first_next = emulator.first("next")
        assert registered is not None and first_next is not None
        self.assertLess(first_next - registered, PREFETCH_WAIT + 1.0)
        process.shut_down()

    def test_bad_configuration_is_reported_with_init_error_and_never_listens(
        self,
    ) -> None:
        emulator = self.emulator()
        process, _ = self.launch(emulator, SECRETCACHE_TTL="soon")
        status = process.process.wait(30)
        self.assertNotEqual(status, 0)
        [extension] = emulator.extensions.values()
        [(phase, error_type, detail)] = extension.errors
        self.assertEqual((phase, error_type), ("init", "Extension.ConfigInvalid"))
        self.assertIn("SECRETCACHE_TTL", detail["errorMessage"])
        self.assertIsNone(emulator.first("next"))
        with socket.socket() as s:
            self.assertNotEqual(s.connect_ex(("127.0.0.1", self.port)), 0)

    def test_refused_registration_exits_non_zero_with_one_line(self) -> None:
        emulator = self.emulator(refuse_register=(403, "not allowed here"))
        process, log = self.launch(emulator)
        status = process.process.wait(30)
        self.assertNotEqual(status, 0)
        lines = self.output(log).strip().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("register refused with 403", lines[0])

    def test_freeze_and_thaw(self) -> None:
        name = self.secret("frozen", {"password": "before"})
        emulator = self.emulator()
        process, log = self.launch(emulator, SECRETCACHE_TTL="4")
        self.assertTrue(emulator.wait_for_init(), self.output(log))
        self.assertTrue(emulator.invoke())
        self.assertEqual(self.get(name)[0], 200)
        calls = self.proxy.calls[name]
        process.freeze()
        time.sleep(3.7)  # past the refresh point (3-3.6 s), before expiry (4 s)
        self.proxy.fault = faults.latency(0.5)
        process.thaw()
        self.assertTrue(emulator.invoke())
        status, headers, _ = self.get(name)
        self.assertEqual((status, headers["x-secretcache-cache"]), (200, "hit"))
        deadline = time.monotonic() + 5
        while self.proxy.calls[name] == calls and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.proxy.calls[name], calls + 1)
        self.assertEqual(process.shut_down()[0], 0)
