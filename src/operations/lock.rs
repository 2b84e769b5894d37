//! LOCK: a state's lock taken (for the change a protected environment's apply names), taken
//! over from a holder whose lease ran out, renewed when asked again, or a reader's plan lock
//! that blocks nobody. The verdict decides which; this carries it out.

use super::unlock::release;
use super::{commit, unexpected, Gathered, OpError, StateRequest, DONE};
use crate::audit::Record;
use crate::changes::ChangeId;
use crate::lock::{LockInfo, READ_LOCK_KEPT};
use crate::store::environment::NewLock;
use crate::store::Tx;
use crate::verdict::{Ask, Effect};

/// What a granted LOCK did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    /// The lock was free and is the caller's now.
    Taken,
    /// The lock of a holder idle past its lease was released and is the caller's now.
    TakenOver,
    /// The caller's own lock, asked for again: its lease starts again.
    Renewed,
    /// A reader's plan lock: it blocks nobody, and nothing can be written under it.
    ReadOnly,
}

/// LOCK with the LockInfo `body`.
pub async fn lock(
    req: &StateRequest<'_>,
    record: &mut Record,
    body: &[u8],
) -> Result<Locked, OpError> {
    let info = LockInfo::parse_lock(body).map_err(OpError::BadRequest)?;
    record.lock_id = Some(info.id.clone());
    let principal = req.principal().to_string();
    let state = req.name.as_str();
    let mut tx = req.store.begin().await?;
    let gathered = req.gather(&mut tx, None).await?;
    let ask = Ask::Lock {
        id: &info.id,
        operation: &info.operation,
    };
    let locked = match req.judge(record, &gathered, ask)? {
        Effect::ReadLock => {
            let forget_before = req.server.clock.now().minus(READ_LOCK_KEPT);
            tx.insert_read_lock(state, &info.id, &principal, forget_before)
                .await?;
            Locked::ReadOnly
        }
        effect @ (Effect::TakeLock { change } | Effect::TakeOver { change }) => {
            let took_over = matches!(effect, Effect::TakeOver { .. });
            if took_over {
                take_over(&mut tx, req, record, &gathered, change).await?;
                record.lock_id = Some(info.id.clone());
            }
            // The LockInfo as parsed (bounded), not the body as sent.
            let text = info.to_json();
            let lock = NewLock {
                lock_id: &info.id,
                principal: &principal,
                branch: req.caller.branch.as_deref(),
                subject: req.caller.subject.as_deref(),
                operation: &info.operation,
                info: &text,
                change_number: change,
            };
            tx.insert_lock(state, &lock).await?;
            if took_over {
                Locked::TakenOver
            } else {
                Locked::Taken
            }
        }
        Effect::LockRetried => {
            tx.touch_lock(state).await?;
            Locked::Renewed
        }
        other => return Err(unexpected(other)),
    };
    commit(tx, record, DONE).await?;
    Ok(locked)
}

/// Releases the lock whose lease ran out, loudly: the verdict's reason says whose it was and
/// since when it was idle; a change applied under it is used up, as at a force-unlock.
async fn take_over(
    tx: &mut Tx<'_>,
    req: &StateRequest<'_>,
    record: &mut Record,
    gathered: &Gathered,
    effect_change: Option<i64>,
) -> Result<(), OpError> {
    let took_over = record.reason.take().unwrap_or_default();
    // The record is the new lock's: its change, not the one the idle lock was taken for.
    let change = record.change.clone();
    let used_up = release(tx, req, record, gathered).await?;
    record.change = change;
    // The idle lock's apply wrote for this very change, which its release has used up: a new
    // lock for it could write nothing. Refused here, at the lock, with nothing changed.
    if let (Some(number), Some(held)) = (used_up, &gathered.held) {
        if effect_change == Some(number) {
            let id = ChangeId::new(&req.env.name, number);
            let sentence = format!(
                "change {id} was written under lock {} of {}, idle since {}: that apply used it up; propose a new change and take the lock under it",
                held.lock_id,
                held.holder(),
                held.last_active()
            );
            return Err(OpError::LockRefused(Box::new(LockInfo::refusal(
                &sentence,
                &held.operation,
            ))));
        }
    }
    if let Some(held) = &gathered.held {
        tracing::warn!(
            environment = %req.env.name,
            state = %req.name.as_str(),
            holder = %held.holder(),
            idle_since = %held.last_active(),
            taker = %req.caller.describe(),
            "a lock whose lease ran out was taken over"
        );
    }
    record.reason = Some(match record.reason.take() {
        Some(applied) => format!("{took_over}; {applied}"),
        None => took_over,
    });
    Ok(())
}
