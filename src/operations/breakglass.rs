//! Break-glass grants: a time-boxed write to a protected environment without a change request,
//! opened with a mandatory reason and loudly recorded; closed early by its opener or by whoever
//! may open one.

use std::net::IpAddr;

use serde::Deserialize;

use super::{bounded, commit, OpError, Server, CREATED, DONE, REASON_LIMIT};
use crate::audit::Record;
use crate::changes::{self, BreakglassGrant};
use crate::config::{parse_duration, Breakglass, Environment};
use crate::identity::Caller;
use crate::policy::Action;
use crate::store::EnvStore;

/// The longest body an opening may bring.
const BODY_LIMIT: u64 = 64 * 1024;

/// An opening that may go ahead, whose body (the reason) may now be read.
pub struct Opening<'a> {
    server: &'a Server,
    env: &'a Environment,
    store: std::sync::Arc<EnvStore>,
    rules: &'a Breakglass,
}

#[derive(Debug, Deserialize)]
struct Body {
    reason: Option<String>,
}

/// Checks that `caller` may open a grant in `environment`, before its body is read.
pub async fn check<'a>(
    server: &'a Server,
    caller: &Caller,
    source_ip: IpAddr,
    record: &mut Record,
    environment: &str,
) -> Result<Opening<'a>, OpError> {
    let (env, store) = server.environment(environment, caller, source_ip).await?;
    server.require(caller, record, Action::BreakglassOpen, env, source_ip)?;
    let Some(rules) = &env.breakglass else {
        return Err(OpError::BadRequest(format!(
            "{} has no breakglass block",
            env.name
        )));
    };
    Ok(Opening {
        server,
        env,
        store,
        rules,
    })
}

impl Opening<'_> {
    /// The most a body may bring.
    pub fn limit(&self) -> u64 {
        BODY_LIMIT
    }

    /// Opens a grant for `caller` with the reason `body` gives, for `ttl` (at most, and by
    /// default, the environment's `max_ttl`).
    pub async fn open(
        self,
        caller: &Caller,
        record: &mut Record,
        body: &[u8],
        ttl: Option<&str>,
    ) -> Result<Option<BreakglassGrant>, OpError> {
        let env = self.env;
        let reason = serde_json::from_slice::<Body>(body)
            .ok()
            .and_then(|b| b.reason)
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| OpError::BadRequest("a reason is mandatory: say what is broken and why the change process cannot wait".into()))?;
        bounded("reason", Some(&reason), REASON_LIMIT)?;
        let duration = match ttl {
            None => self.rules.max_ttl,
            Some(t) => parse_duration(t).map_err(|e| OpError::BadRequest(format!("ttl {e}")))?,
        };
        if duration > self.rules.max_ttl {
            return Err(OpError::BadRequest(format!(
                "ttl {} is longer than {}'s max_ttl of {}s",
                ttl.unwrap_or(""),
                env.name,
                self.rules.max_ttl.as_secs()
            )));
        }
        let expires_at = self
            .server
            .clock
            .now()
            .plus(duration)
            .ok_or_else(|| {
                OpError::Internal("a break-glass grant's expiry is out of range".into())
            })?
            .stored();
        let me = caller.principal.to_string();
        let mut tx = self.store.begin().await?;
        let number = tx.insert_breakglass(&me, &reason, &expires_at).await?;
        let id = changes::breakglass_id(&env.name, number);
        let opened = tx.breakglass(number).await?;
        tracing::warn!(breakglass = %id, principal = %me, environment = %env.name, %expires_at, "BREAK-GLASS OPENED");
        record.breakglass = Some(id);
        record.reason = Some(format!("break-glass opened until {expires_at}: {reason}"));
        commit(tx, record, CREATED).await?;
        Ok(opened.map(|row| row.grant(&env.name)))
    }
}

/// Closes the grant `text` names early: its opener may, and so may whoever may open one.
pub async fn close(
    server: &Server,
    caller: &Caller,
    source_ip: IpAddr,
    record: &mut Record,
    text: &str,
) -> Result<(), OpError> {
    record.breakglass = Some(text.to_string());
    let not_an_id = || {
        OpError::NotFound(format!(
            "`{text}` is not a break-glass id (they look like prod-bg3)"
        ))
    };
    let (environment, number) = changes::parse_breakglass_id(text).ok_or_else(not_an_id)?;
    let (env, store) = server.environment(environment, caller, source_ip).await?;
    record.environment = Some(env.name.clone());
    let me = caller.principal.to_string();
    let mut tx = store.begin().await?;
    let grant = tx.breakglass(number).await?.ok_or_else(not_an_id)?;
    if grant.principal != me {
        server.require(caller, record, Action::BreakglassOpen, env, source_ip)?;
    }
    tx.close_breakglass(number, &me).await?;
    record.reason = Some(format!("break-glass of {} closed", grant.principal));
    commit(tx, record, DONE).await?;
    Ok(())
}
