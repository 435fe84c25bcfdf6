"""Client of pysandbox: runs Python in a fresh sandbox per job over its HTTP API,
or in a session that keeps its state between calls.

    client = pysandbox.Client("http://localhost:8080", token)
    result = client.execute("print(2 + 2)")
    result.stdout  # "4\n"
    with client.session() as s:
        s.execute("x = 41")
        s.execute("x + 1").result  # "42"
"""
from .client import Client, Session
from .errors import (
    BadRequest,
    Busy,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PysandboxError,
    RequestTimeout,
    ServerError,
    SessionBusy,
    SessionEnded,
    SessionNotFound,
    StreamError,
    TooManyRequests,
    TransportError,
    Unauthorized,
    Unavailable,
)
from .models import (
    Display,
    File,
    Output,
    Result,
    SessionInfo,
    SessionLimits,
    Skipped,
    Truncated,
    Upload,
    Usage,
    Violation,
)

__all__ = [
    "BadRequest",
    "Busy",
    "Client",
    "Display",
    "File",
    "Forbidden",
    "NotFound",
    "Output",
    "PayloadTooLarge",
    "PysandboxError",
    "RequestTimeout",
    "Result",
    "ServerError",
    "Session",
    "SessionBusy",
    "SessionEnded",
    "SessionInfo",
    "SessionLimits",
    "SessionNotFound",
    "Skipped",
    "StreamError",
    "TooManyRequests",
    "TransportError",
    "Truncated",
    "Unauthorized",
    "Unavailable",
    "Upload",
    "Usage",
    "Violation",
]
