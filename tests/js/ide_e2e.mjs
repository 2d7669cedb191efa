// End-to-end test of weir's browser IDE (GET /) in headless Chromium, driven by Playwright.
// Usage: node ide_e2e.mjs URL SCREENSHOT_PATH. Prints one line per passed step; exits 1 with the
// failing step's reason (and a screenshot next to SCREENSHOT_PATH) on the first failure.
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
const STEP_TIMEOUT = 15000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
page.setDefaultTimeout(STEP_TIMEOUT);
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(String(e)));
page.on("console", (m) => {
  if (m.type() === "error") pageErrors.push(m.text());
});

let current = "start";
async function step(name, body) {
  current = name;
  await body();
  if (pageErrors.length) throw new Error(`the page logged errors: ${pageErrors.join(" | ")}`);
  console.log(`ok - ${name}`);
}

const consoleText = () => page.locator("#console").textContent();
async function waitConsole(text, timeout = 30_000) {
  await page.waitForFunction(
    (t) => document.getElementById("console").textContent.includes(t),
    text,
    { timeout },
  );
}
async function waitOutcome(outcome) {
  await page.waitForFunction(
    (o) => document.getElementById("outcome").dataset.outcome === o,
    outcome,
  );
}
async function waitRunState(state) {
  await page.waitForFunction((s) => document.body.dataset.runState === s, state);
}
async function setSource(code) {
  await page.locator("#editor").fill(code);
}
async function answer(text) {
  await page.locator("#stdin").waitFor({ state: "visible" });
  await page.locator("#stdin").fill(text);
  await page.locator("#stdin").press("Enter");
}

try {
  await step("the page loads and connects", async () => {
    await page.goto(url);
    await page.waitForFunction(() => document.getElementById("status").dataset.status === "connected");
    if (!(await page.locator("#run").isEnabled())) throw new Error("Run is disabled while connected");
    if (await page.locator("#stop").isEnabled()) throw new Error("Stop is enabled with no run");
  });

  await step("a typed script runs and its output streams, stderr set apart", async () => {
    await page.locator("#editor").fill("");
    await page.locator("#editor").click();
    await page.keyboard.type('import sys\nprint("hello from the browser")\nprint("oops", file=sys.stderr)\n');
    const highlighted = await page.locator("#highlight .tok-kw").count();
    if (highlighted < 1) throw new Error("no keyword was highlighted");
    await page.locator("#run").click();
    await waitConsole("hello from the browser");
    await waitOutcome("exited");
    const err = await page.locator("#console .err").first().textContent();
    if (!err.includes("oops")) throw new Error(`stderr not shown apart: ${err}`);
    const outcome = await page.locator("#outcome").textContent();
    if (!/exited · Script finished · \d+\.\d\d s/.test(outcome)) throw new Error(`outcome line: ${outcome}`);
    await page.screenshot({ path: screenshot });
  });

  await step("the runtime picker lists the server's runtimes and a run goes to the chosen one", async () => {
    await page.waitForFunction(() => document.querySelectorAll("#runtime option").length === 5);
    const labels = await page.locator("#runtime option").allTextContents();
    if (labels[0] !== "auto" || !labels[1].startsWith("python ") || !labels[2].startsWith("python-alt ")
        || !labels[3].startsWith("python-sci ") || !labels[4].startsWith("javascript ")) {
      throw new Error(`picker: ${labels}`);
    }
    await page.locator("#runtime").selectOption("python-alt");
    await page.locator("#editor").fill('print("in the other runtime")');
    await page.locator("#run").click();
    await waitConsole("in the other runtime");
    await waitOutcome("exited");
    const ran = await page.locator("#outcome").getAttribute("data-runtime");
    if (ran !== "python-alt") throw new Error(`the run went to ${ran}`);
    await page.locator("#runtime").selectOption("python");
  });

  await step("a matplotlib figure is shown inline, after the text printed before it", async () => {
    await page.locator("#runtime").selectOption("");
    await setSource('import matplotlib.pyplot as plt\nprint("before")\nplt.plot([1, 3, 2])\nplt.show()\nprint("after")\n');
    await page.locator("#run").click();
    await waitConsole("after", 600_000);
    await waitOutcome("exited");
    const ran = await page.locator("#outcome").getAttribute("data-runtime");
    if (ran !== "python-sci") throw new Error(`auto ran it in ${ran}`);
    const figure = await page.evaluate(() => {
      const img = document.querySelector("#console .figure img");
      if (!img) return null;
      const span = img.parentElement;
      const order = (span.previousElementSibling?.textContent || "").includes("before")
        && (span.nextElementSibling?.textContent || "").includes("after");
      return { w: img.naturalWidth, h: img.naturalHeight, order };
    });
    if (!figure || figure.w < 100 || figure.h < 100 || !figure.order) {
      throw new Error(`figure: ${JSON.stringify(figure)}`);
    }
    await page.locator("#runtime").selectOption("python");
  });

  await step("rich displays: a DataFrame's table, an SVG and Markdown; a displayed script does not run", async () => {
    await page.locator("#runtime").selectOption("python-sci");
    const title = await page.title();
    await setSource([
      "import pandas as pd",
      "from IPython.display import display, SVG, Markdown, HTML",
      "print('rich')",
      "display(pd.DataFrame({'city': ['Oslo', 'Lima'], 'temp': [3, 19]}))",
      "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"40\" height=\"30\"><rect width=\"40\" height=\"30\" fill=\"red\"/></svg>'))",
      "display(Markdown('# Weather\\n*today* in `Oslo`'))",
      "display(HTML('<p id=\"evil\">evil</p><script>window.top.document.title = \"pwned\"; try { window.top.localStorage.setItem(\"pwned\", \"1\") } catch (e) {} document.title = \"ran\"</script><img src=\"data:,x\" onerror=\"window.top.document.title = \\\'pwned-img\\\'\">'))",
      "print('done')",
      "",
    ].join("\n"));
    await page.locator("#run").click();
    await waitConsole("done", 120_000);
    await waitOutcome("exited");
    await page.waitForTimeout(500);
    const seen = await page.evaluate(() => {
      const frames = [...document.querySelectorAll("#console .figure iframe")];
      const docs = frames.map((f) => f.contentDocument);
      const table = docs.find((d) => d && d.querySelector("table"));
      const evil = docs.find((d) => d && d.getElementById("evil"));
      const svg = document.querySelector('#console .figure img[src^="data:image/svg+xml"]');
      const h1 = document.querySelector("#console .figure .markdown h1");
      return {
        cells: table ? [...table.querySelectorAll("td")].map((td) => td.textContent) : null,
        svg: svg ? [svg.naturalWidth, svg.naturalHeight] : null,
        heading: h1 ? h1.textContent : null,
        em: document.querySelector("#console .figure .markdown em")?.textContent ?? null,
        evilShown: evil ? evil.getElementById("evil").textContent : null,
        evilRan: evil ? evil.title === "ran" : null,
        title: document.title,
        stored: localStorage.getItem("pwned"),
      };
    });
    const want = { cells: ["Oslo", "3", "Lima", "19"], svg: [40, 30], heading: "Weather", em: "today",
      evilShown: "evil", evilRan: false, title, stored: null };
    if (JSON.stringify(seen) !== JSON.stringify(want)) {
      throw new Error(`rich displays: ${JSON.stringify(seen)}, wanted ${JSON.stringify(want)}`);
    }
    // The browser reports the blocked script as an error of the frame's: that is the point.
    pageErrors.splice(0, pageErrors.length, ...pageErrors.filter((e) => !/sandboxed|allow-scripts/.test(e)));
    await page.locator("#runtime").selectOption("python");
  });

  await step("two input() prompts are answered from the input line (Ctrl+Enter runs)", async () => {
    await setSource('a = input("first? ")\nb = input("second? ")\nprint(f"{a}+{b}")\n');
    await page.locator("#editor").press("Control+Enter");
    await waitRunState("waiting_input");
    await answer("one");
    await waitConsole("second? ");
    await answer("two");
    await waitConsole("one+two");
    await waitOutcome("exited");
    if (await page.locator("#input-line").isVisible()) throw new Error("the input line stayed after the run");
    const text = await consoleText();
    if (!text.includes("first? one\nsecond? two\none+two")) throw new Error(`console: ${text}`);
  });

  await step("while True: pass is stopped", async () => {
    await setSource("while True:\n    pass\n");
    await page.locator("#run").click();
    await waitRunState("running");
    await page.locator("#stop").click();
    await waitOutcome("stopped");
    await waitConsole("stopped: Script was stopped");
    if (await page.locator("#stop").isEnabled()) throw new Error("Stop still enabled after the run");
  });

  await step("Interrupt raises KeyboardInterrupt where the loop runs", async () => {
    await setSource("n = 0\nwhile True:\n    n += 1\n");
    await page.locator("#run").click();
    await waitRunState("running");
    await page.locator("#interrupt").click();
    await waitConsole("KeyboardInterrupt");
    await waitOutcome("error");
    const text = await consoleText();
    if (!text.includes("line 3, in <module>")) throw new Error(`console: ${text}`);
    if (await page.locator("#interrupt").isEnabled()) throw new Error("Interrupt still enabled after the run");
  });

  await step("pause and resume follow the run state", async () => {
    await setSource("import time\nfor i in range(600):\n    print(i, flush=True)\n    time.sleep(0.05)\n");
    await page.locator("#run").click();
    await waitConsole("3\n");
    await page.locator("#pause").click();
    await waitRunState("paused");
    if ((await page.locator("#pause").textContent()).indexOf("Resume") < 0) throw new Error("no Resume button while paused");
    await page.locator("#pause").click();
    await waitRunState("running");
    await page.locator("#stop").click();
    await waitOutcome("stopped");
  });

  await step("a flood stays responsive, is capped, and Stop works", async () => {
    await setSource("while True:\n    print(1)\n");
    await page.locator("#run").click();
    await page.locator("#truncated").waitFor({ state: "visible" });
    // The page still answers: the editor takes typing and the DOM stays bounded mid-flood.
    await page.locator("#editor").press("End");
    const kept = await page.evaluate(() => ({
      chars: document.getElementById("console").textContent.length,
      lines: document.getElementById("console").textContent.split("\n").length - 1,
      state: document.body.dataset.runState,
    }));
    if (kept.lines > 3000 + 100 || kept.chars > 300000) throw new Error(`console not capped: ${JSON.stringify(kept)}`);
    if (kept.state !== "running") throw new Error(`flood ended on its own (${kept.state}); raise the test server's output limit`);
    await page.locator("#stop").click();
    await waitOutcome("stopped");
  });

  await step("switching file and pressing Run stops the old run", async () => {
    await setSource('import time\nprint("main started", flush=True)\ntime.sleep(60)\n');
    await page.locator("#run").click();
    await waitConsole("main started");
    page.once("dialog", (d) => d.accept("other.py"));
    await page.locator("#add-file").click();
    await page.locator('.tab[data-file="other.py"][aria-selected="true"]').waitFor();
    await setSource('print("other ran")\n');
    await page.locator("#run").click();
    await waitConsole("other ran");
    await waitOutcome("exited");
    const text = await consoleText();
    const stopped = text.indexOf("[main.py] stopped: Script was stopped");
    const other = text.indexOf("other ran");
    if (stopped < 0 || stopped > other) throw new Error(`old run not reported stopped before the new one: ${text}`);
    await page.locator('.tab[data-file="main.py"]').click();
    const source = await page.locator("#editor").inputValue();
    if (!source.includes("main started")) throw new Error("switching back lost main.py's content");
  });

  await step("a .js tab runs in javascript, highlighted as JavaScript, its readline() answered", async () => {
    await page.locator("#runtime").selectOption("");
    page.once("dialog", (d) => d.accept("hello.js"));
    await page.locator("#add-file").click();
    await page.locator('.tab[data-file="hello.js"][aria-selected="true"]').waitFor();
    await setSource('const name = prompt("name?");\nconsole.log(`hi ${name}`, { n: [1, 2] });\n');
    const keyword = await page.locator("#highlight .tok-kw").first().textContent();
    if (keyword !== "const") throw new Error(`highlighted keyword: ${keyword}`);
    await page.locator("#run").click();
    await waitRunState("waiting_input").catch(async (e) => { throw new Error(`${e}: ${await consoleText()}`); });
    await answer("js");
    await waitConsole("hi js { n: [ 1, 2 ] }");
    await waitOutcome("exited");
    const ran = await page.locator("#outcome").getAttribute("data-runtime");
    if (ran !== "javascript") throw new Error(`auto ran hello.js in ${ran}`);
    await page.locator("#runtime").selectOption("python");
    await page.locator('.tab[data-file="main.py"]').click();
  });

  await step("a REPL after the script evaluates a line with the script's variables", async () => {
    await setSource("x = 21\n");
    await page.locator("#repl").check();
    await page.locator("#run").click();
    await waitRunState("repl");
    if ((await page.locator("#prompt").textContent()) !== ">>>") throw new Error("no REPL prompt");
    await answer("x * 2");
    await waitConsole("42");
    await page.locator("#stdin").press("Control+d");
    await waitOutcome("exited");
    await page.locator("#repl").uncheck();
  });

  await step("a dropped connection is reported, and the page reconnects by itself", async () => {
    await setSource("import time\ntime.sleep(60)\n");
    await page.locator("#run").click();
    await waitRunState("running");
    await page.evaluate(() => window.weir.conn.socket.close());
    await waitConsole("Connection lost: the run of main.py was stopped");
    await page.waitForFunction(() => document.getElementById("status").dataset.status === "reconnecting");
    await page.waitForFunction(() => document.getElementById("status").dataset.status === "connected");
    await setSource('print("back")\n');
    await page.locator("#run").click();
    await waitConsole("back");
    await waitOutcome("exited");
  });
} catch (e) {
  console.log(`not ok - ${current}: ${e.message}`);
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-failure.png") }).catch(() => {});
  await browser.close();
  process.exit(1);
}
await browser.close();
