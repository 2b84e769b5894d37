//! The rules of deciding on an open change: who may approve, reject or cancel it, how long an
//! approval lasts, and when closing it is too late. Pure; `operations::decide` carries them
//! out.

use super::{Change, ChangeId, Status};
use crate::config::Environment;
use crate::time::Timestamp;

/// What is decided on a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Approve,
    Reject,
    Cancel,
}

/// How long an approval lasts where the environment does not say.
const DEFAULT_APPROVAL: std::time::Duration = std::time::Duration::from_secs(86400);

impl Resolution {
    pub fn parse(text: &str) -> Option<Resolution> {
        match text {
            "approve" => Some(Resolution::Approve),
            "reject" => Some(Resolution::Reject),
            "cancel" => Some(Resolution::Cancel),
            _ => None,
        }
    }

    /// Its name, as [`Resolution::parse`] reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Approve => "approve",
            Resolution::Reject => "reject",
            Resolution::Cancel => "cancel",
        }
    }

    /// The action its audit record names.
    pub fn action(self) -> &'static str {
        match self {
            Resolution::Approve => "change:approve",
            Resolution::Reject => "change:reject",
            Resolution::Cancel => "change:cancel",
        }
    }

    /// The status it closes a change with; an approval closes nothing.
    pub fn closes_as(self) -> Option<Status> {
        match self {
            Resolution::Approve => None,
            Resolution::Reject => Some(Status::Rejected),
            Resolution::Cancel => Some(Status::Cancelled),
        }
    }

    /// Whether `who` needs the approvers' permission for it: every decision but an author
    /// cancelling their own change does.
    pub fn needs_approver(self, change: &Change, who: &str) -> bool {
        !(self == Resolution::Cancel && change.author == who)
    }
}

/// A decision is taken on an open change only.
pub fn check_open(change: &Change, id: &ChangeId) -> Result<(), String> {
    if change.status == Status::Open {
        Ok(())
    } else {
        Err(format!("change {id} is {} already", change.status.as_str()))
    }
}

/// The author of a change can never approve it.
pub fn check_approver(change: &Change, who: &str, id: &ChangeId) -> Result<(), String> {
    if change.author == who {
        Err(format!(
            "{who} may not approve change {id}: its author can never approve it; ask another approver"
        ))
    } else {
        Ok(())
    }
}

/// When an approval given at `now` in `env` expires; `None` past representable time.
pub fn approval_expiry(env: &Environment, now: Timestamp) -> Option<Timestamp> {
    now.plus(
        env.approval
            .as_ref()
            .map_or(DEFAULT_APPROVAL, |a| a.expires),
    )
}

/// Closing a change ends the grant of an apply under way; once that apply has written
/// `version` of `state` under `lock_id`, the change is being applied and stays what it is.
pub fn too_late_to_close(
    id: &ChangeId,
    status: Status,
    lock_id: &str,
    version: i64,
    state: &str,
) -> String {
    format!(
        "change {id} cannot be {}: its apply under lock {lock_id} has written version {version} of {state} already, and the change is applied when that lock is released; to undo it, roll back through a new change",
        status.as_str()
    )
}
