"""The reference for bench/run.py: the least a Twisted web server can do to
answer a request, to show how much of secretcache's hit cost is its own.

A bare ``twisted.web.resource.Resource`` (a leaf: no child lookup, no router)
answering every GET with the same pre-built body, on the same reactor, Site
and HTTP/1.1 channel as secretcache, with Site's access log turned off as
secretcache turns it off.

    python bench/reference_server.py --port 8016 --size 270
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site


class Fixed(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return self.body


class QuietSite(Site):
    def log(self, request: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, required=True, help="body size in bytes")
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args()
    # A JSON-looking body of exactly --size bytes.
    body = b'{"x":"' + b"x" * max(0, args.size - 8) + b'"}'
    body = body[: args.size]
    site = QuietSite(Fixed(body))
    site.noisy = False
    reactor.listenTCP(args.port, site, interface=args.interface)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
