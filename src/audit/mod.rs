//! The audit log: one append-only, chained record per request, allowed or refused.
//!
//! Each record's MAC (HMAC-SHA256 under the chain's key, [`key`], which lives outside the
//! database) covers its position, the previous record's MAC and the record itself, and the
//! chain's head (newest position and MAC) is kept beside it; so an edited, deleted, reordered
//! or re-hashed record breaks verification, and signed [`checkpoint`]s of the head kept outside
//! the database show a cut tail or an older copy of the database. Chains begun before records
//! were keyed start with a part linked by plain SHA-256, sealed once at start ([`Seal`]).
//!
//! Queries find records by their fields through the audit index, a table kept beside the
//! chain and brought up to date every [`INDEX_EVERY`] records, and read the few records past
//! it from the chain. The hashes do not cover it, so [`verify_fields`] checks it.
//!
//! Everything here is pure: the chain functions ([`link`], [`chain_rows`], [`verify_chain`]),
//! the key, checkpoints and verification work on records handed to them. Reading and writing
//! the tables is the store's ([`crate::store::audit`]), which appends a record in the
//! caller's transaction, so a state write and its record commit together or not at all.

pub mod checkpoint;
pub mod key;
pub mod verify;

use hmac::Mac;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use key::{AuditKey, ChainKey, PlanKey};

/// The hash before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The request did what it asked.
    Allow,
    /// Refused: credentials, policy, a held lock, a write rule.
    Deny,
    /// The server failed.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Error => "error",
        }
    }

    /// A decision as filters name it: `allow`, `deny` or `error`.
    pub fn parse(text: &str) -> Option<Outcome> {
        [Outcome::Allow, Outcome::Deny, Outcome::Error]
            .into_iter()
            .find(|o| o.as_str() == text)
    }
}

/// One request, as recorded. Never holds a token or state content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub time: String,
    pub principal: Option<String>,
    pub source: Option<String>,
    pub user_agent: Option<String>,
    pub environment: Option<String>,
    pub state: Option<String>,
    /// `state:write`, `token:create`, ...
    pub action: String,
    pub decision: Outcome,
    /// The policies that decided, or `default deny`.
    pub policy: Option<String>,
    /// Why it was refused, or what was notable about it.
    pub reason: Option<String>,
    pub status: Option<u16>,
    pub lock_id: Option<String>,
    pub version: Option<i64>,
    /// Written past a lineage or serial check with `state:force-write`.
    #[serde(default)]
    pub forced: bool,
    /// The change request the request named or acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// The break-glass grant the request was allowed under: loudly recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breakglass: Option<String>,
    /// The branch a verified OIDC token proved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The SHA-256 of the state version the request wrote, so that the chain vouches for the
    /// content too (filled in by the store when the version and the record commit together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A change the request used up: it was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
    /// A write under a change touched resources beyond its approved plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged: Option<Diverged>,
    /// Why a request on a state was refused, as the verdict tells refusals apart: what a
    /// notification of a refused write needs, without reading the sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refused>,
    /// Whose lock a force-unlock released (a force-unlock that found none held has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<String>,
    /// The signals a write or a lock's release raised ([`crate::drift::signals`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<Raised>,
    /// What a drift report found: the first drifted addresses, and how many in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Found>,
    /// The connection's peer, when it is a trusted proxy and `source` the client it
    /// forwarded for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The verified client certificate the connection presented: its subject, and its
    /// alternative names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// A signal raised by a request, as its record names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Raised {
    /// Its number in the environment (`bulkhead drift ack --signal N`).
    pub id: i64,
    pub kind: String,
    pub severity: String,
    pub evidence: String,
}

/// The drifted resource addresses a report named: the first [`Found::SHOWN`], and how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    pub addresses: Vec<String>,
    pub count: usize,
    /// Drift the report before did not name: what owners are told of.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub new: bool,
}

impl Found {
    /// The most addresses a record names; the rest are counted.
    pub const SHOWN: usize = 20;

    pub fn of<'a>(addresses: impl IntoIterator<Item = &'a str>, count: usize, new: bool) -> Found {
        Found {
            addresses: addresses
                .into_iter()
                .take(Found::SHOWN)
                .map(|a| cap(a, TEXT_CAP).into_owned())
                .collect(),
            count,
            new,
        }
    }
}

/// A change used up, and the version that used it up (written by the request, or, at an
/// unlock, written earlier under the lock released).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub change: String,
    pub version: i64,
}

/// The resource addresses a write under `change` touched beyond its plan: the first
/// [`Diverged::SHOWN`], and how many in all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diverged {
    pub change: String,
    pub addresses: Vec<String>,
    pub count: usize,
}

impl Diverged {
    /// The most addresses a record names; the rest are counted.
    pub const SHOWN: usize = 20;

    pub fn of(change: &str, beyond: &[String]) -> Diverged {
        Diverged {
            change: change.to_string(),
            addresses: beyond.iter().take(Diverged::SHOWN).cloned().collect(),
            count: beyond.len(),
        }
    }
}

/// Why a request on a state was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Refused {
    /// The caller lacks the right, or (in a protected environment) the grant: an approved
    /// change, a break-glass.
    Authority,
    /// Someone else's lock holds the state.
    Held,
    /// It conflicts with the state as it is: a rule of its content, a lock no longer held.
    Conflict,
}

impl Record {
    pub fn new(action: impl Into<String>) -> Record {
        Record {
            time: crate::time::Clock::system().now().stored(),
            principal: None,
            source: None,
            user_agent: None,
            environment: None,
            state: None,
            action: action.into(),
            decision: Outcome::Deny,
            policy: None,
            reason: None,
            status: None,
            lock_id: None,
            version: None,
            forced: false,
            change: None,
            breakglass: None,
            branch: None,
            sha256: None,
            applied: None,
            diverged: None,
            refused: None,
            released: None,
            signals: Vec::new(),
            drift: None,
            peer: None,
            certificate: None,
        }
    }
}

/// The most bytes a text field of a record keeps of what a request sent (a User-Agent, a lock
/// ID, a change id as named); the rest is cut, with a marker saying how long it was, so that
/// nobody can fill an append-only log with a few large requests.
pub const TEXT_CAP: usize = 1024;
/// The most bytes of a record's `reason` and `policy`, sentences that may quote a request.
pub const SENTENCE_CAP: usize = 4096;

/// `text`, or its first `limit` bytes (cut at a character) and `…(truncated, N bytes)`.
pub fn cap(text: &str, limit: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= limit {
        return text.into();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…(truncated, {} bytes)", &text[..end], text.len()).into()
}

impl Record {
    /// The record as it is written: every text field within [`TEXT_CAP`] or [`SENTENCE_CAP`].
    /// The one place records are capped; every append goes through it.
    pub fn capped(&self) -> std::borrow::Cow<'_, Record> {
        fn field(value: &mut Option<String>, limit: usize) {
            if let Some(text) = value {
                if text.len() > limit {
                    *text = cap(text, limit).into_owned();
                }
            }
        }
        let long = |v: &Option<String>, limit: usize| v.as_ref().is_some_and(|t| t.len() > limit);
        let texts = [
            &self.principal,
            &self.source,
            &self.user_agent,
            &self.environment,
            &self.state,
            &self.lock_id,
            &self.change,
            &self.breakglass,
            &self.branch,
            &self.released,
            &self.peer,
            &self.certificate,
            &self.applied.as_ref().map(|a| a.change.clone()),
            &self.diverged.as_ref().map(|d| d.change.clone()),
        ];
        let long_address = self.diverged.as_ref().is_some_and(|d| {
            d.addresses.len() > Diverged::SHOWN || d.addresses.iter().any(|a| a.len() > TEXT_CAP)
        });
        // A request raises at most one signal of each kind, whose evidence is capped where it
        // is made; capped here again all the same, as every text of a record is.
        let long_signal = self.signals.len() > crate::drift::Kind::ALL.len()
            || self.signals.iter().any(|s| s.evidence.len() > TEXT_CAP);
        let long_drift = self.drift.as_ref().is_some_and(|d| {
            d.addresses.len() > Found::SHOWN || d.addresses.iter().any(|a| a.len() > TEXT_CAP)
        });
        if !texts.iter().any(|v| long(v, TEXT_CAP))
            && !long_address
            && !long_signal
            && !long_drift
            && !long(&self.reason, SENTENCE_CAP)
            && !long(&self.policy, SENTENCE_CAP)
            && self.action.len() <= TEXT_CAP
        {
            return std::borrow::Cow::Borrowed(self);
        }
        let mut r = self.clone();
        for value in [
            &mut r.principal,
            &mut r.source,
            &mut r.user_agent,
            &mut r.environment,
            &mut r.state,
            &mut r.lock_id,
            &mut r.change,
            &mut r.breakglass,
            &mut r.branch,
            &mut r.released,
            &mut r.peer,
            &mut r.certificate,
        ] {
            field(value, TEXT_CAP);
        }
        if let Some(a) = &mut r.applied {
            a.change = cap(&a.change, TEXT_CAP).into_owned();
        }
        if let Some(d) = &mut r.diverged {
            d.change = cap(&d.change, TEXT_CAP).into_owned();
            d.addresses.truncate(Diverged::SHOWN);
            for a in &mut d.addresses {
                if a.len() > TEXT_CAP {
                    *a = cap(a, TEXT_CAP).into_owned();
                }
            }
        }
        r.signals.truncate(crate::drift::Kind::ALL.len());
        for s in &mut r.signals {
            s.evidence = cap(&s.evidence, TEXT_CAP).into_owned();
        }
        if let Some(d) = &mut r.drift {
            d.addresses.truncate(Found::SHOWN);
            for a in &mut d.addresses {
                *a = cap(a, TEXT_CAP).into_owned();
            }
        }
        field(&mut r.reason, SENTENCE_CAP);
        field(&mut r.policy, SENTENCE_CAP);
        if r.action.len() > TEXT_CAP {
            r.action = cap(&r.action, TEXT_CAP).into_owned();
        }
        std::borrow::Cow::Owned(r)
    }
}

/// The MAC of the record at `seq`, chained to `prev`, under the chain's key.
pub fn link(key: &ChainKey, seq: i64, prev: &str, record_json: &str) -> String {
    let mut h = key.start();
    h.update(seq.to_string().as_bytes());
    h.update(b"\n");
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(record_json.as_bytes());
    hex::encode(h.finalize().into_bytes())
}

/// The hash of a record written before records were keyed: the same input, plain SHA-256,
/// which anyone can compute. Only the sealed part of a chain ([`Seal`]) is linked so.
pub fn legacy_link(seq: i64, prev: &str, record_json: &str) -> String {
    let mut h = Sha256::new();
    h.update(seq.to_string().as_bytes());
    h.update(b"\n");
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(record_json.as_bytes());
    hex::encode(h.finalize())
}

/// Where the unkeyed part of a chain begun before records were keyed ends: records up to
/// `seq` are linked with [`legacy_link`], the rest with [`link`]. Stored beside the chain, and
/// signed ([`seal_mac`]) once the server has verified the unkeyed part, at its first start
/// with a key; an unsigned seal is one not yet verified.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Seal {
    pub seq: i64,
    pub hash: String,
    pub mac: Option<String>,
}

/// The signature of a seal: moving where the keyed part starts needs the key.
pub fn seal_mac(key: &ChainKey, seq: i64, hash: &str) -> String {
    let mut h = key.start();
    h.update(format!("bulkhead audit seal\n{seq}\n{hash}").as_bytes());
    hex::encode(h.finalize().into_bytes())
}

/// A stored record with its chain fields.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stored {
    pub seq: i64,
    pub record: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Where and how a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {seq}: {problem}")]
pub struct Broken {
    pub seq: i64,
    pub problem: String,
}

/// Verifies rows in order against the head, under the chain's key, the part before `seal`
/// (if any) as plain hashes; returns how many records are intact.
pub fn verify_chain(
    key: &ChainKey,
    rows: &[Stored],
    head: Option<(i64, String)>,
    seal: Option<&Seal>,
) -> Result<usize, Broken> {
    let broken = |seq: i64, problem: &str| Broken {
        seq,
        problem: problem.to_string(),
    };
    let sealed = match seal {
        None => None,
        Some(Seal { seq, mac: None, .. }) => {
            return Err(broken(
                *seq,
                "the records up to here were written before records were keyed and are not sealed yet: start `bulkhead serve` once, which verifies and seals them",
            ))
        }
        Some(Seal {
            seq,
            hash,
            mac: Some(mac),
        }) => {
            if *mac != seal_mac(key, *seq, hash) {
                return Err(broken(
                    *seq,
                    "the mark where keyed records start was edited or forged (it needs the audit key): the records before it could have been rewritten",
                ));
            }
            Some((*seq, hash.as_str()))
        }
    };
    let unkeyed_through = sealed.map_or(0, |(seq, _)| seq);
    let mut prev = GENESIS;
    for (i, row) in rows.iter().enumerate() {
        let expected_seq = i as i64 + 1;
        if row.seq != expected_seq {
            return Err(Broken {
                seq: expected_seq,
                problem: format!(
                    "missing (the next record is {}): records were deleted",
                    row.seq
                ),
            });
        }
        if row.prev_hash != prev {
            return Err(broken(
                row.seq,
                "does not follow the record before it: records were deleted or reordered",
            ));
        }
        if row.seq > unkeyed_through {
            if link(key, row.seq, &row.prev_hash, &row.record) != row.hash {
                let plain = legacy_link(row.seq, &row.prev_hash, &row.record) == row.hash;
                return Err(broken(
                    row.seq,
                    if plain {
                        "it carries a plain hash, not a MAC under the audit key: it was rewritten by someone without the key, or this database is a copy from before records were keyed"
                    } else {
                        "its MAC does not match its content: the record was edited, or the chain was re-hashed without the audit key (or this is another chain's database)"
                    },
                ));
            }
        } else if legacy_link(row.seq, &row.prev_hash, &row.record) != row.hash {
            return Err(broken(
                row.seq,
                "its content does not match its hash: the record was edited after the unkeyed part of the chain was sealed",
            ));
        }
        if sealed.is_some_and(|(seq, hash)| seq == row.seq && hash != row.hash) {
            return Err(broken(
                row.seq,
                "it is not the record the chain was sealed at: the unkeyed part was replaced",
            ));
        }
        prev = &row.hash;
    }
    if unkeyed_through > rows.len() as i64 {
        return Err(Broken {
            seq: rows.len() as i64 + 1,
            problem: format!(
                "the chain was sealed at record {unkeyed_through} but has only {}: records were deleted",
                rows.len()
            ),
        });
    }
    let last = rows.last().map(|r| (r.seq, r.hash.clone()));
    match (head, last) {
        (None, None) => Ok(0),
        (Some(head), Some(last)) if head == last => Ok(rows.len()),
        (Some((seq, _)), _) => Err(Broken {
            seq,
            problem: format!(
                "the chain's head says record {seq} is the newest, but the log ends at {}: records were cut off or replaced",
                rows.len()
            ),
        }),
        (None, Some(_)) => Err(broken(1, "the chain's head is missing: it was removed")),
    }
}

/// A chain's newest record: its position and hash (0 and [`GENESIS`] before the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

impl Head {
    /// The head of a chain before its first record.
    pub fn genesis() -> Head {
        Head {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

/// The stored form of `records` chained from the start under `key`: what tests of
/// verification build chains with.
#[cfg(test)]
pub(crate) fn chained(key: &ChainKey, records: &[Record]) -> Vec<Stored> {
    let (rows, _) = chain_rows(key, &Head::genesis(), records).unwrap();
    rows.into_iter().map(Stored::from).collect()
}

impl From<Row> for Stored {
    fn from(row: Row) -> Stored {
        Stored {
            seq: row.seq,
            record: row.record,
            prev_hash: row.prev_hash,
            hash: row.hash,
        }
    }
}

/// One row of the audit table, as the store inserts it: the record and its place in
/// the chain (what verification covers), and the record's fields that queries filter on, as
/// columns of their own, so that neither queries nor indexing parse records.
pub struct Row {
    pub seq: i64,
    pub record: String,
    pub prev_hash: String,
    pub hash: String,
    pub fields: Fields,
}

/// A record's fields that audit queries filter on, as columns of the chain and of the audit
/// index.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Fields {
    pub state: Option<String>,
    pub principal: Option<String>,
    pub change: Option<String>,
    pub action: Option<String>,
    pub decision: Option<String>,
    pub at: Option<String>,
}

impl Fields {
    pub fn of(record: &Record) -> Fields {
        Fields {
            state: record.state.clone(),
            principal: record.principal.clone(),
            change: record.change.clone(),
            action: Some(record.action.clone()),
            decision: Some(record.decision.as_str().to_string()),
            at: Some(record.time.clone()),
        }
    }
}

/// The rows that append `records` in order after `head`, and the head they leave.
pub fn chain_rows(
    key: &ChainKey,
    head: &Head,
    records: &[impl std::borrow::Borrow<Record>],
) -> Result<(Vec<Row>, Head), serde_json::Error> {
    let (mut seq, mut prev) = (head.seq, head.hash.clone());
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        let record = record.borrow().capped();
        let record = record.as_ref();
        let json = serde_json::to_string(record)?;
        seq += 1;
        let hash = link(key, seq, &prev, &json);
        rows.push(Row {
            seq,
            record: json,
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
            fields: Fields::of(record),
        });
    }
    Ok((rows, Head { seq, hash: prev }))
}

/// Which records of a chain to read: every field set must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub state: Option<String>,
    pub principal: Option<String>,
    pub change: Option<String>,
    pub action: Option<String>,
    pub decision: Option<String>,
    /// At or after this time (RFC 3339, as records store it).
    pub since: Option<String>,
    /// Before this time.
    pub until: Option<String>,
    /// Only records after this position.
    pub after: i64,
    /// Only records up to this position.
    pub through: Option<i64>,
    /// Only the newest this many.
    pub last: Option<i64>,
    /// Only the oldest this many (after `after`): a page. `last` wins when both are given.
    pub first: Option<i64>,
}

/// A page of the audit log, as `GET /v1/audit` answers it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Page {
    /// Oldest first, across the chains read.
    pub records: Vec<Record>,
    /// Where the next page starts (`chain:position,...`): pass it back as `?after=`.
    pub cursor: String,
    /// Whether more records matched than this page holds.
    pub more: bool,
}

/// How often the audit index is brought up to date: whoever appends a record at a multiple of
/// this position indexes every record not yet indexed.
pub const INDEX_EVERY: i64 = 256;

/// Whether appending the records after position `before` up to `after` should bring the index
/// up to date.
pub fn index_due(before: i64, after: i64) -> bool {
    before.div_euclid(INDEX_EVERY) != after.div_euclid(INDEX_EVERY)
}

/// What opening a chain at start found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Its newest record matches the key (or it has none).
    Intact,
    /// Its unkeyed part, this many records, was verified and sealed now.
    Sealed(i64),
}

/// Why a chain cannot be appended to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainProblem {
    #[error("its records from before records were keyed do not verify, so they cannot be sealed: {0} (run `bulkhead audit verify`; restore the database from a backup, or move it aside to start a new chain)")]
    Unsealable(Broken),
    #[error("it asks for records up to {0} to be sealed as written before records were keyed, but this server has checkpointed the chain already, so it was keyed: the database was rewritten (run `bulkhead audit verify`; restore the database from a backup)")]
    SealAfterKeyed(i64),
    #[error("its newest record (or its seal) was not written with this audit key: the key was replaced or lost (restore it: {KEY_VAR} or server {{ audit_key_file }}), or the record was edited (run `bulkhead audit verify`)", KEY_VAR = key::KEY_VAR)]
    WrongKey,
}

/// Verifies that audit queries find each record of an intact chain by its own fields (the
/// index and the chain's columns are not covered by the hashes): an edited index could hide
/// records from queries.
pub fn verify_fields(rows: &[Stored], found: &[(i64, Fields)]) -> Result<(), Broken> {
    let mut found = found.iter();
    for row in rows {
        let broken = |problem: &str| Broken {
            seq: row.seq,
            problem: problem.into(),
        };
        let Some((_, fields)) = found.next().filter(|(seq, _)| *seq == row.seq) else {
            return Err(broken(
                "it is missing from the audit index: audit queries would miss it",
            ));
        };
        let record: Record =
            serde_json::from_str(&row.record).map_err(|_| broken("it is not a readable record"))?;
        if *fields != Fields::of(&record) {
            return Err(broken(
                "the fields audit queries find it by were edited: they would miss it, or find it where it does not belong",
            ));
        }
    }
    match found.next() {
        Some((seq, _)) => Err(Broken {
            seq: *seq,
            problem: "the audit index has a record the chain does not".into(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_keeps_short_text_and_marks_what_it_cuts() {
        assert_eq!(cap("curl/8.5", 16), "curl/8.5");
        assert_eq!(cap("abcdef", 3), "abc…(truncated, 6 bytes)");
        // Never inside a character.
        assert_eq!(cap("ééé", 3), "é…(truncated, 6 bytes)");
    }

    #[test]
    fn records_are_capped_field_by_field_when_chained() {
        let mut record = Record::new("state:read");
        record.user_agent = Some("A".repeat(100 * 1024));
        record.lock_id = Some("L".repeat(64 * 1024));
        record.reason = Some("r".repeat(5000));
        record.source = Some("127.0.0.1".into());
        let capped = record.capped();
        let ua = capped.user_agent.as_deref().unwrap();
        assert!(
            ua.starts_with(&"A".repeat(TEXT_CAP)) && ua.ends_with("…(truncated, 102400 bytes)")
        );
        assert!(capped.lock_id.as_deref().unwrap().len() < TEXT_CAP + 32);
        assert!(capped.reason.as_deref().unwrap().len() < SENTENCE_CAP + 32);
        assert_eq!(capped.source.as_deref(), Some("127.0.0.1"));
        let (rows, _) = chain_rows(&key(), &Head::genesis(), &[record]).unwrap();
        assert!(rows[0].record.len() < 8 * 1024, "{}", rows[0].record.len());
        let short = Record::new("state:read");
        assert!(matches!(short.capped(), std::borrow::Cow::Borrowed(_)));
    }

    fn key() -> ChainKey {
        AuditKey::from_hex(&"ab".repeat(32), "test")
            .unwrap()
            .chain("prod")
    }

    /// A chain of `n` records, the first `unkeyed` of them linked as before records were keyed.
    fn chain_from(n: i64, unkeyed: i64) -> Vec<Stored> {
        let key = key();
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let record = format!("{{\"n\":{seq}}}");
                let hash = if seq <= unkeyed {
                    legacy_link(seq, &prev, &record)
                } else {
                    link(&key, seq, &prev, &record)
                };
                let row = Stored {
                    seq,
                    record,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                row
            })
            .collect()
    }

    fn chain(n: i64) -> Vec<Stored> {
        chain_from(n, 0)
    }

    fn head(rows: &[Stored]) -> Option<(i64, String)> {
        rows.last().map(|r| (r.seq, r.hash.clone()))
    }

    fn sealed_at(rows: &[Stored], seq: i64) -> Seal {
        let hash = rows[seq as usize - 1].hash.clone();
        Seal {
            seq,
            mac: Some(seal_mac(&key(), seq, &hash)),
            hash,
        }
    }

    #[test]
    fn intact_chain_verifies() {
        let rows = chain(4);
        assert_eq!(verify_chain(&key(), &rows, head(&rows), None), Ok(4));
        assert_eq!(verify_chain(&key(), &[], None, None), Ok(0));
    }

    #[test]
    fn a_chain_verifies_only_under_its_own_key() {
        let rows = chain(3);
        let other = AuditKey::from_hex(&"ab".repeat(32), "test")
            .unwrap()
            .chain("dev");
        let broken = verify_chain(&other, &rows, head(&rows), None).unwrap_err();
        assert_eq!(broken.seq, 1);
        assert!(
            broken.problem.contains("MAC does not match"),
            "{}",
            broken.problem
        );
    }

    /// What someone who can write the database but lacks the key can do: edit a record and
    /// compute every hash after it again, with plain SHA-256 or any key of their own.
    #[test]
    fn a_chain_re_hashed_without_the_key_is_found() {
        let mut rows = chain(4);
        rows[1].record = "{\"n\":99}".into();
        let mut prev = rows[0].hash.clone();
        for row in &mut rows[1..] {
            row.prev_hash = prev.clone();
            row.hash = legacy_link(row.seq, &row.prev_hash, &row.record);
            prev = row.hash.clone();
        }
        let broken = verify_chain(&key(), &rows, head(&rows), None).unwrap_err();
        assert_eq!(broken.seq, 2);
        assert!(broken.problem.contains("plain hash"), "{}", broken.problem);

        let guessed = AuditKey::from_hex(&"cd".repeat(32), "t")
            .unwrap()
            .chain("prod");
        let mut prev = rows[0].hash.clone();
        for row in &mut rows[1..] {
            row.prev_hash = prev.clone();
            row.hash = link(&guessed, row.seq, &row.prev_hash, &row.record);
            prev = row.hash.clone();
        }
        let broken = verify_chain(&key(), &rows, head(&rows), None).unwrap_err();
        assert_eq!(broken.seq, 2);
        assert!(
            broken.problem.contains("MAC does not match"),
            "{}",
            broken.problem
        );
    }

    #[test]
    fn a_sealed_unkeyed_part_verifies_and_its_seal_cannot_be_moved() {
        let rows = chain_from(5, 3);
        let seal = sealed_at(&rows, 3);
        assert_eq!(verify_chain(&key(), &rows, head(&rows), Some(&seal)), Ok(5));
        // Without the seal, the unkeyed records do not pass for keyed ones.
        let broken = verify_chain(&key(), &rows, head(&rows), None).unwrap_err();
        assert_eq!(broken.seq, 1);
        // Moving the seal forward (to rewrite keyed records as plain ones) needs the key.
        let moved = Seal {
            seq: 5,
            hash: rows[4].hash.clone(),
            mac: seal.mac.clone(),
        };
        let broken = verify_chain(&key(), &rows, head(&rows), Some(&moved)).unwrap_err();
        assert!(
            broken.problem.contains("mark where keyed records start"),
            "{}",
            broken.problem
        );
        // A seal not yet signed by a server start is reported as such.
        let pending = Seal {
            mac: None,
            ..seal.clone()
        };
        let broken = verify_chain(&key(), &rows, head(&rows), Some(&pending)).unwrap_err();
        assert!(
            broken.problem.contains("not sealed yet"),
            "{}",
            broken.problem
        );
        // An edit in the unkeyed part after sealing is still found.
        let mut edited = rows.clone();
        edited[1].record = "{\"n\":99}".into();
        assert_eq!(
            verify_chain(&key(), &edited, head(&edited), Some(&seal))
                .unwrap_err()
                .seq,
            2
        );
        // Records before the seal deleted, with the seal kept.
        let broken = verify_chain(&key(), &[], None, Some(&seal)).unwrap_err();
        assert!(
            broken.problem.contains("sealed at record 3"),
            "{}",
            broken.problem
        );
    }

    /// A chain of real records, and their fields as queries would find them.
    fn chain_with_fields(n: usize) -> (Vec<Stored>, Vec<(i64, Fields)>) {
        let records: Vec<Record> = (0..n)
            .map(|i| {
                let mut r = Record::new("state:read");
                r.state = Some(format!("s{i}"));
                r
            })
            .collect();
        let (rows, _) = chain_rows(&key(), &Head::genesis(), &records).unwrap();
        rows.into_iter()
            .map(|row| {
                let found = (row.seq, row.fields.clone());
                (Stored::from(row), found)
            })
            .unzip()
    }

    #[test]
    fn chain_rows_link_what_verification_checks() {
        let (rows, _) = chain_with_fields(3);
        assert_eq!(verify_chain(&key(), &rows, head(&rows), None), Ok(3));
    }

    #[test]
    fn what_queries_find_records_by_is_verified() {
        let (rows, found) = chain_with_fields(4);
        assert_eq!(verify_fields(&rows, &found), Ok(()));

        let mut edited = found.clone();
        edited[2].1.principal = Some("user:carol".into());
        assert_eq!(verify_fields(&rows, &edited).unwrap_err().seq, 3);

        let mut missing = found.clone();
        missing.remove(1);
        let broken = verify_fields(&rows, &missing).unwrap_err();
        assert_eq!(broken.seq, 2);
        assert!(broken.problem.contains("missing"), "{}", broken.problem);

        let mut extra = found.clone();
        extra.push((5, found[0].1.clone()));
        assert_eq!(verify_fields(&rows, &extra).unwrap_err().seq, 5);
    }

    #[test]
    fn edits_deletions_reorders_and_truncation_are_detected() {
        let rows = chain(4);
        let h = head(&rows);
        let key = key();

        let mut edited = rows.clone();
        edited[1].record = "{\"n\":99}".into();
        assert_eq!(
            verify_chain(&key, &edited, h.clone(), None)
                .unwrap_err()
                .seq,
            2
        );

        let mut deleted = rows.clone();
        deleted.remove(2);
        assert_eq!(
            verify_chain(&key, &deleted, h.clone(), None)
                .unwrap_err()
                .seq,
            3
        );

        let mut reordered = rows.clone();
        reordered.swap(1, 2);
        assert!(verify_chain(&key, &reordered, h.clone(), None).is_err());
        // Swapped back into sequence order but with their contents exchanged.
        let mut swapped = rows.clone();
        let (a, b) = (swapped[1].record.clone(), swapped[2].record.clone());
        swapped[1].record = b;
        swapped[2].record = a;
        assert_eq!(
            verify_chain(&key, &swapped, h.clone(), None)
                .unwrap_err()
                .seq,
            2
        );

        let truncated = rows[..3].to_vec();
        assert!(verify_chain(&key, &truncated, h, None).is_err());
        assert!(verify_chain(&key, &rows, None, None).is_err());
    }
}
