//! Cluster mode with real components on loopback: PostgreSQL (Debian's package, run as the
//! `postgres` user in a temporary directory), three `weir serve` processes sharing it, and
//! HAProxy running `deploy/haproxy.cfg` as it is. One test, in order: history readable from
//! every node and private to its owner; a user's sessions hashed to one node; a second login on
//! another node closing the first with 4001; `kill -9` of a node mid-run; a durable session
//! outliving `kill -9` of its node; snapshots shared through the database; a rolling restart under a one-shot client that loses no
//! request; the database going away.

use futures_util::StreamExt;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use weir_bench::harness::{http, one_shot, token, HaProxy, Node, Postgres};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Opens `/ws?token=…` on `addr`; returns the socket and the node that answered.
async fn connect(addr: &str, token: &str) -> Result<(Ws, String), u16> {
    connect_at(addr, "/ws", token).await
}

/// Opens the WebSocket at `path` with `?token=…` on `addr`: the socket and the node that
/// answered, or the HTTP status of a refused upgrade.
async fn connect_at(addr: &str, path: &str, token: &str) -> Result<(Ws, String), u16> {
    let req = format!("ws://{addr}{path}?token={token}")
        .into_client_request()
        .unwrap();
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, response)) => {
            let node = response
                .headers()
                .get("x-weir-node")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            Ok((ws, node))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("WebSocket connect to {addr}: {e}"),
    }
}

/// The next text message as JSON, or `Err(close code)` (0: the socket dropped without one).
async fn next(ws: &mut Ws, wait: Duration) -> Result<Value, u16> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a message or a close in time");
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(f))) => return Err(f.map_or(0, |f| u16::from(f.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(0),
        }
    }
}

/// Starts a run on `ws` and returns its id once it has printed `marker`.
async fn run_until(ws: &mut Ws, source: &str, marker: &str) -> String {
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": "run", "params": {"source": source}});
    futures_util::SinkExt::send(ws, Message::Text(req.to_string().into()))
        .await
        .unwrap();
    let mut id = String::new();
    let mut out = String::new();
    while !out.contains(marker) {
        let m = next(ws, Duration::from_secs(60)).await.expect("open");
        if m["id"] == 1 {
            id = m["result"]["run_id"].as_str().expect("run started").into();
        }
        if m["method"] == "output" {
            out.push_str(m["params"]["data"].as_str().unwrap_or(""));
        }
    }
    id
}

/// Polls `GET /v1/runs/{id}` on `addr` until its outcome is `outcome`.
async fn wait_outcome(addr: &str, token: &str, id: &str, outcome: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http(addr, "GET", &format!("/v1/runs/{id}"), Some(token), b"").await;
        if r.status == 200 && r.json()["outcome"] == outcome {
            return r.json();
        }
        assert!(
            Instant::now() < deadline,
            "run {id} never read {outcome}: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a cell in session `sid` through `addr`, retrying while the cluster fails over (a node
/// down, a session on its way between nodes): the cell's answer and the node that gave it.
async fn exec(addr: &str, token: &str, sid: &str, code: &str) -> (Value, String) {
    let path = format!("/v1/sessions/{sid}/exec");
    let body = json!({ "code": code }).to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http(addr, "POST", &path, Some(token), body.as_bytes()).await;
        if r.status == 200 {
            let node = r.header("x-weir-node").unwrap_or_default().to_string();
            return (r.json(), node);
        }
        assert!(
            [502, 503].contains(&r.status) && Instant::now() < deadline,
            "{code}: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_haproxy_share_history_sessions_and_survive_failures() {
    let dir = tempfile::Builder::new()
        .prefix("cluster-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let mut pg = Postgres::start().expect("PostgreSQL starts");
    let weir = Path::new(env!("CARGO_BIN_EXE_weir"));
    let mut nodes: Vec<Node> = ["node1", "node2", "node3"]
        .iter()
        .map(|id| {
            // Each node its own snapshot directory: what nodes share is the database.
            let own = dir.path().join(format!("{id}-snapshots"));
            let extra = format!(
                "max_sessions_per_user = 2\n[snapshots]\ndir = \"{}\"",
                own.display()
            );
            Node::new(weir, dir.path(), id, Some(&pg.url()), &extra).unwrap()
        })
        .collect();
    for n in &mut nodes {
        n.spawn().unwrap();
    }
    for n in &nodes {
        n.wait_ready().await.unwrap();
    }
    let addrs = [0, 1, 2].map(|i| nodes[i].addr.as_str());
    let lb = HaProxy::start(repo(), dir.path(), addrs).expect("HAProxy starts");
    for n in &nodes {
        lb.wait_for(&n.id, "UP").await.unwrap();
    }

    // History from any node: a run made through HAProxy answers identically on every node,
    // and does not exist for another user on any of them.
    let ann = token("ann", 3600);
    let bob = token("bob", 3600);
    let made = one_shot(&lb.addr, &ann, "print('hello from the cluster')").await;
    assert_eq!(made.status, 200, "{}", made.body);
    let served_by = made
        .header("x-weir-node")
        .expect("the node header")
        .to_string();
    let run = made.json();
    assert_eq!(run["stdout"], "hello from the cluster\n");
    let id = run["run_id"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    for n in &nodes {
        let meta = http(&n.addr, "GET", &format!("/v1/runs/{id}"), Some(&ann), b"").await;
        assert_eq!(meta.status, 200, "{} on {}", meta.body, n.id);
        assert_eq!(meta.header("x-weir-node"), Some(n.id.as_str()));
        let transcript = http(
            &n.addr,
            "GET",
            &format!("/v1/runs/{id}/transcript"),
            Some(&ann),
            b"",
        )
        .await;
        assert_eq!(transcript.status, 200, "{}", transcript.body);
        seen.push((meta.body, transcript.body));
        for path in [
            format!("/v1/runs/{id}"),
            format!("/v1/runs/{id}/transcript"),
        ] {
            let other = http(&n.addr, "GET", &path, Some(&bob), b"").await;
            assert_eq!(other.status, 404, "bob must not see ann's run on {}", n.id);
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "every node answers the same"
    );
    let meta: Value = serde_json::from_str(&seen[0].0).unwrap();
    assert_eq!(
        (meta["outcome"].as_str(), meta["node"].as_str()),
        (Some("exited"), Some(served_by.as_str()))
    );
    assert_eq!(meta["user"], "ann");

    // A user's sessions are hashed on the user in the token: two tokens of carol (different
    // expiry) reach the same node through HAProxy.
    let (mut first, node_a) = connect(&lb.addr, &token("carol", 3600)).await.unwrap();
    let (_second, node_b) = connect(&lb.addr, &token("carol", 7200)).await.unwrap();
    assert_eq!(node_a, node_b, "carol's sessions land on one node");
    assert_eq!(
        next(&mut first, Duration::from_secs(5)).await.err(),
        Some(4001)
    );

    // One session per user across nodes: dave on node1, then on node2: node1's closes with
    // 4001 (the second login is admitted once the first has closed).
    let dave = token("dave", 3600);
    let (mut on1, _) = connect(&nodes[0].addr, &dave).await.unwrap();
    let (mut on2, _) = connect(&nodes[1].addr, &dave).await.unwrap();
    assert_eq!(
        next(&mut on1, Duration::from_secs(2)).await.err(),
        Some(4001)
    );
    let pong = json!({"jsonrpc": "2.0", "id": 9, "method": "ping"});
    futures_util::SinkExt::send(&mut on2, Message::Text(pong.to_string().into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut on2, Duration::from_secs(5)).await.unwrap()["id"],
        9
    );
    drop(on2);

    // One user's sessions and runs are counted across nodes (`max_sessions_per_user = 2`): ivy
    // holds an HTTP session on node1 and a WebSocket session on node2, so her third — a run, a
    // Piston connection or an MCP call on node3 — is refused with 429; once one of the two
    // ends she is served there.
    let ivy = token("ivy", 3600);
    let session = http(&nodes[0].addr, "POST", "/v1/sessions", Some(&ivy), b"{}").await;
    assert_eq!(session.status, 201, "{}", session.body);
    let (ws_on2, _) = connect(&nodes[1].addr, &ivy).await.unwrap();
    let third = one_shot(&nodes[2].addr, &ivy, "print(3)").await;
    assert_eq!(third.status, 429, "{}", third.body);
    assert!(
        third.body.contains("max_sessions_per_user"),
        "{}",
        third.body
    );
    let piston = connect_at(&nodes[2].addr, "/api/v2/connect", &ivy).await;
    assert_eq!(
        piston.err(),
        Some(429),
        "a Piston connection is refused too"
    );
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "cluster-test", "version": "1"}}});
    let mcp = http(
        &nodes[2].addr,
        "POST",
        "/mcp",
        Some(&ivy),
        initialize.to_string().as_bytes(),
    )
    .await;
    assert_eq!(mcp.status, 429, "an MCP call is refused too: {}", mcp.body);
    drop(ws_on2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = one_shot(&nodes[2].addr, &ivy, "print(3)").await;
        if again.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ivy's slot never came back: {}",
            again.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // kill -9 of a node mid-run.
    let eve = token("eve", 3600);
    let earlier = one_shot(&lb.addr, &eve, "print('before the crash')").await;
    assert_eq!(earlier.status, 200);
    let earlier_id = earlier.json()["run_id"].as_str().unwrap().to_string();
    let (mut ws, victim) = connect(&lb.addr, &eve).await.unwrap();
    let running = run_until(
        &mut ws,
        "import time\nprint('working', flush=True)\ntime.sleep(120)",
        "working",
    )
    .await;
    let victim_ix = nodes.iter().position(|n| n.id == victim).expect("a node");
    let witness = &nodes[(victim_ix + 1) % 3].addr.clone();
    let live = wait_outcome(witness, &eve, &running, "running").await;
    assert_eq!(live["node"], victim.as_str());
    nodes[victim_ix].kill9();
    assert_eq!(
        next(&mut ws, Duration::from_secs(10)).await.err(),
        Some(0),
        "the client sees its socket close"
    );
    lb.wait_for(&victim, "DOWN").await.unwrap();
    let (mut again, rescuer) = connect(&lb.addr, &eve)
        .await
        .expect("a reconnect is admitted");
    assert_ne!(rescuer, victim);
    run_until(
        &mut again,
        "print('on ' + 'another node')",
        "on another node",
    )
    .await;
    drop(again);
    let before = wait_outcome(witness, &eve, &earlier_id, "exited").await;
    assert_eq!(before["message"], "Script finished");
    let lost = wait_outcome(witness, &eve, &running, "lost").await;
    assert!(
        lost["message"].as_str().unwrap().contains(&victim),
        "{lost}"
    );
    nodes[victim_ix].spawn().unwrap();
    nodes[victim_ix].wait_ready().await.unwrap();
    lb.wait_for(&victim, "UP").await.unwrap();

    // A durable session outlives its node: kill -9 the node holding it, and its next cell —
    // on another node — sees the last completed cell's state; the node, back, takes it home.
    let kim = token("kim", 3600);
    let made = http(
        &lb.addr,
        "POST",
        "/v1/sessions",
        Some(&kim),
        br#"{"durable": true}"#,
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    assert_eq!(made.json()["durable"], true);
    let sid = made.json()["session_id"].as_str().unwrap().to_string();
    let holder = made.header("x-weir-node").unwrap().to_string();
    let (out, _) = exec(&lb.addr, &kim, &sid, "x = 41\ndef f(n):\n    return n + x").await;
    assert_eq!(out["saved"], true, "{out}");
    let (out, _) = exec(&lb.addr, &kim, &sid, "open('notes.txt', 'w').write('kept')").await;
    assert_eq!(out["saved"], true, "{out}");
    let holder_ix = nodes.iter().position(|n| n.id == holder).unwrap();
    let other = &nodes[(holder_ix + 1) % 3].addr.clone();
    let path = format!("/v1/sessions/{sid}/exec");
    let stranger = http(other, "POST", &path, Some(&bob), br#"{"code": "x"}"#).await;
    assert_eq!(stranger.status, 404, "not bob's: {}", stranger.body);
    nodes[holder_ix].kill9();
    let (out, rescuer) = exec(&lb.addr, &kim, &sid, "f(1), open('notes.txt').read()").await;
    assert_eq!(out["result"], "(42, 'kept')", "{out}");
    assert_ne!(rescuer, holder);
    let (out, _) = exec(&lb.addr, &kim, &sid, "x = 100").await;
    assert_eq!(out["saved"], true, "{out}");
    let at = &nodes.iter().find(|n| n.id == rescuer).unwrap().addr;
    let metrics = http(at, "GET", "/metrics", None, b"").await.body;
    for line in [
        "weir_durable_takeovers_total 1",
        "weir_durable_saves_total 2",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    // The holder comes back; HAProxy hashes kim to it again, and it takes the session over
    // from the node that rescued it.
    nodes[holder_ix].spawn().unwrap();
    nodes[holder_ix].wait_ready().await.unwrap();
    lb.wait_for(&holder, "UP").await.unwrap();
    let (out, home) = exec(&lb.addr, &kim, &sid, "f(1)").await;
    assert_eq!(out["result"], "101", "{out}");
    assert_eq!(home, holder, "back on its node");

    // Stored snapshots live in the cluster's database: taken through one node, restored
    // through another, listed and deleted through a third; another user sees none of it.
    let lee = token("lee", 3600);
    let made = http(&nodes[0].addr, "POST", "/v1/sessions", Some(&lee), b"{}").await;
    assert_eq!(made.status, 201, "{}", made.body);
    let plain = made.json()["session_id"].as_str().unwrap().to_string();
    let (out, _) = exec(&nodes[0].addr, &lee, &plain, "v = 7").await;
    assert_eq!(out["outcome"], "ok", "{out}");
    let snap_path = format!("/v1/sessions/{plain}/snapshot");
    let snap = http(&nodes[0].addr, "POST", &snap_path, Some(&lee), b"").await;
    assert_eq!(snap.status, 201, "{}", snap.body);
    let snap_id = snap.json()["snapshot_id"].as_str().unwrap().to_string();
    let from = json!({ "snapshot": snap_id }).to_string();
    let restored = http(
        &nodes[1].addr,
        "POST",
        "/v1/sessions",
        Some(&lee),
        from.as_bytes(),
    )
    .await;
    assert_eq!(restored.status, 201, "{}", restored.body);
    let again = restored.json()["session_id"].as_str().unwrap().to_string();
    let (out, _) = exec(&nodes[1].addr, &lee, &again, "v * 6").await;
    assert_eq!(out["result"], "42", "{out}");
    let meta = format!("/v1/snapshots/{snap_id}");
    let listed = http(&nodes[2].addr, "GET", "/v1/snapshots", Some(&lee), b"").await;
    assert!(listed.body.contains(&snap_id), "{}", listed.body);
    for addr in [&nodes[1].addr, &nodes[2].addr] {
        let other = http(addr, "GET", &meta, Some(&bob), b"").await;
        assert_eq!(other.status, 404, "not bob's: {}", other.body);
    }
    let deleted = http(&nodes[2].addr, "DELETE", &meta, Some(&lee), b"").await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    let gone = http(&nodes[0].addr, "GET", &meta, Some(&lee), b"").await;
    assert_eq!(gone.status, 404, "{}", gone.body);

    // A rolling restart of all three nodes while a one-shot client loops through HAProxy:
    // no request is lost.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (addr, stop, tok) = (lb.addr.clone(), stop.clone(), token("frank", 3600));
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let r = one_shot(&addr, &tok, &format!("print({i} * 2)")).await;
                if r.status == 200 && r.json()["stdout"] == format!("{}\n", i * 2) {
                    ok += 1;
                } else {
                    failed.push(format!("#{i}: {} {}", r.status, r.body));
                }
            }
            (ok, failed)
        })
    };
    for n in &mut nodes {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = n.terminate().expect("an exit status");
        assert!(
            status.success(),
            "{} exits 0 after draining: {status}",
            n.id
        );
        assert!(n.log_text().contains("draining"), "{} drained first", n.id);
        n.spawn().unwrap();
        n.wait_ready().await.unwrap();
        lb.wait_for(&n.id, "UP").await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = client.await.unwrap();
    assert!(
        failed.is_empty(),
        "requests lost in the rolling restart: {failed:?}"
    );
    assert!(ok >= 10, "the client kept running ({ok} runs)");
    // The durable session lived through the rolling restart too.
    let (out, _) = exec(&lb.addr, &kim, &sid, "f(2)").await;
    assert_eq!(out["result"], "102", "{out}");

    // The database goes away: signed-in sessions close (1013), nodes stop admitting and say why.
    let (mut gina, _) = connect(&nodes[0].addr, &token("gina", 3600)).await.unwrap();
    pg.stop();
    assert_eq!(
        next(&mut gina, Duration::from_secs(10)).await.err(),
        Some(1013)
    );
    let ready = http(&nodes[1].addr, "GET", "/readyz", None, b"").await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("cluster database"), "{}", ready.body);
    match connect(&nodes[2].addr, &token("hana", 3600)).await {
        Err(status) => assert_eq!(status, 503),
        Ok(_) => panic!("a node without its database admitted a session"),
    }
    let refused = one_shot(&nodes[2].addr, &ann, "print(1)").await;
    assert_eq!(refused.status, 503);
    let why = refused.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains("cluster database"), "{}", refused.body);
}
