# pysandbox's launcher: the Python program of every jail, run as `python3 -c`.
#
# It starts before the job exists: it imports the configured modules (argv[1:])
# with stdout and stderr silenced, tells the executor it is warm (one byte on fd 4),
# then blocks until the executor hands it the job: the code in /sandbox/main.py and,
# on fd 3, one line per resource limit to lower ("NAME VALUE"). Then it runs the
# code exactly as `python3 /sandbox/main.py` would: a fresh __main__ module, the
# same sys.argv, the same tracebacks (its own frames are cut off), the same exit
# status. A cold job runs through the same steps with nothing preloaded, so warm
# and cold jobs cannot differ.
#
# Two things come back besides the output, as records on the FIFO
# /tmp/.pysandbox-display (one byte of kind, a 4-byte big-endian length, the
# payload), which the executor reads as they come and checks like any job output:
# `D`, a PNG of a matplotlib figure shown with plt.show(), fig.show() or
# display(fig), or left open and never shown at the end; and `R`, the repr() of
# the value of the code's last top-level statement when it is an expression whose
# value is not None, as a REPL would echo it (never printed: stdout stays what
# `python3 main.py` prints).
#
# In a session (`/sandbox/session` exists), it runs cells instead of one script:
# see serve_session.
#
# As a fork-server template (`--fork-server LIBRARY MODULE...`, docs/fork-server.md)
# it imports the modules once and then, instead of one hand-off, keeps spares: fd 3
# is a SOCK_SEQPACKET socket on which each message is one job's order with its
# descriptors. Each spare is a child that calls the Rust LIBRARY, which builds the
# part of a job's jail no job decides (namespaces, pid 1, /proc), takes the next
# order from fd 3, builds the rest (cgroups, the job's directories, rlimits, no
# capabilities, landlock, seccomp) and returns only in the job's process, which
# then runs the job exactly as above. This program never reads an order; it forks
# a new spare whenever one took an order.

# A matplotlib backend, made the default of this process when matplotlib is
# imported (MPLBACKEND stays Agg for the job's child processes, which do not have
# it): Agg, whose show() hands each open figure to the launcher instead of doing
# nothing.
_PYSANDBOX_DISPLAY_BACKEND = """
from matplotlib._pylab_helpers import Gcf
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg


class FigureManager(FigureManagerBase):
    def show(self):
        _show_figure(self.canvas.figure)


class FigureCanvas(FigureCanvasAgg):
    manager_class = FigureManager


def show(*args, **kwargs):
    # As a notebook's inline backend does: every open figure, then close them.
    for manager in Gcf.get_all_fig_managers():
        _show_figure(manager.canvas.figure)
    Gcf.destroy_all()
"""


# A session's cell loop, compiled only in a session: every cold jail compiles this
# launcher at its start, and a job at the smallest memory limit has no room for it.
_PYSANDBOX_SESSION = """
def serve_session(main, emit, show_figure):
    # A session (`/sandbox/session` exists): cells run one after another in the one
    # `main` namespace, as in a notebook. The executor sends each cell on fd 0: a
    # line `run CODE_BYTES STDIN_BYTES`, then the code, then the cell's stdin (on the
    # pipe, not on the session's disk, which the session may have filled). The end
    # of each cell is an `E` record on the display channel with its status:
    # `0`, `1` (an uncaught exception, its traceback printed) or `I` (interrupted:
    # the executor sent SIGINT at the call's time or CPU limit). A SystemExit ends
    # the session as it would end a script. The first record, `P`, is this
    # process's pid, which the executor interrupts.
    import io
    import linecache
    import os
    import signal
    import sys

    # The orders' pipe moves out of the job's way: its stdin is each cell's own.
    orders = os.fdopen(os.dup(0), "rb", buffering=0)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # Only a cell is interrupted: a SIGINT that arrives between cells is late, and
    # ignored. Python's own handler (no frame of ours in the traceback) runs cells.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    emit(b"P", str(os.getpid()).encode())
    cells = 0
    while True:
        order = orders.readline(64).split()
        if len(order) != 3 or order[0] != b"run":
            return  # the executor closed the session
        source = read_exactly(orders, int(order[1]))
        stdin = read_exactly(orders, int(order[2]))
        if source is None or stdin is None:
            return
        cells += 1
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
        # Each cell's source under a name of its own, kept for tracebacks that show
        # a function defined in an earlier cell.
        name = "<cell %d>" % cells
        text = source.decode("utf-8", "replace")
        linecache.cache[name] = (len(text), None, text.splitlines(True), name)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            error = _pysandbox_run(main, source, name, emit)
        except SystemExit:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            show_open_figures(show_figure)
            raise
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        status = b"0" if error is None else b"1"
        if isinstance(error, KeyboardInterrupt):
            status = b"I"
        show_open_figures(show_figure)
        close_figures()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        emit(b"E", status)


def read_exactly(stream, size):
    # `size` bytes of `stream`, or None if it ends first.
    chunks = []
    while size > 0:
        chunk = stream.read(min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def close_figures():
    # As a notebook does once a cell's figures were shown: the next cell starts
    # with none open.
    import sys

    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        try:
            plt.close("all")
        except BaseException:
            pass
"""


# Whether this process is a job forked from a template: it then ends with
# os._exit (see _pysandbox_exit).
_pysandbox_forked = []


def _pysandbox_launch():
    import os
    import resource
    import sys

    library = None
    if sys.argv[1:2] == ["--fork-server"]:
        library = sys.argv[2]
        del sys.argv[1:3]
        # BLAS and OpenMP pools must not exist at fork time: one thread each, set
        # before numpy is imported (and gone from the jobs' environment after).
        threads = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
        for name in threads:
            os.environ[name] = "1"

    channel = []  # the FIFO's descriptor, opened at the first record

    def emit(kind, payload):
        try:
            if not channel:
                channel.append(os.open("/tmp/.pysandbox-display", os.O_WRONLY))
            record = kind + len(payload).to_bytes(4, "big") + payload
            view = memoryview(record)
            while view:
                view = view[os.write(channel[0], view):]
        except (OSError, OverflowError):
            pass  # the job removed the channel, or it broke: nothing is shown

    def show_figure(figure):
        import io

        png = io.BytesIO()
        figure.savefig(png, format="png", bbox_inches="tight")
        figure._pysandbox_shown = True
        emit(b"D", png.getvalue())

    def display(*objects):
        for item in objects:
            if hasattr(item, "savefig") and hasattr(item, "canvas"):
                show_figure(item)
            else:
                print(repr(item))

    import importlib.abc
    import importlib.util

    class DisplayBackend(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name == "pysandbox_display":
                return importlib.util.spec_from_loader(name, self)
            if name != "matplotlib":
                return None
            # matplotlib as it would load, then told to default to the backend.
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                module.rcParams["backend"] = "module://pysandbox_display"

            spec.loader.exec_module = exec_module
            return spec

        def exec_module(self, module):
            module._show_figure = show_figure
            exec(_PYSANDBOX_DISPLAY_BACKEND, module.__dict__)

    sys.meta_path.insert(0, DisplayBackend())
    import builtins

    if not hasattr(builtins, "display"):
        builtins.display = display

    preload = sys.argv[1:]
    failed = None
    if preload:
        saved = os.dup(1), os.dup(2)
        null = os.open("/dev/null", os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        for name in preload:
            try:
                __import__(name)
            except ModuleNotFoundError as error:
                # Not installed: preloaded "when importable".
                if error.name != name.split(".")[0]:
                    failed = failed or error
            except BaseException as error:
                failed = failed or error
        if library is not None and failed is None:
            warm_up_charts()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
    if library is not None:
        # A half-imported module would be broken in every job (seen: "module
        # 'matplotlib' has no attribute 'colors'"); a warm jail only runs one.
        if failed is not None:
            sys.exit("pysandbox template: cannot preload: %r" % (failed,))
        for name in threads:
            del os.environ[name]
        serve(library)  # returns only in a forked job, jailed
        _pysandbox_forked.append(True)
    else:
        try:
            os.write(4, b"W")
        except OSError:
            pass
        os.close(4)
        with os.fdopen(3, "rb") as handoff:
            orders = handoff.read().decode()
        if not orders:
            os._exit(0)  # the executor dropped this jail unused
        used = resource.getrusage(resource.RUSAGE_SELF)
        used_cpu = int(used.ru_utime + used.ru_stime)
        for line in orders.splitlines():
            name, value = line.split()
            value = int(value)
            if name == "RLIMIT_CPU":
                value += used_cpu  # the budget is the job's own, not the preload's
            resource.setrlimit(getattr(resource, name), (value, value))

    path = "/sandbox/main.py"
    import importlib.machinery

    main = type(sys)("__main__")
    main.__file__ = path
    main.__cached__ = None
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    sys.argv[:] = [path]
    if os.path.exists("/sandbox/session"):
        exec(_PYSANDBOX_SESSION, globals())
        serve_session(main, emit, show_figure)  # returns only when the executor left
        return
    with open(path, "rb") as f:
        source = f.read()
    try:
        error = _pysandbox_run(main, source, path, emit)
    except SystemExit:
        show_open_figures(show_figure)
        raise
    show_open_figures(show_figure)
    if error is not None:
        if isinstance(error, KeyboardInterrupt):
            import signal

            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        sys.exit(1)


def _pysandbox_run(main, source, path, emit):
    # Runs `source` in `main`'s namespace as `python3 path` would run it, and
    # returns the exception it raised (its traceback printed as the interpreter
    # would print it), or None. SystemExit goes through.
    import sys

    try:
        code = compile(source, path, "exec")
        # The last statement, when an expression, is evaluated on its own so that
        # its value can be echoed; every node keeps its line, so tracebacks do not
        # change.
        import ast

        tree = ast.parse(source, path)
        last = tree.body[-1] if tree.body else None
        if isinstance(last, ast.Expr):
            head = ast.Module(body=tree.body[:-1], type_ignores=[])
            exec(compile(head, path, "exec", dont_inherit=True), main.__dict__)
            value = eval(
                compile(ast.Expression(last.value), path, "eval", dont_inherit=True),
                main.__dict__,
            )
            if value is not None:
                try:
                    emit(b"R", repr(value)[:65536].encode("utf-8", "replace"))
                except BaseException:
                    pass  # `python3 main.py` never calls repr: neither may its failure show
        else:
            exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException as error:
        # Print as the interpreter would, minus this launcher's frame.
        tb = error.__traceback__
        if tb is not None and tb.tb_frame.f_code.co_name == "_pysandbox_run":
            tb = tb.tb_next
        # The traceback printed is the exception's own, so cut it there too.
        error = error.with_traceback(tb)
        if path.startswith("<cell") and sys.excepthook is sys.__excepthook__:
            # A cell has no file: this printer finds its lines in linecache.
            import traceback

            traceback.print_exception(type(error), error, tb)
        else:
            sys.excepthook(type(error), error, tb)
        return error
    return None


def warm_up_charts():
    # A first chart, so that a forked job's first one finds fonts, the renderer and
    # pandas' plotting backend loaded, as its second would.
    import io
    import sys

    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    try:
        figure = plt.figure()
        axes = figure.add_subplot()
        if "pandas" in sys.modules:
            sys.modules["pandas"].DataFrame({"y": [0, 1]}).plot(ax=axes)
        else:
            axes.plot([0, 1])
        figure.savefig(io.BytesIO(), format="png")
        plt.close(figure)
    except BaseException:
        pass


# Spares per template: orders that come faster than one spare is made wait less.
_PYSANDBOX_SPARES = 2
# Spares that fail in a row before the template gives up.
_PYSANDBOX_SPARE_FAILURES = 5


def serve(library_path):
    # The template's loop; returns only in a job's process, after the library built
    # its jail.
    import ctypes
    import gc
    import os
    import signal
    import sys

    # What the job half imports, once here instead of in every job.
    import ast  # noqa: F401
    import atexit  # noqa: F401
    import importlib.machinery  # noqa: F401
    import traceback  # noqa: F401

    library = ctypes.CDLL(library_path)
    spare = library.pysandbox_spare
    spare.restype = ctypes.c_int
    take_order = library.pysandbox_take_order
    take_order.restype = None
    if "numpy" in sys.modules:
        # numpy's legacy global generator does not reseed itself after fork.
        os.register_at_fork(after_in_child=lambda: sys.modules["numpy"].random.seed())
    if len(os.listdir("/proc/self/task")) != 1:
        sys.exit("pysandbox template: a thread exists; forks would inherit a broken one")
    # The kernel reaps the template's children: a finished job's first process
    # must not linger as a zombie.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    # Objects of the template stay where they are: a job's collections do not
    # write to (and so copy) every page that holds one.
    gc.freeze()
    # The spares wait for orders on fd 3 themselves; each says here when it took
    # one (`1`), could not be made or ended without one (`F`, explained on stderr
    # if it could), or found the executor gone (`X`). Each is replaced; spares that
    # keep failing end the template, and the executor starts another.
    said, say = os.pipe()

    def fork_spare():
        # True in a job's process, jailed, with its order.
        if os.fork() != 0:
            return False
        os.close(said)
        peer = spare(3, say)
        _pysandbox_warm_up()
        take_order(3, say, peer)
        return True

    for _ in range(_PYSANDBOX_SPARES):
        if fork_spare():
            return
    os.write(4, b"W")
    os.close(4)
    failed = 0
    while True:
        word = os.read(said, 1)
        if word in (b"X", b""):
            os._exit(0)
        failed = 0 if word == b"1" else failed + 1
        if failed >= _PYSANDBOX_SPARE_FAILURES:
            os.write(2, b"pysandbox template: spares keep failing\n")
            os._exit(1)
        if fork_spare():
            return


def _pysandbox_warm_up():
    # In a spare, before its order: what every job does, done once on nothing, so
    # that the pages it writes are already this process's own (not the template's,
    # to be copied while the job's clock runs). Nothing of it stays visible.
    import sys

    scratch = type(sys)("__main__")
    try:
        _pysandbox_run(scratch, b"None\n", "<warm-up>", lambda kind, payload: None)
    except BaseException:
        pass


def _pysandbox_exit(status):
    # A forked job ends as the interpreter would end it, minus tearing down the
    # template's modules (about 0.35 s with pandas and matplotlib loaded): its
    # threads are joined, its atexit handlers run, its buffers flushed.
    import os
    import sys

    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            threading._shutdown()
        except BaseException:
            pass
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(status)


def _pysandbox_status(code):
    # The exit status `python3 main.py` would have for SystemExit(code).
    import sys

    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except BaseException:
        pass
    return 1


def show_open_figures(show_figure):
    # Figures still open that were never shown are shown last, as a notebook would.
    import sys

    if "matplotlib.pyplot" not in sys.modules:
        return
    try:
        from matplotlib._pylab_helpers import Gcf

        for manager in Gcf.get_all_fig_managers():
            figure = manager.canvas.figure
            if not getattr(figure, "_pysandbox_shown", False):
                show_figure(figure)
    except BaseException:
        pass


try:
    _pysandbox_launch()
except SystemExit as _pysandbox_end:
    if not _pysandbox_forked:
        raise
    _pysandbox_exit(_pysandbox_status(_pysandbox_end.code))
if _pysandbox_forked:
    _pysandbox_exit(0)
