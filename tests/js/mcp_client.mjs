// weir's MCP server driven by the official MCP TypeScript SDK (@modelcontextprotocol/sdk).
// Usage: node mcp_client.mjs stdio WEIR_BINARY [ARGS of `weir mcp`…] | node mcp_client.mjs http URL [CALLBACK_URL]
// With a CALLBACK_URL (one the server allows, answered by tests/callbacks/receiver.py), a run's
// functions are called through it; without one, declaring functions is refused.
// Prints one line per passed step; exits 1 with the failing step's reason on the first failure.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [mode, target, ...extra] = process.argv.slice(2);
const transport =
  mode === "stdio"
    ? new StdioClientTransport({ command: target, args: ["mcp", ...extra], stderr: "inherit" })
    : new StreamableHTTPClientTransport(new URL(target));
const client = new Client({ name: "weir-test", version: "1.0.0" });
const callbackUrl = mode === "http" ? extra[0] : undefined;

let current = "start";
async function step(name, body) {
  current = name;
  await body();
  console.log(`ok - ${name}`);
}

const text = (result) => result.content.map((c) => c.text ?? "").join("");
const run = (args) => client.callTool({ name: "run_python", arguments: args });
const tool = (name, args) => client.callTool({ name, arguments: args });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

try {
  await step("connects and says what it is", async () => {
    await client.connect(transport);
    const info = client.getServerVersion();
    if (info?.name !== "weir") throw new Error(`server: ${JSON.stringify(info)}`);
    const instructions = client.getInstructions() ?? "";
    if (!/no network/.test(instructions)) throw new Error(`instructions: ${instructions}`);
  });

  await step("lists run_python with its limits in the description", async () => {
    const { tools } = await client.listTools();
    const runner = tools.find((t) => t.name === "run_python");
    if (!runner) throw new Error(`tools: ${tools.map((t) => t.name)}`);
    if (!/sandbox/.test(runner.description) || !/network/.test(runner.description)) {
      throw new Error(`description: ${runner.description}`);
    }
    if (!runner.inputSchema?.properties?.code) throw new Error(`schema: ${JSON.stringify(runner.inputSchema)}`);
    const names = tools.map((t) => t.name).sort().join(",");
    const expected = "run_code,run_python,session_close,session_create,session_exec,session_files,session_fork,session_interrupt,session_read_file,session_restore,session_snapshot";
    if (names !== expected) throw new Error(`tools: ${names}`);
  });

  await step("runs code and returns its output", async () => {
    const result = await run({ code: "import sys\nprint(6 * 7)\nprint(sys.version_info[:2])" });
    const out = text(result);
    if (result.isError) throw new Error(`an error: ${out}`);
    if (!out.includes("42\n") || !out.includes("outcome: exited (exit code 0)")) throw new Error(out);
  });

  await step("passes files and stdin", async () => {
    const result = await run({
      code: "name = input()\nprint(open('data.txt').read().strip(), name)",
      files: { "data.txt": "hello\n" },
      stdin: "Ada\n",
    });
    const out = text(result);
    if (result.isError || !out.includes("hello Ada")) throw new Error(out);
  });

  await step("reports an uncaught exception as an error with its traceback", async () => {
    const result = await run({ code: "1 / 0" });
    const out = text(result);
    if (!result.isError) throw new Error(`not an error: ${out}`);
    if (!out.includes("ZeroDivisionError") || !out.includes("--- stderr ---")) throw new Error(out);
  });

  await step("stops a busy loop at its time limit", async () => {
    const result = await run({ code: "while True: pass", timeout_ms: 300 });
    const out = text(result);
    if (!result.isError || !out.includes("outcome: timeout")) throw new Error(out);
  });

  await step("returns a matplotlib figure as PNG image content", async () => {
    const result = await run({ code: "import matplotlib.pyplot as plt\nplt.plot([1, 2, 4])\nplt.show()\nprint('drawn')" });
    const out = text(result);
    if (result.isError || !out.includes("drawn") || !out.includes("runtime python-sci")) throw new Error(out);
    const images = result.content.filter((c) => c.type === "image");
    if (images.length !== 1 || images[0].mimeType !== "image/png") throw new Error(JSON.stringify(result.content).slice(0, 300));
    const png = Buffer.from(images[0].data, "base64");
    if (png.subarray(0, 8).toString("hex") !== "89504e470d0a1a0a") throw new Error("not a PNG");
  });

  await step("returns HTML and Markdown displays as text resources of their type", async () => {
    const result = await run({
      code: "from IPython.display import display, HTML, Markdown\ndisplay(HTML('<b>bold</b>'))\ndisplay(Markdown('*it*'))\nprint('shown')",
    });
    if (result.isError || !text(result).includes("shown")) throw new Error(text(result));
    const resources = result.content.filter((c) => c.type === "resource").map((c) => c.resource);
    const got = resources.map((r) => [r.mimeType, r.text]);
    if (JSON.stringify(got) !== JSON.stringify([["text/html", "<b>bold</b>"], ["text/markdown", "*it*"]])) {
      throw new Error(JSON.stringify(result.content).slice(0, 400));
    }
    if (!resources.every((r) => r.uri.startsWith("weir://display/"))) throw new Error(JSON.stringify(resources));
  });

  if (callbackUrl) {
    await step("calls the functions it declares through the operator's callback", async () => {
      const result = await run({
        code: "from weir import tools, ToolError\nprint(tools.add(a=2, b=40))\n" +
          "try:\n    tools.lookup(city='Atlantis')\nexcept ToolError as e:\n    print(e)\n",
        functions: [
          { name: "add", description: "Adds.", parameters: { type: "object", required: ["a", "b"] } },
          { name: "lookup" },
        ],
        callback_url: callbackUrl,
      });
      const out = text(result);
      if (result.isError || !out.includes("42\nno such city: Atlantis\n")) throw new Error(out);
    });
  } else {
    await step("refuses functions without a callback the operator allows", async () => {
      const result = await run({
        code: "print(1)",
        functions: [{ name: "add" }],
        callback_url: "http://127.0.0.1:9/hooks",
      });
      const out = text(result);
      if (!result.isError || !out.includes("callbacks are off")) throw new Error(out);
    });
  }

  await step("runs JavaScript with run_code", async () => {
    const result = await tool("run_code", {
      language: "javascript",
      code: "const n = +readline(); console.log({ twice: n * 2 }, [1, 2]);",
      stdin: "21\n",
    });
    const out = text(result);
    if (result.isError || !out.includes("{ twice: 42 } [ 1, 2 ]")) throw new Error(out);
    const failed = await tool("run_code", { language: "js", code: "null.x" });
    if (!failed.isError || !text(failed).includes("TypeError")) throw new Error(text(failed));
  });

  await step("refuses an unknown runtime by name", async () => {
    const result = await run({ code: "print(1)", runtime: "cobol" });
    const out = text(result);
    if (!result.isError || !out.includes("cobol")) throw new Error(out);
  });

  let session_id;
  await step("keeps state across session cells", async () => {
    const created = text(await tool("session_create", {}));
    session_id = /session_id: (\S+)/.exec(created)?.[1];
    if (!session_id) throw new Error(created);
    const first = await tool("session_exec", { session_id, code: "x = 41\nprint('set')" });
    if (first.isError || !text(first).includes("set")) throw new Error(text(first));
    const second = await tool("session_exec", { session_id, code: "x + 1" });
    if (second.isError || !text(second).includes("--- result ---\n42")) throw new Error(text(second));
    const rich = await tool("session_exec", {
      session_id,
      code: "class Card:\n    def _repr_html_(self):\n        return '<i>card</i>'\nCard()",
    });
    const html = rich.content.find((c) => c.type === "resource");
    if (rich.isError || html?.resource.mimeType !== "text/html" || html.resource.text !== "<i>card</i>") {
      throw new Error(JSON.stringify(rich.content).slice(0, 400));
    }
  });

  await step("interrupts a loop and reads a variable afterwards", async () => {
    const loop = tool("session_exec", { session_id, code: "n = 0\nwhile True:\n    n += 1", timeout_ms: 20000 });
    await sleep(500);
    const asked = await tool("session_interrupt", { session_id });
    if (asked.isError) throw new Error(text(asked));
    const ended = await loop;
    if (!text(ended).includes("outcome: interrupted") || !text(ended).includes("KeyboardInterrupt")) {
      throw new Error(text(ended));
    }
    const after = await tool("session_exec", { session_id, code: "n > 0, x" });
    if (!text(after).includes("(True, 41)")) throw new Error(text(after));
  });

  await step("forks, saves and restores a session", async () => {
    const forked = text(await tool("session_fork", { session_id }));
    const fork_id = /session_id: (\S+)/.exec(forked)?.[1];
    if (!fork_id || fork_id === session_id) throw new Error(forked);
    const changed = await tool("session_exec", { session_id: fork_id, code: "x = 'forked'" });
    if (changed.isError) throw new Error(text(changed));
    const mine = await tool("session_exec", { session_id, code: "x" });
    if (!text(mine).includes("--- result ---\n41")) throw new Error(text(mine));
    const saved = text(await tool("session_snapshot", { session_id: fork_id }));
    const snapshot_id = /snapshot_id: (\S+)/.exec(saved)?.[1];
    if (!snapshot_id) throw new Error(saved);
    await tool("session_close", { session_id: fork_id });
    const restored = text(await tool("session_restore", { snapshot_id }));
    const restored_id = /session_id: (\S+)/.exec(restored)?.[1];
    if (!restored_id) throw new Error(restored);
    const value = await tool("session_exec", { session_id: restored_id, code: "x, n > 0" });
    if (!text(value).includes("('forked', True)")) throw new Error(text(value));
    await tool("session_close", { session_id: restored_id });
  });

  await step("keeps a durable session, saying when a cell is not saved", async () => {
    const created = text(await tool("session_create", { durable: true }));
    const durable_id = /session_id: (\S+)/.exec(created)?.[1];
    if (!durable_id) throw new Error(created);
    const held = await tool("session_exec", { session_id: durable_id, code: "f = open('d.txt', 'w')" });
    if (!text(held).includes("not saved") || !text(held).includes("open")) throw new Error(text(held));
    const closed = await tool("session_exec", { session_id: durable_id, code: "f.close()" });
    if (closed.isError || text(closed).includes("not saved")) throw new Error(text(closed));
    await tool("session_close", { session_id: durable_id });
  });

  await step("lists and reads session files, then closes the session", async () => {
    await tool("session_exec", { session_id, code: "open('out.txt', 'w').write('hello')" });
    const listed = text(await tool("session_files", { session_id }));
    if (!listed.includes("out.txt\t5 bytes")) throw new Error(listed);
    const read = await tool("session_read_file", { session_id, path: "out.txt" });
    if (read.isError || text(read) !== "hello") throw new Error(text(read));
    const closed = await tool("session_close", { session_id });
    if (closed.isError) throw new Error(text(closed));
    const gone = await tool("session_exec", { session_id, code: "1" });
    if (!gone.isError || !text(gone).includes("no session")) throw new Error(text(gone));
  });

  await client.close();
} catch (e) {
  console.log(`not ok - ${current}: ${e?.stack ?? e}`);
  process.exit(1);
}
