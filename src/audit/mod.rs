//! The audit log: one append-only, hash-chained record per request, allowed or refused.
//!
//! Each record's hash covers its position, the previous record's hash and the record itself,
//! and the chain's head (newest position and hash) is kept beside it; so an edited, deleted,
//! reordered or cut-off record breaks verification (a trigger keeps the head with the newest
//! record). The chain functions ([`link`], [`verify_chain`]) are pure; [`append`] writes inside
//! the caller's transaction, so a state write and its record commit together or not at all.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, AnyPool};

use crate::store::StoreError;

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
}

impl Record {
    pub fn new(action: impl Into<String>) -> Record {
        Record {
            time: crate::store::now(),
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
        }
    }
}

/// The hash of the record at `seq`, chained to `prev`.
pub fn link(seq: i64, prev: &str, record_json: &str) -> String {
    let mut h = Sha256::new();
    h.update(seq.to_string().as_bytes());
    h.update(b"\n");
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(record_json.as_bytes());
    hex::encode(h.finalize())
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

/// Verifies rows in order against the head; returns how many records are intact.
pub fn verify_chain(rows: &[Stored], head: Option<(i64, String)>) -> Result<usize, Broken> {
    let mut prev = GENESIS.to_string();
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
            return Err(Broken {
                seq: row.seq,
                problem: "does not follow the record before it: records were deleted or reordered"
                    .into(),
            });
        }
        if link(row.seq, &row.prev_hash, &row.record) != row.hash {
            return Err(Broken {
                seq: row.seq,
                problem: "its content does not match its hash: the record was edited".into(),
            });
        }
        prev = row.hash.clone();
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
        (None, Some(_)) => Err(Broken {
            seq: 1,
            problem: "the chain's head is missing: it was removed".into(),
        }),
    }
}

/// A chain's newest record: its position and hash (0 and [`GENESIS`] before the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

/// The head of the chain of the database `conn` belongs to.
pub async fn head(conn: &mut AnyConnection) -> Result<Head, StoreError> {
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(match head {
        Some((seq, hash)) => Head { seq, hash },
        None => Head {
            seq: 0,
            hash: GENESIS.to_string(),
        },
    })
}

/// Appends a record to the chain of the database `conn` belongs to, inside the caller's
/// transaction; returns its position.
pub async fn append(conn: &mut AnyConnection, record: &Record) -> Result<i64, StoreError> {
    append_all(conn, std::slice::from_ref(record)).await
}

/// Appends records in order, inside the caller's transaction; returns the position of the last.
pub async fn append_all(conn: &mut AnyConnection, records: &[Record]) -> Result<i64, StoreError> {
    let head = head(conn).await?;
    Ok(insert_after(conn, &head, records).await?.seq)
}

/// Appends records in order after `head`, in one statement however many they are, and returns
/// the new head. The table's trigger moves the stored head along. When the chain has grown
/// past `head` meanwhile, the first position is taken and the statement fails on the primary
/// key, writing nothing; so a caller that remembers the head between appends needs no read
/// of it, and cannot fork the chain.
pub async fn insert_after(
    conn: &mut AnyConnection,
    head: &Head,
    records: &[impl std::borrow::Borrow<Record>],
) -> Result<Head, StoreError> {
    let (rows, new_head) = chain_rows(head, records)?;
    if rows.is_empty() {
        return Ok(new_head);
    }
    let sql = insert_statement(rows.len());
    let mut insert = sqlx::query(&sql);
    for row in &rows {
        insert = insert
            .bind(row.seq)
            .bind(&row.record)
            .bind(&row.prev_hash)
            .bind(&row.hash);
    }
    insert.execute(&mut *conn).await?;
    Ok(new_head)
}

/// One row of the audit table, as [`insert_statement`] binds it.
pub struct Row {
    pub seq: i64,
    pub record: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The rows that append `records` in order after `head`, and the head they leave.
pub fn chain_rows(
    head: &Head,
    records: &[impl std::borrow::Borrow<Record>],
) -> Result<(Vec<Row>, Head), StoreError> {
    let (mut seq, mut prev) = (head.seq, head.hash.clone());
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        let json = serde_json::to_string(record.borrow())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        seq += 1;
        let hash = link(seq, &prev, &json);
        rows.push(Row {
            seq,
            record: json,
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
        });
    }
    Ok((rows, Head { seq, hash: prev }))
}

/// The statement that inserts `rows` rows: numbered parameters (`$1`, `$2`, ...), four per
/// row, in the order of [`Row`]'s fields.
pub fn insert_statement(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|i| {
            let n = i * 4;
            format!("(${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4)
        })
        .collect();
    format!(
        "INSERT INTO audit (seq, record, prev_hash, hash) VALUES {}",
        values.join(", ")
    )
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
}

/// The records of a chain that match, oldest first. Each field is an indexed column of the
/// audit table (generated from the record), so the newest hundred records of a chain of
/// millions are found without reading the rest.
pub async fn query(pool: &AnyPool, filter: &Filter) -> Result<Vec<Stored>, StoreError> {
    let mut conditions = vec!["seq > $1".to_string()];
    if let Some(through) = filter.through {
        conditions.push(format!("seq <= {through}"));
    }
    let mut values = Vec::new();
    for (column, op, value) in [
        ("state", "=", &filter.state),
        ("principal", "=", &filter.principal),
        ("change", "=", &filter.change),
        ("action", "=", &filter.action),
        ("decision", "=", &filter.decision),
        ("at", ">=", &filter.since),
        ("at", "<", &filter.until),
    ] {
        if let Some(value) = value {
            values.push(value.as_str());
            conditions.push(format!("{column} {op} ${}", values.len() + 1));
        }
    }
    let (order, limit) = match filter.last {
        Some(n) => ("DESC", format!(" LIMIT {}", n.max(0))),
        None => ("", String::new()),
    };
    let sql = format!(
        "SELECT seq, record, prev_hash, hash FROM audit WHERE {} ORDER BY seq {order}{limit}",
        conditions.join(" AND ")
    );
    let mut query = sqlx::query_as(&sql).bind(filter.after);
    for value in values {
        query = query.bind(value);
    }
    let mut rows: Vec<Stored> = query.fetch_all(pool).await?;
    if filter.last.is_some() {
        rows.reverse();
    }
    Ok(rows)
}

/// The position of a chain's newest record (0 when it has none).
pub async fn newest_position(pool: &AnyPool) -> Result<i64, StoreError> {
    let (seq,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM audit")
        .fetch_one(pool)
        .await?;
    Ok(seq.unwrap_or(0))
}

/// Reads a whole chain and its head.
pub async fn read_chain(
    pool: &AnyPool,
) -> Result<(Vec<Stored>, Option<(i64, String)>), StoreError> {
    let rows = sqlx::query_as("SELECT seq, record, prev_hash, hash FROM audit ORDER BY seq")
        .fetch_all(pool)
        .await?;
    let head = sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_optional(pool)
        .await?;
    Ok((rows, head))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<Stored> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let record = format!("{{\"n\":{seq}}}");
                let hash = link(seq, &prev, &record);
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

    fn head(rows: &[Stored]) -> Option<(i64, String)> {
        rows.last().map(|r| (r.seq, r.hash.clone()))
    }

    #[test]
    fn intact_chain_verifies() {
        let rows = chain(4);
        assert_eq!(verify_chain(&rows, head(&rows)), Ok(4));
        assert_eq!(verify_chain(&[], None), Ok(0));
    }

    #[test]
    fn edits_deletions_reorders_and_truncation_are_detected() {
        let rows = chain(4);
        let h = head(&rows);

        let mut edited = rows.clone();
        edited[1].record = "{\"n\":99}".into();
        assert_eq!(verify_chain(&edited, h.clone()).unwrap_err().seq, 2);

        let mut deleted = rows.clone();
        deleted.remove(2);
        assert_eq!(verify_chain(&deleted, h.clone()).unwrap_err().seq, 3);

        let mut reordered = rows.clone();
        reordered.swap(1, 2);
        assert!(verify_chain(&reordered, h.clone()).is_err());
        // Swapped back into sequence order but with their contents exchanged.
        let mut swapped = rows.clone();
        let (a, b) = (swapped[1].record.clone(), swapped[2].record.clone());
        swapped[1].record = b;
        swapped[2].record = a;
        assert_eq!(verify_chain(&swapped, h.clone()).unwrap_err().seq, 2);

        let truncated = rows[..3].to_vec();
        assert!(verify_chain(&truncated, h).is_err());
        assert!(verify_chain(&rows, None).is_err());
    }
}
