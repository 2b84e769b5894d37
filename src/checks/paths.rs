//! Every directory with Terraform files belongs to exactly one environment.

use super::repo::Scanned;
use super::{CheckError, Finding, Severity};
use crate::config::Config;
use crate::ownership::Ownership;

pub fn check(config: &Config, scanned: &Scanned, out: &mut Vec<Finding>) -> Result<(), CheckError> {
    let ownership = Ownership::new(config).map_err(CheckError::Usage)?;
    for (path, line, why) in &scanned.unreadable {
        out.push(Finding {
            id: "repo-unreadable",
            severity: Severity::Warning,
            file: path.clone(),
            line: *line,
            message: format!("cannot read this Terraform file: {why}"),
            fix: "fix the file so that terraform (and bulkhead) can parse it".into(),
        });
    }
    for (dir, files) in &scanned.dirs {
        let Some(first) = files.first().map(|i| &scanned.files[*i]) else {
            continue;
        };
        let envs = ownership.all_environments_of(&first.path);
        let (id, message, fix) = match envs.as_slice() {
            [_] => continue,
            [] => (
                "unmapped-directory",
                format!("Terraform directory {dir} belongs to no environment"),
                format!(
                    "add a pattern covering {dir}/ to the `paths` of the environment it deploys"
                ),
            ),
            many => (
                "doubly-mapped-directory",
                format!(
                    "Terraform directory {dir} is claimed by several environments: {}",
                    many.join(", ")
                ),
                "make the environments' `paths` patterns disjoint".to_string(),
            ),
        };
        out.push(Finding {
            id,
            severity: Severity::Error,
            file: first.path.clone(),
            line: None,
            message,
            fix,
        });
    }
    Ok(())
}
