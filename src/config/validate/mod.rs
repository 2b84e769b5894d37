//! Validation: the raw blocks read from HCL turned into the validated model.
//!
//! The validator walks the whole file and collects every problem, each with its line, rather
//! than stopping at the first, so one run of `bulkhead check` shows all there is to fix. The
//! top-level walk is here; each kind of block has its file (`server`, `environment`,
//! `service`, `notify`), and `attrs` reads typed values out of attributes.

mod attrs;
mod environment;
mod notify;
mod personal;
mod server;
mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::hcl::Block;
use super::names::{NameRule, ENVIRONMENT, PRINCIPAL};
use super::{Config, ConfigError, Diagnostic, Environment, Server, Service, Subject};

/// Validates a file read into `root`; `path` names the file in messages and anchors relative
/// paths.
pub(super) fn config(path: &Path, root: &Block) -> Result<Config, ConfigError> {
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut v = Validator {
        diags: Vec::new(),
        base,
    };
    let config = v.config(path, root);
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

impl Named {
    fn parse(text: &str, line: usize, attr: &'static str) -> Result<Named, String> {
        Ok(Named {
            subject: Subject::parse(text)?,
            line,
            attr,
        })
    }
}

/// The top-level blocks as declared, before the names in them are checked against each other.
#[derive(Default)]
struct Declared {
    server: Option<Server>,
    teams: BTreeMap<String, Vec<String>>,
    users: BTreeSet<String>,
    services: BTreeMap<String, Service>,
    handles: BTreeMap<Subject, String>,
    environments: Vec<(Environment, Vec<Named>)>,
    templates: Vec<(super::Template, Vec<Named>)>,
    notify: Vec<notify::Declared>,
    /// Team members with the line they are listed on: they are users once every block is read.
    team_members: Vec<(String, usize)>,
    /// The line each (kind, name) was first declared on.
    seen: BTreeMap<(String, String), usize>,
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
            .strings(root, "policies", "the top level")
            .into_iter()
            .map(|p| self.base.join(p))
            .collect();
        let mut declared = Declared::default();
        for block in &root.blocks {
            self.declare(block, &mut declared);
        }
        self.members_are_users(&mut declared);
        let Declared {
            server,
            teams,
            users,
            services,
            handles,
            environments,
            templates,
            notify,
            ..
        } = declared;
        let mut config = Config {
            path: path.to_path_buf(),
            server: server.unwrap_or_else(|| Server::defaults(&self.base)),
            teams,
            users,
            services,
            handles,
            environments: Vec::new(),
            templates: Vec::new(),
            index: Default::default(),
            policy_files,
            notify: Vec::new(),
        };
        self.certificates_can_be_presented(&config);
        for (env, named) in environments {
            self.unknown_principals(&config, &format!("environment \"{}\"", env.name), &named);
            config.environments.push(env);
        }
        // Notify blocks speak of declared environments only: personal ones come and go with
        // team membership, and nothing in them is anyone's to be told of but their owner's.
        for declared in notify {
            let notify = self.notify_environments(declared, &config.environments);
            config.notify.push(notify);
        }
        for (template, named) in templates {
            self.unknown_principals(&config, &format!("personal \"{}\"", template.name), &named);
            config.templates.push(template);
        }
        self.make_personal(&mut config);
        config.index = config
            .environments
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        config
    }

    /// A service that requires a client certificate needs a server that verifies them.
    fn certificates_can_be_presented(&mut self, config: &Config) {
        let verifies = config
            .server
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca_file.is_some());
        for (name, service) in &config.services {
            if service.certificate.is_some() && !verifies {
                self.error(
                    service.line,
                    format!("service \"{name}\" requires a client certificate, but the server verifies none: add client_ca_file (the certificate authorities of your runners, PEM) to server.tls"),
                );
            }
        }
    }

    /// Reads one top-level block into `declared`.
    fn declare(&mut self, block: &Block, declared: &mut Declared) {
        let kind = block.kind.as_str();
        let Some(name) = self.label(block) else {
            return;
        };
        if kind != "server" {
            let key = (kind.to_string(), name.clone());
            if let Some(first) = declared.seen.insert(key, block.line) {
                self.error(
                    block.line,
                    format!("duplicate {kind} \"{name}\" (first declared on line {first})"),
                );
                return;
            }
        }
        match kind {
            "server" => {
                if declared.server.is_some() {
                    self.error(block.line, "duplicate server block: there can be only one");
                }
                declared.server = Some(self.server(block));
            }
            "team" => self.team(block, name, declared),
            "user" => self.user(block, name, declared),
            "service" => {
                self.check_name(block.line, "service", &name, &PRINCIPAL);
                let service = self.service(block, &name);
                declared.services.insert(name, service);
            }
            "environment" => {
                self.check_name(block.line, "environment", &name, &ENVIRONMENT);
                let (env, named) = self.environment(block, name);
                declared.environments.push((env, named));
            }
            "personal" => {
                self.check_name(block.line, "personal", &name, &ENVIRONMENT);
                let template = self.personal(block, name);
                declared.templates.push(template);
            }
            "notify" => {
                self.check_name(block.line, "notify", &name, &ENVIRONMENT);
                let notify = self.notify(block, name);
                declared.notify.push(notify);
            }
            other => self.error(
                block.line,
                format!(
                    "unknown block `{other}`: expected server, team, user, service, environment, personal or notify"
                ),
            ),
        }
    }

    fn team(&mut self, block: &Block, name: String, declared: &mut Declared) {
        let ctx = format!("team \"{name}\"");
        self.check_name(block.line, "team", &name, &PRINCIPAL);
        self.only_attrs(block, &ctx, &["members", "handle"]);
        if let Some(h) = self.string(block, "handle", &ctx) {
            declared.handles.insert(Subject::Team(name.clone()), h);
        }
        let members: Vec<String> = self
            .string_list(block, "members", &ctx)
            .into_iter()
            .map(|(m, line)| {
                let m = m.strip_prefix("user:").unwrap_or(&m).to_string();
                declared.team_members.push((m.clone(), line));
                m
            })
            .collect();
        declared.teams.insert(name, members);
    }

    fn user(&mut self, block: &Block, name: String, declared: &mut Declared) {
        let ctx = format!("user \"{name}\"");
        self.check_name(block.line, "user", &name, &PRINCIPAL);
        self.only_attrs(block, &ctx, &["handle"]);
        if let Some(h) = self.string(block, "handle", &ctx) {
            declared.handles.insert(Subject::User(name.clone()), h);
        }
        declared.users.insert(name);
    }

    /// Team members become users; a name may not be both a user and a service.
    fn members_are_users(&mut self, declared: &mut Declared) {
        for (member, line) in std::mem::take(&mut declared.team_members) {
            if declared.services.contains_key(&member) {
                self.error(
                    line,
                    format!("`{member}` is a service; teams hold users only"),
                );
            } else {
                self.check_name(line, "team member", &member, &PRINCIPAL);
                declared.users.insert(member);
            }
        }
        for name in declared
            .users
            .iter()
            .filter(|u| declared.services.contains_key(*u))
        {
            let line = declared
                .seen
                .get(&("service".to_string(), name.clone()))
                .copied()
                .unwrap_or(0);
            self.error(
                line,
                format!("`{name}` is both a user and a service: a principal name must be unique"),
            );
        }
    }

    /// Reports each subject a block (`ctx`) names that the config does not declare.
    fn unknown_principals(&mut self, config: &Config, ctx: &str, named: &[Named]) {
        for n in named.iter().filter(|n| !config.knows(&n.subject)) {
            self.error(
                n.line,
                format!(
                    "{ctx}: unknown principal {} in `{}`; declare it in a {} block",
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

    fn check_name(&mut self, line: usize, what: &str, name: &str, rule: &NameRule) {
        if !(rule.allows)(name) {
            self.error(
                line,
                format!(
                    "{what} name \"{name}\" is not allowed: use {}",
                    rule.pattern
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const GOOD: &str = r#"
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

    pub(super) fn errors(text: &str) -> String {
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
    fn dashboard_and_metrics_settings_are_checked() {
        let with = |lines: &str| {
            GOOD.replace(
                "  data_dir = \"data\"\n",
                &format!("  data_dir = \"data\"\n  {lines}\n"),
            )
        };
        let c = Config::parse(
            Path::new("b.hcl"),
            &with("ui_session = \"1h\"\n  metrics_listen = \"127.0.0.1:9100\""),
        )
        .unwrap();
        assert_eq!(c.server.ui_session, std::time::Duration::from_secs(3600));
        assert_eq!(c.server.metrics_listen.as_deref(), Some("127.0.0.1:9100"));
        let e = errors(&with("ui_session = \"30s\""));
        assert!(
            e.contains("b.hcl:5: server: ui_session must be from \"1m\" to \"7d\""),
            "{e}"
        );
        let e = errors(&with("metrics_listen = \"everywhere\""));
        assert!(
            e.contains("b.hcl:5: server: metrics_listen = \"everywhere\" is not an address"),
            "{e}"
        );
        let e = errors(&with("metrics_listen = \"127.0.0.1:0\""));
        assert!(e.contains("is the address of `listen`"), "{e}");
    }

    #[test]
    fn networks_certificates_and_proxies_are_read_and_checked() {
        let text = GOOD
            .replace(
                "  data_dir = \"data\"\n",
                "  data_dir = \"data\"\n  trusted_proxies = [\"10.0.0.0/8\"]\n  tls {\n    cert_file = \"c.pem\"\n    key_file = \"k.pem\"\n    client_ca_file = \"ca.pem\"\n  }\n",
            )
            .replace(
                "service \"ci-prod\" {}",
                "service \"ci-prod\" {\n  certificate { dns = \"Runner.ACME.internal\" }\n}",
            )
            .replace(
                "  max_state_size = \"1MiB\"",
                "  max_state_size = \"1MiB\"\n  write_from = [\"10.20.0.0/16\", \"192.0.2.7\"]",
            );
        let c = Config::parse(Path::new("etc/b.hcl"), &text).unwrap();
        let prod = c.environment("prod").unwrap();
        let shown: Vec<String> = prod.write_from.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["10.20.0.0/16", "192.0.2.7/32"]);
        assert!(prod.read_from.is_empty());
        assert_eq!(c.server.trusted_proxies.len(), 1);
        let tls = c.server.tls.as_ref().unwrap();
        assert_eq!(tls.client_ca_file.as_deref(), Some(Path::new("etc/ca.pem")));
        assert_eq!(tls.client_auth, crate::config::ClientAuth::Optional);
        assert_eq!(
            c.services["ci-prod"].certificate,
            Some(crate::certificate::Requirement::Dns(
                "runner.acme.internal".into()
            ))
        );

        let bad = |from: &str, to: &str| errors(&text.replace(from, to));
        let e = bad("\"192.0.2.7\"", "\"10.20.1.0/16\"");
        assert!(
            e.contains("\"10.20.1.0/16\" has bits set past its /16: write \"10.20.0.0/16\""),
            "{e}"
        );
        let e = bad("\"192.0.2.7\"", "\"the office\"");
        assert!(
            e.contains("`write_from`: \"the office\" is not a network"),
            "{e}"
        );
        let e = bad("\"10.0.0.0/8\"", "\"10.0.0.0/33\"");
        assert!(e.contains("server: `trusted_proxies`"), "{e}");
        let e = bad("    client_ca_file = \"ca.pem\"\n", "");
        assert!(
            e.contains(
                "service \"ci-prod\" requires a client certificate, but the server verifies none"
            ),
            "{e}"
        );
        let e = bad(
            "    client_ca_file = \"ca.pem\"\n",
            "    client_crl_file = \"ca.crl\"\n",
        );
        assert!(e.contains("client_crl_file needs client_ca_file"), "{e}");
        let e = bad(
            "client_ca_file = \"ca.pem\"",
            "client_ca_file = \"ca.pem\"\n    client_auth = \"sometimes\"",
        );
        assert!(
            e.contains("client_auth = \"sometimes\" is not known"),
            "{e}"
        );
        let e = bad(
            "certificate { dns = \"Runner.ACME.internal\" }",
            "certificate {\n    dns = \"a\"\n    uri = \"spiffe://b\"\n  }",
        );
        assert!(e.contains("needs exactly one of subject"), "{e}");
        let e = bad(
            "dns = \"Runner.ACME.internal\"",
            "subject = \"runner-prod\"",
        );
        assert!(e.contains("`runner-prod` is not NAME=value"), "{e}");
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
}
