//! The server-wide database: API tokens (only their hashes) and the audit chain of requests
//! that name no known environment.

use sqlx::FromRow;

use super::{now, Serialized, StoreError};
use crate::audit::{self, Record};

pub struct SystemStore {
    pub(super) db: Serialized,
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
            .bind(now())
            .execute(tx.conn())
            .await?;
        audit::append(tx.conn(), record).await?;
        tx.commit().await
    }

    pub async fn token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, principal, hash, created_at, revoked_at FROM tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?)
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
                .bind(now())
                .bind(id)
                .execute(tx.conn())
                .await?
                .rows_affected()
                == 1;
        if done {
            audit::append(tx.conn(), record).await?;
            tx.commit().await?;
        }
        Ok(done)
    }
}
