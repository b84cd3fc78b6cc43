"""The HTTP server around the API, on a fake clock and in-memory transports:
the connection limit and its refusals, and draining at shutdown."""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from secretcache.web import SecretcacheSite


class Slow(Resource):
    """Answers when the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Request] = []

    def render_GET(self, request: Request) -> object:
        if request.path == b"/fast":
            return b"fast"
        self.waiting.append(request)
        return NOT_DONE_YET


class Connection:
    def __init__(self, site: SecretcacheSite) -> None:
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        assert protocol is not None
        self.protocol: Protocol = protocol
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, path: bytes, method: bytes = b"GET") -> None:
        self.protocol.dataReceived(
            method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting or self.transport.disconnected)

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionError("gone")))


class ConnectionLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = Slow()
        self.site = SecretcacheSite(self.resource, max_connections=2, clock=self.clock)
        self.served = [Connection(self.site) for _ in range(2)]

    def test_connection_over_the_limit_gets_429_and_is_closed(self) -> None:
        extra = Connection(self.site)
        extra.send(b"/secretsmanager/get?secretId=x")
        answer = extra.transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 429 "), answer)
        self.assertIn(b'"__type": "TooManyConnections"', answer)
        self.assertTrue(extra.closed)

    def test_ping_over_the_limit_is_still_healthy(self) -> None:
        extra = Connection(self.site)
        extra.send(b"/ping")
        answer = extra.transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertTrue(answer.endswith(b"\r\n\r\nhealthy"))

    def test_ping_over_the_limit_is_healthy_with_a_query_and_not_counted(
        self,
    ) -> None:
        extra = Connection(self.site)
        extra.send(b"/ping?probe=1")
        self.assertTrue(extra.transport.value().endswith(b"\r\n\r\nhealthy"))
        self.assertEqual(self.site.refused, 0)

    def test_head_over_the_limit_gets_a_length_and_no_body(self) -> None:
        for path in (b"/ping", b"/secretsmanager/get?secretId=x"):
            extra = Connection(self.site)
            extra.send(path, method=b"HEAD")
            answer = extra.transport.value()
            self.assertTrue(answer.startswith(b"HTTP/1.1 429 "), answer)
            self.assertIn(b"Content-Length: ", answer)
            self.assertTrue(answer.endswith(b"\r\n\r\n"), answer)
        self.assertEqual(self.site.refused, 2)

    def test_a_freed_slot_serves_again(self) -> None:
        self.served[0].lose()
        again = Connection(self.site)
        again.send(b"/fast")
        self.assertIn(b"fast", again.transport.value())

    def test_idle_refusals_are_bounded_oldest_dropped_first(self) -> None:
        flood = [Connection(self.site) for _ in range(64)]
        self.assertFalse(any(c.closed for c in flood))
        newest = Connection(self.site)
        self.assertTrue(flood[0].closed)
        self.assertFalse(any(c.closed for c in flood[1:]))
        newest.send(b"/ping")
        self.assertTrue(newest.transport.value().endswith(b"healthy"))

    def test_legacy_errors_close_a_refused_cache_request_without_an_answer(
        self,
    ) -> None:
        site = SecretcacheSite(
            self.resource, max_connections=0, clock=self.clock, legacy_errors=True
        )
        for target in (b"/cache?name=db", b"http://localhost:8015/cache?name=db"):
            extra = Connection(site)
            extra.send(target)
            self.assertEqual(extra.transport.value(), b"")
            self.assertTrue(extra.closed)
        # The AWS dialect still gets its 429.
        aws = Connection(site)
        aws.send(b"/secretsmanager/get?secretId=db")
        self.assertTrue(aws.transport.value().startswith(b"HTTP/1.1 429 "))
        self.assertEqual(site.refused, 3)

    def test_silent_refusal_is_dropped_after_two_seconds(self) -> None:
        silent = Connection(self.site)
        self.clock.advance(1.9)
        self.assertFalse(silent.closed)
        self.clock.advance(0.2)
        self.assertTrue(silent.closed)


class BadRequestTests(SynchronousTestCase):
    """What Twisted's HTTP parser refuses still gets the SPEC's answer: a
    length, a JSON error body, then the connection closed."""

    def setUp(self) -> None:
        self.site = SecretcacheSite(Slow(), max_connections=10, clock=Clock())

    def refused(self, data: bytes) -> dict[str, str]:
        connection = Connection(self.site)
        connection.protocol.dataReceived(data)
        head, _, body = connection.transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 400 "), head)
        self.assertIn(b"Content-Length: %d" % len(body), head)
        self.assertIn(b"Content-Type: application/json", head)
        self.assertTrue(connection.closed)
        answer: dict[str, str] = json.loads(body)
        self.assertEqual(answer["__type"], "InvalidRequestException")
        return answer

    def test_unparseable_requests(self) -> None:
        for data in (
            b"NONSENSE\r\n\r\n",
            b"GET /ping HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /ping HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        ):
            self.assertIn("not valid HTTP", self.refused(data)["message"])

    def test_a_line_over_the_limit(self) -> None:
        answer = self.refused(b"GET /cache?name=" + b"x" * 20000)
        self.assertIn("longer than 16384 bytes", answer["message"])
        self.assertNotIn("xxx", answer["message"])


class AbsoluteFormTests(SynchronousTestCase):
    def test_an_absolute_form_target_is_served_as_its_path(self) -> None:
        resource = Slow()
        site = SecretcacheSite(resource, max_connections=10, clock=Clock())
        for target in (b"http://localhost:8015/fast", b"HTTP://[::1]:8015/fast?x=1"):
            connection = Connection(site)
            connection.send(target)
            self.assertTrue(connection.transport.value().endswith(b"fast"), target)
        connection = Connection(site)
        connection.send(b"http://localhost:8015?x=1")
        self.assertEqual(resource.waiting[0].uri, b"/?x=1")


class HTTP10KeepAliveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.resource = Slow()
        self.site = SecretcacheSite(self.resource, max_connections=10, clock=Clock())

    def test_keep_alive_is_honoured_when_the_answer_has_a_length(self) -> None:
        connection = Connection(self.site)
        request = b"GET /sized HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
        connection.protocol.dataReceived(request + request)
        for waiting in self.resource.waiting[:1]:
            waiting.setHeader(b"content-length", b"5")
            waiting.write(b"sized")
            waiting.finish()
        self.assertFalse(connection.closed)
        self.assertEqual(len(self.resource.waiting), 2)  # the second is served
        answer = connection.transport.value()
        self.assertIn(b"Connection: keep-alive", answer)

    def test_an_answer_without_a_length_closes_the_connection(self) -> None:
        connection = Connection(self.site)
        connection.protocol.dataReceived(
            b"GET /unsized HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        )
        waiting = self.resource.waiting[0]
        waiting.write(b"no length")
        waiting.finish()
        self.assertTrue(connection.closed)
        self.assertNotIn(b"keep-alive", connection.transport.value())

    def test_without_keep_alive_it_closes_as_http_1_0_does(self) -> None:
        connection = Connection(self.site)
        connection.protocol.dataReceived(b"GET /fast HTTP/1.0\r\n\r\n")
        self.assertTrue(connection.closed)


class DrainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = Slow()
        self.site = SecretcacheSite(self.resource, max_connections=10, clock=self.clock)

    def drained(self, grace: float) -> Deferred[None]:
        return self.site.drain(grace)

    def test_with_no_connections_drain_is_immediate(self) -> None:
        self.successResultOf(self.drained(1.0))

    def test_idle_connections_close_at_once(self) -> None:
        idle = Connection(self.site)
        idle.send(b"/fast")
        d = self.drained(1.0)
        self.assertTrue(idle.closed)
        idle.lose()
        self.successResultOf(d)

    def test_request_in_flight_finishes_then_its_connection_closes(self) -> None:
        busy = Connection(self.site)
        busy.send(b"/slow")
        d = self.drained(1.0)
        self.assertFalse(busy.closed)
        self.assertNoResult(d)
        self.clock.advance(0.5)
        request = self.resource.waiting.pop()
        request.write(b"done")
        request.finish()
        self.assertIn(b"done", busy.transport.value())
        self.assertTrue(busy.closed)
        busy.lose()
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_request_past_the_grace_is_aborted(self) -> None:
        stuck = Connection(self.site)
        stuck.send(b"/slow")
        d = self.drained(1.0)
        self.clock.advance(0.99)
        self.assertFalse(stuck.closed)
        self.clock.advance(0.02)
        self.assertTrue(stuck.closed)
        stuck.lose()
        self.successResultOf(d)


class _Bodies(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        self.bodies.append(request.content.read())
        return b"ok"


class RequestBodyTests(SynchronousTestCase):
    """No route reads a request body: a small one is kept, a large or unsized
    one is dropped as it arrives, never written to a temporary file."""

    def post(self, body: bytes, headers: bytes) -> tuple[bytes, list[bytes]]:
        bodies = _Bodies()
        site = SecretcacheSite(bodies, max_connections=10, clock=Clock())
        connection = Connection(site)
        connection.protocol.dataReceived(
            b"POST /cache HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + body
        )
        return connection.transport.value(), bodies.bodies

    def test_small_body_is_kept(self) -> None:
        answer, bodies = self.post(b"[]", b"Content-Length: 2\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertEqual(bodies, [b"[]"])

    def test_large_or_unsized_body_is_answered_but_not_kept(self) -> None:
        large = b"x" * 200_000
        answer, bodies = self.post(large, b"Content-Length: %d\r\n" % len(large))
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertEqual(bodies, [b""])
        chunked = b"4\r\nabcd\r\n0\r\n\r\n"
        answer, bodies = self.post(chunked, b"Transfer-Encoding: chunked\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertEqual(bodies, [b""])
