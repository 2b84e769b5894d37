//! The server-wide database: API tokens (only their hashes) and the audit chain of requests
//! that name no known environment.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::FromRow;

use super::{lock_ignoring_poison, Database, StoreError};
use crate::audit::Record;
use crate::time::{Clock, Timestamp};

pub struct SystemStore {
    pub(super) db: Database,
    pub(super) recent: RecentTokens,
}

/// Token rows read lately, so that a request's token costs no database round trip: a row is
/// kept for `ttl` (`server { token_cache }`). A token revoked through this store is forgotten
/// at once; one revoked by another process stops working within `ttl`.
pub(super) struct RecentTokens {
    ttl: Duration,
    /// What a row's age is told by (so that a test can let it age).
    clock: Clock,
    rows: std::sync::Mutex<HashMap<String, (TokenRow, Timestamp)>>,
}

/// The most token rows kept; past it, rows no longer fresh are dropped, then all.
const RECENT_TOKENS_MAX: usize = 10_000;

impl RecentTokens {
    pub(super) fn new(ttl: Duration, clock: Clock) -> RecentTokens {
        RecentTokens {
            ttl,
            clock,
            rows: std::sync::Mutex::default(),
        }
    }

    fn fresh(&self, read_at: Timestamp, now: Timestamp) -> bool {
        now.since(read_at) < self.ttl
    }

    fn get(&self, id: &str) -> Option<TokenRow> {
        let rows = lock_ignoring_poison(&self.rows);
        let (row, read_at) = rows.get(id)?;
        self.fresh(*read_at, self.clock.now()).then(|| row.clone())
    }

    fn keep(&self, row: &TokenRow) {
        if self.ttl.is_zero() {
            return;
        }
        let now = self.clock.now();
        let mut rows = lock_ignoring_poison(&self.rows);
        if rows.len() >= RECENT_TOKENS_MAX {
            rows.retain(|_, (_, read_at)| self.fresh(*read_at, now));
            if rows.len() >= RECENT_TOKENS_MAX {
                rows.clear();
            }
        }
        rows.insert(row.id.clone(), (row.clone(), now));
    }

    fn forget(&self, id: &str) {
        lock_ignoring_poison(&self.rows).remove(id);
    }
}

#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct TokenRow {
    pub id: String,
    pub principal: String,
    #[serde(skip)]
    pub hash: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl SystemStore {
    /// Stores a token's hash and its audit record, together.
    pub async fn insert_token(
        &self,
        id: &str,
        principal: &str,
        hash: &str,
        record: &Record,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        sqlx::query("INSERT INTO tokens (id, principal, hash, created_at) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(principal)
            .bind(hash)
            .bind(tx.now())
            .execute(tx.conn())
            .await?;
        tx.append_record(record).await?;
        tx.commit().await
    }

    /// The token with this id, as read within the last `server { token_cache }`.
    pub async fn token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        if let Some(row) = self.recent.get(id) {
            return Ok(Some(row));
        }
        let row: Option<TokenRow> = sqlx::query_as(
            "SELECT id, principal, hash, created_at, revoked_at FROM tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        if let Some(row) = &row {
            self.recent.keep(row);
        }
        Ok(row)
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, principal, hash, created_at, revoked_at FROM tokens ORDER BY created_at",
        )
        .fetch_all(self.db.pool())
        .await?)
    }

    /// Marks a token revoked and records it; false (and nothing recorded) when no live token
    /// has that id.
    pub async fn revoke_token(&self, id: &str, record: &Record) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        let done =
            sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(tx.now())
                .bind(id)
                .execute(tx.conn())
                .await?
                .rows_affected()
                == 1;
        if done {
            tx.append_record(record).await?;
            tx.commit().await?;
            self.recent.forget(id);
        }
        Ok(done)
    }

    /// Notes that a version of `environment`/`state` carries `lineage`: the other places
    /// (`ENV/STATE`) where it was seen before, at most [`LINEAGE_PLACES`] of them. Not part of
    /// the write's transaction (it is another database): a write that then fails leaves a
    /// place noted that never held the lineage, which names a copy that was only attempted.
    pub async fn lineage_seen(
        &self,
        lineage: &str,
        environment: &str,
        state: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.db.begin().await?;
        let elsewhere: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT environment, state FROM lineages WHERE lineage = $1 \
             AND NOT (environment = $2 AND state = $3) ORDER BY first_seen LIMIT {LINEAGE_PLACES}"
        ))
        .bind(lineage)
        .bind(environment)
        .bind(state)
        .fetch_all(tx.conn())
        .await?;
        sqlx::query(
            "INSERT INTO lineages (lineage, environment, state, first_seen) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (lineage, environment, state) DO NOTHING",
        )
        .bind(lineage)
        .bind(environment)
        .bind(state)
        .bind(tx.now())
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(elsewhere
            .into_iter()
            .map(|(environment, state)| format!("{environment}/{state}"))
            .collect())
    }
}

/// The most other places [`SystemStore::lineage_seen`] names.
pub const LINEAGE_PLACES: usize = 5;
