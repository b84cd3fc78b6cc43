"""The Lambda extension's start path.

Lambda starts the function's init as soon as every extension has registered,
so registering must not wait for our heavy imports (the reactor pulls in the
TLS stack; botocore, Klein and treq follow). In order, with the standard
library only: parse the configuration, bind and listen (so clients can
connect from the first moment; the kernel queues them), register; then
import Twisted, adopt the listening sockets and run the server with the
``event/next`` loop beside it. A bad configuration is reported with
``init/error`` after registering, and nothing listens.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from secretcache.config import (
    ConfigError,
    Settings,
    echo,
    load_settings,
    tcp_listener,
)

API_VERSION = "2020-01-01"
# register answers at once in Lambda; this only bounds a broken API.
REGISTER_TIMEOUT = 10.0


class StartError(Exception):
    """Why the extension cannot start; the message is one log line."""


def _log(message: str) -> None:
    # Before Twisted's logging is set up: one plain line on stderr, which
    # Lambda sends to CloudWatch with the function's own logs.
    sys.stderr.write(f"secretcache: {message}\n")
    sys.stderr.flush()


def extension_name(environ: Mapping[str, str]) -> str:
    """The name to register under: Lambda requires the launcher's file name,
    which the launcher passes down (this process may be an interpreter)."""
    return environ.get("SECRETCACHE_EXTENSION_NAME") or "secretcache"


def parse_options(args: Sequence[str]) -> dict[str, Any]:
    """Command-line options; Lambda passes none, so only a local run with
    arguments pays for importing twisted.python.usage."""
    if not args:
        return {}
    from twisted.python import usage

    from secretcache.tap import Options

    options = Options()
    try:
        options.parseOptions(list(args))  # type: ignore[no-untyped-call]
    except usage.UsageError as e:
        raise ConfigError(str(e)) from None
    return dict(options)


def bind(settings: Settings) -> list[socket.socket]:
    """Listening sockets for the settings' listeners (TCP only here)."""
    sockets: list[socket.socket] = []
    try:
        for description in settings.listen:
            optional = settings.default_listen and description.startswith("tcp6:")
            try:
                sockets.append(_bind_one(description))
            except OSError as e:
                if optional:
                    continue
                raise ConfigError(
                    f"cannot listen on {echo(description)}: {e.strerror or e}"
                ) from None
    except BaseException:
        for s in sockets:
            s.close()
        raise
    if not sockets:
        raise ConfigError("no listener could be bound")
    return sockets


def _bind_one(description: str) -> socket.socket:
    listener = tcp_listener(description)
    if listener is None:
        raise ConfigError(
            "the Lambda extension listens on plain tcp or tcp6 endpoints only, "
            f"not {echo(description)}"
        )
    family = socket.AF_INET6 if listener.family == "tcp6" else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((listener.interface, listener.port))
        s.listen(listener.backlog)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


class RuntimeAPI:
    """The calls made before Twisted exists: register and init/error."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise StartError(
                f"AWS_LAMBDA_RUNTIME_API is not host:port: {echo(address)}"
            )
        self._host = host.strip("[]")
        self._port = int(port)

    def _call(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        # A plain socket, not http.client: that imports ssl and email (35 ms
        # here) before register, which is what this module exists to avoid.
        payload = body or b""
        lines = [
            f"{method} /{API_VERSION}/extension/{path} HTTP/1.1",
            f"Host: {self._host}:{self._port}",
            "Connection: close",
            f"Content-Length: {len(payload)}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
        with socket.create_connection(
            (self._host, self._port), timeout=REGISTER_TIMEOUT
        ) as connection:
            connection.sendall(request)
            chunks = []
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        return _parse_response(b"".join(chunks))

    def register(self, name: str) -> tuple[str, dict[str, Any]]:
        try:
            status, headers, body = self._call(
                "POST",
                "register",
                {"Lambda-Extension-Name": name, "Content-Type": "application/json"},
                json.dumps({"events": ["INVOKE", "SHUTDOWN"]}).encode(),
            )
        except OSError as e:
            raise StartError(f"register failed: {e}") from None
        if status != 200:
            reason = body[:200].decode("utf-8", "replace")
            raise StartError(f"register refused with {status}: {reason}")
        identifier = headers.get("lambda-extension-identifier")
        if not identifier:
            raise StartError("register answered without Lambda-Extension-Identifier")
        try:
            info = json.loads(body) if body else {}
        except ValueError:
            info = {}
        return identifier, info if isinstance(info, dict) else {}

    def init_error(self, identifier: str, error_type: str, message: str) -> None:
        body = json.dumps(
            {"errorMessage": message, "errorType": error_type, "stackTrace": []}
        ).encode()
        try:
            self._call(
                "POST",
                "init/error",
                {
                    "Lambda-Extension-Identifier": identifier,
                    "Lambda-Extension-Function-Error-Type": error_type,
                    "Content-Type": "application/json",
                },
                body,
            )
        except OSError as e:
            _log(f"init/error could not be sent: {e}")


def _parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, separator, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not separator or len(parts) < 2 or not parts[1].isdigit():
        raise OSError("malformed HTTP answer from the Extensions API")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _unchunk(body)
    elif "content-length" in headers and headers["content-length"].isdigit():
        body = body[: int(headers["content-length"])]
    return int(parts[1]), headers, body


def _unchunk(body: bytes) -> bytes:
    out = []
    while body:
        size_line, _, body = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0] or b"0", 16)
        except ValueError:
            raise OSError("malformed chunked answer from the Extensions API") from None
        if size == 0:
            break
        out.append(body[:size])
        body = body[size + 2 :]
    return b"".join(out)


def run_extension(args: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    exec_started = time.monotonic()
    try:
        api = RuntimeAPI(environ["AWS_LAMBDA_RUNTIME_API"])
    except StartError as e:
        _log(str(e))
        return 1
    problem: ConfigError | None = None
    sockets: list[socket.socket] = []
    try:
        settings = load_settings(parse_options(args), environ)
        sockets = bind(settings)
    except ConfigError as e:
        problem = e
    name = extension_name(environ)
    try:
        identifier, _ = api.register(name)
    except StartError as e:
        _log(f"{e} (extension name {echo(name)})")
        for s in sockets:
            s.close()
        return 1
    if problem is not None:
        _log(str(problem))
        api.init_error(identifier, "Extension.ConfigInvalid", str(problem))
        return 1
    registered = time.monotonic() - exec_started
    from secretcache.lambda_serve import serve

    status: int = serve(settings, sockets, environ, identifier, registered)
    return status
