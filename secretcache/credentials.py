"""botocore's credential chain behind a non-blocking interface.

Resolving credentials may reach the network (container endpoint, IMDS, STS),
so it runs in a thread; handing out credentials that are still good does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import Interface, implementer

from secretcache.errors import SecretcacheError, upstream_failure


class AWSCredentials:
    """Frozen credentials for one signature. The repr hides the keys."""

    __slots__ = ("access_key", "secret_key", "token")

    def __init__(self, access_key: str, secret_key: str, token: str | None) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.token = token

    def __repr__(self) -> str:
        return "<AWSCredentials redacted>"

    __str__ = __repr__


class ICredentialSource(Interface):
    def get() -> Deferred[AWSCredentials]:
        """Credentials good for signing now; fails with ``SecretcacheError``."""

    def invalidate() -> None:
        """Forget what is held: the next ``get`` resolves the chain anew."""


class _BotocoreCredentials(Protocol):
    def get_frozen_credentials(self) -> Any: ...


RunInThread = Callable[..., "Deferred[Any]"]


@implementer(ICredentialSource)
class BotocoreCredentialSource:
    """Credentials from botocore's standard chain.

    ``resolve`` returns botocore credentials (it is
    ``botocore.session.Session().get_credentials`` in production);
    ``run_in_thread`` is ``twisted.internet.threads.deferToThread``.
    Concurrent callers share one resolution.
    """

    log = Logger()

    def __init__(
        self,
        resolve: Callable[[], _BotocoreCredentials | None],
        run_in_thread: RunInThread,
    ) -> None:
        self._resolve = resolve
        self._run_in_thread = run_in_thread
        self._credentials: _BotocoreCredentials | None = None
        self._pending: list[Deferred[AWSCredentials]] | None = None
        self.resolved = False

    def get(self) -> Deferred[AWSCredentials]:
        held = self._credentials
        if held is not None and not _needs_refresh(held):
            # Inline: botocore hands out held, unexpired credentials without I/O.
            try:
                return succeed(_freeze(held.get_frozen_credentials()))
            except Exception as e:
                return _failed(e)
        waiter: Deferred[AWSCredentials] = Deferred()
        if self._pending is not None:
            self._pending.append(waiter)
            return waiter
        self._pending = [waiter]
        self._run_in_thread(self._resolve_blocking).addBoth(self._resolved)
        return waiter

    def invalidate(self) -> None:
        self._credentials = None

    def _resolve_blocking(self) -> tuple[_BotocoreCredentials, AWSCredentials]:
        held = self._credentials
        if held is None:
            held = self._resolve()
            if held is None:
                raise _NoCredentials()
        return held, _freeze(held.get_frozen_credentials())

    def _resolved(self, result: Any) -> None:
        waiters, self._pending = self._pending or [], None
        if isinstance(result, tuple):
            self._credentials, frozen = result
            self.resolved = True
            for waiter in waiters:
                waiter.callback(frozen)
            return
        error = result.value
        self.resolved = False
        self._credentials = None
        self.log.warn(
            "could not resolve AWS credentials: {error}", error=_describe(error)
        )
        for waiter in waiters:
            waiter.errback(_credential_error(error))


class _NoCredentials(Exception):
    pass


def _needs_refresh(credentials: _BotocoreCredentials) -> bool:
    refresh_needed = getattr(credentials, "refresh_needed", None)
    return bool(refresh_needed is not None and refresh_needed())


def _freeze(frozen: Any) -> AWSCredentials:
    return AWSCredentials(frozen.access_key, frozen.secret_key, frozen.token)


def _describe(error: BaseException) -> str:
    # botocore's messages can quote what a credentials endpoint answered; only
    # the kind of failure is safe to repeat.
    if isinstance(error, _NoCredentials):
        return (
            "no credentials found in the environment, shared files, "
            "container endpoint or instance metadata"
        )
    return type(error).__name__


def _credential_error(error: BaseException) -> SecretcacheError:
    return upstream_failure(
        f"could not resolve AWS credentials ({_describe(error)})",
        retry_credentials=False,
    )


def _failed(error: Exception) -> Deferred[AWSCredentials]:
    d: Deferred[AWSCredentials] = Deferred()
    d.errback(_credential_error(error))
    return d
