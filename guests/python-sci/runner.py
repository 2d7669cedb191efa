"""weir's runner for the `python-sci` runtime: runs the user's program as `__main__`, like
`python main.py`, in CPython 3.15 with numpy, pandas, scipy, scikit-learn and matplotlib.

The host loads this module into the interpreter when it pre-initializes the guest (see
`crates/weir-sandbox/src/runtime/sci/preinit.rs`), together with the packages it imports there,
and snapshots the result. Each run then calls `main()`, in one turn of the interpreter. A
session's `main()` returns after its program, and the host runs each cell as a turn of its own
(`_cell`), lets go of files before a snapshot (`_release_files`) and ends it with `_end`:
between two turns no guest code runs, so the interpreter's memory is the session's whole state.
Everything the run needs from the host goes through the door (`_host.call`), one JSON request and
one JSON answer per call.
"""

import atexit
import base64
import builtins
import io
import json
import marshal
import os
import sys
import types
import warnings

import _host
import weir_display

_RUNNER_FILE = "<weir>"
# Figures larger than this (pixels, either side) are not rendered: a plot's PNG counts against
# the run's output limit anyway, and a 100,000-pixel-wide canvas would take the run's memory.
_MAX_FIGURE_PIXELS = 8192


def _ask(op, **fields):
    fields["op"] = op
    return json.loads(_host.call(json.dumps(fields).encode()))


class _Launch:
    """The launch the host answers, as attributes."""

    def __init__(self, fields):
        self.script = fields.get("script") or ""
        self.code = fields.get("code")
        source = fields.get("source")
        self.source = None if source is None else source.encode()
        compiled = fields.get("compiled")
        self.compiled = None if compiled is None else base64.b64decode(compiled)
        self.cache_compiled = bool(fields.get("cache_compiled"))
        self.repl = bool(fields.get("repl"))
        self.cells = bool(fields.get("cells"))
        self.args = list(fields.get("args") or [])
        self.env = [tuple(kv) for kv in fields.get("env") or []]
        self.cwd = fields.get("cwd") or ""
        self.path = list(fields.get("path") or [])


def _refresh_process_state(launch):
    sys.argv = list(launch.args) or [""]
    os.environ.clear()
    os.environ.update(launch.env)
    if launch.cwd:
        os.chdir(launch.cwd)
    sys.path[:] = [""] + [p for p in _BASE_PATH] + list(launch.path)


def _new_main(filename):
    main = types.ModuleType("__main__")
    main.__file__ = filename
    main.__builtins__ = builtins
    main.__spec__ = None
    main.__loader__ = None
    sys.modules["__main__"] = main
    return main


def _user_traceback(tb):
    while tb is not None and tb.tb_frame.f_code.co_filename == _RUNNER_FILE:
        tb = tb.tb_next
    return tb


def _exit_code(exc):
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF if -(1 << 63) <= code < (1 << 63) else 0xFF
    try:
        print(code, file=sys.stderr)
    except BaseException:  # noqa: BLE001
        pass
    return 1


def _show(exc):
    tb = _user_traceback(exc.__traceback__)
    if weir_display.kernel is not None:  # `weir kernel` shows it as the cell's error output
        weir_display.keep_traceback(exc, tb)
    else:
        try:
            exc.__traceback__ = tb
            sys.excepthook(type(exc), exc, tb)
        except BaseException:  # noqa: BLE001
            pass
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001
        message = ""
    return type(exc).__name__, message[:1000]


def _report(exc):
    if isinstance(exc, SystemExit):
        return _exit_code(exc)
    type_name, message = _show(exc)
    _ask("uncaught", type=type_name, message=message)
    return 1


def _load(launch):
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
    offer = b""
    try:
        with warnings.catch_warnings(record=True) as caught:
            code_obj = compile(source, filename, "exec", dont_inherit=True)
        if not caught:
            offer = marshal.dumps(code_obj)
    finally:
        _ask("compiled", code=base64.b64encode(offer).decode())
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
    return code_obj, filename


# ------------------------------------------------------------------ figures

def _open_figures():
    """The figures still open, if matplotlib was imported (it always is here, pre-imported)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return plt, []
    try:
        return plt, [plt.figure(n) for n in plt.get_fignums()]
    except BaseException:  # noqa: BLE001
        return plt, []


def _send_figure(figure):
    width, height = (int(round(v)) for v in figure.get_size_inches() * figure.dpi)
    if not (0 < width <= _MAX_FIGURE_PIXELS and 0 < height <= _MAX_FIGURE_PIXELS):
        print("weir: figure of %dx%d pixels not rendered (larger than %d)"
              % (width, height, _MAX_FIGURE_PIXELS), file=sys.stderr)
        return
    weir_display.display(figure)


def _show_figures(*args, **kwargs):
    """`plt.show()`: every open figure is displayed (PNG, or the formats
    `set_matplotlib_formats` chose) and closed."""
    plt, figures = _open_figures()
    for figure in figures:
        try:
            _send_figure(figure)
        finally:
            plt.close(figure)


def _patch_show():
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.show = _show_figures


# ------------------------------------------------------------------ running

def _execute(code_obj, namespace):
    try:
        exec(code_obj, namespace)
        _show_figures()
        return 0
    except BaseException as exc:  # noqa: BLE001
        _show_figures()
        return _report(exc)


class _Console:
    """The interactive console after the script (`python -i`); figures a statement leaves open
    are shown after it, as IPython's inline backend does."""

    def __init__(self, namespace):
        import code

        class Console(code.InteractiveConsole):
            def runcode(self, code_obj):
                super().runcode(code_obj)
                _show_figures()

        self.console = Console(locals=namespace)

    def interact(self):
        _ask("repl_started")
        sys.ps1, sys.ps2 = ">>> ", "... "
        try:
            self.console.interact(banner="", exitmsg="")
            return 0
        except SystemExit as exc:
            return _exit_code(exc)


def _fresh_stdin():
    raw = io.FileIO(0, "rb", closefd=False)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8")


def _compile_cell(source, name):
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


def _run_cell(source, name, namespace):
    """Runs a cell; returns its last expression's value as `cell_done` reports it (`_value`).
    Interrupts reach the guest only between the two `cell_code` reports: in the cell's code and
    in formatting its value."""
    body, expr = _compile_cell(source, name)
    try:
        # Inside the `try`: an interrupt taken as soon as delivery opens still closes it.
        _ask("cell_code", running=True)
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
                _ask("cell_code", running=False)
                break
            except KeyboardInterrupt:
                pass


def _value(value):
    """A cell's value: its text (`repr`), and its MIME bundle as JSON text when it has more
    formats than text (a notebook's `execute_result`: a DataFrame's `text/html`). A figure
    that is the value is shown by its bundle, not again as an open figure."""
    data, metadata = weir_display.format(value)
    if weir_display._is_figure(value):
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            plt.close(value)
    text = data["text/plain"]
    if len(data) == 1 and not metadata:
        return text, None
    return text, (json.dumps(data, ensure_ascii=False, default=str),
                  json.dumps(metadata, ensure_ascii=False, default=str))


def _flush_stdio():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass


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

    __slots__ = ("namespace", "cell")

    def __init__(self, namespace):
        self.namespace = namespace
        self.cell = _Cell()


_SESSION = None


def _cell():
    """Runs the session's next cell, whose source the host hands out: one turn of its own, which
    the host starts (so between cells no guest code runs). A cell that ends the session
    (`sys.exit`) says so in its `cell_done` report, and the program's end follows (exit handlers,
    output flushed).

    Interrupts reach the guest only while the cell's own code runs, so one may land in this
    function's code only in the moment delivery closes; `_step` is then entered again and `cell`
    says where it was: a stray interrupt never ends the session and never runs a cell twice."""
    source = _ask("cell").get("code")
    if source is None:
        return
    session = _SESSION
    cell = session.cell
    cell.number += 1
    cell.source, cell.result, cell.rich, cell.error, cell.exit = (
        source, None, None, _INTERRUPTED, None)
    cell.phase = _RUN
    while True:
        try:
            status = _step(session.namespace, cell)
            break
        except KeyboardInterrupt:
            pass
    if status is not None:
        _finish()
    _keep_session()


def _keep_session():
    """`exit()` and `quit()` mark the interpreter's session ended when the turn that called them
    returns (`_reactor._quit`), even when the program caught the `SystemExit` they raise. Here a
    session ends when the runner says so (`cell_done`'s `exit`), as a script's `exit()` caught by
    the script does not end the script."""
    reactor = sys.modules.get("_reactor")
    if reactor is not None:
        reactor._quit = False


def _step(namespace, cell):
    if cell.phase == _RUN:
        cell.phase = _DONE  # from here on the cell may have started: it never runs again
        try:
            _fresh_stdin()
            cell.result, cell.rich = _run_cell(cell.source, "<cell %d>" % cell.number, namespace)
            cell.error = None
        except SystemExit as exc:
            cell.error = ("SystemExit", str(exc.code))
            cell.exit = _exit_code(exc)
        except BaseException as exc:  # noqa: BLE001
            cell.error = _show(exc)
        try:
            _show_figures()
        except BaseException:  # noqa: BLE001 - a figure that cannot render is not the session's end
            pass
    _flush_stdio()
    _ask("cell_done", value=cell.result, failure=cell.error, exit=cell.exit, rich=cell.rich)
    cell.phase = _WAIT
    return cell.exit


def _end():
    """Ends the session as a program ends (exit handlers run, output is flushed): the host's
    last turn when its caller closes the session."""
    _finish()


def _release_files():
    """Before a snapshot: matplotlib keeps each font it has drawn with open (a cache of loaded
    fonts), and an open file is not the guest's alone to keep: let them go, so that they close.
    matplotlib opens them again when it next draws text."""
    font_manager = sys.modules.get("matplotlib.font_manager")
    if font_manager is None:
        return
    try:
        font_manager._get_font.cache_clear()
    except BaseException:  # noqa: BLE001
        pass


def _finish():
    try:
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    _flush_stdio()


def _reseed():
    """The snapshot holds the seeds drawn when it was made: draw fresh ones from the host's
    random source (seeded in a deterministic run, so its numbers repeat)."""
    import random

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def _run():
    """The program; then its REPL, or, for a session, nothing more here (`None`: its cells are
    turns of their own). The exit status."""
    launch = _Launch(_ask("launch"))
    _reseed()
    _refresh_process_state(launch)
    try:
        code_obj, filename = _load(launch)
    except BaseException as exc:  # noqa: BLE001
        _new_main(launch.script or "<string>")
        status = _report(exc)
        namespace = None
    else:
        if filename != "<string>":
            sys.path[0] = os.path.dirname(filename)
        namespace = _new_main(filename).__dict__
        if filename == "<string>":
            del namespace["__file__"]
        status = _execute(code_obj, namespace)
    if launch.repl or launch.cells:
        if namespace is None:
            namespace = _new_main("<stdin>").__dict__
        if launch.cells:
            global _SESSION
            _SESSION = _Session(namespace)
            _keep_session()
            return None
        status = _Console(namespace).interact()
    return status


def main():
    """One run: the program the host launches, then its REPL; the exit status. A session's
    program returns here, and its cells follow as turns of their own (`_cell`)."""
    status = _run()
    if status is None:
        return
    _finish()
    raise SystemExit(status)


def _line_buffered_stdio():
    """Output streams as the lean runtime's does: a print() is one write, written when its line
    ends, so stdout and stderr arrive in the order the program wrote them."""
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(errors="backslashreplace", line_buffering=True)


def _preimport(names):
    """Imports the packages the runtime promises ready (`PREIMPORT` in preinit.rs)."""
    import importlib

    _line_buffered_stdio()
    for name in names:
        importlib.import_module(name)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.figure()
    plt.plot([0, 1], [0, 1])
    plt.savefig(io.BytesIO(), format="png")  # the Agg renderer's code paths: taken once, now
    plt.close("all")
    # A loaded font reads its file through a descriptor of this process, which no run has:
    # fonts are opened again by the run that draws text.
    from matplotlib import font_manager

    font_manager._get_font.cache_clear()
    _patch_show()


def _send_display(data, metadata, display_id, update):
    return _ask("display", data=data, metadata=metadata, display_id=display_id,
                update=update).get("refused")


def _clear_output(wait):
    _ask("clear_output", wait=wait)


_BASE_PATH = list(sys.path)
# What the program displays goes to the host, behind the output it printed before.
def _call_tool(name, args):
    answer = _ask("tool", name=name, args=args)
    return answer.get("value"), answer.get("failed")


weir_display.connect(_send_display, _clear_output, _flush_stdio, _call_tool)
