//! `weir run` as a terminal user sees it: exit codes, stdio, flags, mounts.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::wheel;
use wheel::greet_wheel;

fn weir(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env_remove("WEIR_TIMEOUT")
        .env_remove("WEIR_MEMORY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir starts");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("stdin written");
    drop(input);
    child.wait_with_output().expect("weir ends")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn script(dir: &tempfile::TempDir, name: &str, source: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, source).expect("script written");
    path.to_string_lossy().into_owned()
}

#[test]
fn runs_a_script_with_args_and_exits_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let path = script(
        &dir,
        "prog.py",
        "import sys\nprint(sys.argv)\nsys.exit(3)\n",
    );
    let out = weir(&["run", &path, "one", "--two"], b"");
    assert_eq!(text(&out.stdout), "['prog.py', 'one', '--two']\n");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn uncaught_exception_exits_one_with_the_traceback() {
    let out = weir(&["run", "-c", "raise ValueError('bad')"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\nValueError: bad\n"
    );
}

#[test]
fn input_reads_piped_stdin() {
    let out = weir(
        &[
            "run",
            "-c",
            "a = input('a? ')\nb = input('b? ')\nprint(int(a) + int(b))",
        ],
        b"2\n40\n",
    );
    assert_eq!(text(&out.stdout), "a? b? 42\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn binary_stdout_is_unchanged() {
    let out = weir(
        &[
            "run",
            "-c",
            "import sys; sys.stdout.buffer.write(bytes([0, 255, 10, 13, 128]))",
        ],
        b"",
    );
    assert_eq!(out.stdout, vec![0, 255, 10, 13, 128]);
}

#[test]
fn limits_have_fixed_exit_codes_and_a_message() {
    let out = weir(
        &["run", "--timeout", "500ms", "-c", "while True: pass"],
        b"",
    );
    assert_eq!(out.status.code(), Some(124));
    assert_eq!(
        text(&out.stderr),
        "weir: Script exceeded its 500 ms time limit\n"
    );

    let out = weir(
        &["run", "--memory", "64MiB", "-c", "x = bytearray(10**9)"],
        b"",
    );
    assert_eq!(out.status.code(), Some(137));
    assert!(text(&out.stderr).ends_with("weir: Script exceeded its 64 MiB memory limit\n"));

    let out = weir(
        &[
            "run",
            "--output-limit",
            "1KiB",
            "-c",
            "while True: print('spam')",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(141));
    assert!(text(&out.stdout).ends_with("[output truncated: the script wrote more than 1 KiB]\n"));
}

#[test]
fn limits_can_come_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "-c", "import time; time.sleep(100)"])
        .env("WEIR_TIMEOUT", "300ms")
        .stdin(Stdio::null())
        .output()
        .expect("weir runs");
    assert_eq!(out.status.code(), Some(124));
}

#[test]
fn the_script_sees_only_its_scratch_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "host data").unwrap();
    let path = script(
        &dir,
        "look.py",
        "import os\nprint(os.getcwd(), sorted(os.listdir('.')))\n",
    );
    let out = weir(&["run", &path], b"");
    assert_eq!(text(&out.stdout), "/sandbox ['look.py']\n");
}

#[test]
fn dir_mounts_a_host_directory_read_only_on_request() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("in.txt"), "from host").unwrap();
    let root = std::fs::canonicalize(data.path()).unwrap();
    let root = root.to_string_lossy();
    let code = format!(
        "print(open('{root}/in.txt').read())\ntry:\n    open('{root}/out.txt', 'w')\nexcept OSError as e:\n    print('read-only', type(e).__name__)"
    );
    let out = weir(&["run", "--dir", &format!("{root}:ro"), "-c", &code], b"");
    assert_eq!(
        text(&out.stdout),
        "from host\nread-only PermissionError\n",
        "{}",
        text(&out.stderr)
    );
    assert!(!data.path().join("out.txt").exists());

    let code = format!("open('{root}/out.txt', 'w').write('written')");
    let out = weir(&["run", "--dir", &root, "-c", &code], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(data.path().join("out.txt")).unwrap(),
        "written"
    );
}

#[test]
fn repl_flag_starts_a_console_after_the_script() {
    let out = weir(&["run", "-i", "-c", "x = 20"], b"print(x * 2)\n");
    assert_eq!(text(&out.stdout), ">>> 40\n>>> ");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn bad_usage_gets_a_clear_error() {
    let out = weir(&["run", "/nonexistent/script.py"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/script.py"));
    let out = weir(&["run", "--timeout", "soon", "-c", "pass"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("invalid duration"));
}

#[test]
fn serve_answers_health_checks_and_exits_zero_on_sigterm() {
    use std::io::{BufRead, BufReader, Read};
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("WEIR_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir serve starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("stderr readable") > 0,
            "serve exited early"
        );
        if let Some(rest) = line.trim().strip_prefix("weir: listening on http://") {
            break rest.split_whitespace().next().expect("address").to_string();
        }
    };
    let mut stream = std::net::TcpStream::connect(&addr).expect("connects");
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");
    // SAFETY: sending SIGTERM to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("serve exits");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn token_mints_a_token_the_server_accepts() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["token", "--user", "ada", "--ttl", "1h"])
        .env("WEIR_SECRET", "s3cret")
        .output()
        .expect("weir token runs");
    assert_eq!(out.status.code(), Some(0));
    let token = text(&out.stdout).trim().to_string();
    assert_eq!(
        weir_service::auth::verify(b"s3cret", &token)
            .ok()
            .as_deref(),
        Some("ada")
    );
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["token", "--user", "ada"])
        .env_remove("WEIR_SECRET")
        .output()
        .expect("weir token runs");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing secret is a usage error"
    );
}

#[test]
fn bad_user_names_and_huge_durations_are_usage_errors_not_panics() {
    let token = |user: &str, ttl: &str| {
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["token", "--user", user, "--ttl", ttl])
            .env("WEIR_SECRET", "s3cret")
            .output()
            .expect("weir token runs")
    };
    for (user, ttl) in [
        ("", "1h"),
        ("ada\nforged", "1h"),
        ("anonymous", "1h"),
        ("ada", "1e20"),
    ] {
        let out = token(user, ttl);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{user:?} {ttl}: {}",
            text(&out.stderr)
        );
        assert!(
            !text(&out.stderr).contains("panicked"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = weir(&["run", "--timeout", "1e20", "-c", "print(1)"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "-c", "print(1)"])
        .env("WEIR_TIMEOUT", "1e300")
        .output()
        .expect("weir runs");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("10 years"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn runtimes_are_listed_and_chosen_by_name_or_alias() {
    let out = weir(&["runtimes"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    let first = listing.lines().nth(1).unwrap_or_default();
    assert!(
        first.starts_with("python ") && first.contains("3.14.0") && first.ends_with("(default)"),
        "{listing}"
    );
    for name in ["python", "py", "python3"] {
        let out = weir(&["run", "--runtime", name, "-c", "print(6 * 7)"], b"");
        assert_eq!(text(&out.stdout), "42\n", "--runtime {name}");
        assert_eq!(out.status.code(), Some(0));
    }
    let out = weir(&["run", "--runtime", "cobol", "-c", "print(1)"], b"");
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = text(&out.stderr);
    assert!(err.contains("cobol") && err.contains("python"), "{err}");
    assert_eq!(text(&out.stdout), "");
    let sci = listing.lines().nth(2).unwrap_or_default();
    assert!(
        sci.starts_with("python-sci ") && sci.contains("3.15.0") && sci.contains("sci"),
        "{listing}"
    );
}

#[test]
fn weir_run_writes_the_figures_a_python_sci_script_shows_next_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = script(
        &dir,
        "chart.py",
        "import numpy as np\nimport matplotlib.pyplot as plt\n\
         plt.plot(np.arange(5) ** 2)\nplt.show()\nprint('shown')\nplt.figure()\nplt.bar([1, 2], [2, 1])\n",
    );
    // No --runtime: the imports choose python-sci.
    let out = weir(&["run", &path], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "shown\n");
    let err = text(&out.stderr);
    for n in [1, 2] {
        let png = dir.path().join(format!("chart-{n}.png"));
        let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}\n{err}", png.display()));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{}", png.display());
        assert!(
            err.contains(&format!("saved to {}", png.display())),
            "{err}"
        );
    }
}

#[test]
fn ctrl_c_raises_keyboard_interrupt_in_the_script_as_python_does() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().unwrap();
    let path = script(
        &dir,
        "loop.py",
        "print('ready', flush=True)\nn = 0\nwhile True:\n    n += 1\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", &path])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir run starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("stdout readable");
    assert_eq!(line, "ready\n");
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().expect("weir run exits");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("line 4, in <module>"), "{err}");
    assert!(err.ends_with("KeyboardInterrupt\n"), "{err}");
    assert_eq!(status.code(), Some(130));
}

#[test]
fn an_operators_pure_python_package_imports_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    let site = site.to_str().unwrap();
    let wheel = greet_wheel(dir.path());
    let out = weir(&["packages", "add", &wheel, "--dir", site], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("installed greet==1.0 for python (sha256:"));
    // Compiled by the guest itself: runs load bytecode of their own CPython.
    for module in ["__init__", "big"] {
        let pyc = format!("site/python/greet/__pycache__/{module}.cpython-314.pyc");
        assert!(dir.path().join(pyc).exists(), "{module} compiled");
    }
    let listed = weir(&["packages", "list", "--dir", site], b"");
    assert!(text(&listed.stdout).starts_with("greet==1.0\tgreet-1.0-py3-none-any.whl\tsha256:"));
    let run = weir(
        &[
            "run",
            "--packages",
            site,
            "-c",
            "import greet\nprint(greet.hello('ada'))\nopen('/packages/x', 'w')",
        ],
        b"",
    );
    assert_eq!(text(&run.stdout), "hello, ada\n");
    assert!(
        text(&run.stderr).contains("PermissionError"),
        "{}",
        text(&run.stderr)
    );
    let without = weir(
        &["run", "--packages", "/nonexistent", "-c", "import greet"],
        b"",
    );
    assert!(text(&without.stderr).contains("ModuleNotFoundError"));
}

#[test]
fn an_operators_package_imports_in_python_sci_too() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    let site = site.to_str().unwrap();
    let wheel = greet_wheel(dir.path());
    let args = [
        "packages",
        "add",
        &wheel,
        "--dir",
        site,
        "--runtime",
        "python-sci",
    ];
    let out = weir(&args, b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("installed greet==1.0 for python-sci (sha256:"));
    let pyc = "site/python-sci/greet/__pycache__/__init__.cpython-315.pyc";
    assert!(
        dir.path().join(pyc).exists(),
        "compiled by python-sci's CPython"
    );
    let code = "import greet, numpy\nprint(greet.hello('ada'), numpy.__version__)";
    let run = weir(&["run", "--packages", site, "-c", code], b"");
    assert_eq!(
        text(&run.stdout),
        "hello, ada 2.5.2\n",
        "{}",
        text(&run.stderr)
    );
    // Not in the other runtime's site.
    let lean = weir(
        &[
            "run",
            "--packages",
            site,
            "--runtime",
            "python",
            "-c",
            "import greet",
        ],
        b"",
    );
    assert!(text(&lean.stderr).contains("ModuleNotFoundError"));
}

#[test]
fn a_native_or_unpinned_package_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let native = dir
        .path()
        .join("fast-1.0-cp311-cp311-manylinux_2_17_x86_64.whl");
    std::fs::write(&native, b"not installed").unwrap();
    let site = dir.path().join("site");
    let out = weir(
        &[
            "packages",
            "add",
            native.to_str().unwrap(),
            "--dir",
            site.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(
            "only a native wheel exists (fast-1.0-cp311-cp311-manylinux_2_17_x86_64.whl)"
        ),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !site.join("python/weir-packages.json").exists(),
        "nothing installed"
    );
    let out = weir(
        &[
            "packages",
            "add",
            "tabulate",
            "--dir",
            site.to_str().unwrap(),
        ],
        b"",
    );
    assert!(
        text(&out.stderr).contains("pin a version, NAME==VERSION"),
        "{}",
        text(&out.stderr)
    );
}

/// A wheel `NAME-1.0-py3-none-any.whl` in `dir` holding `members` (name → text), made with
/// the host's Python; `extra` is more Python run with `z` open (for members made in bulk).
fn wheel_of(dir: &std::path::Path, name: &str, members: &[(&str, &str)], extra: &str) -> String {
    let wheel = dir.join(format!("{name}-1.0-py3-none-any.whl"));
    let members = serde_json::to_string(&members).unwrap();
    let made = std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import sys, json, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n    \
                 for n, t in json.loads(sys.argv[2]):\n        z.writestr(n, t)\n    {extra}\n"
            ),
        ])
        .arg(&wheel)
        .arg(&members)
        .status()
        .expect("python3 runs");
    assert!(made.success());
    wheel.to_string_lossy().into_owned()
}

/// Installs are all or nothing, and a wheel is checked before any of it is written: native
/// modules, the manifest's name, stdlib names, too many members or bytes are refused by name,
/// and a wheel whose module does not compile leaves the site as it was.
#[test]
fn package_installs_are_checked_and_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    let site = site.to_str().unwrap();
    let greet = greet_wheel(dir.path());
    let out = weir(&["packages", "add", &greet, "--dir", site], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let manifest = std::fs::read(dir.path().join("site/python/weir-packages.json")).unwrap();
    let refused = [
        (
            wheel_of(dir.path(), "fast", &[("fast/_speed.so", "ELF")], "pass"),
            "native extension module",
        ),
        (
            wheel_of(
                dir.path(),
                "sneaky",
                &[("weir-packages.json", "[]")],
                "pass",
            ),
            "would overwrite the site's manifest",
        ),
        (
            wheel_of(
                dir.path(),
                "shadow",
                &[("this.py", "print('owned')")],
                "pass",
            ),
            "would shadow the standard library's this",
        ),
        (
            wheel_of(
                dir.path(),
                "many",
                &[],
                "[z.writestr('many/m%d.py' % i, '') for i in range(10001)]",
            ),
            "more than 10000",
        ),
        (
            wheel_of(
                dir.path(),
                "bomb",
                &[],
                "z.writestr('bomb/data.txt', '0' * (257 << 20))",
            ),
            "more than 268435456",
        ),
        (
            wheel_of(
                dir.path(),
                "broken",
                &[("broken/__init__.py", "def (:\n")],
                "pass",
            ),
            "compiling the site's modules failed",
        ),
    ];
    for (wheel, reason) in &refused {
        let out = weir(&["packages", "add", &greet, wheel, "--dir", site], b"");
        assert_eq!(out.status.code(), Some(1), "{wheel}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(reason),
            "{wheel}: {}",
            text(&out.stderr)
        );
        assert_eq!(
            std::fs::read(dir.path().join("site/python/weir-packages.json")).unwrap(),
            manifest,
            "{wheel} changed the site"
        );
    }
    for gone in ["fast", "sneaky", "this.py", "many", "bomb", "broken"] {
        assert!(
            !dir.path().join("site/python").join(gone).exists(),
            "{gone} left behind"
        );
    }
    // The site still works, and a later good add does too.
    let ok = wheel_of(
        dir.path(),
        "tool",
        &[("tool/__init__.py", "X = 7\n")],
        "pass",
    );
    let out = weir(&["packages", "add", &ok, "--dir", site], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let run = weir(
        &["run", "--packages", site, "-c", "import greet, tool, this"],
        b"",
    );
    assert!(
        text(&run.stdout).contains("The Zen of Python"),
        "{}",
        text(&run.stderr)
    );
}
