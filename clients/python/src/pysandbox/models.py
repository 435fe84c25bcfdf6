"""What a job returns, as objects: `Result` for the whole answer, and the events
of a streamed job (`Output`, `Truncated`, `Display`, `Violation`, then `Result`);
and what a session is, `SessionInfo`."""
import base64
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Optional


@dataclass(frozen=True)
class Usage:
    """What the job used; a figure is None where the host cannot measure it."""

    wall_ms: int
    cpu_ms: Optional[int]
    peak_memory_bytes: Optional[int]


@dataclass(frozen=True)
class Violation:
    """A network request the egress proxy refused."""

    method: str
    target: str
    reason: str


@dataclass(frozen=True)
class Display:
    """A figure the job showed: `data` is the image's bytes (a PNG)."""

    content_type: str
    data: bytes


@dataclass(frozen=True)
class File:
    """A file the job made (with `return_files=True`): `data` is its bytes."""

    path: str
    size: int
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Upload:
    """The outcome of uploading one produced file (or why an entry was skipped)."""

    filename: str
    status: int
    url: Optional[str] = None
    error: Optional[str] = None


@dataclass(frozen=True)
class Skipped:
    """A work-dir entry that was not collected, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Result:
    """The answer of a job that ran, even if the Python failed.

    `exit_code` is None when a signal ended the job (`signal`, e.g. "SIGKILL");
    `limit_exceeded` names the limit that stopped or cut it ("memory", "time",
    "cpu", "processes", "disk", "output") or is None; `result` is the repr() of
    a final expression; `files` is None unless `return_files=True` was asked.
    `raw` is the JSON body as the service sent it.
    """

    stdout: str
    stderr: str
    exit_code: Optional[int]
    signal: Optional[str]
    timed_out: bool
    duration_ms: int
    stdout_truncated: bool
    stderr_truncated: bool
    limit_exceeded: Optional[str]
    usage: Usage
    violations: List[Violation]
    result: Optional[str]
    displays: List[Display]
    uploads: List[Upload]
    files: Optional[List[File]]
    skipped_files: List[Skipped]
    skipped_files_unlisted: int
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Whether the code exited 0 and no limit fired."""
        return self.exit_code == 0 and self.limit_exceeded is None

    @classmethod
    def from_json(cls, body: Dict[str, Any]) -> "Result":
        usage = body["usage"]
        files = body.get("files")
        return cls(
            stdout=body["stdout"],
            stderr=body["stderr"],
            exit_code=body["exitCode"],
            signal=body["signal"],
            timed_out=body["timedOut"],
            duration_ms=body["durationMs"],
            stdout_truncated=body["stdoutTruncated"],
            stderr_truncated=body["stderrTruncated"],
            limit_exceeded=body["limitExceeded"],
            usage=Usage(usage["wallMs"], usage["cpuMs"], usage["peakMemoryBytes"]),
            violations=[violation(v) for v in body["violations"]],
            result=body["result"],
            displays=[display(d) for d in body.get("displays", [])],
            uploads=[
                Upload(u["filename"], u["status"], u.get("url"), u.get("error"))
                for u in body["uploads"]
            ],
            files=None
            if files is None
            else [
                File(f["path"], f["size"], f["contentType"], _bytes(f["contentBase64"]))
                for f in files
            ],
            skipped_files=[Skipped(s["path"], s["reason"]) for s in body.get("skippedFiles", [])],
            skipped_files_unlisted=body.get("skippedFilesUnlisted", 0),
            raw=body,
        )


@dataclass(frozen=True)
class Output:
    """A streamed chunk of the job's `stream` ("stdout" or "stderr")."""

    stream: str
    text: str


@dataclass(frozen=True)
class Truncated:
    """A streamed notice: `stream` passed its cap of `cap_bytes`; the rest is dropped."""

    stream: str
    cap_bytes: int


@dataclass(frozen=True)
class SessionLimits:
    """The limits that hold for all of a session's calls together."""

    memory_mb: int
    max_processes: int
    disk_mb: int


@dataclass(frozen=True)
class SessionInfo:
    """What a session is and holds now (`GET /sessions/{id}`).

    Times are timezone-aware UTC datetimes: `expires_at` is when the session ends
    unless called again. `busy` is true while a call runs in it; `memory_bytes` is
    what its processes use now (None where the host cannot count it). `raw` is the
    JSON body as the service sent it.
    """

    session_id: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    idle_timeout_ms: int
    calls: int
    busy: bool
    memory_bytes: Optional[int]
    limits: SessionLimits
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: Dict[str, Any]) -> "SessionInfo":
        limits = body["limits"]
        return cls(
            session_id=body["sessionId"],
            created_at=_time(body["createdAt"]),
            last_used_at=_time(body["lastUsedAt"]),
            expires_at=_time(body["expiresAt"]),
            idle_timeout_ms=body["idleTimeoutMs"],
            calls=body["calls"],
            busy=body["busy"],
            memory_bytes=body["memoryBytes"],
            limits=SessionLimits(limits["memoryMb"], limits["maxProcesses"], limits["diskMb"]),
            raw=body,
        )


def violation(data: Dict[str, Any]) -> Violation:
    return Violation(data["method"], data["target"], data["reason"])


def display(data: Dict[str, Any]) -> Display:
    return Display(data["contentType"], _bytes(data["contentBase64"]))


def _bytes(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _time(text: str) -> datetime:
    # RFC 3339 in UTC ("...Z"); fromisoformat takes "Z" only from Python 3.11.
    return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
