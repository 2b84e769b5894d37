//! Dashboard sessions: a sign-in with a bulkhead token becomes a random secret that the
//! browser keeps in a cookie. Only the secret's SHA-256 is stored, with the token it came
//! from, so that a session ends when it expires, when its token is revoked, or when its
//! principal leaves the config, checked on every request. Each session has a CSRF token that
//! every form of the dashboard carries back.
//!
//! The session never holds the token itself, and a pipeline's OIDC token cannot become a
//! session: a person signs in with a token of their own.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::token::Presented;
use super::{AuthError, Caller, Principal};
use crate::audit::{Outcome, Record};
use crate::config::Config;
use crate::store::sessions::NewSession;
use crate::store::SystemStore;
use crate::time::{Clock, Timestamp};

/// The longest text taken as a token at sign-in: a bulkhead token is 87 bytes.
const TOKEN_TEXT_MAX: usize = 512;

/// A session as a request resumes it.
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    /// What every form of the session sends back.
    pub csrf: String,
    pub expires_at: Timestamp,
}

impl Session {
    /// Whether `presented` is this session's CSRF token, in time independent of where they
    /// differ.
    pub fn csrf_matches(&self, presented: &str) -> bool {
        self.csrf.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

/// A session just opened: the only moment its secret exists in clear.
pub struct SignedIn {
    pub secret: String,
    pub session: Session,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn id_of(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The sentence for a browser whose session is missing or over.
const SIGN_IN_AGAIN: &str = "you are not signed in, or your session has ended: sign in again";

/// Opens a session for whoever `token` proves, lasting `ttl` from now; `record` (the sign-in)
/// is committed with it.
pub async fn sign_in(
    config: &Config,
    store: &SystemStore,
    clock: &Clock,
    token: &str,
    record: &mut Record,
) -> Result<SignedIn, AuthError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Session(
            "paste a bulkhead token (`bulkhead token create --principal NAME` prints one)".into(),
        ));
    }
    if token.len() > TOKEN_TEXT_MAX {
        return Err(AuthError::BadToken);
    }
    let Some(presented) = Presented::parse(token) else {
        return Err(AuthError::Session(
            "that is not a bulkhead token (bh_...): sign in with a token of your own, not a pipeline's OIDC token".into(),
        ));
    };
    let caller = Caller {
        principal: super::by_token(config, store, &presented).await?,
        branch: None,
        subject: None,
        commit: None,
        certificate: None,
    };
    let now = clock.now();
    let expires_at = now
        .plus(config.server.ui_session)
        .ok_or_else(|| AuthError::Session("the session's expiry is out of range".into()))?;
    let (secret, csrf) = (random_hex(), random_hex());
    let principal = caller.principal.to_string();
    record.principal = Some(principal.clone());
    record.decision = Outcome::Allow;
    record.status = Some(303);
    record.reason = Some(format!(
        "dashboard session until {} with token {}",
        expires_at.stored(),
        presented.id()
    ));
    store
        .insert_session(
            NewSession {
                id: &id_of(&secret),
                principal: &principal,
                token_id: presented.id(),
                csrf: &csrf,
                expires_at: &expires_at.stored(),
            },
            &now.stored(),
            record,
        )
        .await?;
    Ok(SignedIn {
        secret,
        session: Session {
            caller,
            csrf,
            expires_at,
        },
    })
}

/// The session whose secret the browser sent, refused when there is none, it has expired,
/// its token was revoked, or its principal is no longer in the config.
pub async fn resume(
    config: &Config,
    store: &SystemStore,
    clock: &Clock,
    secret: &str,
) -> Result<Session, AuthError> {
    let ended = || AuthError::Session(SIGN_IN_AGAIN.into());
    // A secret is 64 hex digits; anything else is no session, and costs no look-up.
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ended());
    }
    let row = store.session(&id_of(secret)).await?.ok_or_else(ended)?;
    let expires_at = Timestamp::parse(&row.expires_at).map_err(|_| ended())?;
    if clock.now() >= expires_at {
        return Err(ended());
    }
    let token = store.token(&row.token_id).await?;
    if token.is_none_or(|t| t.revoked_at.is_some()) {
        return Err(AuthError::Session(
            "the token you signed in with was revoked: sign in with a live one".into(),
        ));
    }
    let principal = Principal::lookup(config, &row.principal)
        .ok_or_else(|| AuthError::UnknownPrincipal(row.principal.clone()))?;
    Ok(Session {
        caller: Caller {
            principal,
            branch: None,
            subject: None,
            commit: None,
            certificate: None,
        },
        csrf: row.csrf,
        expires_at,
    })
}

/// Ends the session whose secret the browser sent; false when there was none.
pub async fn sign_out(store: &SystemStore, secret: &str) -> Result<bool, AuthError> {
    Ok(store.delete_session(&id_of(secret)).await?)
}
