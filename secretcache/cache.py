"""``SecretCache``: entries with a TTL in LRU order, coalesced fetches, the
forced-refresh window, stale-if-error and refresh-ahead, all on an injected
clock.
"""

from __future__ import annotations

import enum
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from secretcache.errors import SecretcacheError, upstream_failure
from secretcache.secret import SecretKey, SecretValue

# A forced refresh within this many seconds of a successful fetch of the same
# key is answered from that fetch: a client's burst of retries costs one call.
REFRESH_WINDOW = 1.0
# Refresh-ahead starts when this share of the TTL has passed, plus jitter of up
# to REFRESH_AHEAD_JITTER of the TTL, so that a fleet started together does not
# refresh together.
REFRESH_AHEAD_AT = 0.75
REFRESH_AHEAD_JITTER = 0.15
# After a failed background refresh the next one waits this long, doubling
# with each failure up to the cap (and never past expiry): a hot key must not
# turn an upstream outage or a 403 into one call per cache hit. The cap is
# also how long stale values may outlast an outage, so it stays short.
REFRESH_RETRY_BASE = 1.0
REFRESH_RETRY_CAP = 5.0


class Outcome(enum.Enum):
    """How a request was answered; the value is the ``X-Secretcache-Cache`` header."""

    HIT = b"hit"
    MISS = b"miss"
    REFRESH = b"refresh"
    STALE = b"stale"


@dataclass(slots=True)
class CacheEntry:
    value: SecretValue
    fetched_at: float
    expires_at: float
    refresh_at: float
    # Read since the last fetch: only entries in use are refreshed ahead.
    read: bool = False
    # Failed refreshes since the last successful fetch.
    failures: int = 0
    # The last refresh failed transiently (Secrets Manager unreachable, not
    # an answer such as not-found): once expired, the entry is served stale
    # at once, and refreshed in the background from ``retry_at`` on.
    failing: bool = False
    retry_at: float = 0.0


@dataclass(slots=True)
class _Fetch:
    """One upstream call in flight, and the callers waiting on it."""

    waiters: list[tuple[Deferred[tuple[SecretValue, Outcome]], Outcome]] = field(
        default_factory=list
    )
    upstream: Deferred[None] | None = None


Fetcher = Callable[[SecretKey], "Deferred[SecretValue]"]


class CacheObserver:
    """Counts what the cache does; metrics subclass it. Does nothing by default."""

    def outcome(self, outcome: Outcome) -> None:
        pass

    def evicted(self, count: int) -> None:
        pass

    def refreshed_ahead(self) -> None:
        pass


class SecretCache:
    """Secrets by ``SecretKey``, fetched through ``fetch`` at most once at a time."""

    log = Logger()

    def __init__(
        self,
        fetch: Fetcher,
        clock: IReactorTime,
        *,
        ttl: float = 300.0,
        max_entries: int = 1000,
        stale_if_error: float = 3600.0,
        observer: CacheObserver | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._ttl = ttl
        self._max_entries = max_entries
        self._stale_if_error = stale_if_error
        self._observer = observer or CacheObserver()
        self._jitter = jitter
        self._entries: OrderedDict[SecretKey, CacheEntry] = OrderedDict()
        self._in_flight: dict[SecretKey, _Fetch] = {}
        # Keys whose last refresh failed transiently. When any fetch succeeds,
        # Secrets Manager is back: they are retried at once instead of each
        # waiting out its own back-off, so stale values end with the outage.
        self._failing: set[SecretKey] = set()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def lookup(self, key: SecretKey) -> SecretValue | None:
        """The fresh value for ``key``, or None; never waits, never fetches
        except to refresh ahead of expiry."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock.seconds()
        if now >= entry.expires_at:
            return None
        self._entries.move_to_end(key)
        entry.read = True
        if now >= entry.refresh_at and key not in self._in_flight:
            self._refresh_ahead(key)
        self._observer.outcome(Outcome.HIT)
        return entry.value

    def get(
        self, key: SecretKey, refresh: bool = False
    ) -> Deferred[tuple[SecretValue, Outcome]]:
        """The value for ``key`` and how it was obtained.

        Fails with ``SecretcacheError``. Cancelling the returned Deferred
        drops this caller only; the fetch it waits on goes on for the others.
        """
        if not refresh:
            value = self.lookup(key)
            if value is not None:
                return succeed((value, Outcome.HIT))
            value = self._stale_at_once(key)
            if value is not None:
                return succeed((value, Outcome.STALE))
            outcome = Outcome.MISS
        else:
            outcome = Outcome.REFRESH
            entry = self._entries.get(key)
            if (
                key not in self._in_flight
                and entry is not None
                and self._clock.seconds() - entry.fetched_at < REFRESH_WINDOW
            ):
                self._entries.move_to_end(key)
                entry.read = True
                self._observer.outcome(outcome)
                return succeed((entry.value, outcome))
        waiter: Deferred[tuple[SecretValue, Outcome]] = Deferred(
            lambda d: self._drop_waiter(key, d)
        )
        fetch = self._in_flight.get(key)
        if fetch is not None:
            fetch.waiters.append((waiter, outcome))
        else:
            self._start_fetch(key, waiter=(waiter, outcome))
        return waiter

    def _stale_at_once(self, key: SecretKey) -> SecretValue | None:
        """The value of an expired entry whose last refresh failed
        transiently, inside the stale window: Secrets Manager was just found
        unreachable, so waiting on another attempt would only delay the same
        stale answer (by up to --request-timeout on a black hole). A retry
        runs in the background once the backoff allows."""
        entry = self._entries.get(key)
        if entry is None or not entry.failing:
            return None
        now = self._clock.seconds()
        if now >= entry.expires_at + self._stale_if_error:
            return None
        if now >= entry.retry_at and key not in self._in_flight:
            self._start_fetch(key)
        self._entries.move_to_end(key)
        self._observer.outcome(Outcome.STALE)
        return entry.value

    def prefetch(self, key: SecretKey) -> Deferred[None]:
        """Fetch ``key`` unless fresh; fires with None, or fails."""
        return self.get(key).addCallback(lambda _: None)

    def refresh_in_use(self) -> int:
        """Refresh now every unexpired entry read since its last fetch that has
        reached its refresh-ahead time. Called on a timer, and by the Lambda
        extension on INVOKE, since timers do not fire while Lambda freezes the
        process. An expired entry is left to the next request that wants it:
        nobody may read it again. Returns how many refreshes were started."""
        now = self._clock.seconds()
        started = 0
        for key, entry in list(self._entries.items()):
            if (
                entry.read
                and entry.refresh_at <= now < entry.expires_at
                and key not in self._in_flight
            ):
                self._refresh_ahead(key)
                started += 1
        return started

    def purge(self) -> int:
        """Drop entries too old to serve even as stale; returns how many."""
        now = self._clock.seconds()
        dead = [
            key
            for key, entry in self._entries.items()
            if now >= entry.expires_at + self._stale_if_error
        ]
        for key in dead:
            del self._entries[key]
        if dead:
            self._observer.evicted(len(dead))
        return len(dead)

    def stop(self) -> None:
        """Cancel every fetch in flight (their waiters fail): at shutdown, once
        requests have had their grace, so no timer or socket outlives us."""
        for fetch in list(self._in_flight.values()):
            if fetch.upstream is not None:
                fetch.upstream.cancel()

    def _refresh_ahead(self, key: SecretKey) -> None:
        self._observer.refreshed_ahead()
        self._start_fetch(key)

    def _drop_waiter(self, key: SecretKey, waiter: Deferred[object]) -> None:
        fetch = self._in_flight.get(key)
        if fetch is not None:
            fetch.waiters[:] = [w for w in fetch.waiters if w[0] is not waiter]

    def _start_fetch(
        self,
        key: SecretKey,
        waiter: tuple[Deferred[tuple[SecretValue, Outcome]], Outcome] | None = None,
    ) -> None:
        fetch = _Fetch(waiters=[waiter] if waiter else [])
        self._in_flight[key] = fetch
        try:
            d = self._fetch(key)
        except Exception:
            d = fail()
        fetch.upstream = d.addCallbacks(
            lambda value: self._fetched(key, fetch, value),
            lambda failure: self._failed(key, fetch, failure),
        )

    def _fetched(self, key: SecretKey, fetch: _Fetch, value: SecretValue) -> None:
        del self._in_flight[key]
        now = self._clock.seconds()
        self._failing.discard(key)
        for other in self._failing:
            entry = self._entries.get(other)
            if entry is not None:
                entry.retry_at = now
                entry.refresh_at = min(entry.refresh_at, now)
        # Once per recovery: a key that fails again backs off anew.
        self._failing.clear()
        if self._ttl > 0 and self._max_entries > 0:
            self._entries.pop(key, None)
            self._entries[key] = CacheEntry(
                value=value,
                fetched_at=now,
                expires_at=now + self._ttl,
                refresh_at=now
                + self._ttl
                * (REFRESH_AHEAD_AT + REFRESH_AHEAD_JITTER * self._jitter()),
            )
            if len(self._entries) > self._max_entries:
                evicted = 0
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
                    evicted += 1
                self._observer.evicted(evicted)
        for waiter, outcome in fetch.waiters:
            self._observer.outcome(outcome)
            waiter.callback((value, outcome))

    def _failed(self, key: SecretKey, fetch: _Fetch, failure: Failure) -> None:
        del self._in_flight[key]
        error = failure.value
        if not isinstance(error, SecretcacheError):
            if not failure.check(CancelledError):
                self.log.failure("unexpected failure fetching a secret", failure)
            error = upstream_failure("internal error while fetching the secret")
        entry = self._entries.get(key)
        now = self._clock.seconds()
        stale_ok = (
            error.transient
            and entry is not None
            and now < entry.expires_at + self._stale_if_error
        )
        if entry is not None and not error.transient and now >= entry.expires_at:
            # Not found, access denied and the like are authoritative: the held
            # value must not be served again once it expires.
            del self._entries[key]
        elif entry is not None:
            delay = min(
                REFRESH_RETRY_CAP, REFRESH_RETRY_BASE * 2 ** min(entry.failures, 8)
            )
            entry.failures += 1
            # Jittered like the refresh point itself, so keys do not retry in step.
            delay *= 1.0 + self._jitter()
            entry.retry_at = now + delay
            entry.refresh_at = min(entry.expires_at, entry.retry_at)
            entry.failing = error.transient
            if error.transient:
                self._failing.add(key)
            else:
                self._failing.discard(key)
        if not fetch.waiters:
            self.log.info(
                "background refresh failed: {code}",
                code=error.code,
                status=error.status,
            )
        for waiter, outcome in fetch.waiters:
            if stale_ok and outcome is not Outcome.REFRESH and entry is not None:
                self._observer.outcome(Outcome.STALE)
                waiter.callback((entry.value, Outcome.STALE))
            else:
                waiter.errback(Failure(error))
