//! Who is asking: principals, API tokens and the credentials a request carries.
//!
//! Authentication ends here with a [`Principal`] that exists in the config; what that
//! principal may do is the policy module's business. Secrets never leave this module in
//! clear: tokens are stored as hashes, compared in constant time, and never logged.

pub mod credentials;
pub mod oidc;
pub mod token;

use std::fmt;

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

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::User(n) => write!(f, "user:{n}"),
            Principal::Service(n) => write!(f, "service:{n}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send HTTP Basic (username = principal, password = token; TF_HTTP_USERNAME/TF_HTTP_PASSWORD for terraform) or Authorization: Bearer TOKEN")]
    Missing,
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    #[error("invalid or revoked token: issue a new one with `bulkhead token create`")]
    BadToken,
    #[error("the token does not belong to `{0}`: use the principal name the token was issued to")]
    WrongPrincipal(String),
    #[error("`{0}` is no longer in the config: its tokens are void")]
    UnknownPrincipal(String),
    #[error("OIDC token refused: {0}")]
    Jwt(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// An authenticated caller and what its credentials proved beyond its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    /// The branch a pipeline runs on, from a verified OIDC token only.
    pub branch: Option<String>,
    /// The `sub` claim of a verified OIDC token: which workflow of which repository it is.
    pub subject: Option<String>,
}

impl Caller {
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

/// Authenticates the `Authorization` header value of a request: a bulkhead token, or an
/// OIDC ID token from a CI provider that a service trusts.
pub async fn authenticate(
    config: &Config,
    tokens: &crate::store::SystemStore,
    oidc: &oidc::OidcVerifier,
    authorization: Option<&str>,
) -> Result<Caller, AuthError> {
    let creds = credentials::parse(authorization.ok_or(AuthError::Missing)?)?;
    if creds.secret.split('.').count() == 3 && !creds.secret.starts_with("bh_") {
        let verified = oidc
            .verify(creds.username.as_deref(), &creds.secret)
            .await?;
        return Ok(Caller {
            principal: Principal::Service(verified.service),
            branch: verified.branch,
            subject: verified.subject,
        });
    }
    let presented = token::Presented::parse(&creds.secret).ok_or(AuthError::BadToken)?;
    let row = tokens
        .token(presented.id())
        .await?
        .ok_or(AuthError::BadToken)?;
    if row.revoked_at.is_some() || !presented.matches(&row.hash) {
        return Err(AuthError::BadToken);
    }
    let principal = Principal::lookup(config, &row.principal)
        .ok_or_else(|| AuthError::UnknownPrincipal(row.principal.clone()))?;
    if let Some(username) = creds.username {
        if Principal::lookup(config, &username).as_ref() != Some(&principal) {
            return Err(AuthError::WrongPrincipal(username));
        }
    }
    Ok(Caller {
        principal,
        branch: None,
        subject: None,
    })
}
