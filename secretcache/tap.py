"""``Options`` for twistd and ``python -m secretcache``, and ``makeService``,
which wires settings, upstream client, cache, API and listeners together.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, cast

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorSocket,
    IReactorThreads,
    IReactorTime,
)
from twisted.logger import ILogObserver, Logger
from twisted.python import usage

from secretcache._version import __version__
from secretcache.config import (
    OPTIONS,
    ConfigError,
    Settings,
    echo,
    help_text,
    load_settings,
    tcp_listener,
)

log = Logger()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "secretcache: a local HTTP cache for AWS Secrets Manager. Every option "
        "can also be set by the environment variables shown; the command line "
        "wins. Durations are seconds (90, 2.5) or Go-style (90s, 5m, 1h30m)."
    )
    optFlags = [[spec.name, None, help_text(spec)] for spec in OPTIONS if spec.flag]
    optParameters = [
        [spec.name, None, None, help_text(spec)]
        for spec in OPTIONS
        if not spec.flag and spec.name != "port"
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["port"] = []

    def opt_port(self, endpoint: str) -> None:
        self["port"].append(endpoint)

    opt_port.__doc__ = help_text(OPTIONS[0])
    opt_p = opt_port

    def opt_version(self) -> None:
        """Print the version and exit."""
        sys.stdout.write(f"secretcache {__version__}\n")
        sys.exit(0)

    def postOptions(self) -> None:
        if self["port"] == []:
            self["port"] = None


def settings_or_exit(
    options: Mapping[str, Any], environ: Mapping[str, str]
) -> Settings:
    """Settings, or one line on stderr and exit status 2."""
    try:
        return load_settings(options, environ)
    except ConfigError as e:
        fail(str(e))
        raise  # unreachable: fail exits


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"secretcache: {message}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def makeService(options: Mapping[str, Any], reactor: Any = None) -> Any:
    """The root service for twistd; a bad option ends the process with one line."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    settings = settings_or_exit(options, os.environ)
    from secretcache.logs import make_observer

    observer = make_observer(settings.log_level, settings.log_format, sys.stdout)
    try:
        service = build_service(
            settings, reactor, os.environ, log_observer=observer, handle_signals=True
        )
    except ConfigError as e:
        fail(str(e))
    service.exit_on_listen_failure = True
    return service


def _endpoint(reactor: Any, description: str) -> Any:
    from twisted.internet.endpoints import (
        TCP4ServerEndpoint,
        TCP6ServerEndpoint,
        serverFromString,
    )

    tcp = tcp_listener(description)
    if tcp is not None:
        kind = TCP6ServerEndpoint if tcp.family == "tcp6" else TCP4ServerEndpoint
        return kind(reactor, tcp.port, tcp.backlog, tcp.interface)
    try:
        return serverFromString(reactor, description)
    except Exception as e:
        # Twisted's parsers fail in many ways (a missing certificate file
        # for ssl:, no inherited socket for systemd:); name the kind only.
        reason = None
        if isinstance(e, OSError) and e.strerror:
            reason = e.strerror + (f" ({echo(e.filename)})" if e.filename else "")
        raise ConfigError(
            f"invalid listener (--port / SECRETCACHE_PORT) {echo(description)}: "
            + (reason or f"Twisted cannot use it ({type(e).__name__})")
        ) from None


def build_service(
    settings: Settings,
    reactor: IReactorCore,
    environ: Mapping[str, str],
    *,
    log_observer: ILogObserver | None = None,
    session: Any = None,
    handle_signals: bool = False,
    sockets: Sequence[socket.socket] = (),
) -> Any:
    """Everything the server is made of, from settings; raises ``ConfigError``.

    ``sockets``, when given, are already listening (the Lambda start path
    bound them) and replace the settings' listeners."""
    from botocore.credentials import create_credential_resolver
    from treq.client import HTTPClient
    from twisted.internet.threads import deferToThreadPool
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    from secretcache.api import SecretcacheAPI
    from secretcache.aws import (
        botocore_session,
        ca_bundle_path,
        load_trust_root,
        resolve_upstream,
    )
    from secretcache.cache import SecretCache
    from secretcache.credentials import BotocoreCredentialSource
    from secretcache.metrics import AccessLog, Metrics, RequestObservers
    from secretcache.service import (
        AdoptedListener,
        SecretcacheService,
        Startup,
        listener,
        maintenance,
    )
    from secretcache.upstream import SecretsManagerClient, UpstreamEndpoints
    from secretcache.web import SHUTDOWN_GRACE, SecretcacheSite

    session = session or botocore_session()
    upstream = resolve_upstream(settings, session, environ)
    bundle = ca_bundle_path(environ)
    policy = (
        BrowserLikePolicyForHTTPS(load_trust_root(bundle))
        if bundle
        else BrowserLikePolicyForHTTPS()
    )
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 16
    # Secrets Manager's load balancers close idle connections after about a
    # minute; dropping ours first avoids sending into a closing socket.
    pool.cachedConnectionTimeout = 50
    agent = Agent.usingEndpointFactory(
        reactor, UpstreamEndpoints(reactor, policy), pool=pool
    )
    http = HTTPClient(agent)
    # Every real reactor also provides these; IReactorCore does not say so.
    clock = cast(IReactorTime, reactor)
    threads = cast(IReactorThreads, reactor)

    def run_in_thread(f: Any, *args: Any) -> Any:
        return deferToThreadPool(threads, threads.getThreadPool(), f, *args)

    credentials = BotocoreCredentialSource(
        lambda: create_credential_resolver(
            session, region_name=upstream.region
        ).load_credentials(),
        run_in_thread,
    )
    metrics = Metrics()
    client = SecretsManagerClient(
        http=http,
        observer=metrics,
        credentials=credentials,
        endpoint_url=upstream.endpoint_url,
        region=upstream.region,
        clock=clock,
        upstream_timeout=settings.upstream_timeout,
        max_attempts=settings.max_attempts,
        request_timeout=settings.request_timeout,
    )
    cache = SecretCache(
        client.get_secret_value,
        clock,
        ttl=settings.ttl,
        max_entries=settings.cache_size,
        stale_if_error=settings.stale_if_error,
        observer=metrics,
    )
    startup = Startup(cache, credentials, settings.prefetch)
    api = SecretcacheAPI(
        cache,
        token=settings.token,
        legacy_errors=settings.legacy_errors,
        readiness=startup.problem,
        metrics=metrics.render,
        observer=RequestObservers([metrics, AccessLog()])
        if settings.access_log
        else metrics,
    )
    site = SecretcacheSite(
        api.resource(),
        max_connections=settings.max_connections,
        clock=clock,
        legacy_errors=settings.legacy_errors,
    )
    site.noisy = False
    metrics.watch(
        entries=lambda: len(cache),
        connections=lambda: site.open_connections,
        refused=lambda: site.refused,
    )

    root = SecretcacheService(
        log_observer,
        on_stop=[
            lambda: site.drain(root.shutdown_grace),
            cache.stop,
            pool.closeCachedConnections,
        ],
        stop_reactor=(lambda: threads.callFromThread(reactor.stop))
        if handle_signals
        else None,
        clock=clock,
    )
    root.shutdown_grace = SHUTDOWN_GRACE
    root.cache, root.startup = cache, startup
    root.close_idle_upstream = pool.closeCachedConnections
    for sock in sockets:
        AdoptedListener(cast(IReactorSocket, reactor), sock, site).setServiceParent(
            root
        )  # type: ignore[no-untyped-call]
    for description in () if sockets else settings.listen:
        endpoint = _endpoint(reactor, description)
        # The ::1 half of the loopback pair is skipped where there is no IPv6.
        optional = settings.default_listen and description.startswith("tcp6:")
        listening = listener(endpoint, site, description, optional)
        listening.setServiceParent(root)  # type: ignore[no-untyped-call]
    startup.setServiceParent(root)  # type: ignore[no-untyped-call]
    interval = max(1.0, min(10.0, settings.ttl / 20))
    periodic = maintenance(cache, interval, clock)
    periodic.setServiceParent(root)  # type: ignore[no-untyped-call]
    if settings.no_token:
        log.warn(
            "serving secrets without a token (--no-token): any local process "
            "can read them"
        )
    log.info(
        "secretcache {version}: region {region}, endpoint {endpoint}, ttl {ttl}s",
        version=__version__,
        region=upstream.region,
        endpoint=upstream.endpoint_url,
        ttl=settings.ttl,
    )
    return root
