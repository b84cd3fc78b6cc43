"""Settings from the command line and the environment: precedence, parsing,
and a clear one-line error for every malformed, missing, huge or hostile
value."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from secretcache.config import (
    DEFAULT_LISTENERS,
    ConfigError,
    Settings,
    is_loopback_listener,
    load_settings,
    parse_duration,
)
from secretcache.tap import Options

TOKEN_ENV = {"SECRETCACHE_TOKEN": "tok"}


def load(
    argv: Sequence[str] = (), env: dict[str, str] | None = None, **kw: Any
) -> Settings:
    options = Options()
    options.parseOptions(list(argv))
    return load_settings(options, TOKEN_ENV if env is None else env, **kw)


class DurationTests(SynchronousTestCase):
    def test_seconds_and_go_durations(self) -> None:
        cases = {
            "90": 90,
            "2.5": 2.5,
            "0": 0,
            "90s": 90,
            "5m": 300,
            "1h30m": 5400,
            "500ms": 0.5,
            "60m": 3600,
            "1.5h": 5400,
            "100us": 1e-4,
            " 7 ": 7,
        }
        for text, seconds in cases.items():
            self.assertAlmostEqual(parse_duration(text), seconds, msg=text)

    def test_bad_durations_are_refused(self) -> None:
        for text in (
            "",
            "-5",
            "5x",
            "1e3",
            "h",
            "1h-30m",
            "nan",
            "inf",
            "1h 30m",
            "9" * 100,
            "99999999999h",
            "5m5",
            "\x00",
        ):
            self.assertRaises(ValueError, parse_duration, text)


class PrecedenceTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        settings = load()
        self.assertEqual(settings.listen, DEFAULT_LISTENERS)
        self.assertEqual(
            (settings.ttl, settings.cache_size, settings.stale_if_error),
            (300.0, 1000, 3600.0),
        )
        self.assertEqual(
            (
                settings.upstream_timeout,
                settings.max_attempts,
                settings.request_timeout,
                settings.max_connections,
            ),
            (3.0, 3, 10.0, 800),
        )
        self.assertFalse(
            settings.no_token or settings.legacy_errors or settings.access_log
        )

    def test_command_line_wins_over_environment(self) -> None:
        env = {**TOKEN_ENV, "SECRETCACHE_TTL": "10", "SECRETS_MANAGER_TTL": "20"}
        self.assertEqual(load(["--ttl", "5m"], env).ttl, 300)
        self.assertEqual(load([], env).ttl, 10)

    def test_environment_variables_in_order_of_precedence(self) -> None:
        self.assertEqual(
            load(
                [],
                {
                    **TOKEN_ENV,
                    "SECRETS_MANAGER_TTL": "20",
                    "CACHE_EXTENSION_TTL": "60m",
                },
            ).ttl,
            20,
        )
        self.assertEqual(
            load([], {**TOKEN_ENV, "CACHE_EXTENSION_TTL": "60m"}).ttl, 3600
        )
        self.assertEqual(
            load(
                [], {**TOKEN_ENV, "SECRETS_MANAGER_TIMEOUT_MILLIS": "1500"}
            ).upstream_timeout,
            1.5,
        )
        self.assertEqual(
            load(
                [], {**TOKEN_ENV, "PARAMETERS_SECRETS_EXTENSION_CACHE_SIZE": "7"}
            ).cache_size,
            7,
        )
        # AWS's extension documents 0 as "no caching".
        self.assertEqual(
            load(
                [], {**TOKEN_ENV, "PARAMETERS_SECRETS_EXTENSION_CACHE_SIZE": "0"}
            ).cache_size,
            0,
        )

    def test_port_forms(self) -> None:
        self.assertEqual(
            load(["--port", "9000"]).listen, ("tcp:9000:interface=127.0.0.1",)
        )
        self.assertEqual(
            load(
                [], {**TOKEN_ENV, "SECRETCACHE_PORT": "tcp:1:interface=127.0.0.1, 2"}
            ).listen,
            ("tcp:1:interface=127.0.0.1", "tcp:2:interface=127.0.0.1"),
        )
        aws_port = load(
            [], {**TOKEN_ENV, "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT": "2773"}
        )
        self.assertEqual(
            aws_port.listen,
            ("tcp:2773:interface=127.0.0.1", "tcp6:2773:interface=\\:\\:1"),
        )
        self.assertTrue(aws_port.default_listen)
        self.assertEqual(
            load(["-p", "1", "-p", "unix:/tmp/s"]).listen,
            ("tcp:1:interface=127.0.0.1", "unix:/tmp/s"),
        )

    def test_flags_from_environment(self) -> None:
        env = {
            **TOKEN_ENV,
            "SECRETCACHE_LEGACY_ERRORS": "1",
            "SECRETCACHE_ACCESS_LOG": "true",
        }
        settings = load([], env)
        self.assertTrue(settings.legacy_errors and settings.access_log)
        self.assertFalse(
            load([], {**TOKEN_ENV, "SECRETCACHE_LEGACY_ERRORS": "0"}).legacy_errors
        )


class BadValueTests(SynchronousTestCase):
    def assertRefused(
        self, argv: list[str], env: dict[str, str], *fragments: str
    ) -> str:
        error = self.assertRaises(ConfigError, load, argv, {**TOKEN_ENV, **env})
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertLess(len(message), 400)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_each_bad_value_names_its_option_and_value(self) -> None:
        cases: list[tuple[list[str], dict[str, str], *tuple[str, ...]]] = [
            (["--ttl", "abc"], {}, "--ttl", "'abc'"),
            ([], {"SECRETCACHE_TTL": "-1"}, "SECRETCACHE_TTL", "'-1'"),
            (["--cache-size", "-3"], {}, "--cache-size", "'-3'"),
            (["--cache-size", "1e9"], {}, "--cache-size"),
            (["--max-attempts", "0"], {}, "--max-attempts"),
            (["--max-attempts", "11"], {}, "--max-attempts"),
            (["--upstream-timeout", "0"], {}, "--upstream-timeout"),
            (
                [],
                {"SECRETS_MANAGER_TIMEOUT_MILLIS": "1.5"},
                "SECRETS_MANAGER_TIMEOUT_MILLIS",
            ),
            (["--request-timeout", "soon"], {}, "--request-timeout"),
            (["--max-connections", "x"], {}, "--max-connections"),
            (["--port", "tcp:99999"], {}, "--port", "65535"),
            (["--port", "carrier-pigeon:1"], {}, "--port", "unknown endpoint type"),
            (["--port", "tcp:8015:bogus=1"], {}, "--port", "unknown tcp option"),
            (["--port", "tcp:1:interface=256.1.1.1"], {}, "--port", "not an IP"),
            (["--port", "tcp:1:interface=localhost"], {}, "--port", "not an IP"),
            (["--port", "tcp6:1:backlog=-1"], {}, "--port", "backlog"),
            (["--port", "tcp:1:port=2"], {}, "--port", "more than one port"),
            ([], {"SECRETCACHE_PORT": ","}, "SECRETCACHE_PORT"),
            (
                [],
                {"PARAMETERS_SECRETS_EXTENSION_HTTP_PORT": "tcp:1"},
                "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT",
            ),
            (["--region", "Not A Region"], {}, "--region"),
            (["--endpoint-url", "ftp://x"], {}, "--endpoint-url"),
            (["--endpoint-url", "https://user:pw@host"], {}, "--endpoint-url"),
            (["--log-level", "loud"], {}, "--log-level"),
            (["--log-format", "xml"], {}, "--log-format"),
            ([], {"SECRETCACHE_NO_TOKEN": "perhaps"}, "SECRETCACHE_NO_TOKEN"),
            (["--prefetch", "a,\x00b"], {}, "--prefetch"),
        ]
        for argv, env, *fragments in cases:
            self.assertRefused(argv, env, *fragments)

    def test_huge_and_hostile_values_are_cut_in_the_message(self) -> None:
        message = self.assertRefused(["--ttl", "9" * 10000 + "\n\x1b[31m"], {}, "--ttl")
        self.assertNotIn("\x1b", message)

    def test_no_token_at_all_refuses_to_start_naming_both_ways_out(self) -> None:
        error = self.assertRaises(ConfigError, load, [], {})
        self.assertIn("SECRETCACHE_TOKEN", str(error))
        self.assertIn("--no-token", str(error))

    def test_no_token_is_refused_on_a_non_loopback_listener(self) -> None:
        error = self.assertRaises(
            ConfigError, load, ["--no-token", "--port", "tcp:8015"], {}
        )
        self.assertIn("non-loopback", str(error))
        self.assertRaises(
            ConfigError,
            load,
            [],
            {
                "SECRETCACHE_NO_TOKEN": "1",
                "SECRETCACHE_PORT": "tcp:1:interface=0.0.0.0",
            },
        )
        self.assertTrue(load(["--no-token"], {}).no_token)
        self.assertIsNone(load(["--no-token"], {}).token)


class TokenTests(SynchronousTestCase):
    def test_token_sources_in_order(self) -> None:
        env = {
            "AWS_TOKEN": "a",
            "AWS_SESSION_TOKEN": "b",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": "c",
        }
        token = load([], env).token
        assert token is not None
        self.assertTrue(token.matches(b"a"))
        token = load([], {"AWS_SESSION_TOKEN": "b"}).token
        assert token is not None
        self.assertTrue(token.matches(b"b") and not token.matches(b"a"))
        token = load([], {**env, "SECRETCACHE_TOKEN": "s"}).token
        assert token is not None
        self.assertTrue(token.matches(b"s"))

    def test_token_from_a_file_drops_one_trailing_newline(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from-file\n")
        token = load([], {"SECRETCACHE_TOKEN": f"file://{path}"}).token
        assert token is not None
        self.assertTrue(token.matches(b"from-file"))

    def test_unreadable_or_empty_token_file_is_refused_without_contents(self) -> None:
        error = self.assertRaises(
            ConfigError, load, [], {"SECRETCACHE_TOKEN": "file:///nonexistent/t"}
        )
        self.assertIn("/nonexistent/t", str(error))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("\n")
        self.assertRaises(
            ConfigError, load, [], {"SECRETCACHE_TOKEN": f"file://{path}"}
        )

    def test_invalid_token_is_refused_without_echoing_it(self) -> None:
        for bad in ("has space", "tab\there", "x" * 9000, "é"):
            error = self.assertRaises(ConfigError, load, [], {"SECRETCACHE_TOKEN": bad})
            self.assertNotIn(bad, str(error))

    def test_empty_secretcache_token_is_an_error_not_a_fallthrough(self) -> None:
        self.assertRaises(
            ConfigError, load, [], {"SECRETCACHE_TOKEN": "", "AWS_SESSION_TOKEN": "b"}
        )

    def test_token_repr_hides_the_value(self) -> None:
        token = load([], {"SECRETCACHE_TOKEN": "sup3rs3cret"}).token
        self.assertNotIn("sup3rs3cret", repr(token))
        self.assertNotIn(
            "sup3rs3cret", repr(load([], {"SECRETCACHE_TOKEN": "sup3rs3cret"}))
        )

    def test_comparison_needs_the_exact_token(self) -> None:
        token = load([], {"SECRETCACHE_TOKEN": "abc"}).token
        assert token is not None
        for candidate in (b"", b"ab", b"abcd", b"ABC", None):
            self.assertFalse(token.matches(candidate))


class LoopbackTests(SynchronousTestCase):
    def test_loopback_listeners(self) -> None:
        for description in (
            "tcp:1:interface=127.0.0.1",
            "tcp6:1:interface=\\:\\:1",
            "tcp:1:interface=127.5.5.5",
            "unix:/tmp/x",
            "tcp:port=1:interface=localhost",
        ):
            self.assertTrue(is_loopback_listener(description), description)
        for description in (
            "tcp:1",
            "tcp:1:interface=0.0.0.0",
            "tcp6:1:interface=\\:\\:",
            "tcp:1:interface=10.0.0.1",
            "systemd:domain=INET:index=0",
        ):
            self.assertFalse(is_loopback_listener(description), description)
