"""SecretCache: TTL, LRU, coalescing, the forced-refresh window, stale-if-error
and refresh-ahead, on a fake clock."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from secretcache.cache import Outcome, SecretCache
from secretcache.errors import SecretcacheError, from_upstream, upstream_failure
from secretcache.secret import SecretKey, SecretValue

KEY = SecretKey("db")
OTHER = SecretKey("api")


def value(text: str, name: str = "db") -> SecretValue:
    return SecretValue(
        arn=f"arn:aws:secretsmanager:us-east-1:1:secret:{name}-AbCdEf",
        name=name,
        version_id="v1",
        version_stages=["AWSCURRENT"],
        created_date=1,
        secret_string=text,
    )


class Fetches:
    """A fetch function whose calls the test answers one by one."""

    def __init__(self) -> None:
        self.pending: list[tuple[SecretKey, Deferred[SecretValue]]] = []
        self.count = 0

    def __call__(self, key: SecretKey) -> Deferred[SecretValue]:
        self.count += 1
        d: Deferred[SecretValue] = Deferred()
        self.pending.append((key, d))
        return d

    def answer(self, text: str) -> None:
        key, d = self.pending.pop(0)
        d.callback(value(text, key.secret_id))

    def fail(self, error: SecretcacheError) -> None:
        _, d = self.pending.pop(0)
        d.errback(error)


class CacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fetches = Fetches()
        self.cache = SecretCache(
            self.fetches,
            self.clock,
            ttl=300,
            max_entries=3,
            stale_if_error=3600,
            jitter=lambda: 0.0,
        )

    def text(self, d: Deferred[tuple[SecretValue, Outcome]]) -> tuple[str, bytes]:
        secret, outcome = self.successResultOf(d)
        return secret.raw_body.decode(), outcome.value

    def test_first_request_misses_then_hits_without_a_fetch(self) -> None:
        first = self.cache.get(KEY)
        self.assertNoResult(first)
        self.fetches.answer("s1")
        self.assertEqual(self.text(first), ("s1", b"miss"))
        self.assertEqual(self.text(self.cache.get(KEY)), ("s1", b"hit"))
        self.assertEqual(self.fetches.count, 1)

    def test_expired_entry_is_fetched_again(self) -> None:
        self.cache.get(KEY)
        self.fetches.answer("s1")
        self.clock.advance(300)
        d = self.cache.get(KEY)
        self.assertNoResult(d)
        self.fetches.answer("s2")
        self.assertEqual(self.text(d), ("s2", b"miss"))

    def test_concurrent_cold_requests_share_one_fetch(self) -> None:
        waiters = [self.cache.get(KEY) for _ in range(100)]
        self.assertEqual(self.fetches.count, 1)
        self.fetches.answer("s1")
        self.assertEqual({self.text(d) for d in waiters}, {("s1", b"miss")})

    def test_different_keys_fetch_independently(self) -> None:
        a = self.cache.get(KEY)
        b = self.cache.get(SecretKey("db", version_stage="AWSPREVIOUS"))
        self.assertEqual(self.fetches.count, 2)
        self.fetches.answer("current")
        self.fetches.answer("previous")
        self.assertEqual(self.text(a)[0], "current")
        self.assertEqual(self.text(b)[0], "previous")

    def test_least_recently_used_entry_is_evicted(self) -> None:
        for name in ("a", "b", "c"):
            self.cache.get(SecretKey(name))
            self.fetches.answer(name)
        self.cache.get(SecretKey("a"))  # a is now the most recently used
        self.cache.get(SecretKey("d"))
        self.fetches.answer("d")
        self.assertEqual(len(self.cache), 3)
        self.assertIsNone(self.cache.lookup(SecretKey("b")))
        self.assertIsNotNone(self.cache.lookup(SecretKey("a")))

    def test_ttl_or_size_zero_keeps_nothing_but_still_coalesces(self) -> None:
        for settings in ({"ttl": 0.0}, {"max_entries": 0}):
            fetches = Fetches()
            cache = SecretCache(fetches, self.clock, **settings)
            first, second = cache.get(KEY), cache.get(KEY)
            fetches.answer("s1")
            self.assertEqual(self.text(first), ("s1", b"miss"))
            self.assertEqual(self.text(second), ("s1", b"miss"))
            self.assertEqual(len(cache), 0)
            cache.get(KEY)
            self.assertEqual(fetches.count, 2, settings)

    def test_refresh_burst_within_a_second_costs_one_fetch(self) -> None:
        self.cache.get(KEY)
        self.fetches.answer("s1")
        self.clock.advance(5)
        first = self.cache.get(KEY, refresh=True)
        self.fetches.answer("s2")
        self.clock.advance(0.5)
        second = self.cache.get(KEY, refresh=True)
        self.assertEqual(self.text(first), ("s2", b"refresh"))
        self.assertEqual(self.text(second), ("s2", b"refresh"))
        self.assertEqual(self.fetches.count, 2)

    def test_refresh_after_the_window_fetches_again(self) -> None:
        self.cache.get(KEY)
        self.fetches.answer("s1")
        self.clock.advance(1.0)
        self.cache.get(KEY, refresh=True)
        self.assertEqual(self.fetches.count, 2)

    def test_refresh_joins_a_fetch_in_flight(self) -> None:
        miss = self.cache.get(KEY)
        refresh = self.cache.get(KEY, refresh=True)
        self.assertEqual(self.fetches.count, 1)
        self.fetches.answer("s1")
        self.assertEqual(self.text(miss), ("s1", b"miss"))
        self.assertEqual(self.text(refresh), ("s1", b"refresh"))

    def test_failed_refresh_returns_the_error_and_keeps_the_value(self) -> None:
        self.cache.get(KEY)
        self.fetches.answer("s1")
        self.clock.advance(10)
        refresh = self.cache.get(KEY, refresh=True)
        self.fetches.fail(upstream_failure("down"))
        self.assertEqual(
            self.failureResultOf(refresh, SecretcacheError).value.status, 502
        )
        self.assertEqual(self.text(self.cache.get(KEY)), ("s1", b"hit"))

    def test_failed_fetches_do_not_open_the_refresh_window(self) -> None:
        self.cache.get(KEY)
        self.fetches.answer("s1")
        self.clock.advance(10)
        failed = self.cache.get(KEY, refresh=True)
        self.fetches.fail(upstream_failure("down"))
        self.failureResultOf(failed, SecretcacheError)
        self.clock.advance(0.1)
        self.cache.get(KEY, refresh=True)
        self.assertEqual(self.fetches.count, 3)

    def test_stale_value_is_served_through_a_transient_failure(self) -> None:
        d = self.expire_after_a_failed_refresh()
        self.assertEqual(self.text(d), ("s1", b"stale"))

    def expire_after_a_failed_refresh(self) -> Deferred[tuple[SecretValue, Outcome]]:
        """KEY cached as s1, expired, and one refresh since failed transiently;
        returns the request that waited on that refresh."""
        self.cache.get(KEY)
        self.fetches.answer("s1")
        self.clock.advance(301)
        waited = self.cache.get(KEY)
        self.fetches.fail(upstream_failure("connection refused"))
        return waited

    def test_after_a_transient_failure_stale_is_served_at_once(self) -> None:
        """Once a refresh of an expired entry has failed transiently, requests
        do not wait on Secrets Manager again: they get the stale value at
        once, and the retry runs in the background after the back-off."""
        first = self.expire_after_a_failed_refresh()
        self.assertEqual(self.text(first), ("s1", b"stale"))
        # Within the first back-off (1 s, jitter 0): answered, nothing fetched.
        self.clock.advance(0.5)
        self.assertEqual(self.text(self.cache.get(KEY)), ("s1", b"stale"))
        self.assertEqual(self.fetches.count, 2)
        # Past it: still answered at once, and one retry starts behind it.
        self.clock.advance(0.6)
        self.assertEqual(self.text(self.cache.get(KEY)), ("s1", b"stale"))
        self.assertEqual(self.text(self.cache.get(KEY)), ("s1", b"stale"))
        self.assertEqual(self.fetches.count, 3)
        self.fetches.answer("s2")
        self.assertEqual(self.text(self.cache.get(KEY)), ("s2", b"hit"))

    def test_one_success_ends_every_key_s_back_off(self) -> None:
        """Each key backs off on its own during an outage, but the first
        fetch that succeeds shows Secrets Manager is back: the other keys
        are refreshed on their next read, not after their own back-off."""
        for key in (KEY, OTHER):
            self.cache.get(key)
            self.fetches.answer("v1")
        self.clock.advance(301)
        for key in (KEY, OTHER):
            d = self.cache.get(key)
            self.fetches.fail(upstream_failure("connection refused"))
            self.assertEqual(self.successResultOf(d)[1], Outcome.STALE)
        # A second failure of OTHER doubles its back-off (2 s with jitter 0).
        self.clock.advance(1.1)
        self.cache.get(OTHER)
        self.fetches.fail(upstream_failure("connection refused"))
        # KEY's retry (due at 1 s) succeeds: OTHER, due only at 3.1 s, is
        # refreshed on its next read.
        self.cache.get(KEY)
        self.fetches.answer("v2")
        self.assertEqual(self.text(self.cache.get(KEY)), ("v2", b"hit"))
        count = self.fetches.count
        self.assertEqual(self.text(self.cache.get(OTHER)), ("v1", b"stale"))
        self.assertEqual(self.fetches.count, count + 1)
        self.fetches.answer("v2")
        self.assertEqual(self.text(self.cache.get(OTHER)), ("v2", b"hit"))

    def test_stale_at_once_ends_when_upstream_answers_for_good(self) -> None:
        self.expire_after_a_failed_refresh()
        self.clock.advance(1.1)
        self.cache.get(KEY)  # stale, with a retry in the background
        self.fetches.fail(from_upstream(400, "ResourceNotFoundException", "gone"))
        d = self.cache.get(KEY)
        self.assertEqual(self.fetches.count, 4)
        self.fetches.fail(from_upstream(400, "ResourceNotFoundException", "gone"))
        self.assertEqual(self.failureResultOf(d, SecretcacheError).value.status, 404)

    def test_stale_at_once_ends_with_the_stale_window(self) -> None:
        self.expire_after_a_failed_refresh()
        self.clock.advance(3600)
        d = self.cache.get(KEY)
        self.assertNoResult(d)
        self.fetches.fail(upstream_failure("connection refused"))
        self.failureResultOf(d, SecretcacheError)

    def test_forced_refresh_still_waits_and_fails_while_stale(self) -> None:
        self.expire_after_a_failed_refresh()
        d = self.cache.get(KEY, refresh=True)
        self.assertNoResult(d)
        self.fetches.fail(upstream_failure("connection refused"))
        self.assertEqual(self.failureResultOf(d, SecretcacheError).value.status, 502)

    def test_stale_window_ends(self) -> None:
        self.cache.get(KEY)
        self.fetches.answer("s1")
        self.clock.advance(300 + 3600)
        d = self.cache.get(KEY)
        self.fetches.fail(upstream_failure("connection refused"))
        self.failureResultOf(d, SecretcacheError)

    def test_not_found_is_never_masked_and_drops_the_entry(self) -> None:
        self.cache.get(KEY)
        self.fetches.answer("s1")
        self.clock.advance(301)
        d = self.cache.get(KEY)
        self.fetches.fail(from_upstream(400, "ResourceNotFoundException", "gone"))
        self.assertEqual(self.failureResultOf(d, SecretcacheError).value.status, 404)
        self.assertEqual(len(self.cache), 0)

    def test_cancelled_waiter_does_not_cancel_the_shared_fetch(self) -> None:
        first, second = self.cache.get(KEY), self.cache.get(KEY)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.fetches.answer("s1")
        self.assertEqual(self.text(second), ("s1", b"miss"))

    def test_hit_past_the_refresh_point_refreshes_in_the_background(self) -> None:
        self.cache.get(KEY)
        self.fetches.answer("s1")
        self.clock.advance(300 * 0.8)
        self.assertEqual(self.text(self.cache.get(KEY)), ("s1", b"hit"))
        self.assertEqual(self.fetches.count, 2)
        self.fetches.answer("s2")
        self.clock.advance(300 * 0.3)
        # The first entry would have expired by now; the refreshed one serves.
        self.assertEqual(self.text(self.cache.get(KEY)), ("s2", b"hit"))

    def test_refresh_in_use_skips_entries_nobody_read(self) -> None:
        self.cache.get(KEY)
        self.fetches.answer("s1")
        self.cache.get(OTHER)
        self.fetches.answer("s2")
        self.cache.lookup(KEY)
        self.clock.advance(300 * 0.8)
        self.assertEqual(self.cache.refresh_in_use(), 1)
        self.assertEqual(self.fetches.pending[0][0], KEY)

    def test_failed_background_refresh_backs_off_instead_of_retrying_per_hit(
        self,
    ) -> None:
        self.cache.get(KEY)
        self.fetches.answer("s1")
        self.clock.advance(300 * 0.8)
        self.cache.lookup(KEY)  # starts the refresh-ahead
        self.fetches.fail(from_upstream(400, "AccessDeniedException", "no"))
        # A hot key: a hundred hits within the next second start nothing.
        for _ in range(100):
            self.clock.advance(0.01)
            self.assertEqual(self.text(self.cache.get(KEY)), ("s1", b"hit"))
        self.assertEqual(self.fetches.count, 2)
        # Past the first back-off (1 s; jitter 0 here) the next hit retries,
        # and a second failure doubles the wait.
        self.clock.advance(0.01)
        self.cache.lookup(KEY)
        self.assertEqual(self.fetches.count, 3)
        self.fetches.fail(upstream_failure("down"))
        self.clock.advance(1.5)
        self.cache.lookup(KEY)
        self.assertEqual(self.fetches.count, 3)
        self.clock.advance(0.6)
        self.cache.lookup(KEY)
        self.assertEqual(self.fetches.count, 4)
        self.fetches.answer("s2")
        self.assertEqual(self.text(self.cache.get(KEY)), ("s2", b"hit"))

    def test_refresh_in_use_leaves_expired_entries_alone(self) -> None:
        self.cache.get(KEY)
        self.fetches.answer("s1")
        self.cache.lookup(KEY)
        self.clock.advance(301)
        # Kept for stale-if-error, but nobody asked for it since it expired.
        self.assertEqual(self.cache.refresh_in_use(), 0)
        self.assertEqual(self.fetches.count, 1)

    def test_stop_cancels_fetches_in_flight_and_fails_their_waiters(self) -> None:
        cancelled: list[SecretKey] = []

        def fetch(key: SecretKey) -> Deferred[SecretValue]:
            return Deferred(lambda _: cancelled.append(key))

        cache = SecretCache(fetch, self.clock)
        waiting = cache.get(KEY)
        cache.stop()
        self.assertEqual(cancelled, [KEY])
        self.failureResultOf(waiting, SecretcacheError)
        self.assertEqual(cache.in_flight, 0)

    def test_purge_drops_entries_past_the_stale_window(self) -> None:
        self.cache.get(KEY)
        self.fetches.answer("s1")
        self.clock.advance(300 + 3600)
        self.assertEqual(self.cache.purge(), 1)
        self.assertEqual(len(self.cache), 0)

    def test_fetch_that_raises_becomes_an_upstream_error(self) -> None:
        def broken(key: SecretKey) -> Deferred[SecretValue]:
            raise RuntimeError("bug")

        cache = SecretCache(broken, self.clock)
        failure = self.failureResultOf(cache.get(KEY), SecretcacheError)
        self.assertEqual(failure.value.status, 502)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(cache.in_flight, 0)

    def test_secret_value_repr_hides_the_value(self) -> None:
        self.assertNotIn("hunter2", repr(value("hunter2")))
        self.assertNotIn("hunter2", str(value("hunter2")))
