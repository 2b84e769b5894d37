//! No person can write or lock production state. Decided by asking the policy engine the
//! server uses, for every user and every writing action, not by reading the config text.

use super::{is_production, CheckError, Finding, Severity};
use crate::config::Config;
use crate::identity::Principal;
use crate::policy::{Action, Policy, RequestContext};

const WRITING: [Action; 3] = [
    Action::StateWrite,
    Action::StateLock,
    Action::StateForceWrite,
];

pub fn check(config: &Config, file: &str, out: &mut Vec<Finding>) -> Result<(), CheckError> {
    let policy = Policy::compile(config).map_err(|e| CheckError::Usage(e.to_string()))?;
    for env in config.environments.iter().filter(|e| is_production(e)) {
        // From where writes may come: a person who may write from there can write.
        let ctx = RequestContext {
            state: "",
            operation: "OperationTypeApply",
            source_ip: env.writable_from(),
            certificate: None,
        };
        for user in &config.users {
            let principal = Principal::User(user.clone());
            let mut granted = Vec::new();
            let mut by = Vec::new();
            for action in WRITING {
                let d = policy.decide(&principal, action, &env.name, &ctx);
                if d.allowed {
                    granted.push(action.as_str());
                    for p in d.policies {
                        if !by.contains(&p) {
                            by.push(p);
                        }
                    }
                }
            }
            if granted.is_empty() {
                continue;
            }
            out.push(Finding {
                id: "human-writes-production",
                severity: Severity::Error,
                file: file.to_string(),
                line: Some(env.line),
                message: format!(
                    "{principal} may {} in production environment {} (allowed by {})",
                    granted.join(", "),
                    env.name,
                    by.join(", ")
                ),
                fix: format!(
                    "let only the pipeline's service write {}: remove people and teams from its write/force_write lists and custom permits",
                    env.name
                ),
            });
        }
    }
    Ok(())
}
