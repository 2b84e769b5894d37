//! Production keeps its state in a store of its own.

use super::{is_production, Finding, Severity};
use crate::config::storage::redact;
use crate::config::Config;

pub fn check(config: &Config, file: &str, out: &mut Vec<Finding>) {
    for env in config.environments.iter().filter(|e| is_production(e)) {
        // In a file of its own (no `storage`, no server PostgreSQL): separate by construction.
        // In a shared database, each environment has a schema of its own, but one set of
        // credentials reaches them all.
        let Some(url) = config.environment_url(env) else {
            continue;
        };
        let url = redact(url);
        for other in config.environments.iter().filter(|o| o.name != env.name) {
            if config.environment_url(other).map(redact) == Some(url.clone()) {
                out.push(Finding {
                    id: "production-store-shared",
                    severity: Severity::Error,
                    file: file.to_string(),
                    line: Some(env.line),
                    message: format!(
                        "production environment {} shares its state store {url} with {}",
                        env.name, other.name
                    ),
                    fix: format!(
                        "give {} a `storage` database of its own (reachable only with credentials other environments do not have), or, on SQLite, remove `storage` so it gets its own file",
                        env.name
                    ),
                });
            }
        }
    }
}
