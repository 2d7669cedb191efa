// weir's MCP server driven by the official MCP TypeScript SDK (@modelcontextprotocol/sdk).
// Usage: node mcp_client.mjs stdio WEIR_BINARY [ARGS of `weir mcp`…] | node mcp_client.mjs http URL
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

let current = "start";
async function step(name, body) {
  current = name;
  await body();
  console.log(`ok - ${name}`);
}

const text = (result) => result.content.map((c) => c.text ?? "").join("");
const run = (args) => client.callTool({ name: "run_python", arguments: args });

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
    const tool = tools.find((t) => t.name === "run_python");
    if (!tool) throw new Error(`tools: ${tools.map((t) => t.name)}`);
    if (!/sandbox/.test(tool.description) || !/network/.test(tool.description)) {
      throw new Error(`description: ${tool.description}`);
    }
    if (!tool.inputSchema?.properties?.code) throw new Error(`schema: ${JSON.stringify(tool.inputSchema)}`);
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

  await step("refuses an unknown runtime by name", async () => {
    const result = await run({ code: "print(1)", runtime: "cobol" });
    const out = text(result);
    if (!result.isError || !out.includes("cobol")) throw new Error(out);
  });

  await client.close();
} catch (e) {
  console.log(`not ok - ${current}: ${e?.stack ?? e}`);
  process.exit(1);
}
