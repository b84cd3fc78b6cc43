"""Smoke test of a built layer: every dependency the package needs at run time
imports and works from the bundle (reactor, Klein + treq over loopback, TLS
with botocore's CA bundle, SigV4 signing, endpoint rules from pruned data).

Run only by layer/build.sh and layer/test-in-bullseye.sh; it touches nothing
outside loopback.
"""

import json
import os
import sys


def _botocore_checks():
    import botocore
    import botocore.session
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from botocore.endpoint_provider import EndpointProvider

    session = botocore.session.Session()
    loader = session.get_component("data_loader")
    rules = loader.load_service_model("secretsmanager", "endpoint-rule-set-1")
    partitions = loader.load_data("partitions")
    endpoint = EndpointProvider(rules, partitions).resolve_endpoint(
        Region="eu-west-1", UseFIPS=False, UseDualStack=False
    )
    assert endpoint.url == "https://secretsmanager.eu-west-1.amazonaws.com", (
        endpoint.url
    )
    loader.load_service_model("secretsmanager", "service-2")

    # The credential chain must build from the pruned tree (env credentials).
    creds = session.get_credentials()
    assert creds is not None and creds.access_key == "AKIDSELFTEST", creds

    request = AWSRequest(
        method="POST",
        url=endpoint.url,
        data=b'{"SecretId": "x"}',
        headers={"X-Amz-Target": "secretsmanager.GetSecretValue"},
    )
    SigV4Auth(
        Credentials("AKID", "SECRET", "TOKEN"), "secretsmanager", "eu-west-1"
    ).add_auth(request)
    assert request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 ")

    cacert = os.path.join(os.path.dirname(botocore.__file__), "cacert.pem")
    assert os.path.getsize(cacert) > 10000, cacert
    return cacert, botocore.__version__


def _tls_checks(cacert):
    from OpenSSL import SSL
    from twisted.internet import ssl

    with open(cacert, "rb") as f:
        pem = f.read()
    first = pem[: pem.index(b"-----END CERTIFICATE-----") + 26]
    root = ssl.Certificate.loadPEM(first)
    # optionsForClientTLS pulls in service_identity and cryptography.
    ssl.optionsForClientTLS("secretsmanager.eu-west-1.amazonaws.com", trustRoot=root)
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.load_verify_locations(cacert)
    return SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()


def _http_roundtrip():
    """Serve a Klein app on loopback and fetch from it with treq."""
    import klein
    import treq
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.web.server import Site

    app = klein.Klein()

    @app.route("/ping")
    def ping(request):
        return b"healthy"

    # tcp6 comes from a Twisted plugin: parsing it proves twisted.plugins made
    # it into the bundle (it is not listened on: the host may lack IPv6).
    serverFromString(reactor, r"tcp6:0:interface=\:\:1")
    result = {}

    def go():
        d = serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            Site(app.resource())
        )

        def fetch(port):
            url = f"http://127.0.0.1:{port.getHost().port}/ping"
            d2 = treq.get(url, persistent=False).addCallback(treq.content)
            d2.addBoth(lambda r: (port.stopListening(), r)[1])
            return d2

        d.addCallback(fetch)

        def done(r):
            result["r"] = r
            reactor.stop()

        d.addBoth(done)

    reactor.callWhenRunning(go)
    reactor.callLater(20, reactor.stop)
    reactor.run(installSignalHandlers=False)
    assert result.get("r") == b"healthy", result
    return type(reactor).__name__


def main():
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIDSELFTEST")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "selftest")
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
    import zope.interface  # noqa: F401 (loads its C optimizations, if it can)

    # Imported by name at run time, so a freezer can miss them; the
    # pure-Python fallback makes every adaptation and provides-check slower.
    zope_c = "zope.interface._zope_interface_coptimizations" in sys.modules
    assert zope_c, "zope.interface runs without its C optimizations"
    cacert, boto_version = _botocore_checks()
    openssl = _tls_checks(cacert)
    reactor_name = _http_roundtrip()
    import secretcache  # noqa: F401  (the package itself is importable)

    print(
        json.dumps(
            {
                "selftest": "ok",
                "python": sys.version.split()[0],
                "frozen": bool(getattr(sys, "frozen", False)),
                "reactor": reactor_name,
                "extension_name": os.environ.get("SECRETCACHE_EXTENSION_NAME"),
                "botocore": boto_version,
                "pyopenssl_openssl": openssl,
                "zope.interface_c": zope_c,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
