//! POST (or PUT): a new version of a state, under the lock the request names or, with
//! `-lock=false`, unlocked. Judged twice: before the body is read (a refused writer's body is
//! never read), and with the body, in the transaction that writes.
//!
//! A write under a change is compared with the change's plan: resource instances it adds,
//! changes or removes that the plan does not are still stored (the state is the truth about
//! the infrastructure), but the version and the change record them, the change is
//! `diverged`, and the audit record names the addresses.

use super::{commit, drift, unexpected, Gathered, OpError, StateRequest, DONE};
use crate::audit::{Applied, Diverged, Record};
use crate::changes::{self, ChangeId};
use crate::history;
use crate::state::{self, Document, VersionMeta, Write};
use crate::store::Tx;
use crate::text::first_of;

/// The most addresses beyond the plan an audit record names; the rest are counted.
const ADDRESSES_SHOWN: usize = 20;
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
    if let Err(refused) = req.judge_early(record, ask, id).await {
        if id.is_none() && matches!(refused, OpError::Forbidden(_)) {
            // The apply has already changed the infrastructure: someone must push its state.
            tracing::warn!(
                environment = %req.env.name,
                state = %req.name.as_str(),
                principal = %req.caller.describe(),
                "a write without a lock (terraform -lock=false) was refused: the client's apply ran, and its state is left in its errored.tfstate for the owner"
            );
        }
        return Err(refused);
    }
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
        let drift::Read { resources, facts } = drift::read(bytes);
        // Read before the new version is: what the write is compared with.
        let before_facts = match current.as_ref().filter(|c| !c.deleted) {
            Some(_) => tx.latest_facts(state).await?,
            None => None,
        };
        let beyond = match change {
            Some(number) => {
                diverged(
                    &mut tx,
                    req,
                    record,
                    &gathered,
                    current.as_ref(),
                    number,
                    resources.as_deref(),
                )
                .await?
            }
            None => Vec::new(),
        };
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
                resources: resources.as_deref(),
                beyond_plan: &beyond,
                facts: facts.as_ref().map(|(_, json)| json.as_str()),
            })
            .await?;
        let written_under = change
            .and_then(|number| gathered.change(&ChangeId::new(&req.env.name, number).to_string()));
        let written = drift::Written {
            before: current.as_ref().filter(|c| !c.deleted),
            before_facts,
            doc: &doc,
            resources: resources.as_deref(),
            facts: facts.as_ref().map(|(facts, _)| facts),
            version,
            lock: under,
            change: written_under,
        };
        drift::on_write(&mut tx, req, record, written).await?;
        if let Some(number) = change.filter(|_| use_up) {
            tx.mark_applied(number, &principal, version).await?;
            record.applied = Some(Applied {
                change: ChangeId::new(&req.env.name, number).to_string(),
                version,
            });
        }
        record.version = Some(version);
        commit(tx, record, DONE).await?;
        Ok(Written::Version(version))
    }
}

/// The addresses a write under change `number`, whose resource instances are `after`, touches
/// beyond the change's plan, recorded on the change (with those of its earlier writes) and in
/// the audit record.
async fn diverged(
    tx: &mut Tx<'_>,
    req: &StateRequest<'_>,
    record: &mut Record,
    gathered: &Gathered,
    current: Option<&VersionMeta>,
    number: i64,
    after: Option<&str>,
) -> Result<Vec<String>, OpError> {
    let id = ChangeId::new(&req.env.name, number).to_string();
    let Some(change) = gathered.change(&id) else {
        return Ok(Vec::new());
    };
    let unreadable = |record: &mut Record| {
        note(record, format!("what it changed cannot be compared with change {id}'s plan: the content, or the version before it, cannot be read as a Terraform state"));
        Ok(Vec::new())
    };
    // A version before with no resources taken (an unreadable state) is not an empty one.
    let before = match current.filter(|c| !c.deleted) {
        None => None,
        Some(version) => match version.resources.as_deref() {
            Some(resources) => Some(resources),
            None => return unreadable(record),
        },
    };
    let touched = after.and_then(|after| history::touched(before, after));
    let Some(touched) = touched else {
        return unreadable(record);
    };
    let beyond = changes::beyond_plan(change, &touched);
    if beyond.is_empty() {
        return Ok(beyond);
    }
    let all: std::collections::BTreeSet<&String> = change.diverged.iter().chain(&beyond).collect();
    let all: Vec<String> = all.into_iter().cloned().collect();
    tx.mark_diverged(number, &all).await?;
    tracing::warn!(
        environment = %req.env.name,
        state = %req.name.as_str(),
        change = %id,
        beyond = beyond.len(),
        "a write under a change touched resources beyond its plan"
    );
    note(
        record,
        format!(
            "DIVERGED: change {id} wrote beyond its approved plan: {}",
            first_of(&beyond, ADDRESSES_SHOWN)
        ),
    );
    record.diverged = Some(Diverged::of(&id, &beyond));
    Ok(beyond)
}

/// Adds `text` to the record's reason.
fn note(record: &mut Record, text: String) {
    record.reason = Some(match record.reason.take() {
        Some(before) => format!("{before}; {text}"),
        None => text,
    });
}
