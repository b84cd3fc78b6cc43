"""The credential source on a fake clock, and temporary credentials from a
container credentials endpoint served by the test
(``AWS_CONTAINER_CREDENTIALS_FULL_URI`` on loopback) as ECS and EKS Pod
Identity hand them out: refreshed before they expire, off the reactor thread,
and once more when Secrets Manager says the token has expired."""

from __future__ import annotations

import datetime
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from secretcache.credentials import BotocoreCredentialSource
from secretcache.errors import SecretcacheError
from tests import faults
from tests.support import Secretcache
from tests.test_integration import AUTH, TOKEN, MotoTestCase

CREDENTIAL_RE = re.compile(r"Credential=([A-Z0-9]+)/")


class CredentialsEndpoint:
    """Hands out a new key on every call, valid for ``lifetime`` seconds; can
    be slowed down or made to fail."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self.calls = 0
        self.delay = 0.0
        self.failing = False
        self.authorizations: list[str | None] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                endpoint.calls += 1
                endpoint.authorizations.append(self.headers.get("Authorization"))
                if endpoint.delay:
                    time.sleep(endpoint.delay)
                if endpoint.failing:
                    self.send_error(500)
                    return
                expiration = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
                    seconds=endpoint.lifetime
                )
                body = json.dumps(
                    {
                        "AccessKeyId": f"ASIATEST{endpoint.calls:08d}",
                        "SecretAccessKey": f"secret-{endpoint.calls}",
                        "Token": f"session-{endpoint.calls}",
                        "Expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/credentials"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class KeySpy:
    """A proxy fault that passes every call through, noting the access key id
    each one was signed with."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, handler: BaseHTTPRequestHandler, document: Any) -> bool:
        match = CREDENTIAL_RE.search(handler.headers.get("Authorization") or "")
        self.keys.append(match.group(1) if match else "")
        return False


class ContainerCredentialsTests(MotoTestCase):
    def start_with_endpoint(
        self, lifetime: float, *args: str
    ) -> tuple[Secretcache, CredentialsEndpoint]:
        endpoint = CredentialsEndpoint(lifetime)
        self.addCleanup(endpoint.stop)
        self.addCleanup(setattr, self.proxy, "fault", None)
        server = self.start(
            {
                "SECRETCACHE_TOKEN": TOKEN,
                "AWS_ACCESS_KEY_ID": "",
                "AWS_SECRET_ACCESS_KEY": "",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": endpoint.url,
                "AWS_CONTAINER_AUTHORIZATION_TOKEN": "pod-identity-token",
            },
            args,
        )
        return server, endpoint

    def get(self, server: Secretcache, name: str, **params: str) -> Any:
        query = "".join(f"&{k}={v}" for k, v in params.items())
        return server.request(
            "GET", f"/secretsmanager/get?secretId={name}{query}", headers=AUTH
        )

    def wait_ready(self, server: Secretcache) -> None:
        for _ in range(100):
            if server.request("GET", "/ready").status == 200:
                return
            time.sleep(0.05)
        self.fail("never ready")

    def test_short_lived_keys_are_replaced_before_they_expire(self) -> None:
        # Keys that expire in 5 minutes are inside botocore's mandatory
        # refresh window: every use must get a fresh key from the endpoint.
        server, endpoint = self.start_with_endpoint(300, "--ttl", "0")
        spy = KeySpy()
        self.proxy.fault = spy
        name = self.secret("rotating", {"password": "x"})
        for _ in range(3):
            self.assertEqual(self.get(server, name).status, 200)
        self.assertEqual(len(spy.keys), 3)
        self.assertEqual(len(set(spy.keys)), 3, spy.keys)
        self.assertTrue(all(k.startswith("ASIATEST") for k in spy.keys), spy.keys)
        # botocore sends the container authorization token to the endpoint.
        self.assertEqual(set(endpoint.authorizations), {"pod-identity-token"})

    def test_long_lived_keys_are_reused(self) -> None:
        server, endpoint = self.start_with_endpoint(6 * 3600, "--ttl", "0")
        spy = KeySpy()
        self.proxy.fault = spy
        name = self.secret("steady", {"password": "x"})
        self.wait_ready(server)
        for _ in range(3):
            self.assertEqual(self.get(server, name).status, 200)
        self.assertEqual(len(set(spy.keys)), 1)
        self.assertEqual(endpoint.calls, 1)

    def test_slow_credentials_do_not_block_other_requests(self) -> None:
        server, endpoint = self.start_with_endpoint(300, "--ttl", "0")
        name = self.secret("slow", {"password": "x"})
        self.wait_ready(server)
        endpoint.delay = 1.0
        done: list[int] = []
        fetch = threading.Thread(
            target=lambda: done.append(self.get(server, name).status)
        )
        fetch.start()
        time.sleep(0.2)
        started = time.monotonic()
        self.assertEqual(server.request("GET", "/ping").body, b"healthy")
        self.assertLess(time.monotonic() - started, 0.3)
        fetch.join(10)
        self.assertEqual(done, [200])

    def test_expired_token_refreshes_credentials_once_and_retries(self) -> None:
        server, endpoint = self.start_with_endpoint(6 * 3600, "--max-attempts", "1")
        name = self.secret("expired", {"password": "x"})
        self.wait_ready(server)
        calls_before = endpoint.calls
        expired = faults.json_error(
            400, "ExpiredTokenException", "The security token included is expired"
        )
        answered = iter([True])

        def once(handler: BaseHTTPRequestHandler, document: Any) -> bool:
            return next(answered, False) and expired(handler, document)

        self.proxy.fault = once
        answer = self.get(server, name)
        self.assertEqual(answer.status, 200, answer.body)
        self.assertEqual(self.proxy.calls[name], 2)
        self.assertEqual(endpoint.calls, calls_before + 1)

    def test_unreachable_credentials_endpoint_serves_stale(self) -> None:
        server, endpoint = self.start_with_endpoint(300, "--ttl", "1")
        cached = self.secret("cached", {"password": "warm"})
        cold = self.secret("cold", {"password": "x"})
        self.assertEqual(self.get(server, cached).status, 200)
        endpoint.failing = True
        time.sleep(1.1)
        answer = self.get(server, cached)
        self.assertEqual(answer.status, 200, answer.body)
        self.assertEqual(answer.headers["x-secretcache-cache"], "stale")
        answer = self.get(server, cold)
        self.assertEqual(answer.status, 502)
        self.assertNotIn("secret-", answer.body.decode())
        output = server.output()
        for secret in ("secret-1", "session-1", "pod-identity-token", TOKEN):
            self.assertNotIn(secret, output)


class FakeBotocoreCredentials:
    """Stands for botocore's RefreshableCredentials: expires at ``expiry`` on
    ``clock``; each get_frozen_credentials inside the window is a refresh."""

    _mandatory_refresh_timeout = 600

    def __init__(self, clock: list[float], expiry: float) -> None:
        self.clock = clock
        self.expiry = expiry
        self.refreshes = 0

    def refresh_needed(self, refresh_in: float | None = None) -> bool:
        return self.expiry - self.clock[0] < (900 if refresh_in is None else refresh_in)

    def get_frozen_credentials(self) -> Any:
        if self.refresh_needed():
            self.refreshes += 1
            self.expiry = self.clock[0] + 3600

        class Frozen:
            access_key = f"AKID{self.refreshes}"
            secret_key = "secret"
            token = None

        return Frozen()


class ManualThreads:
    """run_in_thread that runs nothing until ``run`` is called."""

    def __init__(self) -> None:
        self.queued: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, work: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.queued.append((work, d))
        return d

    def run(self) -> None:
        queued, self.queued = self.queued, []
        for work, d in queued:
            try:
                d.callback(work())
            except Exception:
                d.errback()


class CredentialSourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = [0.0]
        self.botocore = FakeBotocoreCredentials(self.now, expiry=3600)
        self.threads = ManualThreads()
        self.resolutions = 0

        def resolve() -> FakeBotocoreCredentials:
            self.resolutions += 1
            return self.botocore

        self.source = BotocoreCredentialSource(resolve, self.threads)
        first = self.source.get()
        self.threads.run()
        self.assertEqual(self.successResultOf(first).access_key, "AKID0")

    def test_good_credentials_are_handed_out_without_a_thread(self) -> None:
        self.now[0] = 1000
        self.assertEqual(self.successResultOf(self.source.get()).access_key, "AKID0")
        self.assertEqual(self.threads.queued, [])

    def test_advisory_window_signs_with_held_keys_and_refreshes_behind(self) -> None:
        self.now[0] = 3600 - 800  # 13 minutes left: advisory, not mandatory
        self.assertEqual(self.successResultOf(self.source.get()).access_key, "AKID0")
        self.assertEqual(self.successResultOf(self.source.get()).access_key, "AKID0")
        self.assertEqual(len(self.threads.queued), 1)  # one refresh, shared
        self.threads.run()
        self.assertEqual(self.successResultOf(self.source.get()).access_key, "AKID1")

    def test_mandatory_window_waits_for_new_keys(self) -> None:
        self.now[0] = 3600 - 300  # 5 minutes left
        waiting = [self.source.get(), self.source.get()]
        for d in waiting:
            self.assertNoResult(d)
        self.assertEqual(len(self.threads.queued), 1)
        self.threads.run()
        self.assertEqual(
            [self.successResultOf(d).access_key for d in waiting], ["AKID1"] * 2
        )

    def test_invalidate_resolves_anew(self) -> None:
        self.source.invalidate(self.successResultOf(self.source.get()))
        d = self.source.get()
        self.assertNoResult(d)
        self.threads.run()
        self.successResultOf(d)
        self.assertEqual(self.resolutions, 2)

    def test_a_second_refusal_of_replaced_keys_keeps_the_new_ones(self) -> None:
        old = self.successResultOf(self.source.get())
        self.source.invalidate(old)
        d = self.source.get()
        self.threads.run()
        new = self.successResultOf(d)
        # Another request signed with the old keys is refused too, later.
        self.source.invalidate(old)
        self.assertIs(self.successResultOf(self.source.get()), new)
        self.assertEqual((self.resolutions, self.threads.queued), (2, []))

    def test_a_resolution_begun_before_invalidate_is_not_handed_out(self) -> None:
        self.now[0] = 3600 - 800  # advisory window: a background refresh starts
        held = self.successResultOf(self.source.get())
        self.assertEqual(len(self.threads.queued), 1)
        self.source.invalidate(held)
        d = self.source.get()
        self.threads.run()  # the earlier resolution ends: resolved once more
        self.assertNoResult(d)
        self.assertEqual(len(self.threads.queued), 1)
        self.threads.run()
        self.successResultOf(d)
        self.assertEqual(self.resolutions, 3)

    def test_failure_is_a_transient_error_that_names_no_secret(self) -> None:
        source = BotocoreCredentialSource(lambda: None, self.threads)
        d = source.get()
        self.threads.run()
        error = self.failureResultOf(d, SecretcacheError).value
        self.assertEqual(error.status, 502)
        self.assertTrue(error.transient)
        self.assertIn("no credentials found", error.message)
        self.assertFalse(source.resolved)
