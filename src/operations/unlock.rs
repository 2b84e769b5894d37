//! UNLOCK: the holder releases its lock, another identity force-unlocks it (`terraform
//! force-unlock`, or the holder's ID presented by someone else), or a reader releases its plan
//! lock. A change applied under a released lock is used up.

use super::{commit, unexpected, Gathered, OpError, StateRequest, DONE};
use crate::audit::{Applied, Record};
use crate::changes::{ChangeId, Status};
use crate::lock::Unlock;
use crate::policy::Action;
use crate::store::Tx;
use crate::verdict::{Ask, Effect};

/// What a granted UNLOCK did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlocked {
    /// The state's lock was released.
    Released,
    /// The caller's plan lock was released.
    ReadOnlyReleased,
    /// No lock was held under the ID: nothing to release.
    NothingHeld,
}

/// UNLOCK with `body`: the LockInfo the lock was taken with, an ID alone, or nothing.
pub async fn unlock(
    req: &StateRequest<'_>,
    record: &mut Record,
    body: &[u8],
) -> Result<Unlocked, OpError> {
    let request = Unlock::parse(body).map_err(OpError::BadRequest)?;
    let (ask, named) = match &request {
        Unlock::Own(info) => (Ask::Unlock { id: &info.id }, Some(info.id.as_str())),
        Unlock::Force(id) => (Ask::ForceUnlock { id: id.as_deref() }, id.as_deref()),
    };
    record.lock_id = named.map(str::to_string);
    let mut tx = req.store.begin().await?;
    let gathered = req.gather(&mut tx, named).await?;
    let unlocked = match req.judge(record, &gathered, ask)? {
        Effect::Release => {
            release(&mut tx, req, record, &gathered).await?;
            if record.action == Action::StateForceUnlock.as_str() {
                record.released = gathered.held.as_ref().map(|held| held.holder());
            }
            Unlocked::Released
        }
        Effect::ReleaseReadLock => {
            if let Some(id) = named {
                tx.release_read_lock(id).await?;
            }
            Unlocked::ReadOnlyReleased
        }
        Effect::NothingHeld => Unlocked::NothingHeld,
        other => return Err(unexpected(other)),
    };
    commit(tx, record, DONE).await?;
    Ok(unlocked)
}

/// Releases the held lock; a change it was taken for, still open, is used up when something
/// was written for it under the lock. Returns the change so used up.
pub(super) async fn release(
    tx: &mut Tx<'_>,
    req: &StateRequest<'_>,
    record: &mut Record,
    gathered: &Gathered,
) -> Result<Option<i64>, OpError> {
    let Some(held) = &gathered.held else {
        return Ok(None);
    };
    let state = req.name.as_str();
    record.lock_id = Some(held.lock_id.clone());
    super::drift::on_release(tx, req, record, held).await?;
    let open = gathered
        .lock_change
        .as_ref()
        .is_some_and(|c| c.status == Status::Open);
    if let Some(number) = held.change_number.filter(|_| open) {
        let id = ChangeId::new(&req.env.name, number);
        record.change = Some(id.to_string());
        if let Some(version) = tx.version_under_lock(state, &held.lock_id, number).await? {
            tx.mark_applied(number, &held.principal, version).await?;
            record.applied = Some(Applied {
                change: id.to_string(),
                version,
            });
            record.reason = Some(format!("change {id} applied as version {version}"));
            tx.release_lock(state).await?;
            return Ok(Some(number));
        }
    }
    tx.release_lock(state).await?;
    Ok(None)
}
