//! The notify tables of the server's database: each notify block's cursor on each audit
//! chain (up to where its events were delivered or given up), and every attempt to deliver an
//! event. The chains themselves are the outbox, read with [`Database::query`](super::Database::query); this stores
//! only how far each receiver got.

use std::collections::HashMap;

use sqlx::FromRow;

use super::{StoreError, SystemStore};

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered 2xx.
    Delivered,
    /// It did not; the event is tried again later.
    Failed,
    /// It did not, and the event is not tried again.
    GivenUp,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::GivenUp => "given-up",
        }
    }
}

/// One attempt to deliver an event.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    pub notify: &'a str,
    pub event: &'a str,
    /// 1 for the first.
    pub attempt: u32,
    /// What the receiver answered, if it answered.
    pub status: Option<u16>,
    /// Why it did not answer, or what was wrong with the answer.
    pub error: Option<&'a str>,
    pub outcome: Outcome,
}

/// An attempt as stored.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct DeliveryRow {
    pub notify: String,
    pub event: String,
    pub attempt: i64,
    pub at: String,
    pub status: Option<i64>,
    pub error: Option<String>,
    pub outcome: String,
}

/// How many attempts are kept; older ones are pruned.
pub const DELIVERIES_KEPT: i64 = 10_000;

impl SystemStore {
    /// The cursors of notify block `notify`, by chain.
    pub async fn notify_cursors(&self, notify: &str) -> Result<HashMap<String, i64>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT chain, seq FROM notify_cursors WHERE notify = $1")
                .bind(notify)
                .fetch_all(self.db.pool())
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// Moves the cursor of `notify` on `chain` to `seq`, never back (another instance may have
    /// moved it further meanwhile).
    pub async fn advance_notify_cursor(
        &self,
        notify: &str,
        chain: &str,
        seq: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        advance(&mut tx, notify, chain, seq).await?;
        tx.commit().await
    }

    /// Records `attempt`; when it is the last for its event (delivered or given up), moves the
    /// cursor of its notify block on `chain` past the event, at `seq`, in the same transaction.
    pub async fn record_delivery(
        &self,
        attempt: &Attempt<'_>,
        chain: &str,
        seq: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let at = tx.now();
        sqlx::query(
            "INSERT INTO notify_deliveries (notify, event, attempt, at, status, error, outcome) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (notify, event, attempt) DO NOTHING",
        )
        .bind(attempt.notify)
        .bind(attempt.event)
        .bind(i64::from(attempt.attempt))
        .bind(&at)
        .bind(attempt.status.map(i64::from))
        .bind(attempt.error)
        .bind(attempt.outcome.as_str())
        .execute(tx.conn())
        .await?;
        if attempt.outcome != Outcome::Failed {
            advance(&mut tx, attempt.notify, chain, seq).await?;
        }
        tx.commit().await
    }

    /// How many attempts to deliver `event` to `notify` were recorded (by this server before
    /// a restart, or by another instance).
    pub async fn delivery_attempts(&self, notify: &str, event: &str) -> Result<u32, StoreError> {
        let (n,): (Option<i64>,) = sqlx::query_as(
            "SELECT MAX(attempt) FROM notify_deliveries WHERE notify = $1 AND event = $2",
        )
        .bind(notify)
        .bind(event)
        .fetch_one(self.db.pool())
        .await?;
        Ok(u32::try_from(n.unwrap_or(0)).unwrap_or(u32::MAX))
    }

    /// The attempts recorded, oldest first.
    pub async fn deliveries(&self) -> Result<Vec<DeliveryRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT notify, event, attempt, at, status, error, outcome FROM notify_deliveries \
             ORDER BY at, notify, event, attempt",
        )
        .fetch_all(self.db.pool())
        .await?)
    }

    /// Deletes all but the newest `keep` attempts.
    pub async fn prune_deliveries(&self, keep: i64) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        sqlx::query(&format!(
            "DELETE FROM notify_deliveries WHERE at < \
             (SELECT at FROM notify_deliveries ORDER BY at DESC LIMIT 1 OFFSET {})",
            keep.max(0)
        ))
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }
}

async fn advance(
    tx: &mut super::Tx<'_>,
    notify: &str,
    chain: &str,
    seq: i64,
) -> Result<(), StoreError> {
    let at = tx.now();
    sqlx::query(
        "INSERT INTO notify_cursors (notify, chain, seq, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (notify, chain) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at \
         WHERE notify_cursors.seq < excluded.seq",
    )
    .bind(notify)
    .bind(chain)
    .bind(seq)
    .bind(&at)
    .execute(tx.conn())
    .await?;
    Ok(())
}
