"""Real parts for integration tests: moto's server and secretcache itself as
child processes on free loopback ports, and a counting proxy between them.
Everything here reaches only 127.0.0.1."""

from __future__ import annotations

import atexit
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3

REGION = "us-east-1"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(
    port: int, process: subprocess.Popen[Any] | None, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"process exited with {process.returncode} before listening"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


def clean_environment(**extra: str) -> dict[str, str]:
    """The test process's environment without anything AWS or secretcache:
    a developer's own credentials or settings must not leak into a test."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "SECRETCACHE_", "PARAMETERS_SECRETS_"))
        and k
        not in (
            "SECRETS_MANAGER_TTL",
            "CACHE_EXTENSION_TTL",
            "SECRETS_MANAGER_TIMEOUT_MILLIS",
            "INITIAL_NO_AUTH_ACTION_COUNT",
        )
    }
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env.update(extra)
    return env


class Moto:
    """moto's server as a child process."""

    def __init__(
        self, *, auth_after: int | None = None, cert: tuple[str, str] | None = None
    ):
        self.port = free_port()
        scheme = "https" if cert else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        args = [
            sys.executable,
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        if cert:
            args += ["--ssl-cert", cert[0], "--ssl-key", cert[1]]
        env = clean_environment(**FAKE_CREDENTIALS)
        if auth_after is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(auth_after)
        self.process = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port, self.process)

    def client(self, service: str = "secretsmanager", **credentials: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=credentials.get("key", "testing"),
            aws_secret_access_key=credentials.get("secret", "testing"),
            verify=False,
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


_shared: dict[str, Any] = {}


def shared_moto() -> tuple[Moto, CountingProxy]:
    """One moto server and counting proxy for the whole test run (trial has no
    setUpClass); stopped when the test process exits."""
    if "moto" not in _shared:
        moto = Moto()
        proxy = CountingProxy(moto.port)
        _shared.update(moto=moto, proxy=proxy)
        atexit.register(moto.stop)
        atexit.register(proxy.stop)
    return _shared["moto"], _shared["proxy"]


class Answer:
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str] = {},
    body: bytes | None = None,
    host: str = "127.0.0.1",
    timeout: float = 15,
) -> Answer:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=dict(headers))
        response = connection.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


class Secretcache:
    """``python -m secretcache`` as a child process; its output is kept in a
    file so that tests can search it for secrets."""

    def __init__(
        self,
        env: Mapping[str, str],
        args: Sequence[str] = (),
        port: int | None = None,
        wait: bool = True,
    ) -> None:
        self.port = port or free_port()
        self.log = tempfile.NamedTemporaryFile(
            prefix="secretcache-", suffix=".log", delete=False
        )
        full_env = clean_environment(
            **{**FAKE_CREDENTIALS, "AWS_REGION": REGION, **env}
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "secretcache",
                "--port",
                f"tcp:{self.port}:interface=127.0.0.1",
                *args,
            ],
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            wait_for_port(self.port, self.process)

    def request(self, method: str, path: str, **kwargs: Any) -> Answer:
        return http_request(self.port, method, path, **kwargs)

    def output(self) -> str:
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode

    def cleanup(self) -> None:
        self.stop()
        os.unlink(self.log.name)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # Faults close sockets under the handler, and secretcache hangs up on
        # calls it has given up on: both are expected here.
        pass


class CountingProxy:
    """An HTTP proxy in front of moto that counts GetSecretValue calls by
    SecretId, and can answer in moto's place (``fault``) to inject failures."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.calls: Counter[str] = Counter()
        self.fault: Callable[[BaseHTTPRequestHandler, dict[str, Any]], bool] | None = (
            None
        )
        self.delay = 0.0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                try:
                    document = json.loads(body)
                except ValueError:
                    document = {}
                if "GetSecretValue" in (self.headers.get("X-Amz-Target") or ""):
                    with proxy._lock:
                        proxy.calls[document.get("SecretId", "")] += 1
                if proxy.delay:
                    time.sleep(proxy.delay)
                if proxy.fault is not None and proxy.fault(self, document):
                    return
                connection = http.client.HTTPConnection(
                    "127.0.0.1", proxy.target_port, timeout=30
                )
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() != "connection"
                }
                connection.request("POST", self.path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in (
                        "connection",
                        "transfer-encoding",
                        "content-length",
                        "date",
                        "server",
                    ):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                connection.close()

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
