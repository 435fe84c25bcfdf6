"""The HTTP client: `Client.execute`, `Client.stream`, `Client.health`, and
`Client.session`, whose `Session` runs calls that keep their state."""
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
_SESSIONS = "/sessions/"

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
        """Runs `code` in a fresh sandbox and returns its `Result` (also when the
        Python failed). Nothing is kept from one call to the next: see `session`.

        Fields, all optional: `timeout_ms`, `stdin`, `limits` (a dict of
        `memory_mb`, `cpu_ms`, `max_processes`, `disk_mb`, `output_bytes`),
        `network` (`{"allowed_domains": [...]}`), `files` (a dict of relative path to
        bytes or str, written into the work dir first), `return_files`,
        `file_upload_url`, `upload_token`, `public`. Raises a `PysandboxError`
        subclass when the service refuses the call.
        """
        return self._execute("/execute", code, fields)

    def stream(self, code: str, **fields: Any) -> Iterator[Event]:
        """Runs `code` (fields as for `execute`) and yields what it does as it
        happens: `Output` chunks, `Truncated`, `Display` and `Violation` events,
        and last its `Result`. Raises `StreamError` when the job fails after the
        stream began, and like `execute` before that. Leaving the loop early
        hangs up, which kills the job."""
        return self._stream("/execute", code, fields)

    def session(
        self,
        idle_timeout_ms: Optional[int] = None,
        limits: Optional[Mapping[str, int]] = None,
    ) -> "Session":
        """Opens a session (`POST /sessions`): one interpreter whose variables,
        imports and work-dir files last from one `Session.execute` to the next,
        until `Session.close`, `idle_timeout_ms` without a call (the service's
        default when None), or its interpreter exiting. Sessions have no network.

        `limits` (a dict of `memory_mb`, `max_processes`, `disk_mb`) hold for all
        the session's calls together. Use it as a context manager, which closes
        it: `with client.session() as s: s.execute("x = 1")`. Raises
        `TooManyRequests` when the service holds as many sessions as it allows
        (retried with `retries`, as other 429s).
        """
        body: Dict[str, Any] = {}
        if idle_timeout_ms is not None:
            body["idleTimeoutMs"] = idle_timeout_ms
        if limits is not None:
            body["limits"] = _renamed(limits, _LIMITS, "limit")
        data = json.dumps(body).encode()
        with self._open("POST", "/sessions", data, "application/json") as response:
            with _reading("POST /sessions"):
                info = models.SessionInfo.from_json(json.load(response))
        return Session(self, info.session_id)

    def health(self) -> Dict[str, Any]:
        """`GET /health`: whether the service and its executor are up, and counts."""
        with self._open("GET", "/health", None, "application/json", auth=False) as response:
            return json.load(response)

    def _execute(self, path: str, code: str, fields: Mapping[str, Any]) -> models.Result:
        body = _body(code, fields)
        with self._open("POST", path, body, "application/json") as response:
            with _reading(f"POST {path}"):
                return models.Result.from_json(json.load(response))

    def _stream(self, path: str, code: str, fields: Mapping[str, Any]) -> Iterator[Event]:
        body = _body(code, fields)
        with self._open("POST", path, body, "text/event-stream") as response:
            for name, data in _guarded(sse.events(response), f"POST {path} (streamed)"):
                event = _event(name, json.loads(data))
                if event is not None:
                    yield event
                if isinstance(event, models.Result):
                    return
        raise errors.StreamError("the stream ended without a result")

    def _open(self, method: str, path: str, body: Optional[bytes], accept: str, auth: bool = True):
        """The response of a call that succeeded, retrying as configured."""
        attempt = 0
        while True:
            try:
                return self._send(method, path, body, accept, auth)
            except errors.Busy as busy:
                if attempt >= self.retries:
                    raise
                attempt += 1
                wait = busy.retry_after if busy.retry_after is not None else 1
                self._sleep(min(wait, self.max_retry_wait))

    def _send(self, method: str, path: str, body: Optional[bytes], accept: str, auth: bool):
        request = urllib.request.Request(self.base_url + path, data=body, method=method)
        request.add_header("Accept", accept)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", "Bearer " + self.token)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            with e:
                session = path.startswith(_SESSIONS)
                raise errors.from_response(
                    e.code, e.read(), e.headers.get("Retry-After"), session
                ) from None
        except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
            raise errors.TransportError(f"{method} {path}: {e}") from e


class Session:
    """A session the service holds (`Client.session` opens one): an interpreter
    whose variables, imports and work-dir files last from call to call, like a
    notebook's. Its calls run one at a time.

    It ends with `close()` (or leaving its `with` block), after its idle timeout,
    or when its interpreter exits: `sys.exit()` in a call, a crash, a kill at its
    memory limit, or a call that ignores the interrupt at its time limit. After
    that, calls raise `SessionEnded` (410) for a while, then `SessionNotFound` (404).
    """

    def __init__(self, client: Client, session_id: str):
        self.client = client
        self.id = session_id
        self._path = _SESSIONS + urllib.parse.quote(session_id, safe="")
        self._closed = False

    def __repr__(self) -> str:
        return f"Session({self.id!r})"

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
            return
        # An exception is on its way out of the block: it is the one to see.
        try:
            self.close()
        except errors.PysandboxError:
            pass

    def execute(self, code: str, **fields: Any) -> models.Result:
        """Runs `code` in the session and returns its `Result`, as
        `Client.execute` does; the code sees what earlier calls left.

        Fields as `Client.execute`'s, except that `limits` may hold only `cpu_ms`
        and `output_bytes` (memory, processes and disk are the session's) and
        there is no `network`. `return_files=True` returns the files this call
        created or changed. A call over `timeout_ms` is interrupted
        (`KeyboardInterrupt`) and the session lives on. Raises `SessionNotFound`,
        `SessionBusy`, `SessionEnded`, or what `Client.execute` raises.
        """
        return self.client._execute(self._path + "/execute", code, fields)

    def stream(self, code: str, **fields: Any) -> Iterator[Event]:
        """Runs `code` in the session and yields its events, as `Client.stream`
        does (fields as for `execute`)."""
        return self.client._stream(self._path + "/execute", code, fields)

    def info(self) -> models.SessionInfo:
        """What the session is and holds now (`GET /sessions/{id}`)."""
        with self.client._open("GET", self._path, None, "application/json") as response:
            with _reading(f"GET {self._path}"):
                return models.SessionInfo.from_json(json.load(response))

    def close(self) -> None:
        """Ends the session (`DELETE /sessions/{id}`): its processes and files are
        gone when this returns. Closing a session that is closed, expired or
        ended does nothing."""
        if self._closed:
            return
        try:
            with self.client._open("DELETE", self._path, None, "application/json"):
                pass
        except errors.SessionNotFound:
            pass
        self._closed = True


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
