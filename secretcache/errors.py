"""Error values and the one mapping from upstream codes to HTTP statuses."""

from __future__ import annotations

import json

# Upstream codes that mean "try again later": retried, and masked by a stale
# value when one is held.
THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
    }
)
# Our own credentials went stale; a refresh of the credentials may cure it.
EXPIRED_CREDENTIAL_CODES = frozenset(
    {"ExpiredTokenException", "ExpiredToken", "RequestExpired"}
)

_STATUS_BY_CODE = {
    "ResourceNotFoundException": 404,
    "AccessDeniedException": 403,
    "DecryptionFailure": 403,
    "InvalidParameterException": 400,
    "InvalidRequestException": 400,
    "ValidationException": 400,
}
_MAX_MESSAGE = 512


class SecretcacheError(Exception):
    """An error a client is answered with: HTTP status, ``__type`` code, message.

    ``transient`` marks failures that a retry or a stale value may cure; the
    message is written for the user and never holds a secret or the token.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        transient: bool = False,
        retry_credentials: bool = False,
    ) -> None:
        super().__init__(code, message)
        self.status = status
        self.code = code
        self.message = message[:_MAX_MESSAGE]
        self.transient = transient
        self.retry_credentials = retry_credentials

    def body(self) -> bytes:
        return json.dumps({"__type": self.code, "message": self.message}).encode()

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"SecretcacheError({self.status}, {self.code!r}, {self.message!r})"


def not_found_route() -> SecretcacheError:
    return SecretcacheError(404, "NotFound", "no such route")


def forwarded_request() -> SecretcacheError:
    return SecretcacheError(
        400,
        "InvalidRequestException",
        "requests carrying X-Forwarded-For are refused: secretcache serves "
        "local clients only",
    )


def access_denied() -> SecretcacheError:
    return SecretcacheError(
        403,
        "AccessDeniedException",
        "missing or wrong X-Aws-Parameters-Secrets-Token header",
    )


def method_not_allowed(method: str, allowed: str) -> SecretcacheError:
    return SecretcacheError(
        405, "MethodNotAllowed", f"method {method} is not allowed here; use {allowed}"
    )


def invalid_parameter(message: str) -> SecretcacheError:
    return SecretcacheError(400, "InvalidParameterException", message)


def too_many_connections() -> SecretcacheError:
    return SecretcacheError(
        429, "TooManyConnections", "too many open connections; retry shortly"
    )


def internal_error() -> SecretcacheError:
    """A bug of ours: the client still gets an answer, the log the details."""
    return SecretcacheError(
        500, "InternalFailure", "internal error in secretcache; see its log"
    )


def upstream_timeout(message: str) -> SecretcacheError:
    return SecretcacheError(504, "UpstreamTimeout", message, transient=True)


def upstream_failure(
    message: str, *, retry_credentials: bool = False
) -> SecretcacheError:
    """A failure on the way to Secrets Manager: connection, TLS, credentials."""
    return SecretcacheError(
        502,
        "UpstreamError",
        message,
        transient=True,
        retry_credentials=retry_credentials,
    )


def from_upstream(http_status: int, code: str, message: str) -> SecretcacheError:
    """Map a JSON error answer from Secrets Manager to what the client sees."""
    # The code may carry a namespace prefix: "com.amazonaws...#ThrottlingException".
    code = code.rsplit("#", 1)[-1].split(":", 1)[0].strip() or "UpstreamError"
    if not code.isascii() or not code.replace("_", "").isalnum() or len(code) > 128:
        code = "UpstreamError"
    message = message if isinstance(message, str) else ""
    if code in THROTTLING_CODES:
        return SecretcacheError(429, code, message, transient=True)
    if code in EXPIRED_CREDENTIAL_CODES:
        return SecretcacheError(
            502, code, message, transient=True, retry_credentials=True
        )
    status = _STATUS_BY_CODE.get(code)
    if status is not None:
        return SecretcacheError(status, code, message)
    # Everything else, 5xx and signature trouble included, is a 502: the fault
    # is between us and Secrets Manager, not in the client's request.
    return SecretcacheError(502, code, message, transient=http_status >= 500)
