//! The scientific runtime, `python-sci`: pandas, numpy, scipy, scikit-learn and matplotlib in the
//! sandbox, plots delivered as PNG through the library, `/ws` and `POST /v1/runs`, runs that hit
//! a limit inside numpy's C code, stdin and a REPL, deterministic numpy, and the auto-selection
//! of the runtime from a program's imports.
//!
//! The first test to run on a fresh machine prepares the runtime (fetch, pre-initialize,
//! compile: minutes); every other waits for it (a file lock) and then loads the cached result.

use crate::ws;

use serde_json::{json, Value};
use std::sync::OnceLock;
use weir_sandbox::CompileScope;
use weir_sandbox::Seed;
use weir_sandbox::{Collected, EngineSettings, Outcome, RunRequest, Sandbox};
use ws::*;

pub const SCI: &str = "python-sci";

/// One sandbox for this binary, with `python-sci` loaded.
pub async fn sandbox() -> Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    let sandbox = SANDBOX
        .get_or_init(|| {
            let settings = EngineSettings {
                max_instances: 8,
                ..EngineSettings::default()
            };
            Sandbox::load(settings).expect("sandbox loads")
        })
        .clone();
    sandbox.prepare(SCI).await.expect("python-sci prepares");
    sandbox
}

fn request(source: &str) -> RunRequest {
    let mut req = RunRequest::script(source);
    req.close_stdin = true;
    req.runtime = Some(SCI.into());
    req.compile_scope = CompileScope::Off;
    req
}

async fn run_sci(req: RunRequest) -> Collected {
    sandbox()
        .await
        .start(req)
        .await
        .expect("starts")
        .collect()
        .await
}

/// The run's next event, within `secs` (a run that hangs or vanishes fails the test).
async fn next_event(handle: &mut weir_sandbox::RunHandle, secs: u64) -> weir_sandbox::Event {
    tokio::time::timeout(std::time::Duration::from_secs(secs), handle.next_event())
        .await
        .expect("an event in time")
        .expect("the run lives")
}

fn outcome(out: &Collected) -> Outcome {
    out.result.as_ref().expect("a result").outcome.clone()
}

fn assert_exited(out: &Collected) {
    assert_eq!(
        outcome(out),
        Outcome::Exited { code: 0 },
        "stdout: {}\nstderr: {}",
        out.stdout_text(),
        out.stderr_text()
    );
}

fn is_png(data: &[u8]) -> bool {
    data.starts_with(b"\x89PNG\r\n\x1a\n") && data.len() > 1000
}

#[tokio::test]
async fn a_csv_file_is_grouped_with_pandas_and_printed_as_a_table() {
    let mut req = request(
        "import pandas as pd\n\
         df = pd.read_csv('sales.csv')\n\
         print(df.groupby('region')['amount'].sum().to_string())\n\
         print(pd.__version__)\n",
    );
    req.files = vec![(
        "sales.csv".into(),
        b"region,amount\nnorth,10\nsouth,5\nnorth,2.5\neast,1\nsouth,5\n".to_vec(),
    )];
    let out = run_sci(req).await;
    assert_exited(&out);
    let text = out.stdout_text();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["region"], "{text}");
    assert_eq!(rows[1], ["east", "1.0"], "{text}");
    assert_eq!(rows[2], ["north", "12.5"], "{text}");
    assert_eq!(rows[3], ["south", "10.0"], "{text}");
    assert_eq!(rows[4], ["3.0.6"], "{text}");
    assert_eq!(out.result.unwrap().runtime, SCI);
}

#[tokio::test]
async fn numpy_linear_algebra_scipy_optimize_and_scikit_learn_give_the_right_answers() {
    let out = run_sci(request(
        "import numpy as np\n\
         a = np.array([[3.0, 1.0], [1.0, 2.0]])\n\
         x = np.linalg.solve(a, np.array([9.0, 8.0]))\n\
         print('solve', x.round(6).tolist())\n\
         print('det', round(float(np.linalg.det(a)), 6))\n\
         from scipy.optimize import minimize\n\
         r = minimize(lambda v: (v[0] - 3) ** 2 + (v[1] + 1) ** 2, [0, 0])\n\
         print('min', np.round(r.x, 3).tolist())\n\
         from sklearn.linear_model import LinearRegression\n\
         X = np.arange(20).reshape(-1, 1)\n\
         m = LinearRegression().fit(X, 2 * X.ravel() + 1)\n\
         print('predict', np.round(m.predict([[100]]), 3).tolist())\n",
    ))
    .await;
    assert_exited(&out);
    assert_eq!(
        out.stdout_text(),
        "solve [2.0, 3.0]\ndet 5.0\nmin [3.0, -1.0]\npredict [201.0]\n"
    );
}

#[tokio::test]
async fn plt_show_and_figures_left_open_arrive_as_png_in_order_with_the_output() {
    let out = run_sci(request(
        "import matplotlib.pyplot as plt\n\
         print('one')\n\
         plt.plot([1, 2, 3], [1, 4, 9])\n\
         plt.title('squares')\n\
         plt.show()\n\
         print('two')\n\
         plt.figure(figsize=(4, 3), dpi=50)\n\
         plt.bar(['a', 'b'], [3, 5])\n\
         plt.show()\n\
         plt.figure(figsize=(3, 2), dpi=50)\n\
         plt.bar(['a rather long label %d' % i for i in range(3)], [1, 2, 3])\n\
         plt.xticks(rotation=90)\n",
    ))
    .await;
    assert_exited(&out);
    assert_eq!(out.stdout_text(), "one\ntwo\n");
    assert_eq!(out.displays.len(), 3, "{}", out.stderr_text());
    let (first, second) = (png_of(&out.displays[0]), png_of(&out.displays[1]));
    let third = png_of(&out.displays[2]);
    assert!(is_png(&first.0) && is_png(&second.0) && is_png(&third.0));
    // Cropped to what the figure draws (`bbox_inches="tight"`): smaller than its 640x480 and
    // 200x150 canvas (a figure saved whole is exactly its canvas), and the size in the
    // metadata is the PNG's.
    assert!(first.1 .0 < 640 && first.1 .0 > 400 && first.1 .1 < 480 && first.1 .1 > 300);
    assert!(second.1 .0 < 200 && second.1 .0 > 100 && second.1 .1 < 150);
    // Rotated tick labels reaching below the 150x100 canvas are kept: the image grows to hold
    // them instead of cutting them off.
    assert!(third.1 .1 > 100, "{:?}", third.1);
    assert!(out.displays[0]
        .bundle
        .plain()
        .starts_with("<Figure size 640x480"));
    // The image's bytes counted against the output limit.
    let result = out.result.unwrap();
    assert!(result.output_bytes > (first.0.len() + second.0.len()) as u64);
}

/// A display's PNG, and the width and height its metadata gives (checked against the PNG's).
fn png_of(display: &weir_sandbox::Display) -> (Vec<u8>, (u64, u64)) {
    use base64::Engine as _;
    let data = display.bundle.data["image/png"].as_str().expect("a PNG");
    let png = base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("base64");
    let md = &display.bundle.metadata["image/png"];
    let size = (
        md["width"].as_u64().unwrap(),
        md["height"].as_u64().unwrap(),
    );
    let header = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as u64;
    assert_eq!(size, (header(16), header(20)));
    (png, size)
}

#[tokio::test]
async fn a_figure_larger_than_the_output_limit_ends_the_run_at_the_limit() {
    let mut req = request(
        "import matplotlib.pyplot as plt\n\
         plt.plot(range(100))\n\
         plt.show()\n\
         print('not reached')\n",
    );
    req.limits.output_bytes = 5_000;
    let out = run_sci(req).await;
    assert_eq!(outcome(&out), Outcome::OutputLimit);
    assert!(out.displays.is_empty());
    assert!(!out.stdout_text().contains("not reached"));
}

#[tokio::test]
async fn memory_and_time_limits_hold_inside_numpy() {
    // 7 GB of ones: more than the limit, and than wasm32 can address.
    let mut req = request("import numpy as np\na = np.ones(7 * 10**9 // 8)\nprint(a.sum())\n");
    req.limits.memory_bytes = 512 << 20;
    let out = run_sci(req).await;
    assert_eq!(outcome(&out), Outcome::MemoryLimit, "{}", out.stderr_text());
    // 200 MB within a 256 MiB limit: refused by the limit, not by the address space.
    let mut req = request("import numpy as np\na = np.ones(200 * 2**20 // 8)\nprint(a.sum())\n");
    req.limits.memory_bytes = 128 << 20;
    let out = run_sci(req).await;
    assert_eq!(outcome(&out), Outcome::MemoryLimit, "{}", out.stderr_text());
    // A long loop of matrix products is stopped at its wall-time limit.
    let mut req = request(
        "import numpy as np\na = np.random.rand(300, 300)\nwhile True:\n    a = np.dot(a, a) / 300\n",
    );
    req.limits.wall_ms = 1_500;
    let out = run_sci(req).await;
    assert_eq!(outcome(&out), Outcome::Timeout);
    // The same runtime runs the next program normally.
    let out = run_sci(request(
        "import numpy as np\nprint(int(np.arange(10).sum()))\n",
    ))
    .await;
    assert_exited(&out);
    assert_eq!(out.stdout_text(), "45\n");
}

#[tokio::test]
async fn input_and_a_repl_keep_working_in_python_sci() {
    let mut req = request("import numpy as np\nname = input('name? ')\nv = np.array([1, 2, 3])\n");
    req.close_stdin = false;
    req.repl = true;
    req.stdin = Some(b"ada\nprint(name, int(v.sum()))\nexit()\n".to_vec());
    let out = run_sci(req).await;
    assert_exited(&out);
    let text = out.stdout_text();
    assert!(text.contains("name? "), "{text}");
    assert!(text.contains("ada 6"), "{text}");
}

#[tokio::test]
async fn deterministic_runs_repeat_numpy_randomness_and_other_seeds_differ() {
    let program = "import numpy as np, os, random, time\n\
                   print(np.random.default_rng().random(3).round(8).tolist())\n\
                   print(np.random.rand())\n\
                   print(random.random())\n\
                   print(time.time())\n\
                   s = os.stat('main.py')\n\
                   print(s.st_ino, s.st_dev, s.st_mtime)\n\
                   lib = os.getcwd()\n\
                   l = os.stat(lib)\n\
                   print(l.st_atime, l.st_mtime, l.st_ctime)\n\
                   e = min(os.scandir(lib), key=lambda e: e.name)\n\
                   print(e.inode() == e.stat(follow_symlinks=False).st_ino > 0)\n";
    let sleeps = format!(
        "{program}a = time.monotonic()\n\
         time.sleep(3600)\n\
         print(round(time.monotonic() - a))\n"
    );
    let seeded = |seed| {
        let mut req = request(&sleeps);
        req.deterministic = Some(Seed(seed));
        req
    };
    let a = run_sci(seeded(7)).await;
    let b = run_sci(seeded(7)).await;
    let c = run_sci(seeded(8)).await;
    assert_exited(&a);
    assert_eq!(a.stdout_text(), b.stdout_text());
    assert_ne!(a.stdout_text(), c.stdout_text());
    // The virtual clock starts in 2000.
    assert!(a
        .stdout_text()
        .lines()
        .nth(3)
        .unwrap()
        .starts_with("9466848"));
    // Every file is dated at the virtual clock's start (the host's times differ between machines
    // and change as files are read), and a listing's inodes are the numbers `stat` gives.
    let text = a.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[4].ends_with(" 0 946684800.0"), "{lines:?}");
    assert_eq!(lines[5], "946684800.0 946684800.0 946684800.0");
    assert_eq!(lines[6], "True");
    // A sleep advances the virtual clock and returns at once (a real hour would outlast the
    // run's wall-time limit).
    assert_eq!(lines[7], "3600");
    // Without a seed, two runs draw different numbers.
    let x = run_sci(request(program)).await;
    let y = run_sci(request(program)).await;
    assert_ne!(x.stdout_text(), y.stdout_text());
}

#[tokio::test]
async fn a_run_that_names_no_runtime_goes_to_python_sci_when_it_imports_a_package_only_it_has() {
    let sandbox = sandbox().await;
    for (source, expected) in [
        ("import numpy as np\nprint(np.__name__)\n", SCI),
        ("import os, pandas\nprint(1)\n", SCI),
        ("from matplotlib import pyplot\nprint(1)\n", SCI),
        (
            "if True:\n    from sklearn.linear_model import Ridge\n",
            SCI,
        ),
        ("import json\nprint('numpy')\n", "python"),
        ("x = 'import numpy'\n", "python"),
    ] {
        let mut req = request(source);
        req.runtime = None;
        let handle = sandbox.start(req).await.expect("starts");
        assert_eq!(handle.runtime(), expected, "{source:?}");
        let out = handle.collect().await;
        assert_exited(&out);
    }
}

#[tokio::test]
async fn a_python_sci_run_cannot_mount_directories() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = request("print(1)\n");
    req.mounts = vec![weir_sandbox::Mount {
        host: dir.path().to_path_buf(),
        guest: "/data".into(),
        read_only: true,
    }];
    let err = sandbox().await.start(req).await.err().expect("refused");
    assert!(err.to_string().contains("cannot mount"), "{err}");
}

/// A plot over `/ws` (a `display` notification between the outputs) and `POST /v1/runs` (the
/// `display` list), with the runtime chosen automatically and named in the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plot_arrives_as_png_over_ws_and_v1_runs() {
    let server = server(|_| {}).await;
    server.state.sandbox.prepare(SCI).await.expect("prepares");
    let source = "import matplotlib.pyplot as plt\nprint('a')\nplt.plot([3, 1, 2])\nplt.show()\nprint('b')\n";

    let response = post_json(&server, "/v1/runs", &json!({"source": source})).await;
    let body = response.json();
    assert_eq!(body["outcome"], "exited", "{body}");
    assert_eq!(body["runtime"], SCI);
    assert_eq!(body["stdout"], "a\nb\n");
    let display = body["display"].as_array().expect("a display list");
    assert_eq!(display.len(), 1);
    assert_png_value(&display[0]);

    let mut ws = connect(&server, "").await;
    let run_id = run(&mut ws, 1, json!({"source": source, "filename": "plot.py"})).await;
    let mut order = Vec::new();
    loop {
        let m = recv(&mut ws).await;
        if m["params"]["run_id"] != json!(run_id) {
            continue;
        }
        match m["method"].as_str() {
            Some("output") => order.push(m["params"]["data"].as_str().unwrap().to_string()),
            Some("display") => {
                assert_png_value(&m["params"]);
                order.push("<figure>".into());
            }
            Some("exit") => {
                assert_eq!(m["params"]["outcome"], "exited");
                assert_eq!(m["params"]["runtime"], SCI);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(order.concat(), "a\n<figure>b\n");
    server.shutdown().await;
}

fn assert_png_value(v: &Value) {
    use base64::Engine as _;
    let md = &v["metadata"]["image/png"];
    assert!(
        md["width"].as_u64().is_some_and(|w| w > 400 && w <= 640),
        "{v}"
    );
    assert!(
        md["height"].as_u64().is_some_and(|h| h > 300 && h <= 480),
        "{v}"
    );
    assert!(v["data"]["text/plain"]
        .as_str()
        .unwrap()
        .starts_with("<Figure"));
    let data = base64::engine::general_purpose::STANDARD
        .decode(v["data"]["image/png"].as_str().expect("base64 data"))
        .expect("valid base64");
    assert!(is_png(&data));
}

/// A session in `python-sci`: a DataFrame kept across cells, the last expression's value, and
/// a figure shown by a cell arriving before that cell's end.
#[tokio::test]
async fn a_session_keeps_a_dataframe_across_cells_and_a_cell_shows_its_figure() {
    use weir_sandbox::{Cell, Event};
    let mut req = request("import pandas as pd\n");
    req.close_stdin = false;
    req.cells = true;
    let mut handle = sandbox().await.start(req).await.expect("starts");
    let mut cell = async |code: &str| {
        handle
            .control()
            .send_cell(Cell {
                code: code.into(),
                ..Default::default()
            })
            .expect("the session takes a cell");
        let mut images = 0;
        loop {
            let event = next_event(&mut handle, 60).await;
            match event {
                Event::Display(d) => {
                    assert!(is_png(&png_of(&d).0));
                    images += 1;
                }
                Event::Cell(end) => return (end, images),
                Event::Exit(r) => panic!("the session ended: {r:?}"),
                _ => {}
            }
        }
    };
    let (end, _) = cell("df = pd.DataFrame({'x': [1, 2, 3]})").await;
    assert_eq!(end.value, None);
    let (end, _) = cell("int(df.x.sum())").await;
    assert_eq!(end.value.as_deref(), Some("6"));
    let (end, images) = cell("ax = df.plot(y='x')\nlen(df)").await;
    assert_eq!((end.value.as_deref(), images), (Some("3"), 1));
    let (end, _) = cell("df.nope").await;
    assert_eq!(end.exception.expect("an error").type_name, "AttributeError");
}

/// A python-sci run whose client names no memory limit gets the runtime's own 1 GiB, not the
/// server's 256 MiB default; one that names a limit gets it; an operator's
/// `[runtimes.python-sci] memory_mb` (here by the alias `sci`) replaces the runtime's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_sci_run_gets_a_gigabyte_unless_it_asks_for_less() {
    let server = server(|_| {}).await;
    server.state.sandbox.prepare(SCI).await.expect("prepares");
    let source = "import numpy as np\na = np.ones(400 * 2**20 // 8)\nprint(a.nbytes >> 20)\n";
    let body = post_json(&server, "/v1/runs", &json!({"source": source}))
        .await
        .json();
    assert_eq!(body["outcome"], "exited", "{body}");
    assert_eq!(body["stdout"], "400\n");
    let limited = json!({"source": source, "limits": {"memory_bytes": 256 << 20}});
    let body = post_json(&server, "/v1/runs", &limited).await.json();
    assert_eq!(body["outcome"], "memory_limit", "{body}");
    server.shutdown().await;
    let configured = crate::ws::server(|c| {
        c.runtimes.insert(
            "sci".into(),
            weir_service::config::RuntimeSettings {
                memory_mb: Some(300),
            },
        );
    })
    .await;
    let body = post_json(&configured, "/v1/runs", &json!({"source": source}))
        .await
        .json();
    assert_eq!(body["outcome"], "memory_limit", "{body}");
    configured.shutdown().await;
}

/// Pause, resume and stop work on a python-sci run busy in numpy, as on any run.
#[tokio::test]
async fn a_busy_python_sci_run_pauses_resumes_and_stops() {
    use std::time::Duration;
    use weir_sandbox::{Event, RunState};
    let mut req = request(
        "import numpy as np\na = np.ones((200, 200))\nn = 0\nwhile True:\n    a = a @ a / 200\n    n += 1\n    if n % 20 == 0:\n        print(n, flush=True)\n",
    );
    req.limits.wall_ms = 60_000;
    let mut handle = sandbox().await.start(req).await.expect("starts");
    let control = handle.control();
    let mut next = async || next_event(&mut handle, 30).await;
    while !matches!(next().await, Event::Output { .. }) {}
    control.pause();
    while !matches!(next().await, Event::State(RunState::Paused)) {}
    // Paused: nothing more is printed (output already queued may still arrive first).
    tokio::time::sleep(Duration::from_millis(300)).await;
    control.resume();
    while !matches!(next().await, Event::State(RunState::Running)) {}
    while !matches!(next().await, Event::Output { .. }) {}
    control.stop();
    let result = loop {
        if let Event::Exit(result) = next().await {
            break result;
        }
    };
    assert_eq!(result.outcome, Outcome::Stopped);
}

/// `KeyboardInterrupt` reaches running python-sci code as it does the lean runtime's: a busy
/// loop in a session's cell ends with it and the session keeps its arrays; a script's busy loop
/// ends with it as its outcome.
#[tokio::test]
async fn an_interrupt_raises_keyboard_interrupt_in_python_sci_and_the_session_keeps_its_arrays() {
    use weir_sandbox::{Cell, CellEnd, Event};
    let mut req = request("import numpy as np\n");
    req.close_stdin = false;
    req.cells = true;
    let mut handle = sandbox().await.start(req).await.expect("starts");
    let control = handle.control();
    let mut cell = async |code: &str, mut interrupt: bool| -> CellEnd {
        control
            .send_cell(Cell {
                code: code.into(),
                ..Default::default()
            })
            .expect("the session takes a cell");
        loop {
            let event = next_event(&mut handle, 60).await;
            match event {
                Event::Output { .. } if interrupt => {
                    assert!(control.interrupt());
                    interrupt = false;
                }
                Event::Cell(end) => return end,
                Event::Exit(r) => panic!("the session ended: {r:?}"),
                _ => {}
            }
        }
    };
    assert_eq!(cell("a = np.arange(10)", false).await.exception, None);
    let end = cell(
        // 'ready' once the loop has run: the interrupt cannot beat its first steps.
        "n = 0\nwhile True:\n    n += 1\n    if n == 1000:\n        print('ready', flush=True)",
        true,
    )
    .await;
    assert_eq!(
        end.exception.map(|e| e.type_name).as_deref(),
        Some("KeyboardInterrupt")
    );
    let end = cell("int(a.sum()) + (n > 0)", false).await;
    assert_eq!(end.value.as_deref(), Some("46"));

    let mut req = request("print('ready', flush=True)\nwhile True:\n    pass\n");
    req.limits.wall_ms = 60_000;
    let mut handle = sandbox().await.start(req).await.expect("starts");
    let run = handle.control();
    let mut interrupted = false;
    let result = loop {
        let event = next_event(&mut handle, 60).await;
        match event {
            Event::Output { .. } if !interrupted => {
                assert!(run.interrupt());
                interrupted = true;
            }
            Event::Exit(result) => break result,
            _ => {}
        }
    };
    assert!(
        matches!(result.outcome, Outcome::Error { ref exception, .. } if exception == "KeyboardInterrupt"),
        "{:?}",
        result.outcome
    );
}

/// An interrupt while a python-sci program waits in `input()` raises there at once.
#[tokio::test]
async fn an_interrupt_at_input_raises_keyboard_interrupt_in_python_sci() {
    use weir_sandbox::{Event, RunState};
    let mut req = request("x = input()\nprint('not reached')\n");
    req.close_stdin = false;
    req.limits.wall_ms = 60_000;
    let mut handle = sandbox().await.start(req).await.expect("starts");
    let run = handle.control();
    let mut interrupted = false;
    let (result, stdout) = {
        let mut stdout = Vec::new();
        let result = loop {
            let event = next_event(&mut handle, 60).await;
            match event {
                Event::State(RunState::WaitingInput) if !interrupted => {
                    assert!(run.interrupt());
                    interrupted = true;
                }
                Event::Output { data, .. } => stdout.extend_from_slice(&data),
                Event::Exit(result) => break result,
                _ => {}
            }
        };
        (result, stdout)
    };
    assert!(
        matches!(result.outcome, Outcome::Error { ref exception, .. } if exception == "KeyboardInterrupt"),
        "{:?}",
        result.outcome
    );
    assert!(!String::from_utf8_lossy(&stdout).contains("not reached"));
}

/// An interrupt ends a python-sci `time.sleep` at once, where the program can catch it.
#[tokio::test]
async fn an_interrupt_ends_a_sleep_at_once_in_python_sci() {
    use std::time::Duration;
    use weir_sandbox::Event;
    let mut req = request(
        "import time\nprint('ready', flush=True)\ntry:\n    time.sleep(60)\n    print('slept')\nexcept KeyboardInterrupt:\n    print('interrupted')\nprint('after')\n",
    );
    req.limits.wall_ms = 120_000;
    let mut handle = sandbox().await.start(req).await.expect("starts");
    let run = handle.control();
    let mut stdout = String::new();
    let mut asked = None;
    let result = loop {
        let event = next_event(&mut handle, 90).await;
        match event {
            Event::Output { data, .. } => {
                stdout.push_str(&String::from_utf8_lossy(&data));
                if asked.is_none() && stdout.contains("ready") {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    assert!(run.interrupt());
                    asked = Some(std::time::Instant::now());
                }
            }
            Event::Exit(result) => break result,
            _ => {}
        }
    };
    assert!(
        asked.is_some_and(|t| t.elapsed() < Duration::from_secs(30)),
        "the sleep was not cut short"
    );
    assert_eq!(stdout, "ready\ninterrupted\nafter\n");
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
}

/// `time.sleep` waits as long as it is asked to, however long the process has been up: the
/// guest's monotonic readings and the deadlines WASI waits for are one clock.
#[tokio::test]
async fn sleeps_in_python_sci_last_as_asked() {
    let sandbox = sandbox().await;
    // The process's clock has been read for a while (another run, a pause) before this one.
    let _ = run_sci(request("import time\ntime.sleep(0.2)")).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut req = request(
        "import time\nt = time.monotonic()\nfor _ in range(20):\n    time.sleep(0.01)\n\
         print(round(time.monotonic() - t, 1) < 2)",
    );
    req.limits.wall_ms = 5_000;
    let out = sandbox.start(req).await.expect("starts").collect().await;
    assert_eq!(
        out.outcome(),
        Outcome::Exited { code: 0 },
        "{}",
        out.stderr_text()
    );
    assert_eq!(out.stdout_text(), "True\n");
}

/// Interrupts racing short cells reach the cells' code or nothing in python-sci too: the
/// session lives through them and runs no cell twice.
#[tokio::test]
async fn interrupts_racing_short_cells_never_end_a_python_sci_session() {
    let settings = EngineSettings {
        max_instances: 4,
        epoch_tick: std::time::Duration::from_micros(20),
        ..EngineSettings::default()
    };
    let sandbox = Sandbox::load(settings).expect("sandbox loads");
    sandbox.prepare(SCI).await.expect("python-sci prepares");
    let mut req = request("");
    req.cells = true;
    req.close_stdin = false;
    let mut handle = sandbox.start(req).await.expect("starts");
    let control = handle.control();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = std::thread::spawn({
        let (control, stop) = (control.clone(), stop.clone());
        move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                control.interrupt();
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
    });
    let mut ends = Vec::new();
    let mut printed: Vec<u8> = Vec::new();
    for i in 0..80u64 {
        let code = format!(
            "n = globals().get('n', 0)\nfor _ in range({}): pass\nn += 1",
            (i * 997) % 30_000
        );
        control
            .send_cell(weir_sandbox::Cell {
                code,
                ..Default::default()
            })
            .expect("the session takes a cell");
        let end = loop {
            match next_event(&mut handle, 60).await {
                weir_sandbox::Event::Cell(end) => break end,
                weir_sandbox::Event::Exit(result) => panic!(
                    "the session ended at cell {i}: {result:?}\n{}",
                    String::from_utf8_lossy(&printed)
                ),
                weir_sandbox::Event::Output { data, .. } => printed.extend_from_slice(&data),
                _ => {}
            }
        };
        ends.push(end);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hammer.join().unwrap();
    let interrupted = ends.iter().filter(|e| e.exception.is_some()).count();
    assert!(ends
        .iter()
        .filter_map(|e| e.exception.as_ref())
        .all(|e| e.type_name == "KeyboardInterrupt"));
    assert!(
        interrupted > 0,
        "no interrupt landed: the test proves nothing"
    );
}

/// A python-sci session's cell that calls `sys.exit` ends the session with its status, after
/// its exit handlers; one that catches its own `exit()` goes on, and so does the session.
#[tokio::test]
async fn a_cell_that_exits_ends_a_python_sci_session_and_one_that_catches_it_does_not() {
    use weir_sandbox::Cell;
    let mut req = request("import atexit\natexit.register(print, 'handlers ran')\n");
    req.close_stdin = false;
    req.cells = true;
    let mut handle = sandbox().await.start(req).await.expect("starts");
    let mut printed = String::new();
    for code in [
        "try:\n    exit(4)\nexcept SystemExit:\n    print('caught')",
        "import sys\nsys.stdin.close()",
        "print('still here')",
    ] {
        let (stdout, stderr, end) = crate::interrupt::cell(&mut handle, code).await;
        assert!(end.exception.is_none(), "{end:?}");
        printed.push_str(&stdout);
        printed.push_str(&stderr);
    }
    assert_eq!(printed, "caught\nstill here\n");
    handle
        .control()
        .send_cell(Cell {
            code: "import sys\nprint('bye')\nsys.exit(3)".into(),
            ..Default::default()
        })
        .expect("the session takes a cell");
    let out = handle.collect().await;
    assert_eq!(out.stdout_text(), "bye\nhandlers ran\n");
    assert_eq!(outcome(&out), Outcome::Exited { code: 3 });
}
