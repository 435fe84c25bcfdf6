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
def _pysandbox_launch():
    import os
    import resource
    import sys

    preload = sys.argv[1:]
    if preload:
        saved = os.dup(1), os.dup(2)
        null = os.open("/dev/null", os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        for name in preload:
            try:
                __import__(name)
            except BaseException:
                pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
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
    with open(path, "rb") as f:
        source = f.read()
    import importlib.machinery

    main = type(sys)("__main__")
    main.__file__ = path
    main.__cached__ = None
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    sys.argv[:] = [path]
    try:
        code = compile(source, path, "exec")
        exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException as error:
        # Print as the interpreter would, minus this launcher's frame.
        tb = error.__traceback__
        if tb is not None and tb.tb_frame.f_code.co_name == "_pysandbox_launch":
            tb = tb.tb_next
        # The traceback printed is the exception's own, so cut it there too.
        error = error.with_traceback(tb)
        sys.excepthook(type(error), error, tb)
        if isinstance(error, KeyboardInterrupt):
            import signal

            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        sys.exit(1)


_pysandbox_launch()
