"""Hostile input, property-based: raw request bytes (paths, query strings,
headers, methods; invalid percent-escapes, NUL bytes, huge and repeated
values) fed to the real HTTP channel of the server. Never a 500, never a
traceback in a response, never the token or a secret in a response to an
unauthorised caller or in a log event."""

from __future__ import annotations

import json
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from secretcache.api import SecretcacheAPI
from secretcache.cache import SecretCache
from secretcache.config import Token
from secretcache.testing import FakeSecretsManager, StoredSecret
from secretcache.web import SecretcacheSite
from tests.test_api import fake_upstream_client, stub_treq

TOKEN = "hostile-t0ken-9d41"
PASSWORD = "pw-hostile-5c0f1e"
SECRET_NAMES = ["db", "app/key", "a+b", "caf\u00e9"]

# Bytes a path or query may carry on the wire (no space, CR or LF, which end
# the request line), weighted towards the characters that matter to parsers.
WIRE_BYTES = st.one_of(
    st.sampled_from(
        [b"%", b"%2", b"%zz", b"%00", b"%ff", b"%2F", b"+", b"&", b"=", b"?", b"/"]
    ),
    st.sampled_from([b"secretId", b"name", b"refresh", b"versionId", b"refreshNow"]),
    st.sampled_from([n.encode() for n in SECRET_NAMES]),
    st.binary(min_size=1, max_size=8).map(
        lambda b: b.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"")
    ),
)
PATHS = st.sampled_from(
    [b"/cache", b"/secretsmanager/get", b"/v1/", b"/ping", b"/ready", b"/", b"//"]
)
METHODS = st.sampled_from(
    [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"X", b"G\x00T"]
)
HEADER_NAMES = st.sampled_from(
    [
        b"X-Aws-Parameters-Secrets-Token",
        b"X-Vault-Token",
        b"X-Forwarded-For",
        b"Content-Type",
        b"Host",
        b"X-Anything",
    ]
)
HEADER_VALUES = st.one_of(
    st.just(TOKEN.encode()),
    st.just(b"wrong"),
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.integers(1, 70_000).map(lambda n: b"x" * n),
)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    method = draw(METHODS)
    path = draw(PATHS) + b"".join(draw(st.lists(WIRE_BYTES, max_size=6)))
    if draw(st.booleans()):
        params = draw(
            st.lists(st.lists(WIRE_BYTES, min_size=1, max_size=4), max_size=5)
        )
        path += b"?" + b"&".join(b"".join(p) for p in params)
    if draw(st.booleans()):
        path += b"&secretId=" + b"A" * draw(st.integers(0, 20_000))
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4))
    body = draw(st.sampled_from([b"", b"[]", b"\x00" * 10]))
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class HostileInputTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.upstream = FakeSecretsManager()
        for name in SECRET_NAMES:
            self.upstream.put(
                StoredSecret(name, string=json.dumps({"password": PASSWORD}))
            )
        self.upstream_stub = stub_treq(self.upstream)
        client = fake_upstream_client(self.upstream_stub, self.clock)
        cache = SecretCache(client.get_secret_value, self.clock, ttl=300)
        api = SecretcacheAPI(cache, token=Token(TOKEN, "test"), legacy_errors=False)
        self.site = SecretcacheSite(
            api.resource(), max_connections=100, clock=self.clock
        )
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def send(self, raw: bytes) -> bytes:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert channel is not None
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(raw)
        for _ in range(3):
            self.upstream_stub.flush()
        answer: bytes = transport.value()
        channel.connectionLost(Exception("test over"))  # type: ignore[arg-type]
        return answer

    def check(self, raw: bytes, answer: bytes) -> None:
        if not answer:
            # Twisted may close on a malformed request line without a reply;
            # that is a refusal, not an error.
            return
        status_line, _, rest = answer.partition(b"\r\n")
        status = int(status_line.split(b" ")[1])
        head, _, body = rest.partition(b"\r\n\r\n")
        self.assertLess(status, 500, (raw[:200], answer[:300]))
        self.assertNotIn(b"Traceback", answer)
        authorised = TOKEN.encode() in raw and b"X-Forwarded-For" not in raw
        if not authorised:
            self.assertNotIn(PASSWORD.encode(), answer)
        self.assertNotIn(TOKEN.encode(), answer)
        if (
            status >= 400
            and b"application/json" in head
            and not raw.startswith(b"HEAD ")
        ):
            error = json.loads(body)
            self.assertEqual(set(error), {"__type", "message"})
        for event in self.events:
            text = formatEvent(event) + repr(event.get("log_failure", ""))
            self.assertNotIn(TOKEN, text)
            self.assertNotIn(PASSWORD, text)
            self.assertNotEqual(event.get("log_level").name, "critical")  # type: ignore[union-attr]

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(raw_requests())
    def test_any_request_gets_a_clean_answer(self, raw: bytes) -> None:
        self.check(raw, self.send(raw))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes_never_break_the_server(self, raw: bytes) -> None:
        self.check(raw, self.send(raw + b"\r\n\r\n"))

    def test_the_generator_reaches_secrets(self) -> None:
        """A guard on the strategies above: authorised, well-formed requests
        among them are answered 200, so the properties are not vacuous."""
        raw = (
            b"GET /secretsmanager/get?secretId=a%2Bb HTTP/1.1\r\nHost: x\r\n"
            b"X-Aws-Parameters-Secrets-Token: " + TOKEN.encode() + b"\r\n\r\n"
        )
        answer = self.send(raw)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:200])
        self.assertIn(PASSWORD.encode(), answer)

    def answer_to(self, request_line: bytes, *headers: bytes) -> tuple[int, Any]:
        token = b"X-Aws-Parameters-Secrets-Token: " + TOKEN.encode()
        raw = b"\r\n".join([request_line, token, *headers])
        answer = self.send(raw + b"\r\n\r\n")
        self.assertTrue(answer.endswith(b"}"), answer)
        status = int(answer.split(b" ", 2)[1])
        return status, json.loads(answer.partition(b"\r\n\r\n")[2])

    def test_undecodable_parts_get_json_errors(self) -> None:
        cases = [
            (
                (b"GET /ping HTTP/1.1", b"Host: \xff\xfe"),
                400,
                "InvalidRequestException",
            ),
            ((b"GET /cach%ff HTTP/1.1", b"Host: x"), 404, "NotFound"),
            ((b"GET /v1/db%ff HTTP/1.1", b"Host: x"), 400, "InvalidParameterException"),
            ((b"G3T /ping HTTP/1.1", b"Host: x"), 405, "MethodNotAllowed"),
            # The SPEC's order holds for them too: route, X-Forwarded-For, ...
            ((b"G3T /nope HTTP/1.1", b"Host: x"), 404, "NotFound"),
            ((b"GET /nope HTTP/1.1", b"Host: \xff\xfe"), 404, "NotFound"),
            (
                (b"G3T /ping HTTP/1.1", b"Host: x", b"X-Forwarded-For: 10.0.0.1"),
                400,
                "InvalidRequestException",
            ),
            (
                (b"G3T /nope HTTP/1.1", b"Host: x", b"X-Forwarded-For: 10.0.0.1"),
                404,
                "NotFound",
            ),
        ]
        for lines, status, code in cases:
            got_status, body = self.answer_to(*lines)
            self.assertEqual((got_status, body["__type"]), (status, code), lines)

    def test_post_with_a_line_break_character_in_its_content_type_is_answered(
        self,
    ) -> None:
        """Found by the properties above: a character that str.splitlines
        breaks on (here \\x1c) made Twisted's form parsing raise, and the
        client got no answer."""
        for path in (b"/cache?name=a", b"/nope"):
            raw = (
                b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n"
                b"X-Aws-Parameters-Secrets-Token: " + TOKEN.encode() + b"\r\n"
                b"Content-Type: multipart/form-data\x1cboundary=x\r\n"
                b"Content-Length: 2\r\n\r\n[]"
            )
            answer = self.send(raw)
            self.assertTrue(answer.startswith(b"HTTP/1.1 "), answer)
            self.check(raw, answer)

    def test_doubled_slashes_are_not_redirected(self) -> None:
        answer = self.send(b"GET //ping HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        # The id is the rest of the path, verbatim: "/db" is not "db".
        status, body = self.answer_to(b"GET /v1//db HTTP/1.1", b"Host: x")
        self.assertEqual((status, body["__type"]), (404, "ResourceNotFoundException"))
