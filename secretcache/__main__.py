"""``python -m secretcache``: the same server as ``twistd -n secretcache``,
without twistd's pid file, and the start path of the Lambda extension."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from secretcache.config import Settings


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("AWS_LAMBDA_RUNTIME_API"):
        # Lambda: only the standard library until registered (lambda_start).
        from secretcache.lambda_start import run_extension

        return run_extension(args)
    return run_server(args)


def settings_or_exit(args: list[str]) -> Settings:
    """The settings for these arguments and the environment, or one line on
    stderr and exit status 2."""
    from twisted.python import usage

    from secretcache.tap import Options, fail, settings_or_exit

    options = Options()
    # twistd prefixes its own usage line; here we are the whole command.
    options.synopsis = "Usage: python -m secretcache [options]"
    try:
        options.parseOptions(args)  # type: ignore[no-untyped-call]
    except usage.UsageError as e:
        fail(f"{e} (see --help)")
    return settings_or_exit(options, os.environ)


def run_server(args: list[str], settings: Settings | None = None) -> int:
    from secretcache.tap import fail

    if settings is None:
        settings = settings_or_exit(args)

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from secretcache.config import ConfigError
    from secretcache.logs import make_observer
    from secretcache.tap import build_service

    globalLogBeginner.beginLoggingTo(
        [make_observer(settings.log_level, settings.log_format, sys.stdout)],
        redirectStandardIO=False,
    )
    try:
        service = build_service(settings, reactor, os.environ, handle_signals=True)
    except ConfigError as e:
        fail(str(e))
    exit_status = [0]

    def start() -> None:
        try:
            service.privilegedStartService()
            service.startService()
        except Exception as e:
            sys.stderr.write(f"secretcache: cannot start: {e}\n")
            exit_status[0] = 1
            reactor.stop()

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: service.stopService() if service.running else None
    )
    reactor.run()
    return exit_status[0]


if __name__ == "__main__":
    raise SystemExit(main())
