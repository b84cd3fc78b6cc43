"""A Lambda handler that reads a database secret through the secretcache
extension: one loopback call, no AWS SDK, no Secrets Manager round trip on
a warm cache. Standard library only."""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from typing import Any

# The layer listens on this port of both loopbacks; the token is the
# function's own session token, which Lambda sets for every invocation.
PORT = os.environ.get("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", "8015")


def get_secret(secret_id: str, refresh: bool = False) -> dict[str, Any]:
    query = urllib.parse.urlencode(
        {"secretId": secret_id, **({"refreshNow": "true"} if refresh else {})}
    )
    request = urllib.request.Request(
        f"http://localhost:{PORT}/secretsmanager/get?{query}",
        headers={"X-Aws-Parameters-Secrets-Token": os.environ["AWS_SESSION_TOKEN"]},
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        document: dict[str, Any] = json.load(response)
    return document


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    secret = get_secret(os.environ.get("DB_SECRET_ID", "prod/db"))
    credentials = json.loads(secret["SecretString"])
    # Connect to the database with credentials["username"], ["password"]...
    # (never log them); on an authentication error, call
    # get_secret(..., refresh=True) once: the secret may have been rotated.
    return {"user": credentials.get("username"), "version": secret["VersionId"]}
