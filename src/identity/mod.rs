//! Who is asking: principals, API tokens and the credentials a request carries.
//!
//! Authentication ends here with a [`Principal`] that exists in the config; what that
//! principal may do is the policy module's business. Secrets never leave this module in
//! clear: tokens are stored as hashes, compared in constant time, and never logged.

pub mod credentials;
pub mod oidc;
pub mod session;
pub mod token;

use crate::certificate::ClientCertificate;
use crate::config::Config;
pub use crate::principal::{describe, describe_proved, Caller, Principal};

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
    /// A dashboard sign-in refused, or a session that is over: the sentence says which.
    #[error("{0}")]
    Session(String),
    #[error("OIDC token refused: {0}")]
    Jwt(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Authenticates the `Authorization` header value of a request: a bulkhead token, or an
/// OIDC ID token from a CI provider that a service trusts. `certificate` is the client
/// certificate its connection presented, which the caller carries to the policies (a
/// service's `certificate` block is one of them).
pub async fn authenticate(
    config: &Config,
    tokens: &crate::store::SystemStore,
    oidc: &oidc::OidcVerifier,
    authorization: Option<&str>,
    certificate: Option<&ClientCertificate>,
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
            commit: verified.commit,
            certificate: certificate.cloned(),
        });
    }
    let presented = token::Presented::parse(&creds.secret).ok_or(AuthError::BadToken)?;
    let principal = by_token(config, tokens, &presented).await?;
    if let Some(username) = creds.username {
        if Principal::lookup(config, &username).as_ref() != Some(&principal) {
            return Err(AuthError::WrongPrincipal(username));
        }
    }
    Ok(Caller {
        principal,
        branch: None,
        subject: None,
        commit: None,
        certificate: certificate.cloned(),
    })
}

/// The principal a bulkhead token was issued to, refused when it is unknown, revoked, or its
/// principal has left the config.
async fn by_token(
    config: &Config,
    tokens: &crate::store::SystemStore,
    presented: &token::Presented<'_>,
) -> Result<Principal, AuthError> {
    let row = tokens
        .token(presented.id())
        .await?
        .ok_or(AuthError::BadToken)?;
    if row.revoked_at.is_some() || !presented.matches(&row.hash) {
        return Err(AuthError::BadToken);
    }
    Principal::lookup(config, &row.principal)
        .ok_or_else(|| AuthError::UnknownPrincipal(row.principal.clone()))
}
