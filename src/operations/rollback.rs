//! Rollback: an earlier version's content written again as a new version, its serial raised
//! above the current one so that terraform accepts it. History is never rewritten.

use super::read::version;
use super::{commit, unexpected, OpError, StateRequest, DONE};
use crate::audit::{Applied, Record};
use crate::changes::ChangeId;
use crate::state::{self, Document};
use crate::store::environment::NewVersion;
use crate::verdict::{Ask, Effect};

/// What a rollback wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolledBack {
    /// The new version.
    pub version: i64,
    /// The version whose content it holds.
    pub to: i64,
    pub serial: i64,
}

/// Writes version `to`'s content as the state's new version.
pub async fn rollback(
    req: &StateRequest<'_>,
    record: &mut Record,
    to: i64,
) -> Result<RolledBack, OpError> {
    let state = req.name.as_str();
    // Judged before the version is read, so that a refused caller reads no content.
    req.judge_early(record, Ask::Rollback { past: None }, None)
        .await?;
    let (target, content) = version(req, to).await?;
    let content = content.ok_or_else(|| {
        OpError::NotFound(format!(
            "version {to} of {state} records a deletion: there is nothing to roll back to"
        ))
    })?;
    let mut tx = req.store.begin().await?;
    let gathered = req.gather(&mut tx, None).await?;
    let current = tx.latest_version(state).await?.filter(|c| !c.deleted);
    // Rolling back across lineages replaces one state by another: a forced write.
    let past = match (
        current.as_ref().and_then(|c| c.lineage.clone()),
        &target.lineage,
    ) {
        (Some(current), Some(sent)) if current != *sent => Some(state::Refusal::Lineage {
            current,
            sent: sent.clone(),
        }),
        _ => None,
    };
    let ask = Ask::Rollback {
        past: past.as_ref(),
    };
    let change = match req.judge(record, &gathered, ask)? {
        Effect::Rollback { change } => change,
        other => return Err(unexpected(other)),
    };
    let serial = match current.as_ref().and_then(|c| c.serial) {
        Some(serial) => serial.checked_add(1).filter(|s| *s <= state::MAX_SERIAL).ok_or_else(|| {
            OpError::Conflict(format!(
                "the current serial of {state} is {serial}, the highest a state may have: nothing can follow it, not even a rollback"
            ))
        })?,
        None => target.serial.unwrap_or(0),
    };
    let content = with_serial(&content, serial).map_err(OpError::Internal)?;
    let doc = Document::parse(&content).map_err(|e| OpError::Internal(e.to_string()))?;
    let principal = req.principal().to_string();
    let read = super::drift::read(&content);
    let version = tx
        .append_version(NewVersion {
            state,
            sha256: &doc.sha256,
            serial: Some(doc.serial),
            lineage: Some(&doc.lineage),
            principal: &principal,
            operation: Some("rollback"),
            lock_id: None,
            forced: record.forced,
            change_number: change,
            content: Some(&content),
            resources: read.resources.as_deref(),
            beyond_plan: &[],
            facts: read.facts.as_ref().map(|(_, json)| json.as_str()),
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
    let forced = record.reason.take().filter(|_| record.forced);
    record.reason = Some(match forced {
        Some(forced) => format!("rolled back to version {to} (serial {serial}); {forced}"),
        None => format!("rolled back to version {to} (serial {serial})"),
    });
    commit(tx, record, DONE).await?;
    Ok(RolledBack {
        version,
        to,
        serial,
    })
}

/// The same document with another `serial`, its other fields (and their order) untouched.
fn with_serial(content: &[u8], serial: i64) -> Result<Vec<u8>, String> {
    let mut doc: serde_json::Value =
        serde_json::from_slice(content).map_err(|e| format!("stored version is not JSON: {e}"))?;
    let object = doc
        .as_object_mut()
        .ok_or("stored version is not a JSON object")?;
    object.insert("serial".into(), serial.into());
    serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())
}
