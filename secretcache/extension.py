"""The Lambda side, once Twisted is running: a client of the Lambda Extensions
API and the service that loops on ``event/next``.

Registration happened earlier, with the standard library
(``secretcache.lambda_start``), so that the function's init is not held up
by our imports. Lambda freezes the whole environment between invocations:
timers do not fire while frozen and fire late after, and pooled connections
may have died meanwhile, so the work that keeps the cache warm is driven by
INVOKE events, not by timers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

API_VERSION = "2020-01-01"
# How long the first ``next`` may wait for prefetch (the function's init
# ends only when every extension has called ``next``).
PREFETCH_WAIT = 1.0
# Past this long without an event, pooled upstream connections are presumed
# dead (the load balancer closes idle ones after about a minute, and the
# pool's own idle timer may not have fired while frozen).
POOL_STALE_AFTER = 45.0
# Kept back from SHUTDOWN's deadline for the process to exit.
EXIT_MARGIN = 0.3
# Failed ``next`` calls in a row before giving up (the API is local to the
# sandbox: failures mean it is going away).
MAX_NEXT_FAILURES = 3


Headers = dict[bytes | str, list[bytes | str]]


class HTTPClient(Protocol):
    """The part of ``treq.HTTPClient`` (and ``StubTreq``) used here."""

    def request(
        self, method: str, url: str, *, headers: Headers, data: bytes | None = None
    ) -> Deferred[Any]: ...


class ExtensionsAPIError(Exception):
    """The Extensions API refused a call or could not be reached."""


class ExtensionsAPIClient:
    """``event/next``, ``init/error`` and ``exit/error`` of the Extensions API.

    No timeout on ``next``: it is a long poll that returns when Lambda has an
    event, which may be much later (the environment may be frozen meanwhile).
    """

    def __init__(self, http: HTTPClient, runtime_api: str, identifier: str) -> None:
        self._http = http
        self._base = f"http://{runtime_api}/{API_VERSION}/extension"
        self._headers: Headers = {"Lambda-Extension-Identifier": [identifier]}

    async def next_event(self) -> dict[str, Any]:
        response = await self._http.request(
            "GET", f"{self._base}/event/next", headers=self._headers
        )
        body = await response.content()
        if response.code != 200:
            raise ExtensionsAPIError(f"event/next answered {response.code}")
        try:
            event = json.loads(body)
        except ValueError:
            raise ExtensionsAPIError("event/next answered invalid JSON") from None
        if not isinstance(event, dict):
            raise ExtensionsAPIError("event/next answered a non-object")
        return event

    async def report_error(self, phase: str, error_type: str, message: str) -> None:
        """``phase`` is ``init`` or ``exit``."""
        body = json.dumps(
            {"errorMessage": message, "errorType": error_type, "stackTrace": []}
        ).encode()
        response = await self._http.request(
            "POST",
            f"{self._base}/{phase}/error",
            data=body,
            headers={
                **self._headers,
                "Lambda-Extension-Function-Error-Type": [error_type],
                "Content-Type": ["application/json"],
            },
        )
        await response.content()


class EventSource(Protocol):
    def next_event(self) -> Any: ...


class ExtensionService(Service):
    """Waits (at most ``PREFETCH_WAIT``) for prefetch, then loops on
    ``event/next``. INVOKE runs ``on_invoke(gap)`` with the seconds since the
    previous event; SHUTDOWN calls ``shutdown(seconds_left)``, and so does
    losing the Extensions API."""

    log = Logger()

    def __init__(
        self,
        events: EventSource,
        clock: IReactorTime,
        prefetched: Callable[[], Deferred[Any]],
        on_invoke: Callable[[float], None],
        shutdown: Callable[[float, int], None],
    ) -> None:
        self._events = events
        self._clock = clock
        self._prefetched = prefetched
        self._on_invoke = on_invoke
        self._shutdown = shutdown
        self._waiting: Deferred[Any] | None = None
        self._timer: IDelayedCall | None = None
        self._last_event = 0.0
        self._failures = 0
        self.invocations = 0

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._last_event = self._clock.seconds()
        done = self._prefetched()
        started = [False]

        def go(_: object = None) -> None:
            if not started[0] and self.running:
                started[0] = True
                if self._timer is not None and self._timer.active():
                    self._timer.cancel()
                self._next()

        done.addBoth(go)
        if not started[0]:
            self._timer = self._clock.callLater(PREFETCH_WAIT, go)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()

    def _next(self) -> None:
        d = ensureDeferred(self._events.next_event())
        self._waiting = d
        d.addCallbacks(self._event, self._failed)

    def _event(self, event: dict[str, Any]) -> None:
        self._waiting = None
        self._failures = 0
        now = self._clock.seconds()
        gap, self._last_event = now - self._last_event, now
        kind = event.get("eventType")
        if kind == "SHUTDOWN":
            left = _seconds_left(event.get("deadlineMs"), now)
            self.log.info(
                "SHUTDOWN ({reason}); {left:.2f}s left",
                reason=str(event.get("shutdownReason", "unknown"))[:32],
                left=left,
            )
            self._shutdown(left, 0)
            return
        if kind == "INVOKE":
            self.invocations += 1
            try:
                self._on_invoke(gap)
            except Exception:
                self.log.failure("while handling INVOKE")
        else:
            self.log.warn("ignoring event of type {kind}", kind=str(kind)[:32])
        if self.running:
            self._next()

    def _failed(self, failure: Failure) -> None:
        self._waiting = None
        if not self.running:
            return
        self._failures += 1
        self.log.error(
            "event/next failed ({n} of {max}): {error}",
            n=self._failures,
            max=MAX_NEXT_FAILURES,
            error=failure.getErrorMessage()[:200],
        )
        if self._failures >= MAX_NEXT_FAILURES:
            self._shutdown(1.0, 1)
            return
        self._timer = self._clock.callLater(0.1 * self._failures, self._retry)

    def _retry(self) -> None:
        if self.running:
            self._next()


def _seconds_left(deadline_ms: object, now: float) -> float:
    if isinstance(deadline_ms, (int, float)) and not isinstance(deadline_ms, bool):
        return max(0.0, deadline_ms / 1000.0 - now - EXIT_MARGIN)
    return 1.0
