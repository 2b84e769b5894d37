//! A change approved, rejected or cancelled, by the rules of [`crate::changes::resolution`].

use std::net::IpAddr;

use super::{bounded, commit, OpError, Server, DONE, REASON_LIMIT};
use crate::audit::Record;
use crate::changes::resolution::{self, Resolution};
use crate::changes::Change;
use crate::identity::Caller;
use crate::policy::Action;

/// Decides `asked` (or, `Err`, the text of something that is no decision) on the change
/// `text` names, for the reason given.
pub async fn decide(
    server: &Server,
    caller: &Caller,
    source_ip: IpAddr,
    record: &mut Record,
    text: &str,
    asked: Result<Resolution, &str>,
    reason: Option<&str>,
) -> Result<Option<Change>, OpError> {
    let named = server.named(caller, source_ip, record, text).await?;
    let (env, id) = (named.env, &named.id);
    let me = caller.principal.to_string();
    let mut tx = named.store.begin().await?;
    let change = named.load(&mut tx).await?;
    record.state = Some(change.state.clone());
    let resolution = asked.map_err(|other| {
        OpError::NotFound(format!(
            "`{other}`: a change can be approved, rejected or cancelled"
        ))
    })?;
    if resolution.needs_approver(&change, &me) {
        server.require(caller, record, Action::ChangeApprove, env, source_ip)?;
    }
    bounded("reason", reason, REASON_LIMIT)?;
    resolution::check_open(&change, id).map_err(OpError::Conflict)?;
    match resolution.closes_as() {
        None => {
            resolution::check_approver(&change, &me, id).map_err(OpError::Forbidden)?;
            let expires_at = resolution::approval_expiry(env, server.clock.now())
                .ok_or_else(|| OpError::Internal("an approval's expiry is out of range".into()))?
                .stored();
            tx.approve(id.number, &me, &expires_at).await?;
            record.reason = Some(format!("approval valid until {expires_at}"));
        }
        Some(status) => {
            if let Some((state, held)) = tx.lock_for_change(id.number).await? {
                if let Some(version) = tx
                    .version_under_lock(&state, &held.lock_id, id.number)
                    .await?
                {
                    return Err(OpError::Conflict(resolution::too_late_to_close(
                        id,
                        status,
                        &held.lock_id,
                        version,
                        &state,
                    )));
                }
                record.reason = Some(format!(
                    "{}; the apply holding lock {} on {state} may write nothing more",
                    reason.unwrap_or(status.as_str()),
                    held.lock_id
                ));
            }
            tx.close_change(id.number, status, &me, reason, None)
                .await?
        }
    }
    if record.reason.is_none() {
        record.reason = reason.map(str::to_string);
    }
    let change = tx
        .change(&env.name, env.required_approvals(), id.number)
        .await?;
    commit(tx, record, DONE).await?;
    Ok(change.map(|c| c.at(server.clock.now().as_datetime())))
}
