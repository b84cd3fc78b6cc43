"""Prometheus metrics for ``GET /metrics``, and the access log.

Every label value comes from a small fixed set (route names, HTTP statuses,
cache outcomes, upstream outcomes): a secret's id or value never becomes a
label, and the number of series stays bounded whatever clients send.

Counting is plain integer arithmetic on the request path; prometheus-client
is imported and its metric families built only when ``/metrics`` is
scraped, so a server nobody scrapes neither pays for it per request nor
holds it in memory.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.logger import Logger

from secretcache.api import RequestObserver
from secretcache.cache import CacheObserver, Outcome
from secretcache.upstream import UpstreamObserver

# Seconds; Secrets Manager answers in tens of ms, timeouts are seconds.
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_ROUTES = frozenset(
    {"cache", "secretsmanager/get", "v1", "ping", "ready", "metrics", "unknown"}
)


class Metrics(RequestObserver, CacheObserver, UpstreamObserver):
    """Observes the API, the cache and the upstream client; renders the text
    exposition format from a registry of its own (tests can make several)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.cache_outcomes = dict.fromkeys(Outcome, 0)
        self.evictions = 0
        self.refresh_ahead = 0
        self.upstream_calls: dict[str, int] = {}
        # Per bucket (upper bounds above, then +Inf), not cumulative.
        self.upstream_buckets = [0] * (len(UPSTREAM_BUCKETS) + 1)
        self.upstream_seconds = 0.0
        self._entries: Callable[[], int] = lambda: 0
        self._connections: Callable[[], int] = lambda: 0
        self._refused: Callable[[], int] = lambda: 0
        self._registry: Any = None

    def watch(
        self,
        entries: Callable[[], int],
        connections: Callable[[], int],
        refused: Callable[[], int],
    ) -> None:
        """Values read from the cache and the site at scrape time."""
        self._entries, self._connections, self._refused = entries, connections, refused

    def render(self) -> tuple[bytes, bytes]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if self._registry is None:
            self._registry = _registry(self)
        return generate_latest(self._registry), CONTENT_TYPE_LATEST.encode()

    def families(self) -> Iterable[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        requests = CounterMetricFamily(
            "secretcache_requests",
            "HTTP requests answered, by route and status.",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(self.requests.items()):
            requests.add_metric([route, str(status)], count)
        yield requests
        cache = CounterMetricFamily(
            "secretcache_cache_requests",
            "Secret requests by how the cache answered them "
            "(hit, miss, refresh, stale).",
            labels=["outcome"],
        )
        for outcome, count in self.cache_outcomes.items():
            cache.add_metric([outcome.value.decode()], count)
        yield cache
        yield CounterMetricFamily(
            "secretcache_cache_evictions",
            "Entries evicted (least recently used) or purged past the stale window.",
            value=self.evictions,
        )
        yield CounterMetricFamily(
            "secretcache_cache_refresh_ahead",
            "Background refreshes of entries in use before they expire.",
            value=self.refresh_ahead,
        )
        upstream = CounterMetricFamily(
            "secretcache_upstream_calls",
            "GetSecretValue attempts by outcome.",
            labels=["outcome"],
        )
        for outcome_name, count in sorted(self.upstream_calls.items()):
            upstream.add_metric([outcome_name], count)
        yield upstream
        cumulative, buckets = 0, []
        for bound, count in zip(
            [*map(str, UPSTREAM_BUCKETS), "+Inf"], self.upstream_buckets, strict=True
        ):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "secretcache_upstream_duration_seconds",
            "Duration of GetSecretValue attempts.",
            buckets=buckets,
            sum_value=self.upstream_seconds,
        )
        yield GaugeMetricFamily(
            "secretcache_cache_entries", "Entries in the cache.", value=self._entries()
        )
        yield GaugeMetricFamily(
            "secretcache_connections_open",
            "Open client connections.",
            value=self._connections(),
        )
        yield CounterMetricFamily(
            "secretcache_connections_refused",
            "Connections refused over --max-connections.",
            value=self._refused(),
        )

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
        self.requests[key] = self.requests.get(key, 0) + 1

    # CacheObserver
    def outcome(self, outcome: Outcome) -> None:
        self.cache_outcomes[outcome] += 1

    def evicted(self, count: int) -> None:
        self.evictions += count

    def refreshed_ahead(self) -> None:
        self.refresh_ahead += 1

    # UpstreamObserver
    def attempt(self, outcome: str, seconds: float) -> None:
        self.upstream_calls[outcome] = self.upstream_calls.get(outcome, 0) + 1
        self.upstream_buckets[bisect.bisect_left(UPSTREAM_BUCKETS, seconds)] += 1
        self.upstream_seconds += seconds


def _registry(metrics: Metrics) -> Any:
    from prometheus_client import (
        CollectorRegistry,
        PlatformCollector,
        ProcessCollector,
    )

    class Families:
        def collect(self) -> Iterable[Any]:
            return metrics.families()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families())
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


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
