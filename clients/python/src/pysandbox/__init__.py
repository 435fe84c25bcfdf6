"""Client of pysandbox: runs Python in a fresh sandbox per job over its HTTP API.

    client = pysandbox.Client("http://localhost:8080", token)
    result = client.execute("print(2 + 2)")
    result.stdout  # "4\n"
"""
from .client import Client
from .errors import (
    BadRequest,
    Busy,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PysandboxError,
    RequestTimeout,
    ServerError,
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
