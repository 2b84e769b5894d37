//! One environment's database: state versions (append-only), the lock of each state, and the
//! non-blocking plan locks of readers. Write methods take the caller's transaction so that a
//! version and its audit record commit together.

use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use super::{now, Serialized, StoreError, Tx};

pub struct EnvStore {
    pub(super) db: Serialized,
}

/// What is known of a stored version, without its content.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VersionMeta {
    pub state: String,
    pub version: i64,
    pub sha256: String,
    pub serial: Option<i64>,
    pub lineage: Option<String>,
    pub size: i64,
    pub principal: String,
    pub operation: Option<String>,
    pub lock_id: Option<String>,
    pub forced: bool,
    pub deleted: bool,
    pub created_at: String,
    /// The change request it was written under, in a protected environment.
    pub change_number: Option<i64>,
}

impl FromRow<'_, AnyRow> for VersionMeta {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        // The flags are stored as integers: the type both database kinds read back alike.
        let flag = |column: &str| row.try_get::<i64, _>(column).map(|n| n != 0);
        Ok(VersionMeta {
            state: row.try_get("state")?,
            version: row.try_get("version")?,
            sha256: row.try_get("sha256")?,
            serial: row.try_get("serial")?,
            lineage: row.try_get("lineage")?,
            size: row.try_get("size")?,
            principal: row.try_get("principal")?,
            operation: row.try_get("operation")?,
            lock_id: row.try_get("lock_id")?,
            forced: flag("forced")?,
            deleted: flag("deleted")?,
            created_at: row.try_get("created_at")?,
            change_number: row.try_get("change_number")?,
        })
    }
}

/// A version about to be written.
pub struct NewVersion<'a> {
    pub state: &'a str,
    pub sha256: &'a str,
    pub serial: Option<i64>,
    pub lineage: Option<&'a str>,
    pub principal: &'a str,
    pub operation: Option<&'a str>,
    pub lock_id: Option<&'a str>,
    pub forced: bool,
    pub change_number: Option<i64>,
    /// `None` records a deletion.
    pub content: Option<&'a [u8]>,
}

/// The lock a state is held under.
#[derive(Debug, Clone, FromRow)]
pub struct HeldLock {
    pub lock_id: String,
    pub principal: String,
    pub operation: String,
    /// The client's LockInfo, as it sent it.
    pub info: String,
    pub created_at: String,
    /// The change request the lock was taken for (protected environments).
    pub change_number: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub struct ReadLock {
    pub lock_id: String,
    pub state: String,
    pub principal: String,
}

/// A version's facts and its content, as one row.
#[derive(FromRow)]
struct WithContent {
    #[sqlx(flatten)]
    meta: VersionMeta,
    content: Option<Vec<u8>>,
}

const META_COLUMNS: &str = "state, version, sha256, serial, lineage, size, principal, operation, \
                            lock_id, forced, deleted, created_at, change_number";

impl EnvStore {
    pub async fn begin(&self) -> Result<Tx<'_>, StoreError> {
        self.db.begin().await
    }

    /// The newest version of a state with its content; `None` when there is none or the newest
    /// records a deletion.
    pub async fn latest_content(
        &self,
        state: &str,
    ) -> Result<Option<(VersionMeta, Vec<u8>)>, StoreError> {
        let row: Option<WithContent> = sqlx::query_as(&format!(
            "SELECT {META_COLUMNS}, content FROM versions WHERE state = $1 \
             ORDER BY version DESC LIMIT 1"
        ))
        .bind(state)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.and_then(|r| Some((r.meta, r.content?))))
    }

    /// One version with its content (`None` for a deletion's content).
    pub async fn version(
        &self,
        state: &str,
        version: i64,
    ) -> Result<Option<(VersionMeta, Option<Vec<u8>>)>, StoreError> {
        let row: Option<WithContent> = sqlx::query_as(&format!(
            "SELECT {META_COLUMNS}, content FROM versions WHERE state = $1 AND version = $2"
        ))
        .bind(state)
        .bind(version)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|r| (r.meta, r.content)))
    }

    /// The names of every state, with their newest version, and the locks held.
    pub async fn states(&self) -> Result<Vec<VersionMeta>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {META_COLUMNS} FROM versions v WHERE version = \
             (SELECT MAX(version) FROM versions w WHERE w.state = v.state) ORDER BY state"
        ))
        .fetch_all(self.db.pool())
        .await?)
    }

    /// Every version of a state, oldest first, without content.
    pub async fn history(&self, state: &str) -> Result<Vec<VersionMeta>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {META_COLUMNS} FROM versions WHERE state = $1 ORDER BY version"
        ))
        .bind(state)
        .fetch_all(self.db.pool())
        .await?)
    }

    /// The lock a state is held under right now, if any.
    pub async fn held_lock(&self, state: &str) -> Result<Option<HeldLock>, StoreError> {
        let mut conn = self.db.pool().acquire().await?;
        held_lock(&mut conn, state).await
    }
}

async fn held_lock(
    conn: &mut sqlx::AnyConnection,
    state: &str,
) -> Result<Option<HeldLock>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT lock_id, principal, operation, info, created_at, change_number FROM locks WHERE state = $1",
    )
    .bind(state)
    .fetch_optional(conn)
    .await?)
}

impl Tx<'_> {
    /// The newest version of a state, deletions included.
    pub async fn latest_version(&mut self, state: &str) -> Result<Option<VersionMeta>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {META_COLUMNS} FROM versions WHERE state = $1 ORDER BY version DESC LIMIT 1"
        ))
        .bind(state)
        .fetch_optional(self.conn())
        .await?)
    }

    /// Appends a version and returns its number.
    pub async fn append_version(&mut self, v: NewVersion<'_>) -> Result<i64, StoreError> {
        let (next,): (i64,) =
            sqlx::query_as("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE state = $1")
                .bind(v.state)
                .fetch_one(self.conn())
                .await?;
        sqlx::query(
            "INSERT INTO versions (state, version, sha256, serial, lineage, size, principal, \
             operation, lock_id, forced, deleted, created_at, content, change_number) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(v.state)
        .bind(next)
        .bind(v.sha256)
        .bind(v.serial)
        .bind(v.lineage)
        .bind(v.content.map_or(0, |c| c.len() as i64))
        .bind(v.principal)
        .bind(v.operation)
        .bind(v.lock_id)
        .bind(i64::from(v.forced))
        .bind(i64::from(v.content.is_none()))
        .bind(now())
        .bind(v.content)
        .bind(v.change_number)
        .execute(self.conn())
        .await?;
        Ok(next)
    }

    pub async fn held_lock(&mut self, state: &str) -> Result<Option<HeldLock>, StoreError> {
        held_lock(self.conn(), state).await
    }

    pub async fn insert_lock(
        &mut self,
        state: &str,
        lock_id: &str,
        principal: &str,
        operation: &str,
        info: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO locks (state, lock_id, principal, operation, info, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(state)
        .bind(lock_id)
        .bind(principal)
        .bind(operation)
        .bind(info)
        .bind(now())
        .execute(self.conn())
        .await?;
        Ok(())
    }

    pub async fn release_lock(&mut self, state: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM locks WHERE state = $1")
            .bind(state)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    pub async fn read_lock(&mut self, lock_id: &str) -> Result<Option<ReadLock>, StoreError> {
        Ok(
            sqlx::query_as("SELECT lock_id, state, principal FROM read_locks WHERE lock_id = $1")
                .bind(lock_id)
                .fetch_optional(self.conn())
                .await?,
        )
    }

    /// Records a reader's plan lock, and forgets those older than a day (a plan whose client
    /// died never sends its UNLOCK).
    pub async fn insert_read_lock(
        &mut self,
        state: &str,
        lock_id: &str,
        principal: &str,
    ) -> Result<(), StoreError> {
        let cutoff = (chrono::Utc::now() - chrono::Duration::days(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        sqlx::query("DELETE FROM read_locks WHERE created_at < $1")
            .bind(cutoff)
            .execute(self.conn())
            .await?;
        sqlx::query(
            "INSERT INTO read_locks (lock_id, state, principal, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (lock_id) DO UPDATE SET state = excluded.state, \
             principal = excluded.principal, created_at = excluded.created_at",
        )
        .bind(lock_id)
        .bind(state)
        .bind(principal)
        .bind(now())
        .execute(self.conn())
        .await?;
        Ok(())
    }

    pub async fn release_read_lock(&mut self, lock_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM read_locks WHERE lock_id = $1")
            .bind(lock_id)
            .execute(self.conn())
            .await?;
        Ok(())
    }
}
