"""The client against the real service, plus its retry against a local stub (a
real service cannot be made to answer 503 on cue)."""
import http.server
import json
import os
import threading
import time
from datetime import datetime, timezone

import pytest

import pysandbox

PNG = b"\x89PNG\r\n\x1a\n"
FIGURE = "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\n"


def test_is_the_installed_package():
    # Installed with pip, as a user would, not imported from the source tree.
    assert "site-packages" in pysandbox.__file__


def test_execute_returns_every_field(client):
    r = client.execute("print(2 + 2)\n6 * 7")
    assert (r.stdout, r.stderr, r.exit_code, r.signal) == ("4\n", "", 0, None)
    assert r.ok and r.result == "42" and r.limit_exceeded is None
    assert not (r.timed_out or r.stdout_truncated or r.stderr_truncated)
    assert r.usage.wall_ms >= 0 and r.duration_ms == r.usage.wall_ms
    assert (r.violations, r.displays, r.uploads, r.files) == ([], [], [], None)
    assert r.raw["stdout"] == "4\n"


def test_stdin_files_and_displays(client):
    code = FIGURE + "import sys\nopen('out.bin', 'wb').write(sys.stdin.read().encode() + open('in/a.txt', 'rb').read())"
    r = client.execute(code, stdin="x", files={"in/a.txt": b"\x00\xff"}, return_files=True)
    assert r.exit_code == 0, r.stderr
    assert len(r.displays) == 1
    assert r.displays[0].content_type == "image/png" and r.displays[0].data.startswith(PNG)
    out = {f.path: f for f in r.files}
    assert out["out.bin"].data == b"x\x00\xff" and out["out.bin"].size == 3
    assert r.skipped_files == [] and r.skipped_files_unlisted == 0


def test_limits_and_signals(client):
    cut = client.execute("print('x' * 100)", limits={"output_bytes": 10})
    assert cut.limit_exceeded == "output" and cut.stdout_truncated and not cut.ok
    assert cut.stdout == "x" * 10
    killed = client.execute("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert (killed.exit_code, killed.signal) == (None, "SIGKILL")
    slow = client.execute("import time\ntime.sleep(30)", timeout_ms=200)
    assert slow.timed_out and slow.limit_exceeded == "time"


def test_no_network_by_default(client):
    r = client.execute("print(1)", network={"allowed_domains": []})
    assert r.exit_code == 0


def test_bad_request_names_the_field(client):
    with pytest.raises(pysandbox.BadRequest) as e:
        client.execute("")
    assert (e.value.status, e.value.message, e.value.field) == (
        400,
        "code: must not be empty",
        "code",
    )
    with pytest.raises(pysandbox.BadRequest) as e:
        client.execute("1", timeout_ms=0)
    assert e.value.field == "timeoutMs"


def test_tokens(url):
    with pytest.raises(pysandbox.Forbidden) as e:
        pysandbox.Client(url, "wrong").execute("1")
    assert (e.value.status, e.value.message) == (403, "invalid token")
    with pytest.raises(pysandbox.Unauthorized) as e:
        pysandbox.Client(url, "").execute("1")
    assert e.value.status == 401


def test_unknown_fields_are_refused_before_sending(client):
    with pytest.raises(TypeError):
        client.execute("1", timeoutMs=5)
    with pytest.raises(TypeError):
        client.execute("1", limits={"memroy_mb": 5})


def test_stream_yields_typed_events_then_the_result(client):
    events = list(client.stream(FIGURE + "print('a', flush=True)\nprint('b' * 50)", limits={"output_bytes": 20}))
    result = events[-1]
    assert isinstance(result, pysandbox.Result) and result.exit_code == 0
    text = "".join(e.text for e in events if isinstance(e, pysandbox.Output) and e.stream == "stdout")
    assert text == result.stdout
    assert any(isinstance(e, pysandbox.Display) and e.data.startswith(PNG) for e in events)
    assert pysandbox.Truncated("stdout", 20) in events
    assert sum(isinstance(e, pysandbox.Result) for e in events) == 1


def test_stream_errors_before_the_start_raise(client):
    with pytest.raises(pysandbox.BadRequest):
        list(client.stream("1", timeout_ms=0))


def test_health(client):
    health = client.health()
    assert health["ok"] is True and health["executor"] == "up"


def test_transport_errors_are_typed():
    # A port nothing listens on: bind one, close it.
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(pysandbox.TransportError) as e:
        pysandbox.Client(f"http://127.0.0.1:{port}", "t", timeout=5).health()
    assert e.value.status is None


def test_a_session_keeps_variables_imports_and_files(client):
    with client.session() as s:
        assert isinstance(s.id, str) and s.id
        assert s.execute("import math\nx = 41\nopen('kept.txt', 'w').write('hi')").ok
        r = s.execute("x + 1")
        assert (r.result, r.exit_code) == ("42", 0)
        r = s.execute("print(math.floor(2.5), open('kept.txt').read())")
        assert r.stdout == "2 hi\n"
        events = list(s.stream("print(x)"))
        assert isinstance(events[-1], pysandbox.Result) and events[-1].stdout == "41\n"
        # However the output was cut into chunks.
        assert "".join(e.text for e in events if isinstance(e, pysandbox.Output)) == "41\n"
        info = s.info()
        assert (info.session_id, info.calls, info.busy) == (s.id, 4, False)
        assert info.created_at <= info.last_used_at < info.expires_at
        assert info.created_at.tzinfo is not None
        assert info.created_at <= datetime.now(timezone.utc)
        assert info.raw["sessionId"] == s.id
    # Leaving the block closed it.
    with pytest.raises(pysandbox.SessionNotFound):
        s.info()


def test_a_closed_session_is_not_found(client):
    s = client.session()
    assert s.execute("x = 1").ok
    s.close()
    s.close()  # Idempotent.
    with pytest.raises(pysandbox.SessionNotFound) as e:
        s.execute("x")
    assert (e.value.status, e.value.message) == (404, "session not found")
    assert isinstance(e.value, pysandbox.NotFound)


def test_sys_exit_ends_a_session(client):
    with client.session() as s:
        r = s.execute("import sys\nsys.exit(2)")
        assert r.exit_code == 2
        with pytest.raises(pysandbox.SessionEnded) as e:
            s.execute("1")
        assert e.value.status == 410 and e.value.message.startswith("session ended: ")
        with pytest.raises(pysandbox.SessionEnded):
            s.info()
    # Closing an ended session is fine, and forgets it.
    with pytest.raises(pysandbox.SessionNotFound):
        s.info()


def test_an_exception_or_a_timeout_leaves_the_session_alive(client):
    with client.session() as s:
        s.execute("x = 1")
        failed = s.execute("1 / 0")
        assert failed.exit_code == 1 and "ZeroDivisionError" in failed.stderr
        slow = s.execute("import time\ntime.sleep(30)", timeout_ms=300)
        assert slow.timed_out and slow.limit_exceeded == "time"
        assert "KeyboardInterrupt" in slow.stderr
        assert s.execute("x + 1").result == "2"


def test_a_second_call_at_once_is_busy(client):
    with client.session() as s:
        outcome = []

        def hold():
            try:
                outcome.append(s.execute("import time\ntime.sleep(5)"))
            except pysandbox.PysandboxError as e:
                outcome.append(e)

        held = threading.Thread(target=hold)
        held.start()
        try:
            deadline = time.monotonic() + 30
            while not s.info().busy:
                assert time.monotonic() < deadline, "the call never ran"
                time.sleep(0.05)
            with pytest.raises(pysandbox.SessionBusy) as e:
                s.execute("1")
            assert (e.value.status, e.value.message) == (409, "session is busy with another call")
        finally:
            # Ends the session; what the held call gets is not this test's business.
            s.close()
            held.join()
        assert len(outcome) == 1


def test_session_settings_and_refusals(client):
    with client.session(idle_timeout_ms=5000, limits={"memory_mb": 128, "max_processes": 16}) as s:
        info = s.info()
        assert info.idle_timeout_ms == 5000
        assert (info.limits.memory_mb, info.limits.max_processes) == (128, 16)
        # Memory, processes and disk are the session's, not a call's.
        with pytest.raises(pysandbox.BadRequest) as e:
            s.execute("1", limits={"memory_mb": 64})
        assert e.value.field == "limits.memoryMb"
    with pytest.raises(pysandbox.BadRequest) as e:
        client.session(idle_timeout_ms=10)
    assert e.value.field == "idleTimeoutMs"
    with pytest.raises(TypeError):
        client.session(limits={"memroy_mb": 5})


class _Stub(http.server.BaseHTTPRequestHandler):
    """Answers POST /execute and POST /sessions with the statuses queued in
    `server.answers`."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        status, retry_after = self.server.answers.pop(0)
        if status == 200:
            body = json.dumps(_RESULT).encode()
        elif status == 201:
            body = json.dumps(_SESSION).encode()
        else:
            body = json.dumps({"error": "service busy: every job slot is taken; retry later"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


_RESULT = {
    "exitCode": 0, "signal": None, "stdout": "ok\n", "stderr": "", "uploads": [],
    "timedOut": False, "durationMs": 1, "stdoutTruncated": False, "stderrTruncated": False,
    "limitExceeded": None, "usage": {"wallMs": 1, "cpuMs": None, "peakMemoryBytes": None},
    "violations": [], "result": None, "displays": [],
}


_SESSION = {
    "sessionId": "stub.0123456789abcdef0123456789abcdef", "createdAt": "2026-01-01T00:00:00.000Z",
    "lastUsedAt": "2026-01-01T00:00:00.000Z", "expiresAt": "2026-01-01T00:10:00.000Z",
    "idleTimeoutMs": 600000, "calls": 0, "busy": False, "memoryBytes": None,
    "limits": {"memoryMb": 512, "maxProcesses": 64, "diskMb": 100},
}


@pytest.fixture
def stub():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Stub)
    server.answers = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_busy_carries_retry_after_and_retries_are_opt_in(stub):
    url = f"http://127.0.0.1:{stub.server_port}"
    stub.answers = [(503, 7)]
    with pytest.raises(pysandbox.Unavailable) as e:
        pysandbox.Client(url, "t").execute("1")
    assert (e.value.status, e.value.retry_after) == (503, 7)
    assert isinstance(e.value, pysandbox.Busy)

    waits = []
    stub.answers = [(429, 2), (503, 3), (200, None)]
    r = pysandbox.Client(url, "t", retries=2, sleep=waits.append).execute("1")
    assert r.stdout == "ok\n" and waits == [2, 3]

    waits = []
    stub.answers = [(429, 100), (429, 1)]
    with pytest.raises(pysandbox.TooManyRequests):
        pysandbox.Client(url, "t", retries=1, max_retry_wait=5, sleep=waits.append).execute("1")
    assert waits == [5]


def test_too_many_sessions_is_retried_like_other_429s(stub):
    url = f"http://127.0.0.1:{stub.server_port}"
    stub.answers = [(429, 4)]
    with pytest.raises(pysandbox.TooManyRequests) as e:
        pysandbox.Client(url, "t").session()
    assert (e.value.status, e.value.retry_after) == (429, 4)

    waits = []
    stub.answers = [(429, 4), (201, None)]
    s = pysandbox.Client(url, "t", retries=1, sleep=waits.append).session()
    assert s.id == _SESSION["sessionId"] and waits == [4]
