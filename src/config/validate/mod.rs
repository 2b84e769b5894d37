//! Validation: the raw blocks read from HCL turned into the validated model.
//!
//! The validator walks the whole file and collects every problem, each with its line, rather
//! than stopping at the first, so one run of `bulkhead check` shows all there is to fix. The
//! top-level walk is here; each kind of block has its file (`server`, `environment`,
//! `service`), and `attrs` reads typed values out of attributes.

mod attrs;
mod environment;
mod server;
mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::hcl::Block;
use super::names::{environment_name_ok, principal_name_ok};
use super::{
    AuditSync, Config, ConfigError, Connections, Diagnostic, Environment, Server, Subject,
    CHECKPOINT_EVERY, TOKEN_CACHE,
};

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
