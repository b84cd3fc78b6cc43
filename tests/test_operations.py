"""What operators see of the real server: JSON log lines (under
``python -m secretcache`` and under twistd) and ``/metrics``, scanned for
secrets and parsed with Prometheus's own parser."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    REGION,
    clean_environment,
    free_port,
    http_request,
    wait_for_port,
)
from tests.test_integration import AUTH, DB_SECRET, TOKEN, MotoTestCase


class JSONLogTests(MotoTestCase):
    def exercise(self, port: int, name: str) -> None:
        for path in (
            f"/secretsmanager/get?secretId={name}",
            f"/secretsmanager/get?secretId={name}",
            "/v1/OperationsTests-missing",
        ):
            http_request(port, "GET", path, headers=AUTH)
        http_request(port, "GET", f"/secretsmanager/get?secretId={name}")

    def check_lines(self, output: str, name: str) -> list[dict[str, object]]:
        records = []
        for line in output.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                self.fail(f"not a JSON line: {line!r}")
        for record in records:
            self.assertLessEqual({"time", "level", "namespace", "message"}, set(record))
        access = [r for r in records if r["namespace"] == "secretcache.access"]
        self.assertEqual(
            [(r["route"], r["status"], r["cache"]) for r in access],
            [
                ("secretsmanager/get", 200, "miss"),
                ("secretsmanager/get", 200, "hit"),
                ("v1", 404, "-"),
                ("secretsmanager/get", 403, "-"),
            ],
        )
        for secret in (TOKEN, DB_SECRET["password"], name, "OperationsTests-missing"):
            self.assertNotIn(secret, output)
        return records

    def test_python_m_writes_only_json_lines(self) -> None:
        name = self.secret("json-log", DB_SECRET)
        server = self.start(
            {"SECRETCACHE_TOKEN": TOKEN},
            ["--log-format", "json", "--access-log"],
        )
        self.exercise(server.port, name)
        self.assertEqual(server.stop(), 0)
        records = self.check_lines(server.output(), name)
        self.assertTrue(any("shutting down" in str(r["message"]) for r in records))

    def test_twistd_writes_only_json_lines(self) -> None:
        twistd = shutil.which("twistd", path=os.path.dirname(sys.executable))
        assert twistd is not None
        name = self.secret("json-log-twistd", DB_SECRET)
        port = free_port()
        directory = self.mktemp()
        os.makedirs(directory)
        process = subprocess.Popen(
            [
                twistd,
                "-n",
                "--pidfile=",
                "secretcache",
                "--port",
                f"tcp:{port}:interface=127.0.0.1",
                "--log-format",
                "json",
                "--access-log",
            ],
            env=clean_environment(
                AWS_REGION=REGION,
                SECRETCACHE_TOKEN=TOKEN,
                AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing",
                AWS_ENDPOINT_URL_SECRETS_MANAGER=self.proxy.url,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=directory,
        )
        try:
            wait_for_port(port, process)
            self.exercise(port, name)
        finally:
            process.terminate()
            out, err = process.communicate(timeout=15)
        self.assertEqual(process.returncode, 0, err)
        self.assertEqual(err, b"")
        records = self.check_lines(out.decode(), name)
        self.assertTrue(any(str(r["namespace"]).startswith("twisted") for r in records))


class MetricsEndpointTests(MotoTestCase):
    def test_metrics_parse_and_count_what_happened(self) -> None:
        name = self.secret("metrics", DB_SECRET)
        server = self.start({"SECRETCACHE_TOKEN": TOKEN})
        for _ in range(3):
            server.request("GET", f"/secretsmanager/get?secretId={name}", headers=AUTH)
        answer = server.request("GET", "/metrics")
        self.assertEqual(answer.status, 200)
        text = answer.body.decode()
        values = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        self.assertEqual(
            values[("secretcache_cache_requests_total", (("outcome", "hit"),))], 2
        )
        self.assertEqual(
            values[("secretcache_upstream_calls_total", (("outcome", "ok"),))], 1
        )
        self.assertGreater(values[("process_resident_memory_bytes", ())], 10e6)
        self.assertNotIn(name, text)
        self.assertNotIn(DB_SECRET["password"], text)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class LoopbackPairTests(MotoTestCase):
    def test_both_loopbacks_answer_on_the_aws_agents_port_variable(self) -> None:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "secretcache"],
            env=clean_environment(
                AWS_REGION=REGION,
                SECRETCACHE_TOKEN=TOKEN,
                AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing",
                PARAMETERS_SECRETS_EXTENSION_HTTP_PORT=str(port),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port, process)
            self.assertEqual(http_request(port, "GET", "/ping").body, b"healthy")
            if _has_ipv6_loopback():
                answer = http_request(port, "GET", "/ping", host="::1")
                self.assertEqual(answer.body, b"healthy")
            else:
                # Without IPv6 the ::1 half is skipped, not fatal: we got here.
                self.assertIsNone(process.poll())
        finally:
            process.terminate()
            process.wait(10)
