"""The HTTP API through StubTreq: routes of both dialects, the order of checks,
headers, and the error table, with an in-memory Secrets Manager behind."""

from __future__ import annotations

import json
from typing import Any, Protocol, cast

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource

from secretcache.api import SecretcacheAPI
from secretcache.cache import SecretCache
from secretcache.config import Token
from secretcache.testing import (
    FakeCredentialSource,
    FakeSecretsManager,
    StoredSecret,
    error_fault,
)
from secretcache.upstream import SecretsManagerClient

TOKEN = "t0ken-value"
AUTH = {"X-Aws-Parameters-Secrets-Token": TOKEN}
PASSWORD = '{"username":"app","password":"hunter2"}'


class StubHTTP(Protocol):
    """What the tests use of ``StubTreq``, which sets its methods at run time;
    it serves as the upstream client too."""

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]: ...

    def flush(self) -> None: ...


def stub_treq(resource: IResource) -> StubHTTP:
    return cast(StubHTTP, StubTreq(resource))


def fake_upstream_client(http: StubHTTP, clock: Clock) -> SecretsManagerClient:
    """A client of the in-memory Secrets Manager, one attempt per fetch."""
    return SecretsManagerClient(
        http=http,
        credentials=FakeCredentialSource(),
        endpoint_url="https://secretsmanager.us-east-1.amazonaws.com",
        region="us-east-1",
        clock=clock,
        max_attempts=1,
    )


class Answer:
    def __init__(
        self,
        status: int,
        headers: dict[bytes, list[bytes]],
        body: bytes,
        length: object,
    ) -> None:
        self.status = status
        # Twisted's HTTP client keeps Content-Length out of the headers and
        # reports it as the response's length.
        self.length = length
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower().encode())
        return values[0].decode() if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class APITestCase(SynchronousTestCase):
    token: str | None = TOKEN
    legacy_errors = False

    def setUp(self) -> None:
        self.clock = Clock()
        self.upstream = FakeSecretsManager()
        self.upstream.put(StoredSecret("db", string=PASSWORD))
        self.upstream.put(StoredSecret("app/key", string="k"))
        self.upstream.put(StoredSecret("bin", binary=b"\x00\x01\xfe"))
        self.upstream_stub = stub_treq(self.upstream)
        client = fake_upstream_client(self.upstream_stub, self.clock)
        self.cache = SecretCache(client.get_secret_value, self.clock, ttl=300)
        self.problem: str | None = None
        self.api = SecretcacheAPI(
            self.cache,
            token=Token(self.token, "test") if self.token else None,
            legacy_errors=self.legacy_errors,
            readiness=lambda: self.problem,
        )
        self.stub = stub_treq(self.api.resource())

    def request(self, method: str, url: str, **kwargs: Any) -> Answer:
        d = self.stub.request(method, "http://127.0.0.1:8015" + url, **kwargs)
        self.stub.flush()
        self.upstream_stub.flush()
        self.stub.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        headers = dict(response.headers.getAllRawHeaders())
        headers = {k.lower(): v for k, v in headers.items()}
        return Answer(response.code, headers, body, response.length)

    def get(self, url: str, headers: dict[str, str] | None = None) -> Answer:
        return self.request("GET", url, headers=AUTH if headers is None else headers)

    def assertError(self, answer: Answer, status: int, code: str) -> None:
        self.assertEqual(answer.status, status, answer.body)
        self.assertEqual(answer.header("content-type"), "application/json")
        body = answer.json()
        self.assertEqual(body["__type"], code)
        self.assertIsInstance(body["message"], str)
        self.assertNotIn(TOKEN, answer.body.decode())
        self.assertNotIn("hunter2", answer.body.decode())


class AWSDialectTests(APITestCase):
    def test_get_returns_the_get_secret_value_json(self) -> None:
        answer = self.get("/secretsmanager/get?secretId=db")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header("content-type"), "application/json")
        self.assertEqual(answer.header("cache-control"), "no-store")
        self.assertEqual(answer.header("x-secretcache-cache"), "miss")
        self.assertEqual(answer.length, len(answer.body))
        body = answer.json()
        self.assertEqual(body["SecretString"], PASSWORD)
        self.assertEqual(body["Name"], "db")
        self.assertEqual(body["VersionStages"], ["AWSCURRENT"])
        self.assertIsInstance(body["CreatedDate"], float)
        self.assertEqual(
            self.get("/secretsmanager/get?secretId=db").header("x-secretcache-cache"),
            "hit",
        )
        self.assertEqual(len(self.upstream.calls), 1)

    def test_refresh_now_fetches_again(self) -> None:
        self.get("/secretsmanager/get?secretId=db")
        self.clock.advance(2)
        answer = self.get("/secretsmanager/get?secretId=db&refreshNow=true")
        self.assertEqual(answer.header("x-secretcache-cache"), "refresh")
        self.assertEqual(len(self.upstream.calls), 2)

    def test_version_parameters_reach_upstream(self) -> None:
        version = self.upstream.secrets["db"].version_id
        self.get(
            f"/secretsmanager/get?secretId=db&versionId={version}"
            "&versionStage=AWSCURRENT"
        )
        self.assertEqual(
            self.upstream.calls[-1],
            {"SecretId": "db", "VersionId": version, "VersionStage": "AWSCURRENT"},
        )

    def test_v1_path_takes_the_rest_of_the_path_decoded(self) -> None:
        for path in ("/v1/app/key", "/v1/app%2Fkey"):
            answer = self.get(path)
            self.assertEqual(answer.status, 200, path)
            self.assertEqual(answer.json()["Name"], "app/key")
        self.assertEqual(self.upstream.calls, [{"SecretId": "app/key"}])

    def test_v1_refuses_secret_id_parameter(self) -> None:
        self.assertError(
            self.get("/v1/db?secretId=db"), 400, "InvalidParameterException"
        )

    def test_binary_secret_is_base64_in_json(self) -> None:
        self.assertEqual(self.get("/v1/bin").json()["SecretBinary"], "AAH+")

    def test_plus_in_a_query_is_a_plus_sign(self) -> None:
        self.upstream.put(StoredSecret("a+b", string="plus"))
        self.assertEqual(self.get("/secretsmanager/get?secretId=a+b").status, 200)

    def test_bad_parameters_are_400(self) -> None:
        for query in (
            "",
            "?secretId=",
            "?secretId=db&color=red",
            "?secretId=db&secretId=other",
            "?secretId=db&refreshNow=maybe",
            "?secretId=%zz",
            "?secretId=%",
            "?secretId=%ff%fe",
            "?secretId=a%00b",
            "?secretId=" + "x" * 2049,
            "?secretId=db&versionId=" + "v" * 65,
            "?secretId=" + "y" * 9000,
        ):
            answer = self.get("/secretsmanager/get" + query)
            self.assertError(answer, 400, "InvalidParameterException")
        self.assertEqual(self.upstream.calls, [])

    def test_other_methods_are_405(self) -> None:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            answer = self.request(
                method, "/secretsmanager/get?secretId=db", headers=AUTH
            )
            self.assertError(answer, 405, "MethodNotAllowed")
            self.assertEqual(answer.header("allow"), "GET")

    def test_upstream_errors_follow_the_table(self) -> None:
        self.assertError(self.get("/v1/missing"), 404, "ResourceNotFoundException")
        self.upstream.fault = error_fault(400, "AccessDeniedException")
        self.assertError(self.get("/v1/db"), 403, "AccessDeniedException")
        self.upstream.fault = error_fault(500, "InternalServiceError")
        self.assertError(self.get("/v1/app/key"), 502, "InternalServiceError")


class OrderOfChecksTests(APITestCase):
    def test_unknown_route_is_404_before_anything_else(self) -> None:
        answer = self.request("POST", "/nope", headers={"X-Forwarded-For": "1.2.3.4"})
        self.assertError(answer, 404, "NotFound")

    def test_forwarded_for_is_400_before_the_token(self) -> None:
        answer = self.get("/v1/db", headers={"X-Forwarded-For": "1.2.3.4"})
        self.assertError(answer, 400, "InvalidRequestException")
        self.assertError(
            self.get("/ping", headers={"X-Forwarded-For": "x"}),
            400,
            "InvalidRequestException",
        )

    def test_missing_or_wrong_token_is_403_before_the_method(self) -> None:
        for headers in (
            {},
            {"X-Aws-Parameters-Secrets-Token": "wrong"},
            {"X-Aws-Parameters-Secrets-Token": TOKEN + "x"},
        ):
            answer = self.request(
                "POST", "/secretsmanager/get?secretId=db", headers=headers
            )
            self.assertError(answer, 403, "AccessDeniedException")
            self.assertIn("X-Aws-Parameters-Secrets-Token", answer.json()["message"])
        self.assertError(
            self.request("POST", "/cache?name=db"), 403, "AccessDeniedException"
        )

    def test_vault_token_header_is_accepted(self) -> None:
        answer = self.get("/v1/db", headers={"X-Vault-Token": TOKEN})
        self.assertEqual(answer.status, 200)

    def test_method_is_checked_before_parameters(self) -> None:
        answer = self.request("DELETE", "/secretsmanager/get?bogus=1", headers=AUTH)
        self.assertError(answer, 405, "MethodNotAllowed")


class ServiceRouteTests(APITestCase):
    def test_ping_needs_no_token(self) -> None:
        answer = self.get("/ping", headers={})
        self.assertEqual((answer.status, answer.body), (200, b"healthy"))

    def test_ready_reports_the_problem_with_503(self) -> None:
        self.problem = "AWS credentials are not resolved yet"
        answer = self.get("/ready", headers={})
        self.assertError(answer, 503, "NotReady")
        self.assertIn("credentials", answer.json()["message"])
        self.problem = None
        self.assertEqual(self.get("/ready", headers={}).body, b"ready")

    def test_metrics_is_404_when_not_configured(self) -> None:
        self.assertError(self.get("/metrics", headers={}), 404, "NotFound")


class LegacyDialectTests(APITestCase):
    def test_known_client_post_gets_the_raw_secret_string(self) -> None:
        answer = self.request(
            "POST",
            "/cache?name=db&refresh=0",
            data=b"[]",
            headers={**AUTH, "Content-Type": "application/json"},
        )
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header("content-type"), "text/plain; charset=utf-8")
        self.assertEqual(answer.header("cache-control"), "no-store")
        self.assertEqual(json.loads(answer.body)["password"], "hunter2")

    def test_refresh_burst_costs_one_upstream_call(self) -> None:
        self.request("POST", "/cache?name=db&refresh=0", data=b"[]", headers=AUTH)
        self.clock.advance(30)
        outcomes = [
            self.request(
                "POST", "/cache?name=db&refresh=1", data=b"[]", headers=AUTH
            ).header("x-secretcache-cache")
            for _ in range(2)
        ]
        self.assertEqual(outcomes, ["refresh", "refresh"])
        self.assertEqual(len(self.upstream.calls), 2)

    def test_head_gets_the_headers_without_a_body_and_logs_no_uri(self) -> None:
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.request("GET", "/cache?name=db", headers=AUTH)  # a hit next
        head = self.request("HEAD", "/cache?name=db", headers=AUTH)
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(head.header("x-secretcache-cache"), "hit")
        self.assertEqual(head.header("cache-control"), "no-store")
        self.assertEqual([e for e in events if "name=db" in repr(e)], [])

    def test_any_method_and_unknown_and_repeated_parameters(self) -> None:
        answer = self.request(
            "PUT", "/cache?name=db&name=other&colour=red", headers=AUTH
        )
        self.assertEqual(answer.status, 200)
        self.assertEqual(self.upstream.calls, [{"SecretId": "db"}])

    def test_unknown_parameters_are_ignored_however_written(self) -> None:
        answer = self.get("/cache?x=%zz&%ff=1&name=db&junk=%C3%28")
        self.assertEqual(answer.status, 200)
        self.assertEqual(self.upstream.calls, [{"SecretId": "db"}])
        # The ones the dialect reads are still checked.
        self.assertError(self.get("/cache?name=d%zz"), 400, "InvalidParameterException")

    def test_binary_secret_is_raw_bytes(self) -> None:
        answer = self.get("/cache?name=bin")
        self.assertEqual(answer.body, b"\x00\x01\xfe")
        self.assertEqual(answer.header("content-type"), "application/octet-stream")

    def test_errors_are_json_by_default(self) -> None:
        self.assertError(self.get("/cache"), 400, "InvalidParameterException")
        self.assertError(
            self.get("/cache?name=db&refresh=2"), 400, "InvalidParameterException"
        )
        self.assertError(
            self.get("/cache?name=missing"), 404, "ResourceNotFoundException"
        )


class NoTokenTests(APITestCase):
    token = None

    def test_secret_routes_are_open(self) -> None:
        self.assertEqual(self.get("/cache?name=db", headers={}).status, 200)
        self.assertEqual(self.get("/v1/db", headers={}).status, 200)


class ParsedRequestMemoryTests(APITestCase):
    def test_a_remembered_request_still_needs_the_token(self) -> None:
        url = "/secretsmanager/get?secretId=db"
        self.assertEqual(self.get(url).status, 200)
        self.assertError(self.get(url, headers={}), 403, "AccessDeniedException")
        self.assertEqual(self.get(url).header("x-secretcache-cache"), "hit")

    def test_invalid_requests_are_refused_every_time(self) -> None:
        for _ in range(2):
            self.assertError(
                self.get("/secretsmanager/get?secretId=db&secretId=db"),
                400,
                "InvalidParameterException",
            )

    def test_memory_is_bounded(self) -> None:
        for i in range(600):
            self.get(f"/secretsmanager/get?secretId=missing-{i}")
        self.assertLessEqual(len(self.api._parsed_requests), 256)
        self.assertEqual(self.get("/secretsmanager/get?secretId=db").status, 200)


class _BrokenCache:
    """A cache with a bug: every fetch fails with something unexpected."""

    def lookup(self, key: object) -> None:
        return None

    def get(self, key: object, refresh: bool = False) -> Deferred[Any]:
        return fail(RuntimeError("a bug, not an upstream error"))


class UnexpectedFailureTests(SynchronousTestCase):
    def test_a_bug_is_answered_500_at_once_not_left_hanging(self) -> None:
        api = SecretcacheAPI(
            cast(SecretCache, _BrokenCache()),
            token=Token(TOKEN, "test"),
            legacy_errors=False,
            readiness=lambda: None,
        )
        stub = stub_treq(api.resource())
        d = stub.request(
            "GET", "http://127.0.0.1:8015/secretsmanager/get?secretId=db", headers=AUTH
        )
        stub.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        self.assertEqual(response.code, 500)
        self.assertEqual(json.loads(body)["__type"], "InternalFailure")
        self.assertNotIn(b"a bug", body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
