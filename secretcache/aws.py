"""Where and how to reach Secrets Manager, resolved the way botocore resolves
it (region, endpoint rules, configured endpoint URLs, FIPS and dual-stack),
without building a botocore client, which costs memory and start-up time.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from secretcache.config import ConfigError, Settings, echo, parse_endpoint_url

SERVICE = "secretsmanager"


@dataclass(frozen=True)
class Upstream:
    region: str
    endpoint_url: str


def botocore_session() -> Any:
    import botocore.session

    return botocore.session.Session()


def resolve_upstream(
    settings: Settings, session: Any, environ: Mapping[str, str]
) -> Upstream:
    """Region and endpoint; ``ConfigError`` when there is no region, or the
    configuration botocore reads is invalid."""
    from botocore.configprovider import ConfiguredEndpointProvider
    from botocore.endpoint_provider import EndpointProvider
    from botocore.exceptions import BotoCoreError

    try:
        # botocore itself reads only AWS_DEFAULT_REGION; AWS_REGION is what
        # Lambda and most SDKs set, so it comes first, as in the other SDKs.
        region = (
            settings.region
            or environ.get("AWS_REGION")
            or session.get_config_variable("region")
        )
        if not region:
            raise ConfigError(
                "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION), a region in "
                "the shared config file, or --region"
            )
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", region):
            source = (
                "--region"
                if settings.region
                else "AWS_REGION"
                if environ.get("AWS_REGION")
                else "AWS_DEFAULT_REGION or the shared config's region"
            )
            raise ConfigError(f"invalid AWS region {echo(region)} (from {source})")
        endpoint_url = settings.endpoint_url
        if endpoint_url is None and not session.get_config_variable(
            "ignore_configured_endpoint_urls"
        ):
            configured = ConfiguredEndpointProvider(
                full_config=session.full_config,
                scoped_config=session.get_scoped_config(),
                client_name=SERVICE,
            ).provide()
            if configured:
                try:
                    endpoint_url = parse_endpoint_url(configured)
                except ValueError as e:
                    source = next(
                        (
                            name
                            for name in (
                                "AWS_ENDPOINT_URL_SECRETS_MANAGER",
                                "AWS_ENDPOINT_URL",
                            )
                            if environ.get(name)
                        ),
                        "the shared config's endpoint_url",
                    )
                    raise ConfigError(
                        f"invalid {source} value {echo(configured)}: {e}"
                    ) from None
        loader = session.get_component("data_loader")
        rules = loader.load_service_model(SERVICE, "endpoint-rule-set-1")
        partitions = loader.load_data("partitions")
        parameters: dict[str, Any] = {
            "Region": region,
            "UseFIPS": bool(session.get_config_variable("use_fips_endpoint")),
            "UseDualStack": bool(session.get_config_variable("use_dualstack_endpoint")),
        }
        if endpoint_url:
            parameters["Endpoint"] = endpoint_url
        resolved = EndpointProvider(rules, partitions).resolve_endpoint(**parameters)
    except BotoCoreError as e:
        raise ConfigError(f"cannot resolve the Secrets Manager endpoint: {e}") from None
    return Upstream(region=region, endpoint_url=resolved.url)


def ca_bundle_path(environ: Mapping[str, str]) -> str | None:
    """The CA bundle to verify Secrets Manager's certificate with, or None for
    the platform's trust store.

    ``AWS_CA_BUNDLE`` wins. A frozen bundle (the Lambda layer) carries its own
    OpenSSL, which looks for certificates where the host may have none, so it
    uses the CA bundle botocore ships.
    """
    configured = environ.get("AWS_CA_BUNDLE")
    if configured:
        return configured
    if getattr(sys, "frozen", False):
        import botocore

        return os.path.join(os.path.dirname(botocore.__file__), "cacert.pem")
    return None


def load_trust_root(path: str) -> Any:
    """A Twisted trust root from a PEM file of one or more certificates."""
    from twisted.internet import ssl

    try:
        with open(path, "rb") as f:
            pem = f.read(16 * 1024 * 1024)
    except OSError as e:
        raise ConfigError(
            f"cannot read the CA bundle {echo(path)} (AWS_CA_BUNDLE): "
            f"{e.strerror or type(e).__name__}"
        ) from None
    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.DOTALL
    )
    certificates = []
    for block in blocks:
        try:
            certificates.append(ssl.Certificate.loadPEM(block))
        except Exception:  # noqa: S112 (one bad block in a system bundle is skipped)
            continue
    if not certificates:
        raise ConfigError(f"the CA bundle {echo(path)} holds no PEM certificate")
    return ssl.trustRootFromCertificates(certificates)
