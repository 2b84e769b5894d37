//! Who a request is from, once authenticated: a [`Principal`] of the config and what its
//! credentials proved beyond its name (a [`Caller`]), and how a person reads them.
//!
//! Authentication itself (tokens, OIDC) is the identity module's; this module only names the
//! result, so the rules that look at a caller (locks, policies, verdicts) need no credentials.

use std::fmt;

use crate::certificate::ClientCertificate;
use crate::config::Config;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    User(String),
    Service(String),
}

impl Principal {
    /// Finds a principal by `NAME`, `user:NAME` or `service:NAME`.
    pub fn lookup(config: &Config, text: &str) -> Option<Principal> {
        match text.split_once(':') {
            Some(("user", name)) => config
                .users
                .contains(name)
                .then(|| Principal::User(name.into())),
            Some(("service", name)) => config
                .services
                .contains_key(name)
                .then(|| Principal::Service(name.into())),
            Some(_) => None,
            None if config.users.contains(text) => Some(Principal::User(text.into())),
            None if config.services.contains_key(text) => Some(Principal::Service(text.into())),
            None => None,
        }
    }

    /// Every user and service of the config, users first.
    pub fn all(config: &Config) -> Vec<Principal> {
        let users = config.users.iter().map(|u| Principal::User(u.clone()));
        let services = config
            .services
            .keys()
            .map(|s| Principal::Service(s.clone()));
        users.chain(services).collect()
    }

    pub fn name(&self) -> &str {
        match self {
            Principal::User(n) | Principal::Service(n) => n,
        }
    }
}

impl Principal {
    /// A principal as the audit log names it, for looking records up: `alice` is the user or
    /// service the config calls alice; `user:NAME` and `service:NAME` are taken as written, so
    /// that one no longer in the config can still be looked for. Anything else is refused.
    pub fn as_recorded(config: &Config, text: &str) -> Result<String, String> {
        if let Some(p) = Principal::lookup(config, text) {
            return Ok(p.to_string());
        }
        match text.split_once(':') {
            Some(("user" | "service", name)) if !name.is_empty() => Ok(text.to_string()),
            _ => Err(format!(
                "no user or service is called `{text}` in the config; write user:{text} or service:{text} to look for one no longer in it"
            )),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::User(n) => write!(f, "user:{n}"),
            Principal::Service(n) => write!(f, "service:{n}"),
        }
    }
}

/// An authenticated caller and what its credentials proved beyond its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    /// The branch a pipeline runs on, from a verified OIDC token only.
    pub branch: Option<String>,
    /// The `sub` claim of a verified OIDC token: which workflow of which repository it is.
    pub subject: Option<String>,
    /// The commit a pipeline runs, from a verified OIDC token's `sha` claim only.
    pub commit: Option<String>,
    /// The client certificate its connection presented, verified by the TLS layer.
    pub certificate: Option<ClientCertificate>,
}

impl Caller {
    /// Whether this is the very identity recorded as `principal` with what its credentials
    /// proved (`branch`, OIDC `subject`): what a lock and an attestation remember.
    pub fn is(&self, principal: &str, branch: Option<&str>, subject: Option<&str>) -> bool {
        self.principal.to_string() == principal
            && self.branch.as_deref() == branch
            && self.subject.as_deref() == subject
    }

    /// The caller as a person reads it: `service:ci-prod (branch main)`.
    pub fn describe(&self) -> String {
        describe(&self.principal.to_string(), self.branch.as_deref())
    }
}

/// An identity as a person reads it: the principal, and the branch its credentials proved.
pub fn describe(principal: &str, branch: Option<&str>) -> String {
    match branch {
        Some(branch) => format!("{principal} (branch {branch})"),
        None => principal.to_string(),
    }
}

/// [`describe`], saying so when no branch was proved: for telling two identities of one
/// principal apart.
pub fn describe_proved(principal: &str, branch: Option<&str>) -> String {
    match branch {
        Some(_) => describe(principal, branch),
        None => format!("{principal} (no branch proved)"),
    }
}
