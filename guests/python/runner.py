"""weir's Python guest: runs the user's script as `__main__`, like `python main.py`.

This module is imported once, at *build* time, by componentize-py, which then snapshots the
interpreter. Everything at module level therefore runs at build time (pre-importing the standard
library, patching what WASI lacks, freezing the GC); `Run.run` runs once per sandboxed run.
"""

import atexit
import builtins
import gc
import importlib.abc
import json
import importlib.util
import marshal
import os
import pkgutil
import random
import sys
import types
import warnings

from wit_world import exports
from wit_world.imports import exit as wasi_exit, host
from componentize_py_types import Err

import weir_display

# ---------------------------------------------------------------- build time

# Modules that must not be imported at build time: GUI, test suites, installers, things that need
# threads/processes/native libraries WASI lacks, and modules whose import has visible effects.
_DENY = {
    "__main__", "antigravity", "ctypes", "curses", "dbm.gnu", "dbm.ndbm", "ensurepip",
    "idlelib", "lib2to3", "msilib", "multiprocessing", "pydoc_data", "readline", "sqlite3.dump",
    "test", "this", "tkinter", "turtle", "turtledemo", "venv", "wsgiref", "xxlimited",
    "__hello__", "__phello__", "_pyrepl", "concurrent.futures.process", "zipapp", "runner",
    "wit_world", "componentize_py_runtime", "componentize_py_types",
    "componentize_py_async_support", "_ios_support", "_android_support", "_apple_support", "poplib", "imaplib", "smtplib", "nntplib",
}
# Modules kept as source and imported on demand at run time, because importing them has an effect
# the user should see when *they* import them (`import this` prints the Zen of Python).
_ON_DEMAND = ("this", "__hello__", "__phello__")


def _denied(name):
    parts = name.split(".")
    return any(".".join(parts[: i + 1]) in _DENY for i in range(len(parts))) or any(
        p.startswith("_test") or p in ("tests", "test", "idle_test") for p in parts
    )


def _preimport_stdlib():
    """Import the whole standard library, so lazy imports inside it work at run time."""
    imported = 0
    for top in sorted(sys.stdlib_module_names):
        if _denied(top):
            continue
        try:
            module = importlib.import_module(top)
            imported += 1
        except BaseException:  # noqa: BLE001 - a module WASI cannot host is simply left out
            continue
        path = getattr(module, "__path__", None)
        if not path:
            continue
        for info in pkgutil.walk_packages(path, top + ".", onerror=lambda _name: None):
            if _denied(info.name):
                continue
            try:
                importlib.import_module(info.name)
                imported += 1
            except BaseException:  # noqa: BLE001
                continue
    return imported


class _SourceFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves stdlib modules whose source was captured at build time but not executed."""

    def __init__(self, sources):
        self.sources = sources

    def find_spec(self, name, path=None, target=None):
        if name in self.sources:
            return importlib.util.spec_from_loader(name, self, origin="<weir:" + name + ">")
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(compile(self.sources[module.__name__], module.__spec__.origin, "exec"), module.__dict__)


def _capture_sources(names):
    sources = {}
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.loader is not None:
                sources[name] = spec.loader.get_source(name)
        except BaseException:  # noqa: BLE001
            continue
    return {k: v for k, v in sources.items() if v is not None}


def _patch_asyncio():
    """WASI has no socketpair(): the selector loop's self-pipe becomes a no-op."""
    try:
        from asyncio import selector_events
    except BaseException:  # noqa: BLE001
        return
    loop = selector_events.BaseSelectorEventLoop
    loop._make_self_pipe = lambda self: None
    loop._close_self_pipe = lambda self: None
    loop._write_to_self = lambda self: None


def _patch_os_exit():
    """`os._exit(n)` ends the process with status `n`, as on Linux: the low 8 bits (300 -> 44,
    -1 -> 255), and `OverflowError` for a value outside a C int. WASI's own `proc_exit` reports
    every non-zero status as 1."""
    def _exit(status):
        status = status.__index__()
        if not -(1 << 31) <= status < (1 << 31):
            raise OverflowError("Python int too large to convert to C int")
        wasi_exit.exit_with_code(status & 0xFF)

    _exit.__name__ = _exit.__qualname__ = "_exit"
    _exit.__doc__ = os._exit.__doc__
    os._exit = _exit


def _buffered_stdio():
    """componentize-py leaves stdout/stderr unbuffered (one host call per write); give them the
    line-buffered writers `python main.py` has, so a print() is one write and output still
    streams line by line."""
    import io

    def writer(fd, errors):
        raw = io.FileIO(fd, "wb", closefd=False)
        stream = io.TextIOWrapper(
            io.BufferedWriter(raw, 8192), encoding="utf-8", errors=errors, line_buffering=True
        )
        stream.mode = "w"
        return stream

    sys.stdout = sys.__stdout__ = writer(1, "strict")
    sys.stderr = sys.__stderr__ = writer(2, "backslashreplace")


def _preimport_bindings():
    """Import every module of the generated bindings now, before the warm-up: componentize-py
    imports them after this module, and their enums' class creation would otherwise fill the
    type attribute cache with entries no run uses, evicting those of the run-time path."""
    import wit_world

    for info in pkgutil.walk_packages(wit_world.__path__, "wit_world.", onerror=lambda _n: None):
        try:
            importlib.import_module(info.name)
        except BaseException:  # noqa: BLE001 - only a warm-up; the run imports what it needs
            continue


PREIMPORTED = _preimport_stdlib()
_preimport_bindings()
_buffered_stdio()
sys.meta_path.append(_SourceFinder(_capture_sources(_ON_DEMAND)))
_patch_asyncio()
_patch_os_exit()
# The build's paths do not exist at run time (every stdlib module is already imported): drop them
# and their cached finders now, so no run has to free them (freeing dirties snapshot pages).
sys.path[:] = []
sys.path_importer_cache.clear()



def _immortal_table():
    """The snapshot's objects, for the build to make immortal (`guests/build/immortalize.rs`).

    A run that touches an object of the snapshot (calls a function, reads a module global, makes
    an instance of a class) changes its reference count, and so dirties -- copies -- its page.
    CPython skips reference counting for immortal objects, whose count is at least 2**30 on
    wasm32. Python cannot set a count, so the guest lists every object reachable now, by address
    (its `id`) beside its type's address, and the build writes the immortal count into those
    addresses of the snapshot's memory image, where it checks that the type still matches and
    the old count is a count (a block freed between this list and the snapshot holds a pointer).
    Layout: a marker, the number of pairs, then the pairs (little-endian u32).
    """
    import array

    roots = gc.get_objects()
    seen = bytearray()  # one bit per 8-byte-aligned address
    pairs = array.array("I")
    is_immortal = sys._is_immortal
    code_type = types.CodeType
    stack = roots
    while stack:
        obj = stack.pop()
        slot = id(obj) >> 3
        byte, bit = slot >> 3, 1 << (slot & 7)
        if byte >= len(seen):
            seen.extend(bytes(byte - len(seen) + (1 << 16)))
        if seen[byte] & bit:
            continue
        seen[byte] |= bit
        if not is_immortal(obj):
            pairs.append(id(obj))
            pairs.append(id(type(obj)))
        stack.extend(gc.get_referents(obj))
        if isinstance(obj, dict):
            stack.extend(obj.keys())  # a dict of str keys does not report them as referents
        elif type(obj) is code_type:  # code objects are not tracked by the GC
            stack.extend((obj.co_consts, obj.co_names, obj.co_filename, obj.co_name,
                          obj.co_qualname, obj.co_linetable, obj.co_exceptiontable))
    marker = bytes(reversed(b"1V-ELBAT-LATROMMI-RIEW"))  # built, so no constant holds it
    return marker + array.array("I", [len(pairs) // 2]).tobytes() + pairs.tobytes()


# ------------------------------------------------------------------ run time

_RUNNER_FILE = _denied.__code__.co_filename


class _Host:
    """What a run asks of the host: the host's functions at run time, a stand-in's in the build's
    warm-up (`_warm_up`). One type for both, so the bytecode the warm-up specializes for it (and
    the type's attribute cache entries) is what a run finds in the snapshot, not something it
    must rewrite -- dirtying, so copying, their pages."""

    __slots__ = ("launch_config", "program_compiled", "uncaught_exception", "repl_started",
                 "read_line", "cell_code", "cell_done")

    def __init__(self, launch_config, program_compiled, uncaught_exception, repl_started,
                 read_line, cell_code, cell_done):
        self.launch_config = launch_config
        self.program_compiled = program_compiled
        self.uncaught_exception = uncaught_exception
        self.repl_started = repl_started
        self.read_line = read_line
        self.cell_code = cell_code
        self.cell_done = cell_done


_HOST = _Host(host.launch_config, host.program_compiled, host.uncaught_exception,
              host.repl_started, input, host.cell_code, host.cell_done)


def _refresh_process_state(launch):
    """Replace what the snapshot captured at build time with this run's values."""
    sys.argv = list(launch.args) or [""]
    if os.environ:  # the snapshot's is empty: clearing an empty one costs an exception
        os.environ.clear()
    if launch.env:
        os.environ.update(launch.env)
    if launch.cwd:
        os.chdir(launch.cwd)
    # "" is the working directory, as for `python -c`; then the operator's package sites.
    sys.path[:] = [""] + list(launch.path)


def _new_main(filename):
    main = types.ModuleType("__main__")
    main.__file__ = filename
    main.__builtins__ = builtins
    main.__spec__ = None
    main.__loader__ = None
    sys.modules["__main__"] = main
    return main


def _user_traceback(tb):
    """Drop the runner's own frames, so the traceback starts in the user's code."""
    while tb is not None and tb.tb_frame.f_code.co_filename == _RUNNER_FILE:
        tb = tb.tb_next
    return tb


def _exit_code(exc):
    """The process exit status CPython derives from a SystemExit."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        # CPython reads the code as a C long long: out of its range, the status is -1 (255).
        return code & 0xFF if -(1 << 63) <= code < (1 << 63) else 0xFF
    try:
        print(code, file=sys.stderr)
    except BaseException:  # noqa: BLE001
        pass
    return 1


def _report(exc, api):
    """Print an uncaught exception as CPython does and tell the host. Returns the exit code."""
    if isinstance(exc, SystemExit):
        return _exit_code(exc)
    api.uncaught_exception(*_show(exc))
    return 1


def _execute(code_obj, namespace, api):
    try:
        exec(code_obj, namespace)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every way out of the script is reported
        return _report(exc, api)


def _load(launch, api):
    """Compile the user's program; returns (code object, filename) or raises SyntaxError etc.

    The host may give the script's bytes (they are what it wrote to the file) and the code an
    earlier run compiled from them; this run then hands its own compiled code over only if
    compiling it warned nothing, since a cached load would not repeat the warnings."""
    if launch.code is not None:
        source, filename = launch.code, "<string>"
    else:
        filename = os.path.abspath(launch.script)
        source = launch.source
        if source is None:
            with open(filename, "rb") as f:
                source = f.read()
    if launch.compiled is not None:
        try:
            code_obj = marshal.loads(launch.compiled)
        except BaseException:  # noqa: BLE001 - compile instead
            code_obj = None
        if type(code_obj) is types.CodeType:
            return code_obj, filename
    if not launch.cache_compiled:
        return compile(source, filename, "exec", dont_inherit=True), filename
    # The host's cache slot takes exactly one offer, and this is it: the code, or b"" when
    # compiling warned or failed. Made here, before any user code runs (a warning's display, a
    # traceback, the REPL), so nothing user code sends later can fill the slot.
    offer = b""
    try:
        with warnings.catch_warnings(record=True) as caught:
            code_obj = compile(source, filename, "exec", dont_inherit=True)
        if not caught:
            offer = marshal.dumps(code_obj)
    finally:
        api.program_compiled(offer)
    for w in caught:  # shown as they would have been; only the showing was deferred
        warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
    return code_obj, filename


def _repl(namespace, api):
    import code

    api.repl_started()
    sys.ps1, sys.ps2 = ">>> ", "... "
    console = code.InteractiveConsole(locals=namespace)
    console.raw_input = api.read_line
    try:
        console.interact(banner="", exitmsg="")
        return 0
    except SystemExit as exc:
        return _exit_code(exc)


def _fresh_stdin():
    """A new `sys.stdin` for a cell: nothing an earlier cell's reads left buffered carries over."""
    import io

    raw = io.FileIO(0, "rb", closefd=False)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8")


def _compile_cell(source, name):
    """The cell's statements, and its last statement as an expression when it is one (its value
    is the cell's result, as in a REPL or a notebook). The source goes to `linecache`, so
    tracebacks show the cell's lines."""
    import ast
    import linecache

    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    tree = ast.parse(source, name, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    body = compile(tree, name, "exec", dont_inherit=True)
    expr = compile(last, name, "eval", dont_inherit=True) if last is not None else None
    return body, expr


def _run_cell(source, name, namespace, api):
    """Runs a cell; returns its last expression's value as `cell-done` reports it (`_value`).
    Interrupts reach the guest only between `cell_code(True)` and `cell_code(False)`: in the
    cell's code and in formatting its value."""
    body, expr = _compile_cell(source, name)
    try:
        # Inside the `try`: an interrupt taken as soon as delivery opens still closes it.
        api.cell_code(True)
        exec(body, namespace)
        if expr is None:
            return None, None
        value = eval(expr, namespace)
        if value is None:
            return None, None
        builtins._ = value
        return _value(value)
    finally:
        # Until the host has it: an interrupt that lands in this call's own code (delivery is
        # still open) must not leave delivery open in the runner's code that follows.
        while True:
            try:
                api.cell_code(False)
                break
            except KeyboardInterrupt:
                pass


def _value(value):
    """A cell's value: its text (`repr`), and its MIME bundle as JSON text when it has more
    formats than text (a notebook's `execute_result`)."""
    data, metadata = weir_display.format(value)
    text = data["text/plain"]
    if len(data) == 1 and not metadata:
        return text, None
    return text, (json.dumps(data, ensure_ascii=False, default=str),
                  json.dumps(metadata, ensure_ascii=False, default=str))


def _show(exc):
    """Prints an exception's traceback as the REPL does; returns its type name and message."""
    tb = _user_traceback(exc.__traceback__)
    if weir_display.kernel is not None:  # `weir kernel` shows it as the cell's error output
        weir_display.keep_traceback(exc, tb)
    else:
        try:
            exc.__traceback__ = tb  # the default hook prints exc.__traceback__, not its argument
            sys.excepthook(type(exc), exc, tb)
        except BaseException:  # noqa: BLE001
            pass
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001
        message = ""
    return type(exc).__name__, message[:1000]


def _flush_stdio():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass


# What the program displays goes to the host, behind the output it printed before.
def _call_tool(name, args):
    try:
        return host.call_tool(name, args), None
    except Err as failed:
        return None, failed.value


weir_display.connect(host.display, host.clear_output, _flush_stdio, _call_tool)


_WAIT, _RUN, _DONE = 0, 1, 2
_INTERRUPTED = ("KeyboardInterrupt", "")


class _Cell:
    """Where the session's current cell is, kept across a stray interrupt (`_cell`)."""

    __slots__ = ("number", "phase", "source", "result", "rich", "error", "exit")

    def __init__(self):
        self.number = 0
        self.phase = _WAIT
        self.source = self.result = self.rich = self.error = self.exit = None


class _Session:
    """A session between two cells: its namespace and where its cells are. Kept in a module
    global, so that between cells no guest code runs and the interpreter's memory holds the
    whole session (what a snapshot keeps)."""

    __slots__ = ("namespace", "cell", "first_free")

    def __init__(self, namespace, first_free):
        self.namespace = namespace
        self.cell = _Cell()
        self.first_free = first_free


_SESSION = None


def _cell(session, source, api):
    """Runs one cell of a session; the exit status when the cell ended the session
    (`sys.exit`), `None` otherwise.

    Interrupts reach the guest only while the cell's own code runs, so one may land in this
    function's code only in the moment delivery closes; `_step` is then entered again and `cell`
    says where it was: a stray interrupt never ends the session and never runs a cell twice."""
    cell = session.cell
    cell.number += 1
    cell.source, cell.result, cell.rich, cell.error, cell.exit = (
        source, None, None, _INTERRUPTED, None)
    cell.phase = _RUN
    while True:
        try:
            return _step(session.namespace, api, cell)
        except KeyboardInterrupt:
            pass


def _step(namespace, api, cell):
    if cell.phase == _RUN:
        cell.phase = _DONE  # from here on the cell may have started: it never runs again
        try:
            _fresh_stdin()
            cell.result, cell.rich = _run_cell(
                cell.source, "<cell %d>" % cell.number, namespace, api)
            cell.error = None
        except SystemExit as exc:
            cell.error = ("SystemExit", str(exc.code))
            cell.exit = _exit_code(exc)
        except BaseException as exc:  # noqa: BLE001 - every error is the cell's, not the session's
            cell.error = _show(exc)
    _flush_stdio()
    api.cell_done(cell.result, cell.error, cell.rich)
    cell.phase = _WAIT
    return cell.exit


# Descriptors probed for files a session holds open: the C library hands out the lowest free one.
_PROBED_FDS = 1024


def _first_free_fd():
    """The lowest descriptor not open: the host's directories take 3 and up, before any program
    code runs."""
    fd = 3
    while True:
        try:
            os.fstat(fd)
        except OSError:
            return fd
        fd += 1


def _open_files(first_free):
    """Why the session cannot be saved now: a file it holds open (a snapshot keeps the guest's
    memory, and the host's side of an open file is not in it), or `None`."""
    for fd in range(first_free, _PROBED_FDS):
        try:
            os.fstat(fd)
        except OSError:
            continue
        return "the session holds a file open (descriptor %d): close it first" % fd
    return None


def _finish():
    try:
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass


def _main(api):
    # The build-time seed is in the snapshot: draw a fresh one from wasi:random. Done before the
    # run is known, so a warm guest has done it ahead of demand (`src/warm.rs`); metered and
    # deterministic runs never use warm guests, so theirs comes from their own seeded source.
    random.seed()
    launch = api.launch_config()
    _refresh_process_state(launch)
    first_free = _first_free_fd() if launch.cells else None
    try:
        code_obj, filename = _load(launch, api)
    except BaseException as exc:  # noqa: BLE001 - SyntaxError, missing file, ...
        _new_main(launch.script or "<string>")
        status = _report(exc, api)
        namespace = None
    else:
        if filename != "<string>":
            sys.path[0] = os.path.dirname(filename)
        namespace = _new_main(filename).__dict__
        if filename == "<string>":
            del namespace["__file__"]
        status = _execute(code_obj, namespace, api)
    if launch.repl or launch.cells:
        if namespace is None:
            namespace = _new_main("<stdin>").__dict__
        if launch.cells:
            global _SESSION
            _SESSION = _Session(namespace, first_free)
            return None
        status = _repl(namespace, api)
    return status


class Run(exports.Run):
    def run(self) -> None:
        status = _main(_HOST)
        if status is None:
            return  # a session: its cells come as calls to `Session.cell`
        _finish()
        if status != 0:
            wasi_exit.exit_with_code(status)


class Session(exports.Session):
    def cell(self, source: str) -> int | None:
        return _cell(_SESSION, source, _HOST)

    def finish(self) -> int:
        _finish()
        return 0

    def unsaved(self) -> str | None:
        return _open_files(_SESSION.first_free)


# ------------------------------------------------------- build time, last

class _WarmUpHost:
    """A stand-in for the host, for `_warm_up`: a `-c` program, then a REPL fed from a list."""

    def __init__(self, code, lines, compiled=None, cells=False):
        # The bindings' own record type, as the host's `launch-config` returns it.
        self.launch = host.Launch(
            script="", code=code, source=None, compiled=compiled, cache_compiled=compiled is None,
            repl=not cells, cells=cells, args=["main.py", "arg"], env=list(os.environ.items()),
            cwd="", path=[],
        )
        self.compiled = None
        self.lines = iter(lines)

    def api(self):
        return _Host(self.launch_config, self.program_compiled, self.uncaught_exception,
                     self.repl_started, self.read_line, self.cell_code, self.cell_done)

    def launch_config(self):
        return self.launch

    def uncaught_exception(self, type_name, message):
        pass

    def program_compiled(self, code):
        self.compiled = code

    def repl_started(self):
        pass

    def read_line(self, prompt=""):
        try:
            return next(self.lines)
        except StopIteration:
            raise EOFError from None

    def cell_code(self, running):
        pass

    def cell_done(self, result, error, rich=None):
        pass


def _end_warm_up_session():
    global _SESSION
    _SESSION = None


def _warm_up(passes=3):
    """Take the run-time paths a few times now, at build time, so the snapshot holds their bytecode
    already specialized: CPython's adaptive interpreter rewrites a function's instructions (and
    their counters) in its code object the first times it runs, and a run doing that would dirty
    -- copy -- one more page of the snapshot per function, in every instance. Nothing is printed
    and no exit handler runs."""
    build_main = sys.modules.get("__main__")
    script = "x = 1\ndef f(a):\n    return a + x\ny = f(2)\n"
    lines = ["z = f(y)", "def g():", "    return z", "", "w = g()"]
    compiled = None
    for _ in range(passes):
        # A miss that hands its code over, then hits loading it.
        warm_host = _WarmUpHost(script, lines, compiled)
        _main(warm_host.api())
        compiled = compiled or warm_host.compiled
        os.path.dirname(os.path.abspath("main.py"))
        with open(__file__, "rb") as f:
            f.read()
        sys.stdout.flush()
        # A session's cells: the last expression's value, an error, state kept between cells.
        # The cells replace `sys.stdin`; the snapshot keeps the interpreter's own.
        stdin = sys.stdin
        cells = ["n += 1", "n * 2", "def h():\n    return n\nh()", "1 / 0 if n > 99 else None"]
        api = _WarmUpHost("n = 1", [], cells=True).api()
        _main(api)
        for source in cells:
            _cell(_SESSION, source, api)
        _open_files(_SESSION.first_free)
        sys.stdin = sys.__stdin__ = stdin
    _end_warm_up_session()
    if build_main is not None:
        sys.modules["__main__"] = build_main
    sys.argv = [""]
    sys.path[:] = []


def _interrupt_table():
    """Where the host finds the exception an interrupt raises (`guests/build/interrupt.rs`):
    a marker, then the address of `KeyboardInterrupt` (little-endian u32)."""
    import array

    marker = bytes(reversed(b"1V-ELBAT-TPURRETNI-RIEW"))  # built, so no constant holds it
    return marker + array.array("I", [id(KeyboardInterrupt)]).tobytes()


_INTERRUPT_TABLE = _interrupt_table()
_warm_up()
# Objects alive now belong to the snapshot; freezing them keeps a run-time gc.collect() from
# dirtying (and so copying) their pages in every instance.
gc.collect()
_IMMORTAL_TABLE = _immortal_table()
gc.collect()
_warm_up(1)
gc.collect()
gc.freeze()
