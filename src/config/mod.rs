//! The configuration: `bulkhead.hcl` read into validated types.
//!
//! Everything past [`Config::load`] can rely on the invariants checked here: every principal
//! named in a list exists, names are unique and well formed, every environment has an owner.
//! This module reads files; it never opens a database or a socket.

pub mod hcl;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::hcl::Diagnostic;
use self::hcl::{Attr, Block, Literal};

/// The default limit on one state document.
pub const DEFAULT_MAX_STATE_SIZE: u64 = 32 * 1024 * 1024;
/// The default of `environment { max_plan_size }`: plans carry the state before and after,
/// so they are larger than states.
pub const DEFAULT_MAX_PLAN_SIZE: u64 = 64 * 1024 * 1024;

/// A config file that cannot be used, with every problem found in it.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    fn single(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            diagnostics: vec![Diagnostic {
                line: None,
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match d.line {
                Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, d.message)?,
                None => write!(f, "{}: {}", self.file.display(), d.message)?,
            }
        }
        Ok(())
    }
}

/// Someone or something a rule can name: `team:NAME`, `user:NAME` or `service:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Team(String),
    User(String),
    Service(String),
}

impl Subject {
    fn parse(text: &str) -> Result<Subject, String> {
        let (kind, name) = text.split_once(':').ok_or_else(|| {
            format!("`{text}` must say what it is: team:NAME, user:NAME or service:NAME")
        })?;
        let name = name.to_string();
        match kind {
            "team" => Ok(Subject::Team(name)),
            "user" => Ok(Subject::User(name)),
            "service" => Ok(Subject::Service(name)),
            _ => Err(format!(
                "`{text}`: unknown kind `{kind}`; use team:NAME, user:NAME or service:NAME"
            )),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Team(n) => write!(f, "team:{n}"),
            Subject::User(n) => write!(f, "user:{n}"),
            Subject::Service(n) => write!(f, "service:{n}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub path: PathBuf,
    pub server: Server,
    /// Team name → member user names.
    pub teams: BTreeMap<String, Vec<String>>,
    /// Declared users and every team member.
    pub users: BTreeSet<String>,
    pub services: BTreeMap<String, Service>,
    /// Code-host handles (`@acme/platform`) of teams and users, for CODEOWNERS.
    pub handles: BTreeMap<Subject, String>,
    /// In the order of the file.
    pub environments: Vec<Environment>,
    /// Extra Cedar policy files, resolved against the config's folder.
    pub policy_files: Vec<PathBuf>,
}

/// A machine principal, such as a CI pipeline.
#[derive(Debug, Clone, Default)]
pub struct Service {
    /// Trust OIDC ID tokens from a CI provider (beside static tokens).
    pub oidc: Option<Oidc>,
}

#[derive(Debug, Clone)]
pub struct Oidc {
    pub issuer: String,
    pub audience: String,
    pub jwks: Jwks,
    /// Claims the token must carry with exactly these values, e.g. repository = "acme/infra";
    /// at least one of them is an [`IDENTITY_CLAIMS`] claim.
    pub claims: Vec<(String, String)>,
}

/// Where a service's OIDC signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jwks {
    /// `jwks_file`: read once, at start.
    File(PathBuf),
    /// `jwks_url`: fetched over HTTPS at start and again when a token names an unknown key.
    Url {
        url: String,
        /// `jwks_ca_file`: the only certificate authorities trusted for this URL (PEM); `None`
        /// trusts the usual public ones.
        ca_file: Option<PathBuf>,
    },
}

/// The claims that bind a token to one repository or project (GitHub: `repository`,
/// `repository_id`; GitLab: `project_path`, `project_id`; any provider: `sub`). An `oidc`
/// block must require one of them: issuer and audience alone are shared by every repository
/// of the provider.
pub const IDENTITY_CLAIMS: &[&str] = &[
    "sub",
    "repository",
    "repository_id",
    "project_path",
    "project_id",
];

/// Four-eyes approval of changes: an environment with it is *protected*.
#[derive(Debug, Clone)]
pub struct Approval {
    pub required: u32,
    /// Who may approve (default: the owner); never a change's own author.
    pub approvers: Vec<Subject>,
    /// How long an approval stays valid.
    pub expires: Duration,
    /// How long the lock an approved change was applied under may authorize writes: past it,
    /// writes under that lock are refused (a stuck or stolen apply cannot write for ever).
    pub apply_window: Duration,
}

/// The default of `approval { apply_window }`.
pub const APPLY_WINDOW: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Branches (from the verified OIDC `ref` claim) that may apply; empty: any.
    pub branches: Vec<String>,
}

/// Time-boxed emergency write without a change request.
#[derive(Debug, Clone)]
pub struct Breakglass {
    pub allowed: Vec<Subject>,
    pub max_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: String,
    pub data_dir: PathBuf,
    /// Where tokens and the server's own audit chain live, and the default for environments
    /// without storage of their own when it is PostgreSQL; `None` means SQLite files under
    /// the data directory.
    pub storage: Option<String>,
    pub tls: Option<Tls>,
    /// How long a token looked up in the database is trusted without looking again: a token
    /// revoked elsewhere (another instance, `bulkhead token revoke`) stops working within this
    /// time. Zero looks every request's token up.
    pub token_cache: Duration,
    pub audit_sync: AuditSync,
    pub connections: Connections,
    /// Where the key that chains audit records lives (`BULKHEAD_AUDIT_KEY` takes precedence).
    pub audit_key_file: PathBuf,
    /// Where signed checkpoints of every audit chain's head are written.
    pub checkpoint_dir: PathBuf,
    /// A checkpoint of a chain is written every this many records (and at start and shutdown).
    pub checkpoint_every: u64,
}

/// The default of `server { checkpoint_every }`.
pub const CHECKPOINT_EVERY: u64 = 1000;

impl Server {
    /// The audit settings' defaults, under `data_dir`.
    fn audit_defaults(data_dir: &Path) -> (PathBuf, PathBuf) {
        (data_dir.join("audit.key"), data_dir.join("checkpoints"))
    }
}

/// How long a client may take and how many connections it may hold (`server { header_timeout,
/// body_timeout, idle_timeout, max_connections }`): what keeps slow or idle clients from
/// holding the server's sockets, memory and open files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    /// From a connection's first byte (or the end of its previous request) to the end of a
    /// request's headers; the TLS handshake gets as long.
    pub header_timeout: Duration,
    /// From a request's headers to the last byte of its body.
    pub body_timeout: Duration,
    /// How long a connection may move no byte while no request is being handled.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait, unaccepted, until one closes.
    pub max_connections: usize,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// The longest any of the `server` timeouts may be.
const CONNECTION_TIMEOUT_MAX: Duration = Duration::from_secs(3600);
/// The most `server { max_connections }` may be.
const MAX_CONNECTIONS_MAX: u64 = 1_000_000;

/// The default of `server { token_cache }`.
pub const TOKEN_CACHE: Duration = Duration::from_secs(5);
/// The most `server { token_cache }` may be.
const TOKEN_CACHE_MAX: Duration = Duration::from_secs(3600);

/// Which audit records are on disk before their request is answered (`server { audit_sync }`).
/// Every record is committed before the answer, and a record that cannot be written refuses
/// its request, either way; this is only about when the disk is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditSync {
    /// Records of writes (state, locks, changes, tokens) go to disk with their effect; records
    /// of reads and refusals are flushed within a second, so a crash of the machine (not of
    /// bulkhead) can lose the last second of them. The default.
    Writes,
    /// Every record goes to disk before its answer.
    All,
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    /// Where the environment block starts in the config file.
    pub line: usize,
    pub owner: Subject,
    pub paths: Vec<String>,
    pub read: Vec<Subject>,
    pub write: Vec<Subject>,
    /// Who may release someone else's lock (default: the owner).
    pub force_unlock: Vec<Subject>,
    /// Who may push another lineage or an older serial (default: nobody).
    pub force_write: Vec<Subject>,
    /// Who may delete a state (default: the owner).
    pub delete: Vec<Subject>,
    /// A database URL of its own; `None` means the server's PostgreSQL, when it has one, or
    /// else a SQLite file under the data directory.
    pub storage: Option<String>,
    pub max_state_size: u64,
    /// The largest plan (`terraform show -json`) a change may be proposed with.
    pub max_plan_size: u64,
    /// How long a lock may sit idle (no write, no renewal by its holder) before another
    /// writer may take it over; `None`: never (a person force-unlocks).
    pub lock_lease: Option<Duration>,
    pub approval: Option<Approval>,
    pub pipeline: Option<Pipeline>,
    pub breakglass: Option<Breakglass>,
}

impl Environment {
    /// Whether writes need an approved change request.
    pub fn protected(&self) -> bool {
        self.approval.is_some()
    }

    /// How many approvals make a change approved (1 where the environment sets none).
    pub fn required_approvals(&self) -> u32 {
        self.approval.as_ref().map_or(1, |a| a.required)
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::single(path, format!("cannot read the config file: {e}")))?;
        Config::parse(path, &text)
    }

    /// Validates config text; `path` names the file in messages and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let root = hcl::parse(text).map_err(|diagnostics| ConfigError {
            file: path.to_path_buf(),
            diagnostics,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let mut v = Validator {
            diags: Vec::new(),
            base,
        };
        let config = v.config(path, &root);
        if v.diags.is_empty() {
            Ok(config)
        } else {
            v.diags.sort_by_key(|d| d.line);
            Err(ConfigError {
                file: path.to_path_buf(),
                diagnostics: v.diags,
            })
        }
    }

    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name == name)
    }

    /// The teams a user belongs to.
    pub fn teams_of<'a>(&'a self, user: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.teams
            .iter()
            .filter(move |(_, members)| members.iter().any(|m| m == user))
            .map(|(name, _)| name.as_str())
    }

    /// Whether a subject names something declared in this config.
    pub fn knows(&self, subject: &Subject) -> bool {
        match subject {
            Subject::Team(n) => self.teams.contains_key(n),
            Subject::User(n) => self.users.contains(n),
            Subject::Service(n) => self.services.contains_key(n),
        }
    }
}

/// Walks the parsed file, collecting every problem rather than stopping at the first.
struct Validator {
    diags: Vec<Diagnostic>,
    base: PathBuf,
}

/// A subject as written, with the line it was written on.
struct Named {
    subject: Subject,
    line: usize,
    attr: &'static str,
}

impl Validator {
    fn error(&mut self, line: usize, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            line: Some(line),
            message: message.into(),
        });
    }

    fn config(&mut self, path: &Path, root: &Block) -> Config {
        self.only_attrs(root, "the top level", &["policies"]);
        let policy_files = self
            .string_list(root, "policies", "the top level")
            .into_iter()
            .map(|(p, _)| self.base.join(p))
            .collect();

        let mut server = None;
        let mut teams = BTreeMap::new();
        let mut users = BTreeSet::new();
        let mut services = BTreeMap::new();
        let mut handles = BTreeMap::new();
        let mut environments: Vec<(Environment, Vec<Named>)> = Vec::new();
        let mut team_members: Vec<(String, usize)> = Vec::new();
        let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();

        for block in &root.blocks {
            let kind = block.kind.as_str();
            let Some(name) = self.label(block) else {
                continue;
            };
            if kind != "server" {
                if let Some(first) = seen.insert((kind.to_string(), name.clone()), block.line) {
                    self.error(
                        block.line,
                        format!("duplicate {kind} \"{name}\" (first declared on line {first})"),
                    );
                    continue;
                }
            }
            match kind {
                "server" => {
                    if server.is_some() {
                        self.error(block.line, "duplicate server block: there can be only one");
                    }
                    server = Some(self.server(block));
                }
                "team" => {
                    self.check_name(block.line, "team", &name, principal_name_ok);
                    self.only_attrs(block, &format!("team \"{name}\""), &["members", "handle"]);
                    if let Some(h) = self.string(block, "handle", &format!("team \"{name}\"")) {
                        handles.insert(Subject::Team(name.clone()), h);
                    }
                    let members: Vec<String> = self
                        .string_list(block, "members", &format!("team \"{name}\""))
                        .into_iter()
                        .map(|(m, line)| {
                            let m = m.strip_prefix("user:").unwrap_or(&m).to_string();
                            team_members.push((m.clone(), line));
                            m
                        })
                        .collect();
                    teams.insert(name, members);
                }
                "user" => {
                    self.check_name(block.line, "user", &name, principal_name_ok);
                    self.only_attrs(block, &format!("user \"{name}\""), &["handle"]);
                    if let Some(h) = self.string(block, "handle", &format!("user \"{name}\"")) {
                        handles.insert(Subject::User(name.clone()), h);
                    }
                    users.insert(name);
                }
                "service" => {
                    self.check_name(block.line, "service", &name, principal_name_ok);
                    let service = self.service(block, &name);
                    services.insert(name, service);
                }
                "environment" => {
                    self.check_name(block.line, "environment", &name, environment_name_ok);
                    let (env, named) = self.environment(block, name);
                    environments.push((env, named));
                }
                other => self.error(
                    block.line,
                    format!(
                        "unknown block `{other}`: expected server, team, user, service or environment"
                    ),
                ),
            }
        }

        for (member, line) in team_members {
            if services.contains_key(&member) {
                self.error(
                    line,
                    format!("`{member}` is a service; teams hold users only"),
                );
            } else {
                self.check_name(line, "team member", &member, principal_name_ok);
                users.insert(member);
            }
        }
        for name in users.iter().filter(|u| services.contains_key(*u)) {
            let line = seen
                .get(&("service".to_string(), name.clone()))
                .copied()
                .unwrap_or(0);
            self.error(
                line,
                format!("`{name}` is both a user and a service: a principal name must be unique"),
            );
        }

        let mut config = Config {
            path: path.to_path_buf(),
            server: server.unwrap_or_else(|| {
                let data_dir = self.base.join("bulkhead-data");
                let (audit_key_file, checkpoint_dir) = Server::audit_defaults(&data_dir);
                Server {
                    listen: "127.0.0.1:8080".into(),
                    data_dir,
                    storage: None,
                    tls: None,
                    token_cache: TOKEN_CACHE,
                    audit_sync: AuditSync::Writes,
                    audit_key_file,
                    checkpoint_dir,
                    checkpoint_every: CHECKPOINT_EVERY,
                    connections: Connections::default(),
                }
            }),
            teams,
            users,
            services,
            handles,
            environments: Vec::new(),
            policy_files,
        };
        for (env, named) in environments {
            for n in named {
                if !config.knows(&n.subject) {
                    self.error(
                        n.line,
                        format!(
                            "environment \"{}\": unknown principal {} in `{}`; declare it in a {} block",
                            env.name,
                            n.subject,
                            n.attr,
                            match n.subject {
                                Subject::Team(_) => "team",
                                Subject::User(_) => "user (or team members)",
                                Subject::Service(_) => "service",
                            }
                        ),
                    );
                }
            }
            config.environments.push(env);
        }
        config
    }

    fn label(&mut self, block: &Block) -> Option<String> {
        let want = usize::from(block.kind != "server");
        if block.labels.len() != want {
            let what = if want == 0 {
                format!("`{}` takes no label", block.kind)
            } else {
                format!(
                    "`{}` needs exactly one name: {} \"NAME\" {{ ... }}",
                    block.kind, block.kind
                )
            };
            self.error(block.line, what);
            return None;
        }
        Some(block.labels.first().cloned().unwrap_or_default())
    }

    fn check_name(&mut self, line: usize, what: &str, name: &str, ok: fn(&str) -> bool) {
        if !ok(name) {
            let rule = if what == "environment" {
                "[a-z0-9][a-z0-9-]*"
            } else {
                "[A-Za-z0-9][A-Za-z0-9._@-]*"
            };
            self.error(
                line,
                format!("{what} name \"{name}\" is not allowed: use {rule}"),
            );
        }
    }

    fn server(&mut self, block: &Block) -> Server {
        self.only_attrs(
            block,
            "server",
            &[
                "listen",
                "data_dir",
                "storage",
                "token_cache",
                "audit_sync",
                "audit_key_file",
                "checkpoint_dir",
                "checkpoint_every",
                "header_timeout",
                "body_timeout",
                "idle_timeout",
                "max_connections",
            ],
        );
        let listen = self
            .string(block, "listen", "server")
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        if listen.parse::<std::net::SocketAddr>().is_err() {
            let line = attr(block, "listen").map_or(block.line, |a| a.line);
            self.error(
                line,
                format!("server: listen = \"{listen}\" is not an address: write IP:PORT, e.g. \"127.0.0.1:8080\""),
            );
        }
        let data_dir = self
            .string(block, "data_dir", "server")
            .unwrap_or_else(|| "bulkhead-data".into());
        let storage = self.string(block, "storage", "server");
        if let (Some(url), Some(a)) = (&storage, attr(block, "storage")) {
            if let Err(problem) = crate::store::check_url(url) {
                self.error(a.line, format!("server: storage: {problem}"));
            }
        }
        let token_cache = match self.string(block, "token_cache", "server") {
            Some(text) if text.trim() == "0s" || text.trim() == "0" => Duration::ZERO,
            Some(text) => match self.duration(block, "token_cache", "server") {
                Some(d) if d > TOKEN_CACHE_MAX => {
                    let line = attr(block, "token_cache").map_or(block.line, |a| a.line);
                    self.error(
                        line,
                        format!("server: token_cache = \"{text}\" would let a revoked token work that long: use at most \"1h\" (default \"5s\")"),
                    );
                    TOKEN_CACHE
                }
                Some(d) => d,
                None => TOKEN_CACHE,
            },
            None => TOKEN_CACHE,
        };
        let audit_sync = match self.string(block, "audit_sync", "server").as_deref() {
            None | Some("writes") => AuditSync::Writes,
            Some("all") => AuditSync::All,
            Some(other) => {
                let line = attr(block, "audit_sync").map_or(block.line, |a| a.line);
                self.error(
                    line,
                    format!("server: audit_sync = \"{other}\" is not known: use \"writes\" (records of reads and refusals reach the disk within a second) or \"all\" (every record before its answer)"),
                );
                AuditSync::Writes
            }
        };
        let data_dir = self.base.join(data_dir);
        let (key_default, checkpoints_default) = Server::audit_defaults(&data_dir);
        let audit_key_file = self
            .string(block, "audit_key_file", "server")
            .map_or(key_default, |p| self.base.join(p));
        let checkpoint_dir = self
            .string(block, "checkpoint_dir", "server")
            .map_or(checkpoints_default, |p| self.base.join(p));
        let checkpoint_every = match attr(block, "checkpoint_every") {
            None => CHECKPOINT_EVERY,
            Some(Attr {
                value: Literal::Number(n),
                ..
            }) if (1.0..=1e9).contains(n) && n.fract() == 0.0 => *n as u64,
            Some(a) => {
                self.error(
                    a.line,
                    format!("server: checkpoint_every must be a whole number of records from 1 up (default {CHECKPOINT_EVERY})"),
                );
                CHECKPOINT_EVERY
            }
        };
        let connections = self.connections(block);
        let mut tls = None;
        for inner in &block.blocks {
            if inner.kind == "tls" && inner.labels.is_empty() && tls.is_none() {
                self.only_attrs(inner, "server.tls", &["cert_file", "key_file"]);
                let cert = self.string(inner, "cert_file", "server.tls");
                let key = self.string(inner, "key_file", "server.tls");
                match (cert, key) {
                    (Some(c), Some(k)) => {
                        tls = Some(Tls {
                            cert_file: self.base.join(c),
                            key_file: self.base.join(k),
                        })
                    }
                    _ => self.error(inner.line, "server.tls needs both cert_file and key_file"),
                }
            } else {
                self.error(
                    inner.line,
                    format!(
                        "unknown block `{}` in server: expected one tls block",
                        inner.kind
                    ),
                );
            }
        }
        Server {
            listen,
            data_dir,
            storage,
            tls,
            token_cache,
            audit_sync,
            audit_key_file,
            checkpoint_dir,
            checkpoint_every,
            connections,
        }
    }

    /// The timeouts and connection cap of a `server` block.
    fn connections(&mut self, block: &Block) -> Connections {
        let defaults = Connections::default();
        let mut timeout = |key: &str, default: Duration| match self.duration(block, key, "server") {
            Some(d) if d > CONNECTION_TIMEOUT_MAX => {
                let line = attr(block, key).map_or(block.line, |a| a.line);
                self.error(
                    line,
                    format!(
                        "server: {key} = \"{}s\" would let a stalled client hold a connection that long: use at most \"1h\" (default \"{}s\")",
                        d.as_secs(),
                        default.as_secs()
                    ),
                );
                default
            }
            Some(d) => d,
            None => default,
        };
        let header_timeout = timeout("header_timeout", defaults.header_timeout);
        let body_timeout = timeout("body_timeout", defaults.body_timeout);
        let idle_timeout = timeout("idle_timeout", defaults.idle_timeout);
        let max_connections = match attr(block, "max_connections") {
            None => defaults.max_connections,
            Some(a) => match &a.value {
                Literal::Number(n)
                    if *n >= 1.0 && n.fract() == 0.0 && *n <= MAX_CONNECTIONS_MAX as f64 =>
                {
                    *n as usize
                }
                _ => {
                    self.error(
                        a.line,
                        format!(
                            "server: max_connections must be a whole number from 1 to {MAX_CONNECTIONS_MAX} (default {})",
                            defaults.max_connections
                        ),
                    );
                    defaults.max_connections
                }
            },
        };
        Connections {
            header_timeout,
            body_timeout,
            idle_timeout,
            max_connections,
        }
    }

    fn environment(&mut self, block: &Block, name: String) -> (Environment, Vec<Named>) {
        let ctx = format!("environment \"{name}\"");
        self.only_attrs(
            block,
            &ctx,
            &[
                "owner",
                "paths",
                "read",
                "write",
                "force_unlock",
                "force_write",
                "delete",
                "storage",
                "max_state_size",
                "max_plan_size",
                "lock_lease",
            ],
        );
        let mut named = Vec::new();
        let owner = match attr(block, "owner") {
            None => {
                self.error(
                    block.line,
                    format!("{ctx} has no owner: add owner = \"team:NAME\" (the team or person accountable for it)"),
                );
                None
            }
            Some(a) => match &a.value {
                Literal::String(s) => match Subject::parse(s) {
                    Ok(subject) => {
                        named.push(Named {
                            subject: subject.clone(),
                            line: a.line,
                            attr: "owner",
                        });
                        Some(subject)
                    }
                    Err(problem) => {
                        self.error(a.line, format!("{ctx}: owner {problem}"));
                        None
                    }
                },
                other => {
                    self.error(
                        a.line,
                        format!("{ctx}: owner must be a string, not {}", other.kind()),
                    );
                    None
                }
            },
        };
        let owner = owner.unwrap_or_else(|| Subject::Team(String::new()));
        let read = self
            .subjects(block, "read", &ctx, &mut named)
            .unwrap_or_default();
        let write = self
            .subjects(block, "write", &ctx, &mut named)
            .unwrap_or_default();
        let force_unlock = self
            .subjects(block, "force_unlock", &ctx, &mut named)
            .unwrap_or_else(|| vec![owner.clone()]);
        let force_write = self
            .subjects(block, "force_write", &ctx, &mut named)
            .unwrap_or_default();
        let delete = self
            .subjects(block, "delete", &ctx, &mut named)
            .unwrap_or_else(|| vec![owner.clone()]);
        let paths = self
            .string_list(block, "paths", &ctx)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let storage = self.string(block, "storage", &ctx);
        if let (Some(url), Some(a)) = (&storage, attr(block, "storage")) {
            if let Err(problem) = crate::store::check_url(url) {
                self.error(a.line, format!("{ctx}: storage: {problem}"));
            }
        }
        let max_state_size = match attr(block, "max_state_size") {
            None => DEFAULT_MAX_STATE_SIZE,
            Some(a) => match parse_size(&a.value) {
                Ok(n) => n,
                Err(problem) => {
                    self.error(a.line, format!("{ctx}: max_state_size {problem}"));
                    DEFAULT_MAX_STATE_SIZE
                }
            },
        };
        let max_plan_size = match attr(block, "max_plan_size") {
            None => DEFAULT_MAX_PLAN_SIZE,
            Some(a) => match parse_size(&a.value) {
                Ok(n) => n,
                Err(problem) => {
                    self.error(a.line, format!("{ctx}: max_plan_size {problem}"));
                    DEFAULT_MAX_PLAN_SIZE
                }
            },
        };
        let lock_lease = self.duration(block, "lock_lease", &ctx);
        let (approval, pipeline, breakglass) = self.protection(block, &ctx, &owner, &mut named);
        let env = Environment {
            name,
            line: block.line,
            owner,
            paths,
            read,
            write,
            force_unlock,
            force_write,
            delete,
            storage,
            max_state_size,
            max_plan_size,
            lock_lease,
            approval,
            pipeline,
            breakglass,
        };
        (env, named)
    }

    fn subjects(
        &mut self,
        block: &Block,
        key: &'static str,
        ctx: &str,
        named: &mut Vec<Named>,
    ) -> Option<Vec<Subject>> {
        attr(block, key)?;
        let mut out = Vec::new();
        for (text, line) in self.string_list(block, key, ctx) {
            match Subject::parse(&text) {
                Ok(s) => {
                    named.push(Named {
                        subject: s.clone(),
                        line,
                        attr: key,
                    });
                    out.push(s);
                }
                Err(problem) => self.error(line, format!("{ctx}: in `{key}`: {problem}")),
            }
        }
        Some(out)
    }

    /// The approval, pipeline and breakglass blocks of an environment.
    fn protection(
        &mut self,
        block: &Block,
        ctx: &str,
        owner: &Subject,
        named: &mut Vec<Named>,
    ) -> (Option<Approval>, Option<Pipeline>, Option<Breakglass>) {
        let (mut approval, mut pipeline, mut breakglass) = (None, None, None);
        let mut seen = BTreeMap::new();
        for inner in &block.blocks {
            if let Some(first) = seen.insert(inner.kind.as_str(), inner.line) {
                self.error(
                    inner.line,
                    format!(
                        "duplicate {} block in {ctx} (first on line {first})",
                        inner.kind
                    ),
                );
                continue;
            }
            let inner_ctx = format!("{ctx}: {}", inner.kind);
            match inner.kind.as_str() {
                "approval" => {
                    self.only_attrs(
                        inner,
                        &inner_ctx,
                        &["required", "approvers", "expires", "apply_window"],
                    );
                    let required = match attr(inner, "required") {
                        None => 1,
                        Some(Attr {
                            value: Literal::Number(n),
                            ..
                        }) if (1.0..=100.0).contains(n) && n.fract() == 0.0 => *n as u32,
                        Some(a) => {
                            self.error(
                                a.line,
                                format!("{inner_ctx}: required must be a whole number from 1 to 100"),
                            );
                            1
                        }
                    };
                    let approvers = self
                        .subjects(inner, "approvers", &inner_ctx, named)
                        .unwrap_or_else(|| vec![owner.clone()]);
                    let expires = self
                        .duration(inner, "expires", &inner_ctx)
                        .unwrap_or(Duration::from_secs(24 * 3600));
                    let apply_window = self
                        .duration(inner, "apply_window", &inner_ctx)
                        .unwrap_or(APPLY_WINDOW);
                    approval = Some(Approval {
                        required,
                        approvers,
                        expires,
                        apply_window,
                    });
                }
                "pipeline" => {
                    self.only_attrs(inner, &inner_ctx, &["branches"]);
                    let branches = self
                        .string_list(inner, "branches", &inner_ctx)
                        .into_iter()
                        .map(|(b, _)| b)
                        .collect();
                    pipeline = Some(Pipeline { branches });
                }
                "breakglass" => {
                    self.only_attrs(inner, &inner_ctx, &["allowed", "max_ttl"]);
                    let allowed = self
                        .subjects(inner, "allowed", &inner_ctx, named)
                        .unwrap_or_default();
                    if allowed.is_empty() {
                        self.error(
                            inner.line,
                            format!("{inner_ctx}: `allowed` must name who may break the glass"),
                        );
                    }
                    let max_ttl = self
                        .duration(inner, "max_ttl", &inner_ctx)
                        .unwrap_or(Duration::from_secs(2 * 3600));
                    breakglass = Some(Breakglass { allowed, max_ttl });
                }
                other => self.error(
                    inner.line,
                    format!("unknown block `{other}` in {ctx}: expected approval, pipeline or breakglass"),
                ),
            }
        }
        (approval, pipeline, breakglass)
    }

    fn service(&mut self, block: &Block, name: &str) -> Service {
        let ctx = format!("service \"{name}\"");
        self.only_attrs(block, &ctx, &[]);
        let mut service = Service::default();
        for inner in &block.blocks {
            if inner.kind != "oidc" || service.oidc.is_some() {
                self.error(
                    inner.line,
                    format!(
                        "unexpected block `{}` in {ctx}: expected one oidc block",
                        inner.kind
                    ),
                );
                continue;
            }
            let ctx = format!("{ctx}: oidc");
            self.only_attrs(
                inner,
                &ctx,
                &[
                    "issuer",
                    "audience",
                    "jwks_file",
                    "jwks_url",
                    "jwks_ca_file",
                    "claims",
                ],
            );
            let issuer = self.string(inner, "issuer", &ctx);
            let audience = self.string(inner, "audience", &ctx);
            let jwks = self.jwks(inner, &ctx);
            let claims = self.claims(inner, &ctx);
            match (issuer, audience, jwks) {
                (Some(issuer), Some(audience), Some(jwks)) => {
                    service.oidc = Some(Oidc {
                        issuer,
                        audience,
                        jwks,
                        claims,
                    })
                }
                (None, _, _) | (_, None, _) => self.error(
                    inner.line,
                    format!("{ctx} needs issuer, audience and one of jwks_file or jwks_url"),
                ),
                _ => {}
            }
        }
        service
    }

    /// `jwks_file` or `jwks_url` (exactly one), and `jwks_ca_file` beside the URL.
    fn jwks(&mut self, block: &Block, ctx: &str) -> Option<Jwks> {
        let file = self.string(block, "jwks_file", ctx);
        let url = self.string(block, "jwks_url", ctx);
        let ca_file = self.string(block, "jwks_ca_file", ctx);
        let line = |key| attr(block, key).map_or(block.line, |a| a.line);
        match (file, url) {
            (Some(_), Some(_)) => {
                self.error(
                    line("jwks_url"),
                    format!("{ctx}: set jwks_file or jwks_url, not both: the keys must come from one place"),
                );
                None
            }
            (None, None) => {
                self.error(
                    block.line,
                    format!("{ctx} needs the provider's keys: jwks_url = \"https://...\" or jwks_file = \"FILE\""),
                );
                None
            }
            (Some(file), None) => {
                if ca_file.is_some() {
                    self.error(
                        line("jwks_ca_file"),
                        format!("{ctx}: jwks_ca_file applies to jwks_url only; a jwks_file is read from disk"),
                    );
                }
                Some(Jwks::File(self.base.join(file)))
            }
            (None, Some(url)) => {
                if let Err(problem) = check_jwks_url(&url) {
                    self.error(line("jwks_url"), format!("{ctx}: jwks_url {problem}"));
                    return None;
                }
                Some(Jwks::Url {
                    url,
                    ca_file: ca_file.map(|f| self.base.join(f)),
                })
            }
        }
    }

    /// The `claims` map of an `oidc` block, which must bind the repository or subject.
    fn claims(&mut self, block: &Block, ctx: &str) -> Vec<(String, String)> {
        let mut claims = Vec::new();
        let (line, binds) = match attr(block, "claims").map(|a| (&a.value, a.line)) {
            None => (block.line, false),
            Some((Literal::Map(entries), line)) => {
                for (k, v) in entries {
                    match v {
                        Literal::String(v) if v.is_empty() => self.error(
                            line,
                            format!("{ctx}: claim `{k}` is empty: write the exact value the token must carry"),
                        ),
                        Literal::String(v) => claims.push((k.clone(), v.clone())),
                        other => self.error(
                            line,
                            format!("{ctx}: claim `{k}` must be a string, not {}", other.kind()),
                        ),
                    }
                }
                // A bound claim with a bad value is reported above, not again as unbound.
                let binds = entries
                    .iter()
                    .any(|(k, _)| IDENTITY_CLAIMS.contains(&k.as_str()));
                (line, binds)
            }
            Some((other, line)) => {
                self.error(
                    line,
                    format!("{ctx}: claims must be a map such as {{ repository = \"acme/infra\" }}, not {}", other.kind()),
                );
                return claims;
            }
        };
        if !binds {
            self.error(
                line,
                format!(
                    "{ctx}: claims must bind the repository or subject with one of {}: with issuer and audience alone, any workflow of any repository on that issuer could act as this service",
                    IDENTITY_CLAIMS.join(", ")
                ),
            );
        }
        claims
    }

    fn duration(&mut self, block: &Block, key: &str, ctx: &str) -> Option<Duration> {
        let a = attr(block, key)?;
        let text = self.string(block, key, ctx)?;
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(problem) => {
                self.error(a.line, format!("{ctx}: {key} {problem}"));
                None
            }
        }
    }

    fn only_attrs(&mut self, block: &Block, ctx: &str, allowed: &[&str]) {
        for a in &block.attrs {
            if !allowed.contains(&a.name.as_str()) {
                let hint = if allowed.is_empty() {
                    "it takes no attributes".to_string()
                } else {
                    format!("expected one of: {}", allowed.join(", "))
                };
                self.error(
                    a.line,
                    format!("unknown attribute `{}` in {ctx}: {hint}", a.name),
                );
            }
        }
        let mut seen = BTreeMap::new();
        for a in &block.attrs {
            if let Some(first) = seen.insert(a.name.as_str(), a.line) {
                self.error(
                    a.line,
                    format!(
                        "duplicate attribute `{}` in {ctx} (first on line {first})",
                        a.name
                    ),
                );
            }
        }
    }

    fn string(&mut self, block: &Block, key: &str, ctx: &str) -> Option<String> {
        let a = attr(block, key)?;
        match &a.value {
            Literal::String(s) => Some(s.clone()),
            other => {
                self.error(
                    a.line,
                    format!("{ctx}: `{key}` must be a string, not {}", other.kind()),
                );
                None
            }
        }
    }

    fn string_list(&mut self, block: &Block, key: &str, ctx: &str) -> Vec<(String, usize)> {
        let Some(a) = attr(block, key) else {
            return Vec::new();
        };
        match &a.value {
            Literal::List(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Literal::String(s) => out.push((s.clone(), a.line)),
                        other => self.error(
                            a.line,
                            format!("{ctx}: `{key}` must hold strings, not {}", other.kind()),
                        ),
                    }
                }
                out
            }
            other => {
                self.error(
                    a.line,
                    format!(
                        "{ctx}: `{key}` must be a list of strings, not {}",
                        other.kind()
                    ),
                );
                Vec::new()
            }
        }
    }
}

fn attr<'a>(block: &'a Block, key: &str) -> Option<&'a Attr> {
    block.attrs.iter().find(|a| a.name == key)
}

/// `[a-z0-9][a-z0-9-]*`: the names an environment may have (and change ids start with).
pub fn environment_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn principal_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
}

/// A `jwks_url` must be an absolute HTTPS URL: keys fetched over plain HTTP could be replaced
/// by anyone on the network path, and with them every token.
fn check_jwks_url(text: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("\"{text}\" is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!(
            "\"{text}\" must use https: keys fetched over plain HTTP could be replaced by anyone on the network path"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("\"{text}\" names no host"));
    }
    Ok(())
}

/// A duration such as "90s", "30m", "2h", "1d" or "1h30m".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut any = false;
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => {
                return Err(format!(
                    "\"{text}\" has an unknown unit `{c}`: use s, m, h or d, e.g. \"24h\""
                ))
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("\"{text}\" needs a number before `{c}`, e.g. \"24h\""))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("\"{text}\" is out of range"))?;
        digits.clear();
        any = true;
    }
    if !digits.is_empty() || !any || total == 0 {
        return Err(format!(
            "\"{text}\" is not a duration: write e.g. \"30m\", \"24h\" or \"1h30m\""
        ));
    }
    Ok(Duration::from_secs(total))
}

/// A size in bytes: a number, or a string such as "16MiB", "500KB", "1GiB".
fn parse_size(value: &Literal) -> Result<u64, String> {
    let text = match value {
        Literal::Number(n) if *n >= 1.0 && n.fract() == 0.0 => return Ok(*n as u64),
        Literal::String(s) => s.trim(),
        _ => return Err("must be a positive number of bytes or a string such as \"16MiB\"".into()),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("\"{text}\" does not start with a number"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "has an unknown unit `{other}`: use B, KB, KiB, MB, MiB, GB or GiB"
            ))
        }
    };
    n.checked_mul(factor)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("\"{text}\" is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
server {
  listen   = "127.0.0.1:0"
  data_dir = "data"
}
team "platform" { members = ["pat"] }
team "app"      { members = ["alice", "bob"] }
service "ci-prod" {}
environment "dev" {
  owner = "team:app"
  read  = ["team:app"]
  write = ["team:app", "team:platform"]
}
environment "prod" {
  owner = "team:platform"
  read  = ["team:app", "team:platform"]
  write = ["service:ci-prod"]
  max_state_size = "1MiB"
}
"#;

    fn errors(text: &str) -> String {
        Config::parse(Path::new("b.hcl"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn reads_a_good_config() {
        let c = Config::parse(Path::new("etc/b.hcl"), GOOD).unwrap();
        assert_eq!(c.server.data_dir, Path::new("etc/data"));
        assert!(c.users.contains("alice") && c.users.contains("pat"));
        let prod = c.environment("prod").unwrap();
        assert_eq!(prod.owner, Subject::Team("platform".into()));
        assert_eq!(prod.force_unlock, vec![Subject::Team("platform".into())]);
        assert!(prod.force_write.is_empty());
        assert_eq!(prod.max_state_size, 1024 * 1024);
        assert_eq!(c.teams_of("alice").collect::<Vec<_>>(), vec!["app"]);
    }

    #[test]
    fn server_token_cache_and_audit_sync() {
        let c = Config::parse(Path::new("b.hcl"), GOOD).unwrap();
        assert_eq!(c.server.token_cache, TOKEN_CACHE);
        assert_eq!(c.server.audit_sync, AuditSync::Writes);
        let set = |lines: &str| GOOD.replace("data_dir = \"data\"", lines);
        let c = Config::parse(
            Path::new("b.hcl"),
            &set("data_dir = \"data\"\n  token_cache = \"0s\"\n  audit_sync = \"all\""),
        )
        .unwrap();
        assert_eq!(c.server.token_cache, Duration::ZERO);
        assert_eq!(c.server.audit_sync, AuditSync::All);
        let e = errors(&set("audit_sync = \"never\"\n  token_cache = \"soon\""));
        assert!(
            e.contains("b.hcl:4: server: audit_sync = \"never\" is not known"),
            "{e}"
        );
        assert!(e.contains("b.hcl:5: server: token_cache"), "{e}");
        let e = errors(&set("token_cache = \"2h\""));
        assert!(
            e.contains(
                "b.hcl:4: server: token_cache = \"2h\" would let a revoked token work that long"
            ),
            "{e}"
        );
    }

    #[test]
    fn server_audit_key_and_checkpoints() {
        let c = Config::parse(Path::new("b.hcl"), GOOD).unwrap();
        assert_eq!(c.server.audit_key_file, c.server.data_dir.join("audit.key"));
        assert_eq!(
            c.server.checkpoint_dir,
            c.server.data_dir.join("checkpoints")
        );
        assert_eq!(c.server.checkpoint_every, CHECKPOINT_EVERY);
        let set = |lines: &str| GOOD.replace("data_dir = \"data\"", lines);
        let c = Config::parse(
            Path::new("b.hcl"),
            &set("audit_key_file = \"/etc/bulkhead/audit.key\"\n  checkpoint_dir = \"/var/log/cp\"\n  checkpoint_every = 50"),
        )
        .unwrap();
        assert_eq!(
            c.server.audit_key_file,
            Path::new("/etc/bulkhead/audit.key")
        );
        assert_eq!(c.server.checkpoint_dir, Path::new("/var/log/cp"));
        assert_eq!(c.server.checkpoint_every, 50);
        for bad in ["0", "1.5", "\"10\""] {
            let e = errors(&set(&format!("checkpoint_every = {bad}")));
            assert!(
                e.contains("b.hcl:4: server: checkpoint_every must be a whole number"),
                "{e}"
            );
        }
    }

    #[test]
    fn server_timeouts_and_connection_cap() {
        let c = Config::parse(Path::new("b.hcl"), GOOD).unwrap();
        assert_eq!(c.server.connections, Connections::default());
        assert_eq!(
            c.environment("prod").unwrap().max_plan_size,
            DEFAULT_MAX_PLAN_SIZE
        );
        let set = |lines: &str| GOOD.replace("data_dir = \"data\"", lines);
        let c = Config::parse(
            Path::new("b.hcl"),
            &set("header_timeout = \"2s\"\n  body_timeout = \"1m\"\n  idle_timeout = \"30s\"\n  max_connections = 50"),
        )
        .unwrap();
        assert_eq!(
            c.server.connections,
            Connections {
                header_timeout: Duration::from_secs(2),
                body_timeout: Duration::from_secs(60),
                idle_timeout: Duration::from_secs(30),
                max_connections: 50,
            }
        );
        let e = errors(&set(
            "header_timeout = \"0s\"\n  body_timeout = \"2h\"\n  idle_timeout = 30\n  max_connections = 0",
        ));
        assert!(e.contains("b.hcl:4: server: header_timeout"), "{e}");
        assert!(
            e.contains("b.hcl:5: server: body_timeout = \"7200s\" would let a stalled client hold a connection that long"),
            "{e}"
        );
        assert!(
            e.contains("b.hcl:6: server: `idle_timeout` must be a string"),
            "{e}"
        );
        assert!(
            e.contains("b.hcl:7: server: max_connections must be a whole number from 1 to"),
            "{e}"
        );
        let e = errors(&GOOD.replace("max_state_size = \"1MiB\"", "max_plan_size = \"lots\""));
        assert!(e.contains("environment \"prod\": max_plan_size"), "{e}");
    }

    #[test]
    fn a_lock_lease_is_a_duration_and_off_by_default() {
        let c = Config::parse(Path::new("b.hcl"), GOOD).unwrap();
        assert_eq!(c.environment("prod").unwrap().lock_lease, None);
        let leased = GOOD.replace(
            "max_state_size = \"1MiB\"",
            "max_state_size = \"1MiB\"\n  lock_lease = \"5m\"",
        );
        let c = Config::parse(Path::new("b.hcl"), &leased).unwrap();
        assert_eq!(
            c.environment("prod").unwrap().lock_lease,
            Some(Duration::from_secs(300))
        );
        let e = errors(&GOOD.replace("max_state_size = \"1MiB\"", "lock_lease = \"soon\""));
        assert!(
            e.contains("environment \"prod\": lock_lease \"soon\""),
            "{e}"
        );
    }

    #[test]
    fn unknown_principal_names_file_and_line() {
        let text = GOOD.replace("\"service:ci-prod\"]", "\"service:ci-stage\"]");
        let e = errors(&text);
        assert!(e.starts_with("b.hcl:17: "), "{e}");
        assert!(e.contains("unknown principal service:ci-stage"), "{e}");
    }

    #[test]
    fn missing_owner_duplicate_and_bad_names_are_all_reported() {
        let text = r#"
team "a" { members = ["x"] }
team "a" { members = ["y"] }
environment "Prod" { owner = "team:a" }
environment "dev" { read = ["team:a"] }
"#;
        let e = errors(text);
        assert!(e.contains("b.hcl:3: duplicate team \"a\""), "{e}");
        assert!(
            e.contains("b.hcl:4: environment name \"Prod\" is not allowed"),
            "{e}"
        );
        assert!(
            e.contains("b.hcl:5: environment \"dev\" has no owner"),
            "{e}"
        );
    }

    #[test]
    fn typos_are_not_ignored() {
        let e =
            errors("environment \"dev\" {\n  owner = \"team:a\"\n  wirte = []\n}\nteam \"a\" {}\n");
        assert!(e.contains("b.hcl:3: unknown attribute `wirte`"), "{e}");
    }

    #[test]
    fn protection_blocks_and_oidc() {
        let text = r#"
team "platform" { members = ["pat"] }
service "ci-prod" {
  oidc {
    issuer    = "https://token.actions.githubusercontent.com"
    audience  = "bulkhead"
    jwks_file = "jwks.json"
    claims    = { repository = "acme/infra" }
  }
}
environment "prod" {
  owner = "team:platform"
  write = ["service:ci-prod"]
  approval {
    required     = 2
    expires      = "1h30m"
    apply_window = "3h"
  }
  pipeline { branches = ["main"] }
  breakglass { allowed = ["user:pat"] }
}
"#;
        let c = Config::parse(Path::new("etc/b.hcl"), text).unwrap();
        let prod = c.environment("prod").unwrap();
        assert!(prod.protected());
        let approval = prod.approval.as_ref().unwrap();
        assert_eq!(approval.required, 2);
        assert_eq!(approval.approvers, vec![Subject::Team("platform".into())]);
        assert_eq!(approval.expires, Duration::from_secs(5400));
        assert_eq!(approval.apply_window, Duration::from_secs(3 * 3600));
        assert_eq!(prod.pipeline.as_ref().unwrap().branches, vec!["main"]);
        assert_eq!(
            prod.breakglass.as_ref().unwrap().max_ttl,
            Duration::from_secs(7200)
        );
        let oidc = c.services["ci-prod"].oidc.as_ref().unwrap();
        assert_eq!(oidc.jwks, Jwks::File("etc/jwks.json".into()));
        assert_eq!(
            oidc.claims,
            vec![("repository".to_string(), "acme/infra".to_string())]
        );

        let e = errors(
            &text
                .replace("required     = 2", "required     = 0")
                .replace("\"1h30m\"", "\"soon\""),
        );
        assert!(e.contains("required must be a whole number"), "{e}");
        assert!(e.contains("expires \"soon\""), "{e}");
        let e = errors(&text.replace(
            "breakglass { allowed = [\"user:pat\"] }",
            "breakglass { allowed = [] }",
        ));
        assert!(e.contains("must name who may break the glass"), "{e}");
    }

    #[test]
    fn an_oidc_block_binds_a_repository_or_subject() {
        let block = |lines: &str| {
            format!(
                "service \"ci\" {{\n  oidc {{\n    issuer   = \"https://token.actions.githubusercontent.com\"\n    audience = \"bulkhead\"\n{lines}\n  }}\n}}\n"
            )
        };
        let unbound = errors(&block("    jwks_file = \"j.json\""));
        assert!(
            unbound.contains("b.hcl:2: service \"ci\": oidc: claims must bind the repository or subject with one of sub, repository, repository_id, project_path, project_id: with issuer and audience alone, any workflow of any repository on that issuer could act as this service"),
            "{unbound}"
        );
        let branch_only = errors(&block(
            "    jwks_file = \"j.json\"\n    claims    = { ref = \"refs/heads/main\" }",
        ));
        assert!(
            branch_only.contains("b.hcl:6: service \"ci\": oidc: claims must bind"),
            "{branch_only}"
        );
        let empty = errors(&block(
            "    jwks_file = \"j.json\"\n    claims    = { repository = \"\" }",
        ));
        assert!(empty.contains("claim `repository` is empty"), "{empty}");
        assert!(!empty.contains("must bind"), "{empty}");

        let gitlab = Config::parse(
            Path::new("etc/b.hcl"),
            &block("    jwks_url = \"https://gitlab.example/oauth/discovery/keys\"\n    jwks_ca_file = \"ca.pem\"\n    claims = { project_path = \"acme/infra\" }"),
        )
        .unwrap();
        assert_eq!(
            gitlab.services["ci"].oidc.as_ref().unwrap().jwks,
            Jwks::Url {
                url: "https://gitlab.example/oauth/discovery/keys".into(),
                ca_file: Some("etc/ca.pem".into())
            }
        );

        let claims = "\n    claims = { sub = \"repo:acme/infra:ref:refs/heads/main\" }";
        let both = errors(&block(&format!(
            "    jwks_file = \"j.json\"\n    jwks_url = \"https://x.example/keys\"{claims}"
        )));
        assert!(
            both.contains("b.hcl:6: service \"ci\": oidc: set jwks_file or jwks_url, not both"),
            "{both}"
        );
        let neither = errors(&block(claims));
        assert!(
            neither.contains("b.hcl:2: service \"ci\": oidc needs the provider's keys"),
            "{neither}"
        );
        let plain = errors(&block(&format!(
            "    jwks_url = \"http://x.example/keys\"{claims}"
        )));
        assert!(
            plain.contains("jwks_url \"http://x.example/keys\" must use https"),
            "{plain}"
        );
        let ca_with_file = errors(&block(&format!(
            "    jwks_file = \"j.json\"\n    jwks_ca_file = \"ca.pem\"{claims}"
        )));
        assert!(
            ca_with_file.contains("jwks_ca_file applies to jwks_url only"),
            "{ca_with_file}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172800)));
        for bad in ["", "10", "h", "1w", "0s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size(&Literal::String("16MiB".into())), Ok(16 << 20));
        assert_eq!(parse_size(&Literal::Number(100.0)), Ok(100));
        assert!(parse_size(&Literal::String("12 parsecs".into())).is_err());
        assert!(parse_size(&Literal::Number(-1.0)).is_err());
    }
}
