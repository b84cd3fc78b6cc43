"""The long-running parts: listeners, prefetch and readiness, the cache's
maintenance timer, and the root service that owns them and the HTTP pool.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorSocket,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from secretcache.cache import SecretCache
from secretcache.credentials import ICredentialSource
from secretcache.errors import SecretcacheError
from secretcache.secret import SecretKey


class Listener(Service):
    """Listens on an endpoint while running. (Twisted's
    StreamServerEndpointService does the same, but its module brings in the
    reconnecting-client machinery and automat: 0.4 MiB of memory that a
    cache sized to sit beside every service should not carry.)

    An ``optional`` listener may fail to bind: the default ``::1`` one, since
    not every host or container has IPv6 loopback. Any other failure to bind
    fails the start."""

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        description: str,
        optional: bool,
    ) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self.description = description
        self._optional = optional
        self._listening: Deferred[IListeningPort] | None = None
        self._port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        # Listening may need privileges (a low port) that twistd drops later.
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        failed: list[Failure] = []
        listening = self._endpoint.listen(self._factory)
        self._listening = listening
        listening.addCallbacks(self._listen_succeeded, failed.append)
        if failed and not self._optional:
            # TCP endpoints answer at once: fail the start with the reason.
            failed[0].raiseException()
        for failure in failed:
            self.log.warn(
                "not listening on {endpoint}: {reason}",
                endpoint=self.description,
                reason=failure.getErrorMessage(),
            )

    def _listen_succeeded(self, port: IListeningPort) -> None:
        self._listening = None
        self._port = port

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._listening is not None:
            self._listening.cancel()
            self._listening = None
        port, self._port = self._port, None
        if port is None:
            return None
        stopped: Deferred[None] | None = port.stopListening()
        return stopped


def listener(
    endpoint: IStreamServerEndpoint,
    factory: IProtocolFactory,
    description: str,
    optional: bool,
) -> Listener:
    return Listener(endpoint, factory, description, optional)


class AdoptedListener(Service):
    """Serves ``factory`` on a socket that is already listening (bound by the
    Lambda start path before Twisted was imported)."""

    def __init__(
        self, reactor: IReactorSocket, sock: socket.socket, factory: ServerFactory[Any]
    ) -> None:
        self._reactor = reactor
        self._socket: socket.socket | None = sock
        self._factory = factory
        self._port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        sock, self._socket = self._socket, None
        if sock is not None:
            self._port = self._reactor.adoptStreamPort(
                sock.fileno(), sock.family, self._factory
            )
            # The reactor holds its own duplicate of the descriptor.
            sock.close()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        port, self._port = self._port, None
        if port is None:
            return None
        stopped: Deferred[None] | None = port.stopListening()
        return stopped


class Startup(Service):
    """Resolves credentials and prefetches secrets at start; answers readiness."""

    log = Logger()

    def __init__(
        self,
        cache: SecretCache,
        credentials: ICredentialSource,
        prefetch: Sequence[str],
    ) -> None:
        self._cache = cache
        self._credentials = credentials
        self._prefetch = tuple(prefetch)
        self.prefetched = not self._prefetch
        self._credentials_ok = False
        self._pending: Deferred[Any] | None = None
        self._prefetch_waiters: list[Deferred[None]] = []

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._pending = self.start()

    def start(self) -> Deferred[Any]:
        """Begin resolving and prefetching; fires when prefetch has finished."""
        self.check_credentials()
        if not self._prefetch:
            return succeed(None)
        fetches = [
            self._cache.prefetch(SecretKey(secret_id)).addErrback(
                self._prefetch_failed, index
            )
            for index, secret_id in enumerate(self._prefetch)
        ]
        done = DeferredList(fetches, consumeErrors=True)
        done.addCallback(self._prefetch_done)
        return done

    def _prefetch_failed(self, failure: Failure, index: int) -> None:
        error = failure.value
        code = (
            error.code if isinstance(error, SecretcacheError) else type(error).__name__
        )
        # The id is logged at debug level only; its position is always safe.
        self.log.warn(
            "prefetch of id #{index} failed: {code}", index=index + 1, code=code
        )
        self.log.debug(
            "prefetch of {secret_id} failed", secret_id=self._prefetch[index]
        )

    def _prefetch_done(self, _: object) -> None:
        self.prefetched = True
        self.log.info("prefetch finished: {count} ids", count=len(self._prefetch))
        waiters, self._prefetch_waiters = self._prefetch_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def when_prefetched(self) -> Deferred[None]:
        """Fires once prefetch has finished (at once if there is none)."""
        if self.prefetched:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._prefetch_waiters.append(waiter)
        return waiter

    def check_credentials(self) -> None:
        def ok(_: object) -> None:
            self._credentials_ok = True

        def bad(_: Failure) -> None:
            self._credentials_ok = False

        self._credentials.get().addCallbacks(ok, bad)

    def problem(self) -> str | None:
        """Why the server is not ready, or None."""
        # Every probe asks: credentials that are held answer at once, and ones
        # that lapsed or failed to refresh start a resolution in the
        # background whose outcome this probe or a later one sees.
        self.check_credentials()
        if not self._credentials_ok:
            return "AWS credentials are not resolved"
        if not self.prefetched:
            return "prefetch has not finished"
        return None

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._pending is not None and not self._pending.called:
            self._pending.cancel()
        return None


class Periodic(Service):
    """Calls ``tick`` every ``interval`` seconds while running (as Twisted's
    TimerService, without importing twisted.application.internet)."""

    log = Logger()

    def __init__(
        self, interval: float, tick: Callable[[], object], clock: IReactorTime
    ) -> None:
        self._interval = interval
        self._loop = LoopingCall(self._safe_tick)
        self._loop.clock = clock
        self._tick = tick

    def _safe_tick(self) -> None:
        try:
            self._tick()
        except Exception:
            self.log.failure("periodic task failed")

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop.running:
            self._loop.stop()


def maintenance(cache: SecretCache, interval: float, clock: IReactorTime) -> Periodic:
    """Refresh-ahead of entries in use, and dropping of dead entries."""

    def tick() -> None:
        cache.purge()
        cache.refresh_in_use()

    return Periodic(interval, tick, clock)


class SecretcacheService(MultiService):
    """The root service. Under twistd it also hands the application the log
    observer, so our format holds from twistd's first line on."""

    log = Logger()

    def __init__(
        self,
        log_observer: ILogObserver | None = None,
        on_stop: Sequence[Callable[[], Deferred[Any] | None]] = (),
        stop_reactor: Callable[[], None] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._clock = clock
        # How long requests in flight may take to finish at stop; the Lambda
        # extension lowers it to fit SHUTDOWN's deadline.
        self.shutdown_grace = 1.0
        # Set by the builder for the Lambda extension, which drives them.
        self.cache: SecretCache | None = None
        self.startup: Startup | None = None
        self.close_idle_upstream: Callable[[], object] = lambda: None
        self._log_observer = log_observer
        self._on_stop = tuple(on_stop)
        self._stop_reactor = stop_reactor
        # Under twistd, which would print a traceback: a listener that cannot
        # listen (port in use, no permission) ends the process with one line.
        self.exit_on_listen_failure = False

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()  # type: ignore[no-untyped-call]
        except CannotListenError as e:
            if not self.exit_on_listen_failure:
                raise
            self.log.critical("cannot start: {reason}", reason=str(e))
            raise SystemExit(1) from None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self._stop_reactor is not None and self._clock is not None:
            # The reactor installs its own handlers once its startup triggers
            # (which start us) have run; ours must come after them.
            self._clock.callLater(0, self._install_signal_handlers)

    def _install_signal_handlers(self) -> None:
        # The reactor's own SIGTERM handler makes the process die by the
        # signal again after shutdown (exit status 143), which container
        # runtimes report as a failure; a requested stop is a clean exit.
        stop = self._stop_reactor
        assert stop is not None

        def on_signal(signum: int, frame: object) -> None:
            self.log.info("received signal {signum}, shutting down", signum=signum)
            stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)

    def setServiceParent(self, parent: Any) -> None:
        if self._log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self._log_observer)
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[Any]:
        d: Deferred[Any] = super().stopService()  # type: ignore[no-untyped-call]

        # One after the other: connections drain before the pool closes.
        def run(_: object, stop: Callable[[], Deferred[Any] | None]) -> Any:
            return stop()

        def failed(failure: Failure) -> None:
            self.log.failure("while stopping", failure)

        for stop in self._on_stop:
            d.addCallback(run, stop).addErrback(failed)
        return d
