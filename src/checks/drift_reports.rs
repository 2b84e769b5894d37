//! A protected environment is checked for drift on a schedule: some state of it had a drift
//! report (`bulkhead drift report`, from the pipeline's refresh-only plan) within the period
//! `bulkhead check --drift-max-age` names. What the server last received is handed in by the
//! caller (the command line asks the server); this check reads nothing itself.

use std::collections::HashMap;
use std::time::Duration;

use super::{Finding, Severity};
use crate::config::Config;
use crate::time::Timestamp;

/// When each environment's newest drift report was posted, as the server said at `now`.
pub struct Reported {
    pub now: Timestamp,
    pub max_age: Duration,
    /// The period as the caller wrote it (`7d`), for the findings.
    pub max_age_text: String,
    /// By environment: the time of its newest report (`None`: never reported).
    pub last: HashMap<String, Option<String>>,
}

pub fn check(config: &Config, file: &str, reported: &Reported, out: &mut Vec<Finding>) {
    let max_age = &reported.max_age_text;
    for env in config.environments.iter().filter(|e| e.protected()) {
        // An environment the server did not list (the caller may not read it) is not judged.
        let Some(last) = reported.last.get(&env.name) else {
            continue;
        };
        let age = last
            .as_deref()
            .and_then(|at| Timestamp::parse(at).ok())
            .map(|at| reported.now.since(at));
        let message = match (last, age) {
            (None, _) => format!(
                "protected environment {} has never had a drift report: nothing tells whether what runs still matches its state",
                env.name
            ),
            (Some(_), Some(age)) if age <= reported.max_age => continue,
            (Some(at), _) => format!(
                "protected environment {}'s newest drift report is from {at}, older than {max_age}",
                env.name
            ),
        };
        out.push(Finding {
            id: "drift-unreported",
            severity: Severity::Warning,
            file: file.to_string(),
            line: Some(env.line),
            message,
            fix: format!(
                "schedule a pipeline job that runs `terraform plan -refresh-only -out drift.tfplan && terraform show -json drift.tfplan > drift.json && bulkhead drift report {}/NAME --plan drift.json` at least every {max_age} (README: Keeping state accurate)",
                env.name
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            std::path::Path::new("b.hcl"),
            r#"
team "platform" { members = ["pat"] }
service "ci-prod" {}
environment "dev" { owner = "team:platform" }
environment "prod" {
  owner = "team:platform"
  write = ["service:ci-prod"]
  approval { required = 1 }
}
"#,
        )
        .unwrap()
    }

    fn findings(last: Option<&str>) -> Vec<Finding> {
        let reported = Reported {
            now: Timestamp::parse("2026-12-07T12:00:00Z").unwrap(),
            max_age: Duration::from_secs(7 * 86_400),
            max_age_text: "7d".into(),
            last: [
                ("dev".to_string(), None),
                ("prod".to_string(), last.map(str::to_string)),
            ]
            .into(),
        };
        let mut out = Vec::new();
        check(&config(), "b.hcl", &reported, &mut out);
        out
    }

    #[test]
    fn a_protected_environment_never_reported_on_is_a_warning_and_dev_is_not_judged() {
        let out = findings(None);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].id, "drift-unreported");
        assert!(
            out[0].message.contains("prod has never"),
            "{}",
            out[0].message
        );
    }

    #[test]
    fn a_report_within_the_period_passes_and_an_older_one_does_not() {
        assert!(findings(Some("2026-12-06T12:00:00Z")).is_empty());
        let out = findings(Some("2026-11-20T12:00:00Z"));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].message.contains("older than 7d"),
            "{}",
            out[0].message
        );
    }
}
