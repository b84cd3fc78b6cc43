"""What a secret is once fetched: ``SecretKey`` and ``SecretValue``.

A ``SecretValue`` renders its response bodies once, when it is fetched, so a
cache hit only writes bytes it already holds. Its repr never shows the value.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from secretcache.errors import SecretcacheError, upstream_failure


@dataclass(frozen=True, slots=True)
class SecretKey:
    """The cache key: the id exactly as the client gave it, version, stage."""

    secret_id: str
    version_id: str | None = None
    version_stage: str | None = None

    def request_body(self) -> dict[str, str]:
        body = {"SecretId": self.secret_id}
        if self.version_id is not None:
            body["VersionId"] = self.version_id
        if self.version_stage is not None:
            body["VersionStage"] = self.version_stage
        return body


class SecretValue:
    """One GetSecretValue answer. The AWS dialect's body is rendered once,
    when fetched; the legacy dialect's raw body the first time a legacy
    client asks for it (most deployments use one dialect, and a cache holds
    many of these, so the other is not kept twice)."""

    __slots__ = ("_raw", "aws_body", "binary")

    def __init__(
        self,
        *,
        arn: str,
        name: str,
        version_id: str,
        version_stages: list[str],
        created_date: float | int | None,
        secret_string: str | None = None,
        secret_binary: bytes | None = None,
    ) -> None:
        body: dict[str, Any] = {"ARN": arn, "Name": name, "VersionId": version_id}
        self.binary = secret_binary is not None
        if secret_binary is not None:
            body["SecretBinary"] = base64.b64encode(secret_binary).decode("ascii")
        else:
            body["SecretString"] = secret_string or ""
        body["VersionStages"] = list(version_stages)
        if created_date is not None:
            body["CreatedDate"] = created_date
        self.aws_body = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self._raw: bytes | None = None

    @property
    def raw_body(self) -> bytes:
        """``SecretString`` as UTF-8, or the bytes of ``SecretBinary``."""
        if self._raw is None:
            document = json.loads(self.aws_body)
            if self.binary:
                self._raw = base64.b64decode(document["SecretBinary"])
            else:
                self._raw = document["SecretString"].encode("utf-8")
        return self._raw

    @property
    def raw_content_type(self) -> bytes:
        if self.binary:
            return b"application/octet-stream"
        return b"text/plain; charset=utf-8"

    def __repr__(self) -> str:
        return "<SecretValue redacted>"

    __str__ = __repr__


def _text(document: dict[str, Any], field: str, default: str | None = None) -> str:
    value = document.get(field, default)
    if not isinstance(value, str):
        raise unparseable(f"the answer's {field} is missing or not a string")
    return value


def unparseable(reason: str) -> SecretcacheError:
    # Not transient: a malformed answer will not mend itself on a retry, and a
    # stale value must not hide it.
    error = upstream_failure(f"unparseable answer from Secrets Manager: {reason}")
    error.transient = False
    return error


def parse_secret_value(body: bytes, key: SecretKey) -> SecretValue:
    """Parse a 200 answer; refuse one that is not for the secret asked for."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise unparseable("not JSON") from None
    if not isinstance(document, dict):
        raise unparseable("not a JSON object")
    arn = _text(document, "ARN")
    name = _text(document, "Name")
    version_id = _text(document, "VersionId")
    stages = document.get("VersionStages", [])
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        raise unparseable("VersionStages is not a list of strings")
    created = document.get("CreatedDate")
    if created is not None and (
        isinstance(created, bool) or not isinstance(created, (int, float))
    ):
        raise unparseable("CreatedDate is not a number")
    secret_string = document.get("SecretString")
    secret_binary = document.get("SecretBinary")
    binary: bytes | None = None
    if secret_string is not None and not isinstance(secret_string, str):
        raise unparseable("SecretString is not a string")
    if secret_binary is not None:
        if not isinstance(secret_binary, str):
            raise unparseable("SecretBinary is not a base64 string")
        try:
            binary = base64.b64decode(secret_binary, validate=True)
        except (binascii.Error, ValueError):
            raise unparseable("SecretBinary is not valid base64") from None
    if secret_string is None and binary is None:
        raise unparseable("it holds neither SecretString nor SecretBinary")
    if (
        not _is_same_secret(key.secret_id, arn, name)
        or (key.version_id is not None and key.version_id != version_id)
        or (
            # An answer that lists its stages must list the one asked for.
            key.version_stage is not None
            and "VersionStages" in document
            and key.version_stage not in stages
        )
    ):
        # Never hand a client a secret other than the one it asked for, even if
        # something between us and Secrets Manager mixes answers up.
        raise unparseable("it is for a different secret than the one asked for")
    return SecretValue(
        arn=arn,
        name=name,
        version_id=version_id,
        version_stages=stages,
        created_date=created,
        secret_string=secret_string if binary is None else None,
        secret_binary=binary,
    )


def _is_same_secret(secret_id: str, arn: str, name: str) -> bool:
    if secret_id in (name, arn):
        return True
    # A partial ARN: the full ARN without its "-" and six random characters.
    return (
        secret_id.startswith("arn:")
        and arn.startswith(secret_id)
        and len(arn) == len(secret_id) + 7
        and arn[len(secret_id)] == "-"
    )
