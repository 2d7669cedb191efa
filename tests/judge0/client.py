"""Judge0's official Python SDK (PyPI `judge0`) against weir's Judge0 API, used as its own
documentation shows: prints one JSON line per scenario for the test to check."""

import json
import sys

import judge0

client = judge0.Client(sys.argv[1])


def show(name, result):
    results = result if isinstance(result, list) else [result]
    print(json.dumps({"case": name, "results": [
        {"status": str(r.status), "stdout": r.stdout, "stderr": r.stderr,
         "time": r.time, "memory": r.memory, "token": r.token,
         "exit_code": getattr(r, "exit_code", None)}
        for r in results]}), flush=True)


languages = {l.id: l.name for l in client.get_languages()}
print(json.dumps({"case": "languages", "ids": sorted(languages)}), flush=True)
show("accepted", judge0.run(client=client, source_code="print(input().upper())",
                            language=judge0.PYTHON, stdin="hello", expected_output="HELLO"))
show("wrong", judge0.run(client=client, source_code="print(6 * 7)",
                         language=judge0.PYTHON, expected_output="41"))
show("nzec", judge0.run(client=client, source_code="import sys\nprint('partial')\nsys.exit(3)",
                        language=judge0.PYTHON))
show("exception", judge0.run(client=client, source_code="1 / 0", language=judge0.PYTHON))
show("tle", judge0.run(client=client, source_code="while True:\n    pass",
                       language=judge0.PYTHON, cpu_time_limit=1))
show("cases", judge0.run(client=client, source_code="print(int(input()) * 2)",
                         language=judge0.PYTHON,
                         test_cases=[("1", "2"), ("2", "4"), ("3", "7")]))
submission = judge0.async_run(client=client, source_code="print('later')",
                              language=judge0.PYTHON)
show("async", judge0.wait(client=client, submissions=submission))
show("javascript", judge0.run(client=client,
                              source_code="const n = +readline(); console.log(n * 2)",
                              language=judge0.JAVASCRIPT,
                              test_cases=[("1", "2"), ("21", "42"), ("3", "7")]))
show("javascript_error", judge0.run(client=client, source_code="null.x",
                                    language=judge0.JAVASCRIPT))
show("ruby", judge0.run(client=client, source_code="puts gets.to_i * 2",
                        language=judge0.RUBY, test_cases=[("21", "42"), ("3", "7")]))
