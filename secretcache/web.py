"""The HTTP server around the API: a ``Site`` that keeps no access log of its
own and bounds open connections, answering the one over the limit with 429.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from secretcache.errors import SecretcacheError, too_many_connections

# How much of a refused connection's request we read to see whether it is a
# health check: the request line is enough.
_PEEK_LIMIT = 1024
# Refused connections waiting for their request line; past this many, the
# oldest is dropped for the newest, so a flood of idle connections cannot run
# the process out of files nor keep a health check from getting through.
_MAX_REFUSING = 64
# How long a refused connection may take to send its request line.
_REFUSAL_TIMEOUT = 2.0
# Request bodies up to this size are kept (nothing reads them; Twisted wants
# a file); a larger or unsized one is counted and dropped, never spooled to disk.
_BODY_KEPT = 64 * 1024
# At shutdown, how long requests in flight may take to finish: inside the 2 s
# that ``docker stop`` and Lambda's SHUTDOWN leave before SIGKILL.
SHUTDOWN_GRACE = 1.0


class _Request(Request):
    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if path[:1] != b"/" and b"://" in path:
            # The absolute form ("GET http://localhost:8015/ping"), which
            # RFC 9112 says a server must accept: keep the path and query.
            rest = path.split(b"://", 1)[1]
            cut = min(
                (i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0),
                default=len(rest),
            )
            path = rest[cut:]
            path = path if path.startswith(b"/") else b"/" + path
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]

    def write(self, data: bytes) -> None:
        if (
            not self.startedWriting
            and self.clientproto != b"HTTP/1.1"
            and not self.responseHeaders.hasHeader(b"content-length")
        ):
            # An HTTP/1.0 keep-alive answer must say its length; without
            # one, only closing the connection ends it.
            self.responseHeaders.removeHeader(b"connection")
            self.channel.persistent = False
        super().write(data)  # type: ignore[no-untyped-call]


class _DiscardedBody(BytesIO):
    """A request body too large to keep: no route reads one."""

    def write(self, data: Any, /) -> int:
        return len(memoryview(data))


class _CountedChannel(HTTPChannel):
    site: SecretcacheSite
    _host: IAddress | None = None

    def getHost(self) -> IAddress:
        # Every request asks (twisted.web's Request.__init__), and for TCP
        # each answer is a getsockname() system call; a connection's local
        # address does not change.
        if self._host is None:
            self._host = super().getHost()  # type: ignore[no-untyped-call]
        return self._host

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        # Twisted closes every HTTP/1.0 connection; ours answer with a
        # Content-Length, so "Connection: keep-alive" (ab -k, old clients)
        # can be honoured as HTTP/1.0 defines it.
        if version == b"HTTP/1.0":
            tokens = b",".join(request.requestHeaders.getRawHeaders(b"connection", []))
            if b"keep-alive" in tokens.lower():
                request.responseHeaders.setRawHeaders(b"connection", [b"keep-alive"])
                return True
        persistent: bool = super().checkPersistence(request, version)  # type: ignore[no-untyped-call]
        return persistent

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own answer to a request it cannot parse is a bare
        # "400 Bad Request" with no length or body; ours follows the SPEC.
        self._bad_request("the request is not valid HTTP/1.1")

    def lineLengthExceeded(self, line: bytes) -> None:
        # Twisted would close the connection without a word.
        self._bad_request(f"request line or header longer than {self.MAX_LENGTH} bytes")

    def _bad_request(self, message: str) -> None:
        if self.transport is None:
            return
        body = SecretcacheError(400, "InvalidRequestException", message).body()
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )
        self.loseConnection()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.site.open_connections -= 1
        self.site.channel_closed(self)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)  # type: ignore[no-untyped-call]
        if self.site.draining and not self.requests and self.transport is not None:
            # Shutting down: the answer is out, keep-alive ends here.
            self.transport.loseConnection()


class _Refusal(Protocol):
    """Answers a connection over the limit: ``/ping`` still gets ``healthy``
    (so an orchestrator does not kill a busy server), anything else 429."""

    def __init__(self, site: SecretcacheSite) -> None:
        self._site = site
        self._buffer = b""
        self._answered = False
        self._timeout: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._site.refusing[self] = None
        assert self.transport is not None
        # Stream transports (TCP, UNIX, TLS) all have abortConnection.
        transport = cast(ITCPTransport, self.transport)
        self._timeout = self._site.clock.callLater(
            _REFUSAL_TIMEOUT, transport.abortConnection
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._site.refusing.pop(self, None)
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()

    def abort(self) -> None:
        self._site.refused += 1
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return
        self._buffer += data
        if b"\n" not in self._buffer and len(self._buffer) < _PEEK_LIMIT:
            return
        line = self._buffer.split(b"\n", 1)[0]
        if self._site.legacy_errors and _is_legacy_route(line):
            # --legacy-errors: the Go server's clients fall back to calling
            # Secrets Manager themselves only when the connection fails.
            self.abort()
            self._answered = True
            self._buffer = b""
            return
        method, target = _method_and_path(line)
        if method == b"GET" and target == b"/ping":
            status, body, content_type = (
                b"200 OK",
                b"healthy",
                b"text/plain; charset=utf-8",
            )
        else:
            error = too_many_connections()
            status, body, content_type = (
                b"429 Too Many Requests",
                error.body(),
                b"application/json",
            )
            self._site.refused += 1
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: "
            + content_type
            + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            # A HEAD answer says the length of a body it does not carry.
            + (b"" if method == b"HEAD" else body)
        )
        self.transport.loseConnection()
        self._answered = True
        self._buffer = b""


def _method_and_path(request_line: bytes) -> tuple[bytes, bytes]:
    """The method and the target's path (no query) of a raw request line."""
    parts = request_line.strip().split(b" ")
    if len(parts) < 2:
        return parts[0], b""
    target = parts[1]
    if b"://" in target:  # an absolute-form target: drop scheme and authority
        target = b"/" + target.split(b"://", 1)[1].partition(b"/")[2]
    return parts[0], target.split(b"?", 1)[0]


def _is_legacy_route(request_line: bytes) -> bool:
    return _method_and_path(request_line)[1] == b"/cache"


class SecretcacheSite(Site):
    """A ``Site`` with a bound on open connections and no Common Log Format
    file: the access log, when wanted, is written by the API's observer."""

    # A plain HTTP/1.1 channel, not Twisted's HTTP/1.1-or-2 wrapper that
    # HTTPFactory's annotation names.
    protocol = _CountedChannel  # type: ignore[assignment]
    requestFactory = _Request

    def __init__(
        self,
        resource: IResource,
        *,
        max_connections: int,
        clock: IReactorTime,
        legacy_errors: bool = False,
        **kwargs: Any,
    ) -> None:
        # No route reads a form. Twisted would parse every POST body as one
        # (the legacy client's requests are POSTs), and its Content-Type
        # parsing raises on a value holding a character that str.splitlines
        # breaks on (such as \x1c): a traceback, no answer.
        super().__init__(  # type: ignore[no-untyped-call]
            resource, reactor=clock, parsePOSTFormSubmission=False, **kwargs
        )
        self.clock = clock
        self.max_connections = max_connections
        self.legacy_errors = legacy_errors
        self.open_connections = 0
        # Insertion-ordered: the oldest refusal first.
        self.refusing: dict[_Refusal, None] = {}
        self.refused = 0
        self.draining = False
        self._channels: set[_CountedChannel] = set()
        self._drained: Deferred[None] | None = None

    def drain(self, grace: float) -> Deferred[None]:
        """Close idle connections now, let requests in flight finish for up to
        ``grace`` seconds, then abort what is left. Call once the listeners
        have stopped; fires when every connection is closed."""
        self.draining = True
        for channel in list(self._channels):
            if not channel.requests and channel.transport is not None:
                channel.transport.loseConnection()
        if not self._channels:
            return succeed(None)
        self._drained = Deferred()

        def abort_the_rest() -> None:
            for channel in list(self._channels):
                if channel.transport is not None:
                    cast(ITCPTransport, channel.transport).abortConnection()

        timer = self.clock.callLater(grace, abort_the_rest)
        drained = self._drained

        def cancel_timer(result: None) -> None:
            if timer.active():
                timer.cancel()
            return result

        return drained.addBoth(cancel_timer)

    def channel_closed(self, channel: _CountedChannel) -> None:
        self._channels.discard(channel)
        if not self._channels and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def buildProtocol(self, addr: IAddress) -> Protocol | None:  # type: ignore[override]
        if self.open_connections >= self.max_connections:
            if len(self.refusing) >= _MAX_REFUSING:
                oldest = next(iter(self.refusing))
                del self.refusing[oldest]
                oldest.abort()
            return _Refusal(self)
        self.open_connections += 1
        channel: _CountedChannel = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        self._channels.add(channel)
        return channel

    def log(self, request: Any) -> None:
        pass

    def getContentFile(self, length: int | None) -> BytesIO:
        # twisted.web asks the Site for each request's body buffer and falls
        # back to its own (a temporary file past 100 kB) on AttributeError:
        # an exception per request on the hit path, and a disk write for a
        # hostile body that no route reads.
        if length is not None and length <= _BODY_KEPT:
            return BytesIO()
        return _DiscardedBody()
