//! The cluster rows (`WEIR_BENCH_ONLY_CLUSTER=1` runs only these): one-shot `print("hello")`
//! runs/s and latency straight to one node (SQLite history, and a cluster node with
//! PostgreSQL history) and through HAProxy in front of one and of three cluster nodes, all side
//! by side in one run; what storing a run's history costs in SQLite and PostgreSQL; and what
//! saving a durable session after each cell adds to the cell.
//!
//! On a 2-core machine every node, PostgreSQL, HAProxy and the load generator share the same
//! two cores: the rows measure what the load balancer and the database add to a run, not how a
//! cluster scales.

use crate::harness::{one_shot, token, HaProxy, Node, Postgres};
use crate::measure::{ms, percentile, row};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_service::history::{History, HistoryConfig, RunRecord};

/// Concurrent one-shot clients per measurement.
const CLIENTS: usize = 8;
/// How long each measurement runs.
const SPAN: Duration = Duration::from_secs(5);
/// Runs stored per history measurement.
const HISTORY_RUNS: usize = 2000;

/// Prints the cluster rows.
pub async fn rows() -> anyhow::Result<()> {
    let weir = std::env::current_exe()?;
    let repo = repo_dir()?;
    let dir = tempfile::Builder::new()
        .prefix("weir-bench-cluster-")
        .tempdir()?;
    let pg = Postgres::start()?;
    let mut alone = Node::new(&weir, dir.path(), "alone", None, "")?;
    let mut nodes = Vec::new();
    for id in ["node1", "node2", "node3"] {
        nodes.push(Node::new(&weir, dir.path(), id, Some(&pg.url()), "")?);
    }
    alone.spawn()?;
    for n in &mut nodes {
        n.spawn()?;
    }
    alone.wait_ready().await?;
    for n in &nodes {
        n.wait_ready().await?;
    }
    let lb = HaProxy::start(&repo, dir.path(), [0, 1, 2].map(|i| nodes[i].addr.as_str()))?;
    for n in &nodes {
        lb.wait_for(&n.id, "UP").await?;
    }
    let tok = token("bench", 3600);
    let direct_sqlite = load(&alone.addr, &tok).await;
    let direct_pg = load(&nodes[0].addr, &tok).await;
    for name in ["node2", "node3"] {
        lb.command(&format!("disable server weir_oneshot/{name}"))
            .await;
    }
    let lb_one = load(&lb.addr, &tok).await;
    for name in ["node2", "node3"] {
        lb.command(&format!("enable server weir_oneshot/{name}"))
            .await;
    }
    for n in &nodes {
        lb.wait_for(&n.id, "UP").await?;
    }
    let lb_three = load(&lb.addr, &tok).await;
    let label = format!("one-shot print(\"hello\"), {CLIENTS} clients");
    row(
        &format!("{label}: direct, one node (SQLite)"),
        &direct_sqlite,
        "",
        "",
    );
    row(
        &format!("{label}: direct, one node (PostgreSQL)"),
        &direct_pg,
        "",
        "",
    );
    row(&format!("{label}: HAProxy, 1 node"), &lb_one, "", "");
    row(&format!("{label}: HAProxy, 3 nodes"), &lb_three, "", "");
    durable_rows(&nodes[0].addr, &tok).await?;
    drop(lb);
    drop(nodes);
    drop(alone);
    history_rows(dir.path(), &pg).await
}

/// Cells measured per session in the durable rows.
const CELLS: usize = 200;

/// A cell that changes one variable (`n += 1`) over HTTP, in a session and in a durable one on
/// the same cluster node, alternating: p50 and p99 of each, and the p50 difference (what the
/// save after each cell adds).
async fn durable_rows(addr: &str, tok: &str) -> anyhow::Result<()> {
    use crate::harness::http;
    let mut ids = Vec::new();
    for body in [&b"{}"[..], br#"{"durable": true}"#] {
        let made = http(addr, "POST", "/v1/sessions", Some(tok), body).await;
        if made.status != 201 {
            anyhow::bail!("a session: {} {}", made.status, made.body);
        }
        let id = made.json()["session_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let path = format!("/v1/sessions/{id}/exec");
        http(addr, "POST", &path, Some(tok), br#"{"code": "n = 0"}"#).await;
        ids.push(path);
    }
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..CELLS {
        for (path, times) in ids.iter().zip(&mut times) {
            let started = Instant::now();
            let r = http(addr, "POST", path, Some(tok), br#"{"code": "n += 1"}"#).await;
            if r.status != 200 {
                anyhow::bail!("a cell: {} {}", r.status, r.body);
            }
            times.push(started.elapsed());
        }
    }
    for t in &mut times {
        t.sort();
    }
    let p = |t: &[Duration], q| ms(percentile(t, q));
    let [plain, durable] = &times;
    row(
        "session cell `n += 1` over HTTP, one cluster node",
        format!("p50 {} p99 {}", p(plain, 0.5), p(plain, 0.99)),
        "",
        "",
    );
    let added = percentile(durable, 0.5).saturating_sub(percentile(plain, 0.5));
    row(
        "  the same, durable (saved after each cell)",
        format!("p50 {} p99 {}", p(durable, 0.5), p(durable, 0.99)),
        &format!("+{} a cell", ms(added)),
        "≤ 1 ms",
    );
    Ok(())
}

/// The repository (for `deploy/haproxy.cfg`): `WEIR_REPO`, or the current directory.
fn repo_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::var_os("WEIR_REPO")
        .map(Into::into)
        .unwrap_or(std::env::current_dir()?);
    if !dir.join("deploy/haproxy.cfg").is_file() {
        anyhow::bail!(
            "run from the repository (or set WEIR_REPO): {} has no deploy/haproxy.cfg",
            dir.display()
        );
    }
    Ok(dir)
}

/// One load measurement: completed runs/s, p50 and p99, and failures if any.
struct Load {
    rate: f64,
    p50: Duration,
    p99: Duration,
    failed: usize,
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0}/s p50 {} p99 {}",
            self.rate,
            ms(self.p50),
            ms(self.p99)
        )?;
        if self.failed > 0 {
            write!(f, " ({} failed)", self.failed)?;
        }
        Ok(())
    }
}

/// [`CLIENTS`] clients posting `print("hello")` for [`SPAN`], each on a connection of its own.
async fn load(addr: &str, tok: &str) -> Load {
    // Warm-up: the nodes' compile caches and HAProxy's connections.
    for _ in 0..20 {
        one_shot(addr, tok, "print(\"hello\")").await;
    }
    let times = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = Instant::now() + SPAN;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, tok) = (addr.to_string(), tok.to_string());
            let (times, failed) = (times.clone(), failed.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = one_shot(&addr, &tok, "print(\"hello\")").await;
                    if r.status == 200 && r.json()["stdout"] == "hello\n" {
                        times
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(t.elapsed());
                    } else {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    let mut times = std::mem::take(&mut *times.lock().unwrap_or_else(|p| p.into_inner()));
    times.sort();
    Load {
        rate: times.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&times, 0.5),
        p99: percentile(&times, 0.99),
        failed: failed.load(std::sync::atomic::Ordering::Relaxed),
    }
}

fn record(i: usize) -> RunRecord {
    RunRecord {
        id: format!("bench-{i:08}-{}", std::process::id()),
        user: "bench".into(),
        started_at_ms: 1,
        finished_at_ms: 2,
        duration_ms: 1,
        outcome: "exited".into(),
        code: 0,
        message: "Script finished".into(),
        output_bytes: 6,
        output_truncated: false,
        recorded: false,
        runtime: "python".into(),
        node: String::new(),
        network: Vec::new(),
        owner: String::new(),
    }
}

/// Per-run cost of storing history: one session storing runs one after another (each waits for
/// its own write: PostgreSQL's commit; SQLite's queue), and [`CLIENTS`] * 4 sessions at once
/// (the writers batch), both until everything is on disk.
async fn history_rows(dir: &Path, pg: &Postgres) -> anyhow::Result<()> {
    let config = HistoryConfig {
        path: dir.join("bench-history.sqlite3"),
        ..HistoryConfig::default()
    };
    let sqlite = Arc::new(History::open(&config)?);
    let node = weir_service::cluster::Node::new("bench");
    let pg_config = weir_service::cluster::pg_config(Some(&pg.url()), &node)?
        .ok_or_else(|| anyhow::anyhow!("no PostgreSQL config"))?;
    let postgres = Arc::new(History::connect(&config, pg_config, &node).await?);
    for (name, history) in [("SQLite", sqlite), ("PostgreSQL", postgres)] {
        let serial = store_runs(&history, 1, 0).await;
        let parallel = store_runs(&history, CLIENTS * 4, HISTORY_RUNS).await;
        row(
            &format!("history: one run stored, {name}"),
            format!("{} / {}", per_run(serial), per_run(parallel)),
            "",
            "1 / 32 at once",
        );
    }
    Ok(())
}

fn per_run(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// Time per run for `sessions` storing [`HISTORY_RUNS`] runs between them, flushed.
async fn store_runs(history: &Arc<History>, sessions: usize, offset: usize) -> Duration {
    let started = Instant::now();
    let each = HISTORY_RUNS / sessions;
    let tasks: Vec<_> = (0..sessions)
        .map(|s| {
            let history = history.clone();
            tokio::spawn(async move {
                for i in 0..each {
                    history.store(record(offset + s * each + i), None).await;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    history.flush().await;
    started.elapsed() / (each * sessions) as u32
}
