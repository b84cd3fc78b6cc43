"""Metrics parsed with Prometheus's own parser, the access log and JSON log
lines: what they count, and that no secret id, value or token gets in."""

from __future__ import annotations

import io
import json
from typing import Any, cast

from prometheus_client.parser import text_string_to_metric_families
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher

from secretcache.api import SecretcacheAPI
from secretcache.config import Token
from secretcache.logs import make_observer
from secretcache.metrics import AccessLog, Metrics, RequestObservers
from secretcache.testing import StoredSecret
from tests.test_api import PASSWORD, TOKEN, APITestCase, stub_treq


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class MetricsTests(APITestCase):
    def setUp(self) -> None:
        super().setUp()
        self.metrics = Metrics()
        self.cache._observer = self.metrics
        self.metrics.watch(
            entries=lambda: len(self.cache), connections=lambda: 3, refused=lambda: 7
        )
        self.api = SecretcacheAPI(
            self.cache,
            token=Token(TOKEN, "test"),
            metrics=self.metrics.render,
            observer=self.metrics,
        )
        self.stub = stub_treq(self.api.resource())
        self.upstream.put(StoredSecret("secret-name-in-no-label", string=PASSWORD))

    def scrape(self) -> tuple[str, dict[Any, float]]:
        answer = self.request("GET", "/metrics")
        self.assertEqual(answer.status, 200)
        self.assertTrue((answer.header("content-type") or "").startswith("text/plain"))
        text = answer.body.decode()
        return text, samples(text)

    def test_requests_and_cache_outcomes_are_counted(self) -> None:
        for _ in range(2):
            self.get("/secretsmanager/get?secretId=secret-name-in-no-label")
        self.get("/v1/missing-secret-name")
        self.get("/secretsmanager/get?secretId=db", headers={})
        self.get("/nowhere")
        text, found = self.scrape()
        requests = "secretcache_requests_total"
        self.assertEqual(
            found[(requests, (("route", "secretsmanager/get"), ("status", "200")))], 2
        )
        self.assertEqual(found[(requests, (("route", "v1"), ("status", "404")))], 1)
        self.assertEqual(
            found[(requests, (("route", "secretsmanager/get"), ("status", "403")))], 1
        )
        self.assertEqual(
            found[(requests, (("route", "unknown"), ("status", "404")))], 1
        )
        cache = "secretcache_cache_requests_total"
        self.assertEqual(found[(cache, (("outcome", "hit"),))], 1)
        self.assertEqual(found[(cache, (("outcome", "miss"),))], 1)
        self.assertEqual(found[(cache, (("outcome", "stale"),))], 0)
        self.assertEqual(found[("secretcache_cache_entries", ())], 1)
        self.assertEqual(found[("secretcache_connections_open", ())], 3)
        self.assertEqual(found[("secretcache_connections_refused_total", ())], 7)
        self.assertIn(("process_resident_memory_bytes", ()), found)
        for secret in ("secret-name-in-no-label", "missing-secret-name", "hunter2"):
            self.assertNotIn(secret, text)
        self.assertNotIn(TOKEN, text)

    def test_upstream_attempts_are_counted_and_timed(self) -> None:
        self.metrics.attempt("ok", 0.03)
        self.metrics.attempt("5xx", 0.2)
        _, found = self.scrape()
        upstream = "secretcache_upstream_calls_total"
        self.assertEqual(found[(upstream, (("outcome", "ok"),))], 1)
        self.assertEqual(found[(upstream, (("outcome", "5xx"),))], 1)
        self.assertEqual(found[("secretcache_upstream_duration_seconds_count", ())], 2)
        bucket = "secretcache_upstream_duration_seconds_bucket"
        self.assertEqual(found[(bucket, (("le", "0.05"),))], 1)

    def test_metrics_need_no_token(self) -> None:
        self.assertEqual(self.request("GET", "/metrics").status, 200)

    def test_unknown_route_names_collapse_to_one_label(self) -> None:
        self.metrics.answered("/v1/made-up-by-a-client", b"GET", 200, None, 0.0)
        text, _ = self.scrape()
        self.assertNotIn("made-up-by-a-client", text)


class AccessLogTests(APITestCase):
    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.api = SecretcacheAPI(
            self.cache,
            token=Token(TOKEN, "test"),
            observer=RequestObservers([Metrics(), AccessLog()]),
        )
        self.stub = stub_treq(self.api.resource())

    def access_lines(self) -> list[dict[str, Any]]:
        return [
            e for e in self.events if e.get("log_namespace") == "secretcache.access"
        ]

    def test_one_line_a_request_with_route_status_outcome_and_duration(self) -> None:
        self.get("/secretsmanager/get?secretId=db&versionStage=AWSCURRENT")
        self.get("/secretsmanager/get?secretId=db", headers={"X-Vault-Token": "nope"})
        lines = self.access_lines()
        self.assertEqual(len(lines), 2)
        first, second = lines
        self.assertEqual(
            (first["route"], first["status"], first["cache"], first["method"]),
            ("secretsmanager/get", 200, "miss", "GET"),
        )
        self.assertIsInstance(first["duration_ms"], float)
        self.assertEqual((second["status"], second["cache"]), (403, "-"))
        self.assertEqual(first["log_level"], LogLevel.info)
        out = io.StringIO()
        observer = make_observer("info", "json", out)
        for event in lines:
            observer(event)
        text = out.getvalue()
        for forbidden in ("db", "AWSCURRENT", "nope", TOKEN, "hunter2"):
            self.assertNotIn(f'"{forbidden}', text)
            self.assertNotIn(forbidden + "&", text)
        for line in text.splitlines():
            record = json.loads(line)
            self.assertEqual(record["namespace"], "secretcache.access")
            self.assertEqual(record["level"], "info")
            self.assertIn("time", record)


class JSONLogTests(APITestCase):
    def test_json_lines_carry_time_level_namespace_message_and_fields(self) -> None:
        out = io.StringIO()
        observer = make_observer("info", "json", out)
        observer(
            {
                "log_format": "fetched {count} entries",
                "log_level": LogLevel.info,
                "log_namespace": "secretcache.test",
                "log_time": 1764780000.0,
                "count": 3,
                "opaque": object(),
            }
        )
        observer(
            {
                "log_format": "hidden",
                "log_level": LogLevel.debug,
                "log_namespace": "x",
                "log_time": 0.0,
            }
        )
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        record = json.loads(lines[0])
        self.assertEqual(
            record,
            {
                "time": "2025-12-03T16:40:00.000+00:00",
                "level": "info",
                "namespace": "secretcache.test",
                "message": "fetched 3 entries",
                "count": 3,
            },
        )

    def test_connection_pool_chatter_is_dropped_below_warn(self) -> None:
        out = io.StringIO()
        observer = make_observer("info", "text", out)
        namespace = "twisted.web.client._HTTP11ClientFactory"
        for level in (LogLevel.info, LogLevel.warn):
            observer(
                {
                    "log_format": "{level} from the pool",
                    "log_level": level,
                    "log_namespace": namespace,
                    "log_time": 0.0,
                    "level": level.name,
                }
            )
        self.assertNotIn("info from the pool", out.getvalue())
        self.assertIn("warn from the pool", out.getvalue())

    def test_web_request_info_events_naming_the_uri_are_dropped(self) -> None:
        out = io.StringIO()
        observer = make_observer("info", "text", out)
        observer(
            {
                "log_format": "Warning: HEAD request {uri}",
                "log_level": LogLevel.info,
                "log_namespace": "twisted.web.server.Request",
                "log_time": 0.0,
                "uri": "/cache?name=prod/db",
            }
        )
        self.assertEqual(out.getvalue(), "")
