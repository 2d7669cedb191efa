// weir's JavaScript prelude: evaluated once in every QuickJS instance before the run is known
// (so a warm instance has done it ahead of demand). It gives programs what node gives the
// programs people write for judges, notebooks and scripts — `console`, `process` (argv, env,
// exit, stdout/stderr, stdin), timers, `require("fs"|"readline"|"util")`, `print`/`readline()`
// as the d8 and SpiderMonkey shells have them — over one host function, `__weir_host`, which
// it takes off the global object: programs cannot reach the host but through what it defines.
//
// The host drives what this file defines through `globalThis.__weir` (not enumerable): the
// event loop's turns (`tick`), a failed evaluation (`failed`), a cell's or REPL line's value
// (`show`), the REPL's reads (`replRead`).
(function () {
  "use strict";
  const host = globalThis.__weir_host;
  delete globalThis.__weir_host;

  // --- util.inspect, as node prints values (breakLength 80, depth 2, compact 3) ---
  const IDENT = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
  const ESCAPES = { "\n": "\\n", "\t": "\\t", "\b": "\\b", "\f": "\\f", "\r": "\\r", "\\": "\\\\" };

  function quote(s) {
    let q = "'";
    if (s.includes("'")) {
      if (!s.includes('"')) q = '"';
      else if (!s.includes("`") && !s.includes("${")) q = "`";
    }
    let out = "";
    for (const ch of s) {
      const code = ch.codePointAt(0);
      if (ch === q) out += "\\" + ch;
      else if (ESCAPES[ch] !== undefined) out += ESCAPES[ch];
      else if (code < 0x20 || code === 0x7f) out += "\\x" + code.toString(16).toUpperCase().padStart(2, "0");
      else out += ch;
    }
    return q + out + q;
  }

  function fnName(f) {
    const src = Function.prototype.toString.call(f);
    if (/^class[\s{]/.test(src)) {
      const ext = Object.getPrototypeOf(f);
      const base = ext && ext.name ? ` extends ${ext.name}` : "";
      return f.name ? `[class ${f.name}${base}]` : `[class (anonymous)${base}]`;
    }
    const kind = f.constructor && f.constructor.name === "AsyncFunction" ? "AsyncFunction"
      : f.constructor && f.constructor.name === "GeneratorFunction" ? "GeneratorFunction"
      : f.constructor && f.constructor.name === "AsyncGeneratorFunction" ? "AsyncGeneratorFunction"
      : "Function";
    return f.name ? `[${kind}: ${f.name}]` : `[${kind} (anonymous)]`;
  }

  function keyText(k) {
    if (typeof k === "symbol") return `[${String(k)}]`;
    return IDENT.test(k) ? k : quote(k);
  }

  function ctorName(v) {
    let proto = Object.getPrototypeOf(v);
    if (proto === null) return null;
    while (proto) {
      const d = Object.getOwnPropertyDescriptor(proto, "constructor");
      if (d && typeof d.value === "function" && d.value.name) return d.value.name;
      proto = Object.getPrototypeOf(proto);
    }
    return "";
  }

  function errorText(e) {
    let head;
    try {
      head = `${e.name}: ${e.message}`;
      if (e.message === "" || e.message === undefined) head = String(e.name);
    } catch (_) {
      head = "Error";
    }
    const stack = typeof e.stack === "string" ? e.stack.replace(/\n$/, "") : "";
    if (stack.startsWith(head)) return stack;
    return stack ? `${head}\n${stack}` : `[${head}]`;
  }

  function isBelow(output, start, base) {
    let total = output.length + start;
    if (total + output.length > 80) return false;
    for (const o of output) {
      total += o.length;
      if (total > 80) return false;
    }
    return base === "" || !base.includes("\n");
  }

  function group(output, value, indent) {
    let total = 0, maxLen = 0;
    const len = output.length;
    const dataLen = [];
    for (let i = 0; i < len; i++) {
      dataLen[i] = output[i].length;
      total += dataLen[i] + 2;
      if (maxLen < dataLen[i]) maxLen = dataLen[i];
    }
    const actualMax = maxLen + 2;
    if (actualMax * 3 + indent < 80 && (total / actualMax > 5 || maxLen <= 6)) {
      const averageBias = Math.sqrt(actualMax - total / output.length);
      const biasedMax = Math.max(actualMax - 3 - averageBias, 1);
      const columns = Math.min(
        Math.round(Math.sqrt(2.5 * biasedMax * len) / biasedMax),
        Math.floor((80 - indent) / actualMax), 12, 15);
      if (columns <= 1) return output;
      const maxLine = [];
      for (let i = 0; i < columns; i++) {
        let lineLength = 0;
        for (let j = i; j < output.length; j += columns) if (dataLen[j] > lineLength) lineLength = dataLen[j];
        maxLine.push(lineLength + 2);
      }
      let pad = "start";
      if (value !== undefined) {
        for (let i = 0; i < output.length; i++) {
          if (typeof value[i] !== "number" && typeof value[i] !== "bigint") { pad = "end"; break; }
        }
      }
      const rows = [];
      for (let i = 0; i < len; i += columns) {
        const max = Math.min(i + columns, len);
        let str = "";
        let j = i;
        for (; j < max - 1; j++) {
          const cell = `${output[j]}, `;
          str += pad === "start" ? cell.padStart(maxLine[j - i], " ") : cell.padEnd(maxLine[j - i], " ");
        }
        str += pad === "start" ? output[j].padStart(maxLine[j - i] - 2, " ") : output[j];
        rows.push(str);
      }
      return rows;
    }
    return output;
  }

  function inspect(value, opts) {
    const ctx = { seen: [], circular: new Map(), depth: opts && opts.depth !== undefined ? opts.depth : 2, indent: 0, current: 0 };
    const text = fmt(ctx, value, 0, true);
    return text;
  }

  function fmtPrimitive(v, top) {
    switch (typeof v) {
      case "string": return top ? v : quote(v);
      case "number": return Object.is(v, -0) ? "-0" : String(v);
      case "bigint": return `${v}n`;
      case "boolean": return String(v);
      case "undefined": return "undefined";
      case "symbol": return String(v);
    }
    return null;
  }

  function fmt(ctx, v, level, top) {
    if (v === null) return "null";
    if (typeof v !== "object" && typeof v !== "function") return fmtPrimitive(v, top);
    if (ctx.seen.includes(v)) {
      let id = ctx.circular.get(v);
      if (id === undefined) { id = ctx.circular.size + 1; ctx.circular.set(v, id); }
      return `[Circular *${id}]`;
    }
    return fmtObject(ctx, v, level);
  }

  function ownKeys(v, skipIndices) {
    const keys = [];
    for (const k of Object.keys(v)) {
      if (skipIndices && /^(0|[1-9][0-9]*)$/.test(k) && Number(k) < 2 ** 32 - 1) continue;
      keys.push(k);
    }
    for (const s of Object.getOwnPropertySymbols(v)) {
      const d = Object.getOwnPropertyDescriptor(v, s);
      if (d && d.enumerable) keys.push(s);
    }
    return keys;
  }

  function propText(ctx, v, k, level) {
    const d = Object.getOwnPropertyDescriptor(v, k);
    let shown;
    if (d && d.get) shown = d.set ? "[Getter/Setter]" : "[Getter]";
    else if (d && d.set) shown = "[Setter]";
    else {
      ctx.indent += 2;
      shown = fmt(ctx, d ? d.value : v[k], level + 1, false);
      ctx.indent -= 2;
    }
    return `${keyText(k)}: ${shown}`;
  }

  function fmtObject(ctx, v, level) {
    const name = ctorName(v);
    let braces = ["{", "}"], base = "", output = [], keys, isArrayLike = false, prefix = "";
    if (typeof v === "function") {
      base = fnName(v);
      keys = ownKeys(v, false).filter((k) => k !== "prototype");
      if (keys.length === 0) return base;
    } else if (Array.isArray(v)) {
      isArrayLike = true;
      prefix = name !== "Array" ? `${name === null ? "[Array: null prototype]" : name}(${v.length}) ` : "";
      braces = [`${prefix}[`, "]"];
      keys = ownKeys(v, true);
      if (v.length === 0 && keys.length === 0) return `${braces[0]}]`;
    } else if (v instanceof Map) {
      braces = [`${name}(${v.size}) {`, "}"];
      keys = ownKeys(v, false);
      if (v.size === 0 && keys.length === 0) return `${braces[0]}}`;
    } else if (v instanceof Set) {
      braces = [`${name}(${v.size}) {`, "}"];
      keys = ownKeys(v, false);
      if (v.size === 0 && keys.length === 0) return `${braces[0]}}`;
    } else if (ArrayBuffer.isView(v) && !(v instanceof DataView)) {
      isArrayLike = true;
      braces = [`${name}(${v.length}) [`, "]"];
      keys = ownKeys(v, true);
      if (v.length === 0 && keys.length === 0) return `${braces[0]}]`;
    } else if (v instanceof Error) {
      base = errorText(v);
      keys = ownKeys(v, false).filter((k) => k !== "stack" && k !== "message");
      if (keys.length === 0) return base;
    } else if (v instanceof Date) {
      base = isNaN(v.getTime()) ? "Invalid Date" : v.toISOString();
      keys = ownKeys(v, false);
      if (keys.length === 0) return base;
    } else if (v instanceof RegExp) {
      base = String(v);
      keys = ownKeys(v, false).filter((k) => k !== "lastIndex");
      if (keys.length === 0) return base;
    } else if (v instanceof Promise) {
      braces = ["Promise {", "}"];
      keys = ownKeys(v, false);
      output.push("<pending>");
    } else if (v instanceof Number || v instanceof String || v instanceof Boolean || v instanceof BigInt || v instanceof Symbol) {
      const prim = v.valueOf();
      const type = typeof prim === "bigint" ? "BigInt" : typeof prim === "symbol" ? "Symbol"
        : typeof prim === "number" ? "Number" : typeof prim === "string" ? "String" : "Boolean";
      base = `[${type}: ${fmtPrimitive(prim, false)}]`;
      keys = ownKeys(v, typeof prim === "string");
      if (keys.length === 0) return base;
    } else if (v instanceof ArrayBuffer) {
      const bytes = new Uint8Array(v);
      const hex = Array.from(bytes.subarray(0, 50), (b) => b.toString(16).padStart(2, "0")).join(" ");
      const more = bytes.length > 50 ? ` ... ${bytes.length - 50} more bytes` : "";
      return `ArrayBuffer { [Uint8Contents]: <${hex}${more}>, byteLength: ${v.byteLength} }`;
    } else {
      keys = ownKeys(v, false);
      if (name === null) braces[0] = "[Object: null prototype] {";
      else if (name !== "Object") braces[0] = `${name} {`;
      if (v[Symbol.toStringTag] && typeof v[Symbol.toStringTag] === "string" && name !== v[Symbol.toStringTag]) {
        braces[0] = `${name || "Object"} [${v[Symbol.toStringTag]}] {`;
      }
      if (keys.length === 0) return name === null ? "[Object: null prototype] {}" : `${braces[0]}}`;
    }
    if (level > ctx.depth) {
      if (Array.isArray(v)) return "[Array]";
      return `[${name === null ? "Object: null prototype" : name || "Object"}]`;
    }
    ctx.seen.push(v);
    ctx.current = level;
    if (isArrayLike) {
      const shownMax = Math.min(v.length, 100);
      let holes = 0;
      for (let i = 0; i < shownMax; i++) {
        if (!Object.prototype.hasOwnProperty.call(v, i) && !ArrayBuffer.isView(v)) { holes++; continue; }
        if (holes) { output.push(`<${holes} empty item${holes > 1 ? "s" : ""}>`); holes = 0; }
        ctx.indent += 2;
        output.push(fmt(ctx, v[i], level + 1, false));
        ctx.indent -= 2;
      }
      if (holes) output.push(`<${holes} empty item${holes > 1 ? "s" : ""}>`);
      if (v.length > shownMax) output.push(`... ${v.length - shownMax} more item${v.length - shownMax > 1 ? "s" : ""}`);
    } else if (v instanceof Map) {
      ctx.indent += 2;
      for (const [k, val] of v) output.push(`${fmt(ctx, k, level + 1, false)} => ${fmt(ctx, val, level + 1, false)}`);
      ctx.indent -= 2;
    } else if (v instanceof Set) {
      ctx.indent += 2;
      for (const val of v) output.push(fmt(ctx, val, level + 1, false));
      ctx.indent -= 2;
    }
    for (const k of keys) output.push(propText(ctx, v, k, level));
    const entries = output.length;
    ctx.seen.pop();
    let ref = "";
    const id = ctx.circular.get(v);
    if (id !== undefined) ref = `<ref *${id}> `;
    if (isArrayLike && entries > 6) output = group(output, v, ctx.indent);
    if (ctx.current - level < 3 && entries === output.length) {
      const start = output.length + ctx.indent + braces[0].length + base.length + 10;
      if (isBelow(output, start, base)) {
        const joined = output.join(", ");
        if (!joined.includes("\n")) {
          return `${ref}${base ? `${base} ` : ""}${braces[0]} ${joined} ${braces[1]}`;
        }
      }
    }
    const ind = "\n" + " ".repeat(ctx.indent);
    return `${ref}${base ? `${base} ` : ""}${braces[0]}${ind}  ${output.join(`,${ind}  `)}${ind}${braces[1]}`;
  }

  function format(args) {
    let out = "";
    let rest = 0;
    if (typeof args[0] === "string" && args.length > 1 && args[0].includes("%")) {
      const f = args[0];
      let a = 1, last = 0;
      for (let i = 0; i < f.length - 1; i++) {
        if (f[i] !== "%") continue;
        const c = f[i + 1];
        let piece = null;
        if (c === "%") { out += f.slice(last, i) + "%"; last = i + 2; i++; continue; }
        if (a >= args.length) continue;
        const arg = args[a];
        switch (c) {
          case "s": piece = typeof arg === "string" ? arg : typeof arg === "bigint" ? `${arg}n`
            : typeof arg === "object" && arg !== null ? inspect(arg, { depth: 1 }) : fmtPrimitive(arg, true) ?? String(arg); break;
          case "d": case "i": piece = typeof arg === "bigint" ? `${arg}n` : typeof arg === "symbol" ? "NaN"
            : String(c === "i" ? parseInt(arg) : Number(arg)); break;
          case "f": piece = typeof arg === "symbol" ? "NaN" : String(parseFloat(arg)); break;
          case "j": try { piece = JSON.stringify(arg); } catch (_) { piece = "[Circular]"; } break;
          case "o": case "O": piece = inspect(arg, { depth: c === "o" ? 4 : 2 }); break;
          case "c": piece = ""; break;
          default: continue;
        }
        out += f.slice(last, i) + piece;
        last = i + 2;
        i++;
        a++;
      }
      out += f.slice(last);
      rest = a;
    } else {
      out = args.length ? fmt1(args[0]) : "";
      rest = 1;
    }
    for (let i = rest; i < args.length; i++) out += " " + fmt1(args[i]);
    return out;
  }
  const fmt1 = (v) => typeof v === "string" ? v : inspect(v);

  // --- output ---
  function write(fd, text) {
    host("write", fd, String(text));
  }
  let groupIndent = "";
  const counts = new Map();
  const timersByLabel = new Map();
  function line(fd, args) {
    let text = format(args);
    if (groupIndent) text = groupIndent + text.split("\n").join("\n" + groupIndent);
    write(fd, text + "\n");
  }
  const console = {
    log: (...a) => line(1, a),
    info: (...a) => line(1, a),
    debug: (...a) => line(1, a),
    error: (...a) => line(2, a),
    warn: (...a) => line(2, a),
    trace: (...a) => line(2, [`Trace: ${format(a)}\n${new Error().stack.replace(/\n$/, "")}`]),
    dir: (v, o) => write(1, inspect(v, o) + "\n"),
    assert: (ok, ...a) => { if (!ok) line(2, a.length ? [`Assertion failed: ${format(a)}`] : ["Assertion failed"]); },
    group: (...a) => { if (a.length) line(1, a); groupIndent += "  "; },
    groupEnd: () => { groupIndent = groupIndent.slice(2); },
    count: (label = "default") => { const n = (counts.get(label) || 0) + 1; counts.set(label, n); line(1, [`${label}: ${n}`]); },
    countReset: (label = "default") => { counts.delete(label); },
    time: (label = "default") => { timersByLabel.set(label, now()); },
    timeEnd: (label = "default") => {
      const t = timersByLabel.get(label);
      if (t === undefined) return;
      timersByLabel.delete(label);
      line(1, [`${label}: ${(now() - t).toFixed(3)}ms`]);
    },
    timeLog: (label = "default", ...a) => {
      const t = timersByLabel.get(label);
      if (t !== undefined) line(1, [`${label}: ${(now() - t).toFixed(3)}ms`, ...a]);
    },
    table: (v) => line(1, [v]),
  };
  console.groupCollapsed = console.group;
  const now = () => (globalThis.performance && performance.now ? performance.now() : Date.now());

  // --- timers: a queue the host's event loop turns (`tick`) ---
  let timerSeq = 0;
  const timers = new Map(); // id -> {at, fn, args, every}
  class Timeout {
    constructor(id) { this._id = id; }
    ref() { return this; }
    unref() { return this; }
    hasRef() { return true; }
    refresh() { const t = timers.get(this._id); if (t) t.at = now() + t.ms; return this; }
    [Symbol.toPrimitive]() { return this._id; }
  }
  function addTimer(fn, ms, args, every) {
    if (typeof fn !== "function") throw new TypeError('The "callback" argument must be of type function');
    ms = Number(ms);
    if (!(ms >= 1 && ms <= 2147483647)) ms = 1;
    const id = ++timerSeq;
    timers.set(id, { at: now() + ms, ms, fn, args, every, seq: id });
    return new Timeout(id);
  }
  function clearTimer(t) {
    if (t === undefined || t === null) return;
    timers.delete(typeof t === "object" ? t._id : Number(t));
  }
  const setTimeout = (fn, ms, ...args) => addTimer(fn, ms, args, false);
  const setInterval = (fn, ms, ...args) => addTimer(fn, ms, args, true);
  const setImmediate = (fn, ...args) => addTimer(fn, 0, args, false);

  function nextTimer() {
    let best = null;
    for (const t of timers.values()) if (best === null || t.at < best.at || (t.at === best.at && t.seq < best.seq)) best = t;
    return best;
  }

  // --- stdin ---
  const stdin = { buffered: "", eof: false, listeners: { data: [], end: [] }, flowing: false, encoding: null };
  function readChunk() {
    if (stdin.eof) return null;
    const chunk = host("read", -1);
    if (chunk === null) { stdin.eof = true; return null; }
    return chunk;
  }
  function readAll() {
    let all = stdin.buffered;
    stdin.buffered = "";
    for (;;) {
      const c = readChunk();
      if (c === null) return all;
      all += c;
    }
  }
  function readLine() {
    for (;;) {
      const nl = stdin.buffered.indexOf("\n");
      if (nl >= 0) {
        const l = stdin.buffered.slice(0, nl);
        stdin.buffered = stdin.buffered.slice(nl + 1);
        return l.endsWith("\r") ? l.slice(0, -1) : l;
      }
      const c = readChunk();
      if (c === null) {
        if (stdin.buffered === "") return null;
        const l = stdin.buffered;
        stdin.buffered = "";
        return l;
      }
      stdin.buffered += c;
    }
  }

  class Emitter {
    constructor() { this._events = new Map(); }
    on(name, fn) { if (!this._events.has(name)) this._events.set(name, []); this._events.get(name).push({ fn, once: false }); this._added(name); return this; }
    once(name, fn) { if (!this._events.has(name)) this._events.set(name, []); this._events.get(name).push({ fn, once: true }); this._added(name); return this; }
    off(name, fn) { const l = this._events.get(name); if (l) this._events.set(name, l.filter((e) => e.fn !== fn)); return this; }
    removeListener(name, fn) { return this.off(name, fn); }
    removeAllListeners(name) { if (name === undefined) this._events.clear(); else this._events.delete(name); return this; }
    addListener(name, fn) { return this.on(name, fn); }
    listenerCount(name) { const l = this._events.get(name); return l ? l.length : 0; }
    emit(name, ...args) {
      const l = this._events.get(name);
      if (!l || l.length === 0) return false;
      this._events.set(name, l.filter((e) => !e.once));
      for (const e of l) e.fn.apply(this, args);
      return true;
    }
    _added() {}
  }

  // `process.stdin`: 'data' and 'end' events (flowing once a 'data' or 'readable' listener is
  // added), `setEncoding`, `read()`, `resume()`, `pause()`.
  class Stdin extends Emitter {
    constructor() { super(); this.fd = 0; this.isTTY = false; this._paused = true; }
    setEncoding(enc) { stdin.encoding = enc; return this; }
    resume() { this._paused = false; return this; }
    pause() { this._paused = true; return this; }
    read() { const all = readAll(); return all === "" ? null : all; }
    _added(name) { if (name === "data" || name === "readable" || name === "end") this._paused = false; }
    _wants() { return !this._paused && !stdin.eof && (this.listenerCount("data") > 0 || this.listenerCount("end") > 0 || readers.size > 0); }
    // Gives listeners the next chunk, waiting at most `wait` ms for it (-1: as long as it
    // takes). Whether a chunk (or the end) came.
    _turn(wait) {
      let chunk = stdin.buffered;
      if (chunk === "") {
        chunk = stdin.eof ? null : host("read", wait);
        if (chunk === undefined) return false;
        if (chunk === null) stdin.eof = true;
      }
      stdin.buffered = "";
      if (chunk === null) { for (const r of readers) r._end(); this.emit("end"); this.emit("close"); return true; }
      for (const r of readers) r._feed(chunk);
      this.emit("data", chunk);
      return true;
    }
    [Symbol.asyncIterator]() {
      const self = this;
      return (async function* () { const all = readAll(); if (all !== "") yield all; self.emit("end"); })();
    }
  }
  const stdinStream = new Stdin();
  const readers = new Set();

  // `readline.createInterface({input: process.stdin})`: 'line' and 'close' events, `question`,
  // and `for await (const line of rl)`.
  class Interface extends Emitter {
    constructor(opts) {
      super();
      this._partial = "";
      this._closed = false;
      this._prompt = (opts && opts.prompt) || "> ";
      this._queue = [];
      this._waiters = [];
      this._question = null;
      readers.add(this);
      stdinStream._paused = false;
    }
    _feed(chunk) {
      this._partial += chunk;
      let nl;
      while ((nl = this._partial.indexOf("\n")) >= 0 && !this._closed) {
        let l = this._partial.slice(0, nl);
        this._partial = this._partial.slice(nl + 1);
        if (l.endsWith("\r")) l = l.slice(0, -1);
        this._line(l);
      }
    }
    _line(l) {
      if (this._question) { const q = this._question; this._question = null; q(l); return; }
      if (this._waiters.length) this._waiters.shift()({ value: l, done: false });
      else if (this.listenerCount("line") === 0) this._queue.push(l);
      this.emit("line", l);
    }
    _end() {
      if (this._partial !== "" && !this._closed) { const l = this._partial; this._partial = ""; this._line(l); }
      this.close();
    }
    close() {
      if (this._closed) return;
      this._closed = true;
      readers.delete(this);
      for (const w of this._waiters) w({ value: undefined, done: true });
      this._waiters = [];
      this.emit("close");
    }
    question(q, opts, cb) {
      if (typeof opts === "function") cb = opts;
      write(1, q);
      if (typeof cb === "function") { this._question = cb; return; }
      return new Promise((resolve) => { this._question = resolve; });
    }
    setPrompt(p) { this._prompt = p; }
    getPrompt() { return this._prompt; }
    prompt() { write(1, this._prompt); }
    write(d) { if (d !== undefined && d !== null) write(1, d); }
    pause() { return this; }
    resume() { return this; }
    [Symbol.asyncIterator]() {
      const self = this;
      return {
        next() {
          if (self._queue.length) return Promise.resolve({ value: self._queue.shift(), done: false });
          if (self._closed) return Promise.resolve({ value: undefined, done: true });
          return new Promise((resolve) => self._waiters.push(resolve));
        },
        return() { self.close(); return Promise.resolve({ value: undefined, done: true }); },
        [Symbol.asyncIterator]() { return this; },
      };
    }
  }

  // --- process ---
  class ExitCode extends Error {}
  const process = new Emitter();
  Object.assign(process, {
    argv: ["node", "main.js"],
    argv0: "node",
    execArgv: [],
    env: {},
    exitCode: undefined,
    platform: "wasi",
    arch: "wasm32",
    pid: 1,
    ppid: 0,
    version: "v22.0.0",
    versions: { quickjs: "ng" },
    release: { name: "weir" },
    title: "weir",
    stdin: stdinStream,
    stdout: { fd: 1, isTTY: false, columns: 80, write: (s, enc, cb) => { write(1, typeof s === "string" ? s : new TextDecoderLite().decode(s)); if (typeof enc === "function") enc(); else if (typeof cb === "function") cb(); return true; }, on() { return this; }, once() { return this; }, end() {} },
    stderr: { fd: 2, isTTY: false, columns: 80, write: (s, enc, cb) => { write(2, typeof s === "string" ? s : new TextDecoderLite().decode(s)); if (typeof enc === "function") enc(); else if (typeof cb === "function") cb(); return true; }, on() { return this; }, once() { return this; }, end() {} },
    exit(code) {
      const c = code === undefined ? (process.exitCode ?? 0) : Number(code) | 0;
      process.emit("exit", c);
      host("exit", c);
    },
    cwd: () => cwd,
    chdir() { throw new Error("process.chdir() is not supported in weir's sandbox"); },
    hrtime: Object.assign((prev) => {
      const t = now();
      let s = Math.floor(t / 1000), ns = Math.floor((t % 1000) * 1e6);
      if (prev) { s -= prev[0]; ns -= prev[1]; if (ns < 0) { s--; ns += 1e9; } }
      return [s, ns];
    }, { bigint: () => BigInt(Math.floor(now() * 1e6)) }),
    uptime: () => now() / 1000,
    memoryUsage: () => ({ rss: 0, heapTotal: 0, heapUsed: 0, external: 0, arrayBuffers: 0 }),
    nextTick: (fn, ...args) => queueMicrotask(() => fn(...args)),
    emitWarning: (w) => line(2, [`(node) Warning: ${w}`]),
    kill() { throw new Error("process.kill() is not supported in weir's sandbox"); },
    abort() { host("exit", 134); },
  });
  let cwd = "/";

  // Strings to bytes and back for `process.stdout.write(Uint8Array)` and `Buffer`.
  class TextEncoderLite {
    get encoding() { return "utf-8"; }
    encode(s = "") {
      s = String(s);
      const out = [];
      for (const ch of s) {
        let c = ch.codePointAt(0);
        if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
        if (c < 0x80) out.push(c);
        else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
        else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
        else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
      }
      return new Uint8Array(out);
    }
  }
  class TextDecoderLite {
    get encoding() { return "utf-8"; }
    decode(b) {
      if (b === undefined) return "";
      const bytes = b instanceof Uint8Array ? b : ArrayBuffer.isView(b) ? new Uint8Array(b.buffer, b.byteOffset, b.byteLength) : new Uint8Array(b);
      let out = "";
      for (let i = 0; i < bytes.length;) {
        const c = bytes[i];
        let cp = 0xfffd, n = 1;
        if (c < 0x80) cp = c;
        else if (c >= 0xc2 && c < 0xe0 && i + 1 < bytes.length && (bytes[i + 1] & 0xc0) === 0x80) { cp = ((c & 31) << 6) | (bytes[i + 1] & 63); n = 2; }
        else if (c >= 0xe0 && c < 0xf0 && i + 2 < bytes.length && (bytes[i + 1] & 0xc0) === 0x80 && (bytes[i + 2] & 0xc0) === 0x80) { cp = ((c & 15) << 12) | ((bytes[i + 1] & 63) << 6) | (bytes[i + 2] & 63); n = 3; if (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff)) cp = 0xfffd; }
        else if (c >= 0xf0 && c < 0xf5 && i + 3 < bytes.length && (bytes[i + 1] & 0xc0) === 0x80 && (bytes[i + 2] & 0xc0) === 0x80 && (bytes[i + 3] & 0xc0) === 0x80) { cp = ((c & 7) << 18) | ((bytes[i + 1] & 63) << 12) | ((bytes[i + 2] & 63) << 6) | (bytes[i + 3] & 63); n = 4; if (cp < 0x10000 || cp > 0x10ffff) cp = 0xfffd; }
        out += String.fromCodePoint(cp);
        i += n;
      }
      return out;
    }
  }

  // --- modules node programs reach for ---
  // A path of the working directory, relative to it (`null` outside it: mounts and the rest of
  // the guest's filesystem are not reachable from JavaScript).
  function relative(path) {
    path = String(path);
    const parts = [];
    const full = path.startsWith("/") ? path : `${cwd}/${path}`;
    for (const part of full.split("/")) {
      if (part === "" || part === ".") continue;
      if (part === "..") { if (!parts.length) return null; parts.pop(); } else parts.push(part);
    }
    const base = cwd.split("/").filter(Boolean);
    if (parts.length <= base.length || base.some((b, i) => parts[i] !== b)) return null;
    return parts.slice(base.length).join("/");
  }
  function fsError(code, syscall, path, why) {
    const messages = { ENOENT: "no such file or directory", EACCES: "permission denied", ENOSPC: "no space left on device" };
    const err = new Error(`${code}: ${why || messages[code]}, ${syscall} '${path}'`);
    err.code = code;
    err.syscall = syscall;
    err.path = String(path);
    return err;
  }
  function readText(path) {
    const rel = relative(path);
    const text = rel === null ? null : host("read_file", rel);
    if (text === null) throw fsError("ENOENT", "open", path);
    return text;
  }
  function writeText(path, data, append) {
    const rel = relative(path);
    if (rel === null) throw fsError("EACCES", "open", path);
    const text = typeof data === "string" ? data : new TextDecoderLite().decode(bodyBytes(data));
    const why = host("write_file", rel, text, append ? 1 : 0);
    if (typeof why === "string") throw fsError(/limit/.test(why) ? "ENOSPC" : "EACCES", "write", path, why);
  }
  const encodingOf = (opts) => (typeof opts === "string" ? opts : opts && opts.encoding) || null;
  const fs = {
    readFileSync(path, opts) {
      const text = path === 0 || path === "/dev/stdin" ? readAll() : readText(path);
      return encodingOf(opts) ? text : new TextEncoderLite().encode(text);
    },
    writeFileSync(path, data) {
      if (path === 1 || path === 2) return write(path, typeof data === "string" ? data : new TextDecoderLite().decode(bodyBytes(data)));
      writeText(path, data, false);
    },
    appendFileSync(path, data) { writeText(path, data, true); },
    writeSync(fd, data) { write(fd === 2 ? 2 : 1, typeof data === "string" ? data : new TextDecoderLite().decode(bodyBytes(data))); },
    existsSync(path) {
      if (path === "/dev/stdin") return true;
      const rel = relative(path);
      return rel !== null && host("read_file", rel) !== null;
    },
  };
  fs.promises = {
    readFile: async (path, opts) => fs.readFileSync(path, opts),
    writeFile: async (path, data) => fs.writeFileSync(path, data),
    appendFile: async (path, data) => fs.appendFileSync(path, data),
  };
  fs.readFile = (path, opts, cb) => {
    if (typeof opts === "function") { cb = opts; opts = undefined; }
    let result, error = null;
    try { result = fs.readFileSync(path, opts); } catch (e) { error = e; }
    queueMicrotask(() => cb(error, result));
  };
  const util = {
    inspect,
    format: (...a) => format(a),
    isDeepStrictEqual: (a, b) => inspect(a, { depth: Infinity }) === inspect(b, { depth: Infinity }),
    promisify: (fn) => (...args) => new Promise((res, rej) => fn(...args, (e, v) => (e ? rej(e) : res(v)))),
    types: { isPromise: (v) => v instanceof Promise, isDate: (v) => v instanceof Date, isRegExp: (v) => v instanceof RegExp },
    TextEncoder: TextEncoderLite,
    TextDecoder: TextDecoderLite,
  };
  const readline = { createInterface: (opts) => new Interface(opts), Interface };
  const timersModule = { setTimeout, setInterval, setImmediate, clearTimeout: clearTimer, clearInterval: clearTimer, clearImmediate: clearTimer };
  const assert = Object.assign((ok, msg) => { if (!ok) throw new AssertionError(msg || "The expression evaluated to a falsy value"); }, {
    ok: (ok, msg) => { if (!ok) throw new AssertionError(msg || "The expression evaluated to a falsy value"); },
    equal: (a, b, msg) => { if (a != b) throw new AssertionError(msg || `${inspect(a)} == ${inspect(b)}`); },
    strictEqual: (a, b, msg) => { if (!Object.is(a, b)) throw new AssertionError(msg || `Expected values to be strictly equal:\n\n${inspect(a)} !== ${inspect(b)}\n`); },
    notStrictEqual: (a, b, msg) => { if (Object.is(a, b)) throw new AssertionError(msg || `Expected "actual" to be strictly unequal to: ${inspect(b)}`); },
    deepStrictEqual: (a, b, msg) => { if (inspect(a, { depth: Infinity }) !== inspect(b, { depth: Infinity })) throw new AssertionError(msg || `Expected values to be strictly deep-equal:\n${inspect(a)}\n\nshould equal\n\n${inspect(b)}`); },
    throws: (fn, _e, msg) => { try { fn(); } catch (_) { return; } throw new AssertionError(msg || "Missing expected exception."); },
  });
  assert.deepEqual = assert.deepStrictEqual;
  assert.strict = assert;
  class AssertionError extends Error { constructor(m) { super(m); this.name = "AssertionError"; this.code = "ERR_ASSERTION"; } }
  assert.AssertionError = AssertionError;
  const events = Object.assign(Emitter, { EventEmitter: Emitter });
  const builtins = {
    fs, util, readline, assert, events, timers: timersModule,
    process,
    os: { EOL: "\n", platform: () => "wasi", arch: () => "wasm32", cpus: () => [], totalmem: () => 0, freemem: () => 0, homedir: () => "/", tmpdir: () => "/tmp", hostname: () => "weir", type: () => "WASI" },
    path: {
      sep: "/",
      delimiter: ":",
      basename: (p, ext) => { let b = String(p).replace(/\/+$/, "").split("/").pop(); if (ext && b.endsWith(ext)) b = b.slice(0, -ext.length); return b; },
      dirname: (p) => { const s = String(p).replace(/\/+$/, ""); const i = s.lastIndexOf("/"); return i < 0 ? "." : i === 0 ? "/" : s.slice(0, i); },
      extname: (p) => { const b = String(p).split("/").pop(); const i = b.lastIndexOf("."); return i <= 0 ? "" : b.slice(i); },
      join: (...parts) => parts.filter((x) => x !== "").join("/").replace(/\/+/g, "/") || ".",
      resolve: (...parts) => "/" + parts.join("/").split("/").filter(Boolean).join("/"),
      isAbsolute: (p) => String(p).startsWith("/"),
    },
  };
  for (const [k, v] of Object.entries(builtins)) builtins["node:" + k] = v;
  // CommonJS modules of the working directory (`require("./util")`, `.js` or `.json`), each
  // evaluated once.
  const modules = new Map();
  function requireFile(name, from) {
    const base = from.replace(/[^/]*$/, "");
    const candidates = [name, `${name}.js`, `${name}.json`, `${name}/index.js`];
    for (const candidate of candidates) {
      const path = candidate.startsWith("/") ? candidate : base + candidate;
      const rel = relative(path);
      if (rel === null) continue;
      const full = `${cwd}/${rel}`;
      if (modules.has(full)) return modules.get(full).exports;
      const text = host("read_file", rel);
      if (text === null) continue;
      const module = { exports: {}, id: full, filename: full, loaded: false };
      modules.set(full, module);
      if (full.endsWith(".json")) module.exports = JSON.parse(text);
      else {
        const wrapped = (0, eval)(`(function (exports, require, module, __filename, __dirname) {${text}\n})`);
        wrapped.call(module.exports, module.exports, (n) => requireFrom(n, full), module, full, full.replace(/\/[^/]*$/, ""));
      }
      module.loaded = true;
      return module.exports;
    }
    const err = new Error(`Cannot find module '${name}'`);
    err.code = "MODULE_NOT_FOUND";
    throw err;
  }
  function requireFrom(name, from) {
    if (name.startsWith("./") || name.startsWith("../") || name.startsWith("/")) return requireFile(name, from);
    return require(name);
  }
  function require(name) {
    if (name.startsWith("./") || name.startsWith("../") || name.startsWith("/")) return requireFile(name, `${cwd}/`);
    if (Object.prototype.hasOwnProperty.call(builtins, name)) return builtins[name];
    const err = new Error(name === "child_process" || name === "net" || name === "http" || name === "https" || name === "dgram" || name === "cluster" || name === "worker_threads"
      ? `Cannot find module '${name}': weir's sandbox has no processes, sockets or threads`
      : `Cannot find module '${name}'`);
    err.code = "MODULE_NOT_FOUND";
    throw err;
  }

  // --- host functions the embedder gives the run: `weir.tools.NAME({...})`, as Python's
  // `from weir import tools` ---
  class ToolError extends Error {
    constructor(message) { super(message); this.name = "ToolError"; }
  }
  function callTool(name, args) {
    if (typeof name !== "string") throw new TypeError("a host function's name is a string");
    let text;
    try {
      text = JSON.stringify(args === undefined ? {} : args);
    } catch (e) {
      throw new TypeError(`${name}: arguments must be JSON values (${e.message})`);
    }
    if (typeof text !== "string" || !text.startsWith("{")) throw new TypeError(`${name}: arguments must be an object`);
    const answer = JSON.parse(host("tool", name, text));
    if (Object.prototype.hasOwnProperty.call(answer, "error")) throw new ToolError(answer.error);
    return answer.ok;
  }
  const tools = new Proxy({}, {
    get(_, name) {
      if (typeof name !== "string" || name.startsWith("_") || name === "then") return undefined;
      return (args) => callTool(name, args);
    },
  });

  // --- fetch: each request made by the host (`_http`), checked against the run's network
  // allowlist, secrets filled in for their hosts; redirects followed here, each hop checked ---
  const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  function toBase64(bytes) {
    let out = "";
    for (let i = 0; i < bytes.length; i += 3) {
      const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
      out += B64[(n >> 18) & 63] + B64[(n >> 12) & 63]
        + (i + 1 < bytes.length ? B64[(n >> 6) & 63] : "=") + (i + 2 < bytes.length ? B64[n & 63] : "=");
    }
    return out;
  }
  function fromBase64(text) {
    const clean = text.replace(/[^A-Za-z0-9+/]/g, "");
    const out = new Uint8Array(Math.floor(clean.length * 3 / 4));
    let bits = 0, value = 0, at = 0;
    for (const c of clean) {
      value = (value << 6) | B64.indexOf(c);
      bits += 6;
      if (bits >= 8) { bits -= 8; out[at++] = (value >> bits) & 255; }
    }
    return out.subarray(0, at);
  }
  class Headers {
    constructor(init) {
      this._list = [];
      if (init instanceof Headers) init = init._list;
      if (Array.isArray(init)) for (const [k, v] of init) this.append(k, v);
      else if (init && typeof init === "object") for (const k of Object.keys(init)) this.append(k, init[k]);
    }
    append(k, v) { this._list.push([String(k).toLowerCase(), String(v)]); }
    set(k, v) { this.delete(k); this.append(k, v); }
    delete(k) { const l = String(k).toLowerCase(); this._list = this._list.filter(([n]) => n !== l); }
    get(k) { const l = String(k).toLowerCase(); const vs = this._list.filter(([n]) => n === l).map(([, v]) => v); return vs.length ? vs.join(", ") : null; }
    has(k) { return this.get(k) !== null; }
    forEach(fn) { for (const [k, v] of this._list) fn(v, k, this); }
    entries() { return this._list.map(([k, v]) => [k, v])[Symbol.iterator](); }
    keys() { return this._list.map(([k]) => k)[Symbol.iterator](); }
    values() { return this._list.map(([, v]) => v)[Symbol.iterator](); }
    [Symbol.iterator]() { return this.entries(); }
  }
  class Response {
    constructor(body, init = {}) {
      this._bytes = body instanceof Uint8Array ? body : new TextEncoderLite().encode(body ?? "");
      this.status = init.status ?? 200;
      this.statusText = init.statusText ?? "";
      this.headers = new Headers(init.headers);
      this.url = init.url ?? "";
      this.redirected = init.redirected ?? false;
      this.ok = this.status >= 200 && this.status < 300;
      this.type = "basic";
      this.bodyUsed = false;
    }
    _take() {
      if (this.bodyUsed) return Promise.reject(new TypeError("Body is unusable: Body has already been read"));
      this.bodyUsed = true;
      return Promise.resolve(this._bytes);
    }
    text() { return this._take().then((b) => new TextDecoderLite().decode(b)); }
    json() { return this.text().then((t) => JSON.parse(t)); }
    arrayBuffer() { return this._take().then((b) => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)); }
    bytes() { return this._take(); }
  }
  function bodyBytes(body) {
    if (body === undefined || body === null) return new Uint8Array(0);
    if (typeof body === "string") return new TextEncoderLite().encode(body);
    if (body instanceof Uint8Array) return body;
    if (body instanceof ArrayBuffer) return new Uint8Array(body);
    if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
    return new TextEncoderLite().encode(String(body));
  }
  async function fetch(input, init = {}) {
    let url = typeof input === "string" ? input : input && input.url !== undefined ? input.url : String(input);
    let method = String(init.method || "GET").toUpperCase();
    const headers = new Headers(init.headers);
    let body = bodyBytes(init.body);
    if (typeof init.body === "string" && !headers.has("content-type")) headers.set("content-type", "text/plain;charset=UTF-8");
    for (let hop = 0; ; hop++) {
      let answer;
      try {
        answer = callTool("_http", { method, url, headers: [...headers], body: toBase64(body) });
      } catch (e) {
        if (e instanceof ToolError) throw new TypeError("fetch failed", { cause: e });
        throw e;
      }
      const location = answer.headers.find(([k]) => k.toLowerCase() === "location");
      if ([301, 302, 303, 307, 308].includes(answer.status) && location && init.redirect !== "manual") {
        if (init.redirect === "error" || hop >= 20) throw new TypeError("fetch failed", { cause: new Error("redirect") });
        url = new URLLite(location[1], url).href;
        if (answer.status === 303 || ((answer.status === 301 || answer.status === 302) && method === "POST")) {
          method = "GET";
          body = new Uint8Array(0);
          headers.delete("content-type");
        }
        continue;
      }
      return new Response(fromBase64(answer.body), { status: answer.status, statusText: answer.reason, headers: answer.headers, url, redirected: hop > 0 });
    }
  }
  // Resolves a redirect's Location against the URL it came from.
  class URLLite {
    constructor(ref, base) {
      if (/^[a-z][a-z0-9+.-]*:/i.test(ref)) this.href = ref;
      else {
        const m = /^([a-z][a-z0-9+.-]*:\/\/[^/?#]*)([^?#]*)/i.exec(base) || ["", "", "/"];
        if (ref.startsWith("//")) this.href = base.split(":")[0] + ":" + ref;
        else if (ref.startsWith("/")) this.href = m[1] + ref;
        else this.href = m[1] + m[2].replace(/[^/]*$/, "") + ref;
      }
    }
  }

  // --- what programs see ---
  const define = (name, value) => Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
  define("console", console);
  define("process", process);
  define("require", require);
  define("module", { exports: {} });
  define("exports", globalThis.module.exports);
  define("global", globalThis);
  define("setTimeout", setTimeout);
  define("setInterval", setInterval);
  define("setImmediate", setImmediate);
  define("clearTimeout", clearTimer);
  define("clearInterval", clearTimer);
  define("clearImmediate", clearTimer);
  if (typeof globalThis.queueMicrotask !== "function") define("queueMicrotask", (fn) => { Promise.resolve().then(fn); });
  if (typeof globalThis.TextEncoder !== "function") define("TextEncoder", TextEncoderLite);
  if (typeof globalThis.TextDecoder !== "function") define("TextDecoder", TextDecoderLite);
  if (typeof globalThis.structuredClone !== "function") define("structuredClone", (v) => JSON.parse(JSON.stringify(v)));
  define("print", (...a) => line(1, a));
  define("weir", Object.freeze({ tools, call: callTool, ToolError }));
  define("fetch", fetch);
  define("Headers", Headers);
  define("Response", Response);
  define("readline", () => readLine());
  define("prompt", (q) => { if (q !== undefined) write(1, String(q) + " "); return readLine(); });

  // Whether REPL input so far leaves a bracket, a template or a comment open: the next line
  // continues it (node's `... ` prompt).
  function incomplete(src) {
    let depth = 0, quote = null;
    for (let i = 0; i < src.length; i++) {
      const c = src[i];
      if (quote !== null) {
        if (c === "\\") i++;
        else if (c === quote) quote = null;
        else if (c === "\n" && quote !== "`") quote = null;
        continue;
      }
      if (c === "/" && src[i + 1] === "/") { const nl = src.indexOf("\n", i); if (nl < 0) break; i = nl; continue; }
      if (c === "/" && src[i + 1] === "*") { const end = src.indexOf("*/", i + 2); if (end < 0) return true; i = end + 1; continue; }
      if (c === "'" || c === '"' || c === "`") quote = c;
      else if (c === "(" || c === "[" || c === "{") depth++;
      else if (c === ")" || c === "]" || c === "}") depth--;
    }
    return depth > 0 || quote === "`";
  }

  // --- the host's entry points ---
  let fatal = false;
  function report(e) {
    // What node prints for an uncaught exception, and what the run's outcome names.
    const isError = e instanceof Error || (e && typeof e === "object" && "stack" in e && "message" in e);
    const text = isError ? errorText(e) : inspect(e);
    write(2, `Uncaught ${text}\n`);
    const type = isError ? String(e.name || "Error") : "Error";
    const message = isError ? String(e.message ?? "") : (typeof e === "string" ? e : inspect(e));
    host("uncaught", type, message);
  }
  function runTimer(t) {
    if (t.every) t.at = Math.max(t.at + t.ms, now()); else timers.delete(t.seq);
    t.fn(...(t.args || []));
  }
  const weir = {
    // Starts the run: its arguments, environment and working directory.
    start(launch) {
      process.argv = ["node", launch.script ? `${launch.cwd}/${launch.script}` : "[eval]", ...launch.args.slice(1)];
      const env = {};
      for (const [k, v] of launch.env) env[k] = v;
      process.env = env;
      cwd = launch.cwd || "/";
      define("__filename", launch.script ? `${cwd}/${launch.script}` : "[eval]");
      define("__dirname", cwd);
    },
    // One turn of the event loop (microtasks are the host's, between turns): runs the next
    // timer that is due, waiting for it first, or gives waiting stdin listeners their next
    // chunk. 1: something ran; 0: nothing is left to do.
    tick() {
      if (fatal) return 0;
      try {
        const t = nextTimer();
        const wait = t === null ? -1 : Math.max(t.at - now(), 0);
        if (wait !== 0 && stdinStream._wants() && stdinStream._turn(wait)) return 1;
        if (t === null) return 0;
        if (wait > 0) host("sleep", wait);
        if (timers.get(t.seq) === t) runTimer(t);
        return 1;
      } catch (e) {
        fatal = true;
        report(e);
        host("exit", 1);
      }
    },
    // Whether the event loop has more to do (the host asks before it exits).
    pending() { return timers.size > 0 || stdinStream._wants(); },
    // An evaluation failed with `e` (the program, a cell, a REPL line): printed as node prints
    // an uncaught exception, and reported.
    failed(e) { report(e); },
    // The text of a value, as the REPL and a cell show it.
    show(v) { return typeof v === "string" ? quote(v) : inspect(v); },
    // The REPL shows a line's value.
    replShow(v) { write(1, weir.show(v) + "\n"); },
    // `process.exit` code the program set (`process.exitCode`), at its end.
    exitCode() { process.emit("exit", process.exitCode ?? 0); return Number(process.exitCode ?? 0) | 0; },
    // The REPL's next input: lines read (after a prompt) until they parse, or null at the end.
    replRead() {
      let src = "";
      for (;;) {
        write(1, src === "" ? "> " : "... ");
        const l = readLine();
        if (l === null) { if (src === "") write(1, "\n"); return src === "" ? null : src; }
        src += (src === "" ? "" : "\n") + l;
        if (src.trim() === "") { src = ""; continue; }
        if (!incomplete(src)) return src;
      }
    },
    inspect,
    format: (...a) => format(a),
  };
  Object.defineProperty(globalThis, "__weir", { value: weir, writable: false, configurable: false, enumerable: false });
})();
