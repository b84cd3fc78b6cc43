"""Log observers: readable text, or one JSON object a line, filtered by level.

Events carry structured fields; only plain values (strings, numbers, booleans)
are copied into a JSON line, and our own code never puts a secret's value or
the token into an event.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


@implementer(ILogObserver)
class JSONLineObserver:
    """Writes each event as one JSON object on one line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        self._stream.write(json_line(event) + "\n")
        self._stream.flush()


def json_line(event: dict[str, Any]) -> str:
    level = event.get("log_level")
    when = event.get("log_time")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
        if isinstance(when, (int, float))
        else None,
        "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    for name, value in event.items():
        if name.startswith("log_") or name in record or name in ("format", "message"):
            continue
        if isinstance(value, (str, int, float, bool)) or value is None:
            record[name] = value
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        record["error"] = failure.getErrorMessage()[:512]
        record["error_type"] = failure.type.__name__ if failure.type else ""
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, default=str)


def make_observer(level: str, fmt: str, stream: IO[str]) -> ILogObserver:
    """The observer for ``--log-level`` and ``--log-format``."""
    inner: ILogObserver
    if fmt == "json":
        inner = JSONLineObserver(stream)
    else:
        inner = textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    # The connection pool's factories announce every upstream connection at
    # info level; that is noise, not an event an operator acts on.
    # twisted.web's Request puts its repr, and so the URI with the secret id,
    # into its info events: those are for debugging, like our own ids.
    for namespace in (
        "twisted.web.client._HTTP11ClientFactory",
        "twisted.web.server.Request",
    ):
        predicate.setLogLevelForNamespace(
            namespace, max(LEVELS[level], LogLevel.warn, key=_rank)
        )
    return FilteringLogObserver(inner, [predicate])


def _rank(level: LogLevel) -> int:
    return list(LEVELS.values()).index(level)


__all__ = ["eventAsText", "make_observer"]
