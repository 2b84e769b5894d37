//! Production keeps its state in a store of its own.

use super::{is_production, Finding, Severity};
use crate::config::Config;

pub fn check(config: &Config, file: &str, out: &mut Vec<Finding>) {
    for env in config.environments.iter().filter(|e| is_production(e)) {
        // Without `storage`, each environment has its own file: separate by construction.
        let Some(url) = &env.storage else { continue };
        for other in config.environments.iter().filter(|o| o.name != env.name) {
            if other.storage.as_deref() == Some(url.as_str()) {
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
                        "give {} a storage of its own, or remove `storage` so it gets its own file",
                        env.name
                    ),
                });
            }
        }
    }
}
