"""SecretsManagerClient against an in-memory Secrets Manager through StubTreq:
the signed request, parsing, the error mapping, retries and timeouts."""

from __future__ import annotations

import json
from typing import Any, cast

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.server import Request

from secretcache._version import __version__
from secretcache.errors import SecretcacheError
from secretcache.secret import SecretKey, SecretValue
from secretcache.testing import (
    FakeCredentialSource,
    FakeSecretsManager,
    StoredSecret,
    error_fault,
)
from secretcache.upstream import SecretsManagerClient, UpstreamEndpoints

DB = SecretKey("db")
ENDPOINT = "https://secretsmanager.us-east-1.amazonaws.com"


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.upstream = FakeSecretsManager()
        self.upstream.put(StoredSecret("db", string='{"password":"hunter2"}'))
        self.credentials = FakeCredentialSource()
        self.stub = StubTreq(self.upstream)
        self.client = self.make_client()

    def make_client(self, **kwargs: Any) -> SecretsManagerClient:
        settings: dict[str, Any] = {
            "http": self.stub,
            "credentials": self.credentials,
            "endpoint_url": ENDPOINT,
            "region": "us-east-1",
            "clock": self.clock,
            "jitter": lambda: 1.0,
        }
        settings.update(kwargs)
        return SecretsManagerClient(**settings)

    def fetch(self, key: SecretKey = DB) -> Deferred[SecretValue]:
        d = self.client.get_secret_value(key)
        self.stub.flush()
        return d

    def error(self, d: Deferred[SecretValue]) -> SecretcacheError:
        error = self.failureResultOf(d, SecretcacheError).value
        assert isinstance(error, SecretcacheError)
        return error

    def test_request_is_a_signed_json_get_secret_value(self) -> None:
        version = self.upstream.secrets["db"].version_id
        value = self.successResultOf(self.fetch(SecretKey("db", version, "AWSCURRENT")))
        self.assertEqual(value.raw_body, b'{"password":"hunter2"}')
        self.assertEqual(
            self.upstream.calls,
            [{"SecretId": "db", "VersionId": version, "VersionStage": "AWSCURRENT"}],
        )
        headers = self.upstream.headers[0]
        self.assertEqual(headers[b"X-Amz-Target"], [b"secretsmanager.GetSecretValue"])
        self.assertEqual(headers[b"Content-Type"], [b"application/x-amz-json-1.1"])
        self.assertEqual(
            headers[b"User-Agent"], [f"secretcache/{__version__}".encode()]
        )
        self.assertEqual(headers[b"X-Amz-Security-Token"], [b"session-token"])
        authorization = headers[b"Authorization"][0].decode()
        self.assertTrue(
            authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            authorization,
        )
        self.assertIn("/us-east-1/secretsmanager/aws4_request", authorization)

    def test_signature_verifies_with_the_same_key(self) -> None:
        """Recompute the signature over what was received: it matches."""
        self.successResultOf(self.fetch())
        received = self.upstream.headers[0]
        body = json.dumps(self.upstream.calls[0]).encode()
        amz_date = received[b"X-Amz-Date"][0].decode()
        request = AWSRequest(
            method="POST",
            url=ENDPOINT + "/",
            data=body,
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": "secretsmanager.GetSecretValue",
                "User-Agent": f"secretcache/{__version__}",
            },
        )
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(
            Credentials("AKIDEXAMPLE", "secret", "session-token"),
            "secretsmanager",
            "us-east-1",
        )
        signer._modify_request_before_signing(request)
        expected = signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request
        )
        self.assertIn(f"Signature={expected}", received[b"Authorization"][0].decode())

    def test_binary_secret_is_decoded(self) -> None:
        self.upstream.put(StoredSecret("bin", binary=b"\x00\xffraw"))
        value = self.successResultOf(self.fetch(SecretKey("bin")))
        self.assertEqual(value.raw_body, b"\x00\xffraw")
        self.assertEqual(value.raw_content_type, b"application/octet-stream")
        self.assertEqual(json.loads(value.aws_body)["SecretBinary"], "AP9yYXc=")

    def test_aws_body_keeps_created_date_a_number(self) -> None:
        value = self.successResultOf(self.fetch())
        self.assertEqual(json.loads(value.aws_body)["CreatedDate"], 1700000000.0)

    def test_lookup_by_arn_is_accepted(self) -> None:
        arn = self.upstream.secrets["db"].arn
        self.successResultOf(self.fetch(SecretKey(arn)))
        self.successResultOf(self.fetch(SecretKey(arn[:-7])))

    def test_not_found_maps_to_404_and_is_not_retried(self) -> None:
        error = self.error(self.fetch(SecretKey("missing")))
        self.assertEqual((error.status, error.code), (404, "ResourceNotFoundException"))
        self.assertEqual(len(self.upstream.calls), 1)

    def test_error_codes_map_per_the_table(self) -> None:
        table = {
            ("AccessDeniedException", 400): 403,
            ("DecryptionFailure", 400): 403,
            ("InvalidParameterException", 400): 400,
            ("InvalidRequestException", 400): 400,
            ("ValidationException", 400): 400,
            ("com.amazonaws.secretsmanager#ThrottlingException", 400): 429,
            ("InternalServiceError", 500): 502,
            ("UnrecognizedClientException", 400): 502,
        }
        self.client = self.make_client(max_attempts=1)
        for (code, status), expected in table.items():
            self.upstream.fault = error_fault(status, code)
            error = self.error(self.fetch())
            self.assertEqual(error.status, expected, code)
            self.assertEqual(error.code, code.rsplit("#", 1)[-1])

    def test_xml_error_page_is_an_unparseable_502(self) -> None:
        def xml(request: Request) -> bytes:
            request.setResponseCode(403)
            return b"<ErrorResponse><Code>SignatureDoesNotMatch</Code></ErrorResponse>"

        self.upstream.fault = xml
        error = self.error(self.fetch())
        self.assertEqual((error.status, error.code), (502, "UpstreamError"))
        self.assertIn("unparseable", error.message)

    def test_answer_for_another_secret_is_refused(self) -> None:
        def wrong(request: Request) -> bytes:
            return json.dumps(
                {
                    "ARN": "arn:x:secret:other-AbCdEf",
                    "Name": "other",
                    "VersionId": "v",
                    "SecretString": "not yours",
                }
            ).encode()

        self.upstream.fault = wrong
        error = self.error(self.fetch())
        self.assertEqual(error.status, 502)
        self.assertNotIn("not yours", error.message)

    def test_answer_without_the_stage_asked_for_is_refused(self) -> None:
        # The fake answers with the secret's own stages, whatever was asked.
        self.upstream.put(
            StoredSecret("staged", string="current value", stages=["AWSCURRENT"])
        )
        error = self.error(self.fetch(SecretKey("staged", version_stage="AWSPENDING")))
        self.assertEqual((error.status, error.code), (502, "UpstreamError"))
        self.assertIn("different secret", error.message)
        value = self.successResultOf(
            self.fetch(SecretKey("staged", version_stage="AWSCURRENT"))
        )
        self.assertEqual(value.raw_body, b"current value")

    def test_malformed_success_answers_are_502(self) -> None:
        for body in (
            b"not json",
            b"[]",
            b'{"Name": 3}',
            b'{"ARN":"a","Name":"db","VersionId":"v"}',
            b'{"ARN":"a","Name":"db","VersionId":"v","SecretBinary":"!!"}',
        ):
            self.upstream.fault = lambda request, body=body: body
            self.assertEqual(self.error(self.fetch()).status, 502, body)

    def test_transient_errors_are_retried_with_backoff(self) -> None:
        answers = [
            error_fault(500, "InternalServiceError"),
            error_fault(400, "ThrottlingException"),
        ]

        def flaky(request: Request) -> bytes | None:
            return answers.pop(0)(request) if answers else None

        self.upstream.fault = flaky
        d = self.fetch()
        self.assertNoResult(d)
        self.clock.advance(0.2)  # first backoff: up to 0.1 * 2
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(0.4)
        self.stub.flush()
        self.assertEqual(json.loads(self.successResultOf(d).aws_body)["Name"], "db")
        self.assertEqual(len(self.upstream.calls), 3)

    def test_attempts_stop_at_max_attempts(self) -> None:
        self.upstream.fault = error_fault(500, "InternalServiceError")
        self.client = self.make_client(max_attempts=2)
        d = self.fetch()
        self.clock.advance(1)
        self.stub.flush()
        self.assertEqual(self.error(d).status, 502)
        self.assertEqual(len(self.upstream.calls), 2)

    def test_attempt_timeout_is_a_504_after_retries(self) -> None:
        self.upstream.hold = True
        self.client = self.make_client(upstream_timeout=1.0, max_attempts=2)
        d = self.fetch()
        self.clock.advance(1.0)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.stub.flush()
        self.clock.advance(1.0)
        self.assertEqual(self.error(d).code, "UpstreamTimeout")
        self.assertEqual(len(self.upstream.calls), 2)

    def test_request_timeout_bounds_the_whole_fetch(self) -> None:
        self.upstream.hold = True
        self.client = self.make_client(upstream_timeout=30, request_timeout=2.0)
        d = self.fetch()
        self.clock.advance(2.0)
        error = self.error(d)
        self.assertEqual((error.status, error.code), (504, "UpstreamTimeout"))
        self.assertIn("request timeout", error.message)

    def test_expired_token_refreshes_credentials_once_and_retries(self) -> None:
        answers = [error_fault(400, "ExpiredTokenException")]
        self.upstream.fault = lambda r: answers.pop(0)(r) if answers else None
        self.client = self.make_client(max_attempts=1)
        self.successResultOf(self.fetch())
        self.assertEqual(self.credentials.invalidated, 1)

    def test_credentials_failure_is_a_transient_502(self) -> None:
        self.credentials.broken = True
        self.client = self.make_client(max_attempts=1)
        error = self.error(self.fetch())
        self.assertEqual(error.status, 502)
        self.assertTrue(error.transient)
        self.assertEqual(self.upstream.calls, [])

    def test_errors_never_carry_the_secret_key(self) -> None:
        self.upstream.fault = error_fault(500, "InternalServiceError")
        self.client = self.make_client(max_attempts=1)
        error = self.error(self.fetch())
        for text in (str(error), repr(error), error.body().decode()):
            self.assertNotIn("secret-key", text)
        self.assertNotIn(
            "secret", repr(self.credentials.credentials).replace("AWSCredentials", "")
        )


class _StallingServer(Protocol):
    """Starts a 200 answer, sends a tenth of its body, then says nothing."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data and self.transport is not None:
            self.events.append("answering")
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"{" * 10
            )

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.events.append("closed")


class _StallingFactory(ServerFactory):
    def __init__(self) -> None:
        self.events: list[str] = []

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return _StallingServer(self.events)


class StalledAnswerTests(TestCase):
    """Over a real loopback connection, with the real reactor."""

    async def test_a_peer_stalling_mid_answer_is_timed_out_and_disconnected(
        self,
    ) -> None:
        from treq.client import HTTPClient

        factory = _StallingFactory()
        port = cast(IReactorTCP, reactor).listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        clock = cast(IReactorTime, reactor)
        client = SecretsManagerClient(
            http=HTTPClient(Agent(reactor, pool=pool)),
            credentials=FakeCredentialSource(),
            endpoint_url=f"http://127.0.0.1:{cast(IPv4Address, port.getHost()).port}",
            region="us-east-1",
            clock=clock,
            upstream_timeout=0.2,
            max_attempts=1,
        )
        with self.assertRaises(SecretcacheError) as raised:
            await client.get_secret_value(DB)
        self.assertEqual(raised.exception.code, "UpstreamTimeout")
        # The half-answered connection is dropped, not left open or pooled.
        for _ in range(40):
            if "closed" in factory.events:
                break
            await deferLater(clock, 0.05)
        self.assertEqual(factory.events, ["answering", "closed"])


class _RecordingResolver:
    """A name resolver that remembers what it was asked and never answers."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def resolveHostName(
        self, receiver: Any, hostName: str, *args: Any, **kw: Any
    ) -> Any:
        self.asked.append(hostName)
        return receiver


class UpstreamEndpointTests(SynchronousTestCase):
    """An IP-literal endpoint URL is connected to at once; a host name goes
    through the reactor's (threaded) resolver as before."""

    def connect(self, url: bytes) -> tuple[MemoryReactorClock, _RecordingResolver]:
        memory = MemoryReactorClock()
        resolver = _RecordingResolver()
        memory.nameResolver = resolver  # type: ignore[assignment]
        endpoint = UpstreamEndpoints(memory, BrowserLikePolicyForHTTPS())
        endpoint.endpointForURI(URI.fromBytes(url)).connect(ClientFactory())
        return memory, resolver

    def test_ip_literals_connect_without_a_lookup(self) -> None:
        for url, host in (
            (b"http://127.0.0.1:4566/", "127.0.0.1"),
            (b"https://10.0.0.5/", "10.0.0.5"),
            (b"http://[::1]:4566/", "::1"),
        ):
            memory, resolver = self.connect(url)
            self.assertEqual(resolver.asked, [], url)
            self.assertEqual([c[0] for c in memory.tcpClients], [host], url)

    def test_host_names_are_resolved(self) -> None:
        memory, resolver = self.connect(
            b"https://secretsmanager.eu-west-1.amazonaws.com/"
        )
        self.assertEqual(resolver.asked, ["secretsmanager.eu-west-1.amazonaws.com"])
        self.assertEqual(memory.tcpClients, [])

    def test_other_schemes_are_refused(self) -> None:
        endpoints = UpstreamEndpoints(MemoryReactorClock(), BrowserLikePolicyForHTTPS())
        with self.assertRaises(SchemeNotSupported):
            endpoints.endpointForURI(URI.fromBytes(b"ftp://127.0.0.1/"))
