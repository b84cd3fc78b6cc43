"""The Lambda extension after registration: the server on the sockets the
start path bound, and the ``event/next`` loop beside it, on one reactor."""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any, cast

from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger, globalLogBeginner

from secretcache.config import ConfigError, Settings
from secretcache.extension import (
    POOL_STALE_AFTER,
    ExtensionsAPIClient,
    ExtensionService,
)
from secretcache.logs import make_observer
from secretcache.service import SecretcacheService

log = Logger(namespace="secretcache.extension")


def on_invoke(root: SecretcacheService) -> Any:
    """What an INVOKE does: the work timers would have done while the
    environment was frozen, so that no request of this invocation waits."""

    def invoked(gap: float) -> None:
        if gap > POOL_STALE_AFTER:
            # Connections idle this long were closed by the other side while
            # we were frozen; sending on one would cost a failed attempt.
            root.close_idle_upstream()
        if root.cache is not None:
            root.cache.refresh_in_use()
            root.cache.purge()

    return invoked


def serve(
    settings: Settings,
    sockets: Sequence[socket.socket],
    environ: Mapping[str, str],
    identifier: str,
    registered_after: float,
) -> int:
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    from secretcache.tap import build_service

    globalLogBeginner.beginLoggingTo(
        [make_observer(settings.log_level, settings.log_format, sys.stdout)],
        redirectStandardIO=False,
    )
    core = cast(IReactorCore, reactor)
    clock = cast(IReactorTime, reactor)
    # Its own pool: the long poll holds a connection for as long as it waits.
    lambda_http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor)))
    events = ExtensionsAPIClient(
        lambda_http, environ["AWS_LAMBDA_RUNTIME_API"], identifier
    )
    try:
        root: SecretcacheService = build_service(
            settings, reactor, environ, sockets=sockets, handle_signals=True
        )
    except ConfigError as e:
        # Only what needs botocore is checked this late (region, endpoint).
        # Stop listening first: a bad configuration must not leave clients
        # connecting to a port that never answers.
        for sock in sockets:
            sock.close()
        log.error("cannot start: {error}", error=str(e))

        from twisted.internet.defer import Deferred

        reported = events.report_error("init", "Extension.ConfigInvalid", str(e))
        Deferred.fromCoroutine(reported).addBoth(lambda _: core.stop())
        core.run()
        return 1
    exit_status = [0]

    def shutdown(seconds_left: float, status: int) -> None:
        exit_status[0] = status
        root.shutdown_grace = max(0.0, min(root.shutdown_grace, seconds_left - 0.2))
        if core.running:
            core.stop()

    def prefetched() -> Any:
        assert root.startup is not None
        return root.startup.when_prefetched()

    extension = ExtensionService(events, clock, prefetched, on_invoke(root), shutdown)
    extension.setServiceParent(root)  # type: ignore[no-untyped-call]

    def start() -> None:
        try:
            root.privilegedStartService()
            root.startService()
        except Exception as e:
            log.error("cannot start: {error}", error=str(e))
            exit_status[0] = 1
            core.stop()
            return
        log.info(
            "registered as a Lambda extension in {ms:.0f} ms",
            ms=registered_after * 1000,
        )

    core.callWhenRunning(start)
    core.addSystemEventTrigger(
        "before", "shutdown", lambda: root.stopService() if root.running else None
    )
    core.run()
    return exit_status[0]
