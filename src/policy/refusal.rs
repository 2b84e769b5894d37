//! The one plain sentence a refused person reads: who was refused, what, where, whose
//! environment it is, and what to do instead.

use crate::config::{Environment, Subject};
use crate::principal::Principal;

use super::Action;

/// The sentence for a write a protected environment refuses because a step of the change
/// process is missing: `problem` names the step.
pub fn missing_step(principal: &Principal, env: &Environment, problem: &str) -> String {
    format!(
        "{principal} may not write {} (owner: {}) now: {problem}",
        env.name, env.owner
    )
}

/// `alice may not write prod (owner: team:platform): prod changes are applied by ...`.
pub fn sentence(principal: &Principal, action: Action, env: &Environment) -> String {
    let name = &env.name;
    let owner = &env.owner;
    let (verb, advice) = match action {
        Action::StateRead => (
            "read",
            format!("ask {owner} to add you to {name}'s readers"),
        ),
        Action::StateWrite | Action::StateLock | Action::StateUnlock => (
            "write",
            if let Some(personal) = env.personal.as_ref().filter(|p| p.former) {
                format!(
                    "it was {owner}'s personal environment, and they are no longer a member of `personal \"{}\"`: nobody writes it, and its readers still read it",
                    personal.template
                )
            } else if let Some(personal) = &env.personal {
                format!(
                    "it is {owner}'s personal environment, written by {} alone; yours, if `personal \"{}\"` gives you one, is {}",
                    list(&env.write),
                    personal.template,
                    crate::config::personal_name(&personal.template, principal.name())
                )
            } else if env.write.is_empty() {
                format!("nobody writes {name} under the environment's rules; ask {owner}")
            } else if env.protected() {
                format!(
                    "{name} changes go through an approved change request applied by {}: propose yours with `bulkhead change create --env {name}` (`terraform plan` works here to preview)",
                    list(&env.write)
                )
            } else {
                format!(
                    "{name} changes are applied by {}; commit yours for review and let that pipeline apply it (`terraform plan` works here to preview)",
                    list(&env.write)
                )
            },
        ),
        Action::StateForceUnlock => (
            "force-unlock",
            format!(
                "wait for the lock's holder to finish, or ask {} to release it",
                list_or_owner(&env.force_unlock, owner)
            ),
        ),
        Action::StateForceWrite => (
            "force-write (another lineage or an older serial) to",
            format!(
                "pull the current state first (`terraform state pull`), or ask {} to force it",
                list_or_owner(&env.force_write, owner)
            ),
        ),
        Action::StateDelete => (
            "delete states in",
            format!("ask {}", list_or_owner(&env.delete, owner)),
        ),
        Action::StateRollback => (
            "roll back states in",
            if env.write.is_empty() {
                format!("ask {owner}")
            } else {
                format!("rollbacks are writes: {} may roll back", list(&env.write))
            },
        ),
        Action::ChangeCreate => (
            "propose changes to",
            format!("ask {owner} for read access to {name}"),
        ),
        Action::ChangeApprove => (
            "approve changes to",
            match &env.approval {
                Some(a) => format!("approvals come from {}", list(&a.approvers)),
                None => format!("{name} takes no approvals: it is not protected"),
            },
        ),
        Action::BreakglassOpen => (
            "break the glass in",
            match &env.breakglass {
                Some(b) => format!("only {} may; in an emergency, call them", list(&b.allowed)),
                None => format!("{name} has no break-glass procedure; ask {owner}"),
            },
        ),
        Action::AuditRead => (
            "read the audit log of",
            format!("its owner {owner} may, and whoever a custom policy grants audit:read"),
        ),
        Action::DriftReport => (
            "report drift in",
            if env.write.is_empty() {
                format!("drift is reported by {name}'s writers, and it has none; ask {owner}")
            } else {
                format!(
                    "drift is reported by the pipeline that writes {name}: {}",
                    list(&env.write)
                )
            },
        ),
        Action::DriftAcknowledge => (
            "acknowledge signals or drift in",
            match env.approval.as_ref().filter(|a| !a.approvers.is_empty()) {
                Some(a) => format!(
                    "its owner {owner} and its approvers ({}) may",
                    list(&a.approvers)
                ),
                None => format!("its owner {owner} may"),
            },
        ),
    };
    format!("{principal} may not {verb} {name} (owner: {owner}): {advice}")
}

fn list(subjects: &[Subject]) -> String {
    subjects
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// `subjects` joined with "or", or the owner when there are none.
pub fn list_or_owner(subjects: &[Subject], owner: &Subject) -> String {
    if subjects.is_empty() {
        owner.to_string()
    } else {
        list(subjects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_principal_action_environment_owner_and_the_way_forward() {
        let env = Environment {
            name: "prod".into(),
            line: 1,
            owner: Subject::Team("platform".into()),
            paths: vec![],
            read: vec![],
            write: vec![Subject::Service("ci-prod".into())],
            force_unlock: vec![],
            force_write: vec![],
            delete: vec![],
            storage: None,
            max_state_size: 1,
            max_plan_size: 1,
            lock_lease: None,
            approval: None,
            pipeline: None,
            breakglass: None,
            personal: None,
        };
        let s = sentence(&Principal::User("alice".into()), Action::StateLock, &env);
        assert!(
            s.starts_with("user:alice may not write prod (owner: team:platform): prod changes are applied by service:ci-prod"),
            "{s}"
        );
    }
}
