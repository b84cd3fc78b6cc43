"""The HTTP API: both dialects' routes, the checks every request passes in the
SPEC's order (route, X-Forwarded-For, token, method, parameters), and the
rendering of secrets and errors.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from secretcache.cache import Outcome, SecretCache
from secretcache.config import TOKEN_HEADERS, Token
from secretcache.errors import (
    SecretcacheError,
    access_denied,
    forwarded_request,
    internal_error,
    invalid_parameter,
    method_not_allowed,
    not_found_route,
)
from secretcache.secret import SecretKey, SecretValue

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
MAX_SECRET_ID = 2048
MAX_VERSION_ID = 64
MAX_VERSION_STAGE = 256
MAX_QUERY = 8192

_AWS_PARAMETERS = frozenset({"secretId", "versionId", "versionStage", "refreshNow"})
_V1_PARAMETERS = frozenset({"versionId", "versionStage", "refreshNow"})
_LEGACY_PARAMETERS = frozenset({"name", "refresh", "versionId", "versionStage"})
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")


class RequestObserver:
    """Told of every answered request; metrics and the access log subclass it."""

    def answered(
        self,
        route: str,
        method: bytes,
        status: int,
        outcome: Outcome | None,
        seconds: float,
    ) -> None:
        pass


class _Query:
    """A query string decoded strictly: ``+`` is a plus sign (secret names may
    hold one, spaces they may not), every ``%`` escape must be valid, every
    value valid UTF-8."""

    def __init__(self, raw: bytes, only: frozenset[str] | None = None) -> None:
        """With ``only``, other parameters are dropped unread, however they
        are written (the legacy dialect ignores them, as the Go server did)."""
        self.pairs: list[tuple[str, str]] = []
        if len(raw) > MAX_QUERY:
            raise invalid_parameter(f"query string longer than {MAX_QUERY} bytes")
        for item in raw.split(b"&"):
            if not item:
                continue
            raw_name, _, value = item.partition(b"=")
            try:
                name = _unescape(raw_name, "parameter name")
            except SecretcacheError:
                if only is not None:
                    continue
                raise
            if only is None or name in only:
                self.pairs.append((name, _unescape(value, "value")))

    def first(self, name: str) -> str | None:
        for key, value in self.pairs:
            if key == name:
                return value
        return None

    def strict(self, allowed: frozenset[str]) -> dict[str, str]:
        result: dict[str, str] = {}
        for key, value in self.pairs:
            if key not in allowed:
                raise invalid_parameter(
                    f"unknown parameter {_quote(key)}; allowed: "
                    + ", ".join(sorted(allowed))
                )
            if key in result:
                raise invalid_parameter(f"parameter {_quote(key)} given more than once")
            result[key] = value
        return result


def _unescape(raw: bytes, what: str) -> str:
    if b"%" in raw:
        if raw.count(b"%") != len(_PERCENT.findall(raw)):
            raise invalid_parameter(f"invalid percent-escape in a query {what}")
        raw = _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_parameter(f"a query {what} is not valid UTF-8") from None


def _quote(text: str) -> str:
    return repr(text[:64] + ("..." if len(text) > 64 else ""))


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def _checked(value: str | None, name: str, limit: int, required: bool) -> str | None:
    if value is None or value == "":
        if required:
            raise invalid_parameter(f"missing required parameter {name}")
        return None
    if len(value) > limit or _has_control(value):
        raise invalid_parameter(
            f"{name} must be 1 to {limit} characters with no control characters"
        )
    return value


def _flag(value: str | None, name: str) -> bool:
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("1", "true"):
        return True
    if lowered in ("0", "false", ""):
        return False
    raise invalid_parameter(f"{name} must be true, false, 1 or 0")


def _send(
    request: IRequest,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: Mapping[bytes, bytes] = {},
) -> bytes:
    request.setResponseCode(status)
    response = request.responseHeaders
    response.setRawHeaders(b"content-type", [content_type])
    response.setRawHeaders(b"content-length", [b"%d" % len(body)])
    for name, value in headers.items():
        response.setRawHeaders(name, [value])
    return body


_NO_STORE = {b"cache-control": b"no-store"}
# Every route that answers 405 takes GET only (/cache takes any method).
_NO_STORE_ALLOW_GET = {**_NO_STORE, b"allow": b"GET"}


class SecretcacheAPI:
    """The Klein app. Build it with a cache and the token; serve
    ``SecretcacheAPI(...).resource()``."""

    app = Klein()
    # werkzeug would answer "//ping" or "/v1//x" with a redirect to a merged
    # path; a secret id is taken verbatim from the path, so never rewrite it.
    app.url_map.merge_slashes = False
    log = Logger()

    def __init__(
        self,
        cache: SecretCache,
        *,
        token: Token | None,
        legacy_errors: bool = False,
        readiness: Callable[[], str | None] = lambda: None,
        metrics: Callable[[], tuple[bytes, bytes]] | None = None,
        observer: RequestObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache = cache
        self._token = token
        self._legacy_errors = legacy_errors
        self._readiness = readiness
        self._metrics = metrics
        self._observer = observer or RequestObserver()
        self._now = clock
        self._parsed_requests: dict[tuple[str, bytes], tuple[SecretKey, bool]] = {}

    @property
    def serves_metrics(self) -> bool:
        return self._metrics is not None

    def resource(self) -> IResource:
        return _FrontDoor(self, self.app.resource())

    # The secret routes, dispatched by ``_FrontDoor``. Every route takes any
    # method: the method is checked after the token, in the SPEC's order.

    def legacy(self, request: IRequest) -> Any:
        started = self._now()
        try:
            self._check_caller(request)
            key, refresh = self._parsed("cache", _query_bytes(request), _legacy_key)
        except SecretcacheError as error:
            return self._legacy_error(request, "cache", error, started)
        return self._serve(request, "cache", key, refresh, started, legacy=True)

    def aws_get(self, request: IRequest) -> Any:
        started = self._now()
        try:
            self._check_caller(request)
            self._check_get(request)
            key, refresh = self._parsed("get", _query_bytes(request), _get_key)
        except SecretcacheError as error:
            return self._error(request, "secretsmanager/get", error, started)
        return self._serve(request, "secretsmanager/get", key, refresh, started)

    def aws_v1(self, request: IRequest) -> Any:
        started = self._now()
        try:
            self._check_caller(request)
            self._check_get(request)
            key, refresh = self._parsed("v1", request.uri, _v1_key)
        except SecretcacheError as error:
            return self._error(request, "v1", error, started)
        return self._serve(request, "v1", key, refresh, started)

    def _parsed(
        self, route: str, raw: bytes, parse: Callable[[bytes], tuple[SecretKey, bool]]
    ) -> tuple[SecretKey, bool]:
        """The key and refresh flag a request's raw query (or URI) means,
        remembered for the raw bytes: clients repeat the same few requests,
        and parsing and checking them anew is a fair share of a cache hit.
        Only valid requests are remembered; the checks before this one (the
        token above all) run on every request."""
        remembered = self._parsed_requests.get((route, raw))
        if remembered is not None:
            return remembered
        result = parse(raw)
        if len(self._parsed_requests) >= _PARSED_REQUESTS:
            self._parsed_requests.clear()
        self._parsed_requests[(route, raw)] = result
        return result

    @app.route("/ping")
    def ping(self, request: IRequest) -> bytes:
        started = self._now()
        try:
            _check_forwarded(request)
            self._check_get(request)
        except SecretcacheError as error:
            return self._error(request, "ping", error, started)
        self._observer.answered(
            "ping", request.method, 200, None, self._now() - started
        )
        return _send(request, 200, b"healthy", TEXT)

    @app.route("/ready")
    def ready(self, request: IRequest) -> bytes:
        started = self._now()
        try:
            _check_forwarded(request)
            self._check_get(request)
            problem = self._readiness()
            if problem is not None:
                raise SecretcacheError(503, "NotReady", problem)
        except SecretcacheError as error:
            return self._error(request, "ready", error, started)
        self._observer.answered(
            "ready", request.method, 200, None, self._now() - started
        )
        return _send(request, 200, b"ready", TEXT)

    @app.route("/metrics")
    def metrics(self, request: IRequest) -> bytes:
        started = self._now()
        try:
            if self._metrics is None:
                raise not_found_route()
            _check_forwarded(request)
            self._check_get(request)
        except SecretcacheError as error:
            return self._error(request, "metrics", error, started)
        body, content_type = self._metrics()
        self._observer.answered(
            "metrics", request.method, 200, None, self._now() - started
        )
        return _send(request, 200, body, content_type)

    @app.handle_errors(NotFound, MethodNotAllowed, RequestRedirect)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return self._error(request, "unknown", not_found_route(), self._now())

    @app.handle_errors(Exception)
    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        self.log.failure("unexpected error answering a request", failure)
        return self._error(request, "unknown", internal_error(), self._now())

    # The checks.

    def _check_caller(self, request: IRequest) -> None:
        _check_forwarded(request)
        if self._token is not None:
            headers = request.requestHeaders
            for name in TOKEN_HEADERS:
                values = headers.getRawHeaders(name)
                if values and self._token.matches(values[0]):
                    return
            raise access_denied()

    @staticmethod
    def _check_get(request: IRequest) -> None:
        if request.method != b"GET":
            raise method_not_allowed(request.method.decode("latin-1")[:16], "GET")

    # Answers.

    def _serve(
        self,
        request: IRequest,
        route: str,
        key: SecretKey,
        refresh: bool,
        started: float,
        legacy: bool = False,
    ) -> bytes | Deferred[bytes]:
        if not refresh:
            value = self._cache.lookup(key)
            if value is not None:
                return self._secret(request, route, value, Outcome.HIT, started, legacy)

        def found(result: tuple[SecretValue, Outcome]) -> bytes:
            secret, outcome = result
            return self._secret(request, route, secret, outcome, started, legacy)

        answer_error = self._legacy_error if legacy else self._error

        def failed(failure: Failure) -> bytes | Deferred[bytes]:
            failure.trap(SecretcacheError)
            error = cast(SecretcacheError, failure.value)
            return answer_error(request, route, error, started)

        d = self._cache.get(key, refresh).addCallback(found)
        # A Deferred returned by the errback is chained, so d still fires
        # with bytes.
        d.addErrback(failed)
        return d

    def _secret(
        self,
        request: IRequest,
        route: str,
        value: SecretValue,
        outcome: Outcome,
        started: float,
        legacy: bool,
    ) -> bytes:
        self._observer.answered(
            route, request.method, 200, outcome, self._now() - started
        )
        headers = {b"cache-control": b"no-store", b"x-secretcache-cache": outcome.value}
        if legacy:
            return _send(request, 200, value.raw_body, value.raw_content_type, headers)
        return _send(request, 200, value.aws_body, JSON, headers)

    def _error(
        self, request: IRequest, route: str, error: SecretcacheError, started: float
    ) -> bytes:
        self._observer.answered(
            route, request.method, error.status, None, self._now() - started
        )
        headers = _NO_STORE_ALLOW_GET if error.status == 405 else _NO_STORE
        return _send(request, error.status, error.body(), JSON, headers)

    def _legacy_error(
        self, request: IRequest, route: str, error: SecretcacheError, started: float
    ) -> bytes | Deferred[bytes]:
        if not self._legacy_errors:
            return self._error(request, route, error, started)
        # The Go server's clients fall back to Secrets Manager only when the
        # connection fails, so answer nothing and close it.
        self._observer.answered(route, request.method, 0, None, self._now() - started)
        cast(Request, request).channel.loseConnection()
        never: Deferred[bytes] = Deferred()
        return never


# Parsed requests remembered (see ``SecretcacheAPI._parsed``): the hot set.
_PARSED_REQUESTS = 256


def _aws_key(secret_id: str | None, params: Mapping[str, str]) -> SecretKey:
    return SecretKey(
        _checked(secret_id, "secretId", MAX_SECRET_ID, True) or "",
        _checked(params.get("versionId"), "versionId", MAX_VERSION_ID, False),
        _checked(params.get("versionStage"), "versionStage", MAX_VERSION_STAGE, False),
    )


def _legacy_key(query: bytes) -> tuple[SecretKey, bool]:
    parsed = _Query(query, _LEGACY_PARAMETERS)
    key = SecretKey(
        _checked(parsed.first("name"), "name", MAX_SECRET_ID, True) or "",
        _checked(parsed.first("versionId"), "versionId", MAX_VERSION_ID, False),
        _checked(
            parsed.first("versionStage"), "versionStage", MAX_VERSION_STAGE, False
        ),
    )
    return key, _flag(parsed.first("refresh"), "refresh")


def _get_key(query: bytes) -> tuple[SecretKey, bool]:
    params = _Query(query).strict(_AWS_PARAMETERS)
    key = _aws_key(params.get("secretId"), params)
    return key, _flag(params.get("refreshNow"), "refreshNow")


def _v1_key(uri: bytes) -> tuple[SecretKey, bool]:
    raw_path, _, query = uri.partition(b"?")
    params = _Query(query).strict(_V1_PARAMETERS)
    raw_id = raw_path[len(b"/v1/") :] if raw_path.startswith(b"/v1/") else b""
    key = _aws_key(_unescape(raw_id, "path"), params)
    return key, _flag(params.get("refreshNow"), "refreshNow")


class _FrontDoor(Resource):
    """Every request enters here. The secret routes go straight to their
    handler: they are the hot path, and Klein's per-request routing (URL
    decoding, werkzeug matching, request adaptation) would cost more than
    the rest of a cache hit; each handler makes every check itself, so the
    contract is the same. The service routes and unknown paths go through
    Klein, unless a part of the request cannot be decoded (Klein would
    answer a bare 400 or a 500 and log a traceback): that gets our JSON."""

    isLeaf = True

    def __init__(self, api: SecretcacheAPI, routed: IResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._api = api
        self._routed = routed
        self._secret_routes: dict[bytes, Callable[[IRequest], Any]] = {
            b"/cache": api.legacy,
            b"/secretsmanager/get": api.aws_get,
            b"/v1": api.aws_v1,
        }
        self._service_routes = frozenset(
            (b"/ping", b"/ready", b"/metrics")
            if api.serves_metrics
            else (b"/ping", b"/ready")
        )

    def render(self, request: IRequest) -> Any:
        path: bytes = request.path
        handler = self._secret_routes.get(path)
        if handler is None and path.startswith(b"/v1/"):
            handler = self._api.aws_v1
        if handler is not None:
            return _headless(request, _rendered(request, handler(request)))
        problem = _undecodable(request)
        if problem is None:
            return _headless(request, self._routed.render(request))
        # Klein cannot route this request, so the SPEC's order of checks is
        # kept here: an unknown route is a 404 and X-Forwarded-For a 400
        # whatever else is wrong with the request.
        if path not in self._service_routes:
            problem = not_found_route()
        elif request.requestHeaders.hasHeader(b"x-forwarded-for"):
            problem = forwarded_request()
        started = self._api._now()
        return _headless(
            request, self._api._error(request, "unknown", problem, started)
        )


def _headless(request: IRequest, body: Any) -> Any:
    # A HEAD answer keeps the headers (Content-Length included) and drops the
    # body here: twisted.web would drop it too, after logging the URI.
    if request.method == b"HEAD" and isinstance(body, bytes):
        return b""
    return body


def _rendered(request: IRequest, result: bytes | Deferred[bytes]) -> Any:
    """A handler's answer as ``Resource.render`` gives it: bytes now, or
    ``NOT_DONE_YET`` and the body when the Deferred fires; a client that
    hangs up cancels its wait (not the fetch others share)."""
    if isinstance(result, bytes):
        return result
    done: list[bool] = []

    def finished(outcome: object) -> None:
        done.append(True)
        if isinstance(outcome, Failure):
            result.cancel()

    cast(Request, request).notifyFinish().addBoth(finished)

    def write(body: bytes) -> None:
        if not done:
            request.write(body)
            request.finish()

    def failed(failure: Failure) -> None:
        if done:
            return
        SecretcacheAPI.log.failure("while answering", failure)
        done.append(True)
        if cast(Request, request).startedWriting:
            cast(Request, request).channel.loseConnection()
            return
        body = internal_error().body()
        request.write(_send(request, 500, body, JSON, _NO_STORE))
        request.finish()

    result.addCallback(write).addErrback(failed)
    return NOT_DONE_YET


def _undecodable(request: IRequest) -> SecretcacheError | None:
    method: bytes = request.method
    if not (method.isascii() and method.isalpha()):
        return SecretcacheError(
            405, "MethodNotAllowed", "the method is not a valid HTTP method"
        )
    host: bytes = request.getHeader(b"host") or b""
    path: bytes = request.path
    try:
        # What Klein's router (werkzeug) does with it; we ignore the Host.
        host.decode("utf-8").partition(":")[0].encode("idna")
    except UnicodeError:
        return SecretcacheError(
            400, "InvalidRequestException", "the Host header is not a host name"
        )
    try:
        # Twisted percent-decodes the path's segments before Klein sees them.
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        if path.startswith(b"/v1/"):
            return invalid_parameter(
                "the secret id in the path is not UTF-8 once percent-decoded"
            )
        return not_found_route()
    return None


def _check_forwarded(request: IRequest) -> None:
    if request.requestHeaders.hasHeader(b"x-forwarded-for"):
        raise forwarded_request()


def _query_bytes(request: IRequest) -> bytes:
    uri: bytes = request.uri
    _, _, query = uri.partition(b"?")
    return query
