"""The real server (``python -m secretcache`` and ``twistd -n secretcache``)
against moto's Secrets Manager server, both on free loopback ports."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import trustme
from twisted.trial.unittest import SynchronousTestCase

from tests.support import (
    REGION,
    Answer,
    Moto,
    Secretcache,
    clean_environment,
    free_port,
    http_request,
    shared_moto,
    wait_for_port,
)

TOKEN = "integration-token-5f2b"
AUTH = {"X-Aws-Parameters-Secrets-Token": TOKEN}
DB_SECRET = {"username": "app", "password": "pw-7c1e9a-integration"}


class MotoTestCase(SynchronousTestCase):
    """Tests against the shared moto server, through the counting proxy."""

    def setUp(self) -> None:
        self.moto, self.proxy = shared_moto()
        self.sm = self.moto.client()

    def start(
        self, env: dict[str, str] | None = None, args: Sequence[str] = ()
    ) -> Secretcache:
        env = {"AWS_ENDPOINT_URL_SECRETS_MANAGER": self.proxy.url, **(env or {})}
        server = Secretcache(env, args)
        self.addCleanup(server.cleanup)
        return server

    def secret(self, name: str, value: Any = None, **kwargs: Any) -> str:
        name = f"{self.id().rsplit('.', 1)[-1]}/{name}"
        if value is not None:
            kwargs["SecretString"] = (
                value if isinstance(value, str) else json.dumps(value)
            )
        self.sm.create_secret(Name=name, **kwargs)
        return name

    def assertNoSecretsIn(self, text: str, *values: str) -> None:
        for value in (TOKEN, DB_SECRET["password"], *values):
            self.assertNotIn(value, text)


class AWSDialectTests(MotoTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = self.start({"SECRETCACHE_TOKEN": TOKEN})

    def test_code_written_for_the_aws_agent_works(self) -> None:
        name = self.secret("db", DB_SECRET)
        answer = self.server.request(
            "GET", f"/secretsmanager/get?secretId={name}", headers=AUTH
        )
        self.assertEqual(answer.status, 200, answer.body)
        body = answer.json()
        self.assertEqual(json.loads(body["SecretString"]), DB_SECRET)
        expected = self.sm.get_secret_value(SecretId=name)
        self.assertEqual(body["ARN"], expected["ARN"])
        self.assertEqual(body["VersionId"], expected["VersionId"])
        self.assertEqual(body["VersionStages"], ["AWSCURRENT"])
        self.assertIsInstance(body["CreatedDate"], (int, float))
        self.assertEqual(answer.headers["cache-control"], "no-store")
        self.assertEqual(answer.headers["x-secretcache-cache"], "miss")
        again = self.server.request("GET", f"/v1/{name}", headers=AUTH)
        self.assertEqual(
            again.headers["x-secretcache-cache"], "hit"
        )  # other route, same key
        self.assertEqual(again.body, answer.body)
        again = self.server.request("GET", f"/v1/{name}", headers=AUTH)
        self.assertEqual(again.headers["x-secretcache-cache"], "hit")
        self.assertEqual(self.proxy.calls[name], 1)
        self.assertEqual(self.server.stop(), 0, "SIGTERM is a clean exit")
        self.assertNoSecretsIn(self.server.output())

    def test_versions_and_stages(self) -> None:
        name = self.secret("rotated", "old")
        self.sm.put_secret_value(SecretId=name, SecretString="new")
        current = self.server.request("GET", f"/v1/{name}", headers=AUTH).json()
        previous = self.server.request(
            "GET", f"/v1/{name}?versionStage=AWSPREVIOUS", headers=AUTH
        ).json()
        self.assertEqual(
            (current["SecretString"], previous["SecretString"]), ("new", "old")
        )
        by_id = self.server.request(
            "GET", f"/v1/{name}?versionId={previous['VersionId']}", headers=AUTH
        ).json()
        self.assertEqual(by_id["SecretString"], "old")

    def test_binary_secret(self) -> None:
        name = self.secret("bin", SecretBinary=b"\x00\x01binary\xff")
        body = self.server.request("GET", f"/v1/{name}", headers=AUTH).json()
        self.assertEqual(base64.b64decode(body["SecretBinary"]), b"\x00\x01binary\xff")

    def test_upstream_errors_are_mapped(self) -> None:
        answer = self.server.request("GET", "/v1/does-not-exist", headers=AUTH)
        self.assertEqual(answer.status, 404)
        self.assertEqual(answer.json()["__type"], "ResourceNotFoundException")

    def test_token_is_required(self) -> None:
        name = self.secret("guarded", "v")
        answer = self.server.request("GET", f"/v1/{name}")
        self.assertEqual(answer.status, 403)
        self.assertEqual(self.proxy.calls[name], 0)

    def test_concurrent_cold_requests_cost_one_upstream_call(self) -> None:
        name = self.secret("cold", "v")
        self.proxy.delay = 0.3
        self.addCleanup(setattr, self.proxy, "delay", 0.0)
        with ThreadPoolExecutor(50) as pool:
            answers = list(
                pool.map(
                    lambda _: self.server.request(
                        "GET", f"/secretsmanager/get?secretId={name}", headers=AUTH
                    ),
                    range(50),
                )
            )
        self.assertEqual({a.status for a in answers}, {200})
        self.assertEqual({a.headers["x-secretcache-cache"] for a in answers}, {"miss"})
        self.assertEqual(self.proxy.calls[name], 1)

    def test_keep_alive_serves_many_requests_on_one_connection(self) -> None:
        name = self.secret("ka", "v")
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.server.port, timeout=10
        )
        self.addCleanup(connection.close)
        for _ in range(3):
            connection.request("GET", f"/v1/{name}", headers=AUTH)
            response = connection.getresponse()
            self.assertEqual(response.status, 200)
            self.assertEqual(
                int(response.getheader("Content-Length") or -1), len(response.read())
            )

    def test_ready_once_credentials_resolve(self) -> None:
        answer = self.server.request("GET", "/ready")
        for _ in range(50):
            if answer.status == 200:
                break
            time.sleep(0.1)
            answer = self.server.request("GET", "/ready")
        self.assertEqual((answer.status, answer.body), (200, b"ready"))


class LegacyClientTests(MotoTestCase):
    """The Go server's known client: POST, body [], no token, refresh bursts."""

    def setUp(self) -> None:
        super().setUp()
        self.server = self.start(
            {"SECRETCACHE_NO_TOKEN": "1", "SECRETCACHE_LEGACY_ERRORS": "1"}
        )

    def legacy(self, name: str, refresh: int) -> Answer:
        return self.server.request(
            "POST",
            f"/cache?name={name}&refresh={refresh}",
            body=b"[]",
            headers={"Content-Type": "application/json"},
        )

    def test_known_client_reads_the_password(self) -> None:
        name = self.secret("db", DB_SECRET)
        answer = self.legacy(name, 0)
        self.assertEqual(answer.status, 200)
        self.assertEqual(json.loads(answer.body)["password"], DB_SECRET["password"])

    def test_refresh_burst_costs_one_upstream_call(self) -> None:
        name = self.secret("burst", DB_SECRET)
        self.legacy(name, 0)
        time.sleep(1.1)
        outcomes = [
            self.legacy(name, 1).headers["x-secretcache-cache"] for _ in range(2)
        ]
        self.assertEqual(outcomes, ["refresh", "refresh"])
        self.assertEqual(self.proxy.calls[name], 2)

    def test_refresh_sees_a_rotated_password(self) -> None:
        name = self.secret("rotate", {"password": "one"})
        self.legacy(name, 0)
        self.sm.put_secret_value(
            SecretId=name, SecretString=json.dumps({"password": "two"})
        )
        time.sleep(1.1)
        self.assertEqual(json.loads(self.legacy(name, 0).body)["password"], "one")
        self.assertEqual(json.loads(self.legacy(name, 1).body)["password"], "two")

    def test_legacy_errors_close_the_connection_so_the_client_falls_back(self) -> None:
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionResetError)):
            self.legacy("does-not-exist", 0)
        # The AWS dialect keeps its JSON errors.
        answer = self.server.request("GET", "/v1/does-not-exist")
        self.assertEqual(answer.status, 404)


class StartupTests(SynchronousTestCase):
    def run_cli(
        self, env: dict[str, str], *args: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "secretcache", *args],
            env=clean_environment(AWS_REGION=REGION, **env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def test_refuses_to_start_without_a_token(self) -> None:
        result = self.run_cli({}, "--port", f"tcp:{free_port()}:interface=127.0.0.1")
        self.assertNotEqual(result.returncode, 0)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("SECRETCACHE_TOKEN", lines[0])
        self.assertIn("--no-token", lines[0])

    def test_bad_value_stops_start_with_one_line(self) -> None:
        result = self.run_cli({"SECRETCACHE_TOKEN": TOKEN}, "--ttl", "soon")
        self.assertEqual(result.returncode, 2)
        self.assertEqual(
            result.stderr.strip(),
            "secretcache: invalid --ttl value 'soon': "
            "expected seconds or a duration such as 90s, 5m, 1h30m",
        )

    def test_endpoints_twisted_cannot_use_stop_start_with_one_line(self) -> None:
        # ssl: wants a certificate file; systemd: a socket passed in by systemd.
        for port in ("ssl:0:privateKey=/nonexistent/key.pem", "systemd:domain=INET"):
            result = self.run_cli({"SECRETCACHE_TOKEN": TOKEN}, "--port", port)
            self.assertEqual(result.returncode, 2, result.stderr)
            lines = result.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, result.stderr)
            self.assertIn("invalid listener (--port / SECRETCACHE_PORT)", lines[0])
            self.assertNotIn("Traceback", result.stderr)

    def test_no_token_on_all_interfaces_is_refused(self) -> None:
        result = self.run_cli({}, "--no-token", "--port", "tcp:0")
        self.assertEqual(result.returncode, 2)
        self.assertIn("non-loopback", result.stderr)

    def test_version(self) -> None:
        from secretcache._version import __version__

        self.assertEqual(
            self.run_cli({}, "--version").stdout.strip(), f"secretcache {__version__}"
        )

    def test_help_lists_every_option_with_its_environment(self) -> None:
        from secretcache.config import OPTIONS

        out = self.run_cli({}, "--help").stdout
        self.assertTrue(out.startswith("Usage: python -m secretcache [options]\n"))
        for spec in OPTIONS:
            self.assertIn(f"--{spec.name}", out)
            for var in spec.env:
                self.assertIn(var, out.replace("\n", " ").replace(" ", ""))

    def test_twistd_plugin_serves_and_stops_cleanly(self) -> None:
        twistd = shutil.which("twistd", path=os.path.dirname(sys.executable))
        self.assertIsNotNone(twistd, "twistd is installed beside the interpreter")
        port = free_port()
        process = subprocess.Popen(
            [
                str(twistd),
                "-n",
                "--pidfile=",
                "secretcache",
                "--port",
                f"tcp:{port}:interface=127.0.0.1",
            ],
            env=clean_environment(
                AWS_REGION=REGION,
                SECRETCACHE_TOKEN=TOKEN,
                AWS_ACCESS_KEY_ID="x",
                AWS_SECRET_ACCESS_KEY="y",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.mktemp_dir(),
        )
        try:
            wait_for_port(port, process)
            self.assertEqual(http_request(port, "GET", "/ping").body, b"healthy")
        finally:
            process.terminate()
            output = process.communicate(timeout=15)[0].decode()
        self.assertEqual(process.returncode, 0, output)
        self.assertNotIn(TOKEN, output)

    def test_port_in_use_is_one_line_and_exit_1_under_both_commands(self) -> None:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        twistd = shutil.which("twistd", path=os.path.dirname(sys.executable))
        assert twistd is not None
        commands = [
            [twistd, "-n", "--pidfile=", "secretcache"],
            [sys.executable, "-m", "secretcache"],
        ]
        for command in commands:
            done = subprocess.run(
                [*command, "--port", f"tcp:{port}:interface=127.0.0.1"],
                env=clean_environment(
                    AWS_REGION=REGION,
                    SECRETCACHE_TOKEN=TOKEN,
                    AWS_ACCESS_KEY_ID="x",
                    AWS_SECRET_ACCESS_KEY="y",
                ),
                capture_output=True,
                text=True,
                timeout=60,
                cwd=self.mktemp_dir(),
            )
            output = done.stdout + done.stderr
            self.assertEqual(done.returncode, 1, output)
            self.assertNotIn("Traceback", output)
            lines = [line for line in output.splitlines() if "cannot start" in line]
            self.assertEqual(len(lines), 1, output)
            self.assertIn("Address already in use", lines[0])

    def mktemp_dir(self) -> str:
        path: str = self.mktemp()
        os.makedirs(path)
        return path


class SignatureTests(SynchronousTestCase):
    """moto checks SigV4 signatures and IAM policies after its first calls."""

    def setUp(self) -> None:
        # Calls before checking starts: user, policy, key, secret.
        self.moto = Moto(auth_after=4)
        self.addCleanup(self.moto.stop)
        iam = self.moto.client("iam")
        iam.create_user(UserName="app")
        iam.put_user_policy(
            UserName="app",
            PolicyName="read",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": "secretsmanager:GetSecretValue",
                            "Resource": "*",
                        }
                    ],
                }
            ),
        )
        key = iam.create_access_key(UserName="app")["AccessKey"]
        self.key_id, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        self.moto.client().create_secret(Name="signed", SecretString="signed-value")

    def serve(self, secret_key: str) -> Secretcache:
        server = Secretcache(
            {
                "SECRETCACHE_TOKEN": TOKEN,
                "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.moto.url,
                "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": secret_key,
            },
            ["--max-attempts", "1"],
        )
        self.addCleanup(server.cleanup)
        return server

    def test_correctly_signed_request_is_accepted(self) -> None:
        answer = self.serve(self.secret_key).request("GET", "/v1/signed", headers=AUTH)
        self.assertEqual(answer.status, 200, answer.body)
        self.assertEqual(answer.json()["SecretString"], "signed-value")

    def test_wrongly_keyed_request_is_a_502(self) -> None:
        server = self.serve(self.secret_key[:-4] + "AAAA")
        answer = server.request("GET", "/v1/signed", headers=AUTH)
        self.assertEqual(answer.status, 502, answer.body)
        self.assertEqual(answer.json()["__type"], "UpstreamError")
        self.assertNotIn(self.secret_key[:-4], server.output())


class TLSTests(SynchronousTestCase):
    """moto over HTTPS with a certificate from a test CA."""

    def setUp(self) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        directory = self.mktemp()
        os.makedirs(directory)
        self.ca_path = os.path.join(directory, "ca.pem")
        cert_path = os.path.join(directory, "cert.pem")
        key_path = os.path.join(directory, "key.pem")
        ca.cert_pem.write_to_path(self.ca_path)
        cert.cert_chain_pems[0].write_to_path(cert_path)
        cert.private_key_pem.write_to_path(key_path)
        self.moto = Moto(cert=(cert_path, key_path))
        self.addCleanup(self.moto.stop)
        self.moto.client().create_secret(Name="tls", SecretString="over-tls")

    def serve(self, **env: str) -> Secretcache:
        server = Secretcache(
            {
                "SECRETCACHE_TOKEN": TOKEN,
                "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.moto.url,
                **env,
            },
            ["--max-attempts", "1"],
        )
        self.addCleanup(server.cleanup)
        return server

    def test_certificate_from_aws_ca_bundle_is_trusted(self) -> None:
        answer = self.serve(AWS_CA_BUNDLE=self.ca_path).request(
            "GET", "/v1/tls", headers=AUTH
        )
        self.assertEqual(answer.status, 200, answer.body)
        self.assertEqual(answer.json()["SecretString"], "over-tls")

    def test_unknown_certificate_is_refused(self) -> None:
        answer = self.serve().request("GET", "/v1/tls", headers=AUTH)
        self.assertEqual(answer.status, 502, answer.body)
        self.assertIn("TLS", answer.json()["message"])
