//! DELETE: a state's deletion recorded as a version of its own, so that its history stays and
//! it can be restored.

use super::{commit, unexpected, OpError, StateRequest, DONE};
use crate::audit::{Applied, Record};
use crate::changes::ChangeId;
use crate::store::environment::NewVersion;
use crate::verdict::{Ask, Effect};

/// Records the deletion of the request's state; returns the version that records it.
pub async fn delete(req: &StateRequest<'_>, record: &mut Record) -> Result<i64, OpError> {
    let state = req.name.as_str();
    let principal = req.principal().to_string();
    let mut tx = req.store.begin().await?;
    let gathered = req.gather(&mut tx, None).await?;
    let change = match req.judge(record, &gathered, Ask::Delete)? {
        Effect::Delete { change } => change,
        other => return Err(unexpected(other)),
    };
    match tx.latest_version(state).await? {
        Some(current) if !current.deleted => {}
        _ => {
            return Err(OpError::NotFound(format!(
                "there is no state `{state}` in {}",
                req.env.name
            )))
        }
    }
    let version = tx
        .append_version(NewVersion {
            state,
            sha256: "",
            serial: None,
            lineage: None,
            principal: &principal,
            operation: None,
            lock_id: None,
            forced: false,
            change_number: change,
            content: None,
            resources: None,
            beyond_plan: &[],
            facts: None,
        })
        .await?;
    if let Some(number) = change {
        tx.mark_applied(number, &principal, version).await?;
        record.applied = Some(Applied {
            change: ChangeId::new(&req.env.name, number).to_string(),
            version,
        });
    }
    record.version = Some(version);
    commit(tx, record, DONE).await?;
    Ok(version)
}
