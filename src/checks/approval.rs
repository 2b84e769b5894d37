//! Production changes need approval: from the owner among others, and never from the change's
//! author alone.

use std::collections::BTreeSet;

use super::{is_production, Finding, Severity};
use crate::config::{Config, Subject};

pub fn check(config: &Config, file: &str, out: &mut Vec<Finding>) {
    for env in config.environments.iter().filter(|e| is_production(e)) {
        let finding = |id, message: String, fix: String| Finding {
            id,
            severity: Severity::Error,
            file: file.to_string(),
            line: Some(env.line),
            message,
            fix,
        };
        let Some(approval) = &env.approval else {
            out.push(finding(
                "production-unapproved",
                format!("production environment {} takes changes without approval", env.name),
                format!("add approval {{ required = 1 }} to environment \"{}\" (approvers default to the owner)", env.name),
            ));
            continue;
        };
        if !approval.approvers.contains(&env.owner) {
            out.push(finding(
                "approvers-without-owner",
                format!(
                    "the owner {} is not among {}'s approvers",
                    env.owner, env.name
                ),
                format!("add \"{}\" to approval.approvers", env.owner),
            ));
        }
        let people: BTreeSet<&str> = approval
            .approvers
            .iter()
            .flat_map(|s| -> Vec<&str> {
                match s {
                    Subject::User(u) => vec![u.as_str()],
                    Subject::Team(t) => config
                        .teams
                        .get(t)
                        .map(|m| m.iter().map(String::as_str).collect())
                        .unwrap_or_default(),
                    Subject::Service(_) => vec![],
                }
            })
            .collect();
        // An approver who authors a change cannot approve it: the others must suffice.
        if people.len() < approval.required as usize + 1 {
            out.push(finding(
                "approvers-too-few",
                format!(
                    "{} needs {} approval(s) from {} possible approver(s): a change by one of them cannot collect them from the others",
                    env.name,
                    approval.required,
                    people.len()
                ),
                format!("name at least {} people as approvers, or lower `required`", approval.required + 1),
            ));
        }
    }
}
