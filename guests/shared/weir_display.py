"""Jupyter's display model inside weir's guests (both runtimes load this module).

Anything a program displays (`display(x)`, a session cell's last value, a matplotlib figure)
becomes a MIME bundle built the way IPython builds one: `_repr_mimebundle_`, then the
`_repr_*_` methods (`_repr_html_`, `_repr_markdown_`, `_repr_svg_`, `_repr_png_`,
`_repr_jpeg_`, `_repr_json_`, `_repr_latex_`, ...), with `text/plain` always present. Binary
formats travel as base64 text, as in Jupyter's messages.

Where IPython itself is absent, `import IPython.display` (and `IPython.core.display`) finds this
module: `display`, `update_display`, `clear_output`, `DisplayHandle`, `HTML`, `Markdown`, `SVG`,
`Image`, `JSON`, `Latex`, `Javascript`, `Pretty`, `display_html` and its siblings,
`set_matplotlib_formats`. `display` is also a builtin, as in a notebook.

The runner connects it to the host (`connect`): a bundle goes out as one call, the host checks it
(size, MIME names, base64) and counts its bytes in the run's output limit.
"""

import base64
import builtins
import importlib.abc
import importlib.util
import json
import os
import sys
import types

# The host's door: `_send(data_json, metadata_json, display_id, update)` answers `None` or why
# the bundle was refused; `_clear(wait)`; `_flush()` writes buffered stdout/stderr first, so a
# display lands after the output printed before it. Set by the runner (`connect`).
_send = None
_clear = None
_flush = None

# (MIME type, the method that gives it), in IPython's order.
_REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("image/gif", "_repr_gif_"),
    ("image/webp", "_repr_webp_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
    ("application/pdf", "_repr_pdf_"),
)
_BINARY = frozenset(("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf"))
# Values of these types need no `_repr_*_` lookup: their bundle is their `repr`.
_PLAIN_TYPES = frozenset((int, float, complex, bool, str, bytes, list, tuple, dict, set,
                          frozenset, range, type(None), type(Ellipsis)))

# The formats matplotlib figures are shown in (`set_matplotlib_formats`).
_figure_formats = ["png"]


def connect(send, clear, flush, call_tool=None):
    """The runner's host calls (see the module's globals). `call_tool(name, args_json)`
    answers `(value_json, None)`, `(None, why)` or `(None, None)` when interrupted."""
    global _send, _clear, _flush, _call_tool
    _send, _clear, _flush = send, clear, flush
    if call_tool is not None:
        _call_tool = call_tool


def _no_tools(name, args):
    return None, "this run has no host functions"


_call_tool = _no_tools


def _real_method(obj, name):
    """`obj.name` when it is a real method: never looked up on a class (its `_repr_html_` is an
    unbound function), and not on an object that answers every attribute (a proxy)."""
    if isinstance(obj, type):
        return None
    try:
        if getattr(obj, "_ipython_canary_method_should_not_exist_", None) is not None:
            return None
        method = getattr(obj, name, None)
    except Exception:  # noqa: BLE001 - an attribute that raises is a format that is absent
        return None
    return method if callable(method) else None


def _formatter_failed(obj, name):
    """A `_repr_*_` that raised: shown on stderr as IPython shows it, and the format left out."""
    import traceback

    try:
        print("weir: %s.%s() failed; the format is left out:" % (type(obj).__name__, name),
              file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
    except BaseException:  # noqa: BLE001
        pass


def _encode(mime, value):
    """A format's value as a bundle carries it, or `None` to leave it out."""
    if mime in _BINARY:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return base64.b64encode(bytes(value)).decode("ascii")
        return value if isinstance(value, str) else None
    if mime == "application/json" or mime.endswith("+json"):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def _plain(obj):
    try:
        method = _real_method(obj, "_repr_pretty_")
        if method is not None:
            return _pretty(method, obj)
        return repr(obj)
    except Exception:  # noqa: BLE001
        return "<%s object>" % type(obj).__name__


def _pretty(method, obj):
    class _Printer:
        def __init__(self):
            self.parts = []

        def text(self, text):
            self.parts.append(str(text))

        def pretty(self, value):
            self.parts.append(repr(value))

        breakable = lambda self, sep=" ": self.parts.append(sep)  # noqa: E731

    printer = _Printer()
    method(printer, False)
    return "".join(printer.parts)


def _wanted(mime, include, exclude):
    return (include is None or mime in include) and (exclude is None or mime not in exclude)


def format(obj, include=None, exclude=None):
    """`(data, metadata)`: the MIME bundle of `obj`, as IPython's display formatter builds it."""
    data, metadata = {}, {}
    if type(obj) not in _PLAIN_TYPES:
        _rich(obj, include, exclude, data, metadata)
    if "text/plain" not in data:
        data["text/plain"] = _plain(obj)
    if include is not None or exclude is not None:
        data = {k: v for k, v in data.items() if k == "text/plain" or _wanted(k, include, exclude)}
        metadata = {k: v for k, v in metadata.items() if k in data}
    return data, metadata


def _rich(obj, include, exclude, data, metadata):
    method = _real_method(obj, "_repr_mimebundle_")
    if method is not None:
        try:
            result = method(include=include, exclude=exclude)
        except Exception:  # noqa: BLE001
            _formatter_failed(obj, "_repr_mimebundle_")
        else:
            found, found_md = result if isinstance(result, tuple) else (result, None)
            for mime, value in (found or {}).items():
                value = _encode(mime, value)
                if value is not None:
                    data[mime] = value
            metadata.update(found_md or {})
    if _is_figure(obj):
        _figure_bundle(obj, data, metadata)
        return
    for mime, name in _REPR_METHODS:
        if mime in data or not _wanted(mime, include, exclude):
            continue
        method = _real_method(obj, name)
        if method is None:
            continue
        try:
            value = method()
        except NotImplementedError:
            continue
        except Exception:  # noqa: BLE001
            _formatter_failed(obj, name)
            continue
        md = None
        if isinstance(value, tuple) and len(value) == 2:
            value, md = value
        if value is None:
            continue
        value = _encode(mime, value)
        if value is None:
            continue
        data[mime] = value
        if md:
            metadata[mime] = md


# ------------------------------------------------------------------ matplotlib

def _is_figure(obj):
    figure = sys.modules.get("matplotlib.figure")
    return figure is not None and isinstance(obj, figure.Figure)


def _png_size(png):
    """(width, height) from a PNG's header."""
    if len(png) >= 24 and png[12:16] == b"IHDR":
        return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    return None


def _figure_bundle(figure, data, metadata):
    """A figure in the formats asked for (`set_matplotlib_formats`), cropped to what it draws
    (`bbox_inches="tight"`: rotated tick labels and legends outside the axes stay in)."""
    import io

    for fmt in _figure_formats:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, bbox_inches="tight")
        raw = buffer.getvalue()
        if fmt == "png":
            data["image/png"] = base64.b64encode(raw).decode("ascii")
            size = _png_size(raw)
            if size is not None:
                metadata["image/png"] = {"width": size[0], "height": size[1]}
        elif fmt == "svg":
            data["image/svg+xml"] = raw.decode("utf-8")
        elif fmt in ("jpg", "jpeg"):
            data["image/jpeg"] = base64.b64encode(raw).decode("ascii")
        elif fmt == "pdf":
            data["application/pdf"] = base64.b64encode(raw).decode("ascii")


def set_matplotlib_formats(*formats, **kwargs):
    """The formats figures are shown in: any of `png`, `svg`, `jpeg`, `pdf` (`retina` is
    `png`)."""
    known = {"png": "png", "retina": "png", "png2x": "png", "svg": "svg", "jpg": "jpeg",
             "jpeg": "jpeg", "pdf": "pdf"}
    chosen = []
    for fmt in formats:
        name = known.get(str(fmt).lower())
        if name is None:
            raise ValueError("supported formats are: %s, not %r" % (", ".join(sorted(known)), fmt))
        if name not in chosen:
            chosen.append(name)
    if chosen:
        _figure_formats[:] = chosen


# ------------------------------------------------------------------ publishing


def _new_id():
    return base64.b16encode(os.urandom(16)).decode("ascii").lower()


def publish(data, metadata=None, display_id=None, update=False):
    """Sends one bundle to the host, behind the output written so far."""
    if _send is None:
        return
    if _flush is not None:
        _flush()
    try:
        data_json = json.dumps(data, ensure_ascii=False, allow_nan=False, default=str)
        metadata_json = json.dumps(metadata or {}, ensure_ascii=False, allow_nan=False,
                                   default=str)
    except ValueError as exc:
        raise ValueError("display: the bundle is not JSON: %s" % exc) from None
    refused = _send(data_json, metadata_json, display_id, bool(update))
    if refused:
        print("weir: display not shown: %s" % refused, file=sys.stderr)


def display(*objs, include=None, exclude=None, metadata=None, transient=None, display_id=None,
            raw=False, clear=False, **kwargs):
    """Shows each object as its richest formats (IPython's `display`)."""
    update = bool(kwargs.pop("update", False))
    if kwargs:
        raise TypeError("display() got an unexpected keyword argument %r" % next(iter(kwargs)))
    transient = dict(transient or {})
    if display_id is not None:
        if display_id is True:
            display_id = _new_id()
        transient["display_id"] = str(display_id)
    shown_id = transient.get("display_id")
    if update and shown_id is None:
        raise TypeError("display_id required for update_display")
    for obj in objs:
        if clear:
            clear_output(wait=True)
        if raw:
            data, md = dict(obj), dict(metadata or {})
        else:
            data, md = format(obj, include=include, exclude=exclude)
            if metadata:
                md.update(metadata)
        publish(data, md, shown_id, update)
    if display_id is not None:
        return DisplayHandle(shown_id)
    return None


def update_display(obj, *, display_id, **kwargs):
    """Replaces what an earlier `display(..., display_id=...)` showed."""
    kwargs["update"] = True
    display(obj, display_id=display_id, **kwargs)


def clear_output(wait=False):
    """Clears the output shown so far (with `wait`, when the next output arrives)."""
    if _flush is not None:
        _flush()
    if _clear is not None:
        _clear(bool(wait))


class DisplayHandle:
    """An output that can be shown again or replaced (`display(..., display_id=True)`)."""

    def __init__(self, display_id=None):
        self.display_id = display_id if display_id is not None else _new_id()

    def __repr__(self):
        return "<DisplayHandle display_id=%s>" % self.display_id

    def display(self, obj, **kwargs):
        display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj, **kwargs):
        update_display(obj, display_id=self.display_id, **kwargs)


def _display_as(mime):
    def show(*objs, raw=False, metadata=None):
        if raw:
            for obj in objs:
                publish({"text/plain": "", mime: _encode(mime, obj)},
                        {mime: metadata} if metadata else {})
        else:
            display(*objs, include=[mime, "text/plain"], metadata=metadata)

    show.__name__ = "display_" + mime.split("/")[1].split("+")[0]
    return show


display_html = _display_as("text/html")
display_markdown = _display_as("text/markdown")
display_svg = _display_as("image/svg+xml")
display_png = _display_as("image/png")
display_jpeg = _display_as("image/jpeg")
display_json = _display_as("application/json")
display_latex = _display_as("text/latex")
display_javascript = _display_as("application/javascript")
display_pretty = _display_as("text/plain")


# ------------------------------------------------------------------ display objects

class DisplayObject:
    """Data shown as one format: given as `data`, read from `filename`, or linked by `url`."""

    _read_flags = "r"

    def __init__(self, data=None, url=None, filename=None, metadata=None):
        if isinstance(data, str) and url is None and filename is None:
            if data.startswith(("http://", "https://")):
                url, data = data, None
            elif "\n" not in data and len(data) < 4096 and os.path.isfile(data):
                filename, data = data, None
        self.data, self.url, self.filename = data, url, filename
        self.metadata = dict(metadata or {})
        if filename is not None:
            with open(filename, self._read_flags) as f:
                self.data = f.read()

    def __repr__(self):
        return "<%s.%s object>" % (type(self).__module__, type(self).__name__)

    def _data_and_metadata(self):
        return (self.data, self.metadata) if self.metadata else self.data


class TextDisplayObject(DisplayObject):
    def __init__(self, data=None, url=None, filename=None, metadata=None):
        if isinstance(data, (list, tuple)):
            data = "".join(str(d) for d in data)
        super().__init__(data, url, filename, metadata)


class HTML(TextDisplayObject):
    def _repr_html_(self):
        return self._data_and_metadata()

    def __html__(self):
        return self.data


class Markdown(TextDisplayObject):
    def _repr_markdown_(self):
        return self._data_and_metadata()


class Latex(TextDisplayObject):
    def _repr_latex_(self):
        return self._data_and_metadata()


class Math(TextDisplayObject):
    def _repr_latex_(self):
        text = (self.data or "").strip("$")
        return "$\\displaystyle %s$" % text


class SVG(DisplayObject):
    def _repr_svg_(self):
        data = self.data
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        return (data, self.metadata) if self.metadata else data


class Pretty(TextDisplayObject):
    def _repr_pretty_(self, printer, cycle):
        printer.text(self.data)


class Javascript(TextDisplayObject):
    def _repr_javascript_(self):
        return self._data_and_metadata()


class JSON(DisplayObject):
    """JSON data shown as `application/json` (JupyterLab renders it as a tree)."""

    def __init__(self, data=None, url=None, filename=None, expanded=False, metadata=None,
                 root="root", **kwargs):
        self.expanded, self.root = expanded, root
        self.extra = kwargs
        if isinstance(data, str) and url is None and filename is None and not os.path.isfile(data):
            data = json.loads(data)
        super().__init__(data, url, filename, metadata)
        if filename is not None:
            self.data = json.loads(self.data)

    def _repr_json_(self):
        md = {"expanded": self.expanded, "root": self.root}
        md.update(self.metadata)
        md.update(self.extra)
        return self.data, md


class Image(DisplayObject):
    """A PNG, JPEG, GIF or WebP image: bytes, a file, or a URL (linked, not fetched)."""

    _read_flags = "rb"
    _MIMES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg",
              "gif": "image/gif", "webp": "image/webp"}

    def __init__(self, data=None, url=None, filename=None, format=None, embed=None, width=None,
                 height=None, retina=False, unconfined=False, metadata=None, alt=None):
        super().__init__(data, url, filename, metadata)
        if isinstance(self.data, str) and url is None:
            self.data = base64.b64decode(self.data)
        if format is None:
            format = self._guess(filename or url, self.data)
        format = str(format).lower()
        if format not in self._MIMES:
            raise ValueError("Cannot embed the %r image format" % format)
        self.format, self.width, self.height, self.alt = format, width, height, alt
        self.embed = embed if embed is not None else self.data is not None
        if self.embed and self.data is None:
            raise ValueError("No image data found. Expecting filename, url, or data.")

    @staticmethod
    def _guess(name, data):
        if name:
            ext = name.rsplit(".", 1)[-1].lower()
            if ext in Image._MIMES:
                return ext
        if isinstance(data, bytes):
            if data[:8] == b"\x89PNG\r\n\x1a\n":
                return "png"
            if data[:3] == b"\xff\xd8\xff":
                return "jpeg"
            if data[:6] in (b"GIF87a", b"GIF89a"):
                return "gif"
            if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
                return "webp"
        return "png"

    def _size_md(self):
        md = {}
        if self.width:
            md["width"] = self.width
        if self.height:
            md["height"] = self.height
        if self.alt:
            md["alt"] = self.alt
        md.update(self.metadata)
        return md

    def _repr_mimebundle_(self, include=None, exclude=None):
        if not self.embed:
            return {"text/html": self._html()}
        mime = self._MIMES[self.format]
        md = self._size_md()
        return {mime: self.data}, ({mime: md} if md else {})

    def _html(self):
        import html

        attrs = ""
        if self.width:
            attrs += ' width="%s"' % html.escape(str(self.width))
        if self.height:
            attrs += ' height="%s"' % html.escape(str(self.height))
        if self.alt:
            attrs += ' alt="%s"' % html.escape(str(self.alt))
        return '<img src="%s"%s/>' % (html.escape(self.url or ""), attrs)


# ------------------------------------------------------------------ `from weir import tools`


class ToolError(Exception):
    """A host function failed, or a limit refused the call: the host's message."""


def call(name, arguments=None):
    """Calls the host function `name` with `arguments` (a dict of JSON values): its result.
    The run waits for it; an interrupt raises `KeyboardInterrupt`."""
    if not isinstance(name, str):
        raise TypeError("a host function's name is a str")
    try:
        text = json.dumps({} if arguments is None else arguments, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError("%s: arguments must be JSON values (%s)" % (name, exc)) from None
    if not text.startswith("{"):
        raise TypeError("%s: arguments must be a dict of keyword arguments" % name)
    _flush()  # what the program printed comes before whatever the call causes
    value, why = _call_tool(name, text)
    if value is not None:
        return json.loads(value)
    if why is None:
        raise KeyboardInterrupt
    raise ToolError(why)


class _Tools:
    """`tools.NAME(**kwargs)` calls the host function NAME."""

    __slots__ = ()

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)

        def host_function(*args, **kwargs):
            if args:
                raise TypeError("weir.tools.%s takes keyword arguments only" % name)
            return call(name, kwargs)

        host_function.__name__ = host_function.__qualname__ = name
        return host_function

    def __repr__(self):
        return "<weir.tools: the run's host functions>"


tools = _Tools()


# ------------------------------------------------------------------ the network, through the host
#
# The guest has no socket. `http.client` (and `urllib.request` on it) reaches the network
# through the host: a connection's socket is a `_HostSocket`, which gathers the request's bytes
# as `http.client` writes them and, once the request is whole, sends it to the host as a call to
# the reserved function `_http`; the host checks it against the run's allowlist, makes it and
# answers with the response, which `http.client` reads as a server's. TLS is the host's: the
# guest has no `ssl`, and its `http.client.HTTPSConnection` is a connection the host makes over
# HTTPS. Redirects are followed by `urllib.request`, each one a new request the host checks.


class NetworkError(ConnectionError):
    """The host did not make a network request (not allowed, over a limit, failed): why."""


class _HostSocket:
    """What `http.client` takes for a connected socket: whole requests in, responses out."""

    def __init__(self, scheme, host, port):
        self._where = (scheme, host, port)
        self._out = bytearray()
        self._head = None  # the request's line, headers, chunked, where its body starts
        self._answers = []

    def sendall(self, data):
        self._out += data
        while True:
            whole = self._whole()
            if whole is None:
                return
            (line, headers, body), used = whole
            del self._out[:used]
            self._head = None
            self._answers.append(_exchange(self._where, line, headers, body))

    def _whole(self):
        """The first whole request in what was sent, and the bytes it took; `None` while it is
        not whole. The head is read once; the body is only counted until it is all there."""
        out = self._out
        if self._head is None:
            end = out.find(b"\r\n\r\n")
            if end < 0:
                return None
            self._head = _read_head(bytes(out[:end]), end + 4)
        line, headers, chunked, start, length = self._head
        if chunked:
            # A chunked body ends with an empty line: try it only then.
            if not out.endswith(b"\r\n\r\n"):
                return None
            body, used = _dechunk(bytes(out[start:]))
            if body is None:
                return None
            return (line, headers, body), start + used
        if len(out) < start + length:
            return None
        return (line, headers, bytes(out[start:start + length])), start + length

    def send(self, data):
        self.sendall(data)
        return len(data)

    def makefile(self, mode="rb", buffering=None):
        import io

        if not self._answers:
            raise NetworkError("a response was read before its request was sent whole")
        return io.BytesIO(self._answers.pop(0))

    def setsockopt(self, *args):
        pass

    def settimeout(self, timeout):
        pass

    def close(self):
        pass


def _read_head(head, start):
    """A request's head: its line, headers, whether its body is chunked, where the body starts
    and its length."""
    lines = head.decode("latin-1").split("\r\n")
    headers, length, chunked = [], 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if name.lower() == "content-length" and value.isdigit():
            length = int(value)
        elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        headers.append([name, value])
    return lines[0], headers, chunked, start, length


def _dechunk(data):
    """A chunked body and the bytes it took, or `(None, 0)` while its last chunk is missing."""
    body, at = bytearray(), 0
    while True:
        eol = data.find(b"\r\n", at)
        if eol < 0:
            return None, 0
        size = int(data[at:eol].split(b";")[0].strip() or b"0", 16)
        if size == 0:  # the last chunk, then trailers up to an empty line
            end = data.find(b"\r\n\r\n", eol)
            if data[eol:eol + 4] == b"\r\n\r\n":
                return bytes(body), eol + 4
            return (None, 0) if end < 0 else (bytes(body), end + 4)
        start = eol + 2
        if len(data) < start + size + 2:
            return None, 0
        body += data[start:start + size]
        at = start + size + 2


_HOP = ("transfer-encoding", "content-length", "connection")


def _exchange(where, line, headers, body):
    """Has the host make one request; the response's bytes as a server sends them."""
    import binascii

    scheme, host, port = where
    method, _, rest = line.partition(" ")
    target = rest.rpartition(" ")[0] or rest
    if target.startswith(("http://", "https://")):
        url = target
    else:
        url = "%s://%s:%d%s" % (scheme, "[%s]" % host if ":" in host else host, port, target)
    headers = [h for h in headers if h[0].lower() not in _HOP]
    request = {"method": method, "url": url, "headers": headers,
               "body": binascii.b2a_base64(body, newline=False).decode("ascii")}
    try:
        answer = call("_http", request)
    except ToolError as exc:
        raise NetworkError(str(exc)) from None
    data = binascii.a2b_base64(answer["body"])
    status = answer["status"]
    # The server's length where the response has no body (HEAD, 204, 304), else the body's.
    bodiless = method == "HEAD" or status in (204, 304)
    out = ["HTTP/1.1 %d %s" % (status, answer["reason"])]
    out += ["%s: %s" % (name, value) for name, value in answer["headers"]
            if bodiless or name.lower() != "content-length"]
    if not bodiless:
        out.append("Content-Length: %d" % len(data))
    out += ["Connection: close", "", ""]
    return "\r\n".join(out).encode("latin-1", "replace") + data


def _patch_http_client(client):
    """`http.client`'s connections reach the network through the host, HTTPS too."""

    def connect(self):
        if getattr(self, "_tunnel_host", None):
            raise NetworkError("no proxy tunnels here: the host makes the request itself")
        self.sock = _HostSocket(self._weir_scheme, self.host, self.port)

    client.HTTPConnection._weir_scheme = "http"
    client.HTTPConnection.connect = connect
    if hasattr(client, "HTTPSConnection"):
        client.HTTPSConnection._weir_scheme = "https"
        client.HTTPSConnection.connect = connect
        return

    class HTTPSConnection(client.HTTPConnection):
        """An HTTPS connection: the host makes it, over TLS, checking the server's
        certificate."""

        default_port = client.HTTPS_PORT
        _weir_scheme = "https"

        def __init__(self, host, port=None, *, timeout=None, source_address=None,
                     context=None, blocksize=8192):
            super().__init__(host, port, timeout, source_address, blocksize)
            self._context = context

    HTTPSConnection.__module__ = "http.client"
    client.HTTPSConnection = HTTPSConnection
    client._create_https_context = lambda http_version: types.SimpleNamespace(
        check_hostname=True, post_handshake_auth=None)
    client.__all__.append("HTTPSConnection")


def _patch_urllib(request):
    """`urllib.request` opens `https:` URLs (when it was imported before `http.client` could
    make them)."""
    if hasattr(request, "HTTPSHandler"):
        return

    class HTTPSHandler(request.AbstractHTTPHandler):
        def __init__(self, debuglevel=None, context=None, check_hostname=None):
            super().__init__(debuglevel)
            self._context = context

        def https_open(self, req):
            return self.do_open(sys.modules["http.client"].HTTPSConnection, req,
                                context=self._context)

        https_request = request.AbstractHTTPHandler.do_request_

    HTTPSHandler.__module__ = "urllib.request"
    request.HTTPSHandler = HTTPSHandler
    request.__all__.append("HTTPSHandler")
    request._opener = None


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `then(module)` once `name` is imported (first on `sys.meta_path`)."""

    def __init__(self, name, then):
        self.name, self.then = name, then

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if finder is not self and find else None
            if spec is not None and spec.loader is not None:
                spec.loader = _Then(spec.loader, self.then)
                return spec
        return None


class _Then:
    """A module's loader that calls `then(module)` after loading it."""

    def __init__(self, loader, then):
        self._loader, self._then = loader, then

    def __getattr__(self, attr):
        return getattr(self._loader, attr)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._then(module)


def _install_network():
    """Patches `http.client` and `urllib.request`, now or when they are imported."""
    for name, patch in (("http.client", _patch_http_client),
                        ("urllib.request", _patch_urllib)):
        if name in sys.modules:
            patch(sys.modules[name])
        else:
            sys.meta_path.insert(0, _AfterImport(name, patch))


# ------------------------------------------------------------------ `import IPython.display`

def get_ipython():
    """No IPython shell runs here."""
    return None


class _Fallback(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves `IPython`, `IPython.display`, `IPython.core` and `IPython.core.display` when no
    real IPython is installed (last on `sys.meta_path`, so an installed IPython wins), and
    `weir`."""

    def __init__(self, modules):
        self.modules = modules

    def find_spec(self, name, path=None, target=None):
        if name in self.modules:
            return importlib.util.spec_from_loader(name, self, is_package=name in _PACKAGES)
        return None

    def create_module(self, spec):
        return self.modules[spec.name]

    def exec_module(self, module):
        pass


_PACKAGES = ("IPython", "IPython.core")
_PUBLIC = ("display", "update_display", "clear_output", "DisplayHandle", "DisplayObject",
           "TextDisplayObject", "HTML", "Markdown", "Latex", "Math", "SVG", "Pretty",
           "Javascript", "JSON", "Image", "display_html", "display_markdown", "display_svg",
           "display_png", "display_jpeg", "display_json", "display_latex", "display_javascript",
           "display_pretty", "set_matplotlib_formats", "publish_display_data")


def publish_display_data(data, metadata=None, source=None, *, transient=None, **kwargs):
    """IPython's lowest-level display call: a ready bundle."""
    publish(dict(data), metadata, (transient or {}).get("display_id"),
            bool(kwargs.get("update")))


def _install():
    """Makes the compatible `IPython` importable and `display` a builtin."""
    this = sys.modules[__name__]
    modules = {}
    for name in ("IPython", "IPython.core", "IPython.display", "IPython.core.display"):
        module = types.ModuleType(name, "weir's compatible %s (no IPython is installed)" % name)
        if name in _PACKAGES:
            module.__path__ = []
        for attr in _PUBLIC:
            setattr(module, attr, getattr(this, attr))
        module.get_ipython = get_ipython
        modules[name] = module
    modules["IPython"].display = modules["IPython.display"]
    modules["IPython"].core = modules["IPython.core"]
    modules["IPython.core"].display = modules["IPython.core.display"]
    modules["IPython"].version_info = (0, 0, 0, "weir")
    weir = types.ModuleType("weir", "weir's sandbox: the run's host functions (`tools`)")
    weir.tools, weir.call, weir.ToolError = tools, call, ToolError
    weir.NetworkError = NetworkError
    ToolError.__module__ = NetworkError.__module__ = "weir"
    modules["weir"] = weir
    for attr in _PUBLIC:  # named as IPython names them: `<IPython.core.display.HTML object>`
        value = getattr(this, attr)
        if isinstance(value, type):
            value.__module__ = "IPython.core.display"
    sys.meta_path.append(_Fallback(modules))
    builtins.display = display
    _install_network()


_install()


# ------------------------------------------------------------------ `weir kernel`'s helpers
#
# A Jupyter kernel (`weir kernel`) drives a session and asks it what a notebook asks a kernel
# beyond running cells: completions, a name's documentation, whether code is complete, the
# traceback of a failed cell. It asks with a cell of its own that calls `_kernel_call`, which
# prints one line, `WEIR-KERNEL <json>`, that the kernel reads and no one else sees.

_KERNEL_MARK = "WEIR-KERNEL "
# Tracebacks of failed cells, kept for the kernel instead of printed: a notebook shows them as
# the cell's `error` output (set by the kernel's first call, `start`).
kernel = None
_MAX_MATCHES = 1000


class _KernelState:
    __slots__ = ("traceback",)

    def __init__(self):
        self.traceback = []


def keep_traceback(exc, tb):
    """A failed cell's traceback, as lines, for the kernel (instead of stderr)."""
    import traceback

    try:
        kernel.traceback = traceback.format_exception(type(exc), exc, tb)
    except BaseException:  # noqa: BLE001
        kernel.traceback = ["%s: %s\n" % (type(exc).__name__, exc)]


def _kernel_call(op, args):
    global kernel
    try:
        if op == "start":
            kernel = _KernelState()
            answer = {}
        elif op == "traceback":
            answer = {"traceback": kernel.traceback if kernel else []}
            if kernel:
                kernel.traceback = []
        elif op == "complete":
            answer = _complete(args["code"], args["cursor_pos"])
        elif op == "inspect":
            answer = _inspect(args["code"], args["cursor_pos"], args.get("detail_level", 0))
        elif op == "is_complete":
            answer = _is_complete(args["code"])
        else:
            answer = {"error": "unknown request %r" % op}
    except Exception as exc:  # noqa: BLE001 - the kernel answers with the error
        answer = {"error": "%s: %s" % (type(exc).__name__, exc)}
    out = sys.__stdout__
    out.write(_KERNEL_MARK + json.dumps(answer, default=str) + "\n")
    out.flush()


def _namespace():
    main = sys.modules.get("__main__")
    return main.__dict__ if main is not None else {}


def _module_names(prefix):
    """Importable module names that start with `prefix` (`collections.ab` → submodules)."""
    import pkgutil

    names = set(sys.builtin_module_names)
    names.update(n for n in sys.modules if n and not n.startswith("_weir"))
    if "." in prefix:
        package = prefix.rsplit(".", 1)[0]
        module = sys.modules.get(package)
        path = getattr(module, "__path__", None)
        if path:
            names.update(package + "." + m.name for m in pkgutil.iter_modules(path))
    else:
        try:
            names.update(m.name for m in pkgutil.iter_modules())
        except Exception:  # noqa: BLE001
            pass
    return sorted(n for n in names if n.startswith(prefix) and "._" not in n[len(prefix):])


def _complete(code, cursor_pos):
    """Names, attributes and modules that complete the word before the cursor, as ipykernel
    gives them: `zip`, `collections.OrderedDict`, no parenthesis after a callable."""
    import re

    before = code[:cursor_pos]
    line = re.split(r"[\n;]", before)[-1]
    word = re.search(r"[A-Za-z_][\w.]*$|$", line).group(0)
    start = cursor_pos - len(word)
    importing = re.match(r"\s*(import|from)\s+([\w.]*)$", line)
    from_import = re.match(r"\s*from\s+([\w.]+)\s+import\s+(?:.*,\s*)?(\w*)$", line)
    if from_import:
        module = sys.modules.get(from_import.group(1))
        if module is None:
            import importlib

            module = importlib.import_module(from_import.group(1))
        prefix = from_import.group(2)
        matches = sorted(n for n in dir(module) if n.startswith(prefix))
        start = cursor_pos - len(prefix)
    elif importing:
        matches = _module_names(importing.group(2))
    else:
        import keyword
        import rlcompleter

        namespace = _namespace()
        base = word.split(".", 1)[0]
        if "." in word and base not in namespace and not hasattr(builtins, base):
            imported = _imported_module(before, base)
            if imported is not None:
                namespace = dict(namespace, **{base: imported})
        completer = rlcompleter.Completer(namespace)
        matches, state = [], 0
        while len(matches) < _MAX_MATCHES:
            found = completer.complete(word, state)
            if found is None:
                break
            matches.append(found.rstrip("(").rstrip(" ").rstrip(":"))
            state += 1
        if "." not in word:
            matches.extend(k for k in keyword.kwlist if k.startswith(word))
    unique = list(dict.fromkeys(m for m in matches if m))[:_MAX_MATCHES]
    return {"matches": unique, "cursor_start": start, "cursor_end": cursor_pos}


def _imported_module(code, name):
    """The module `name` is bound to by an import in `code` that has not run yet (`import
    collections; collections.Ord` completes as it would once it has), or None."""
    import importlib
    import re

    for statement in re.split(r"[\n;]", code):
        found = re.match(r"\s*import\s+(.+)$", statement)
        if not found:
            continue
        for clause in found.group(1).split(","):
            parts = re.match(r"\s*([\w.]+)(?:\s+as\s+(\w+))?\s*$", clause)
            if not parts:
                continue
            module, alias = parts.group(1), parts.group(2)
            if (alias or module.split(".")[0]) != name:
                continue
            try:
                return importlib.import_module(module if alias else module.split(".")[0])
            except Exception:  # noqa: BLE001 - no completions from a module that fails
                return None
    return None


def _name_at(code, cursor_pos):
    """The dotted name at (or just before) the cursor, as written: `np.linalg.norm`."""
    import re

    for match in re.finditer(r"[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*", code):
        if match.start() <= cursor_pos <= match.end():
            return match.group(0)
    before = re.search(r"([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)\s*\(?[^()]*$", code[:cursor_pos])
    return before.group(1) if before else ""


def _lookup(name):
    """The object a dotted name refers to in the session (attributes read, nothing called)."""
    parts = name.split(".")
    namespace = _namespace()
    if parts[0] in namespace:
        obj = namespace[parts[0]]
    elif hasattr(builtins, parts[0]):
        obj = getattr(builtins, parts[0])
    elif parts[0] in sys.modules:
        obj = sys.modules[parts[0]]
    else:
        raise LookupError(parts[0])
    for part in parts[1:]:
        obj = getattr(obj, part)
    return obj


def _inspect(code, cursor_pos, detail_level):
    """What IPython's `name?` shows: the signature, the docstring, the type (and with
    `detail_level` 1, the source)."""
    import inspect

    name = _name_at(code, cursor_pos)
    try:
        obj = _lookup(name) if name else None
    except Exception:  # noqa: BLE001
        obj = None
    if not name or (obj is None and name != "None"):
        return {"found": False, "data": {}, "metadata": {}}
    lines = []
    try:
        lines.append("Signature: %s%s" % (name.rsplit(".", 1)[-1], inspect.signature(obj)))
    except (TypeError, ValueError):
        pass
    doc = inspect.getdoc(obj)
    if doc:
        lines.append("Docstring:\n" + doc)
    if detail_level:
        try:
            lines.append("Source:\n" + inspect.getsource(obj))
        except (OSError, TypeError):
            pass
    lines.append("Type: %s" % type(obj).__name__)
    text = "\n".join(lines)
    return {"found": True, "data": {"text/plain": text}, "metadata": {}}


def _is_complete(code):
    """`complete`, `incomplete` (with the indent the next line wants) or `invalid`, as
    IPython judges code typed at a prompt: an indented last line continues its block until a
    blank line ends it."""
    import codeop

    try:
        compiled = codeop.compile_command(code, "<input>", "exec")
    except (SyntaxError, OverflowError, ValueError):
        return {"status": "invalid"}
    last = code.rstrip("\n").rsplit("\n", 1)[-1]
    indent = last[: len(last) - len(last.lstrip())]
    if compiled is not None and not (indent and not code.endswith("\n\n")):
        return {"status": "complete"}
    if last.rstrip().endswith(":"):
        indent += "    "
    return {"status": "incomplete", "indent": indent}
