//! POST (or PUT): a new version of a state, under the lock the request names or, with
//! `-lock=false`, unlocked. Judged twice: before the body is read (a refused writer's body is
//! never read), and with the body, in the transaction that writes.

use super::{commit, unexpected, OpError, StateRequest, DONE};
use crate::audit::Record;
use crate::state::{self, Document, Write};
use crate::store::environment::NewVersion;
use crate::verdict::{Ask, Effect};

/// A write judged on what the request says, whose body may now be read.
pub struct Writing<'r, 'a> {
    req: &'r StateRequest<'a>,
    lock_id: Option<String>,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Stored as this version.
    Version(i64),
    /// Identical to the current version: nothing stored.
    Unchanged,
}

/// Judges a write under `lock_id` (`?ID=`) before its body is read.
pub async fn prepare<'r, 'a>(
    req: &'r StateRequest<'a>,
    record: &mut Record,
    lock_id: Option<String>,
) -> Result<Writing<'r, 'a>, OpError> {
    record.lock_id = lock_id.clone();
    let id = lock_id.as_deref();
    let ask = Ask::Write {
        lock_id: id,
        past: None,
    };
    req.judge_early(record, ask, id).await?;
    Ok(Writing { req, lock_id })
}

impl Writing<'_, '_> {
    /// The most a body may bring: the environment's `max_state_size`.
    pub fn limit(&self) -> u64 {
        self.req.env.max_state_size
    }

    /// Stores `bytes` as the state's new version, if the verdict on it allows.
    pub async fn write(self, record: &mut Record, bytes: &[u8]) -> Result<Written, OpError> {
        let req = self.req;
        let doc = Document::parse(bytes).map_err(|e| OpError::BadRequest(e.to_string()))?;
        let principal = req.principal().to_string();
        let state = req.name.as_str();
        let lock_id = self.lock_id.as_deref();
        let mut tx = req.store.begin().await?;
        let gathered = req.gather(&mut tx, lock_id).await?;
        let current = tx.latest_version(state).await?;
        let checked = state::check_write(current.as_ref(), &doc);
        let ask = Ask::Write {
            lock_id,
            past: checked.as_ref().err(),
        };
        let (change, use_up) = match req.judge(record, &gathered, ask)? {
            Effect::Write { change, use_up } => (change, use_up),
            other => return Err(unexpected(other)),
        };
        let under = gathered
            .held
            .as_ref()
            .filter(|h| lock_id == Some(h.lock_id.as_str()));
        // The holder is alive: its lease starts again.
        if under.is_some() {
            tx.touch_lock(state).await?;
        }
        if let Ok(Write::Unchanged) = checked {
            record.version = current.map(|c| c.version);
            record.reason = Some("identical to the current version: nothing stored".into());
            commit(tx, record, DONE).await?;
            return Ok(Written::Unchanged);
        }
        let version = tx
            .append_version(NewVersion {
                state,
                sha256: &doc.sha256,
                serial: Some(doc.serial),
                lineage: Some(&doc.lineage),
                principal: &principal,
                operation: under.map(|h| h.operation.as_str()),
                lock_id,
                forced: record.forced,
                change_number: change,
                content: Some(bytes),
            })
            .await?;
        if let Some(number) = change.filter(|_| use_up) {
            tx.mark_applied(number, &principal, version).await?;
        }
        record.version = Some(version);
        commit(tx, record, DONE).await?;
        Ok(Written::Version(version))
    }
}
