"""``SecretsManagerClient``: build, sign and send GetSecretValue; parse the
answer; retry transient failures within the request's time budget.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from twisted.internet import protocol
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    DNSLookupError,
)
from twisted.internet.interfaces import (
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, ResponseDone, ResponseFailed
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from secretcache._version import __version__
from secretcache.credentials import AWSCredentials, ICredentialSource
from secretcache.errors import (
    SecretcacheError,
    from_upstream,
    upstream_failure,
    upstream_timeout,
)
from secretcache.secret import SecretKey, SecretValue, parse_secret_value

USER_AGENT = f"secretcache/{__version__}"
# A secret is at most 64 KiB; base64 and JSON make its answer larger. Anything
# far beyond that is not Secrets Manager talking.
MAX_ANSWER_BYTES = 1024 * 1024
BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0


RequestHeaders = dict[bytes | str, list[bytes | str]]


class HTTPClient(Protocol):
    """The part of ``treq.HTTPClient`` (and ``treq.testing.StubTreq``) we use.

    The answer is treq's response, which provides ``IResponse``; treq types it
    as a private class, and ``Deferred`` is invariant, hence ``Any``.
    """

    def request(
        self, method: str, url: str, *, data: bytes, headers: RequestHeaders
    ) -> Deferred[Any]: ...


class _TooLarge(Exception):
    pass


@implementer(IAgentEndpointFactory)
class UpstreamEndpoints:
    """Where the ``Agent`` connects: Twisted's ``HostnameEndpoint`` for a host
    name (resolved in a thread, then happy eyeballs), but straight to the
    address for an IP literal. Resolving an address only costs a thread round
    trip and a timer loop per new connection, and an emulator that closes
    every connection (moto does) makes one per call."""

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS) -> None:
        self._reactor = reactor
        self._policy = policy

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        address = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        endpoint: IStreamClientEndpoint
        if isIPAddress(address):
            endpoint = TCP4ClientEndpoint(self._reactor, address, uri.port)
        elif isIPv6Address(address):
            endpoint = TCP6ClientEndpoint(self._reactor, address, uri.port)
        else:
            endpoint = HostnameEndpoint(self._reactor, host, uri.port)
        if uri.scheme == b"https":
            creator = self._policy.creatorForNetloc(uri.host, uri.port)
            return wrapClientTLS(creator, endpoint)
        if uri.scheme != b"http":
            raise SchemeNotSupported(f"unsupported scheme {uri.scheme!r}")
        return endpoint


class UpstreamObserver:
    """Told of every attempt; metrics subclass it. Does nothing by default."""

    def attempt(self, outcome: str, seconds: float) -> None:
        pass


class SecretsManagerClient:
    log = Logger()

    def __init__(
        self,
        *,
        http: HTTPClient,
        credentials: ICredentialSource,
        endpoint_url: str,
        region: str,
        clock: IReactorTime,
        upstream_timeout: float = 3.0,
        max_attempts: int = 3,
        request_timeout: float = 10.0,
        jitter: Callable[[], float] = random.random,
        observer: UpstreamObserver | None = None,
    ) -> None:
        self._http = http
        self._credentials = credentials
        self._url = endpoint_url if urlsplit(endpoint_url).path else endpoint_url + "/"
        self._region = region
        self._clock = clock
        self._upstream_timeout = upstream_timeout
        self._max_attempts = max_attempts
        self._request_timeout = request_timeout
        self._jitter = jitter
        self._observer = observer or UpstreamObserver()

    def get_secret_value(self, key: SecretKey) -> Deferred[SecretValue]:
        """Fetch ``key``; fails with ``SecretcacheError``, 504 when the
        request timeout passes."""
        d = ensureDeferred(self._get_with_retries(key))
        timer = self._clock.callLater(self._request_timeout, d.cancel)

        def settled(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            elif isinstance(result, Failure):
                # Whatever the cancelled attempt failed with, the cause is the
                # request timeout.
                return Failure(
                    upstream_timeout(
                        "no answer from Secrets Manager within the request "
                        f"timeout ({self._request_timeout:g}s)"
                    )
                )
            return result

        return d.addBoth(settled)

    async def _get_with_retries(self, key: SecretKey) -> SecretValue:
        deadline = self._clock.seconds() + self._request_timeout
        attempt = 0
        refreshed_credentials = False
        while True:
            attempt += 1
            credentials: AWSCredentials | None = None
            try:
                credentials = await self._credentials.get()
                return await self._attempt(key, credentials)
            except SecretcacheError as error:
                if (
                    error.retry_credentials
                    and credentials is not None
                    and not refreshed_credentials
                ):
                    # Our session token expired under us: resolve the chain
                    # anew and try once more, whatever the attempt count.
                    refreshed_credentials = True
                    self._credentials.invalidate(credentials)
                    attempt -= 1
                    continue
                if not error.transient or attempt >= self._max_attempts:
                    raise
                delay = self._jitter() * min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
                if self._clock.seconds() + delay >= deadline:
                    raise
                self.log.debug(
                    "retrying after {code} in {delay:.3f}s",
                    code=error.code,
                    delay=delay,
                )
                await deferLater(self._clock, delay)

    async def _attempt(
        self, key: SecretKey, credentials: AWSCredentials
    ) -> SecretValue:
        started = self._clock.seconds()
        body = json.dumps(key.request_body()).encode()
        request = AWSRequest(
            method="POST",
            url=self._url,
            data=body,
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": "secretsmanager.GetSecretValue",
                "User-Agent": USER_AGENT,
            },
        )
        SigV4Auth(credentials, "secretsmanager", self._region).add_auth(request)
        headers: RequestHeaders = {
            name: [value] for name, value in request.headers.items()
        }
        sent = self._http.request(
            "POST", self._url, data=body, headers=headers
        ).addCallback(_read_answer)
        timer = self._clock.callLater(self._upstream_timeout, sent.cancel)
        try:
            status, answer = await sent
        except Exception as e:
            timed_out = not timer.active()
            if not timed_out and _is_cancellation(e):
                # Cancelled from outside (the request timeout, or the server
                # stopping): no retry, whatever the attempt count.
                self._observer.attempt("timeout", self._clock.seconds() - started)
                raise CancelledError() from None
            error = self._transport_error(e, timed_out=timed_out)
            self._observer.attempt(
                "timeout" if error.status == 504 else "error",
                self._clock.seconds() - started,
            )
            raise error from None
        finally:
            if timer.active():
                timer.cancel()
        elapsed = self._clock.seconds() - started
        if status == 200:
            try:
                value = parse_secret_value(answer, key)
            except SecretcacheError:
                self._observer.attempt("unparseable", elapsed)
                raise
            self._observer.attempt("ok", elapsed)
            return value
        error = _error_answer(status, answer)
        self._observer.attempt(
            "throttled" if error.status == 429 else f"{status // 100}xx", elapsed
        )
        raise error

    def _transport_error(self, error: Exception, timed_out: bool) -> SecretcacheError:
        if isinstance(error, SecretcacheError):
            return error
        if timed_out:
            return upstream_timeout(
                "Secrets Manager did not answer within the upstream timeout "
                f"({self._upstream_timeout:g}s)"
            )
        if isinstance(error, _TooLarge):
            return upstream_failure("Secrets Manager's answer is implausibly large")
        return upstream_failure(f"could not reach Secrets Manager ({_describe(error)})")


def _describe(error: Exception) -> str:
    if isinstance(error, DNSLookupError):
        return "DNS lookup failed"
    if isinstance(error, ConnectingCancelledError):
        return "connection attempt cancelled"
    if isinstance(error, ConnectError):
        return f"connection failed: {type(error).__name__}"
    if isinstance(error, ResponseFailed):
        reasons = [r.value for r in error.reasons if isinstance(r, Failure)]
        for reason in reasons:
            if type(reason).__module__.startswith("OpenSSL"):
                return "TLS error, certificate not trusted or handshake failed"
        names = ", ".join(type(r).__name__ for r in reasons) or "no answer"
        return f"connection failed: {names}"
    # Twisted's ResponseNeverReceived and RequestTransmissionFailed also carry
    # reasons; anything else is named by its type only, never its text.
    carried = getattr(error, "reasons", None)
    if carried:
        for reason in carried:
            if type(getattr(reason, "value", None)).__module__.startswith("OpenSSL"):
                return "TLS error, certificate not trusted or handshake failed"
        names = ", ".join(type(getattr(r, "value", r)).__name__ for r in carried)
        return f"{type(error).__name__}: {names}"
    return type(error).__name__


def _is_cancellation(error: Exception) -> bool:
    """Whether a failed request failed because its Deferred was cancelled
    (Twisted's client wraps the CancelledError in its own exceptions)."""
    if isinstance(error, CancelledError | ConnectingCancelledError):
        return True
    reasons = getattr(error, "reasons", None) or ()
    return any(isinstance(getattr(r, "value", None), CancelledError) for r in reasons)


def _read_answer(response: IResponse) -> Deferred[tuple[int, bytes]]:
    length = response.length
    if isinstance(length, int) and length > MAX_ANSWER_BYTES:
        response.deliverBody(_Discard())
        raise _TooLarge()
    reader = _AnswerReader()
    response.deliverBody(reader)
    return reader.done.addCallback(lambda body: (response.code, body))


class _AnswerReader(protocol.Protocol):
    """Collects an answer's body up to ``MAX_ANSWER_BYTES``. Cancelling
    ``done`` (the attempt's timeout) drops the connection: a peer that stalls
    mid-body must not keep a socket open, nor hand it back to the pool."""

    def __init__(self) -> None:
        self.done: Deferred[bytes] = Deferred(lambda _: self._drop())
        self._chunks: list[bytes] = []
        self._size = 0

    def _drop(self) -> None:
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > MAX_ANSWER_BYTES:
            self._chunks = []
            self._drop()
            self.done.errback(_TooLarge())
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


class _Discard:
    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        pass


def _error_answer(status: int, body: bytes) -> SecretcacheError:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        document = None
    if isinstance(document, dict):
        code = document.get("__type") or document.get("code")
        message = document.get("message") or document.get("Message") or ""
        if isinstance(code, str) and code:
            return from_upstream(
                status, code, message if isinstance(message, str) else ""
            )
    # An XML or HTML error page: a proxy, a load balancer, or an emulator's
    # signature check. Not Secrets Manager's JSON, so we cannot say more.
    error = upstream_failure(
        f"Secrets Manager answered HTTP {status} with an unparseable body"
    )
    error.transient = status >= 500 or status == 429
    return error
