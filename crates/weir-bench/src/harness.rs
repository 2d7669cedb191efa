//! Real cluster components on loopback, for the cluster test (`tests/cluster.rs`) and the
//! cluster rows of `weir bench`: a PostgreSQL server (Debian's package; as root it runs as the
//! `postgres` user, since `initdb` refuses root) in a temporary directory, `weir serve` nodes
//! sharing it, and HAProxy running `deploy/haproxy.cfg` as shipped. Every process is stopped
//! when its handle is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The token secret the harness's nodes share.
pub const SECRET: &str = "weir-cluster-harness";

/// A token for `user` signed with [`SECRET`], valid for `ttl_secs`.
pub fn token(user: &str, ttl_secs: u64) -> String {
    weir_service::auth::mint(SECRET.as_bytes(), user, Duration::from_secs(ttl_secs))
        .unwrap_or_default()
}

/// A loopback port nothing listens on now.
pub fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()
        .map(|a| a.port())
}

/// A child process, killed and reaped when dropped.
pub struct Proc(Child);

impl Proc {
    /// Sends `sig` (SIGTERM, SIGKILL, ...) and waits for the process to end.
    pub fn end_with(mut self, sig: libc::c_int) -> Option<std::process::ExitStatus> {
        send_signal(&self.0, sig);
        let status = self.0.wait().ok();
        std::mem::forget(self);
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[allow(unsafe_code)]
fn send_signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on a child this process started and has not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// A PostgreSQL program: on `PATH`, or in Debian's versioned directory.
pub fn pg_bin(name: &str) -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .map(|v| v.path().join("bin").join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(debian)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!("PostgreSQL's {name} is not installed (apt-get install postgresql)")
        })
}

/// The `postgres` user's uid and gid when this process is root; `None` otherwise.
#[allow(unsafe_code)]
fn postgres_user() -> anyhow::Result<Option<(u32, u32)>> {
    // SAFETY: getuid has no preconditions; getpwnam returns a pointer to static storage that is
    // read at once, before any other call could reuse it.
    unsafe {
        if libc::getuid() != 0 {
            return Ok(None);
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        if pw.is_null() {
            anyhow::bail!(
                "as root, PostgreSQL needs the `postgres` user (Debian's postgresql package)"
            );
        }
        Ok(Some(((*pw).pw_uid, (*pw).pw_gid)))
    }
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// A PostgreSQL server of its own, on a loopback port, trusting the user `weir`.
pub struct Postgres {
    proc: Option<Proc>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// `initdb` in a temporary directory, then the server; returns once it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        let user = postgres_user()?;
        let dir = tempfile::Builder::new().prefix("weir-pg-").tempdir()?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let data = dir.path().join("data");
        let out = as_user(&mut Command::new(pg_bin("initdb")?), user)
            .args(["-A", "trust", "-U", "weir", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .output()?;
        if !out.status.success() {
            anyhow::bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("postgres.log"))?;
        let child = as_user(&mut Command::new(pg_bin("postgres")?), user)
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let pg = Postgres {
            proc: Some(Proc(child)),
            port,
            _dir: dir,
        };
        pg.wait_ready()?;
        Ok(pg)
    }

    /// The connection string of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgresql://weir@127.0.0.1:{}/postgres", self.port)
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let isready = pg_bin("pg_isready")?;
        loop {
            let ok = Command::new(&isready)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "weir",
                ])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("PostgreSQL did not start within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown: its sessions are terminated).
    pub fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.end_with(libc::SIGINT);
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `weir serve` process.
pub struct Node {
    pub id: String,
    pub addr: String,
    weir: PathBuf,
    config: PathBuf,
    database_url: Option<String>,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Node {
    /// A node named `id` of the `weir` binary, with its config and log in `dir`, on a free port;
    /// in cluster mode when `database_url` is given. `extra` is appended to its config.
    pub fn new(
        weir: &Path,
        dir: &Path,
        id: &str,
        database_url: Option<&str>,
        extra: &str,
    ) -> anyhow::Result<Self> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"{addr}\"\nmax_instances = 24\nwarm_instances = 2\n\
                 prepare_runtimes = false\nshutdown_grace_secs = 2\nruns_per_minute = 1000000\n\
                 {extra}\n[history]\npath = \"{}\"\n[cluster]\nnode_id = \"{id}\"\n",
                dir.join(format!("{id}.sqlite3")).display()
            ),
        )?;
        Ok(Node {
            id: id.into(),
            addr,
            weir: weir.into(),
            config,
            database_url: database_url.map(String::from),
            log: dir.join(format!("{id}.log")),
            proc: None,
        })
    }

    /// Starts the process (again, after [`Node::terminate`] or [`Node::kill9`]).
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(&self.weir);
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .env("WEIR_SECRET", SECRET)
            .env("WEIR_LOG", "info")
            .env_remove("WEIR_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(url) = &self.database_url {
            cmd.env("WEIR_DATABASE_URL", url);
        }
        self.proc = Some(Proc(cmd.spawn()?));
        Ok(())
    }

    /// What the node has logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200 (at most 120 s: a first start compiles the guest).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if http(&self.addr, "GET", "/readyz", None, b"").await.status == 200 {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("node {} not ready; its log:\n{}", self.id, self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then waits for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.take()?.end_with(libc::SIGTERM)
    }

    /// SIGKILL (`kill -9`).
    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.take() {
            p.end_with(libc::SIGKILL);
        }
    }
}

/// HAProxy running `deploy/haproxy.cfg` with a stats socket added.
pub struct HaProxy {
    _proc: Proc,
    pub addr: String,
    stats: PathBuf,
    log: PathBuf,
}

impl HaProxy {
    /// Starts HAProxy on a free port in front of exactly three nodes (`WEIR_NODE1..3`).
    pub fn start(repo: &Path, dir: &Path, nodes: [&str; 3]) -> anyhow::Result<Self> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let stats = dir.join("haproxy.sock");
        let extra = dir.join("stats.cfg");
        std::fs::write(
            &extra,
            format!("global\n    stats socket {} level admin\n", stats.display()),
        )?;
        let log_path = dir.join("haproxy.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(repo.join("deploy/haproxy.cfg"))
            .arg("-f")
            .arg(&extra)
            .env("WEIR_LB_BIND", &addr)
            .env("WEIR_NODE1", nodes[0])
            .env("WEIR_NODE2", nodes[1])
            .env("WEIR_NODE3", nodes[2])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("haproxy (apt-get install haproxy): {e}"))?;
        Ok(HaProxy {
            _proc: Proc(child),
            addr,
            stats,
            log: log_path,
        })
    }

    /// Sends one command to the stats socket; returns its answer.
    pub async fn command(&self, command: &str) -> String {
        let Ok(mut s) = tokio::net::UnixStream::connect(&self.stats).await else {
            return String::new();
        };
        if s.write_all(format!("{command}\n").as_bytes())
            .await
            .is_err()
        {
            return String::new();
        }
        let mut text = String::new();
        let _ = s.read_to_string(&mut text).await;
        text
    }

    /// The status (`UP`, `DOWN`, `UP 1/2`, ...) of each server of `backend`.
    pub async fn servers(&self, backend: &str) -> Vec<(String, String)> {
        self.command("show stat")
            .await
            .lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > 17 && f[0] == backend && f[1].starts_with("node"))
            .map(|f| (f[1].to_string(), f[17].to_string()))
            .collect()
    }

    /// Waits (at most 30 s) until server `name` has `status` in both backends.
    pub async fn wait_for(&self, name: &str, status: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut all = true;
            for backend in ["weir_sessions", "weir_oneshot"] {
                let servers = self.servers(backend).await;
                all &= servers.iter().any(|(n, s)| n == name && s == status);
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "HAProxy never saw {name} {status}: {:?}; its log:\n{}",
                    self.servers("weir_sessions").await,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An HTTP/1.1 response: status (0 if the exchange failed), headers (lower-case names), body.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

/// One request on a connection of its own (`Connection: close`), with a bearer token if given.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Response {
    let failed = Response {
        status: 0,
        headers: Vec::new(),
        body: String::new(),
    };
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return failed;
    };
    let _ = stream.set_nodelay(true);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&String::from_utf8_lossy(body));
    if stream.write_all(req.as_bytes()).await.is_err() {
        return failed;
    }
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(90), stream.read_to_end(&mut raw)).await;
    if !matches!(read, Ok(Ok(_))) {
        return failed;
    }
    parse_response(&raw)
}

/// An HTTP/1.1 response read to its end (the connection closed): status line, headers, body.
pub fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_string(),
    }
}

/// `POST /v1/runs` of `source` (recorded, so a transcript is stored too).
pub async fn one_shot(addr: &str, token: &str, source: &str) -> Response {
    let body = serde_json::json!({ "source": source, "record": true }).to_string();
    http(addr, "POST", "/v1/runs", Some(token), body.as_bytes()).await
}
