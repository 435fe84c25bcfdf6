"""Every failure of a call, as a typed exception carrying the HTTP status and the
service's message (its `{"error": ...}` body)."""
import json
from typing import Optional


class PysandboxError(Exception):
    """A call that did not return a result.

    `status` is the HTTP status (None when no answer came), `message` the service's
    `error`, `field` the request key at fault (400 only), `retry_after` the seconds
    its `Retry-After` asked for (429 and 503).
    """

    def __init__(
        self,
        message: str,
        status: Optional[int] = None,
        field: Optional[str] = None,
        retry_after: Optional[int] = None,
    ):
        super().__init__(message if status is None else f"{status}: {message}")
        self.message = message
        self.status = status
        self.field = field
        self.retry_after = retry_after


class BadRequest(PysandboxError):
    """400: the body is not JSON, or a field is missing or invalid (see `field`)."""


class Unauthorized(PysandboxError):
    """401: no token, or not `Bearer <token>`."""


class Forbidden(PysandboxError):
    """403: the wrong token."""


class NotFound(PysandboxError):
    """404: no such route (a base URL with a wrong path?), or on a session's
    routes no such session (`SessionNotFound`)."""


class SessionNotFound(NotFound):
    """404 from a session: never opened, closed, expired after its idle timeout,
    or ended long ago."""


class SessionBusy(PysandboxError):
    """409: another call runs in the session now; its calls run one at a time."""


class SessionEnded(PysandboxError):
    """410: the session's interpreter exited (`sys.exit`), crashed or was killed
    (memory limit, or an interrupt it ignored); `message` says which. Its state is
    gone: open a new session."""


class RequestTimeout(PysandboxError):
    """408: the body did not reach the service in time."""


class PayloadTooLarge(PysandboxError):
    """413: the body is over the service's `MAX_BODY_BYTES`."""


class Busy(PysandboxError):
    """429 or 503: the service cannot run the job now; try again after
    `retry_after` seconds (`Client(retries=...)` does so by itself)."""


class TooManyRequests(Busy):
    """429: the service's queue is full."""


class Unavailable(Busy):
    """503: the executor is busy, restarting, unreachable or could not set up a
    jail, or was lost while the job ran."""


class ServerError(PysandboxError):
    """500, or any other status this client does not know."""


class TransportError(PysandboxError):
    """No HTTP answer: the connection failed or timed out."""


class StreamError(PysandboxError):
    """A streamed job failed after its stream began (the `error` event)."""


_BY_STATUS = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: RequestTimeout,
    409: SessionBusy,
    410: SessionEnded,
    413: PayloadTooLarge,
    429: TooManyRequests,
    503: Unavailable,
}


def from_response(
    status: int, body: bytes, retry_after: Optional[str], session: bool = False
) -> PysandboxError:
    """The exception for an error answer; `session` when the call named a session
    (a 404 then means the session is not found)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        message, field = parsed["error"], parsed.get("field")
    else:
        message, field = body[:200].decode("utf-8", "replace"), None
    seconds = int(retry_after) if retry_after and retry_after.isdigit() else None
    kind = SessionNotFound if session and status == 404 else _BY_STATUS.get(status, ServerError)
    return kind(message, status, field, seconds)
