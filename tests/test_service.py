"""The small services: listeners (required and optional), readiness and the
periodic maintenance tick, on fakes and a fake clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from secretcache.cache import SecretCache
from secretcache.secret import SecretKey, SecretValue
from secretcache.service import Listener, Periodic, Startup
from secretcache.testing import FakeCredentialSource


@implementer(IListeningPort)
class FakePort:
    def __init__(self) -> None:
        self.stopped = False

    def stopListening(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)

    def startListening(self) -> None:
        pass

    def getHost(self) -> Any:
        return None


@implementer(IStreamServerEndpoint)
class FakeEndpoint:
    def __init__(self, result: Any) -> None:
        self.result = result

    def listen(self, factory: Any) -> Deferred[Any]:
        if isinstance(self.result, Exception):
            return fail(self.result)
        return succeed(self.result)


FACTORY = Factory.forProtocol(Protocol)


class ListenerTests(SynchronousTestCase):
    def test_listens_while_running(self) -> None:
        port = FakePort()
        service = Listener(FakeEndpoint(port), FACTORY, "tcp:1", optional=False)
        service.privilegedStartService()
        service.startService()
        self.assertFalse(port.stopped)
        self.successResultOf(service.stopService())  # type: ignore[arg-type]
        self.assertTrue(port.stopped)

    def test_a_required_listener_that_cannot_bind_fails_the_start(self) -> None:
        error = CannotListenError("127.0.0.1", 1, OSError("in use"))
        service = Listener(FakeEndpoint(error), FACTORY, "tcp:1", optional=False)
        self.assertRaises(CannotListenError, service.privilegedStartService)

    def test_an_optional_listener_that_cannot_bind_is_skipped(self) -> None:
        error = CannotListenError("::1", 1, OSError("no IPv6"))
        service = Listener(FakeEndpoint(error), FACTORY, "tcp6:1", optional=True)
        service.privilegedStartService()
        service.startService()
        self.assertIsNone(service.stopService())


class PeriodicTests(SynchronousTestCase):
    def test_ticks_every_interval_while_running_and_survives_errors(self) -> None:
        clock = Clock()
        ticks: list[float] = []

        def tick() -> None:
            ticks.append(clock.seconds())
            if len(ticks) == 1:
                raise RuntimeError("boom")

        service = Periodic(5.0, tick, clock)
        service.startService()
        clock.advance(5)
        clock.advance(5)
        self.assertEqual(ticks, [5.0, 10.0])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        service.stopService()
        clock.advance(10)
        self.assertEqual(ticks, [5.0, 10.0])
        self.assertEqual(clock.getDelayedCalls(), [])


class ReadinessTests(SynchronousTestCase):
    def test_ready_turns_503_when_credentials_stop_resolving_and_back(self) -> None:
        def no_fetch(key: SecretKey) -> Deferred[SecretValue]:
            return Deferred()

        credentials = FakeCredentialSource()
        startup = Startup(SecretCache(no_fetch, Clock()), credentials, ())
        startup.startService()
        self.assertIsNone(startup.problem())
        # The credentials endpoint goes away after start (IMDS, ECS agent).
        credentials.broken = True
        self.assertEqual(startup.problem(), "AWS credentials are not resolved")
        credentials.broken = False
        self.assertIsNone(startup.problem())
        startup.stopService()
