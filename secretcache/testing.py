"""In-memory fakes for tests: credentials, and a Secrets Manager that speaks
GetSecretValue's JSON 1.1 protocol as a Twisted resource, for ``StubTreq``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.server import Request as WebRequest
from zope.interface import implementer

from secretcache.credentials import AWSCredentials, ICredentialSource
from secretcache.errors import upstream_failure


@implementer(ICredentialSource)
class FakeCredentialSource:
    """Hands out fixed credentials; ``broken`` makes ``get`` fail."""

    def __init__(
        self,
        access_key: str = "AKIDEXAMPLE",
        secret_key: str = "secret",  # noqa: S107 - a test fixture's fake key
    ) -> None:
        self.credentials = AWSCredentials(access_key, secret_key, "session-token")
        self.broken = False
        self.invalidated = 0

    def get(self) -> Deferred[AWSCredentials]:
        if self.broken:
            return fail(upstream_failure("could not resolve AWS credentials (test)"))
        return succeed(self.credentials)

    def invalidate(self, refused: AWSCredentials) -> None:
        self.invalidated += 1


@dataclass
class StoredSecret:
    name: str
    string: str | None = None
    binary: bytes | None = None
    version_id: str = "v1-00000000000000000000000000000001"
    stages: list[str] = field(default_factory=lambda: ["AWSCURRENT"])
    created: float = 1700000000.0

    @property
    def arn(self) -> str:
        return (
            f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{self.name}-AbCdEf"
        )


Fault = Callable[[WebRequest], "bytes | None"]


class FakeSecretsManager(Resource):
    """GetSecretValue over JSON 1.1, in memory.

    ``calls`` lists every request body received; ``fault``, when set, is
    called first and may answer instead (it sets the status itself and returns
    the body, or returns None to let the request through); ``hold`` keeps
    requests unanswered until ``release()``.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.secrets: dict[str, StoredSecret] = {}
        self.calls: list[dict[str, Any]] = []
        self.headers: list[dict[bytes, Sequence[bytes]]] = []
        self.fault: Fault | None = None
        self.hold = False
        self._held: list[tuple[WebRequest, dict[str, Any]]] = []

    def put(self, secret: StoredSecret) -> StoredSecret:
        self.secrets[secret.name] = secret
        return secret

    def render_POST(self, request: WebRequest) -> bytes | int:
        assert request.content is not None
        body = json.loads(request.content.read())
        self.calls.append(body)
        self.headers.append(dict(request.requestHeaders.getAllRawHeaders()))
        if self.fault is not None:
            answer = self.fault(request)
            if answer is not None:
                return answer
        if self.hold:
            self._held.append((request, body))
            return NOT_DONE_YET
        return self._answer(request, body)

    def release(self) -> None:
        held, self._held = self._held, []
        for request, body in held:
            request.write(self._answer(request, body))
            request.finish()

    def _answer(self, request: WebRequest, body: dict[str, Any]) -> bytes:
        secret_id = body.get("SecretId", "")
        secret = self.secrets.get(secret_id) or next(
            (s for s in self.secrets.values() if secret_id in (s.arn, s.arn[:-7])),
            None,
        )
        if secret is None:
            request.setResponseCode(400)
            return json.dumps(
                {
                    "__type": "ResourceNotFoundException",
                    "message": "Secrets Manager can't find the specified secret.",
                }
            ).encode()
        answer: dict[str, Any] = {
            "ARN": secret.arn,
            "Name": secret.name,
            "VersionId": secret.version_id,
            "VersionStages": secret.stages,
            "CreatedDate": secret.created,
        }
        if secret.binary is not None:
            answer["SecretBinary"] = base64.b64encode(secret.binary).decode()
        else:
            answer["SecretString"] = secret.string
        request.setHeader(b"content-type", b"application/x-amz-json-1.1")
        return json.dumps(answer).encode()


def error_fault(status: int, code: str, message: str = "injected") -> Fault:
    """A fault answering every call with a JSON error."""

    def answer(request: WebRequest) -> bytes:
        request.setResponseCode(status)
        return json.dumps({"__type": code, "message": message}).encode()

    return answer
