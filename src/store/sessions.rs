//! Dashboard sign-ins, in the server-wide database: each session's SHA-256 (never the secret
//! the browser holds), who it is, the token it was signed in with, its CSRF token and expiry.
//! Whether a session is still good is decided by the operation that reads it, not here.

use sqlx::FromRow;

use super::{StoreError, SystemStore};
use crate::audit::Record;

/// The most sessions one principal keeps: signing in again past it ends its oldest, so that
/// nobody can fill the table by signing in in a loop.
pub const SESSIONS_PER_PRINCIPAL: i64 = 20;

#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    pub principal: String,
    pub token_id: String,
    pub csrf: String,
    pub created_at: String,
    pub expires_at: String,
}

/// A session to keep: `id` is the SHA-256 of the secret the browser holds.
pub struct NewSession<'a> {
    pub id: &'a str,
    pub principal: &'a str,
    pub token_id: &'a str,
    pub csrf: &'a str,
    pub expires_at: &'a str,
}

impl SystemStore {
    /// Stores a session with its audit record, together; drops the sessions that expired by
    /// `now`, and the principal's oldest past [`SESSIONS_PER_PRINCIPAL`].
    pub async fn insert_session(
        &self,
        session: NewSession<'_>,
        now: &str,
        record: &Record,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        sqlx::query("DELETE FROM ui_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(tx.conn())
            .await?;
        sqlx::query(
            "DELETE FROM ui_sessions WHERE principal = $1 AND id NOT IN \
             (SELECT id FROM ui_sessions WHERE principal = $1 \
              ORDER BY created_at DESC, id LIMIT $2)",
        )
        .bind(session.principal)
        .bind(SESSIONS_PER_PRINCIPAL - 1)
        .execute(tx.conn())
        .await?;
        sqlx::query(
            "INSERT INTO ui_sessions (id, principal, token_id, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(session.id)
        .bind(session.principal)
        .bind(session.token_id)
        .bind(session.csrf)
        .bind(now)
        .bind(session.expires_at)
        .execute(tx.conn())
        .await?;
        tx.append_record(record).await?;
        tx.commit().await
    }

    /// The session whose secret hashes to `id`, whatever its expiry.
    pub async fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT principal, token_id, csrf, created_at, expires_at FROM ui_sessions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?)
    }

    /// Ends the session whose secret hashes to `id`; false when there was none.
    pub async fn delete_session(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        let done = sqlx::query("DELETE FROM ui_sessions WHERE id = $1")
            .bind(id)
            .execute(tx.conn())
            .await?
            .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(done)
    }
}
