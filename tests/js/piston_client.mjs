// Drives a running weir with the unmodified, published Piston client (npm `piston-client`) and
// prints what it got back as one JSON object for tests/all/piston.rs to check.
import piston from "piston-client";

const server = process.argv[2];
const client = piston({ server });

const results = {
  runtimes: await client.runtimes(),
  hello: await client.execute(
    "python",
    'import sys\nname = input()\nprint("hello", name, sys.argv[1:])',
    { stdin: "weir\n", args: ["a", "b"] },
  ),
  error: await client.execute("python", "print('before')\n1 / 0\n"),
  syntax: await client.execute("python", "print('never'\n"),
  timeout: await client.execute("python", "while True:\n    pass\n", {
    runTimeout: 500,
  }),
  unknown: await client.execute("python", "print(1)", { version: "2.7.18" }),
  javascript: await client.execute(
    "javascript",
    "const name = readline(); console.log('hello', name, process.argv.slice(2), { n: 1 });",
    { stdin: "weir\n", args: ["a", "b"] },
  ),
  ruby: await client.execute("ruby", "name = $stdin.gets.chomp\np [name, ARGV]", { stdin: "weir\n", args: ["a"] }),
  // An alias, as Piston serves them (the client looks versions up by language only).
  js_error: await client.execute("js", "console.log('before'); null.x;", { version: "*" }),
};
console.log(JSON.stringify(results));
