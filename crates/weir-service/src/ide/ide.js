// weir's browser IDE: an editor with file tabs, a console, and the /ws protocol (docs/protocol.md).
// Plain JavaScript, no dependencies; served from the binary by src/ide.rs.
"use strict";

const $ = (id) => document.getElementById(id);
const STORAGE_KEY = "weir.files.v1";
/** What the console keeps; older output is dropped with a visible notice. Lines bound the
 * layout work per frame (a flood of short lines), characters bound memory (a few long ones). */
const KEEP_LINES = 3000;
const KEEP_CHARS = 300000;
/** A console span holds at most this much, so trimming drops old output in small steps. */
const SPAN_LINES = 100;
const SPAN_CHARS = 8192;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;

const DEFAULT_FILES = [
  {
    name: "main.py",
    content:
      '# Ctrl+Enter runs the current file.\nname = input("What is your name? ")\nprint(f"Hello, {name}!")\n',
  },
];

// ---------------------------------------------------------------- files and tabs

const files = {
  list: loadFiles(),
  active: 0,
  current() {
    return this.list[this.active];
  },
  save() {
    try {
      localStorage.setItem(STORAGE_KEY, JSON.stringify(this.list));
    } catch (_) {
      /* private mode or full storage: editing still works */
    }
  },
};

function loadFiles() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || "null");
    if (Array.isArray(saved) && saved.length && saved.every((f) => typeof f.name === "string" && typeof f.content === "string")) {
      return saved;
    }
  } catch (_) {
    /* ignore a corrupt entry */
  }
  return DEFAULT_FILES.map((f) => ({ ...f }));
}

function renderTabs() {
  const tabs = $("tabs");
  tabs.replaceChildren();
  files.list.forEach((file, i) => {
    const tab = document.createElement("button");
    tab.className = "tab";
    tab.setAttribute("role", "tab");
    tab.setAttribute("aria-selected", String(i === files.active));
    tab.dataset.file = file.name;
    tab.title = "Double-click to rename";
    tab.append(file.name);
    tab.addEventListener("click", () => switchTo(i));
    tab.addEventListener("dblclick", () => renameFile(i));
    if (files.list.length > 1) {
      const close = document.createElement("span");
      close.className = "close";
      close.textContent = "×";
      close.title = `Close ${file.name}`;
      close.addEventListener("click", (e) => {
        e.stopPropagation();
        closeFile(i);
      });
      tab.append(close);
    }
    tabs.append(tab);
  });
  const add = document.createElement("button");
  add.className = "tab add";
  add.id = "add-file";
  add.title = "New file";
  add.textContent = "+";
  add.addEventListener("click", addFile);
  tabs.append(add);
}

function switchTo(i) {
  files.active = i;
  const editor = $("editor");
  editor.value = files.current().content;
  editor.scrollTop = 0;
  highlight();
  renderTabs();
  editor.focus();
}

function validName(name, except) {
  if (!name) return "a file needs a name";
  if (name.startsWith("/") || name.split("/").includes("..")) return "use a relative path without '..'";
  if (files.list.some((f, i) => i !== except && f.name === name)) return `${name} already exists`;
  return null;
}

function addFile() {
  let n = files.list.length;
  const ext = (files.current().name.match(/\.[A-Za-z0-9]+$/) || [".py"])[0];
  while (files.list.some((f) => f.name === `module${n}${ext}`)) n++;
  const name = (prompt("New file name:", `module${n}${ext}`) || "").trim();
  if (!name) return;
  const problem = validName(name, -1);
  if (problem) return system(`Cannot create ${name}: ${problem}`);
  files.list.push({ name, content: "" });
  files.save();
  switchTo(files.list.length - 1);
}

function renameFile(i) {
  const old = files.list[i].name;
  const name = (prompt("Rename file:", old) || "").trim();
  if (!name || name === old) return;
  const problem = validName(name, i);
  if (problem) return system(`Cannot rename ${old}: ${problem}`);
  files.list[i].name = name;
  files.save();
  renderTabs();
}

function closeFile(i) {
  if (files.list.length < 2) return;
  if (files.list[i].content.trim() && !confirm(`Close ${files.list[i].name}? Its content is discarded.`)) return;
  files.list.splice(i, 1);
  files.save();
  switchTo(Math.min(files.active, files.list.length - 1));
}

// ---------------------------------------------------------------- syntax highlighting

const KEYWORDS = new Set(
  "False None True and as assert async await break case class continue def del elif else except finally for from global if import in is lambda match nonlocal not or pass raise return try type while with yield".split(" "),
);
const BUILTINS = new Set(
  "abs all any ascii bin bool breakpoint bytearray bytes callable chr classmethod compile complex delattr dict dir divmod enumerate eval exec filter float format frozenset getattr globals hasattr hash help hex id input int isinstance issubclass iter len list locals map max memoryview min next object oct open ord pow print property range repr reversed round set setattr slice sorted staticmethod str sum super tuple vars zip self cls __name__ __file__ Exception BaseException ValueError TypeError KeyError IndexError AttributeError NameError RuntimeError StopIteration ZeroDivisionError OSError ImportError EOFError KeyboardInterrupt NotImplementedError".split(" "),
);
const TOKEN =
  /(#[^\n]*)|((?:[rRbBuUfF]{1,2})?(?:"""[\s\S]*?(?:"""|$)|'''[\s\S]*?(?:'''|$)|"(?:\\.|[^"\\\n])*(?:"|$)|'(?:\\.|[^'\\\n])*(?:'|$)))|(^[ \t]*@[A-Za-z_][\w.]*)|(\b(?:0[xX][\da-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|\d[\d_]*\.?[\d_]*(?:[eE][+-]?\d+)?j?)\b)|([A-Za-z_]\w*)/gm;

function escapeHtml(text) {
  return text.replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" })[c]);
}

const RUBY_KEYWORDS = new Set(
  "BEGIN END alias and begin break case class def defined? do else elsif end ensure false for if in module next nil not or redo rescue retry return self super then true undef unless until when while yield __FILE__ __LINE__".split(" "),
);
const RUBY_BUILTINS = new Set(
  "puts print p pp gets require require_relative attr_accessor attr_reader attr_writer include extend raise loop lambda proc Integer Float String Array Hash Struct Comparable Enumerable Kernel STDIN STDOUT ARGV ENV Math Time".split(" "),
);

/** Source → HTML with token spans: `token` matches a comment, a string, a decorator, a number
 * or a word (in that group order); Python's by default, Ruby's with its own words (`#` comments
 * and quotes are the same), JavaScript's with its own token and words. */
function highlightPython(src, keywords = KEYWORDS, builtins = BUILTINS, token = TOKEN) {
  let html = "";
  let last = 0;
  let previous = "";
  for (const m of src.matchAll(token)) {
    html += escapeHtml(src.slice(last, m.index));
    last = m.index + m[0].length;
    let cls = null;
    if (m[1]) cls = "com";
    else if (m[2]) cls = "str";
    else if (m[3]) cls = "dec";
    else if (m[4]) cls = "num";
    else if (m[5]) {
      const word = m[5];
      if (keywords.has(word)) cls = "kw";
      else if (previous === "def" || previous === "class" || previous === "module" || previous === "function") cls = "fn";
      else if (builtins.has(word)) cls = "bi";
      previous = word;
    }
    if (!m[5]) previous = "";
    html += cls ? `<span class="tok-${cls}">${escapeHtml(m[0])}</span>` : escapeHtml(m[0]);
  }
  return html + escapeHtml(src.slice(last)) + "\n";
}

const JS_KEYWORDS = new Set(
  "async await break case catch class const continue debugger default delete do else export extends false finally for function if import in instanceof let new null of return static super switch this throw true try typeof undefined var void while with yield".split(" "),
);
const JS_BUILTINS = new Set(
  "console process require module exports Math JSON Object Array String Number Boolean BigInt Symbol Map Set WeakMap WeakSet Promise Date RegExp Error TypeError RangeError SyntaxError ReferenceError parseInt parseFloat isNaN isFinite setTimeout setInterval clearTimeout clearInterval queueMicrotask globalThis readline print prompt Infinity NaN".split(" "),
);
const JS_TOKEN =
  /(\/\/[^\n]*|\/\*[\s\S]*?(?:\*\/|$))|("(?:\\.|[^"\\\n])*(?:"|$)|'(?:\\.|[^'\\\n])*(?:'|$)|`(?:\\.|[^`\\])*(?:`|$))|(@[A-Za-z_$][\w$]*)|(\b(?:0[xX][\da-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|\d[\d_]*\.?[\d_]*(?:[eE][+-]?\d+)?n?)\b)|([A-Za-z_$][\w$]*)/gm;

/** The highlighter for a file, by its extension (plain text for one neither knows). */
function highlighterFor(name) {
  if (/\.(js|mjs|cjs)$/i.test(name)) return (src) => highlightPython(src, JS_KEYWORDS, JS_BUILTINS, JS_TOKEN);
  if (/\.rb$/i.test(name)) return (src) => highlightPython(src, RUBY_KEYWORDS, RUBY_BUILTINS);
  if (/\.py$/i.test(name) || !/\.[A-Za-z0-9]+$/.test(name)) return highlightPython;
  return (src) => escapeHtml(src) + "\n";
}

function highlight() {
  $("highlight").innerHTML = highlighterFor(files.current().name)($("editor").value);
  syncScroll();
}

function syncScroll() {
  const pre = $("highlight").parentElement;
  pre.scrollTop = $("editor").scrollTop;
  pre.scrollLeft = $("editor").scrollLeft;
}

function editorKeys(e) {
  const ed = e.target;
  if ((e.ctrlKey || e.metaKey) && e.key === "Enter") {
    e.preventDefault();
    run();
    return;
  }
  if (e.key === "Tab" && !e.ctrlKey && !e.metaKey && !e.altKey) {
    e.preventDefault();
    insertText(ed, "    ");
    return;
  }
  if (e.key === "Enter" && !e.shiftKey) {
    // Keep the line's indentation; indent one more level after a colon.
    const before = ed.value.slice(0, ed.selectionStart);
    const line = before.slice(before.lastIndexOf("\n") + 1);
    let indent = line.match(/^[ \t]*/)[0];
    if (/:\s*(#.*)?$/.test(line)) indent += "    ";
    e.preventDefault();
    insertText(ed, "\n" + indent);
  }
}

function insertText(ed, text) {
  // execCommand keeps the browser's undo history; fall back to setRangeText.
  if (!document.execCommand || !document.execCommand("insertText", false, text)) {
    ed.setRangeText(text, ed.selectionStart, ed.selectionEnd, "end");
    ed.dispatchEvent(new Event("input"));
  }
}

// ---------------------------------------------------------------- console

const out = {
  pending: [], // [cls, text] not yet rendered; consecutive text of one class is merged
  pendingChars: 0,
  /** The console's spans, oldest first, with their sizes: {node, chars, lines}. */
  spans: [],
  first: 0, // index of the oldest span still shown
  chars: 0,
  lines: 0,
  scheduled: false,
  dropped: false,
  /** Keep the newest output in view (false once the user scrolls up). */
  follow: true,
};

function countLines(text) {
  let n = 0;
  for (let i = text.indexOf("\n"); i >= 0; i = text.indexOf("\n", i + 1)) n++;
  return n;
}

/** Queues what the program displayed (`display`: a Jupyter MIME bundle) for the console, in
 * order with its text; an update replaces the display shown under its id. */
function show(display) {
  if (display.update) {
    const shown = out.spans.find((s) => s && s.cls === "img" && s.id === display.display_id);
    if (shown) shown.node.replaceChildren(render(display));
    return;
  }
  if (out.clearPending) {
    out.clearPending = false;
    clearConsole();
  }
  out.pending.push(["img", display]);
  if (!out.scheduled) {
    out.scheduled = true;
    requestAnimationFrame(flush);
  }
}

/** `clear_output`: the console is cleared now, or (with `wait`) when the next output arrives. */
function clearOutput(wait) {
  if (wait) out.clearPending = true;
  else clearConsole();
}

/** Formats the console shows, richest first (JupyterLab's order), with how each is drawn. */
const FORMATS = [
  ["text/html", (v) => htmlFrame(v)],
  ["image/svg+xml", (v) => image("image/svg+xml", btoa(unescape(encodeURIComponent(v))))],
  ["image/png", (v, md) => image("image/png", v, md)],
  ["image/jpeg", (v, md) => image("image/jpeg", v, md)],
  ["image/gif", (v, md) => image("image/gif", v, md)],
  ["image/webp", (v, md) => image("image/webp", v, md)],
  ["text/markdown", (v) => markdown(v)],
  ["text/latex", (v) => textBlock(v)],
  ["application/json", (v) => textBlock(JSON.stringify(v, null, 2))],
  ["text/plain", (v) => textBlock(v)],
];

/** The node showing a bundle in its richest format the console draws. */
function render(display) {
  const data = display.data || {};
  const md = display.metadata || {};
  for (const [mime, draw] of FORMATS) {
    if (data[mime] === undefined) continue;
    if (mime !== "application/json" && typeof data[mime] !== "string") continue;
    const node = draw(data[mime], md[mime] || {});
    node.dataset.mime = mime;
    return node;
  }
  return textBlock("");
}

/** An image from base64 data (an SVG too: drawn as an image, its scripts never run). */
function image(mime, base64, md = {}) {
  const img = document.createElement("img");
  img.src = `data:${mime};base64,${base64}`;
  if (md.width) img.width = md.width;
  if (md.height) img.height = md.height;
  img.alt = "figure";
  return img;
}

/** Untrusted HTML (a DataFrame's table): in a sandboxed frame without scripts, so nothing in
 * it runs, in the page's origin or any other; the frame's height follows what it holds. */
function htmlFrame(html) {
  const frame = document.createElement("iframe");
  frame.setAttribute("sandbox", "allow-same-origin");
  frame.setAttribute("referrerpolicy", "no-referrer");
  frame.className = "html";
  frame.srcdoc = `<!doctype html><meta charset="utf-8"><base target="_blank"><style>body{margin:0;font:13px system-ui,sans-serif;background:#fff;color:#111}table{border-collapse:collapse}td,th{padding:2px 8px;border:1px solid #ddd;text-align:right}</style>${html}`;
  frame.addEventListener("load", () => {
    const body = frame.contentDocument && frame.contentDocument.documentElement;
    if (body) frame.style.height = `${Math.min(body.scrollHeight + 4, 2000)}px`;
  });
  return frame;
}

function textBlock(text) {
  const node = document.createElement("span");
  node.className = "plain";
  node.textContent = text.endsWith("\n") ? text : text + "\n";
  return node;
}

/** Markdown drawn from its text, never as HTML: headings, paragraphs, lists, code, emphasis,
 * and links (opened in a new tab); raw HTML in it stays text. */
function markdown(source) {
  const root = document.createElement("div");
  root.className = "markdown";
  const lines = source.split("\n");
  let list = null;
  let para = null;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.startsWith("```")) {
      const code = [];
      while (++i < lines.length && !lines[i].startsWith("```")) code.push(lines[i]);
      const pre = document.createElement("pre");
      pre.textContent = code.join("\n");
      root.append(pre);
      list = para = null;
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    const item = /^\s*(?:[-*+]|\d+\.)\s+(.*)$/.exec(line);
    if (heading) {
      const h = document.createElement(`h${heading[1].length}`);
      inline(h, heading[2]);
      root.append(h);
      list = para = null;
    } else if (item) {
      if (!list) root.append((list = document.createElement(/^\s*\d/.test(line) ? "ol" : "ul")));
      const li = document.createElement("li");
      inline(li, item[1]);
      list.append(li);
      para = null;
    } else if (!line.trim()) {
      list = para = null;
    } else {
      if (!para) root.append((para = document.createElement("p")));
      else para.append(" ");
      inline(para, line);
      list = null;
    }
  }
  return root;
}

/** Inline Markdown: `code`, **strong**, *emphasis*, [links](https://…). */
function inline(parent, text) {
  const pattern = /(`[^`]+`|\*\*[^*]+\*\*|\*[^*]+\*|_[^_]+_|\[[^\]]+\]\([^)\s]+\))/;
  for (const part of text.split(pattern)) {
    if (!part) continue;
    let node;
    if (part.startsWith("`") && part.endsWith("`") && part.length > 1) {
      node = document.createElement("code");
      node.textContent = part.slice(1, -1);
    } else if (part.startsWith("**") && part.endsWith("**") && part.length > 4) {
      node = document.createElement("strong");
      node.textContent = part.slice(2, -2);
    } else if (/^[*_].+[*_]$/.test(part)) {
      node = document.createElement("em");
      node.textContent = part.slice(1, -1);
    } else if (/^\[[^\]]+\]\([^)\s]+\)$/.test(part)) {
      const [, label, href] = /^\[([^\]]+)\]\(([^)\s]+)\)$/.exec(part);
      node = document.createElement("a");
      node.textContent = label;
      if (/^https?:\/\//i.test(href)) {
        node.href = href;
        node.target = "_blank";
        node.rel = "noopener noreferrer";
      }
    } else {
      node = document.createTextNode(part);
    }
    parent.append(node);
  }
}

/** Appends a display as a span of its own (one line of the console's budget). */
function appendImage(frag, display) {
  const node = document.createElement("span");
  node.className = "figure";
  node.append(render(display));
  frag.append(node);
  out.spans.push({ node, cls: "img", id: display.display_id, chars: 0, lines: 1, parts: [] });
  out.lines += 1;
}

/** Queues text for the console; rendering happens once per animation frame, so a flood costs
 * one DOM update per frame however many messages arrive. */
function write(cls, text) {
  if (!text) return;
  if (out.clearPending) {
    out.clearPending = false;
    clearConsole();
  }
  const last = out.pending[out.pending.length - 1];
  if (last && last[0] === cls && cls !== "end" && cls !== "img") last[1] += text;
  else out.pending.push([cls, text]);
  out.pendingChars += text.length;
  // Faster than the page renders: keep only what the console could show anyway.
  if (out.pendingChars > 2 * KEEP_CHARS) trimPending();
  if (!out.scheduled) {
    out.scheduled = true;
    requestAnimationFrame(flush);
  }
}

function trimPending() {
  let excess = out.pendingChars - KEEP_CHARS;
  while (excess > 0 && out.pending.length) {
    const first = out.pending[0];
    if (first[1].length <= excess) {
      excess -= first[1].length;
      out.pending.shift();
    } else {
      first[1] = first[1].slice(excess);
      excess = 0;
    }
  }
  out.pendingChars = out.pending.reduce((n, [, t]) => n + t.length, 0);
  out.dropped = true;
}

/** Appends `text` to the console, as pieces of at most SPAN_LINES lines. */
function appendText(frag, cls, text) {
  let tail = out.spans.length > out.first ? out.spans[out.spans.length - 1] : null;
  while (text) {
    if (!tail || tail.cls !== cls || tail.cls === "img" || cls === "end" || tail.lines >= SPAN_LINES || tail.chars >= SPAN_CHARS) {
      const node = document.createElement("span");
      node.className = cls;
      frag.append(node);
      tail = { node, cls, chars: 0, lines: 0, parts: [] };
      out.spans.push(tail);
    }
    let cut = text.length;
    let lines = 0;
    for (let i = text.indexOf("\n"); i >= 0; i = text.indexOf("\n", i + 1)) {
      if (tail.lines + ++lines >= SPAN_LINES) {
        cut = i + 1;
        break;
      }
    }
    cut = Math.min(cut, Math.max(1, SPAN_CHARS - tail.chars));
    const piece = text.slice(0, cut);
    text = text.slice(cut);
    tail.parts.push(piece);
    const n = countLines(piece);
    tail.chars += piece.length;
    tail.lines += n;
    out.chars += piece.length;
    out.lines += n;
  }
}

function flush() {
  out.scheduled = false;
  const con = $("console");
  const frag = document.createDocumentFragment();
  const before = out.spans.length;
  const touched = out.spans.length > out.first ? out.spans[out.spans.length - 1] : null;
  for (const [cls, item] of out.pending) {
    if (cls === "img") appendImage(frag, item);
    else appendText(frag, cls, item);
  }
  out.pending = [];
  out.pendingChars = 0;
  // Spans written this frame get their text once (an image's span holds its image).
  const text = (span) => span.cls !== "img" && (span.node.textContent = span.parts.join(""));
  if (touched) text(touched);
  for (let i = before; i < out.spans.length; i++) text(out.spans[i]);
  con.append(frag);
  while ((out.lines > KEEP_LINES || out.chars > KEEP_CHARS) && out.spans.length - out.first > 1) {
    const old = out.spans[out.first];
    out.spans[out.first++] = null;
    old.node.remove();
    out.chars -= old.chars;
    out.lines -= old.lines;
    out.dropped = true;
  }
  if (out.first > 1024) {
    out.spans = out.spans.slice(out.first);
    out.first = 0;
  }
  if (out.dropped) $("truncated").hidden = false;
  if (out.follow) con.scrollTop = con.scrollHeight;
}

function clearConsole() {
  out.pending = [];
  out.pendingChars = 0;
  out.spans = [];
  out.first = 0;
  out.chars = 0;
  out.lines = 0;
  out.dropped = false;
  $("console").replaceChildren();
  $("truncated").hidden = true;
}

function system(text) {
  write("sys", text.endsWith("\n") ? text : text + "\n");
}

/** The console's last line, for prefixing a message with a newline when needed. */
function needsNewline() {
  const last = out.pending.length ? out.pending[out.pending.length - 1][1] : $("console").lastChild?.textContent || "";
  return last !== "" && !last.endsWith("\n");
}

// ---------------------------------------------------------------- connection

const conn = {
  socket: null,
  nextId: 1,
  calls: new Map(), // id → callback, for requests awaiting their response
  backoff: BACKOFF_MIN_MS,
  timer: null,
  /** Reconnect automatically (false after "logged in elsewhere" until the user acts). */
  auto: true,
  queued: null, // a run requested while disconnected
};

function setStatus(status, text) {
  const el = $("status");
  el.dataset.status = status;
  el.textContent = text;
  updateButtons();
}

function wsUrl() {
  const token = new URLSearchParams(location.search).get("token");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws` + (token ? `?token=${encodeURIComponent(token)}` : "");
}

function connect() {
  clearTimeout(conn.timer);
  conn.timer = null;
  if (conn.socket) return;
  setStatus("connecting", "connecting…");
  let socket;
  try {
    socket = new WebSocket(wsUrl());
  } catch (e) {
    return scheduleReconnect(`cannot connect: ${e.message}`);
  }
  conn.socket = socket;
  socket.onopen = () => {
    conn.backoff = BACKOFF_MIN_MS;
    conn.auto = true;
    setStatus("connected", "connected");
    if (conn.queued) {
      const params = conn.queued;
      conn.queued = null;
      startRun(params);
    }
  };
  socket.onmessage = (e) => {
    let msg;
    try {
      msg = JSON.parse(e.data);
    } catch (_) {
      return system("weir sent a message that is not JSON");
    }
    receive(msg);
  };
  socket.onclose = (e) => {
    if (conn.socket !== socket) return;
    conn.socket = null;
    conn.calls.clear();
    const lost = runs.current;
    runs.current = null;
    runs.known.clear();
    if (lost) {
      if (needsNewline()) write("sys", "\n");
      system(`Connection lost: the run of ${lost.file} was stopped by the server.`);
      showOutcome("stopped", "Connection lost: the run was stopped", null);
    }
    setRunState("none");
    if (e.code === 4001) {
      conn.auto = false;
      setStatus("disconnected", "signed in elsewhere — Run reconnects");
      system("This connection was closed: you logged in from another location.");
    } else if (e.code === 4002) {
      conn.auto = false;
      setStatus("disconnected", "idle — Run reconnects");
    } else {
      scheduleReconnect(e.reason || "connection lost");
    }
  };
}

function scheduleReconnect(why) {
  if (!conn.auto) return;
  const delay = conn.backoff;
  conn.backoff = Math.min(conn.backoff * 2, BACKOFF_MAX_MS);
  const jittered = Math.round(delay * (0.8 + Math.random() * 0.4));
  setStatus("reconnecting", `${why}; reconnecting in ${(jittered / 1000).toFixed(1)} s`);
  conn.timer = setTimeout(connect, jittered);
}

function call(method, params, onResult) {
  const socket = conn.socket;
  if (!socket || socket.readyState !== WebSocket.OPEN) return false;
  const id = conn.nextId++;
  if (onResult) conn.calls.set(id, onResult);
  socket.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
  return true;
}

function receive(msg) {
  if (msg.id !== undefined && msg.id !== null && !msg.method) {
    const done = conn.calls.get(msg.id);
    conn.calls.delete(msg.id);
    if (done) done(msg.error ? { error: msg.error } : { result: msg.result });
    else if (msg.error) system(`weir: ${msg.error.message}`);
    return;
  }
  if (msg.error) return system(`weir: ${msg.error.message}`);
  const p = msg.params || {};
  const run = runs.known.get(p.run_id);
  if (!run) return; // a run this page no longer shows
  switch (msg.method) {
    case "output":
      write(p.stream === "stderr" ? "err" : "out", p.data);
      break;
    case "display":
      if (p.data && typeof p.data === "object") show(p);
      break;
    case "clear_output":
      clearOutput(p.wait === true);
      break;
    case "state":
      if (run === runs.current) setRunState(p.state);
      break;
    case "exit":
      finished(run, p);
      break;
  }
}

// ---------------------------------------------------------------- runs

const runs = {
  /** The run the buttons act on. */
  current: null,
  /** Runs whose messages are still shown (the current one, and one being replaced). */
  known: new Map(),
  starting: false,
};

function run() {
  const file = files.current();
  const others = {};
  for (const f of files.list) if (f !== file) others[f.name] = f.content;
  const params = { source: file.content, filename: file.name, files: others, repl: $("repl").checked };
  if ($("runtime").value) params.runtime = $("runtime").value;
  if (!conn.socket || conn.socket.readyState !== WebSocket.OPEN) {
    conn.queued = params;
    conn.auto = true;
    conn.backoff = BACKOFF_MIN_MS;
    system("Connecting to weir…");
    connect();
    return;
  }
  startRun(params);
}

function startRun(params) {
  // The server stops the connection's active run before starting this one; its `exit` arrives
  // first and is shown under the old run's name.
  clearConsole();
  if (runs.current) system(`Stopping ${runs.current.file}…`);
  system(`▶ ${params.filename}${params.repl ? " (then REPL)" : ""}`);
  showOutcome("", "running…", null);
  runs.starting = true;
  updateButtons();
  const sent = call("run", params, ({ result, error }) => {
    runs.starting = false;
    if (error) {
      system(`Cannot run: ${error.message}`);
      showOutcome("error", error.message, null);
      updateButtons();
      return;
    }
    const run = { id: result.run_id, file: params.filename, started: performance.now() };
    runs.known.set(run.id, run);
    runs.current = run;
    setRunState("running");
  });
  if (!sent) {
    runs.starting = false;
    system("Not connected.");
  }
}

function finished(run, p) {
  runs.known.delete(run.id);
  if (needsNewline()) write("sys", "\n");
  const secs = (p.duration_ms / 1000).toFixed(2);
  const where = p.runtime ? `, ${p.runtime}` : "";
  write("end", `[${run.file}] ${p.outcome}: ${p.message} (${secs} s${where})${p.output_truncated ? " — output truncated" : ""}\n`);
  if (run === runs.current) {
    runs.current = null;
    setRunState("none");
    showOutcome(p.outcome, p.message, p.duration_ms, p.output_truncated, p.runtime);
  }
}

function showOutcome(outcome, message, durationMs, truncated, runtime) {
  const el = $("outcome");
  el.dataset.outcome = outcome;
  el.dataset.runtime = runtime || "";
  const parts = [outcome, message];
  if (durationMs !== null && durationMs !== undefined) parts.push(`${(durationMs / 1000).toFixed(2)} s`);
  if (truncated) parts.push("output truncated");
  if (runtime) parts.push(runtime);
  el.textContent = parts.filter(Boolean).join(" · ");
}

function setRunState(state) {
  document.body.dataset.runState = state;
  const line = $("input-line");
  const wantsInput = state === "waiting_input" || state === "repl";
  $("prompt").textContent = state === "repl" ? ">>>" : "input";
  if (wantsInput && line.hidden) {
    line.hidden = false;
    $("stdin").focus();
  } else if (!wantsInput) {
    line.hidden = true;
  }
  updateButtons();
}

function updateButtons() {
  const connected = !!conn.socket && conn.socket.readyState === WebSocket.OPEN;
  const state = document.body.dataset.runState;
  const active = !!runs.current;
  $("run").disabled = runs.starting || (!connected && conn.socket !== null);
  $("stop").disabled = !connected || !active;
  $("interrupt").disabled = !connected || !active;
  $("pause").disabled = !connected || !active;
  $("pause").textContent = state === "paused" ? "▶ Resume" : "❚❚ Pause";
}

function stop() {
  if (runs.current) call("stop", { run_id: runs.current.id });
}

function interrupt() {
  if (runs.current) call("interrupt", { run_id: runs.current.id });
}

function pauseOrResume() {
  if (!runs.current) return;
  const paused = document.body.dataset.runState === "paused";
  call(paused ? "resume" : "pause", { run_id: runs.current.id });
}

function sendInput(e) {
  e.preventDefault();
  if (!runs.current) return;
  const field = $("stdin");
  const text = field.value;
  field.value = "";
  write("in", text + "\n");
  call("input", { run_id: runs.current.id, data: text + "\n" }, ({ error }) => {
    if (error) system(`Input not delivered: ${error.message}`);
  });
}

function inputKeys(e) {
  if (e.key === "d" && e.ctrlKey && runs.current) {
    e.preventDefault();
    write("sys", "^D\n");
    call("eof", { run_id: runs.current.id });
  } else if (e.key === "c" && e.ctrlKey && runs.current && !window.getSelection()?.toString()) {
    e.preventDefault();
    write("sys", "^C\n");
    interrupt();
  }
}

// ---------------------------------------------------------------- start

/** Fills the runtime picker from `GET /v1/runtimes` (the default first, selected). */
async function loadRuntimes() {
  const picker = $("runtime");
  try {
    const response = await fetch("v1/runtimes");
    if (!response.ok) return;
    const list = await response.json();
    const auto = document.createElement("option");
    auto.value = "";
    auto.textContent = "auto";
    auto.title = "by the file's extension (.js: javascript, .rb: ruby), else the default runtime, or python-sci when the program imports a package only it has";
    picker.replaceChildren(auto, ...list.map((r) => {
      const option = document.createElement("option");
      option.value = r.name;
      const note = r.status && r.status !== "ready" ? ` (${r.status.split(":")[0]})` : "";
      option.textContent = `${r.name} ${r.version}${note}`;
      return option;
    }));
  } catch (e) {
    // The picker keeps "default runtime": runs go to the server's default.
  }
}

function init() {
  const editor = $("editor");
  editor.value = files.current().content;
  editor.addEventListener("input", () => {
    files.current().content = editor.value;
    files.save();
    highlight();
  });
  editor.addEventListener("scroll", syncScroll);
  editor.addEventListener("keydown", editorKeys);
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter" && e.target !== editor) {
      e.preventDefault();
      run();
    }
  });
  $("run").addEventListener("click", run);
  $("stop").addEventListener("click", stop);
  $("interrupt").addEventListener("click", interrupt);
  $("pause").addEventListener("click", pauseOrResume);
  $("clear").addEventListener("click", clearConsole);
  $("input-line").addEventListener("submit", sendInput);
  $("stdin").addEventListener("keydown", inputKeys);
  $("keep").textContent = KEEP_LINES.toLocaleString("en");
  $("console").addEventListener("scroll", () => {
    const con = $("console");
    out.follow = con.scrollHeight - con.scrollTop - con.clientHeight < 40;
  });
  renderTabs();
  highlight();
  loadRuntimes();
  connect();
  // For tests and the curious: the page's state, read-only in spirit.
  window.weir = { conn, runs, files, out };
}

init();
