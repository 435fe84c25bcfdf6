# pysandbox's fork-server template (docs/fork-server.md), run as
# `python3 -c TEMPLATE LIBRARY [MODULE]...` inside a bwrap jail with its control
# socket (SOCK_SEQPACKET) on fd 3 and the readiness pipe on fd 4.
#
# It imports the modules, says it is ready, and then, for each message of the
# executor (an order and its descriptors), forks. The child hands both to the
# Rust library, which builds the job's jail around it and returns only in the
# job's process, after seccomp; Python then runs /sandbox/main.py as __main__.
# This program never reads the order: what a job gets is decided in Rust.
import os

# BLAS and OpenMP pools must not exist at fork time: one thread each, set before
# numpy is imported.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"


def _pysandbox_template():
    import ctypes
    import socket
    import sys

    library = ctypes.CDLL(sys.argv[1])
    enter = library.pysandbox_job_enter
    enter.restype = ctypes.c_int
    devnull = os.open("/dev/null", os.O_WRONLY)
    saved = os.dup(1), os.dup(2)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    failed = None
    for module in sys.argv[2:]:
        try:
            __import__(module)
        except ModuleNotFoundError as error:
            # Not installed: preloaded "when importable". Anything else half-imports
            # a module that every job would then find broken.
            if error.name != module.split(".")[0]:
                failed = failed or error
        except Exception as error:
            failed = failed or error
    # A first chart, so that a job's first one finds fonts, the renderer and
    # pandas' plotting backend loaded, as its second would.
    if "matplotlib.pyplot" in sys.modules:
        try:
            import io

            plt = sys.modules["matplotlib.pyplot"]
            figure = plt.figure()
            axes = figure.add_subplot()
            if "pandas" in sys.modules:
                sys.modules["pandas"].DataFrame({"y": [0, 1]}).plot(ax=axes)
            else:
                axes.plot([0, 1])
            figure.savefig(io.BytesIO(), format="png")
            plt.close(figure)
        except Exception:
            pass
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    for fd in (devnull, *saved):
        os.close(fd)
    if failed is not None:
        sys.exit("pysandbox template: cannot preload: %r" % (failed,))
    if "numpy" in sys.modules:
        # numpy's legacy global generator does not reseed itself after fork.
        os.register_at_fork(after_in_child=lambda: sys.modules["numpy"].random.seed())
    if len(os.listdir("/proc/self/task")) != 1:
        sys.exit("pysandbox template: a thread exists; forks would inherit a broken one")
    # Children are reaped by the kernel: a finished job's first process must not
    # linger as a zombie in the job's cgroup until the next order.
    import signal

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    control = socket.socket(fileno=3)
    os.write(4, b"W")
    os.close(4)
    while True:
        order, fds, flags, _ = socket.recv_fds(control, 4096, 16)
        if not order and not fds:
            os._exit(0)  # the executor closed the socket: retire
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            for fd in fds:
                os.close(fd)
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            # The library closes every descriptor above 2; Python must not close
            # that number again later, when it may be one of the job's files.
            control.detach()
            passed = (ctypes.c_int * len(fds))(*fds)
            if enter(order, len(order), passed, len(fds)) != 0:
                os._exit(127)
            return
        for fd in fds:
            os.close(fd)


_pysandbox_template()
del _pysandbox_template
# The job: as `python3 /sandbox/main.py` runs it.
import sys  # noqa: E402

sys.argv = ["/sandbox/main.py"]
sys.path[0:0] = ["/work"]
with open("/sandbox/main.py", "rb") as _source:
    _code = compile(_source.read(), "/sandbox/main.py", "exec")
del _source
_globals = {"__name__": "__main__", "__file__": "/sandbox/main.py", "__builtins__": __builtins__}
_status = 0
try:
    exec(_code, _globals)
except SystemExit as _exit:
    # As the interpreter reads it: None is 0, an int is the status, anything else
    # is printed and is 1.
    if _exit.code is None:
        _status = 0
    elif isinstance(_exit.code, int):
        _status = _exit.code & 0xFF
    else:
        print(_exit.code, file=sys.stderr)
        _status = 1
except BaseException:
    import traceback

    traceback.print_exc()
    _status = 1
# The job's atexit handlers and buffers, then out: tearing down the template's
# imported modules (about 0.35 s with pandas and matplotlib) is nobody's business,
# the job's pid namespace ends with it anyway.
import atexit  # noqa: E402

atexit._run_exitfuncs()
for _stream in (sys.stdout, sys.stderr):
    try:
        _stream.flush()
    except Exception:
        pass
os._exit(_status)
