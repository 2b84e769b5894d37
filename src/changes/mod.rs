//! Change requests to protected environments: proposed with a plan, approved by others than
//! their author, applied once by the pipeline. This module holds the rules (pure): what a
//! change is, when it may be applied ([`check_grant`]) and how it is decided on
//! ([`resolution`]). Storage is in `store::change_requests`; the operations on changes are in
//! `operations::{propose, decide, breakglass}`.

pub mod fingerprint;
pub mod plan;
pub mod resolution;

use std::fmt;

use chrono::{DateTime, Utc};

use crate::config::Environment;
use crate::principal::{self, Caller};
use serde::{Deserialize, Serialize};

pub use fingerprint::Fingerprint;
pub use plan::PlanSummary;
pub use resolution::Resolution;

/// `<environment>-<number>`, e.g. `prod-12`: one spelling per change, so that every record of
/// a change names it alike and a search for `prod-14` finds them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeId {
    pub environment: String,
    pub number: i64,
}

/// A change id in another spelling than `<environment>-<number>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a change id: write ENVIRONMENT-NUMBER, the number in decimal without sign, leading zeros or spaces, e.g. {example}")]
pub struct BadChangeId {
    text: String,
    example: String,
}

impl ChangeId {
    pub fn new(environment: &str, number: i64) -> ChangeId {
        ChangeId {
            environment: environment.to_string(),
            number,
        }
    }

    /// The one spelling: an environment name (`[a-z0-9][a-z0-9-]*`), `-`, and a positive
    /// decimal number without sign or leading zeros. `prod-014`, `prod-+14` and `prod-14 ` are
    /// refused rather than read as change 14.
    pub fn parse(text: &str) -> Result<ChangeId, BadChangeId> {
        let refuse = || {
            // The id the person probably meant, when it can be told.
            let example = text
                .trim()
                .rsplit_once('-')
                .filter(|(env, _)| crate::config::environment_name_ok(env))
                .and_then(|(env, n)| {
                    let n: i64 = n.trim_start_matches('+').parse().ok()?;
                    (n > 0).then(|| format!("{env}-{n}"))
                })
                .unwrap_or_else(|| "prod-12".to_string());
            BadChangeId {
                text: text.to_string(),
                example,
            }
        };
        let (env, n) = text.rsplit_once('-').ok_or_else(refuse)?;
        let canonical = n.starts_with(|c: char| matches!(c, '1'..='9'))
            && n.bytes().all(|b| b.is_ascii_digit());
        if !canonical || !crate::config::environment_name_ok(env) {
            return Err(refuse());
        }
        let number = n.parse().map_err(|_| refuse())?;
        Ok(ChangeId {
            environment: env.to_string(),
            number,
        })
    }
}

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.environment, self.number)
    }
}

/// A change's stored status; approval is computed from its approvals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Open,
    Rejected,
    Cancelled,
    Applied,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
            Status::Applied => "applied",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        [
            Status::Open,
            Status::Rejected,
            Status::Cancelled,
            Status::Applied,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub approver: String,
    pub approved_at: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub id: String,
    pub environment: String,
    pub state: String,
    pub title: String,
    pub author: String,
    pub created_at: String,
    pub plan_sha256: String,
    pub summary: PlanSummary,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub status: Status,
    pub approvals: Vec<Approval>,
    /// Approvals the environment requires.
    pub required: u32,
    /// `approved`, `pending`, `expired`, or the status: what [`Change::at`] found, at the
    /// time the change is shown (empty as the store reads it).
    pub readiness: String,
    pub closed_at: Option<String>,
    pub closed_by: Option<String>,
    pub reason: Option<String>,
    pub applied_version: Option<i64>,
    /// The plan's revision: 1 as proposed, moved on by each `change update`, which dismisses
    /// the approvals and the attestation of the revision before.
    #[serde(default = "first_revision")]
    pub revision: i64,
    /// The effect of the plan, fingerprinted under the server's plan key (`None` for a change
    /// proposed before plans were fingerprinted). Digests only; not part of what is shown.
    #[serde(skip)]
    pub fingerprint: Option<Fingerprint>,
    /// The pipeline identity that attested it applies this revision's plan, when one has.
    #[serde(default)]
    pub attestation: Option<Attestation>,
    /// Resource addresses written under the change beyond its plan: when any, the change
    /// diverged from what was approved.
    #[serde(default)]
    pub diverged: Vec<String>,
}

fn first_revision() -> i64 {
    1
}

/// A pipeline's word, checked by the server against the approved plan's fingerprint, that the
/// saved plan it will apply has the approved effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    pub principal: String,
    /// The branch and OIDC subject its credentials proved.
    pub branch: Option<String>,
    pub subject: Option<String>,
    pub at: String,
}

impl Attestation {
    /// Whether `caller` is the very identity that attested (principal, branch, OIDC subject):
    /// only it may apply on the strength of its attestation.
    pub fn made_by(&self, caller: &Caller) -> bool {
        caller.is(
            &self.principal,
            self.branch.as_deref(),
            self.subject.as_deref(),
        )
    }

    pub fn describe(&self) -> String {
        principal::describe_proved(&self.principal, self.branch.as_deref())
    }
}

/// `<environment>-bg<number>`, e.g. `prod-bg3`: a break-glass grant's id.
pub fn breakglass_id(environment: &str, number: i64) -> String {
    format!("{environment}-bg{number}")
}

/// The environment and number of the break-glass id `text`, when it is one.
pub fn parse_breakglass_id(text: &str) -> Option<(&str, i64)> {
    let (environment, n) = text.rsplit_once("-bg")?;
    Some((environment, n.parse().ok()?))
}

/// An open break-glass grant, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakglassGrant {
    /// `<environment>-bg<number>`, e.g. `prod-bg3`.
    pub id: String,
    pub environment: String,
    pub principal: String,
    pub reason: String,
    pub opened_at: String,
    pub expires_at: String,
}

/// What `GET /v1/changes` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Listing {
    pub changes: Vec<Change>,
    pub breakglass: Vec<BreakglassGrant>,
}

/// Whether a change may be applied now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Approved,
    Pending { have: usize, need: u32 },
    Expired { at: String },
    Closed(Status),
}

impl Readiness {
    pub fn label(&self) -> &'static str {
        match self {
            Readiness::Approved => "approved",
            Readiness::Pending { .. } => "pending",
            Readiness::Expired { .. } => "expired",
            Readiness::Closed(s) => s.as_str(),
        }
    }
}

impl Change {
    /// The change as shown at `now`, its readiness filled in.
    pub fn at(mut self, now: DateTime<Utc>) -> Change {
        self.readiness = self.readiness(now).label().to_string();
        self
    }

    pub fn readiness(&self, now: DateTime<Utc>) -> Readiness {
        if self.status != Status::Open {
            return Readiness::Closed(self.status);
        }
        // Stored times are in one form whose text order is time order.
        let now = crate::time::Timestamp::from(now).stored();
        let valid = self.approvals.iter().filter(|a| a.expires_at > now).count();
        if valid >= self.required as usize {
            Readiness::Approved
        } else if self.approvals.len() >= self.required as usize {
            let mut ends: Vec<&String> = self.approvals.iter().map(|a| &a.expires_at).collect();
            ends.sort();
            Readiness::Expired {
                at: ends.last().map(|s| s.to_string()).unwrap_or_default(),
            }
        } else {
            Readiness::Pending {
                have: valid,
                need: self.required,
            }
        }
    }

    /// Why this change cannot be applied to `environment`/`state` now, if it cannot.
    pub fn unusable(&self, environment: &str, state: &str, now: DateTime<Utc>) -> Option<String> {
        let id = &self.id;
        if self.environment != environment {
            return Some(format!(
                "change {id} is for environment {}, not {environment}",
                self.environment
            ));
        }
        if self.state != state {
            return Some(format!(
                "change {id} is for state {}, not {state}",
                self.state
            ));
        }
        match self.readiness(now) {
            Readiness::Approved => None,
            Readiness::Pending { have, need } => Some(format!(
                "change {id} is not approved yet ({have} of {need} approvals): ask an approver to run `bulkhead change approve {id}`"
            )),
            Readiness::Expired { at } => Some(format!(
                "change {id}'s approvals expired at {at}: ask for a fresh approval"
            )),
            Readiness::Closed(Status::Applied) => Some(format!(
                "change {id} was already applied{}: a change is used once; create a new one",
                self.applied_version
                    .map(|v| format!(" (version {v})"))
                    .unwrap_or_default()
            )),
            Readiness::Closed(status) => Some(format!(
                "change {id} was {}: create a new one",
                status.as_str()
            )),
        }
    }
}

/// The step a write to a protected environment still misses when it names no change.
pub fn no_change_named(environment: &str) -> String {
    format!(
        "no change request named: add ?change=ID to the backend address (approved changes: `bulkhead change list --env {environment}`)"
    )
}

/// Whether the change named `text` (`change`: as found in the environment's store) lets a
/// write to `state` go ahead for `caller` (its verified branch, and, where the environment
/// binds applies, its verified commit and its attestation): the change's number, or the
/// missing step in words. The server's refusals and `bulkhead policy explain` both come from
/// here.
pub fn check_grant(
    env: &Environment,
    state: &str,
    text: &str,
    change: Option<&Change>,
    caller: &Caller,
    now: DateTime<Utc>,
) -> Result<i64, String> {
    let branch = caller.branch.as_deref();
    let id = ChangeId::parse(text).map_err(|e| e.to_string())?;
    if id.environment != env.name {
        return Err(format!(
            "change {text} is for environment {}, not {}",
            id.environment, env.name
        ));
    }
    let change = change.ok_or_else(|| format!("there is no change {text}"))?;
    if let Some(problem) = change.unusable(&env.name, state, now) {
        return Err(problem);
    }
    if let Some(pipeline) = env.pipeline.as_ref().filter(|p| !p.branches.is_empty()) {
        let allowed = pipeline.branches.join(", ");
        match branch {
            None => return Err(format!(
                "{} is applied only from branch {allowed}, and these credentials prove no branch: the pipeline must authenticate with its CI provider's OIDC token",
                env.name
            )),
            Some(branch) if !pipeline.branches.iter().any(|b| b == branch) => {
                return Err(format!(
                    "branch {branch} may not apply {} (allowed: {allowed})",
                    env.name
                ))
            }
            Some(_) => {}
        }
    }
    let binding = env.binding();
    if binding.commit {
        check_commit(env, change, caller)?;
    }
    if binding.plan {
        check_attested(change, caller)?;
    }
    Ok(id.number)
}

/// Commit binding: the commit the pipeline's OIDC token proves is the one the change was
/// planned from.
fn check_commit(env: &Environment, change: &Change, caller: &Caller) -> Result<(), String> {
    let id = &change.id;
    let redo = |sha: &str| {
        format!("re-plan from {sha}, replace the change's plan with `bulkhead change update {id} --plan plan.json --commit {sha}` and have it approved again")
    };
    let Some(running) = caller.commit.as_deref() else {
        return Err(format!(
            "{} binds each apply to the commit its change was planned from, and these credentials prove no commit: the pipeline must authenticate with its CI provider's OIDC token, whose `sha` claim names the commit it runs",
            env.name
        ));
    };
    match change.commit.as_deref() {
        None => Err(format!(
            "change {id} names no commit, and {} binds each apply to the commit its plan was made from: {}",
            env.name,
            redo(running)
        )),
        Some(planned) if planned.eq_ignore_ascii_case(running) => Ok(()),
        Some(planned) => Err(format!(
            "change {id} was planned from commit {planned} (as its author claims), and this pipeline runs commit {running}: what was approved is not what would be applied; {}",
            redo(running)
        )),
    }
}

/// Plan binding: the caller itself attested, with its own saved plan, that it applies the
/// approved plan's effect.
fn check_attested(change: &Change, caller: &Caller) -> Result<(), String> {
    let id = &change.id;
    let how = format!("run `terraform show -json tfplan > plan.json && bulkhead change attest {id} --plan plan.json` with these same credentials, then `terraform apply tfplan`");
    match &change.attestation {
        None => Err(format!(
            "change {id} binds its apply to the approved plan, and no pipeline has attested that it applies that plan: {how}"
        )),
        Some(a) if a.made_by(caller) => Ok(()),
        Some(a) => {
            let mut theirs = a.describe();
            let mut mine =
                principal::describe_proved(&caller.principal.to_string(), caller.branch.as_deref());
            // Told apart by their OIDC subjects alone: say so.
            if theirs == mine {
                let subject = |s: Option<&str>| format!(", OIDC subject {}", s.unwrap_or("none"));
                theirs.push_str(&subject(a.subject.as_deref()));
                mine.push_str(&subject(caller.subject.as_deref()));
            }
            Err(format!(
                "change {id}'s plan was attested by {theirs}, and these credentials are {mine}: only the identity that attested may apply; {how}"
            ))
        }
    }
}

/// The addresses of `touched` (resource instances a write added, changed or removed) that
/// `change`'s plan does not change: what the write did beyond what was approved. Data sources
/// are read on every run and are no change.
pub fn beyond_plan<'a>(
    change: &Change,
    touched: impl IntoIterator<Item = &'a String>,
) -> Vec<String> {
    let s = &change.summary;
    let planned: std::collections::HashSet<&String> =
        [&s.add, &s.change, &s.replace, &s.destroy, &s.state_only]
            .into_iter()
            .flatten()
            .collect();
    touched
        .into_iter()
        .filter(|a| !is_data_source(a) && !planned.contains(a))
        .cloned()
        .collect()
}

/// Whether an instance address is a data source's: `data.x.y`, `module.m["k"].data.x.y`.
fn is_data_source(address: &str) -> bool {
    let mut rest = address;
    loop {
        if rest.starts_with("data.") {
            return true;
        }
        let Some(after) = rest.strip_prefix("module.") else {
            return false;
        };
        // The module's name, then its key if it has one, then the dot before the next step.
        let name_end = after.find(['.', '[']).unwrap_or(after.len());
        let mut next = &after[name_end..];
        if next.starts_with('[') {
            // A key in quotes may hold `].` itself: its end is the closing `"]`.
            let close = if let Some(key) = next.strip_prefix("[\"") {
                key.find("\"]").map(|i| i + 4)
            } else {
                next.find(']').map(|i| i + 1)
            };
            match close {
                Some(end) => next = &next[end..],
                None => return false,
            }
        }
        match next.strip_prefix('.') {
            Some(n) => rest = n,
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(approvals: &[&str], required: u32) -> Change {
        Change {
            id: "prod-1".into(),
            environment: "prod".into(),
            state: "net".into(),
            title: String::new(),
            author: "user:alice".into(),
            created_at: String::new(),
            plan_sha256: String::new(),
            summary: PlanSummary::default(),
            branch: None,
            commit: None,
            status: Status::Open,
            approvals: approvals
                .iter()
                .enumerate()
                .map(|(i, exp)| Approval {
                    approver: format!("user:{i}"),
                    approved_at: String::new(),
                    expires_at: exp.to_string(),
                })
                .collect(),
            required,
            readiness: String::new(),
            closed_at: None,
            closed_by: None,
            reason: None,
            applied_version: None,
            revision: 1,
            fingerprint: None,
            attestation: None,
            diverged: Vec::new(),
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-06-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn what_a_write_did_beyond_its_plan_is_named_data_sources_aside() {
        let mut c = change(&[], 1);
        c.summary.add = vec!["terraform_data.a".into()];
        c.summary.destroy = vec!["module.m[\"x.y\"].aws_s3_bucket.b".into()];
        let touched: Vec<String> = [
            "terraform_data.a",
            "terraform_data.extra",
            "module.m[\"x.y\"].aws_s3_bucket.b",
            "data.aws_caller_identity.me",
            "module.net.data.aws_ami.x",
            "module.m[\"x].y\"].data.aws_ami.x",
            "module.m[0].aws_vpc.v",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            beyond_plan(&c, &touched),
            vec!["terraform_data.extra", "module.m[0].aws_vpc.v"]
        );
    }

    #[test]
    fn ids() {
        let id = ChangeId::parse("prod-eu-12").unwrap();
        assert_eq!((id.environment.as_str(), id.number), ("prod-eu", 12));
        assert_eq!(id.to_string(), "prod-eu-12");
        assert_eq!(ChangeId::parse("prod-14").unwrap().number, 14);
        assert_eq!(
            ChangeId::parse("p-9223372036854775807").unwrap().number,
            i64::MAX
        );
    }

    #[test]
    fn a_change_id_has_one_spelling() {
        for text in [
            "prod",
            "-1",
            "prod-0",
            "prod-014",
            "prod-+14",
            "prod-14 ",
            " prod-14",
            "prod- 14",
            "prod-14\n",
            "Prod-14",
            "prod-1_4",
            "prod-١٤",
            "prod-0x0e",
            "prod-1e1",
            "prod-9223372036854775808",
            "",
        ] {
            let refused = ChangeId::parse(text).expect_err(text).to_string();
            assert!(
                refused.contains("write ENVIRONMENT-NUMBER")
                    && refused.contains(&format!("`{text}`")),
                "{refused}"
            );
        }
        for (alias, meant) in [
            ("prod-014", "prod-14"),
            ("prod-+14", "prod-14"),
            ("prod-14 ", "prod-14"),
        ] {
            let refused = ChangeId::parse(alias).unwrap_err().to_string();
            assert!(refused.ends_with(&format!("e.g. {meant}")), "{refused}");
        }
    }

    #[test]
    fn readiness_counts_unexpired_approvals() {
        let later = "2026-06-02T00:00:00.000000Z";
        let earlier = "2026-06-01T00:00:00.000000Z";
        assert_eq!(change(&[later], 1).readiness(now()), Readiness::Approved);
        assert_eq!(
            change(&[later], 2).readiness(now()),
            Readiness::Pending { have: 1, need: 2 }
        );
        assert!(matches!(
            change(&[earlier], 1).readiness(now()),
            Readiness::Expired { .. }
        ));
        let mut applied = change(&[later], 1);
        applied.status = Status::Applied;
        assert!(applied
            .unusable("prod", "net", now())
            .unwrap()
            .contains("already applied"));
        assert!(change(&[later], 1)
            .unusable("dev", "net", now())
            .unwrap()
            .contains("for environment prod"));
        assert!(change(&[later], 1)
            .unusable("prod", "db", now())
            .unwrap()
            .contains("for state net"));
        assert_eq!(change(&[later], 1).unusable("prod", "net", now()), None);
    }
}
