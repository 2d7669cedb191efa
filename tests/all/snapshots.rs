//! Session snapshots as a library user meets them: a session saved between cells, its bytes
//! read back, and started again — in the same process (a fork) or after a restart — where it was.

use crate::common::*;
use crate::interrupt::{cell, session};
use std::sync::Arc;
use weir_sandbox::{Error, RunHandle, RunRequest, Snapshot};

/// A session from `snapshot`.
async fn restored(snapshot: &Snapshot) -> RunHandle {
    let mut req = RunRequest::script("");
    req.restore = Some(Arc::new(snapshot.clone()));
    start(req).await
}

/// Asserts that a snapshot of `handle`'s session is refused as unsaved, saying `why`.
async fn refused_unsaved(handle: &RunHandle, why: &str) {
    match handle.control().snapshot().await {
        Err(Error::Unsaved(said)) => assert!(said.contains(why), "{said}"),
        other => panic!("{other:?}"),
    }
}

async fn value(handle: &mut RunHandle, code: &str) -> Option<String> {
    let (_, err, end) = cell(handle, code).await;
    assert!(end.exception.is_none(), "{code}: {err}");
    end.value
}

#[tokio::test]
async fn a_restored_session_has_its_variables_functions_imports_and_files() {
    let mut handle = start(session()).await;
    value(
        &mut handle,
        "import json, collections\nx = [1, 2, 3]\ndef f(n):\n    return sum(x) * n\n\
         open('notes.txt', 'w').write('kept')\ncounter = collections.Counter('hello')",
    )
    .await;
    let snapshot = handle.control().snapshot().await.expect("a snapshot");
    let bytes = snapshot.to_bytes().unwrap();
    // Read back from bytes: what a restart of the process would do.
    let snapshot = Snapshot::from_bytes(&bytes).unwrap();
    let mut again = restored(&snapshot).await;
    assert_eq!(value(&mut again, "f(2)").await.as_deref(), Some("12"));
    assert_eq!(
        value(&mut again, "json.dumps(counter.most_common(1))")
            .await
            .as_deref(),
        Some("'[[\"l\", 2]]'")
    );
    assert_eq!(
        value(&mut again, "open('notes.txt').read()")
            .await
            .as_deref(),
        Some("'kept'")
    );
    let (out, _, _) = cell(&mut again, "print('still', 'printing')").await;
    assert_eq!(out, "still printing\n");
    // The original goes on too.
    assert_eq!(value(&mut handle, "f(1)").await.as_deref(), Some("6"));
}

#[tokio::test]
async fn snapshots_without_reading_the_sessions_events_never_stall_it() {
    let mut handle = start(session()).await;
    value(&mut handle, "n = 0").await;
    // Far more than the run's event channel holds: a snapshot adds no event.
    for _ in 0..64 {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            handle.control().snapshot(),
        )
        .await
        .expect("answered")
        .expect("a snapshot");
    }
    assert_eq!(value(&mut handle, "n + 1").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn two_restores_of_one_snapshot_diverge() {
    let mut handle = start(session()).await;
    value(&mut handle, "items = ['root']").await;
    let snapshot = handle.control().snapshot().await.unwrap();
    let mut a = restored(&snapshot).await;
    let mut b = restored(&snapshot).await;
    value(&mut a, "items.append('a')").await;
    value(&mut b, "items.append('b')").await;
    value(&mut handle, "items.append('parent')").await;
    assert_eq!(
        value(&mut a, "items").await.as_deref(),
        Some("['root', 'a']")
    );
    assert_eq!(
        value(&mut b, "items").await.as_deref(),
        Some("['root', 'b']")
    );
    assert_eq!(
        value(&mut handle, "items").await.as_deref(),
        Some("['root', 'parent']")
    );
    // A snapshot of a restored session restores too.
    let again = a.control().snapshot().await.unwrap();
    let mut c = restored(&again).await;
    assert_eq!(
        value(&mut c, "items").await.as_deref(),
        Some("['root', 'a']")
    );
}

/// Forks of a session in `sandbox` (`runtime`'s): each goes its own way, as do forks of forks;
/// snapshots of a fork and of the session forked restore to their own state; and the slots
/// their instances held start clean runs afterwards.
async fn forks_go_their_own_ways(sandbox: &weir_sandbox::Sandbox, runtime: &str) {
    let begin = |restore: Option<Arc<Snapshot>>| {
        let mut req = session();
        req.runtime = Some(runtime.into());
        if restore.is_some() {
            req = RunRequest::script("");
            req.restore = restore;
        }
        async move { sandbox.start(req).await.expect("starts") }
    };
    let mut parent = begin(None).await;
    value(
        &mut parent,
        "items = ['root']\ndef count():\n    return len(items)\nopen('kept.txt', 'w').write('p')",
    )
    .await;
    let first = Arc::new(parent.control().fork().await.expect("a fork"));
    // Nothing ran in between: the second fork shares the first's pages.
    let second = Arc::new(parent.control().fork().await.expect("a fork"));
    let (mut a, mut b) = (begin(Some(first)).await, begin(Some(second)).await);
    value(&mut a, "items.append('a')").await;
    value(&mut b, "items.append('b')").await;
    value(&mut parent, "items.append('parent')").await;
    let is = |want: &str| Some(want.to_string());
    assert_eq!(value(&mut a, "items").await, is("['root', 'a']"));
    assert_eq!(value(&mut b, "items").await, is("['root', 'b']"));
    assert_eq!(value(&mut parent, "items").await, is("['root', 'parent']"));
    // A fork of a fork.
    let mut grand = begin(Some(Arc::new(a.control().fork().await.unwrap()))).await;
    value(&mut grand, "items.append('grand')").await;
    assert_eq!(value(&mut grand, "count()").await, is("3"));
    assert_eq!(value(&mut a, "items").await, is("['root', 'a']"));
    // Snapshots of a fork and of the session it was forked from, through their bytes.
    for (handle, want) in [(&b, "['root', 'b']"), (&parent, "['root', 'parent']")] {
        let bytes = handle
            .control()
            .snapshot()
            .await
            .unwrap()
            .to_bytes()
            .unwrap();
        let read = Arc::new(Snapshot::from_bytes(&bytes).unwrap());
        let mut again = begin(Some(read)).await;
        assert_eq!(value(&mut again, "items").await, is(want));
        assert_eq!(
            value(&mut again, "open('kept.txt').read()").await,
            is("'p'")
        );
    }
    drop((a, b, grand, parent));
    // Their slots serve fresh runs: nothing of the forks' pages is left in them.
    for _ in 0..6 {
        let mut fresh = begin(None).await;
        assert_eq!(
            value(&mut fresh, "'items' in globals(), sorted({3, 1, 2})").await,
            is("(False, [1, 2, 3])")
        );
    }
}

#[tokio::test]
async fn forks_share_pages_and_go_their_own_ways() {
    forks_go_their_own_ways(&sandbox(), "python").await;
}

#[tokio::test]
async fn python_sci_forks_go_their_own_ways() {
    forks_go_their_own_ways(&crate::sci::sandbox().await, crate::sci::SCI).await;
}

/// Saves `handle`'s session and lays the save over `chain` (the whole first save, folded).
async fn save_into(handle: &RunHandle, chain: &mut Option<Snapshot>) -> Snapshot {
    let saved = handle.control().save(false).await.expect("a save");
    let read = Snapshot::from_bytes(&saved.to_bytes().unwrap()).unwrap();
    match chain {
        None => *chain = Some(read),
        Some(folded) => folded.apply(&read).expect("it follows the last save"),
    }
    saved
}

#[tokio::test]
async fn saves_after_each_cell_hold_only_its_changes_and_restore_to_the_last() {
    let mut handle = start(session()).await;
    let mut chain = None;
    value(
        &mut handle,
        "data = list(range(20000))
count = 0",
    )
    .await;
    let first = save_into(&handle, &mut chain).await;
    assert!(!first.is_changes(), "the first save is whole");
    value(
        &mut handle,
        "count += 1
open('log.txt', 'w').write('one')",
    )
    .await;
    let second = save_into(&handle, &mut chain).await;
    assert!(second.is_changes());
    assert_eq!(
        second.files().map(|(p, _)| p).collect::<Vec<_>>(),
        ["log.txt"]
    );
    value(
        &mut handle,
        "count += 1
def twice(n):
    return 2 * n",
    )
    .await;
    let third = save_into(&handle, &mut chain).await;
    assert_eq!(third.files().count(), 0, "log.txt is unchanged");
    // A snapshot between saves does not disturb them.
    handle.control().snapshot().await.unwrap();
    value(&mut handle, "count += 1").await;
    let fourth = save_into(&handle, &mut chain).await;
    // Pages the interpreter itself writes in any cell (its allocator, the collector) come
    // with every save; still far from the whole.
    assert!(
        fourth.stored_page_bytes() * 4 < first.stored_page_bytes(),
        "a cell that changes one variable saves {} of {} bytes of pages",
        fourth.stored_page_bytes(),
        first.stored_page_bytes()
    );

    let folded = chain.expect("saved");
    let mut again = restored(&folded).await;
    assert_eq!(
        value(
            &mut again,
            "count, twice(len(data)), open('log.txt').read()"
        )
        .await
        .as_deref(),
        Some("(3, 40000, 'one')")
    );
    // The restored session's saves start whole, then hold its changes.
    let mut chain = Some(folded);
    value(&mut again, "count += 5").await;
    let first_again = save_into(&again, &mut chain).await;
    assert!(!first_again.is_changes());
    value(&mut again, "count += 5").await;
    let next = save_into(&again, &mut chain).await;
    assert!(next.is_changes());
    let mut last = restored(chain.as_ref().unwrap()).await;
    assert_eq!(value(&mut last, "count").await.as_deref(), Some("13"));
    // A whole save starts the chain afresh.
    let whole = again.control().save(true).await.unwrap();
    assert!(!whole.is_changes());
}

#[tokio::test]
async fn a_deterministic_session_restores_with_its_random_sources_and_clock_where_they_were() {
    let mut req = session();
    req.deterministic = Some(weir_sandbox::Seed(42));
    let mut handle = start(req).await;
    let draw = "import random, os, time\n(random.random(), os.urandom(4).hex(), time.time(), \
                time.monotonic())";
    value(&mut handle, draw).await;
    let snapshot = handle
        .control()
        .snapshot()
        .await
        .expect("a deterministic snapshot");
    assert_eq!(snapshot.seed(), Some(42));
    let snapshot = Snapshot::from_bytes(&snapshot.to_bytes().unwrap()).unwrap();
    let (_, _, a) = cell(&mut handle, draw).await;
    let mut again = restored(&snapshot).await;
    let (_, _, b) = cell(&mut again, draw).await;
    assert!(a.value.is_some(), "{a:?}");
    // The same numbers from the same point: the random sources and the virtual clock went on
    // from where the snapshot left them, not from the start.
    assert_eq!(a.value, b.value);
    let first = value(&mut again, "time.monotonic()").await.unwrap();
    let later = value(&mut again, "time.sleep(5); time.monotonic()")
        .await
        .unwrap();
    let (first, later): (f64, f64) = (first.parse().unwrap(), later.parse().unwrap());
    assert!(later >= first + 5.0, "{first} then {later}");
    // Another seed cannot restore it; nor can a plain snapshot start a deterministic run.
    let mut other = RunRequest::script("");
    other.restore = Some(Arc::new(snapshot.clone()));
    other.deterministic = Some(weir_sandbox::Seed(7));
    assert!(matches!(
        crate::common::sandbox().start(other).await,
        Err(Error::Unsaved(_))
    ));
}

#[tokio::test]
async fn a_session_holding_a_file_open_is_not_snapshotted() {
    let mut handle = start(session()).await;
    value(&mut handle, "f = open('held.txt', 'w')").await;
    refused_unsaved(&handle, "open").await;
    value(&mut handle, "f.close()").await;
    handle.control().snapshot().await.expect("closed: saved");
}

#[tokio::test]
async fn a_damaged_snapshot_or_one_that_cannot_fit_is_refused() {
    let mut handle = start(session()).await;
    value(&mut handle, "x = 1").await;
    let bytes = handle
        .control()
        .snapshot()
        .await
        .unwrap()
        .to_bytes()
        .unwrap();
    let mut cut = bytes.clone();
    cut.truncate(bytes.len() / 2);
    assert!(matches!(
        Snapshot::from_bytes(&cut),
        Err(Error::SnapshotCorrupted(_))
    ));
    let not_a_session = start(RunRequest::script("")).await;
    assert!(matches!(
        not_a_session.control().snapshot().await,
        Err(Error::NotASession)
    ));
    let mut req = RunRequest::script("");
    req.restore = Some(Arc::new(Snapshot::from_bytes(&bytes).unwrap()));
    req.limits.memory_bytes = 1 << 20;
    assert!(matches!(sandbox().start(req).await, Err(Error::Unsaved(_))));
}

/// Over HTTP, against a real `weir serve` process restarted between the snapshot and the
/// restore: the variables, a defined function, an import and a written file are all back.
mod http {
    use serde_json::{json, Value};
    use weir_bench::harness::{http, token, Node};

    async fn call(addr: &str, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        let body = match body {
            Value::Null => Vec::new(),
            b => b.to_string().into_bytes(),
        };
        let r = http(addr, method, path, Some(token), &body).await;
        let json = serde_json::from_str(&r.body).unwrap_or(Value::String(r.body.clone()));
        (r.status, json)
    }

    async fn exec(addr: &str, token: &str, id: &str, code: &str) -> Value {
        let path = format!("/v1/sessions/{id}/exec");
        let (status, r) = call(addr, token, "POST", &path, json!({ "code": code })).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["outcome"], "ok", "{code}: {r}");
        r
    }

    async fn new_session(addr: &str, token: &str, body: Value) -> String {
        let (status, r) = call(addr, token, "POST", "/v1/sessions", body).await;
        assert_eq!(status, 201, "{r}");
        r["session_id"].as_str().unwrap().to_string()
    }

    /// One node, no cluster: a durable session is saved beside the snapshots, and the node
    /// killed with SIGKILL and started again serves it from its last cell.
    #[tokio::test]
    async fn a_durable_session_outlives_kill_9_of_its_server() {
        let dir = tempfile::Builder::new()
            .prefix("durable-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let weir = std::path::Path::new(env!("CARGO_BIN_EXE_weir"));
        let mut node = Node::new(weir, dir.path(), "alone", None, "").expect("a node");
        let (ann, bob) = (token("ann", 3600), token("bob", 3600));
        node.spawn().unwrap();
        node.wait_ready().await.unwrap();
        let addr = node.addr.clone();
        let (status, made) = call(
            &addr,
            &ann,
            "POST",
            "/v1/sessions",
            json!({"durable": true}),
        )
        .await;
        assert_eq!(status, 201, "{made}");
        assert_eq!(made["durable"], true);
        let id = made["session_id"].as_str().unwrap().to_string();
        let r = exec(&addr, &ann, &id, "x = 41\ndef f(n):\n    return n + x").await;
        assert_eq!(r["saved"], true, "{r}");
        let file = format!("/v1/sessions/{id}/files/notes.txt");
        let put = http(&addr, "PUT", &file, Some(&ann), b"kept").await;
        assert_eq!(put.status, 204, "{}", put.body);
        exec(&addr, &ann, &id, "y = f(1)").await;
        // A cell holding a file open is not saved, and says so; the session goes on.
        let held = exec(&addr, &ann, &id, "held = open('notes.txt')").await;
        assert_eq!(held["saved"], false, "{held}");
        assert!(
            held["save_error"].as_str().unwrap().contains("open"),
            "{held}"
        );
        exec(&addr, &ann, &id, "held.close()\nz = 'after'").await;

        node.kill9();
        node.spawn().unwrap();
        node.wait_ready().await.unwrap();
        let addr = node.addr.clone();
        let path = format!("/v1/sessions/{id}/exec");
        let (status, _) = call(&addr, &bob, "POST", &path, json!({"code": "y"})).await;
        assert_eq!(status, 404, "not bob's");
        let r = exec(&addr, &ann, &id, "y, z, open('notes.txt').read()").await;
        assert_eq!(r["result"], "(42, 'after', 'kept')", "{r}");
        let (status, _) = call(
            &addr,
            &ann,
            "DELETE",
            &format!("/v1/sessions/{id}"),
            Value::Null,
        )
        .await;
        assert_eq!(status, 204);
        node.terminate();
        node.spawn().unwrap();
        node.wait_ready().await.unwrap();
        let (status, _) = call(&node.addr, &ann, "POST", &path, json!({"code": "y"})).await;
        assert_eq!(status, 404, "a closed durable session is gone for good");
        node.terminate();
    }

    #[tokio::test]
    async fn a_snapshot_outlives_the_server_process_and_belongs_to_its_owner() {
        let dir = tempfile::Builder::new()
            .prefix("snap-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let weir = std::path::Path::new(env!("CARGO_BIN_EXE_weir"));
        let mut node = Node::new(weir, dir.path(), "alone", None, "").expect("a node");
        let (ann, bob) = (token("ann", 3600), token("bob", 3600));
        node.spawn().unwrap();
        node.wait_ready().await.unwrap();
        let addr = node.addr.clone();
        let id = new_session(&addr, &ann, json!({})).await;
        exec(
            &addr,
            &ann,
            &id,
            "import statistics\nxs = [3, 1, 4, 1, 5]\ndef spread():\n    return max(xs) - min(xs)\n\
             open('data.csv', 'w').write('a,b\\n1,2\\n')",
        )
        .await;
        let path = format!("/v1/sessions/{id}/snapshot");
        let (status, snap) = call(&addr, &ann, "POST", &path, Value::Null).await;
        assert_eq!(status, 201, "{snap}");
        let snap_id = snap["snapshot_id"].as_str().unwrap().to_string();
        assert!(snap["bytes"].as_u64().unwrap() > 0, "{snap}");
        assert_eq!(snap["runtime"], "python");
        // Another user: not even there.
        let (status, _) = call(&addr, &bob, "POST", &path, Value::Null).await;
        assert_eq!(status, 404);
        let meta = format!("/v1/snapshots/{snap_id}");
        assert_eq!(call(&addr, &bob, "GET", &meta, Value::Null).await.0, 404);
        let (status, _) = call(
            &addr,
            &bob,
            "POST",
            "/v1/sessions",
            json!({"snapshot": snap_id}),
        )
        .await;
        assert_eq!(status, 404);
        assert_eq!(call(&addr, &bob, "DELETE", &meta, Value::Null).await.0, 404);

        node.terminate();
        node.spawn().unwrap();
        node.wait_ready().await.unwrap();
        let addr = node.addr.clone();
        let (status, listed) = call(&addr, &ann, "GET", "/v1/snapshots", Value::Null).await;
        assert_eq!(status, 200);
        assert_eq!(listed[0]["snapshot_id"], snap_id.as_str(), "{listed}");
        let again = new_session(&addr, &ann, json!({"snapshot": snap_id})).await;
        let r = exec(
            &addr,
            &ann,
            &again,
            "(spread(), statistics.median(xs), open('data.csv').read())",
        )
        .await;
        assert_eq!(r["result"], "(4, 3, 'a,b\\n1,2\\n')");
        let (status, r) = call(
            &addr,
            &ann,
            "POST",
            "/v1/sessions",
            json!({"snapshot": snap_id, "runtime": "python"}),
        )
        .await;
        assert_eq!(status, 400, "{r}");
        assert_eq!(call(&addr, &ann, "DELETE", &meta, Value::Null).await.0, 204);
        assert_eq!(call(&addr, &ann, "GET", &meta, Value::Null).await.0, 404);
        node.terminate();
    }

    #[tokio::test]
    async fn a_fork_goes_its_own_way_and_a_busy_session_answers_409() {
        let dir = tempfile::Builder::new()
            .prefix("fork-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let weir = std::path::Path::new(env!("CARGO_BIN_EXE_weir"));
        let mut node = Node::new(weir, dir.path(), "alone", None, "").expect("a node");
        let ann = token("ann", 3600);
        node.spawn().unwrap();
        node.wait_ready().await.unwrap();
        let addr = node.addr.clone();
        let id = new_session(&addr, &ann, json!({})).await;
        exec(&addr, &ann, &id, "plan = ['start']").await;
        let (status, forked) = call(
            &addr,
            &ann,
            "POST",
            &format!("/v1/sessions/{id}/fork"),
            Value::Null,
        )
        .await;
        assert_eq!(status, 201, "{forked}");
        let fork = forked["session_id"].as_str().unwrap().to_string();
        assert_ne!(fork, id);
        exec(&addr, &ann, &id, "plan.append('parent')").await;
        exec(&addr, &ann, &fork, "plan.append('fork')").await;
        let parent = exec(&addr, &ann, &id, "plan").await;
        let child = exec(&addr, &ann, &fork, "plan").await;
        assert_eq!(parent["result"], "['start', 'parent']");
        assert_eq!(child["result"], "['start', 'fork']");
        // A session whose cell runs cannot be snapshotted now.
        let busy = {
            let (addr, ann, id) = (addr.clone(), ann.clone(), id.clone());
            tokio::spawn(
                async move { exec(&addr, &ann, &id, "import time\ntime.sleep(1.5)").await },
            )
        };
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let (status, r) = call(
            &addr,
            &ann,
            "POST",
            &format!("/v1/sessions/{id}/fork"),
            Value::Null,
        )
        .await;
        assert_eq!(status, 409, "{r}");
        busy.await.unwrap();
        // A session holding a file open is not snapshotted, and says why.
        exec(&addr, &ann, &fork, "held = open('x.txt', 'w')").await;
        let (status, r) = call(
            &addr,
            &ann,
            "POST",
            &format!("/v1/sessions/{fork}/snapshot"),
            Value::Null,
        )
        .await;
        assert_eq!(status, 409, "{r}");
        assert!(r["error"].as_str().unwrap().contains("open"), "{r}");
        node.terminate();
    }
}

/// Hibernation, in a server whose idle sessions hibernate after four seconds.
mod hibernation {
    use crate::ws::*;
    use serde_json::{json, Value};

    async fn exec(server: &weir_service::RunningServer, id: &str, code: &str) -> Value {
        let r = post_json(
            server,
            &format!("/v1/sessions/{id}/exec"),
            &json!({ "code": code }),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// This process's proportional set size, kB.
    fn pss() -> u64 {
        let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
        rollup
            .lines()
            .find_map(|l| {
                l.strip_prefix("Pss:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    fn gauge(metrics: &str, name: &str) -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(u64::MAX)
    }

    #[tokio::test]
    async fn two_hundred_idle_sessions_hibernate_free_their_instances_and_all_wake() {
        const N: usize = 200;
        let server = server(|c| {
            c.hibernate_after_secs = Some(4);
            c.max_instances = N as u32 + 20;
            c.max_sessions = N + 50;
            c.max_sessions_per_user = N + 50;
        })
        .await;
        let mut ids = Vec::new();
        for i in 0..N {
            let r = post_json(&server, "/v1/sessions", &json!({})).await;
            assert_eq!(r.status, 201, "{}", r.body);
            let id = r.json()["session_id"].as_str().unwrap().to_string();
            exec(
                &server,
                &id,
                &format!("x = {i}\ndef f():\n    return x * 2"),
            )
            .await;
            ids.push(id);
        }
        // One holds a file open: it cannot be saved, so it stays live and keeps working.
        let r = post_json(&server, "/v1/sessions", &json!({})).await;
        let held = r.json()["session_id"].as_str().unwrap().to_string();
        exec(&server, &held, "f = open('open.txt', 'w')\nf.write('a')").await;
        // Sessions made early may already sleep when the machine is slow: the memory comparison
        // below is made only when nearly all were awake here.
        let live = server.state.sandbox.live_instances();
        let awake = pss();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (_, metrics) = http_get(&server, "/metrics").await;
            if gauge(&metrics, "weir_sessions_hibernated") == N as u64 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{metrics}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(
            server.state.sandbox.live_instances(),
            1,
            "only the one holding a file"
        );
        let asleep = pss();
        eprintln!("test process PSS: {awake} kB with {live} live sessions, {asleep} kB hibernated");
        if live > N * 9 / 10 {
            assert!(asleep < awake, "{asleep} kB hibernated, {awake} kB live");
        }
        let (_, described) = http_get(&server, &format!("/v1/sessions/{}", ids[7])).await;
        assert!(described.contains("\"hibernated\":true"), "{described}");
        for (i, id) in ids.iter().enumerate() {
            let r = exec(&server, id, "f()").await;
            assert_eq!(r["result"], (2 * i).to_string(), "session {i}: {r}");
        }
        let r = exec(&server, &held, "f.close()\nopen('open.txt').read()").await;
        assert_eq!(r["result"], "'a'");
        // A woken session keeps its files.
        let r = http(
            &server,
            "PUT",
            &format!("/v1/sessions/{}/files/in.txt", ids[0]),
            &[],
            b"data",
        )
        .await;
        assert_eq!(r.status, 204);
        server.shutdown().await;
    }
}

/// A `python-sci` session, started in the sandbox that has it loaded.
async fn sci_session() -> RunHandle {
    let mut req = session();
    req.runtime = Some(crate::sci::SCI.into());
    crate::sci::sandbox()
        .await
        .start(req)
        .await
        .expect("starts")
}

/// A session from `snapshot` in the sandbox that has `python-sci` loaded.
async fn sci_restored(snapshot: &Snapshot) -> RunHandle {
    let mut req = RunRequest::script("");
    req.restore = Some(Arc::new(snapshot.clone()));
    crate::sci::sandbox()
        .await
        .start(req)
        .await
        .expect("restores")
}

#[tokio::test]
async fn a_restored_python_sci_session_has_its_dataframe_array_functions_and_files() {
    let mut handle = sci_session().await;
    value(
        &mut handle,
        "import numpy as np, pandas as pd\n\
         df = pd.DataFrame({'region': ['north', 'south', 'north'], 'amount': [10.0, 5.0, 2.5]})\n\
         a = np.arange(12).reshape(3, 4)\n\
         def total(n):\n    return float(df.amount.sum()) * n + int(a.sum())\n\
         df.to_csv('sales.csv', index=False)",
    )
    .await;
    // A figure with text: matplotlib keeps the fonts it drew with open, and lets them go for
    // the snapshot.
    value(
        &mut handle,
        "import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 4])\nplt.title('kept')\nplt.show()",
    )
    .await;
    let snapshot = handle.control().snapshot().await.expect("a snapshot");
    assert_eq!(snapshot.runtime(), crate::sci::SCI);
    let bytes = snapshot.to_bytes().unwrap();
    let snapshot = Snapshot::from_bytes(&bytes).unwrap();
    let mut again = sci_restored(&snapshot).await;
    assert_eq!(
        value(&mut again, "total(2)").await.as_deref(),
        Some("101.0")
    );
    assert_eq!(
        value(&mut again, "df.groupby('region').amount.sum().to_dict()")
            .await
            .as_deref(),
        Some("{'north': 12.5, 'south': 5.0}")
    );
    assert_eq!(
        value(&mut again, "a.T.shape, int(a[2, 3])")
            .await
            .as_deref(),
        Some("((4, 3), 11)")
    );
    assert_eq!(
        value(&mut again, "pd.read_csv('sales.csv').shape")
            .await
            .as_deref(),
        Some("(3, 2)")
    );
    let (out, _, _) = cell(&mut again, "print(df.amount.max())").await;
    assert_eq!(out, "10.0\n");
    // It draws again, text included.
    let (_, err, end) = cell(
        &mut again,
        "plt.plot([0, 1]); plt.xlabel('again'); plt.show()",
    )
    .await;
    assert!(end.exception.is_none(), "{err}");
    // The original goes on too.
    assert_eq!(
        value(&mut handle, "total(0)").await.as_deref(),
        Some("66.0")
    );
}

#[tokio::test]
async fn a_python_sci_session_saved_after_each_cell_restores_to_its_last_cell() {
    let mut handle = sci_session().await;
    let mut chain = None;
    value(
        &mut handle,
        "import numpy as np, pandas as pd\ndf = pd.DataFrame({'n': np.arange(100000)})\nk = 0",
    )
    .await;
    let first = save_into(&handle, &mut chain).await;
    value(&mut handle, "k = int(df.n.sum())").await;
    save_into(&handle, &mut chain).await;
    value(&mut handle, "k += 1").await;
    let second = save_into(&handle, &mut chain).await;
    assert!(second.is_changes());
    assert!(
        second.stored_page_bytes() * 4 < first.stored_page_bytes(),
        "{} of {}",
        second.stored_page_bytes(),
        first.stored_page_bytes()
    );
    let mut again = sci_restored(chain.as_ref().unwrap()).await;
    assert_eq!(
        value(&mut again, "k, len(df)").await.as_deref(),
        Some("(4999950001, 100000)")
    );
}

#[tokio::test]
async fn two_restores_of_a_python_sci_snapshot_diverge() {
    let mut handle = sci_session().await;
    value(
        &mut handle,
        "import numpy as np\nv = np.zeros(3)\nitems = ['root']",
    )
    .await;
    let snapshot = handle.control().snapshot().await.unwrap();
    let mut a = sci_restored(&snapshot).await;
    let mut b = sci_restored(&snapshot).await;
    value(&mut a, "v[0] = 1\nitems.append('a')").await;
    value(&mut b, "v[2] = 2\nitems.append('b')").await;
    value(&mut handle, "v += 5").await;
    assert_eq!(
        value(&mut a, "v.tolist(), items").await.as_deref(),
        Some("([1.0, 0.0, 0.0], ['root', 'a'])")
    );
    assert_eq!(
        value(&mut b, "v.tolist(), items").await.as_deref(),
        Some("([0.0, 0.0, 2.0], ['root', 'b'])")
    );
    assert_eq!(
        value(&mut handle, "v.tolist(), items").await.as_deref(),
        Some("([5.0, 5.0, 5.0], ['root'])")
    );
    // A snapshot of a restored session restores too.
    let again = a.control().snapshot().await.unwrap();
    let mut c = sci_restored(&again).await;
    assert_eq!(
        value(&mut c, "v.tolist(), items").await.as_deref(),
        Some("([1.0, 0.0, 0.0], ['root', 'a'])")
    );
}

#[tokio::test]
async fn a_python_sci_session_holding_a_file_open_is_not_snapshotted() {
    let mut handle = sci_session().await;
    value(&mut handle, "f = open('held.txt', 'w')").await;
    refused_unsaved(&handle, "open").await;
    value(
        &mut handle,
        "f.close()\nimport os\nlisting = os.scandir('.')",
    )
    .await;
    refused_unsaved(&handle, "directory open").await;
    value(&mut handle, "listing.close()").await;
    handle.control().snapshot().await.expect("closed: saved");
    assert_eq!(
        value(&mut handle, "f.closed").await.as_deref(),
        Some("True")
    );
}

#[tokio::test]
async fn a_snapshot_of_one_runtime_is_refused_by_the_other() {
    let sandbox = crate::sci::sandbox().await;
    let mut lean = sandbox.start(session()).await.expect("starts");
    value(&mut lean, "x = 1").await;
    let lean = lean.control().snapshot().await.unwrap();
    let mut sci = sci_session().await;
    value(&mut sci, "x = 2").await;
    let sci = sci.control().snapshot().await.unwrap();
    for (snapshot, other) in [(lean, crate::sci::SCI), (sci, "python")] {
        let mut req = RunRequest::script("");
        req.runtime = Some(other.into());
        req.restore = Some(Arc::new(snapshot));
        match sandbox.start(req).await {
            Err(Error::SnapshotBuild { runtime, .. }) => assert_ne!(runtime, other),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("{other} restored another runtime's snapshot"),
        }
    }
}
