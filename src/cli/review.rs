//! `bulkhead review`: which environments a git diff touches and whose approval each still
//! needs. The ownership config is read from the base revision, so a change cannot rewrite its
//! own owners.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitCode};

use clap::Args;
use serde::Serialize;

use super::{print_json, CliError, Format};
use crate::config::{Config, Subject};
use crate::ownership::Ownership;
use crate::text::printable;

#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// The revision the change is based on (e.g. origin/main).
    #[arg(long)]
    base: String,
    /// The revision with the change (e.g. HEAD).
    #[arg(long, default_value = "HEAD")]
    head: String,
    /// Who wrote the change; their own approval never counts.
    #[arg(long)]
    author: Option<String>,
    /// Who approved it, comma-separated user names.
    #[arg(long, value_delimiter = ',')]
    approved_by: Vec<String>,
    /// The bulkhead config's path inside the repository (read at --base).
    #[arg(long, default_value = "bulkhead.hcl")]
    config: String,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, Serialize)]
struct EnvReview {
    environment: String,
    owner: String,
    files: Vec<String>,
    approved_by: Vec<String>,
    missing: Option<String>,
}

/// The output of `git ARGS`, refused with git's own words when it fails.
pub(super) fn git(args: &[&str]) -> Result<String, CliError> {
    let out = Command::new("git")
        .args(args)
        .output()
        .map_err(|e| CliError::Usage(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(CliError::Usage(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    String::from_utf8(out.stdout)
        .map_err(|_| CliError::Usage(format!("git {}: output is not UTF-8", args.join(" "))))
}

fn bare(name: &str) -> &str {
    name.strip_prefix("user:").unwrap_or(name)
}

impl ReviewArgs {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        let text = git(&["show", &format!("{}:{}", self.base, self.config)])?;
        let config = Config::parse(Path::new(&self.config), &text).map_err(CliError::Config)?;
        let ownership = Ownership::new(&config).map_err(CliError::Usage)?;
        let diff = git(&[
            "diff",
            "--name-only",
            &format!("{}...{}", self.base, self.head),
        ])?;

        let author = self.author.as_deref().map(bare);
        let approvers: Vec<&str> = self
            .approved_by
            .iter()
            .map(|a| bare(a.trim()))
            .filter(|a| !a.is_empty())
            .collect();
        let counted: Vec<&str> = approvers
            .iter()
            .copied()
            .filter(|a| Some(*a) != author)
            .collect();

        let mut unowned = Vec::new();
        let mut touched: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for file in diff.lines().filter(|l| !l.is_empty()) {
            match ownership.environment_of(file) {
                Some(env) => touched.entry(env).or_default().push(file.to_string()),
                None => unowned.push(file.to_string()),
            }
        }
        let mut reviews = Vec::new();
        for (name, files) in touched {
            let Some(env) = config.environment(name) else {
                continue;
            };
            let satisfied_by: Vec<String> = counted
                .iter()
                .filter(|who| match &env.owner {
                    Subject::User(u) => u == *who,
                    Subject::Team(t) => config
                        .teams
                        .get(t)
                        .is_some_and(|m| m.iter().any(|m| m == *who)),
                    Subject::Service(_) => false,
                })
                .map(|who| format!("user:{who}"))
                .collect();
            let missing = satisfied_by.is_empty().then(|| {
                if !approvers.is_empty() && counted.is_empty() {
                    format!("only the author approved; {} must approve", env.owner)
                } else {
                    format!("{} has not approved", env.owner)
                }
            });
            reviews.push(EnvReview {
                environment: env.name.clone(),
                owner: env.owner.to_string(),
                files,
                approved_by: satisfied_by,
                missing,
            });
        }
        let failed = reviews.iter().any(|r| r.missing.is_some());
        match self.format {
            Format::Json => {
                let value = serde_json::json!({ "environments": reviews, "unowned": unowned, "approved": !failed });
                print_json(&value)?;
            }
            Format::Human => {
                for r in &reviews {
                    let verdict = match &r.missing {
                        Some(m) => format!("MISSING: {m}"),
                        None => format!("approved by {}", r.approved_by.join(", ")),
                    };
                    // File names are a pull request author's to choose.
                    println!(
                        "{} (owner {}): {}",
                        r.environment,
                        r.owner,
                        printable(&verdict)
                    );
                    for f in &r.files {
                        println!("    {}", printable(f));
                    }
                }
                if !unowned.is_empty() {
                    println!("no environment: {}", printable(&unowned.join(", ")));
                }
                if reviews.is_empty() {
                    println!("The change touches no environment's paths.");
                }
            }
        }
        Ok(if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    }
}
