//! The `server` block: where the server listens and keeps its data, how long clients may
//! take, and how the audit chain is flushed, keyed and checkpointed; with the defaults and
//! the upper limits validation holds these settings to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

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
    /// How long a dashboard sign-in lasts before the person signs in again.
    pub ui_session: Duration,
    /// How long an environment's database stays open with no request for it (protected
    /// environments' stay open).
    pub idle_close: Duration,
    /// An address that serves `GET /metrics` to anyone who reaches it, and nothing else: for
    /// a Prometheus that holds no token, on a network only it can reach.
    pub metrics_listen: Option<String>,
    /// The load balancers and proxies whose `X-Forwarded-For` names the client: from any
    /// other peer the header is ignored, and the peer is the client.
    pub trusted_proxies: Vec<IpNet>,
}

/// The default of `server { checkpoint_every }`.
pub const CHECKPOINT_EVERY: u64 = 1000;

/// The default of `server { listen }`.
pub(in crate::config) const LISTEN: &str = "127.0.0.1:8080";
/// The default of `server { data_dir }`, relative to the config's folder.
pub(in crate::config) const DATA_DIR: &str = "bulkhead-data";

impl Server {
    /// The server of a config without a `server` block: every default, its paths under
    /// `base` (the config's folder).
    pub(in crate::config) fn defaults(base: &Path) -> Server {
        let data_dir = base.join(DATA_DIR);
        let (audit_key_file, checkpoint_dir) = Server::audit_defaults(&data_dir);
        Server {
            listen: LISTEN.into(),
            data_dir,
            storage: None,
            tls: None,
            token_cache: TOKEN_CACHE,
            audit_sync: AuditSync::Writes,
            audit_key_file,
            checkpoint_dir,
            checkpoint_every: CHECKPOINT_EVERY,
            connections: Connections::default(),
            ui_session: UI_SESSION,
            idle_close: IDLE_CLOSE,
            metrics_listen: None,
            trusted_proxies: Vec::new(),
        }
    }

    /// The audit settings' defaults, under `data_dir`.
    pub(in crate::config) fn audit_defaults(data_dir: &Path) -> (PathBuf, PathBuf) {
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

/// The most `server { checkpoint_every }` may be.
pub(in crate::config) const CHECKPOINT_EVERY_MAX: u64 = 1_000_000_000;

/// The longest any of the `server` timeouts may be.
pub(in crate::config) const CONNECTION_TIMEOUT_MAX: Duration = Duration::from_secs(3600);
/// The most `server { max_connections }` may be.
pub(in crate::config) const MAX_CONNECTIONS_MAX: u64 = 1_000_000;

/// The default of `server { token_cache }`.
pub const TOKEN_CACHE: Duration = Duration::from_secs(5);
/// The most `server { token_cache }` may be.
pub(in crate::config) const TOKEN_CACHE_MAX: Duration = Duration::from_secs(3600);

/// The default of `server { idle_close }`.
pub const IDLE_CLOSE: Duration = Duration::from_secs(5 * 60);

/// The default of `server { ui_session }`: a working day.
pub const UI_SESSION: Duration = Duration::from_secs(8 * 3600);
/// The most `server { ui_session }` may be.
pub(in crate::config) const UI_SESSION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

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
    /// The certificate authorities (PEM) whose client certificates are verified, and then
    /// known to the policies and the audit record; `None`: clients present none.
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// Certificate revocation lists (PEM) of those authorities: a certificate they list is
    /// refused at the handshake. Read at start.
    pub client_crl_file: Option<PathBuf>,
}

/// Whether a TLS client must present a certificate (`server.tls { client_auth }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Clients may present one; a service whose `certificate` block requires one is refused
    /// without it, with a sentence. The default.
    Optional,
    /// Every connection presents one, or its handshake fails (and no sentence reaches the
    /// client): only for servers that nothing but pipelines reach.
    Required,
}
