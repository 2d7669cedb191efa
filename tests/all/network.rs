//! Network egress: a run's `urllib.request` and `http.client` reach the hosts the operator allows
//! (`[network] allow`), through the host, against a real HTTP API (`tests/network/server.py`);
//! secrets reach their hosts only, never the run, its output, its transcript or its history;
//! names resolving to loopback, redirects to the metadata address, other hosts, response bombs,
//! hanging servers and too many requests are each a clear `URLError` and the run goes on.

use crate::tools::Receiver;
use crate::ws::{http_get, post_json, server};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SECRET: &str = "ghp_s3cr3t-t0ken-that-must-not-leak";

fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn api() -> Receiver {
    Receiver::spawn("tests/network/server.py", &[])
}

/// `stdout` of a one-shot run of `source` (with `extra` request fields), and the run's id.
async fn run(server: &weir_service::RunningServer, source: &str, extra: Value) -> (String, Value) {
    let mut body = json!({ "source": source });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let r = post_json(server, "/v1/runs", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.json();
    assert_eq!(answer["stderr"], "", "{answer}");
    (
        answer["stdout"].as_str().unwrap_or_default().to_string(),
        answer,
    )
}

/// The history's record of run `id`.
async fn record(server: &weir_service::RunningServer, id: &Value) -> Value {
    let id = id.as_str().expect("a run id");
    let (status, body) = http_get(server, &format!("/v1/runs/{id}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("a JSON record")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hosts_are_reached_with_secrets_filled_in_for_their_hosts_only() {
    let (a, b) = (api(), api());
    let (pa, pb) = (a.1, b.1);
    let server = server(move |c| {
        c.network.allow = vec![format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}")];
        c.secrets.insert(
            "API_KEY".into(),
            weir_egress::SecretConfig {
                value: Some(SECRET.into()),
                value_env: None,
                hosts: vec![format!("127.0.0.1:{pa}")],
            },
        );
    })
    .await;
    let code = format!(
        r#"import http.client, json, os, urllib.request
key = os.environ["API_KEY"]
print(key)
def get(url, **kw):
    with urllib.request.urlopen(urllib.request.Request(url, **kw)) as r:
        return r.status, r.headers, json.loads(r.read())
status, headers, seen = get("http://127.0.0.1:{pa}/repos?page=2", headers={{"Authorization": "Bearer " + key}})
print(status, seen["method"], seen["path"], seen["host"], seen["auth"], headers["X-Echo-Auth"])
print("A got", seen["auth_sha256"])
status, headers, seen = get("http://127.0.0.1:{pb}/elsewhere", headers={{"Authorization": "Bearer " + key}})
print("B got", seen["auth_sha256"])
status, headers, seen = get("http://127.0.0.1:{pa}/upload", data=bytes(range(256)) * 4000, method="POST")
print(status, seen["method"], seen["body_bytes"], seen["body_sha256"])
status, headers, seen = get("http://127.0.0.1:{pa}/redirect?to=/landed")
print(status, seen["path"])
c = http.client.HTTPConnection("127.0.0.1", {pa})
peers = set()
for path in ("/one", "/two"):
    c.request("GET", path)
    r = c.getresponse()
    seen = json.loads(r.read())
    peers.add(seen["peer_port"])
    print(r.status, seen["path"])
print("a connection each:", len(peers) == 2)
"#
    );
    let (stdout, answer) = run(&server, &code, json!({"record": true})).await;
    let body = hex::encode(Sha256::digest(
        (0..=255u8).cycle().take(256 * 4000).collect::<Vec<_>>(),
    ));
    assert_eq!(
        stdout,
        format!(
            "weir-secret:API_KEY\n\
             200 GET /repos?page=2 127.0.0.1:{pa} Bearer weir-secret:API_KEY Bearer weir-secret:API_KEY\n\
             A got {}\n\
             B got {}\n\
             200 POST 1024000 {body}\n\
             200 /landed\n\
             200 /one\n\
             200 /two\n\
             a connection each: True\n",
            sha256(&format!("Bearer {SECRET}")),
            sha256("Bearer weir-secret:API_KEY"),
        ),
        "the secret reached its host only, and came back as its placeholder"
    );
    let id = &answer["run_id"];
    let history = record(&server, id).await;
    let requests = history["network"].as_array().expect("the requests");
    let seen: Vec<(String, u64, u64)> = requests
        .iter()
        .map(|r| {
            let field = |k: &str| r[k].as_u64().unwrap_or(0);
            (
                r["method"].as_str().unwrap_or("").into(),
                field("port"),
                field("status"),
            )
        })
        .collect();
    let want = [
        ("GET", pa, 200),
        ("GET", pb, 200),
        ("POST", pa, 200),
        ("GET", pa, 302),
        ("GET", pa, 200),
        ("GET", pa, 200),
        ("GET", pa, 200),
    ];
    let want: Vec<(String, u64, u64)> = want
        .iter()
        .map(|(m, p, s)| (m.to_string(), *p as u64, *s))
        .collect();
    assert_eq!(seen, want, "{history}");
    assert!(requests.iter().all(|r| r["host"] == "127.0.0.1"));
    let transcript = http_get(
        &server,
        &format!("/v1/runs/{}/transcript", id.as_str().unwrap_or("")),
    )
    .await;
    assert_eq!(transcript.0, 200);
    for (what, text) in [
        ("output", stdout.as_str()),
        ("history", &history.to_string()),
        ("transcript", &transcript.1),
    ] {
        assert!(!text.contains(SECRET), "the secret is in the {what}");
    }
    // The transcript holds the responses: it replays with both APIs gone and no network at all.
    drop((a, b));
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("network.json");
    std::fs::write(&path, &transcript.1).expect("the transcript is written");
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("replay")
        .arg(&path)
        .output()
        .expect("weir replay runs");
    assert!(
        replay.status.success(),
        "{}{}",
        String::from_utf8_lossy(&replay.stdout),
        String::from_utf8_lossy(&replay.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_destinations_bombs_hangs_and_floods_are_clear_errors_and_the_run_goes_on() {
    let api = api();
    let port = api.1;
    let server = server(move |c| {
        c.network.allow = vec![format!("127.0.0.1:{port}"), "*".into()];
        c.network.max_response_bytes = 1 << 20;
        c.network.timeout_ms = 1_000;
        c.network.max_requests = 11;
    })
    .await;
    let code = format!(
        r#"import urllib.request, urllib.error, weir
def get(url):
    try:
        with urllib.request.urlopen(url) as r:
            return "%d %d bytes" % (r.status, len(r.read()))
    except urllib.error.URLError as e:
        assert isinstance(e.reason, weir.NetworkError), repr(e.reason)
        return "NetworkError: %s" % e.reason
for url in [
    "http://localhost:{port}/",
    "http://127.0.0.1:{port}/redirect?to=http://169.254.169.254/latest/meta-data/",
    "http://[::1]:{port}/",
    "http://10.0.0.1/",
    "http://127.0.0.1:1/",
    "http://127.0.0.1:{port}/big?bytes=900000",
    "http://127.0.0.1:{port}/big?bytes=50000000",
    "http://127.0.0.1:{port}/slow?ms=5000",
    "http://127.0.0.1:{port}/ok",
    "http://127.0.0.1:{port}/ok",
    "http://127.0.0.1:{port}/ok",
    "http://127.0.0.1:{port}/ok",
]:
    print(get(url))
print("still here")
"#
    );
    let (stdout, answer) = run(&server, &code, json!({})).await;
    // Each redirect followed is a request of its own: 13 requests, 11 allowed.
    let ok = "200 ".to_string();
    let expected = [
        "NetworkError: localhost is ".into(),
        "NetworkError: 169.254.169.254 is 169.254.169.254, a link-local address (where cloud metadata services answer): reachable only through an allowlist entry naming 169.254.169.254:80 exactly".into(),
        format!("NetworkError: [::1] is ::1, a loopback address: reachable only through an allowlist entry naming [::1]:{port} exactly"),
        "NetworkError: 10.0.0.1 is 10.0.0.1, a private address: reachable only through an allowlist entry naming 10.0.0.1:80 exactly".into(),
        "NetworkError: 127.0.0.1 is 127.0.0.1, a loopback address: reachable only through an allowlist entry naming 127.0.0.1:1 exactly".into(),
        "200 900000 bytes".into(),
        "NetworkError: 127.0.0.1: a response over the run's 1048576-byte limit".into(),
        "NetworkError: 127.0.0.1: no whole response within 1000 ms".into(),
        ok.clone(),
        ok.clone(),
        "NetworkError: the run's 11 network requests are used up".into(),
        "NetworkError: the run's 11 network requests are used up".into(),
        "still here".into(),
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{stdout}");
    for (got, want) in lines.iter().zip(&expected) {
        match want.as_str() {
            // An echo's length, or which of localhost's addresses (127.0.0.1, ::1) came first.
            "200 " | "NetworkError: localhost is " => {
                assert!(got.starts_with(want.as_str()), "{got}")
            }
            _ => assert_eq!(got, want),
        }
    }
    assert!(
        lines[0].ends_with(&format!(
            "a loopback address: reachable only through an allowlist entry naming localhost:{port} exactly"
        )),
        "{}",
        lines[0]
    );
    let history = record(&server, &answer["run_id"]).await;
    let requests = history["network"].as_array().expect("requests");
    assert_eq!(
        requests.len(),
        11,
        "refused ones too, up to the limit: {history}"
    );
    assert_eq!(requests[1]["status"], 302, "{history}");
    assert!(
        requests[7]["bytes"].as_u64().unwrap_or(0) > 1 << 20,
        "{history}"
    );
    assert!(
        requests[7]["error"]
            .as_str()
            .unwrap_or("")
            .contains("1048576-byte"),
        "{history}"
    );

    // A run narrows the operator's list and cannot widen it.
    let code = format!(
        "import urllib.request\nfor u in ['http://127.0.0.1:{port}/', 'http://10.0.0.1:80/']:\n    \
         try:\n        urllib.request.urlopen(u)\n    except OSError as e:\n        print(e.reason)\n"
    );
    let (stdout, _) = run(
        &server,
        &code,
        json!({"network": ["example.org", "10.0.0.1:80"]}),
    )
    .await;
    assert_eq!(
        stdout,
        format!(
            "127.0.0.1:{port} is not on this run's network allowlist\n\
             10.0.0.1 is 10.0.0.1, a private address: reachable only through an allowlist entry naming 10.0.0.1:80 exactly\n"
        )
    );
    let bad = post_json(
        &server,
        "/v1/runs",
        &json!({"source": "1", "network": ["a b"]}),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.body
            .contains("network entry \\\"a b\\\": not a host name"),
        "{}",
        bad.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_allowlist_a_run_has_no_network() {
    let api = api();
    let server = server(|_| {}).await;
    let code = format!(
        "import urllib.request\ntry:\n    urllib.request.urlopen('http://127.0.0.1:{}/')\n\
         except OSError as e:\n    print(type(e.reason).__name__, e.reason)\n",
        api.1
    );
    let (stdout, _) = run(&server, &code, json!({})).await;
    assert_eq!(stdout, "NetworkError this run has no network access\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_request_in_a_session_ends_with_its_cell_and_the_session_goes_on() {
    let api = api();
    let port = api.1;
    let server = server(move |c| {
        c.network.allow = vec![format!("127.0.0.1:{port}")];
        c.network.timeout_ms = 60_000;
    })
    .await;
    let r = post_json(&server, "/v1/sessions", &json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let exec = |code: String, timeout: u64| {
        let server = &server;
        let id = id.clone();
        async move {
            let body = json!({"code": code, "timeout_ms": timeout});
            post_json(server, &format!("/v1/sessions/{id}/exec"), &body)
                .await
                .json()
        }
    };
    let cell = format!(
        "import urllib.request\nn = 1\nurllib.request.urlopen('http://127.0.0.1:{port}/slow?ms=30000')"
    );
    let answer = exec(cell, 1_000).await;
    assert_eq!(answer["outcome"], "timeout", "{answer}");
    assert_eq!(answer["error"]["type"], "KeyboardInterrupt", "{answer}");
    let answer = exec(
        format!("print(n, urllib.request.urlopen('http://127.0.0.1:{port}/after').status)"),
        10_000,
    )
    .await;
    assert_eq!(answer["stdout"], "1 200\n", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sci_reaches_allowed_hosts_the_same_way() {
    let api = api();
    let port = api.1;
    let server = server(move |c| {
        c.network.allow = vec![format!("127.0.0.1:{port}")];
        c.limits.wall_ms = 120_000;
    })
    .await;
    let code = format!(
        "import json, urllib.request, pandas\n\
         with urllib.request.urlopen('http://127.0.0.1:{port}/table') as r:\n    \
         seen = json.loads(r.read())\n\
         print(pandas.Series([seen['path'], seen['method']]).tolist())\n\
         try:\n    urllib.request.urlopen('https://localhost/')\nexcept OSError as e:\n    print(e.reason)\n"
    );
    let (stdout, _) = run(&server, &code, json!({"runtime": "python-sci"})).await;
    assert_eq!(
        stdout,
        "['/table', 'GET']\nlocalhost:443 is not on this run's network allowlist\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_declares_secrets_of_its_own_for_hosts_the_server_allows() {
    let api = api();
    let port = api.1;
    let server = server(move |c| {
        c.network.allow = vec![format!("127.0.0.1:{port}")];
        c.secrets.insert(
            "OPERATOR_KEY".into(),
            weir_egress::SecretConfig {
                value: Some("the operator's own value".into()),
                value_env: None,
                hosts: vec!["api.github.com".into()],
            },
        );
    })
    .await;
    let code = format!(
        "import json, os, urllib.request\n\
         print(os.environ['RUN_KEY'], os.environ['OPERATOR_KEY'])\n\
         req = urllib.request.Request('http://127.0.0.1:{port}/', headers={{'X-Key': 'k', \
         'Authorization': 'token ' + os.environ['RUN_KEY']}})\n\
         print(json.loads(urllib.request.urlopen(req).read())['auth_sha256'])\n"
    );
    let secrets = json!({"RUN_KEY": {"value": SECRET, "hosts": [format!("127.0.0.1:{port}")]}});
    let (stdout, answer) = run(&server, &code, json!({ "secrets": secrets })).await;
    assert_eq!(
        stdout,
        format!(
            "weir-secret:RUN_KEY weir-secret:OPERATOR_KEY\n{}\n",
            sha256(&format!("token {SECRET}"))
        )
    );
    let history = record(&server, &answer["run_id"]).await;
    assert!(!history.to_string().contains(SECRET), "{history}");

    for (secrets, why) in [
        (
            json!({"K": {"value_env": "HOME", "hosts": ["a.org"]}}),
            "value_env is the operator's",
        ),
        (
            json!({"OPERATOR_KEY": {"value": "mine, not theirs", "hosts": ["a.org"]}}),
            "the server has a secret of that name",
        ),
        (
            json!({"K": {"value": "abc", "hosts": ["a.org"]}}),
            "at least 4 bytes",
        ),
    ] {
        let body = json!({"source": "1", "secrets": secrets});
        let r = post_json(&server, "/v1/runs", &body).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains(why), "{}", r.body);
    }
    let body =
        json!({"durable": true, "secrets": {"K": {"value": "long enough", "hosts": ["a.org"]}}});
    let r = post_json(&server, "/v1/sessions", &body).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("leave out network and secrets"),
        "{}",
        r.body
    );
}

#[test]
fn weir_run_reaches_the_hosts_allow_net_names_with_secrets_from_its_environment() {
    let api = api();
    let port = api.1;
    let dir = tempfile::tempdir().expect("a temp dir");
    let script = dir.path().join("fetch.py");
    std::fs::write(
        &script,
        format!(
            "import json, os, urllib.request\n\
             req = urllib.request.Request('http://127.0.0.1:{port}/cli', \
             headers={{'Authorization': os.environ['TOKEN']}})\n\
             try:\n    seen = json.loads(urllib.request.urlopen(req).read())\n    \
             print(os.environ['TOKEN'], seen['path'], seen['auth_sha256'])\n\
             except OSError as e:\n    print(e.reason)\n"
        ),
    )
    .expect("the script is written");
    let weir = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("run")
            .args(args)
            .arg(&script)
            .env("TOKEN", SECRET)
            .output()
            .expect("weir run runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let allow = format!("127.0.0.1:{port}");
    let secret = format!("TOKEN@127.0.0.1:{port}");
    assert_eq!(
        weir(&["--allow-net", &allow, "--secret", &secret]),
        format!("weir-secret:TOKEN /cli {}\n", sha256(SECRET))
    );
    assert_eq!(
        weir(&["--allow-net", "example.org", "-e", "TOKEN=x"]),
        format!("127.0.0.1:{port} is not on this run's network allowlist\n")
    );
    assert_eq!(weir(&["-e", "TOKEN=x"]), "this run has no network access\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_fetch_reaches_allowed_hosts_with_secrets_and_follows_redirects_hop_by_hop() {
    let api = api();
    let port = api.1;
    let server = server(move |c| {
        c.network.allow = vec![format!("127.0.0.1:{port}")];
    })
    .await;
    let code = format!(
        "(async () => {{\n\
           const r = await fetch('http://127.0.0.1:{port}/echo', {{ method: 'POST', body: 'hello', headers: {{ 'X-A': '1' }} }});\n\
           const seen = await r.json();\n\
           console.log(r.status, r.ok, r.headers.get('content-type'), seen.method, seen.path, seen.body_bytes);\n\
           const hop = await fetch('http://127.0.0.1:{port}/redirect?to=/after');\n\
           console.log(hop.redirected, (await hop.json()).path);\n\
           for (const url of ['http://127.0.0.1:{port}/redirect?to=http://169.254.169.254/', 'https://example.org/']) {{\n\
             try {{ await fetch(url) }} catch (e) {{ console.log(e.name, e.message, '-', e.cause.message) }}\n\
           }}\n\
         }})()"
    );
    let (stdout, answer) = run(&server, &code, json!({"runtime": "javascript"})).await;
    assert_eq!(
        stdout,
        format!(
            "200 true application/json POST /echo 5\n\
             true /after\n\
             TypeError fetch failed - 169.254.169.254:80 is not on this run's network allowlist\n\
             TypeError fetch failed - example.org:443 is not on this run's network allowlist\n"
        ),
        "{answer}"
    );
    let logged = record(&server, &answer["run_id"]).await;
    // Each hop is a request of its own: POST, redirect, its target, redirect, two refusals.
    assert_eq!(
        logged["network"].as_array().map(Vec::len),
        Some(6),
        "{logged}"
    );
}
