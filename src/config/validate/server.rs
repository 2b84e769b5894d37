//! Validation of the `server` block and its `tls` block.

use std::time::Duration;

use super::attrs::{attr, line_of};
use super::Validator;
use crate::config::hcl::Block;
use crate::config::model::{
    CHECKPOINT_EVERY_MAX, CONNECTION_TIMEOUT_MAX, DATA_DIR, LISTEN, MAX_CONNECTIONS_MAX,
    TOKEN_CACHE_MAX, UI_SESSION_MAX,
};
use crate::config::{
    AuditSync, ClientAuth, Connections, Server, Tls, CHECKPOINT_EVERY, IDLE_CLOSE, TOKEN_CACHE,
    UI_SESSION,
};

impl Validator {
    pub(super) fn server(&mut self, block: &Block) -> Server {
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
                "ui_session",
                "idle_close",
                "metrics_listen",
                "trusted_proxies",
            ],
        );
        let listen = self.listen(block);
        let data_dir = self
            .string(block, "data_dir", "server")
            .unwrap_or_else(|| DATA_DIR.into());
        let storage = self.string(block, "storage", "server");
        if let (Some(url), Some(a)) = (&storage, attr(block, "storage")) {
            if let Err(problem) = super::super::storage::check_url(url) {
                self.error(a.line, format!("server: storage: {problem}"));
            }
        }
        let token_cache = self.token_cache(block);
        let audit_sync = self.audit_sync(block);
        let data_dir = self.base.join(data_dir);
        let (key_default, checkpoints_default) = Server::audit_defaults(&data_dir);
        let audit_key_file = self
            .string(block, "audit_key_file", "server")
            .map_or(key_default, |p| self.base.join(p));
        let checkpoint_dir = self
            .string(block, "checkpoint_dir", "server")
            .map_or(checkpoints_default, |p| self.base.join(p));
        let checkpoint_every = self
            .whole_number(block, "checkpoint_every", CHECKPOINT_EVERY_MAX, || {
                format!("server: checkpoint_every must be a whole number of records from 1 up (default {CHECKPOINT_EVERY})")
            })
            .unwrap_or(CHECKPOINT_EVERY);
        let connections = self.connections(block);
        let tls = self.tls(block);
        let trusted_proxies = self.networks(block, "trusted_proxies", "server");
        let ui_session = self.ui_session(block);
        let idle_close = self.idle_close(block);
        let metrics_listen = self.string(block, "metrics_listen", "server");
        if let Some(address) = &metrics_listen {
            if address.parse::<std::net::SocketAddr>().is_err() {
                self.error(
                    line_of(block, "metrics_listen"),
                    format!("server: metrics_listen = \"{address}\" is not an address: write IP:PORT, e.g. \"10.0.0.5:9100\" (it serves /metrics to anyone who reaches it)"),
                );
            } else if Some(address) == Some(&listen) {
                self.error(
                    line_of(block, "metrics_listen"),
                    format!("server: metrics_listen = \"{address}\" is the address of `listen`: give /metrics an address of its own"),
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
            ui_session,
            idle_close,
            metrics_listen,
            trusted_proxies,
        }
    }

    /// `idle_close`: from ten seconds to a day.
    fn idle_close(&mut self, block: &Block) -> Duration {
        match self.duration(block, "idle_close", "server") {
            Some(d) if d < Duration::from_secs(10) || d > Duration::from_secs(24 * 3600) => {
                self.error(
                    line_of(block, "idle_close"),
                    "server: idle_close must be from \"10s\" to \"24h\": how long an environment's database stays open with no request for it (default \"5m\")".to_string(),
                );
                IDLE_CLOSE
            }
            Some(d) => d,
            None => IDLE_CLOSE,
        }
    }

    /// `ui_session`: from a minute to [`UI_SESSION_MAX`].
    fn ui_session(&mut self, block: &Block) -> Duration {
        match self.duration(block, "ui_session", "server") {
            Some(d) if d < Duration::from_secs(60) || d > UI_SESSION_MAX => {
                self.error(
                    line_of(block, "ui_session"),
                    "server: ui_session must be from \"1m\" to \"7d\": how long a dashboard sign-in lasts (default \"8h\")".to_string(),
                );
                UI_SESSION
            }
            Some(d) => d,
            None => UI_SESSION,
        }
    }

    fn listen(&mut self, block: &Block) -> String {
        let listen = self
            .string(block, "listen", "server")
            .unwrap_or_else(|| LISTEN.into());
        if listen.parse::<std::net::SocketAddr>().is_err() {
            self.error(
                line_of(block, "listen"),
                format!("server: listen = \"{listen}\" is not an address: write IP:PORT, e.g. \"127.0.0.1:8080\""),
            );
        }
        listen
    }

    /// `token_cache`: "0s" turns the cache off; longer than [`TOKEN_CACHE_MAX`] is refused.
    fn token_cache(&mut self, block: &Block) -> Duration {
        let Some(text) = self.string(block, "token_cache", "server") else {
            return TOKEN_CACHE;
        };
        if text.trim() == "0s" || text.trim() == "0" {
            return Duration::ZERO;
        }
        match self.duration(block, "token_cache", "server") {
            Some(d) if d > TOKEN_CACHE_MAX => {
                self.error(
                    line_of(block, "token_cache"),
                    format!("server: token_cache = \"{text}\" would let a revoked token work that long: use at most \"1h\" (default \"5s\")"),
                );
                TOKEN_CACHE
            }
            Some(d) => d,
            None => TOKEN_CACHE,
        }
    }

    fn audit_sync(&mut self, block: &Block) -> AuditSync {
        match self.string(block, "audit_sync", "server").as_deref() {
            None | Some("writes") => AuditSync::Writes,
            Some("all") => AuditSync::All,
            Some(other) => {
                self.error(
                    line_of(block, "audit_sync"),
                    format!("server: audit_sync = \"{other}\" is not known: use \"writes\" (records of reads and refusals reach the disk within a second) or \"all\" (every record before its answer)"),
                );
                AuditSync::Writes
            }
        }
    }

    /// The one `tls` block a `server` block may hold.
    fn tls(&mut self, block: &Block) -> Option<Tls> {
        let mut tls = None;
        for inner in &block.blocks {
            if inner.kind == "tls" && inner.labels.is_empty() && tls.is_none() {
                self.only_attrs(
                    inner,
                    "server.tls",
                    &[
                        "cert_file",
                        "key_file",
                        "client_ca_file",
                        "client_auth",
                        "client_crl_file",
                    ],
                );
                let cert = self.string(inner, "cert_file", "server.tls");
                let key = self.string(inner, "key_file", "server.tls");
                let client_ca_file = self
                    .string(inner, "client_ca_file", "server.tls")
                    .map(|f| self.base.join(f));
                let client_auth = self.client_auth(inner, client_ca_file.is_some());
                let client_crl_file = self
                    .string(inner, "client_crl_file", "server.tls")
                    .map(|f| self.base.join(f));
                if client_crl_file.is_some() && client_ca_file.is_none() {
                    self.error(
                        line_of(inner, "client_crl_file"),
                        "server.tls: client_crl_file needs client_ca_file, the certificate authorities whose revocations it lists",
                    );
                }
                match (cert, key) {
                    (Some(c), Some(k)) => {
                        tls = Some(Tls {
                            cert_file: self.base.join(c),
                            key_file: self.base.join(k),
                            client_ca_file,
                            client_auth,
                            client_crl_file,
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
        tls
    }

    /// `server.tls { client_auth }`: `optional` (the default) or `required`, which only means
    /// something with the authorities of a `client_ca_file`.
    fn client_auth(&mut self, tls: &Block, has_ca: bool) -> ClientAuth {
        let line = line_of(tls, "client_auth");
        let auth = match self.string(tls, "client_auth", "server.tls").as_deref() {
            None | Some("optional") => ClientAuth::Optional,
            Some("required") => ClientAuth::Required,
            Some(other) => {
                self.error(
                    line,
                    format!("server.tls: client_auth = \"{other}\" is not known: use \"optional\" (a service whose certificate block requires one is refused without it) or \"required\" (every connection presents one)"),
                );
                ClientAuth::Optional
            }
        };
        if attr(tls, "client_auth").is_some() && !has_ca {
            self.error(
                line,
                "server.tls: client_auth needs client_ca_file, the certificate authorities (PEM) that client certificates are verified against",
            );
        }
        auth
    }

    /// The timeouts and connection cap of a `server` block.
    fn connections(&mut self, block: &Block) -> Connections {
        let defaults = Connections::default();
        let mut timeout = |key: &str, default: Duration| match self.duration(block, key, "server") {
            Some(d) if d > CONNECTION_TIMEOUT_MAX => {
                self.error(
                    line_of(block, key),
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
        let max_connections = self
            .whole_number(block, "max_connections", MAX_CONNECTIONS_MAX, || {
                format!(
                    "server: max_connections must be a whole number from 1 to {MAX_CONNECTIONS_MAX} (default {})",
                    defaults.max_connections
                )
            })
            .map_or(defaults.max_connections, |n| n as usize);
        Connections {
            header_timeout,
            body_timeout,
            idle_timeout,
            max_connections,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::tests::{errors, GOOD};
    use crate::config::{
        AuditSync, Config, Connections, CHECKPOINT_EVERY, DEFAULT_MAX_PLAN_SIZE, TOKEN_CACHE,
    };

    /// The good config with `lines` in place of its `data_dir` line, line 4.
    fn with_server(lines: &str) -> String {
        GOOD.replace("data_dir = \"data\"", lines)
    }

    #[test]
    fn server_token_cache_and_audit_sync() {
        let c = Config::parse(Path::new("b.hcl"), GOOD).unwrap();
        assert_eq!(c.server.token_cache, TOKEN_CACHE);
        assert_eq!(c.server.audit_sync, AuditSync::Writes);
        let c = Config::parse(
            Path::new("b.hcl"),
            &with_server("data_dir = \"data\"\n  token_cache = \"0s\"\n  audit_sync = \"all\""),
        )
        .unwrap();
        assert_eq!(c.server.token_cache, Duration::ZERO);
        assert_eq!(c.server.audit_sync, AuditSync::All);
        let e = errors(&with_server(
            "audit_sync = \"never\"\n  token_cache = \"soon\"",
        ));
        assert!(
            e.contains("b.hcl:4: server: audit_sync = \"never\" is not known"),
            "{e}"
        );
        assert!(e.contains("b.hcl:5: server: token_cache"), "{e}");
        let e = errors(&with_server("token_cache = \"2h\""));
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
        let c = Config::parse(
            Path::new("b.hcl"),
            &with_server("audit_key_file = \"/etc/bulkhead/audit.key\"\n  checkpoint_dir = \"/var/log/cp\"\n  checkpoint_every = 50"),
        )
        .unwrap();
        assert_eq!(
            c.server.audit_key_file,
            Path::new("/etc/bulkhead/audit.key")
        );
        assert_eq!(c.server.checkpoint_dir, Path::new("/var/log/cp"));
        assert_eq!(c.server.checkpoint_every, 50);
        for bad in ["0", "1.5", "\"10\""] {
            let e = errors(&with_server(&format!("checkpoint_every = {bad}")));
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
        let c = Config::parse(
            Path::new("b.hcl"),
            &with_server("header_timeout = \"2s\"\n  body_timeout = \"1m\"\n  idle_timeout = \"30s\"\n  max_connections = 50"),
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
        let e = errors(&with_server(
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
}
