//! The audit tables: appending records to a chain, reading it back, the audit index audit
//! queries find records by, and what verification reads. Every statement on these tables is
//! here; what a record is, how the chain is linked and when it is intact is
//! [`crate::audit`]'s, which this calls and which never calls back.

use std::future::Future;

use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, AnyPool};

use super::{Database, StoreError, Stores};
use crate::audit::checkpoint::Chains;
use crate::audit::verify::{Chain, Holdings, Outdated, Source};
use crate::audit::{
    chain_rows, index_due, link, seal_mac, verify_chain, AuditKey, ChainKey, ChainProblem, Fields,
    Filter, Head, Opened, Record, Seal, Stored,
};
use crate::time::Clock;

fn unencodable(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// The fields to match, as (column, operator, value): columns of the audit index, and of the
/// chain too.
fn fields(filter: &Filter) -> impl Iterator<Item = (&'static str, &'static str, &Option<String>)> {
    [
        ("state", "=", &filter.state),
        ("principal", "=", &filter.principal),
        ("change", "=", &filter.change),
        ("action", "=", &filter.action),
        ("decision", "=", &filter.decision),
        ("at", ">=", &filter.since),
        ("at", "<", &filter.until),
    ]
    .into_iter()
}

/// The head of the chain of the database `conn` belongs to.
pub(super) async fn head(conn: &mut AnyConnection) -> Result<Head, StoreError> {
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(match head {
        Some((seq, hash)) => Head { seq, hash },
        None => Head::genesis(),
    })
}

/// Appends records in order, inside the caller's transaction; returns the new head.
pub(super) async fn append_all(
    conn: &mut AnyConnection,
    key: &ChainKey,
    records: &[impl std::borrow::Borrow<Record>],
) -> Result<Head, StoreError> {
    let head = head(conn).await?;
    let new_head = insert_after(conn, key, &head, records).await?;
    if index_due(head.seq, new_head.seq) {
        index(conn).await?;
    }
    Ok(new_head)
}

/// Appends records in order after `head`, in one statement however many they are, and returns
/// the new head. The table's trigger moves the stored head along. When the chain has grown
/// past `head` meanwhile, the first position is taken and the statement fails on the primary
/// key, writing nothing; so a caller that remembers the head between appends needs no read
/// of it, and cannot fork the chain.
pub(super) async fn insert_after(
    conn: &mut AnyConnection,
    key: &ChainKey,
    head: &Head,
    records: &[impl std::borrow::Borrow<Record>],
) -> Result<Head, StoreError> {
    let (rows, new_head) = chain_rows(key, head, records).map_err(unencodable)?;
    if rows.is_empty() {
        return Ok(new_head);
    }
    let sql = insert_statement(rows.len(), conn.backend_name() != "SQLite");
    let mut insert = sqlx::query(&sql);
    for row in &rows {
        insert = insert
            .bind(row.seq)
            .bind(&row.record)
            .bind(&row.prev_hash)
            .bind(&row.hash)
            .bind(&row.fields.state)
            .bind(&row.fields.principal)
            .bind(&row.fields.change)
            .bind(&row.fields.action)
            .bind(&row.fields.decision)
            .bind(&row.fields.at);
    }
    insert.execute(&mut *conn).await?;
    Ok(new_head)
}

/// The values a [`Row`] has per row of the statement.
const ROW_VALUES: usize = 10;

/// The statement that inserts `rows` rows, ten values per row in the order of [`Row`]'s
/// fields: numbered parameters (`$1`, `$2`, ...) for PostgreSQL; `?` for SQLite, which binds
/// them in order, where it would look each numbered one up by name, in a time that grows with
/// their number (appending a thousand records at once took seven times as long).
pub(super) fn insert_statement(rows: usize, numbered: bool) -> String {
    let values: Vec<String> = (0..rows)
        .map(|i| {
            let first = i * ROW_VALUES + 1;
            let params: Vec<String> = (first..first + ROW_VALUES)
                .map(|p| {
                    if numbered {
                        format!("${p}")
                    } else {
                        "?".into()
                    }
                })
                .collect();
            format!("({})", params.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO audit (seq, record, prev_hash, hash, {FIELD_COLUMNS}) VALUES {}",
        values.join(", ")
    )
}

/// The fields audit queries filter on: columns of the audit index, and of the chain too.
const FIELD_COLUMNS: &str = "state, principal, change, action, decision, at";

/// The position of the newest record in the audit index, which holds every record up to it.
const INDEXED_THROUGH: &str = "SELECT COALESCE(MAX(seq), 0) FROM audit_index";

/// Brings the audit index (the table audit queries find records by) up to date with the chain.
/// The index is kept apart from the chain, and filled every [`audit::INDEX_EVERY`] records, so that
/// appending records writes no index pages; queries read the records not yet indexed from the
/// chain itself. Records indexed already by another writer meanwhile are left alone, so the
/// index always holds every record up to its newest.
pub(super) async fn index(conn: &mut AnyConnection) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO audit_index (seq, {FIELD_COLUMNS}) SELECT seq, {FIELD_COLUMNS} FROM audit \
         WHERE seq > ({INDEXED_THROUGH}) \
         ON CONFLICT (seq) DO NOTHING"
    ))
    .execute(conn)
    .await?;
    Ok(())
}

/// The records of a chain that match, oldest first. The records are found by their fields
/// in the audit index, and among the few past it, so the newest hundred records of a chain of
/// millions are found without reading the rest.
async fn query(pool: &AnyPool, filter: &Filter) -> Result<Vec<Stored>, StoreError> {
    let values: Vec<&str> = fields(filter).filter_map(|(.., v)| v.as_deref()).collect();
    // Conditions on the columns of `table` (the index's, or the chain's own), for the records
    // after position `after`.
    let conditions = |table: &str, after: i64| {
        let mut conditions = vec![format!("{table}.seq > {after}")];
        if let Some(through) = filter.through {
            conditions.push(format!("{table}.seq <= {through}"));
        }
        let mut n = 0;
        for (column, op, value) in fields(filter) {
            if value.is_some() {
                n += 1;
                conditions.push(format!("{table}.{column} {op} ${n}"));
            }
        }
        conditions.join(" AND ")
    };
    let (order, limit) = match (filter.last, filter.first) {
        (Some(n), _) => ("DESC", format!(" LIMIT {}", n.max(0))),
        (None, Some(n)) => ("", format!(" LIMIT {}", n.max(0))),
        (None, None) => ("", String::new()),
    };
    let conn = &mut *pool.acquire().await?;
    let fetch = async |conn: &mut AnyConnection, sql: String| -> Result<Vec<Stored>, StoreError> {
        let mut query = sqlx::query_as(&sql);
        for value in &values {
            query = query.bind(*value);
        }
        Ok(query.fetch_all(conn).await?)
    };
    let from_chain = |after: i64| {
        format!(
            "SELECT seq, record, prev_hash, hash FROM audit a WHERE {} ORDER BY seq {order}{limit}",
            conditions("a", after)
        )
    };
    // Newest first with a limit, oldest first without.
    let mut rows = if values.is_empty() {
        fetch(conn, from_chain(filter.after)).await?
    } else {
        // The index holds every record up to `indexed`, and indexing meanwhile only adds past
        // it: the records past it are read from the chain, and are newer than all the rest.
        let (indexed,): (i64,) = sqlx::query_as(INDEXED_THROUGH)
            .fetch_one(&mut *conn)
            .await?;
        let newer = fetch(conn, from_chain(filter.after.max(indexed))).await?;
        let older = fetch(
            conn,
            format!(
                "SELECT i.seq AS seq, a.record, a.prev_hash, a.hash \
                 FROM audit_index i JOIN audit a ON a.seq = i.seq \
                 WHERE {} AND i.seq <= {indexed} ORDER BY i.seq {order}{limit}",
                conditions("i", filter.after)
            ),
        )
        .await?;
        match filter.last {
            Some(n) => {
                let mut rows = newer;
                rows.extend(older);
                rows.truncate(usize::try_from(n).unwrap_or(0));
                rows
            }
            None => {
                let mut rows = older;
                rows.extend(newer);
                if let Some(n) = filter.first {
                    rows.truncate(usize::try_from(n).unwrap_or(0));
                }
                rows
            }
        }
    };
    if filter.last.is_some() {
        rows.reverse();
    }
    Ok(rows)
}

/// The position of a chain's newest record (0 when it has none).
async fn newest_position(pool: &AnyPool) -> Result<i64, StoreError> {
    let (seq,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM audit")
        .fetch_one(pool)
        .await?;
    Ok(seq.unwrap_or(0))
}

/// Reads a whole chain and its head.
async fn read_chain(pool: &AnyPool) -> Result<Chain, StoreError> {
    let rows = sqlx::query_as("SELECT seq, record, prev_hash, hash FROM audit ORDER BY seq")
        .fetch_all(pool)
        .await?;
    let head = sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_optional(pool)
        .await?;
    Ok((rows, head))
}

/// The seal of a chain begun before records were keyed, if it has one.
async fn read_seal(conn: &mut AnyConnection) -> Result<Option<Seal>, StoreError> {
    Ok(
        sqlx::query_as("SELECT seq, hash, mac FROM audit_seal WHERE id = 1")
            .fetch_optional(conn)
            .await?,
    )
}

/// Readies a chain for appending, at start: seals the unkeyed part of a chain begun before
/// records were keyed, once, after verifying it; and checks that the newest record (and the
/// seal) were made with `key`, so that a replaced or lost key is found before anything is
/// appended under it. Reads the newest record alone, unless there is a part to seal. A chain
/// this server has `checkpointed` already was keyed: it is never sealed (someone who rewrote
/// it with plain hashes would otherwise have the rewrite sealed).
pub(super) async fn open_chain(
    conn: &mut AnyConnection,
    key: &ChainKey,
    checkpointed: bool,
) -> Result<Result<Opened, ChainProblem>, StoreError> {
    let mut opened = Opened::Intact;
    let seal = read_seal(&mut *conn).await?;
    let unkeyed_through = match &seal {
        None => 0,
        Some(Seal { seq, hash, mac }) => {
            let signed = seal_mac(key, *seq, hash);
            match mac {
                Some(mac) if *mac == signed => {}
                Some(_) => return Ok(Err(ChainProblem::WrongKey)),
                None if checkpointed => return Ok(Err(ChainProblem::SealAfterKeyed(*seq))),
                None => {
                    let rows: Vec<Stored> = sqlx::query_as(
                        "SELECT seq, record, prev_hash, hash FROM audit WHERE seq <= $1 ORDER BY seq",
                    )
                    .bind(seq)
                    .fetch_all(&mut *conn)
                    .await?;
                    let verified = Seal {
                        seq: *seq,
                        hash: hash.clone(),
                        mac: Some(signed.clone()),
                    };
                    let head = Some((*seq, hash.clone()));
                    if let Err(broken) = verify_chain(key, &rows, head, Some(&verified)) {
                        return Ok(Err(ChainProblem::Unsealable(broken)));
                    }
                    sqlx::query(
                        "UPDATE audit_seal SET mac = $1, sealed_at = $2 WHERE id = 1 AND mac IS NULL",
                    )
                    .bind(&signed)
                    .bind(crate::time::Clock::system().now().stored())
                    .execute(&mut *conn)
                    .await?;
                    opened = Opened::Sealed(*seq);
                }
            }
            *seq
        }
    };
    let newest: Option<Stored> =
        sqlx::query_as("SELECT seq, record, prev_hash, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(row) = newest.filter(|row| row.seq > unkeyed_through) {
        if link(key, row.seq, &row.prev_hash, &row.record) != row.hash {
            return Ok(Err(ChainProblem::WrongKey));
        }
    }
    Ok(Ok(opened))
}

/// Each record's fields, oldest first, as audit queries find them: in the audit index, and in
/// the chain's own columns past it.
async fn read_fields(pool: &AnyPool) -> Result<Vec<(i64, Fields)>, StoreError> {
    let rows: Vec<Found> = sqlx::query_as(&format!(
        "SELECT seq, {FIELD_COLUMNS} FROM audit_index \
         UNION ALL \
         SELECT seq, {FIELD_COLUMNS} FROM audit \
         WHERE seq > ({INDEXED_THROUGH}) \
         ORDER BY seq"
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|f| (f.seq, f.fields)).collect())
}

#[derive(sqlx::FromRow)]
struct Found {
    seq: i64,
    #[sqlx(flatten)]
    fields: Fields,
}

impl Database {
    /// The records of this database's chain that match, oldest first (`query`).
    pub async fn query(&self, filter: &Filter) -> Result<Vec<Stored>, StoreError> {
        query(&self.pool, filter).await
    }

    /// The position of this chain's newest record (0 when it has none).
    pub async fn newest_position(&self) -> Result<i64, StoreError> {
        newest_position(&self.pool).await
    }

    /// This database's whole chain and its head.
    pub async fn read_chain(&self) -> Result<Chain, StoreError> {
        read_chain(&self.pool).await
    }

    /// The position through which the audit index holds every record.
    pub async fn indexed_through(&self) -> Result<i64, StoreError> {
        let (indexed,): (i64,) = sqlx::query_as(INDEXED_THROUGH)
            .fetch_one(&self.pool)
            .await?;
        Ok(indexed)
    }
}

impl Chains for Stores {
    type Error = StoreError;

    fn audit_key(&self) -> &AuditKey {
        &self.key
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    fn watch_heads(&self) -> Vec<(String, tokio::sync::watch::Receiver<Head>)> {
        self.chains()
            .into_iter()
            .map(|(_, db)| (db.chain_name().to_string(), db.watch_head()))
            .collect()
    }

    fn watch_opened(&self) -> tokio::sync::broadcast::Receiver<super::Opened> {
        self.subscribe_opened()
    }

    async fn read_heads(&self) -> Vec<(String, Result<Head, StoreError>)> {
        let mut heads = Vec::new();
        for (_, db) in self.chains() {
            let head = match db.pool.acquire().await {
                Ok(mut conn) => head(&mut conn).await,
                Err(e) => Err(e.into()),
            };
            heads.push((db.chain_name().to_string(), head));
        }
        heads
    }
}

/// One database opened read-only for `bulkhead audit verify`: what it reads, nothing more.
pub struct ChainReader {
    pub(super) pool: AnyPool,
}

impl ChainReader {
    pub async fn close(self) {
        self.pool.close().await;
    }
}

impl Source for ChainReader {
    type Error = StoreError;

    fn chain(&self) -> impl Future<Output = Result<Chain, StoreError>> + Send {
        read_chain(&self.pool)
    }

    async fn seal(&self) -> Result<Result<Option<Seal>, Outdated>, StoreError> {
        let conn = &mut *self.pool.acquire().await?;
        match read_seal(conn).await {
            Ok(seal) => Ok(Ok(seal)),
            // No seal table: migrations older than this version.
            Err(StoreError::Database(sqlx::Error::Database(_))) => Ok(Err(Outdated)),
            Err(e) => Err(e),
        }
    }

    fn fields(&self) -> impl Future<Output = Result<Vec<(i64, Fields)>, StoreError>> + Send {
        read_fields(&self.pool)
    }

    async fn holdings(&self) -> Result<Holdings, StoreError> {
        let pool = &self.pool;
        let changes: Vec<(i64,)> = sqlx::query_as("SELECT number FROM changes ORDER BY number")
            .fetch_all(pool)
            .await?;
        let approvals = sqlx::query_as(
            "SELECT change_number, approver FROM approvals ORDER BY change_number, approver",
        )
        .fetch_all(pool)
        .await?;
        let breakglass: Vec<(i64,)> =
            sqlx::query_as("SELECT number FROM breakglass ORDER BY number")
                .fetch_all(pool)
                .await?;
        let versions: Vec<(String, i64, String, i64)> = sqlx::query_as(
            "SELECT state, version, sha256, deleted FROM versions ORDER BY state, version",
        )
        .fetch_all(pool)
        .await?;
        Ok(Holdings {
            changes: changes.into_iter().map(|(n,)| n).collect(),
            approvals,
            breakglass: breakglass.into_iter().map(|(n,)| n).collect(),
            versions: versions
                .into_iter()
                .map(|(s, v, sha, deleted)| (s, v, sha, deleted != 0))
                .collect(),
        })
    }

    /// Read one chunk at a time, so that a large state is never held whole.
    async fn content_sha256(&self, state: &str, version: i64) -> Result<String, StoreError> {
        let pool = &self.pool;
        let mut h = Sha256::new();
        let legacy: Option<(Option<Vec<u8>>,)> =
            sqlx::query_as("SELECT content FROM versions WHERE state = $1 AND version = $2")
                .bind(state)
                .bind(version)
                .fetch_optional(pool)
                .await?;
        match legacy {
            Some((Some(content),)) => h.update(&content),
            _ => {
                let mut chunks = sqlx::query_as::<_, (Vec<u8>,)>(
                    "SELECT data FROM content_chunks WHERE state = $1 AND version = $2 ORDER BY seq",
                )
                .bind(state)
                .bind(version)
                .fetch(pool);
                while let Some((data,)) = chunks.try_next().await? {
                    h.update(&data);
                }
            }
        }
        Ok(hex::encode(h.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use crate::audit::checkpoint::{read, Writers};
    use crate::audit::Record;

    /// The writers checkpoint a chain each time it has grown by `every` records, beside the
    /// appends (so the test waits for the file, with a deadline).
    #[tokio::test]
    async fn a_chain_is_checkpointed_every_so_many_records() {
        let (dir, stores) = crate::store::tests::open_dev("").await;
        let checkpoints = dir.path().join("checkpoints");
        let writers = Writers::start(&stores, &checkpoints, 3).await;
        let (_, db) = stores
            .chains()
            .into_iter()
            .find(|(name, _)| name == "dev")
            .unwrap();
        for _ in 0..7 {
            db.append_record(&Record::new("state:read")).await.unwrap();
        }
        let read = || {
            let found = read(
                std::slice::from_ref(&checkpoints),
                &stores.audit_key().checkpoints(),
            )
            .unwrap();
            found.chains.get("dev").cloned().unwrap_or_default()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !read().iter().any(|c| c.why == "every" && c.seq >= 6) {
            assert!(std::time::Instant::now() < deadline, "{:?}", read());
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        writers.shutdown(&stores).await;
        let dev = read();
        assert_eq!(
            dev.first().map(|c| (c.why.as_str(), c.seq)),
            Some(("start", 0))
        );
        assert_eq!(
            dev.last().map(|c| (c.why.as_str(), c.seq)),
            Some(("shutdown", 7))
        );
        assert!(dev
            .iter()
            .all(|c| c.why != "every" || c.seq % 3 == 0 || c.seq > 3));
    }
}
