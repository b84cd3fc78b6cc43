"""Faults for the proxy between secretcache and moto's server
(``tests.support.CountingProxy.fault``): each answers a GetSecretValue call in
moto's place the way a failing Secrets Manager or network would."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

Fault = Callable[[BaseHTTPRequestHandler, dict[str, Any]], bool]


def json_error(status: int, code: str, message: str = "injected fault") -> Fault:
    """Answer with Secrets Manager's JSON error body (500s, throttling...)."""
    body = json.dumps({"__type": code, "message": message}).encode()

    def fault(handler: BaseHTTPRequestHandler, document: dict[str, Any]) -> bool:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/x-amz-json-1.1")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
        return True

    return fault


def server_error() -> Fault:
    return json_error(500, "InternalServiceError", "injected 500")


def throttling() -> Fault:
    return json_error(400, "ThrottlingException", "Rate exceeded")


def reset(handler: BaseHTTPRequestHandler, document: dict[str, Any]) -> bool:
    """Reset the connection (RST, not FIN) without answering."""
    connection: socket.socket = handler.connection
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.close_connection = True
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()
    return True


class BlackHole:
    """Read the request and never answer, until released (then close)."""

    def __init__(self) -> None:
        self._released = threading.Event()
        self.held = 0
        self._lock = threading.Lock()

    def __call__(
        self, handler: BaseHTTPRequestHandler, document: dict[str, Any]
    ) -> bool:
        with self._lock:
            self.held += 1
        self._released.wait(60)
        handler.close_connection = True
        return True

    def release(self) -> None:
        self._released.set()


def only_for(secret_id: str, fault: Fault) -> Fault:
    """Apply ``fault`` to calls for one secret; pass the others through."""

    def selective(handler: BaseHTTPRequestHandler, document: dict[str, Any]) -> bool:
        if document.get("SecretId") == secret_id:
            return fault(handler, document)
        return False

    return selective


def latency(seconds: float) -> Fault:
    """Hold each call for ``seconds``, then pass it through to moto."""
    stop = threading.Event()

    def slow(handler: BaseHTTPRequestHandler, document: dict[str, Any]) -> bool:
        stop.wait(seconds)
        return False

    return slow
