//! The test harness: a real server on a random port with a fresh data directory, tokens for
//! the principals of [`CONFIG`], and typed helpers for the state protocol.
//!
//! A state request is built by naming who sends it, then what it asks, then sent:
//!
//! ```text
//! t.as_("alice").get("dev/app").send().await
//! t.as_("alice").post("dev/app", state_doc(1, "L", "")).lock_id("A1").send().await
//! t.as_("alice").lock("prod/net").id("PLAN1").operation("OperationTypePlan").send().await
//! t.as_("alice").unlock("dev/app").id("A1").send().await
//! t.as_("pat").delete("prod/net").send().await
//! t.as_("bob").on(&other.base).request("PUT", "dev/app?ID=A1").body(doc).send().await
//! t.anonymous().get("dev/app").send().await
//! t.as_("ci-prod").with_secret(&jwt).lock(&path).id("MAIN").send().await
//! t.bearer(&jwt).post("prod/network", doc).send().await
//! ```
//!
//! A path is `ENV/NAME` as in the backend address (with a query string when the test wants
//! one); `.on(base)` sends to another server instance sharing the storage; a lock is for
//! OperationTypeApply unless `.operation(..)` says otherwise.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use bulkhead::audit::Record;
use bulkhead::config::Config;
use bulkhead::http::App;
use bulkhead::identity::{token, Principal};
use bulkhead::store::environment::VersionMeta;
use bulkhead::time::{Clock, Shift};
use reqwest::{Method, StatusCode};

/// Three environments. alice and bob develop (team app), pat runs the platform (team
/// platform, owner of staging and prod), eve belongs to no team.
pub const CONFIG: &str = r#"
server {
  listen   = "127.0.0.1:0"
  data_dir = "data"
}
team "platform" { members = ["pat"] }
team "app"      { members = ["alice", "bob"] }
user "eve" {}
service "ci-staging" {}
service "ci-prod" {}

environment "dev" {
  owner          = "team:app"
  read           = ["team:app", "team:platform"]
  write          = ["team:app", "team:platform"]
  force_write    = ["user:pat"]
  max_state_size = "64KiB"
}
environment "staging" {
  owner = "team:platform"
  read  = ["team:app", "team:platform"]
  write = ["team:platform", "service:ci-staging"]
}
environment "prod" {
  owner = "team:platform"
  read  = ["team:app", "team:platform"]
  write = ["service:ci-prod"]
}
"#;

pub const PRINCIPALS: &[&str] = &[
    "alice",
    "bob",
    "pat",
    "quinn",
    "eve",
    "ci-staging",
    "ci-prod",
];

pub struct TestApp {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    /// Moves the server's clock forward: what a test that waits for an expiry does instead of
    /// sleeping.
    pub clock: Shift,
    tokens: HashMap<String, String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// [`CONFIG`] with more lines in its `server` block.
pub fn config_with_server(lines: &str) -> String {
    CONFIG.replace(DATA_DIR_LINE, &format!("{DATA_DIR_LINE}\n  {lines}"))
}

/// Runs `bulkhead audit verify` on the config in `dir` and asserts every chain is intact.
pub async fn assert_audit_verifies(dir: &Path) {
    let verify = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["audit", "verify", "--config", "bulkhead.hcl"])
        .current_dir(dir)
        .output()
        .await
        .expect("run bulkhead audit verify");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(CONFIG).await
}

pub async fn spawn_app_with(config_text: &str) -> TestApp {
    spawn_app_on(&with_test_storage(config_text)).await
}

/// A server on SQLite whatever storage this run is on, for a test about SQLite itself (its
/// files, its disk).
pub async fn spawn_app_on_sqlite(config_text: &str) -> TestApp {
    spawn_app_on(config_text).await
}

/// A server on `config_text` exactly as given, in a fresh directory.
async fn spawn_app_on(config_text: &str) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("bulkhead.hcl");
    std::fs::write(&config_path, config_text).expect("write config");
    spawn_app_in(dir).await
}

/// A server on the config already written to `bulkhead.hcl` in `dir`, and on whatever its
/// data directory already holds.
pub async fn spawn_app_in(dir: tempfile::TempDir) -> TestApp {
    let config_path = dir.path().join("bulkhead.hcl");
    let config = Config::load(&config_path).expect("test config is valid");
    let (clock, shift) = Clock::shifted();
    let app = App::open_with(config, clock).await.expect("server opens");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = app.clone();
    tokio::spawn(async move {
        let _ = bulkhead::http::serve(served, listener, async {
            let _ = rx.await;
        })
        .await;
    });
    let mut tokens = HashMap::new();
    for name in PRINCIPALS {
        if let Some(p) = Principal::lookup(&app.config, name) {
            let issued = token::issue(&app.stores.system, &p, Record::new("token:create"))
                .await
                .expect("issue token");
            tokens.insert(name.to_string(), issued.token);
        }
    }
    TestApp {
        addr,
        app,
        dir,
        client: reqwest::Client::new(),
        clock: shift,
        tokens,
        shutdown: Some(tx),
    }
}

/// A `bulkhead serve` process, killed when dropped.
pub struct Served {
    pub child: tokio::process::Child,
    /// Its base URL.
    pub base: String,
    /// Where its log (stderr) goes.
    pub log: PathBuf,
}

/// Starts `bulkhead serve --config bulkhead.hcl` in `dir` on a free port, logging at debug
/// level to a file of its own, and returns once it listens.
pub async fn serve_process(dir: &Path) -> Served {
    use tokio::io::AsyncBufReadExt;
    let log = dir.join(format!("serve-{:08x}.log", rand::random::<u32>()));
    let log_file = std::fs::File::create(&log).expect("create the log file");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args([
            "serve",
            "--config",
            "bulkhead.hcl",
            "--listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir)
        .env("BULKHEAD_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("bulkhead serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let first = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await
        .expect("read stdout")
        .expect("bulkhead serve announces its address");
    let base = first
        .strip_prefix("bulkhead listening on ")
        .expect("the address line")
        .to_string();
    Served { child, base, log }
}

/// A LockInfo as terraform 1.11 sends it.
pub fn lock_info(id: &str, operation: &str) -> String {
    serde_json::json!({
        "ID": id,
        "Operation": operation,
        "Info": "",
        "Who": "dev@laptop",
        "Version": "1.11.4",
        "Created": "2026-11-27T10:00:00.000000000Z",
        "Path": "",
    })
    .to_string()
}

/// A minimal terraform state document.
pub fn state_doc(serial: i64, lineage: &str, extra: &str) -> Vec<u8> {
    format!(
        r#"{{"version":4,"terraform_version":"1.11.4","serial":{serial},"lineage":"{lineage}","outputs":{{}},"resources":[]{extra}}}"#
    )
    .into_bytes()
}

impl TestApp {
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/v1/state/{path}", self.base())
    }

    /// Starts `bulkhead serve` as a process of its own on this app's config (so on the same
    /// storage).
    pub async fn serve_process(&self) -> Served {
        serve_process(self.dir.path()).await
    }

    /// The `bulkhead` command line, run in the test's folder against this server
    /// (`BULKHEAD_ADDR`) with the token `secret` (`BULKHEAD_TOKEN`). It blocks: a test that
    /// calls it runs on the multi-thread runtime, or the server could not answer.
    pub fn cli(&self, secret: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(args)
            .current_dir(self.dir.path())
            .env("BULKHEAD_ADDR", self.base())
            .env("BULKHEAD_TOKEN", secret)
            .output()
            .expect("run bulkhead")
    }

    pub fn token(&self, who: &str) -> &str {
        self.tokens
            .get(who)
            .map(String::as_str)
            .expect("a token for a test principal")
    }

    /// Requests to the state protocol sent as `who` (HTTP Basic with its token).
    pub fn as_(&self, who: impl AsRef<str>) -> Requester<'_> {
        self.requester(Credentials::Basic {
            name: who.as_ref().to_string(),
            secret: None,
        })
    }

    /// Requests to the state protocol with `jwt` as a Bearer token, which names no service:
    /// every service of the issuer may claim it.
    pub fn bearer(&self, jwt: impl AsRef<str>) -> Requester<'_> {
        self.requester(Credentials::Bearer(jwt.as_ref().to_string()))
    }

    /// Requests to the state protocol sent without credentials.
    pub fn anonymous(&self) -> Requester<'_> {
        self.requester(Credentials::None)
    }

    fn requester(&self, credentials: Credentials) -> Requester<'_> {
        Requester {
            app: self,
            credentials,
            base: self.base(),
            client: self.client.clone(),
            forwarded_for: None,
        }
    }

    /// `GET /v1/status` as `who`, which must answer 200: every environment they may read.
    pub async fn status_as(&self, who: &str) -> serde_json::Value {
        let status = self
            .client
            .get(format!("{}/v1/status", self.base()))
            .basic_auth(who, Some(self.token(who)))
            .send()
            .await
            .expect("GET /v1/status");
        assert_status(&status, reqwest::StatusCode::OK);
        status.json().await.expect("status is JSON")
    }

    /// The store of `env`, its database opened (and created) if it is not open.
    pub async fn store(&self, env: &str) -> Arc<bulkhead::store::EnvStore> {
        let config = &self.app.config;
        let environment = config.environment(env).expect("known environment");
        self.app
            .stores
            .open_environment(config, environment)
            .await
            .unwrap_or_else(|down| panic!("{}", down.sentence(env)))
    }

    /// Every stored version of `env`/`state`.
    pub async fn versions(&self, env: &str, state: &str) -> Vec<VersionMeta> {
        self.store(env).await.history(state).await.expect("history")
    }

    /// The content of the newest version, straight from the store.
    pub async fn stored(&self, env: &str, state: &str) -> Option<Vec<u8>> {
        self.store(env)
            .await
            .latest_content(state)
            .await
            .expect("read")
            .map(|(_, c)| c)
    }

    /// The records of one audit chain (`None`: the server's).
    pub async fn chain(&self, env: Option<&str>) -> Vec<Record> {
        let db = match env {
            Some(env) => bulkhead::store::ChainStore::Environment(self.store(env).await),
            None => self.app.stores.audit_store(None),
        };
        let (rows, _) = db.read_chain().await.expect("audit chain");
        rows.iter()
            .map(|r| serde_json::from_str(&r.record).expect("record"))
            .collect()
    }

    /// The audit records of an environment (`None`: the server's chain): those of its chain,
    /// and those the server's chain holds of requests made while its database was not open
    /// (refused before it was opened), by time.
    pub async fn audit(&self, env: Option<&str>) -> Vec<Record> {
        let Some(env) = env else {
            return self.chain(None).await;
        };
        let mut records = self.chain(Some(env)).await;
        records.extend(
            self.chain(None)
                .await
                .into_iter()
                .filter(|r| r.environment.as_deref() == Some(env)),
        );
        records.sort_by(|a, b| a.time.cmp(&b.time));
        records
    }

    /// The version each recorded `state:read` of an environment names, oldest first.
    pub async fn read_versions(&self, env: &str) -> Vec<Option<i64>> {
        self.audit(Some(env))
            .await
            .into_iter()
            .filter(|r| r.action == "state:read")
            .map(|r| r.version)
            .collect()
    }

    /// The newest audit record of an environment that matches `pred`.
    pub async fn newest_audit(&self, env: &str, pred: impl Fn(&Record) -> bool) -> Record {
        self.audit(Some(env))
            .await
            .into_iter()
            .rev()
            .find(|r| pred(r))
            .expect("a matching audit record")
    }

    /// The newest audit record of an environment.
    pub async fn last_audit(&self, env: &str) -> Record {
        self.audit(Some(env)).await.pop().expect("an audit record")
    }
}

/// Who sends a request and to which server; its methods start a request to
/// `/v1/state/{path}` (a path is `ENV/NAME`, with a query string if the test wants one).
pub struct Requester<'a> {
    app: &'a TestApp,
    credentials: Credentials,
    base: String,
    client: reqwest::Client,
    forwarded_for: Option<String>,
}

/// How a request proves who sends it.
enum Credentials {
    None,
    /// HTTP Basic: a principal's name and its secret (an OIDC token; its own token if none).
    Basic {
        name: String,
        secret: Option<String>,
    },
    Bearer(String),
}

impl<'a> Requester<'a> {
    /// With `secret` as the Basic password instead of the principal's token, e.g. the
    /// pipeline's OIDC token.
    pub fn with_secret(mut self, secret: impl AsRef<str>) -> Self {
        if let Credentials::Basic { secret: s, .. } = &mut self.credentials {
            *s = Some(secret.as_ref().to_string());
        } else {
            panic!("with_secret(..) replaces the token of as_(..), and there is none here");
        }
        self
    }

    /// To another server instance sharing this app's storage, at base URL `base`.
    pub fn on(mut self, base: impl AsRef<str>) -> Self {
        self.base = base.as_ref().to_string();
        self
    }

    /// Over TLS at `base`, through `client` (which holds the trust and any client
    /// certificate).
    pub fn over(mut self, base: impl AsRef<str>, client: &reqwest::Client) -> Self {
        self.base = base.as_ref().to_string();
        self.client = client.clone();
        self
    }

    /// With `X-Forwarded-For: addresses`, as a proxy (or someone posing as one) sends it.
    pub fn forwarded_for(mut self, addresses: &str) -> Self {
        self.forwarded_for = Some(addresses.to_string());
        self
    }

    pub fn get(self, path: impl AsRef<str>) -> StateRequest<'a> {
        self.request("GET", path)
    }

    /// A write of `content`; `.lock_id(..)` sends it under a lock (`?ID=`).
    pub fn post(self, path: impl AsRef<str>, content: Vec<u8>) -> StateRequest<'a> {
        self.request("POST", path).body(content)
    }

    pub fn delete(self, path: impl AsRef<str>) -> StateRequest<'a> {
        self.request("DELETE", path)
    }

    /// A LOCK with a LockInfo as terraform sends it; `.id(..)` is required.
    pub fn lock(self, path: impl AsRef<str>) -> LockRequest<'a> {
        LockRequest::new(self.request("LOCK", path))
    }

    /// An UNLOCK with a LockInfo as terraform sends it; `.id(..)` is required.
    pub fn unlock(self, path: impl AsRef<str>) -> LockRequest<'a> {
        LockRequest::new(self.request("UNLOCK", path))
    }

    /// Any method, e.g. PUT, PATCH, or a LOCK with a body of the test's own.
    pub fn request(self, method: &str, path: impl AsRef<str>) -> StateRequest<'a> {
        StateRequest {
            from: self,
            method: Method::from_bytes(method.as_bytes()).expect("an HTTP method"),
            path: path.as_ref().to_string(),
            lock_id: None,
            body: None,
        }
    }
}

/// One request to the state protocol, sent by [`StateRequest::send`].
pub struct StateRequest<'a> {
    from: Requester<'a>,
    method: Method,
    path: String,
    lock_id: Option<String>,
    body: Option<Vec<u8>>,
}

impl StateRequest<'_> {
    /// Names the lock the request is made under (`ID=` in the query), as terraform does on a
    /// write.
    pub fn lock_id(mut self, id: impl AsRef<str>) -> Self {
        self.lock_id = Some(id.as_ref().to_string());
        self
    }

    /// A JSON body.
    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }

    pub async fn send(self) -> reqwest::Response {
        let Requester {
            app,
            credentials,
            base,
            client,
            forwarded_for,
        } = self.from;
        let path = match &self.lock_id {
            Some(id) if self.path.contains('?') => format!("{}&ID={id}", self.path),
            Some(id) => format!("{}?ID={id}", self.path),
            None => self.path,
        };
        let mut req = client.request(self.method, format!("{base}/v1/state/{path}"));
        if let Some(addresses) = forwarded_for {
            req = req.header("X-Forwarded-For", addresses);
        }
        req = match credentials {
            Credentials::None => req,
            Credentials::Basic { name, secret } => {
                let secret = secret.unwrap_or_else(|| app.token(&name).to_string());
                req.basic_auth(name, Some(secret))
            }
            Credentials::Bearer(jwt) => req.bearer_auth(jwt),
        };
        if let Some(body) = self.body {
            req = req.header("Content-Type", "application/json").body(body);
        }
        req.send().await.expect("request reaches the server")
    }
}

/// A LOCK or UNLOCK whose body is a LockInfo built from `.id(..)` and `.operation(..)`.
pub struct LockRequest<'a> {
    request: StateRequest<'a>,
    id: Option<String>,
    operation: String,
}

impl<'a> LockRequest<'a> {
    fn new(request: StateRequest<'a>) -> Self {
        LockRequest {
            request,
            id: None,
            operation: "OperationTypeApply".to_string(),
        }
    }

    /// The LockInfo's ID.
    pub fn id(mut self, id: impl AsRef<str>) -> Self {
        self.id = Some(id.as_ref().to_string());
        self
    }

    /// The LockInfo's operation; OperationTypeApply unless set.
    pub fn operation(mut self, operation: &str) -> Self {
        self.operation = operation.to_string();
        self
    }

    pub async fn send(self) -> reqwest::Response {
        let id = self
            .id
            .expect("a LOCK or UNLOCK built by the helpers names its ID with .id(..)");
        let body = lock_info(&id, &self.operation).into_bytes();
        self.request.body(body).send().await
    }
}

pub fn assert_status(resp: &reqwest::Response, want: StatusCode) {
    assert_eq!(resp.status(), want, "unexpected status for {}", resp.url());
}

/// With this set to a PostgreSQL URL, every test's server keeps its data on that server, in a
/// database of the test's own, instead of SQLite files: the same tests, the other storage.
const POSTGRES_VAR: &str = "BULKHEAD_TEST_POSTGRES";

/// The line of a test config that [`with_test_storage`] points at PostgreSQL.
const DATA_DIR_LINE: &str = "data_dir = \"data\"";

/// How long the first test waits for the PostgreSQL server before the run is stopped.
const POSTGRES_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The PostgreSQL server this run keeps test data on, if [`POSTGRES_VAR`] names one. The
/// first call connects to it; when that fails the whole run stops there with one sentence,
/// since a run asked for PostgreSQL must neither hang, nor fall back to SQLite, nor fail every
/// test one by one with the same cause.
fn postgres_admin_url() -> Option<&'static str> {
    static CHECKED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let url = std::env::var(POSTGRES_VAR).ok().filter(|v| !v.is_empty())?;
            if let Err(why) = on_own_runtime(postgres_reachable(url.clone())) {
                use std::io::Write;
                // Straight to the process's stderr: the test harness captures what tests print.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n{POSTGRES_VAR}={url}: {why}. The tests were asked to run on PostgreSQL \
                     and cannot: start that server (`.ci/postgres start DIR` prints a URL) or \
                     unset {POSTGRES_VAR} to run them on SQLite.\n"
                );
                std::process::exit(2);
            }
            Some(url)
        })
        .as_deref()
}

/// Whether a PostgreSQL server answers at `url`, within [`POSTGRES_CONNECT_TIMEOUT`].
async fn postgres_reachable(url: String) -> Result<(), String> {
    use sqlx::Connection;
    reqwest::Url::parse(&url).map_err(|e| format!("not a PostgreSQL URL ({e})"))?;
    let connect = sqlx::PgConnection::connect(&url);
    match tokio::time::timeout(POSTGRES_CONNECT_TIMEOUT, connect).await {
        Ok(Ok(conn)) => conn
            .close()
            .await
            .map_err(|e| format!("cannot connect: {e}")),
        Ok(Err(e)) => Err(format!("cannot connect: {e}")),
        Err(_) => Err(format!(
            "no answer within {} s",
            POSTGRES_CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Whether this run keeps test data on PostgreSQL.
pub fn on_postgres() -> bool {
    postgres_admin_url().is_some()
}

/// A test's config as written to disk: on PostgreSQL runs, with `storage` pointing the
/// server block at a fresh database. Panics on a PostgreSQL run when the config has no
/// [`DATA_DIR_LINE`] to put it beside: a test meant for SQLite alone says so with
/// [`spawn_app_on_sqlite`] instead.
pub fn with_test_storage(config_text: &str) -> String {
    let Some(admin) = postgres_admin_url() else {
        return config_text.to_string();
    };
    assert!(
        config_text.contains(DATA_DIR_LINE),
        "this test's config has no `{DATA_DIR_LINE}` line in its server block, so it cannot be \
         moved to PostgreSQL as {POSTGRES_VAR} asks: keep that line (add server lines after \
         it, as config_with_server does), or start the server with spawn_app_on_sqlite(..) if \
         the test is about SQLite alone"
    );
    let url = fresh_database(admin);
    config_text.replacen(
        DATA_DIR_LINE,
        &format!("{DATA_DIR_LINE}\n  storage  = \"{url}\""),
        1,
    )
}

/// Creates an empty database on the test PostgreSQL server and returns its URL. Runs on a
/// thread of its own so that sync and async tests alike can call it.
fn fresh_database(admin: &str) -> String {
    let admin = admin.to_string();
    on_own_runtime(async move {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_VAR}={admin}: cannot connect: {e}"));
        let name = format!("bulkhead_test_{:016x}", rand::random::<u64>());
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create a test database");
        let mut url = reqwest::Url::parse(&admin).expect("a PostgreSQL URL");
        url.set_path(&name);
        url.to_string()
    })
}

/// Runs a future to completion on a thread and runtime of its own, so that sync tests and
/// async tests alike can wait for it.
pub fn on_own_runtime<T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(future)
    })
    .join()
    .expect("the future completed")
}

/// Everything stored about tokens, as bytes, to search for secrets: the SQLite files, or the
/// rows of the tokens table on PostgreSQL.
pub fn stored_tokens(config_dir: &Path) -> Vec<Vec<u8>> {
    let config = Config::load(&config_dir.join("bulkhead.hcl")).expect("test config");
    match config.server.storage {
        Some(url) => on_own_runtime(async move {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let (rows,): (Option<String>,) =
                sqlx::query_as("SELECT string_agg(t::text, ',') FROM bulkhead.tokens t")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            vec![rows.expect("tokens are stored").into_bytes()]
        }),
        None => {
            let db = config.server.data_dir.join("bulkhead.db");
            let wal = config.server.data_dir.join("bulkhead.db-wal");
            vec![
                std::fs::read(db).unwrap(),
                std::fs::read(wal).unwrap_or_default(),
            ]
        }
    }
}

/// Runs SQL on an environment's database (`server` for the server's own) through a
/// connection of its own, as someone with direct access to the database would.
pub async fn exec_sql(config_dir: &Path, env: &str, sql: &str) {
    use sqlx::{Connection, Executor};
    let config = Config::load(&config_dir.join("bulkhead.hcl")).expect("test config");
    match &config.server.storage {
        Some(url) => {
            let schema = if env == "server" {
                "bulkhead".to_string()
            } else {
                format!("bulkhead_env_{env}")
            };
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            conn.execute(format!("SET search_path TO \"{schema}\"; {sql}").as_str())
                .await
                .unwrap();
        }
        None => {
            let path = if env == "server" {
                config.server.data_dir.join("bulkhead.db")
            } else {
                bulkhead::config::storage::environment_file(&config.server.data_dir, env)
            };
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
                .await
                .unwrap();
            conn.execute(sql).await.unwrap();
            conn.close().await.unwrap();
        }
    }
}

/// Lifts the append-only guards of an environment's audit table and audit index, as someone
/// with direct access to the database could.
pub async fn allow_audit_tampering(config_dir: &Path, env: &str) {
    let sql = if on_postgres() {
        "ALTER TABLE audit DISABLE TRIGGER audit_append_only; \
         ALTER TABLE audit_index DISABLE TRIGGER audit_index_append_only"
    } else {
        "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete; \
         DROP TRIGGER audit_index_no_update; DROP TRIGGER audit_index_no_delete"
    };
    exec_sql(config_dir, env, sql).await;
}

/// Makes every new audit record of an environment fail to be written, as a full disk would.
pub async fn break_audit_writes(config_dir: &Path, env: &str) {
    let sql = if on_postgres() {
        "CREATE FUNCTION fail_audit() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'disk full'; END $$; \
         CREATE TRIGGER fail_audit BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION fail_audit()"
    } else {
        "CREATE TRIGGER fail_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    };
    exec_sql(config_dir, env, sql).await;
}

/// Certificate authorities and certificates a test makes (rcgen), as PEM.
pub struct Pki {
    ca: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A certificate and its private key, as PEM.
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl Issued {
    /// The certificate and key together, as a client presents them.
    pub fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.cert, self.key).as_bytes())
            .expect("a PEM identity")
    }
}

impl Pki {
    /// A certificate authority called `name`.
    pub fn new(name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = params.self_signed(&key).expect("a CA certificate");
        Pki { ca, key }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for 127.0.0.1.
    pub fn server(&self) -> Issued {
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("server params");
        self.issue(params)
    }

    /// A client certificate whose subject is `CN=cn,O=org`.
    pub fn client(&self, cn: &str, org: &str) -> Issued {
        self.numbered_client(cn, org, 1)
    }

    /// [`Pki::client`] with the serial number `serial`.
    pub fn numbered_client(&self, cn: &str, org: &str, serial: u64) -> Issued {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, org);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        self.issue(params)
    }

    /// A revocation list of this authority listing the certificates of serial numbers
    /// `revoked`, as PEM.
    pub fn crl(&self, revoked: &[u64]) -> String {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|&serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(serial),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.ca, &self.key)
            .expect("a revocation list")
            .pem()
            .expect("PEM")
    }

    fn issue(&self, params: rcgen::CertificateParams) -> Issued {
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, &self.ca, &self.key)
            .expect("a signed certificate");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A client of a server whose certificate this authority issued, presenting `identity`.
    pub fn client_of_server(&self, identity: Option<&Issued>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem().as_bytes()).expect("CA PEM"),
            );
        if let Some(identity) = identity {
            builder = builder.identity(identity.identity());
        }
        builder.build().expect("a TLS client")
    }
}

/// A server over TLS, and where its certificate files are.
pub struct TlsApp {
    pub t: TestApp,
    /// Its base URL: `https://127.0.0.1:PORT`.
    pub base: String,
    _files: tempfile::TempDir,
}

/// A server with TLS (its certificate from `pki`) that verifies client certificates against
/// `pki` too, on [`CONFIG`] with `edit` applied.
pub async fn spawn_tls(pki: &Pki, edit: impl FnOnce(String) -> String) -> TlsApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = dir.path();
    let server = pki.server();
    let (cert, key, ca) = (
        files.join("server.pem"),
        files.join("server.key"),
        files.join("runners-ca.pem"),
    );
    std::fs::write(&cert, &server.cert).expect("write");
    std::fs::write(&key, &server.key).expect("write");
    std::fs::write(&ca, pki.ca_pem()).expect("write");
    let config = config_with_server(&format!(
        "tls {{\n    cert_file = \"{}\"\n    key_file = \"{}\"\n    client_ca_file = \"{}\"\n  }}",
        cert.display(),
        key.display(),
        ca.display()
    ));
    let t = spawn_app_with(&edit(config)).await;
    let base = format!("https://127.0.0.1:{}", t.addr.port());
    TlsApp {
        t,
        base,
        _files: dir,
    }
}
