"""The HTTP client: `Client.execute`, `Client.stream`, `Client.health`."""
import base64
import contextlib
import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Union

from . import errors, models, sse

# The request's fields, by their Python name: the API's names in snake_case.
_FIELDS = {
    "timeout_ms": "timeoutMs",
    "stdin": "stdin",
    "limits": "limits",
    "network": "network",
    "files": "files",
    "return_files": "returnFiles",
    "file_upload_url": "fileUploadUrl",
    "upload_token": "uploadToken",
    "public": "public",
}
_LIMITS = {
    "memory_mb": "memoryMb",
    "cpu_ms": "cpuMs",
    "max_processes": "maxProcesses",
    "disk_mb": "diskMb",
    "output_bytes": "outputBytes",
}
_NETWORK = {"allowed_domains": "allowedDomains"}

Event = Union[models.Output, models.Truncated, models.Display, models.Violation, models.Result]


class Client:
    """A pysandbox service at `base_url` (e.g. "http://localhost:8080"), called with
    `token` (its AUTH_TOKEN).

    `timeout` is the socket timeout of each call, in seconds: it must cover the
    job's wall-clock limit (up to 120 s), its wait for a slot and the uploads.
    `retries` (0: none) is how many times a call answered 429 or 503 is tried
    again, each after the `Retry-After` the service asked for (at most
    `max_retry_wait` seconds). A 503 can also mean the executor was lost while the
    job ran: a retry then runs the code again.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: float = 300.0,
        retries: int = 0,
        max_retry_wait: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self._sleep = sleep

    def execute(self, code: str, **fields: Any) -> models.Result:
        """Runs `code` and returns its `Result` (also when the Python failed).

        Fields, all optional: `timeout_ms`, `stdin`, `limits` (a dict of
        `memory_mb`, `cpu_ms`, `max_processes`, `disk_mb`, `output_bytes`),
        `network` (`{"allowed_domains": [...]}`), `files` (a dict of relative path to
        bytes or str, written into the work dir first), `return_files`,
        `file_upload_url`, `upload_token`, `public`. Raises a `PysandboxError`
        subclass when the service refuses the call.
        """
        body = _body(code, fields)
        with self._open("POST", "/execute", body, "application/json") as response:
            with _reading("POST /execute"):
                return models.Result.from_json(json.load(response))

    def stream(self, code: str, **fields: Any) -> Iterator[Event]:
        """Runs `code` (fields as for `execute`) and yields what it does as it
        happens: `Output` chunks, `Truncated`, `Display` and `Violation` events,
        and last its `Result`. Raises `StreamError` when the job fails after the
        stream began, and like `execute` before that. Leaving the loop early
        hangs up, which kills the job."""
        body = _body(code, fields)
        with self._open("POST", "/execute", body, "text/event-stream") as response:
            for name, data in _guarded(sse.events(response), "POST /execute (streamed)"):
                event = _event(name, json.loads(data))
                if event is not None:
                    yield event
                if isinstance(event, models.Result):
                    return
        raise errors.StreamError("the stream ended without a result")

    def health(self) -> Dict[str, Any]:
        """`GET /health`: whether the service and its executor are up, and counts."""
        with self._open("GET", "/health", None, "application/json") as response:
            return json.load(response)

    def _open(self, method: str, path: str, body: Optional[bytes], accept: str):
        """The response of a call that succeeded, retrying as configured."""
        attempt = 0
        while True:
            try:
                return self._send(method, path, body, accept)
            except errors.Busy as busy:
                if attempt >= self.retries:
                    raise
                attempt += 1
                wait = busy.retry_after if busy.retry_after is not None else 1
                self._sleep(min(wait, self.max_retry_wait))

    def _send(self, method: str, path: str, body: Optional[bytes], accept: str):
        request = urllib.request.Request(self.base_url + path, data=body, method=method)
        request.add_header("Accept", accept)
        if body is not None:
            request.add_header("Content-Type", "application/json")
            request.add_header("Authorization", "Bearer " + self.token)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            with e:
                raise errors.from_response(e.code, e.read(), e.headers.get("Retry-After")) from None
        except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
            raise errors.TransportError(f"{method} {path}: {e}") from e


@contextlib.contextmanager
def _reading(what: str):
    """Turns a failure while reading an answer into a `TransportError`."""
    try:
        yield
    except (OSError, http.client.HTTPException) as e:
        raise errors.TransportError(f"{what}: reading the answer failed: {e}") from e


def _guarded(items: Iterator[Any], what: str) -> Iterator[Any]:
    """`items`, with each read guarded by `_reading`."""
    while True:
        with _reading(what):
            try:
                item = next(items)
            except StopIteration:
                return
        yield item


def _body(code: str, fields: Mapping[str, Any]) -> bytes:
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise TypeError(f"unknown field(s): {', '.join(sorted(unknown))}")
    body: Dict[str, Any] = {"code": code}
    for name, value in fields.items():
        if name == "limits":
            value = _renamed(value, _LIMITS, "limit")
        elif name == "network":
            value = _renamed(value, _NETWORK, "network setting")
        elif name == "files":
            value = _files(value)
        body[_FIELDS[name]] = value
    return json.dumps(body).encode()


def _renamed(value: Optional[Mapping[str, Any]], names: Mapping[str, str], what: str):
    if value is None:
        return None
    unknown = set(value) - set(names)
    if unknown:
        raise TypeError(f"unknown {what}(s): {', '.join(sorted(unknown))}")
    return {names[key]: v for key, v in value.items()}


def _files(files: Mapping[str, Union[bytes, str]]):
    out = []
    for path, content in files.items():
        data = content.encode() if isinstance(content, str) else bytes(content)
        out.append({"path": path, "contentBase64": base64.b64encode(data).decode()})
    return out


def _event(name: str, data: Dict[str, Any]) -> Optional[Event]:
    if name in ("stdout", "stderr"):
        return models.Output(name, data["text"])
    if name == "truncated":
        return models.Truncated(data["stream"], data["capBytes"])
    if name == "display":
        return models.display(data)
    if name == "violation":
        return models.violation(data)
    if name == "result":
        return models.Result.from_json(data)
    if name == "error":
        raise errors.StreamError(data.get("error", "the job failed"))
    # An event this client does not know yet (the service only adds them).
    return None
