//! Verifying a database against its audit chain, as `bulkhead audit verify` does: the chain's
//! MACs under the key, the checkpoints written outside the database, the audit index, and then
//! everything else the database holds (changes, approvals, break-glass grants, state versions),
//! each of which must have the record that created it, with contents matching their hashes.
//!
//! The checks ([`cross_check`] and those of the chain) are pure; [`database`] asks a
//! [`Source`] (the store, read-only) for what they need, and never writes.

use std::collections::{HashMap, HashSet};
use std::fmt;

use std::future::Future;

use super::checkpoint::{self, Checkpoint};
use super::{verify_chain, verify_fields, Broken, ChainKey, Fields, Outcome, Record, Seal, Stored};

/// The first problem found in a database, and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The record it is at, when it is at one.
    pub seq: Option<i64>,
    pub problem: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "record {seq}: {}", self.problem),
            None => f.write_str(&self.problem),
        }
    }
}

impl From<Broken> for Problem {
    fn from(b: Broken) -> Problem {
        Problem {
            seq: Some(b.seq),
            problem: b.problem,
        }
    }
}

fn problem(text: impl Into<String>) -> Problem {
    Problem {
        seq: None,
        problem: text.into(),
    }
}

/// What verifying one database found.
#[derive(Debug)]
pub struct Report {
    pub records: usize,
    /// How many checkpoints of the chain were checked.
    pub checkpoints: usize,
    pub outcome: Result<(), Problem>,
}

/// What an environment's database holds besides its chain, as [`cross_check`] compares it.
#[derive(Debug, Default)]
pub struct Holdings {
    pub changes: Vec<i64>,
    /// (change number, approver).
    pub approvals: Vec<(i64, String)>,
    pub breakglass: Vec<i64>,
    /// (state, version, sha256 as stored, deleted).
    pub versions: Vec<(String, i64, String, bool)>,
}

/// What verification reads from one database, read-only. The store reads it; verification
/// only judges what it is handed.
pub trait Source {
    type Error: fmt::Display;

    /// The whole chain, oldest first, and its stored head.
    fn chain(&self) -> impl Future<Output = Result<Chain, Self::Error>> + Send;

    /// The chain's seal, if it has one; [`Outdated`] when the database was never brought up to
    /// a version that keeps seals.
    fn seal(
        &self,
    ) -> impl Future<Output = Result<Result<Option<Seal>, Outdated>, Self::Error>> + Send;

    /// Each record's fields, oldest first, as audit queries find them.
    fn fields(&self) -> impl Future<Output = Result<Vec<(i64, Fields)>, Self::Error>> + Send;

    /// What an environment's database holds besides its chain.
    fn holdings(&self) -> impl Future<Output = Result<Holdings, Self::Error>> + Send;

    /// The SHA-256 (hex) of a stored version's content, as it reads back now.
    fn content_sha256(
        &self,
        state: &str,
        version: i64,
    ) -> impl Future<Output = Result<String, Self::Error>> + Send;
}

/// A whole chain, oldest first, and its stored head (position and MAC), if it has one.
pub type Chain = (Vec<Stored>, Option<(i64, String)>);

/// A database not brought up to date by this version of bulkhead.
#[derive(Debug)]
pub struct Outdated;

/// Verifies the database of the chain `chain` (`server`, or an environment's name) under
/// `key`, against `checkpoints` (those of this chain, signed). Environments' databases are
/// cross-checked against their records too.
pub async fn database<S: Source>(
    chain: &str,
    db: &S,
    key: &ChainKey,
    checkpoints: &[Checkpoint],
    environment: bool,
) -> Result<Report, S::Error> {
    let (rows, head) = db.chain().await?;
    let mut report = Report {
        records: rows.len(),
        checkpoints: checkpoints.len(),
        outcome: Ok(()),
    };
    let Ok(seal) = db.seal().await? else {
        report.outcome = Err(problem(
            "this database was not brought up to date by this version of bulkhead: start `bulkhead serve` once, then verify again",
        ));
        return Ok(report);
    };
    if let Err(broken) = verify_chain(key, &rows, head, seal.as_ref()) {
        report.outcome = Err(broken.into());
        return Ok(report);
    }
    if let Err(broken) = checkpoint::verify(&rows, checkpoints) {
        report.outcome = Err(broken.into());
        return Ok(report);
    }
    let found = db.fields().await?;
    if let Err(broken) = verify_fields(&rows, &found) {
        report.outcome = Err(broken.into());
        return Ok(report);
    }
    if environment {
        let holdings = db.holdings().await?;
        if let Err(p) = cross_check(chain, &rows, seal.as_ref(), &holdings) {
            report.outcome = Err(p);
            return Ok(report);
        }
        if let Err(p) = contents(chain, db, &holdings.versions).await? {
            report.outcome = Err(p);
        }
    }
    Ok(report)
}

/// The number at the end of an id such as `prod-12` or `prod-bg3` of environment `env`.
fn number_in(id: &str, env: &str, infix: &str) -> Option<i64> {
    id.strip_prefix(env)?.strip_prefix(infix)?.parse().ok()
}

/// Checks that every change, approval, break-glass grant and state version of the environment
/// `env` has the allowed record that created it in its (verified) chain, and that each version's
/// hash is the one its record carries, where it carries one.
pub fn cross_check(
    env: &str,
    rows: &[Stored],
    seal: Option<&Seal>,
    holdings: &Holdings,
) -> Result<(), Problem> {
    let mut changes = HashSet::new();
    let mut approvals = HashSet::new();
    let mut breakglass = HashSet::new();
    let mut versions: HashMap<(String, i64), Option<String>> = HashMap::new();
    for row in rows {
        let record: Record = serde_json::from_str(&row.record).map_err(|_| Problem {
            seq: Some(row.seq),
            problem: "it is not a readable record".into(),
        })?;
        if record.decision != Outcome::Allow {
            continue;
        }
        let change = record
            .change
            .as_deref()
            .and_then(|c| number_in(c, env, "-"));
        match (record.action.as_str(), change) {
            ("change:create", Some(n)) => {
                changes.insert(n);
            }
            ("change:approve", Some(n)) => {
                if let Some(p) = &record.principal {
                    approvals.insert((n, p.clone()));
                }
            }
            _ => {}
        }
        if record.action == "breakglass:open" {
            if let Some(n) = record
                .breakglass
                .as_deref()
                .and_then(|b| number_in(b, env, "-bg"))
            {
                breakglass.insert(n);
            }
        }
        let writes = record.action.starts_with("state:") && record.action != "state:read";
        if let (true, Some(state), Some(version)) = (writes, &record.state, record.version) {
            let sha = versions.entry((state.clone(), version)).or_default();
            if sha.is_none() {
                *sha = record.sha256.clone();
            }
        }
    }
    let unrecorded = |what: String| {
        let sealed = seal.map_or(String::new(), |s| {
            format!(
                " (if it dates from before records were keyed, its record may predate record {}, which the chain does not hold)",
                s.seq + 1
            )
        });
        problem(format!(
            "{what} has no audit record that created it: it was written into the database directly, not through bulkhead{sealed}"
        ))
    };
    for n in &holdings.changes {
        if !changes.contains(n) {
            return Err(unrecorded(format!("change {env}-{n}")));
        }
    }
    for (n, approver) in &holdings.approvals {
        if !approvals.contains(&(*n, approver.clone())) {
            return Err(unrecorded(format!(
                "the approval of change {env}-{n} by {approver}"
            )));
        }
    }
    for n in &holdings.breakglass {
        if !breakglass.contains(n) {
            return Err(unrecorded(format!("break-glass grant {env}-bg{n}")));
        }
    }
    for (state, version, sha256, _) in &holdings.versions {
        match versions.get(&(state.clone(), *version)) {
            None => {
                return Err(unrecorded(format!(
                    "version {version} of state {state}"
                )))
            }
            Some(Some(recorded)) if recorded != sha256 => {
                return Err(problem(format!(
                    "version {version} of state {state} does not have the hash its audit record was written with: its content and hash were both replaced"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Checks each version's content against its stored SHA-256.
async fn contents<S: Source>(
    environment: &str,
    db: &S,
    versions: &[(String, i64, String, bool)],
) -> Result<Result<(), Problem>, S::Error> {
    for (state, version, sha256, deleted) in versions {
        if *deleted {
            continue;
        }
        if db.content_sha256(state, *version).await? != *sha256 {
            return Ok(Err(problem(format!(
                "the content of version {version} of state {state} in environment {environment} does not match its SHA-256: it was edited in the database"
            ))));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditKey;

    fn rows(records: &[Record]) -> Vec<Stored> {
        let key = AuditKey::from_hex(&"cd".repeat(32), "test")
            .unwrap()
            .chain("prod");
        crate::audit::chained(&key, records)
    }

    fn allowed(action: &str, f: impl FnOnce(&mut Record)) -> Record {
        let mut r = Record::new(action);
        r.decision = Outcome::Allow;
        f(&mut r);
        r
    }

    #[test]
    fn everything_held_needs_the_record_that_created_it() {
        let records = vec![
            allowed("change:create", |r| r.change = Some("prod-1".into())),
            allowed("change:approve", |r| {
                r.change = Some("prod-1".into());
                r.principal = Some("user:pat".into());
            }),
            allowed("breakglass:open", |r| {
                r.breakglass = Some("prod-bg1".into())
            }),
            allowed("state:write", |r| {
                r.state = Some("network".into());
                r.version = Some(1);
                r.sha256 = Some("aa".into());
            }),
        ];
        let chain = rows(&records);
        let held = || Holdings {
            changes: vec![1],
            approvals: vec![(1, "user:pat".into())],
            breakglass: vec![1],
            versions: vec![("network".into(), 1, "aa".into(), false)],
        };
        assert_eq!(cross_check("prod", &chain, None, &held()), Ok(()));

        let mut forged = held();
        forged.changes.push(2);
        let p = cross_check("prod", &chain, None, &forged).unwrap_err();
        assert!(
            p.problem.starts_with("change prod-2 has no audit record"),
            "{p}"
        );

        let mut forged = held();
        forged.approvals.push((1, "user:mallory".into()));
        let p = cross_check("prod", &chain, None, &forged).unwrap_err();
        assert!(
            p.problem
                .contains("approval of change prod-1 by user:mallory"),
            "{p}"
        );

        let mut forged = held();
        forged.breakglass.push(2);
        assert!(cross_check("prod", &chain, None, &forged).is_err());

        let mut forged = held();
        forged
            .versions
            .push(("network".into(), 2, "bb".into(), false));
        let p = cross_check("prod", &chain, None, &forged).unwrap_err();
        assert!(p.problem.contains("version 2 of state network"), "{p}");

        let mut replaced = held();
        replaced.versions[0].2 = "bb".into();
        let p = cross_check("prod", &chain, None, &replaced).unwrap_err();
        assert!(p.problem.contains("both replaced"), "{p}");

        // Records of another environment's ids, or refused ones, create nothing here.
        let elsewhere = rows(&[
            allowed("change:create", |r| r.change = Some("dev-1".into())),
            Record::new("change:create"),
        ]);
        let only_change = Holdings {
            changes: vec![1],
            ..Holdings::default()
        };
        assert!(cross_check("prod", &elsewhere, None, &only_change).is_err());
    }
}
