"""Command line and environment into one immutable ``Settings`` value.

Every option is declared once in ``OPTIONS``; the twistd ``Options``, ``--help``
and the parsing below all read that table, so they cannot drift apart.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

DEFAULT_LISTENERS = ("tcp:8015:interface=127.0.0.1", "tcp6:8015:interface=\\:\\:1")
TOKEN_HEADERS = (b"x-aws-parameters-secrets-token", b"x-vault-token")

# Longest value echoed back in an error line; longer ones are cut, so that a
# hostile environment cannot flood the log with one variable.
_ECHO_LIMIT = 80
# The longest duration we accept: ten years. Larger values are typos and would
# overflow timer arithmetic in some reactors.
_MAX_DURATION = 10 * 365 * 24 * 3600.0
_MAX_TOKEN_LENGTH = 8192
_MAX_SECRET_ID_LENGTH = 2048


class ConfigError(Exception):
    """A bad option value. ``str()`` is one line a user can act on."""


class Token:
    """The shared secret clients present. Its value never appears in a repr."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value.encode("ascii")
        self.source = source

    def matches(self, candidate: bytes | None) -> bool:
        if candidate is None:
            return False
        return hmac.compare_digest(candidate, self._value)

    def __repr__(self) -> str:
        return f"<Token from {self.source}, redacted>"

    __str__ = __repr__


@dataclass(frozen=True)
class Settings:
    listen: tuple[str, ...] = DEFAULT_LISTENERS
    # True when ``listen`` is a loopback pair (the default, or the port of
    # PARAMETERS_SECRETS_EXTENSION_HTTP_PORT): the IPv6 one is then optional,
    # since not every host (or container) has ::1.
    default_listen: bool = True
    ttl: float = 300.0
    cache_size: int = 1000
    stale_if_error: float = 3600.0
    prefetch: tuple[str, ...] = ()
    upstream_timeout: float = 3.0
    max_attempts: int = 3
    request_timeout: float = 10.0
    max_connections: int = 800
    region: str | None = None
    endpoint_url: str | None = None
    token: Token | None = field(default=None, repr=True)
    no_token: bool = False
    legacy_errors: bool = False
    access_log: bool = False
    log_level: str = "info"
    log_format: str = "text"


@dataclass(frozen=True)
class OptionSpec:
    name: str
    env: tuple[str, ...]
    default: str
    help: str
    flag: bool = False
    metavar: str = "VALUE"


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "port",
        ("SECRETCACHE_PORT", "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT"),
        "tcp:8015 on 127.0.0.1 and ::1",
        "Listen on this Twisted endpoint (repeatable); a bare number N means "
        "tcp:N:interface=127.0.0.1.",
        metavar="ENDPOINT",
    ),
    OptionSpec(
        "ttl",
        ("SECRETCACHE_TTL", "SECRETS_MANAGER_TTL", "CACHE_EXTENSION_TTL"),
        "300s",
        "How long a fetched secret is served from the cache; 0 keeps nothing.",
        metavar="DURATION",
    ),
    OptionSpec(
        "cache-size",
        ("SECRETCACHE_CACHE_SIZE", "PARAMETERS_SECRETS_EXTENSION_CACHE_SIZE"),
        "1000",
        "Most entries kept; the least recently used is evicted first; 0 keeps nothing.",
        metavar="N",
    ),
    OptionSpec(
        "stale-if-error",
        ("SECRETCACHE_STALE_IF_ERROR",),
        "3600s",
        "How long past expiry a value may be served while Secrets Manager "
        "cannot be reached.",
        metavar="DURATION",
    ),
    OptionSpec(
        "prefetch",
        ("SECRETCACHE_PREFETCH",),
        "none",
        "Comma-separated secret ids fetched at start.",
        metavar="IDS",
    ),
    OptionSpec(
        "upstream-timeout",
        ("SECRETCACHE_UPSTREAM_TIMEOUT", "SECRETS_MANAGER_TIMEOUT_MILLIS"),
        "3s",
        "Timeout of one call to Secrets Manager (the second variable is in ms).",
        metavar="DURATION",
    ),
    OptionSpec(
        "max-attempts",
        ("SECRETCACHE_MAX_ATTEMPTS",),
        "3",
        "Attempts in all for one fetch, retries of transient failures included.",
        metavar="N",
    ),
    OptionSpec(
        "request-timeout",
        ("SECRETCACHE_REQUEST_TIMEOUT",),
        "10s",
        "Bound on one fetch, retries included.",
        metavar="DURATION",
    ),
    OptionSpec(
        "max-connections",
        ("SECRETCACHE_MAX_CONNECTIONS", "PARAMETERS_SECRETS_EXTENSION_MAX_CONNECTIONS"),
        "800",
        "Open client connections allowed; more are answered 429.",
        metavar="N",
    ),
    OptionSpec(
        "region",
        (),
        "botocore's resolution",
        "AWS region (else AWS_REGION, AWS_DEFAULT_REGION, the shared config).",
        metavar="REGION",
    ),
    OptionSpec(
        "endpoint-url",
        (),
        "botocore's resolution",
        "Secrets Manager endpoint (else AWS_ENDPOINT_URL_SECRETS_MANAGER, "
        "AWS_ENDPOINT_URL, the shared config).",
        metavar="URL",
    ),
    OptionSpec(
        "no-token",
        ("SECRETCACHE_NO_TOKEN",),
        "off",
        "Serve secrets without a token (loopback listeners only).",
        flag=True,
    ),
    OptionSpec(
        "legacy-errors",
        ("SECRETCACHE_LEGACY_ERRORS",),
        "off",
        "On /cache, answer every error by closing the connection (Go server).",
        flag=True,
    ),
    OptionSpec(
        "access-log",
        ("SECRETCACHE_ACCESS_LOG",),
        "off",
        "Log one line per request.",
        flag=True,
    ),
    OptionSpec(
        "log-level",
        ("SECRETCACHE_LOG_LEVEL",),
        "info",
        "debug, info, warn, error or critical.",
        metavar="LEVEL",
    ),
    OptionSpec(
        "log-format",
        ("SECRETCACHE_LOG_FORMAT",),
        "text",
        "text, or json (one object a line).",
        metavar="FORMAT",
    ),
)

TOKEN_ENV = (
    "SECRETCACHE_TOKEN",
    "AWS_TOKEN",
    "AWS_SESSION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
)


def help_text(spec: OptionSpec) -> str:
    where = f" [env: {', '.join(spec.env)}]" if spec.env else ""
    return f"{spec.help}{where} [default: {spec.default}]"


def echo(value: str) -> str:
    """A bad value, quoted and cut short, safe to put in one log line."""
    if len(value) > _ECHO_LIMIT:
        value = value[:_ECHO_LIMIT] + "..."
    return repr(value)


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SECONDS = re.compile(rf"{_NUMBER}")
_GO_PART = re.compile(rf"({_NUMBER})(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds (``90``, ``2.5``) or a Go duration (``90s``, ``1h30m``, ``500ms``).

    Raises ``ValueError`` with the reason; negative values are refused.
    """
    text = text.strip()
    if not text or len(text) > 64:
        raise ValueError("expected seconds or a duration such as 90s, 5m, 1h30m")
    if _SECONDS.fullmatch(text):
        seconds = float(text)
    else:
        position = 0
        seconds = 0.0
        for match in _GO_PART.finditer(text):
            if match.start() != position:
                break
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            position = match.end()
        if position != len(text) or position == 0:
            raise ValueError("expected seconds or a duration such as 90s, 5m, 1h30m")
    if not math.isfinite(seconds) or seconds > _MAX_DURATION:
        raise ValueError("too long (at most ten years)")
    return seconds


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/true/yes/on or 0/false/no/off")


def parse_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        text = text.strip()
        if not re.fullmatch(r"[+]?\d{1,12}", text):
            raise ValueError(f"expected a whole number from {low} to {high}")
        number = int(text)
        if not low <= number <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return number

    return parse


def parse_positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def parse_millis(text: str) -> float:
    return parse_int(1, 3_600_000)(text) / 1000.0


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        lowered = text.strip().lower()
        if lowered == "warning":
            lowered = "warn"
        if lowered not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return lowered

    return parse


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def parse_prefetch(text: str) -> tuple[str, ...]:
    ids = tuple(part.strip() for part in text.split(",") if part.strip())
    if len(ids) > 10_000:
        raise ValueError("at most 10000 ids")
    for secret_id in ids:
        if len(secret_id) > _MAX_SECRET_ID_LENGTH or _has_control(secret_id):
            raise ValueError(
                f"each id must be at most {_MAX_SECRET_ID_LENGTH} characters "
                "with no control characters"
            )
    return ids


def parse_region(text: str) -> str:
    text = text.strip()
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", text):
        raise ValueError("expected a region name such as eu-west-1")
    return text


def parse_endpoint_url(text: str) -> str:
    text = text.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError("expected an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or _has_control(text):
        raise ValueError("expected an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if parts.username is not None:
        raise ValueError("credentials in the URL are not accepted")
    if parts.query or parts.fragment:
        raise ValueError("a query or fragment is not accepted in the URL")
    if len(text) > 2048:
        raise ValueError("the URL is longer than 2048 characters")
    del port
    return text


def split_endpoint(description: str) -> list[str]:
    """Split a Twisted endpoint string on unescaped colons, unescaping."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


_STREAM_TYPES = ("tcp", "tcp6", "unix", "ssl", "systemd")


def parse_listener(text: str) -> str:
    text = text.strip()
    if re.fullmatch(r"\d{1,5}", text):
        text = f"tcp:{text}:interface=127.0.0.1"
    if not text or len(text) > 512 or _has_control(text):
        raise ValueError("expected an endpoint such as tcp:8015:interface=127.0.0.1")
    parts = split_endpoint(text)
    kind = parts[0]
    if kind not in _STREAM_TYPES:
        raise ValueError(f"unknown endpoint type {echo(kind)}; use tcp, tcp6 or unix")
    if kind in ("tcp", "tcp6", "ssl"):
        positional = [p for p in parts[1:] if "=" not in p]
        ports = [p.split("=", 1)[1] for p in parts[1:] if p.startswith("port=")]
        port = (positional or ports or [""])[0]
        if not re.fullmatch(r"\d{1,5}", port) or int(port) > 65535:
            raise ValueError("expected a port from 0 to 65535")
        if len(positional) + len(ports) > 1:
            raise ValueError("more than one port given")
        for part in parts[1:]:
            name, eq, value = part.partition("=")
            if not eq:
                continue
            if kind != "ssl" and name not in _TCP_OPTIONS:
                raise ValueError(
                    f"unknown {kind} option {echo(name)}; "
                    "use port, interface or backlog"
                )
            if name == "interface":
                try:
                    ipaddress.ip_address(value)
                except ValueError:
                    raise ValueError(
                        f"interface {echo(value)} is not an IP address"
                    ) from None
            elif name == "backlog" and not (
                re.fullmatch(r"\d{1,5}", value) and 0 < int(value) <= 65535
            ):
                raise ValueError("backlog must be a number from 1 to 65535")
    return text


_TCP_OPTIONS = frozenset({"port", "interface", "backlog"})


@dataclass(frozen=True)
class TCPListener:
    family: str  # "tcp" or "tcp6"
    port: int
    interface: str
    backlog: int = 50


def tcp_listener(description: str) -> TCPListener | None:
    """A ``tcp``/``tcp6`` endpoint string taken apart, or None for other
    kinds; lets us listen without Twisted's endpoint-string parser, whose
    plugin scan imports a dozen modules we never use."""
    parts = split_endpoint(description)
    if parts[0] not in ("tcp", "tcp6"):
        return None
    kind = parts[0]
    port = ""
    interface = "::" if kind == "tcp6" else "0.0.0.0"
    backlog = 50
    for part in parts[1:]:
        name, eq, value = part.partition("=")
        if not eq:
            port = port or part
        elif name == "port":
            port = value
        elif name == "interface":
            interface = value
        elif name == "backlog" and value.isdigit():
            backlog = int(value)
        else:
            return None  # something only Twisted's parser knows
    if not port.isdigit():
        return None
    return TCPListener(kind, int(port), interface, backlog)


def listener_interface(description: str) -> str | None:
    """The interface a listener binds, '' for all, None for non-IP listeners."""
    parts = split_endpoint(description)
    if parts[0] not in ("tcp", "tcp6", "ssl"):
        return None
    for part in parts[1:]:
        if part.startswith("interface="):
            return part.split("=", 1)[1]
    return ""


def is_loopback_listener(description: str) -> bool:
    interface = listener_interface(description)
    if interface is None:
        # unix sockets are local; systemd sockets are unknowable here.
        return split_endpoint(description)[0] == "unix"
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def _read_token(name: str, raw: str, read_file: Callable[[str], str]) -> Token:
    source = name
    value = raw
    if raw.startswith("file://"):
        path = raw[len("file://") :]
        source = f"{name} (file {path})"
        try:
            value = read_file(path)
        except OSError as e:
            raise ConfigError(
                f"cannot read the token file {echo(path)} named by {name}: "
                f"{e.strerror or type(e).__name__}"
            ) from None
        if value.endswith("\n"):
            value = value[:-1]
            if value.endswith("\r"):
                value = value[:-1]
    if not value:
        raise ConfigError(f"{source} is empty; set a token or --no-token")
    if len(value) > _MAX_TOKEN_LENGTH or not all(0x21 <= ord(c) <= 0x7E for c in value):
        # Never echo the value: it is the token.
        raise ConfigError(
            f"the token from {source} must be 1 to {_MAX_TOKEN_LENGTH} visible "
            "ASCII characters (it is sent in an HTTP header)"
        )
    return Token(value, source)


def _default_read_file(path: str) -> str:
    with open(path, encoding="utf-8", errors="strict") as f:
        return f.read(_MAX_TOKEN_LENGTH + 2)


def load_settings(
    options: Mapping[str, Any],
    environ: Mapping[str, str],
    read_file: Callable[[str], str] = _default_read_file,
) -> Settings:
    """Build ``Settings``; the command line wins over the environment.

    ``options`` maps option names (``"ttl"``) to the string given on the
    command line, or None; flags map to a bool, ``port`` to a list.
    Raises ``ConfigError`` naming the option, its source and the bad value.
    """
    values: dict[str, Any] = {}

    def pick(name: str) -> tuple[str, str] | None:
        given = options.get(name)
        if isinstance(given, str):
            return f"--{name}", given
        spec = _SPECS[name]
        for var in spec.env:
            if var in environ:
                return var, environ[var]
        return None

    def convert(name: str, parse: Callable[[str], Any], attribute: str) -> None:
        picked = pick(name)
        if picked is None:
            return
        source, raw = picked
        if source == "SECRETS_MANAGER_TIMEOUT_MILLIS":
            parse = parse_millis
        try:
            values[attribute] = parse(raw)
        except ValueError as e:
            raise ConfigError(f"invalid {source} value {echo(raw)}: {e}") from None

    convert("ttl", parse_duration, "ttl")
    convert("cache-size", parse_int(0, 10_000_000), "cache_size")
    convert("stale-if-error", parse_duration, "stale_if_error")
    convert("prefetch", parse_prefetch, "prefetch")
    convert("upstream-timeout", parse_positive_duration, "upstream_timeout")
    convert("max-attempts", parse_int(1, 10), "max_attempts")
    convert("request-timeout", parse_positive_duration, "request_timeout")
    convert("max-connections", parse_int(1, 100_000), "max_connections")
    convert("region", parse_region, "region")
    convert("endpoint-url", parse_endpoint_url, "endpoint_url")
    convert(
        "log-level",
        parse_choice("debug", "info", "warn", "error", "critical"),
        "log_level",
    )
    convert("log-format", parse_choice("text", "json"), "log_format")
    for flag in ("no-token", "legacy-errors", "access-log"):
        if options.get(flag):
            values[flag.replace("-", "_")] = True
        else:
            convert(flag, parse_bool, flag.replace("-", "_"))

    ports: Sequence[str] = options.get("port") or ()
    if ports:
        sources = [("--port", p) for p in ports]
    elif "SECRETCACHE_PORT" in environ:
        raw = environ["SECRETCACHE_PORT"]
        sources = [("SECRETCACHE_PORT", p) for p in _split_listeners(raw)]
        if not sources:
            raise ConfigError(f"invalid SECRETCACHE_PORT value {echo(raw)}: empty")
    elif "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT" in environ:
        raw = environ["PARAMETERS_SECRETS_EXTENSION_HTTP_PORT"].strip()
        if not re.fullmatch(r"\d{1,5}", raw) or not 0 < int(raw) <= 65535:
            raise ConfigError(
                "invalid PARAMETERS_SECRETS_EXTENSION_HTTP_PORT value "
                f"{echo(raw)}: expected a port number from 1 to 65535"
            )
        # As the default: both loopbacks (clients of AWS's extension use
        # "localhost", which may resolve to ::1 first), ::1 where it exists.
        values["listen"] = (
            f"tcp:{int(raw)}:interface=127.0.0.1",
            f"tcp6:{int(raw)}:interface=\\:\\:1",
        )
        sources = []
    else:
        sources = []
    listeners = []
    for source, raw in sources:
        try:
            listeners.append(parse_listener(raw))
        except ValueError as e:
            raise ConfigError(f"invalid {source} value {echo(raw)}: {e}") from None
    if listeners:
        values["listen"] = tuple(dict.fromkeys(listeners))
        values["default_listen"] = False

    settings = Settings(**values)
    if settings.no_token:
        exposed = [d for d in settings.listen if not is_loopback_listener(d)]
        if exposed:
            raise ConfigError(
                f"--no-token is refused with a non-loopback listener {echo(exposed[0])}"
                "; bind to 127.0.0.1 or ::1, or set SECRETCACHE_TOKEN"
            )
        return settings
    token = None
    for name in TOKEN_ENV:
        given = environ.get(name)
        if given:
            token = _read_token(name, given, read_file)
            break
        if name == "SECRETCACHE_TOKEN" and given == "":
            raise ConfigError("SECRETCACHE_TOKEN is empty; set a token or --no-token")
    if token is None:
        raise ConfigError(
            "no token: set SECRETCACHE_TOKEN (a value or file://PATH), or pass "
            "--no-token (SECRETCACHE_NO_TOKEN=1) to serve without one"
        )
    return Settings(**{**values, "token": token})


def _split_listeners(raw: str) -> list[str]:
    """Comma-separated endpoints; a backslash escapes a comma."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(raw)
    for char in chars:
        if char == "\\":
            current.append(char + next(chars, ""))
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


_SPECS = {spec.name: spec for spec in OPTIONS}
