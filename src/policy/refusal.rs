//! The one plain sentence a refused person reads: who was refused, what, where, whose
//! environment it is, and what to do instead.

use std::net::IpAddr;

use crate::config::{Environment, Subject};
use crate::principal::{Caller, Principal};

use super::{Action, Barrier, Decision};

/// The sentence for a refused `decision` on `caller` doing `action` in `env` from
/// `source_ip`: the barrier's, when only a barrier refused it, or else [`sentence`].
pub fn refused(
    caller: &Caller,
    action: Action,
    env: &Environment,
    decision: &Decision,
    source_ip: Option<IpAddr>,
) -> String {
    match decision.barrier.as_ref().filter(|_| decision.permitted) {
        Some(barrier) => barred(caller, action, env, barrier, source_ip),
        None => sentence(&caller.principal, action, env),
    }
}

/// The sentence for a request a barrier refused: where it came from and where it must come
/// from, or which certificate it came with and which it needs.
pub fn barred(
    caller: &Caller,
    action: Action,
    env: &Environment,
    barrier: &Barrier,
    source_ip: Option<IpAddr>,
) -> String {
    let principal = &caller.principal;
    let (name, owner, verb) = (&env.name, &env.owner, verb(action));
    match barrier {
        Barrier::Network { writes, networks } => {
            let from = source_ip.map_or("an unknown address".to_string(), |ip| ip.to_string());
            let networks = networks
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let (what, attribute) = if *writes {
                ("states are changed", "write_from")
            } else {
                ("requests are answered", "read_from")
            };
            format!(
                "{principal} may not {verb} {name} from {from} (owner: {owner}): {name}'s {what} only from {networks} ({attribute}); run it on a machine there, such as {name}'s pipeline runner, or ask {owner} whether this network should be one of them"
            )
        }
        Barrier::Certificate { service, required } => {
            let came_with = match &caller.certificate {
                None => "none".to_string(),
                Some(presented) => format!("one of {presented}"),
            };
            format!(
                "{principal} may not {verb} {name} without its client certificate: service \"{service}\" requires one with {required} (its certificate block), and this request came with {came_with}; run it on the runner that holds that certificate, and give terraform its certificate and key (client_certificate_pem and client_private_key_pem in the backend block, or TF_HTTP_CLIENT_CERTIFICATE_PEM and TF_HTTP_CLIENT_PRIVATE_KEY_PEM)"
            )
        }
    }
}

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
    let verb = verb(action);
    let advice = match action {
        Action::StateRead => {
            format!("ask {owner} to add you to {name}'s readers")
        }
        Action::StateWrite | Action::StateLock | Action::StateUnlock => {
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
            }
        }
        Action::StateForceUnlock => {
            format!(
                "wait for the lock's holder to finish, or ask {} to release it",
                list_or_owner(&env.force_unlock, owner)
            )
        }
        Action::StateForceWrite => {
            format!(
                "pull the current state first (`terraform state pull`), or ask {} to force it",
                list_or_owner(&env.force_write, owner)
            )
        }
        Action::StateDelete => {
            format!("ask {}", list_or_owner(&env.delete, owner))
        }
        Action::StateRollback => {
            if env.write.is_empty() {
                format!("ask {owner}")
            } else {
                format!("rollbacks are writes: {} may roll back", list(&env.write))
            }
        }
        Action::ChangeCreate => {
            format!("ask {owner} for read access to {name}")
        }
        Action::ChangeApprove => match &env.approval {
            Some(a) => format!("approvals come from {}", list(&a.approvers)),
            None => format!("{name} takes no approvals: it is not protected"),
        },
        Action::BreakglassOpen => match &env.breakglass {
            Some(b) => format!("only {} may; in an emergency, call them", list(&b.allowed)),
            None => format!("{name} has no break-glass procedure; ask {owner}"),
        },
        Action::AuditRead => {
            format!("its owner {owner} may, and whoever a custom policy grants audit:read")
        }
        Action::DriftReport => {
            if env.write.is_empty() {
                format!("drift is reported by {name}'s writers, and it has none; ask {owner}")
            } else {
                format!(
                    "drift is reported by the pipeline that writes {name}: {}",
                    list(&env.write)
                )
            }
        }
        Action::DriftAcknowledge => {
            match env.approval.as_ref().filter(|a| !a.approvers.is_empty()) {
                Some(a) => format!(
                    "its owner {owner} and its approvers ({}) may",
                    list(&a.approvers)
                ),
                None => format!("its owner {owner} may"),
            }
        }
    };
    format!("{principal} may not {verb} {name} (owner: {owner}): {advice}")
}

/// What doing `action` is called in a sentence: `write`, `delete states in`.
fn verb(action: Action) -> &'static str {
    match action {
        Action::StateRead => "read",
        Action::StateWrite | Action::StateLock | Action::StateUnlock => "write",
        Action::StateForceUnlock => "force-unlock",
        Action::StateForceWrite => "force-write (another lineage or an older serial) to",
        Action::StateDelete => "delete states in",
        Action::StateRollback => "roll back states in",
        Action::ChangeCreate => "propose changes to",
        Action::ChangeApprove => "approve changes to",
        Action::BreakglassOpen => "break the glass in",
        Action::AuditRead => "read the audit log of",
        Action::DriftReport => "report drift in",
        Action::DriftAcknowledge => "acknowledge signals or drift in",
    }
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
            write_from: vec![],
            read_from: vec![],
        };
        let s = sentence(&Principal::User("alice".into()), Action::StateLock, &env);
        assert!(
            s.starts_with("user:alice may not write prod (owner: team:platform): prod changes are applied by service:ci-prod"),
            "{s}"
        );
    }
}
