"""Docker HEALTHCHECK for the secretcache image: GET /ping on the first listener.

Standard library only, run with ``python -I -S`` so that it starts in tens of
milliseconds and needs neither curl nor the package's own (slow) imports.
The listener is read from the same places the server reads it: ``--port`` on
PID 1's command line wins over ``SECRETCACHE_PORT``, then
``PARAMETERS_SECRETS_EXTENSION_HTTP_PORT``, then the default 8015.
"""

import http.client
import os
import re
import socket
import ssl
import sys

TIMEOUT = 2.0


def _first_listener() -> str:
    try:
        with open("/proc/1/cmdline", "rb") as f:
            argv = f.read().decode("utf-8", "replace").split("\0")
    except OSError:
        argv = []
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--port="):
            return arg[len("--port=") :]
    value = os.environ.get("SECRETCACHE_PORT", "").strip()
    if value:
        return value.split(",")[0].strip()
    return (
        os.environ.get("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", "").strip() or "8015"
    )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self._path)


def _connection(endpoint: str) -> http.client.HTTPConnection:
    if endpoint.isdigit():  # a bare number means loopback, as in the server
        return http.client.HTTPConnection("127.0.0.1", int(endpoint), timeout=TIMEOUT)
    # Twisted endpoint syntax: colon-separated, "\:" escapes a colon.
    fields = [f.replace("\\:", ":") for f in re.split(r"(?<!\\):", endpoint)]
    kind, positional, named = fields[0].lower(), [], {}
    for f in fields[1:]:
        key, sep, val = f.partition("=")
        if sep and key.isidentifier():
            named[key] = val
        else:
            positional.append(f)
    if kind == "unix":
        return _UnixConnection(named.get("address") or positional[0])
    port = int(named.get("port") or positional[0])
    host = named.get("interface", "")
    # A wildcard bind is reached through loopback of the same family.
    if host in ("", "0.0.0.0"):
        host = "::1" if kind == "tcp6" else "127.0.0.1"
    elif host == "::":
        host = "::1"
    if kind == "ssl":
        context = ssl._create_unverified_context()  # noqa: S323 - liveness only
        return http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=context)
    return http.client.HTTPConnection(host, port, timeout=TIMEOUT)


def main() -> int:
    endpoint = _first_listener()
    try:
        conn = _connection(endpoint)
        conn.request("GET", "/ping")
        status = conn.getresponse().status
    except (OSError, ValueError, IndexError, http.client.HTTPException) as e:
        print(f"unhealthy: {endpoint}: {e}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {endpoint}: /ping answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
