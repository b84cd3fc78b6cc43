"""Prometheus metrics for ``GET /metrics``, and the access log.

Every label value comes from a small fixed set (route names, HTTP statuses,
cache outcomes, upstream outcomes): a secret's id or value never becomes a
label, and the number of series stays bounded whatever clients send.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.logger import Logger

from secretcache.api import RequestObserver
from secretcache.cache import CacheObserver, Outcome
from secretcache.upstream import UpstreamObserver

# Seconds; Secrets Manager answers in tens of ms, timeouts are seconds.
_UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_ROUTES = frozenset(
    {"cache", "secretsmanager/get", "v1", "ping", "ready", "metrics", "unknown"}
)


class _FunctionCounter(Collector):
    """A counter whose value is read from our own state at scrape time."""

    def __init__(self, name: str, documentation: str, read: Callable[[], int]) -> None:
        self._name = name
        self._documentation = documentation
        self._read = read

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._read())


class Metrics(RequestObserver, CacheObserver, UpstreamObserver):
    """Observes the API, the cache and the upstream client; renders the text
    exposition format. One registry of its own, so tests can make several."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(
            "secretcache_requests",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=r,
        )
        self._cache = Counter(
            "secretcache_cache_requests",
            "Secret requests by how the cache answered them "
            "(hit, miss, refresh, stale).",
            ["outcome"],
            registry=r,
        )
        for outcome in Outcome:
            self._cache.labels(outcome.value.decode())
        self._evictions = Counter(
            "secretcache_cache_evictions",
            "Entries evicted (least recently used) or purged past the stale window.",
            registry=r,
        )
        self._refresh_ahead = Counter(
            "secretcache_cache_refresh_ahead",
            "Background refreshes of entries in use before they expire.",
            registry=r,
        )
        self._upstream = Counter(
            "secretcache_upstream_calls",
            "GetSecretValue attempts by outcome.",
            ["outcome"],
            registry=r,
        )
        self._upstream_seconds = Histogram(
            "secretcache_upstream_duration_seconds",
            "Duration of GetSecretValue attempts.",
            buckets=_UPSTREAM_BUCKETS,
            registry=r,
        )
        self._entries = Gauge(
            "secretcache_cache_entries", "Entries in the cache.", registry=r
        )
        self._connections = Gauge(
            "secretcache_connections_open", "Open client connections.", registry=r
        )
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # Children by label values, so a request costs one dict lookup.
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._cache_children = {
            outcome: self._cache.labels(outcome.value.decode()) for outcome in Outcome
        }

    def watch(
        self,
        entries: Callable[[], int],
        connections: Callable[[], int],
        refused: Callable[[], int],
    ) -> None:
        """Gauges and counters read from the cache and the site at scrape time."""
        self._entries.set_function(lambda: float(entries()))
        self._connections.set_function(lambda: float(connections()))
        self.registry.register(
            _FunctionCounter(
                "secretcache_connections_refused",
                "Connections refused over --max-connections.",
                refused,
            )
        )

    def render(self) -> tuple[bytes, bytes]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST.encode()

    # RequestObserver
    def answered(
        self,
        route: str,
        method: bytes,
        status: int,
        outcome: Outcome | None,
        seconds: float,
    ) -> None:
        key = (route if route in _ROUTES else "unknown", status)
        child = self._request_children.get(key)
        if child is None:
            child = self._requests.labels(key[0], str(status))
            self._request_children[key] = child
        child.inc()

    # CacheObserver
    def outcome(self, outcome: Outcome) -> None:
        self._cache_children[outcome].inc()

    def evicted(self, count: int) -> None:
        self._evictions.inc(count)

    def refreshed_ahead(self) -> None:
        self._refresh_ahead.inc()

    # UpstreamObserver
    def attempt(self, outcome: str, seconds: float) -> None:
        self._upstream.labels(outcome).inc()
        self._upstream_seconds.observe(seconds)


# A module-level Logger keeps its namespace (a class attribute would take
# the class's name), so the access log can be routed or filtered by it.
_access_log = Logger(namespace="secretcache.access")


class AccessLog(RequestObserver):
    """One info event a request (``--access-log``): route, method, status,
    cache outcome, duration. Never the query string, the secret id or a
    header value."""

    def answered(
        self,
        route: str,
        method: bytes,
        status: int,
        outcome: Outcome | None,
        seconds: float,
    ) -> None:
        _access_log.info(
            "{method} {route} {status} {cache} {duration_ms}ms",
            method=method.decode("ascii", "replace")[:16],
            route=route,
            status=status,
            cache=outcome.value.decode() if outcome is not None else "-",
            duration_ms=round(seconds * 1000, 3),
        )


class RequestObservers(RequestObserver):
    """Fans one request out to several observers."""

    def __init__(self, observers: Sequence[RequestObserver]) -> None:
        self._observers = tuple(observers)

    def answered(
        self,
        route: str,
        method: bytes,
        status: int,
        outcome: Outcome | None,
        seconds: float,
    ) -> None:
        for observer in self._observers:
            observer.answered(route, method, status, outcome, seconds)
