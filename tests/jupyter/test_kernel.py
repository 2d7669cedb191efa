"""`weir kernel` against the Jupyter project's own clients: `jupyter_kernel_test` (the kernel
conformance suite) for both kernelspecs, `nbclient` executing a notebook, and
`jupyter_client` for what neither covers (input, interrupts, restart, bad messages).

Run by `tests/all/jupyter.rs`, which installs the kernelspecs into a directory on
`JUPYTER_PATH`; needs `jupyter_kernel_test`, `nbclient`, `nbformat`, `jupyter_client`
(`.ci/test` installs them in `target/jupyter-venv`).
"""

import asyncio
import os
import queue
import signal
import time
import unittest

import jupyter_kernel_test
import nbformat
from jupyter_client.manager import start_new_kernel
from jupyter_client.session import Session
from nbclient import NotebookClient

# The first cell of a kernel waits for its sandbox to load, and on a machine where the runtime was
# never compiled for these engine settings, for that too (python-sci: minutes).
FIRST_CELL_SECONDS = 900


def warm(kc):
    reply = kc.execute_interactive("pass", timeout=FIRST_CELL_SECONDS)
    assert reply["content"]["status"] == "ok", reply


class Conformance:
    """What both kernels must pass: `jupyter_kernel_test`'s tests with samples that exercise
    each feature (execution, streams, errors, results, displays, completion, inspection,
    is_complete, history, clear_output)."""

    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [
        {"text": "zi", "matches": {"zip"}},
        {"text": "import collections; collections.Ord", "matches": {"collections.OrderedDict"}},
        {"text": "import os.pa", "matches": {"os.path"}},
        {"text": "from json import loa", "matches": {"load", "loads"}},
    ]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_generate_error = "raise ValueError('weir test error')"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n * n for n in range(4)]", "result": "[0, 1, 4, 9]"},
        {"code": "'weir'.upper()", "result": "'WEIR'"},
    ]
    code_display_data = [
        {
            "code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
            "mime": "text/html",
        },
        {
            "code": "from IPython.display import Markdown, display; display(Markdown('# t'))",
            "mime": "text/markdown",
        },
        {
            "code": "from IPython.display import SVG, display; "
            "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\"/>'))",
            "mime": "image/svg+xml",
        },
    ]
    supported_history_operations = ("tail", "range", "search")
    code_history_pattern = "1?2*"
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        warm(cls.kc)


class PythonKernel(Conformance, jupyter_kernel_test.KernelTests):
    kernel_name = "weir-python"


class SciKernel(Conformance, jupyter_kernel_test.KernelTests):
    kernel_name = "weir-python-sci"
    code_execute_result = Conformance.code_execute_result + [
        {
            "code": "import pandas as pd; pd.DataFrame({'a': [1, 2]})",
            "mime": "text/html",
        },
    ]
    code_display_data = Conformance.code_display_data + [
        {
            "code": "import matplotlib.pyplot as plt; plt.plot([1, 3, 2]); plt.show()",
            "mime": "image/png",
        },
    ]


class PythonIopubWelcome(jupyter_kernel_test.IopubWelcomeTests):
    kernel_name = "weir-python"
    support_iopub_welcome = True


def outputs(kc, code, timeout=60, **kwargs):
    """The cell's reply and its iopub messages other than status and execute_input."""
    seen = []
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=seen.append, **kwargs)
    return reply, [m for m in seen if m["msg_type"] not in ("status", "execute_input")]


class KernelSession(unittest.TestCase):
    """A `weir-python` kernel driven by `jupyter_client` as JupyterLab drives one."""

    @classmethod
    def setUpClass(cls):
        cls.km, cls.kc = start_new_kernel(kernel_name="weir-python", startup_timeout=60)
        warm(cls.kc)

    @classmethod
    def tearDownClass(cls):
        cls.kc.stop_channels()
        cls.km.shutdown_kernel(now=False)

    def test_execution_counts_count_stored_cells_only(self):
        first = outputs(self.kc, "a = 1")[0]["content"]["execution_count"]
        outputs(self.kc, "b = 2", store_history=False)
        outputs(self.kc, "c = 3", silent=True)
        after = outputs(self.kc, "a")[0]["content"]["execution_count"]
        self.assertEqual(after, first + 1)

    def test_an_error_carries_its_traceback_naming_cells_by_execution_count(self):
        defined = outputs(self.kc, "def boom():\n    return 1 / 0")[0]["content"]
        reply, msgs = outputs(self.kc, "x = 1\nboom()")
        self.assertEqual(reply["content"]["status"], "error")
        self.assertEqual(reply["content"]["ename"], "ZeroDivisionError")
        self.assertEqual([m["msg_type"] for m in msgs], ["error"])
        traceback = "\n".join(msgs[0]["content"]["traceback"])
        count = reply["content"]["execution_count"]
        self.assertIn("Cell In[%d], line 2" % count, traceback)
        self.assertIn("Cell In[%d], line 2, in boom" % defined["execution_count"], traceback)
        self.assertIn("return 1 / 0", traceback)
        self.assertIn("ZeroDivisionError: division by zero", traceback)
        self.assertNotIn("<cell", traceback)

    def test_input_is_answered_on_the_stdin_channel(self):
        asked = []

        def answer(msg):
            asked.append(msg["content"])
            self.kc.input("Ada")

        reply, msgs = outputs(
            self.kc,
            "name = input('Your name? ')\nprint('hello', name)",
            allow_stdin=True,
            stdin_hook=answer,
        )
        self.assertEqual(reply["content"]["status"], "ok")
        self.assertEqual([a["prompt"] for a in asked], ["Your name? "])
        text = "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream")
        self.assertEqual(text, "hello Ada\n")

    def test_input_without_stdin_is_an_error_not_a_hang(self):
        reply, _ = outputs(self.kc, "input('x? ')", allow_stdin=False)
        self.assertEqual(reply["content"]["status"], "error")

    def test_an_interrupt_message_raises_keyboard_interrupt_and_keeps_the_namespace(self):
        outputs(self.kc, "kept = 'still here'")
        self.kc.execute("while True:\n    pass")
        time.sleep(1)
        self.km.interrupt_kernel()  # interrupt_mode "message": an interrupt_request on control
        reply = self.kc.get_shell_msg(timeout=30)
        self.assertEqual(reply["content"]["status"], "error")
        self.assertEqual(reply["content"]["ename"], "KeyboardInterrupt")
        self.assertEqual(outputs(self.kc, "kept")[1][0]["content"]["data"]["text/plain"],
                         "'still here'")

    def test_sigint_interrupts_as_the_message_does(self):
        outputs(self.kc, "kept_too = 7")
        self.kc.execute("import time\nwhile True:\n    time.sleep(0.01)")
        time.sleep(1)
        os.kill(self.km.provisioner.process.pid, signal.SIGINT)
        reply = self.kc.get_shell_msg(timeout=30)
        self.assertEqual(reply["content"]["ename"], "KeyboardInterrupt")
        self.assertEqual(outputs(self.kc, "kept_too")[1][0]["content"]["data"]["text/plain"],
                         "7")

    def test_update_display_data_replaces_a_display_by_its_id(self):
        reply, msgs = outputs(
            self.kc,
            "from IPython.display import display\n"
            "h = display('first', display_id='progress')\n"
            "h.update('second')",
        )
        self.assertEqual([m["msg_type"] for m in msgs], ["display_data", "update_display_data"])
        self.assertEqual(msgs[0]["content"]["transient"], {"display_id": "progress"})
        self.assertEqual(msgs[1]["content"]["data"]["text/plain"], "'second'")

    def test_inspect_gives_signature_and_docstring(self):
        outputs(self.kc, "def area(width, height=2):\n    '''The area of a rectangle.'''\n")
        self.kc.inspect("area(", 5)
        reply = self.kc.get_shell_msg(timeout=30)
        text = reply["content"]["data"]["text/plain"]
        self.assertTrue(reply["content"]["found"])
        self.assertIn("area(width, height=2)", text)
        self.assertIn("The area of a rectangle.", text)

    def test_completion_sees_the_namespace(self):
        outputs(self.kc, "weir_value = 3")
        self.kc.complete("weir_va", 7)
        reply = self.kc.get_shell_msg(timeout=30)
        self.assertEqual(reply["content"]["matches"], ["weir_value"])
        self.assertEqual(reply["content"]["cursor_start"], 0)

    def test_comm_info_lists_none(self):
        self.kc.comm_info()
        reply = self.kc.get_shell_msg(timeout=30)
        self.assertEqual(reply["content"]["comms"], {})

    def test_messages_with_a_bad_signature_or_no_sense_are_dropped_and_the_kernel_goes_on(self):
        info = self.km.get_connection_info()
        for key in (b"not the key", b""):
            forged = Session(key=key, signature_scheme=info["signature_scheme"])
            socket = self.km.connect_shell()
            try:
                forged.send(socket, "execute_request",
                            {"code": "forged = True", "silent": False, "store_history": True,
                             "user_expressions": {}, "allow_stdin": False,
                             "stop_on_error": True})
                socket.send_multipart([b"<IDS|MSG>", b"garbage", b"{", b"}", b"", b""])
                socket.send_multipart([b"nonsense"])
                self.assertEqual(socket.poll(1500), 0, "the kernel answered a forged message")
            finally:
                socket.close(linger=0)
        reply, msgs = outputs(self.kc, "'forged' in globals()")
        self.assertEqual(msgs[0]["content"]["data"]["text/plain"], "False")


    def test_signed_messages_that_make_no_sense_are_dropped_and_the_kernel_goes_on(self):
        session = self.kc.session
        for connect in (self.km.connect_shell, self.km.connect_control):
            socket = connect()
            try:
                # Signed with the connection's key: content that is not JSON, a request
                # lacking what its type needs, a type no kernel knows.
                header = session.pack(session.msg_header("execute_request"))
                frames = [header, b"{}", b"{}", b"{not json"]
                socket.send_multipart([b"<IDS|MSG>", session.sign(frames), *frames])
                session.send(socket, "execute_request", {"silent": False})
                session.send(socket, "weir_no_such_request", {"x": 1})
                time.sleep(1)
            finally:
                socket.close(linger=0)
        reply, msgs = outputs(self.kc, "6 * 7")
        self.assertEqual(msgs[0]["content"]["data"]["text/plain"], "42")
        # The heartbeat still echoes.
        heartbeat = self.km.connect_hb()
        try:
            heartbeat.send(b"ping")
            self.assertEqual(heartbeat.poll(5000), 1, "no heartbeat echo")
            self.assertEqual(heartbeat.recv(), b"ping")
        finally:
            heartbeat.close(linger=0)


class Configured(unittest.TestCase):
    """A kernelspec installed with `--runtime python --config FILE`: the kernel runs with the
    file's limits (`tests/all/jupyter.rs` writes `[limits] wall_ms = 1500`)."""

    def test_a_cell_past_the_configured_time_is_interrupted_keeping_the_namespace(self):
        km, kc = start_new_kernel(kernel_name="weir-python", startup_timeout=60)
        try:
            warm(kc)
            outputs(kc, "kept = 5")
            started = time.monotonic()
            reply, _ = outputs(kc, "while True: pass")
            self.assertEqual(reply["content"]["ename"], "KeyboardInterrupt")
            self.assertLess(time.monotonic() - started, 30)
            self.assertEqual(outputs(kc, "kept")[1][0]["content"]["data"]["text/plain"], "5")
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)


class Endings(unittest.TestCase):
    """How a kernel's session ends: a restart, a shutdown, the output limit."""

    def test_a_restart_starts_an_empty_namespace_and_shutdown_ends_the_kernel(self):
        km, kc = start_new_kernel(kernel_name="weir-python", startup_timeout=60)
        try:
            warm(kc)
            outputs(kc, "before_restart = 1")
            km.restart_kernel(now=False)
            kc.wait_for_ready(timeout=60)
            reply, msgs = outputs(kc, "before_restart", timeout=FIRST_CELL_SECONDS)
            self.assertEqual(reply["content"]["ename"], "NameError")
            self.assertEqual(outputs(kc, "2 ** 10")[1][0]["content"]["data"]["text/plain"],
                             "1024")
            process = km.provisioner.process
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=False)
        self.assertFalse(km.is_alive())
        # It ended itself on the shutdown request (a kernel the manager had to kill would show
        # the signal).
        self.assertEqual(process.wait(timeout=10), 0)


    def test_a_display_flood_ends_at_the_output_limit_and_the_next_cell_starts_afresh(self):
        km, kc = start_new_kernel(kernel_name="weir-python", startup_timeout=60)
        try:
            warm(kc)
            outputs(kc, "lost = 1")
            reply, msgs = outputs(
                kc,
                "from IPython.display import display, HTML\n"
                "while True:\n    display(HTML('<p>flood</p>'))",
            )
            self.assertEqual(reply["content"]["status"], "error")
            self.assertEqual(reply["content"]["ename"], "SessionEnded")
            self.assertIn("output limit", reply["content"]["evalue"])
            shown = [m for m in msgs if m["msg_type"] == "display_data"]
            self.assertGreater(len(shown), 100)
            self.assertEqual(msgs[-1]["msg_type"], "error")
            reply, msgs = outputs(kc, "'lost' in globals(), 6 * 7", timeout=FIRST_CELL_SECONDS)
            self.assertEqual(msgs[0]["content"]["data"]["text/plain"], "(False, 42)")
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=False)


class AnsweringClient(NotebookClient):
    """nbclient as a notebook front end runs it, plus what a front end does that nbclient
    leaves out: answering `input()` (on the stdin channel)."""

    answers = ["Grace"]

    async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
        self.kc.allow_stdin = True
        return await super().async_execute_cell(cell, cell_index, *args, **kwargs)

    async def answer_stdin(self):
        try:
            msg = await self.kc.stdin_channel.get_msg(timeout=0.01)
        except queue.Empty:
            return
        self.prompts.append(msg["content"]["prompt"])
        self.kc.input(self.answers.pop(0))


class Notebook(unittest.TestCase):
    """nbclient executes a real notebook through the `weir-python-sci` kernel."""

    def test_a_notebook_runs_with_rich_outputs_input_errors_and_an_interrupt(self):
        nb = nbformat.v4.new_notebook()
        cells = [
            "import pandas as pd\nimport matplotlib.pyplot as plt\n"
            "df = pd.DataFrame({'city': ['Oslo', 'Lima'], 'temp': [3.5, 19.0]})\ndf",
            "fig, ax = plt.subplots()\nax.bar(df.city, df.temp)\n"
            "plt.xticks(rotation=90)\nplt.show()",
            "from IPython.display import Markdown, display\n"
            "display(Markdown('**%d** cities' % len(df)))",
            "name = input('Who? ')\nprint('hi', name)",
            "1 / 0",
            "while True:\n    pass",
            "print(df.temp.sum(), name)",
        ]
        nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
        client = AnsweringClient(
            nb,
            kernel_name="weir-python-sci",
            allow_errors=True,
            # The looping cell gets a short timeout: nbclient interrupts it as a user would.
            timeout_func=lambda cell: 3 if "while True" in cell.source else FIRST_CELL_SECONDS,
            interrupt_on_timeout=True,
            startup_timeout=60,
        )
        client.prompts = []

        async def run_answering():
            task = asyncio.ensure_future(client.async_execute())
            while not task.done():
                if getattr(client, "kc", None) is not None:
                    try:
                        await client.answer_stdin()
                    except asyncio.CancelledError:
                        # nbclient closed its channels under the wait: the notebook is done.
                        if not task.done():
                            raise
                await asyncio.sleep(0.05)
            return task.result()

        asyncio.run(run_answering())

        out = [cell.outputs for cell in nb.cells]
        self.assertIn("<table", out[0][0]["data"]["text/html"])
        self.assertIn("Oslo", out[0][0]["data"]["text/html"])
        self.assertEqual(out[0][0]["output_type"], "execute_result")
        png = [o for o in out[1] if "image/png" in o.get("data", {})]
        self.assertEqual(len(png), 1)
        self.assertEqual(out[2][0]["data"]["text/markdown"], "**2** cities")
        self.assertEqual(client.prompts, ["Who? "])
        self.assertEqual(out[3][-1]["text"], "hi Grace\n")
        self.assertEqual(out[4][0]["output_type"], "error")
        self.assertEqual(out[4][0]["ename"], "ZeroDivisionError")
        self.assertEqual(out[5][-1]["output_type"], "error")
        self.assertEqual(out[5][-1]["ename"], "KeyboardInterrupt")
        self.assertEqual(out[6][0]["text"], "22.5 Grace\n")


if __name__ == "__main__":
    unittest.main()
