//! `bulkhead check`: the questions every team should ask about its boundaries, answered for a
//! bulkhead config and, optionally, a Terraform repository. One file per check; each returns
//! [`Finding`]s. Checks read files and ask the policy engine; they never touch a server (what
//! one said, the command line hands in).

mod approval;
mod backends;
mod ci_files;
pub mod drift_reports;
mod iam;
mod origins;
mod paths;
mod repo;
pub mod report;
mod stores;
mod writers;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Config, Environment};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One thing found wrong, where, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub id: &'static str,
    pub severity: Severity,
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
    pub fix: String,
}

/// What each finding id means, for people and for SARIF's rule list.
pub const RULES: &[(&str, &str)] = &[
    ("config-invalid", "The bulkhead config is invalid."),
    (
        "owner-missing",
        "Every environment has an owner, and the owner exists.",
    ),
    (
        "production-store-shared",
        "Production has a state store of its own.",
    ),
    (
        "human-writes-production",
        "No person can write or lock production state.",
    ),
    (
        "production-unapproved",
        "Production changes require approval.",
    ),
    (
        "approvers-without-owner",
        "The owner is among production's approvers.",
    ),
    (
        "approvers-too-few",
        "A change's author is never the only possible approver.",
    ),
    (
        "unmapped-directory",
        "Every Terraform directory belongs to an environment.",
    ),
    (
        "doubly-mapped-directory",
        "No Terraform directory belongs to two environments.",
    ),
    (
        "backend-shared",
        "Environments do not share a backend location.",
    ),
    ("backend-without-locking", "State backends lock."),
    (
        "backend-credentials",
        "No credentials are written in backend blocks.",
    ),
    (
        "nonprod-backend-points-at-production",
        "Only production directories use production's backend.",
    ),
    (
        "iam-allows-production-state-write",
        "No IAM policy lets anything write production state without a matching Deny.",
    ),
    (
        "ci-lock-false",
        "No CI file runs terraform with -lock=false.",
    ),
    (
        "drift-unreported",
        "Every protected environment has a recent drift report.",
    ),
    (
        "write-from-anywhere",
        "Production states are written only from the runners' network.",
    ),
    (
        "trusted-proxies-anywhere",
        "Only the load balancers are trusted to name the client's address.",
    ),
    (
        "repo-unreadable",
        "A Terraform or CI file could not be read.",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

/// Whether an environment is production: protected, or named like it.
pub fn is_production(env: &Environment) -> bool {
    let n = env.name.as_str();
    // A member's sandbox is never production, whatever the member is called (the template's
    // own name cannot look like production: the config refuses that).
    if env.personal.is_some() {
        return false;
    }
    env.protected()
        || n == "prod"
        || n == "production"
        || n.starts_with("prod-")
        || n.ends_with("-prod")
        || n.contains("production")
}

/// Runs every check; the drift-report check when `reported` says what the server last
/// received. A config that does not load is reported as findings (its problems are exactly
/// what `check` is for), and the other checks are skipped.
pub fn run(
    config_path: &Path,
    repo: Option<&Path>,
    reported: Option<&drift_reports::Reported>,
) -> Result<Vec<Finding>, CheckError> {
    let file = config_path.display().to_string();
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            return Ok(e
                .diagnostics
                .into_iter()
                .map(|d| {
                    let owner = d.message.contains("owner");
                    Finding {
                        id: if owner { "owner-missing" } else { "config-invalid" },
                        severity: Severity::Error,
                        file: file.clone(),
                        line: d.line,
                        message: d.message,
                        fix: if owner {
                            "give the environment an owner = \"team:NAME\" that is declared in the config".into()
                        } else {
                            "fix the config line named".into()
                        },
                    }
                })
                .collect())
        }
    };
    let mut findings = Vec::new();
    stores::check(&config, &file, &mut findings);
    writers::check(&config, &file, &mut findings)?;
    approval::check(&config, &file, &mut findings);
    origins::check(&config, &file, &mut findings);
    if let Some(reported) = reported {
        drift_reports::check(&config, &file, reported, &mut findings);
    }
    if let Some(repo) = repo {
        let scanned = repo::scan(repo)?;
        paths::check(&config, &scanned, &mut findings)?;
        backends::check(&config, &scanned, &mut findings)?;
        iam::check(&config, &scanned, &mut findings);
        ci_files::check(repo, &mut findings);
    }
    findings.sort_by(|a, b| (a.severity, &a.file, a.line).cmp(&(b.severity, &b.file, b.line)));
    Ok(findings)
}
