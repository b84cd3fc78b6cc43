"""An emulator of the Lambda Extensions API, written from AWS's documented
protocol, for tests and for trying the extension by hand:

    python -m secretcache.extensions_emulator [--invokes N] -- COMMAND...

starts COMMAND as an external extension (with ``AWS_LAMBDA_RUNTIME_API``
pointing at the emulator), waits for init to end, sends N INVOKE events,
then SHUTDOWN, and prints what happened and when.

The protocol (``/2020-01-01/extension``): ``POST register`` (header
``Lambda-Extension-Name``, body ``{"events": [...]}``) answers 200 with
``Lambda-Extension-Identifier``; ``GET event/next`` blocks until the next
event (INVOKE: ``deadlineMs``, ``requestId``, ``invokedFunctionArn``,
``tracing``; SHUTDOWN: ``shutdownReason``, ``deadlineMs``); ``POST
init/error`` and ``exit/error`` (header
``Lambda-Extension-Function-Error-Type``) answer 202. Timing: init ends when
every registered extension has called ``next``, within 10 s; after SHUTDOWN
an extension has 2 s to exit before it is killed.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/2020-01-01/extension/"
INIT_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 2.0
EVENTS = frozenset({"INVOKE", "SHUTDOWN"})
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:emulated"


@dataclass
class Extension:
    name: str
    identifier: str
    events: frozenset[str]
    registered_at: float
    queue: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)
    waiting: bool = False
    next_calls: list[float] = field(default_factory=list)
    errors: list[tuple[str, str, Any]] = field(default_factory=list)


class ExtensionsEmulator:
    """The Extensions API on a free loopback port; times are ``time.monotonic``."""

    def __init__(
        self,
        function_name: str = "emulated",
        refuse_register: tuple[int, str] | None = None,
        on_register: Any = None,
    ) -> None:
        self.function_name = function_name
        self.refuse_register = refuse_register
        # Called (with the extension's name) while register is being answered:
        # tests use it to see what the extension had done by then.
        self.on_register = on_register
        self.extensions: dict[str, Extension] = {}
        self.log: list[tuple[float, str, str]] = []
        self.init_ended_at: float | None = None
        self.paused = threading.Event()
        self._lock = threading.Condition()
        self._closing = False
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                emulator._post(self)

            def do_GET(self) -> None:
                emulator._get(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    # What the tests drive.

    def wait_for_init(self, count: int = 1, timeout: float = INIT_TIMEOUT) -> bool:
        """True once ``count`` extensions have registered and are all waiting in
        ``next`` (Lambda's end of init), within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._all_waiting(count):
                left = deadline - time.monotonic()
                if left <= 0:
                    self._record("init", "timed out")
                    return False
                self._lock.wait(left)
            if self.init_ended_at is None:
                self.init_ended_at = time.monotonic()
                self._record("init", "ended")
            return True

    def invoke(self, request_id: str | None = None, timeout: float = 30.0) -> bool:
        """Send INVOKE to the extensions that asked for it; True once they are
        all back in ``next``."""
        request_id = request_id or str(uuid.uuid4())
        event = {
            "eventType": "INVOKE",
            "deadlineMs": int(time.time() * 1000) + 3000,
            "requestId": request_id,
            "invokedFunctionArn": FUNCTION_ARN,
            "tracing": {
                "type": "X-Amzn-Trace-Id",
                "value": f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]}",
            },
        }
        self._deliver(event)
        return self._wait_all_waiting(timeout)

    def shutdown(self, reason: str = "SPINDOWN") -> float:
        """Send SHUTDOWN; returns its deadline as ``time.monotonic`` seconds."""
        self._deliver(
            {
                "eventType": "SHUTDOWN",
                "shutdownReason": reason,
                "deadlineMs": int(time.time() * 1000 + SHUTDOWN_TIMEOUT * 1000),
            }
        )
        return time.monotonic() + SHUTDOWN_TIMEOUT

    def close(self) -> None:
        with self._lock:
            self._closing = True
            for extension in self.extensions.values():
                extension.queue.put(None)
            self._lock.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def first(self, kind: str) -> float | None:
        for at, what, _ in self.log:
            if what == kind:
                return at
        return None

    # The protocol.

    def _post(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        if length > 1 << 20:
            self._answer(handler, 413, {"errorMessage": "body too large"})
            return
        body = handler.rfile.read(length)
        path = handler.path
        if path == PREFIX + "register":
            self._register(handler, body)
        elif path in (PREFIX + "init/error", PREFIX + "exit/error"):
            self._error(handler, path[len(PREFIX) :].split("/")[0], body)
        else:
            self._answer(handler, 404, {"errorMessage": f"no route {path}"})

    def _get(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.path != PREFIX + "event/next":
            self._answer(handler, 404, {"errorMessage": f"no route {handler.path}"})
            return
        extension = self._identified(handler)
        if extension is None:
            return
        with self._lock:
            extension.waiting = True
            extension.next_calls.append(time.monotonic())
            self._record("next", extension.name)
            self._lock.notify_all()
        event = extension.queue.get()
        while self.paused.is_set() and not self._closing:
            time.sleep(0.01)
        if event is None:
            handler.close_connection = True
            return
        handler.send_response(200)
        payload = json.dumps(event).encode()
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Lambda-Extension-Event-Identifier", str(uuid.uuid4()))
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _register(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        name = handler.headers.get("Lambda-Extension-Name") or ""
        self._record("register", name)
        if self.on_register is not None:
            self.on_register(name)
        if self.refuse_register is not None:
            status, message = self.refuse_register
            self._answer(
                handler, status, {"errorMessage": message, "errorType": "Refused"}
            )
            return
        if not name:
            self._invalid(handler, "Lambda-Extension-Name is required")
            return
        if self.init_ended_at is not None:
            self._answer(
                handler,
                403,
                {
                    "errorMessage": "registration is only allowed during init",
                    "errorType": "Extension.InvalidState",
                },
            )
            return
        try:
            events = json.loads(body)["events"]
            if not isinstance(events, list) or not set(events) <= EVENTS:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            self._invalid(handler, 'body must be {"events": [INVOKE|SHUTDOWN...]}')
            return
        identifier = str(uuid.uuid4())
        with self._lock:
            self.extensions[identifier] = Extension(
                name, identifier, frozenset(events), time.monotonic()
            )
            self._lock.notify_all()
        self._answer(
            handler,
            200,
            {
                "functionName": self.function_name,
                "functionVersion": "$LATEST",
                "handler": "index.handler",
            },
            {"Lambda-Extension-Identifier": identifier},
        )

    def _error(self, handler: BaseHTTPRequestHandler, phase: str, body: bytes) -> None:
        extension = self._identified(handler)
        if extension is None:
            return
        error_type = handler.headers.get("Lambda-Extension-Function-Error-Type")
        if not error_type:
            self._invalid(handler, "Lambda-Extension-Function-Error-Type is required")
            return
        try:
            detail = json.loads(body) if body else None
        except ValueError:
            detail = body.decode("utf-8", "replace")
        with self._lock:
            extension.errors.append((phase, error_type, detail))
        self._record(f"{phase}/error", error_type)
        self._answer(handler, 202, {"status": "OK"})

    def _identified(self, handler: BaseHTTPRequestHandler) -> Extension | None:
        identifier = handler.headers.get("Lambda-Extension-Identifier") or ""
        extension = self.extensions.get(identifier)
        if extension is None:
            self._answer(
                handler,
                403,
                {
                    "errorMessage": "unknown Lambda-Extension-Identifier",
                    "errorType": "Extension.InvalidExtensionIdentifier",
                },
            )
        return extension

    def _invalid(self, handler: BaseHTTPRequestHandler, message: str) -> None:
        self._answer(
            handler, 400, {"errorMessage": message, "errorType": "InvalidRequest"}
        )

    @staticmethod
    def _answer(
        handler: BaseHTTPRequestHandler,
        status: int,
        document: Any,
        headers: Mapping[str, str] = {},
    ) -> None:
        payload = json.dumps(document).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _deliver(self, event: dict[str, Any]) -> None:
        self._record(event["eventType"], "")
        with self._lock:
            for extension in self.extensions.values():
                if event["eventType"] in extension.events:
                    # Busy with the event until its next call to ``next``.
                    extension.waiting = False
                    extension.queue.put(event)

    def _all_waiting(self, count: int) -> bool:
        return len(self.extensions) >= count and all(
            e.waiting for e in self.extensions.values()
        )

    def _wait_all_waiting(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._all_waiting(len(self.extensions)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    def _record(self, kind: str, detail: str) -> None:
        self.log.append((time.monotonic(), kind, detail))


class ExtensionProcess:
    """An external extension started as Lambda starts one: a child process
    with the function's environment and ``AWS_LAMBDA_RUNTIME_API``."""

    def __init__(
        self,
        emulator: ExtensionsEmulator,
        command: Sequence[str],
        env: Mapping[str, str],
        **popen: Any,
    ) -> None:
        self.emulator = emulator
        self.exec_at = time.monotonic()
        self.process = subprocess.Popen(  # noqa: S603 - the command is the caller's
            list(command),
            env={**env, "AWS_LAMBDA_RUNTIME_API": emulator.address},
            **popen,
        )
        self.exited_at: float | None = None

    def shut_down(self, reason: str = "SPINDOWN") -> tuple[int, float, bool]:
        """SHUTDOWN, then wait; returns (exit status, seconds from SHUTDOWN to
        exit, whether it was killed at the 2 s deadline)."""
        sent = time.monotonic()
        deadline = self.emulator.shutdown(reason)
        killed = threading.Event()

        def kill_at_deadline() -> None:
            if self.process.poll() is None:
                killed.set()
                self.process.kill()

        # A blocking wait sees the exit when it happens; Popen.wait(timeout)
        # polls with sleeps growing to 50 ms, which the figure would include.
        watchdog = threading.Timer(
            max(0.0, deadline - time.monotonic()), kill_at_deadline
        )
        watchdog.start()
        try:
            self.process.wait()
        finally:
            watchdog.cancel()
        self.exited_at = time.monotonic()
        return self.process.returncode, self.exited_at - sent, killed.is_set()

    def freeze(self) -> None:
        """What Lambda does between invocations: nothing in the process runs."""
        self.emulator.paused.set()
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.emulator.paused.clear()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m secretcache.extensions_emulator",
        description="Run COMMAND as a Lambda extension against an emulated "
        "Extensions API: init, N invokes, shutdown.",
    )
    parser.add_argument("--invokes", type=int, default=1)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the extension's command after --")
    emulator = ExtensionsEmulator()
    extension = ExtensionProcess(emulator, command, os.environ)
    try:
        if not emulator.wait_for_init():
            print("init: timed out (10 s) or the extension exited", file=sys.stderr)
            return 1
        for _ in range(args.invokes):
            time.sleep(args.pause)
            print("invoke:", "done" if emulator.invoke() else "timed out")
        status, seconds, killed = extension.shut_down()
        print(f"shutdown: exit status {status} after {seconds * 1000:.0f} ms", end="")
        print(" (killed at the deadline)" if killed else "")
        for at, kind, detail in emulator.log:
            print(f"  {(at - extension.exec_at) * 1000:8.1f} ms  {kind} {detail}")
        return 0 if status == 0 and not killed else 1
    finally:
        extension.kill()
        emulator.close()


if __name__ == "__main__":
    raise SystemExit(main())
