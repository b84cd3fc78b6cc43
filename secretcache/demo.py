"""``python -m secretcache.demo``: the server against an embedded Secrets
Manager (moto, from the ``demo`` extra), seeded with a demo secret.

Nothing here is used by the server itself; the image and the layers leave
moto out, so this module only runs where ``.[demo]`` is installed.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
from collections.abc import Sequence

DEMO_SECRET = "demo/database"  # noqa: S105 (a name, not a password)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main(argv: Sequence[str] | None = None) -> int:
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        sys.stderr.write(
            "secretcache demo: moto is not installed; run: pip install '.[demo]'\n"
        )
        return 2
    import logging

    from secretcache.__main__ import run_server, settings_or_exit

    port = os.environ.get("SECRETCACHE_DEMO_PORT", "8015")
    if not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
        sys.stderr.write(
            f"secretcache demo: invalid SECRETCACHE_DEMO_PORT value {port[:32]!r}: "
            "expected a port number from 1 to 65535\n"
        )
        return 2
    # moto's werkzeug server logs every call on stderr; the demo is about ours.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto_port = _free_port()
    emulator = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port)
    emulator.start()
    try:
        endpoint = f"http://127.0.0.1:{moto_port}"
        fake = {
            "AWS_ACCESS_KEY_ID": "demo",
            "AWS_SECRET_ACCESS_KEY": "demo",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": endpoint,
        }
        os.environ.update(fake)
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.pop("AWS_PROFILE", None)
        # Print the token only when the demo made it up; never echo the
        # user's own.
        if os.environ.get("SECRETCACHE_TOKEN"):
            token = "$SECRETCACHE_TOKEN"  # noqa: S105 (shown literally)
        else:
            token = os.environ["SECRETCACHE_TOKEN"] = secrets.token_urlsafe(24)
        args = list(sys.argv[1:] if argv is None else argv)
        if not any(a.startswith(("--port", "-p")) for a in args):
            args += ["--port", f"tcp:{port}:interface=127.0.0.1"]
        # A bad option stops here, before the instructions are printed.
        settings = settings_or_exit(args)
        boto3.client(
            "secretsmanager", endpoint_url=endpoint, region_name="us-east-1"
        ).create_secret(
            Name=DEMO_SECRET,
            SecretString=json.dumps(
                {"username": "demo", "password": "not-a-real-password"}
            ),
        )
        sys.stdout.write(
            f"""
secretcache demo: an embedded Secrets Manager at {endpoint} holds '{DEMO_SECRET}'.
In another terminal:

  curl -s -H "X-Aws-Parameters-Secrets-Token: {token}" \\
    'http://127.0.0.1:{port}/secretsmanager/get?secretId={DEMO_SECRET}'

  curl -s -H "X-Aws-Parameters-Secrets-Token: {token}" \\
    'http://127.0.0.1:{port}/cache?name={DEMO_SECRET}'

Press Ctrl-C to stop.

"""
        )
        sys.stdout.flush()
        return run_server(args, settings)
    finally:
        emulator.stop()


if __name__ == "__main__":
    raise SystemExit(main())
