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

    def invalidate(refused: AWSCredentials) -> None:
        """Secrets Manager refused ``refused`` as expired: unless they have
        been replaced already, forget them, so the next ``get`` resolves the
        chain anew."""


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
        self._frozen: AWSCredentials | None = None
        self._pending: list[Deferred[AWSCredentials]] | None = None
        # Bumped by invalidate(): a resolution that began before it may hand
        # back the very keys that were refused.
        self._generation = 0
        self.resolved = False

    def get(self) -> Deferred[AWSCredentials]:
        held, frozen = self._credentials, self._frozen
        if held is not None and frozen is not None:
            if not _needs_refresh(held):
                return succeed(frozen)
            if not _needs_refresh(held, _mandatory_window(held)):
                # Inside botocore's advisory window the held keys are still
                # good for minutes: sign with them and refresh in the
                # background, so no request waits for the credentials endpoint.
                if self._pending is None:
                    self._start_resolution([])
                return succeed(frozen)
        waiter: Deferred[AWSCredentials] = Deferred()
        if self._pending is not None:
            self._pending.append(waiter)
            return waiter
        self._start_resolution([waiter])
        return waiter

    def _start_resolution(self, waiters: list[Deferred[AWSCredentials]]) -> None:
        self._pending = waiters
        self._run_in_thread(self._resolve_blocking).addBoth(
            self._resolved, self._generation
        )

    def invalidate(self, refused: AWSCredentials) -> None:
        if self._frozen is not None and self._frozen is not refused:
            # Another request's refusal already had these replaced.
            return
        self._generation += 1
        self._credentials = None
        self._frozen = None

    def _resolve_blocking(self) -> tuple[_BotocoreCredentials, AWSCredentials]:
        held = self._credentials
        if held is None:
            held = self._resolve()
            if held is None:
                raise _NoCredentials()
        return held, _freeze(held.get_frozen_credentials())

    def _resolved(self, result: Any, generation: int) -> None:
        waiters, self._pending = self._pending or [], None
        if generation != self._generation:
            # Invalidated while this ran: resolve again for those waiting.
            if waiters:
                self._start_resolution(waiters)
            return
        if isinstance(result, tuple):
            self._credentials, frozen = result
            self._frozen = frozen
            self.resolved = True
            for waiter in waiters:
                waiter.callback(frozen)
            return
        error = result.value
        self.resolved = False
        self._credentials = self._frozen = None
        self.log.warn(
            "could not resolve AWS credentials: {error}", error=_describe(error)
        )
        for waiter in waiters:
            waiter.errback(_credential_error(error))


class _NoCredentials(Exception):
    pass


def _needs_refresh(
    credentials: _BotocoreCredentials, within: float | None = None
) -> bool:
    """Whether botocore would refresh these credentials now: by default inside
    its advisory window (15 minutes before expiry), or inside ``within``."""
    refresh_needed = getattr(credentials, "refresh_needed", None)
    return bool(refresh_needed is not None and refresh_needed(within))


def _mandatory_window(credentials: _BotocoreCredentials) -> float:
    # botocore's RefreshableCredentials: past this, held keys are not used.
    return float(getattr(credentials, "_mandatory_refresh_timeout", 600))


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
