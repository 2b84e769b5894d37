//! The validated configuration: the types every other module reads.
//!
//! A value of these types has passed validation (see `validate`): every principal named in a
//! list exists, names are unique and well formed, every environment has an owner. This module
//! holds the types, their defaults and the questions asked of them; it never reads a file.

mod environment;
mod notify;
mod personal;
mod server;
mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

pub use self::environment::{
    Approval, Binding, Breakglass, Environment, Pipeline, APPLY_WINDOW, DEFAULT_MAX_PLAN_SIZE,
    DEFAULT_MAX_STATE_SIZE,
};
pub(super) use self::environment::{APPROVAL_EXPIRES, BREAKGLASS_MAX_TTL, REQUIRED_MAX};
pub(super) use self::notify::ATTEMPTS_MAX;
pub use self::notify::{Notify, NotifyEvent, NotifyFormat, Retry, SecretSource};
pub use self::personal::{personal_name, Personal, Template};
pub use self::server::{
    AuditSync, ClientAuth, Connections, Server, Tls, CHECKPOINT_EVERY, IDLE_CLOSE, TOKEN_CACHE,
    UI_SESSION,
};
pub(super) use self::server::{
    CHECKPOINT_EVERY_MAX, CONNECTION_TIMEOUT_MAX, DATA_DIR, LISTEN, MAX_CONNECTIONS_MAX,
    TOKEN_CACHE_MAX, UI_SESSION_MAX,
};
pub use self::service::{Jwks, Oidc, Service, IDENTITY_CLAIMS};

/// Someone or something a rule can name: `team:NAME`, `user:NAME` or `service:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Team(String),
    User(String),
    Service(String),
}

impl Subject {
    pub(in crate::config) fn parse(text: &str) -> Result<Subject, String> {
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
    /// In the order of the file; then those made from `personal` templates, by template and
    /// member.
    pub environments: Vec<Environment>,
    /// The `personal` templates, in the order of the file.
    pub templates: Vec<Template>,
    /// Where each environment is in `environments`, by name.
    pub(in crate::config) index: std::collections::HashMap<String, usize>,
    /// Extra Cedar policy files, resolved against the config's folder.
    pub policy_files: Vec<PathBuf>,
    /// The receivers told of events, in the order of the file.
    pub notify: Vec<Notify>,
}

impl Config {
    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.get(*self.index.get(name)?)
    }

    /// The environments declared in `environment` blocks, not made from a template.
    pub fn declared(&self) -> impl Iterator<Item = &Environment> {
        self.environments.iter().filter(|e| e.personal.is_none())
    }

    /// Serves `name`, an environment once made from a template for someone who is no longer
    /// a member, whose database remains (see [`Template::former`]); a name the config already
    /// has, or that is no template's, is left alone.
    pub fn add_former(&mut self, name: &str) {
        if self.index.contains_key(name) {
            return;
        }
        // The longest template name that begins it: `sandbox-x-al` is `sandbox-x`'s.
        let template = self
            .templates
            .iter()
            .filter(|t| name.starts_with(&format!("{}-", t.name)))
            .max_by_key(|t| t.name.len());
        if let Some(env) = template.and_then(|t| t.former(name)) {
            self.index.insert(env.name.clone(), self.environments.len());
            self.environments.push(env);
        }
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
