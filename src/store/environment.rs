//! One environment's database: state versions (append-only), the lock of each state, and the
//! non-blocking plan locks of readers. Write methods take the caller's transaction so that a
//! version and its audit record commit together.
//!
//! A version's content is stored in chunks of at most [`CHUNK_SIZE`] bytes and can be read
//! back as a stream of them, so a 100 MB state is served without a copy of it in memory.
//!
//! Every content read back is checked against the SHA-256 stored with its version: a damaged
//! one ends in [`StoreError::Damaged`] and is never handed out whole. A stream withholds its
//! last chunk until the digest matches, so a reader that counts the bytes it was promised
//! always sees the damage.

use std::collections::HashMap;

use axum::body::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use sha2::Digest;
use sqlx::any::AnyRow;
use sqlx::{Any, FromRow, Row};

use super::{lock_ignoring_poison, Database, Epoch, StoreError, Tx};
use crate::audit::Record;
use crate::time::Timestamp;

pub struct EnvStore {
    pub(super) db: Database,
    pub(super) recent: RecentContents,
    /// When a request last took it, in milliseconds since the epoch: what closing the
    /// databases nobody uses goes by.
    used: std::sync::atomic::AtomicI64,
}

/// Each state's newest version lately read, with its content when that fits in one chunk, and
/// the epoch it was read in (see [`super::Database`] for why that makes it still the newest
/// while the epoch lasts). Versions never change, so a content read once, and found to match
/// its SHA-256 then, can be served again from memory without hashing it again. At most
/// [`RECENT_CONTENTS_MAX`] bytes in all; past that, everything is dropped and refilled.
#[derive(Default)]
pub(super) struct RecentContents {
    kept: std::sync::Mutex<ContentsByState>,
}

/// The contents kept, by state, and their size in all.
#[derive(Default)]
struct ContentsByState {
    states: HashMap<String, Newest>,
    bytes: usize,
}

#[derive(Clone)]
struct Newest {
    version: i64,
    content: Bytes,
    read_in: Option<Epoch>,
}

/// The most content bytes [`RecentContents`] holds.
const RECENT_CONTENTS_MAX: usize = 64 << 20;

impl RecentContents {
    fn get(&self, state: &str) -> Option<Newest> {
        lock_ignoring_poison(&self.kept).states.get(state).cloned()
    }

    fn keep(&self, state: &str, newest: Newest) {
        let mut kept = lock_ignoring_poison(&self.kept);
        if kept.bytes + newest.content.len() > RECENT_CONTENTS_MAX {
            *kept = ContentsByState::default();
        }
        kept.bytes += newest.content.len();
        if let Some(old) = kept.states.insert(state.to_string(), newest) {
            kept.bytes -= old.content.len();
        }
    }
}

pub use crate::state::VersionMeta;

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
            resources: row.try_get("resources")?,
            beyond_plan: match row.try_get::<Option<String>, _>("beyond_plan")? {
                Some(text) => {
                    serde_json::from_str(&text).map_err(|e| sqlx::Error::ColumnDecode {
                        index: "beyond_plan".into(),
                        source: Box::new(e),
                    })?
                }
                None => Vec::new(),
            },
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
    /// Its resource instances (`history::fingerprint` of the content), when it is a state.
    pub resources: Option<&'a str>,
    /// Resource addresses it writes beyond the plan of its change.
    pub beyond_plan: &'a [String],
    /// What its state says of itself (JSON of [`crate::drift::Facts`]), when it is a state.
    pub facts: Option<&'a str>,
}

pub use crate::lock::HeldLock;

/// A lock about to be taken, and the identity taking it.
pub struct NewLock<'a> {
    pub lock_id: &'a str,
    pub principal: &'a str,
    pub branch: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub operation: &'a str,
    /// The client's LockInfo, as it sent it.
    pub info: &'a str,
    pub change_number: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub struct ReadLock {
    pub lock_id: String,
    pub state: String,
    pub principal: String,
}

/// The most content one stored chunk holds.
pub const CHUNK_SIZE: usize = 1 << 20;

/// A version's content, chunk by chunk.
pub type ContentStream = BoxStream<'static, Result<Bytes, StoreError>>;

/// A version's facts and the start of its content, as one row.
#[derive(FromRow)]
struct WithFirstChunk {
    #[sqlx(flatten)]
    meta: VersionMeta,
    /// The whole content of a version written before contents were chunked, else its first
    /// chunk; `None` for a deletion.
    content: Option<Vec<u8>>,
}

macro_rules! meta_columns {
    () => {
        "v.state, v.version, v.sha256, v.serial, v.lineage, v.size, v.principal, v.operation, \
         v.lock_id, v.forced, v.deleted, v.created_at, v.change_number, v.resources, v.beyond_plan"
    };
}

const META_COLUMNS: &str = meta_columns!();

const WITH_FIRST_CHUNK: &str = concat!(
    "SELECT ",
    meta_columns!(),
    ", COALESCE(v.content, c.data) AS content FROM versions v LEFT JOIN content_chunks c \
     ON c.state = v.state AND c.version = v.version AND c.seq = 0"
);

impl EnvStore {
    pub(super) fn new(db: Database, now: Timestamp) -> EnvStore {
        EnvStore {
            db,
            recent: RecentContents::default(),
            used: now.as_datetime().timestamp_millis().into(),
        }
    }

    /// Notes that a request took it `now`.
    pub(super) fn used_at(&self, now: Timestamp) {
        let millis = now.as_datetime().timestamp_millis();
        self.used
            .fetch_max(millis, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether no request has taken it since `before`.
    pub(super) fn unused_since(&self, before: Timestamp) -> bool {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
            < before.as_datetime().timestamp_millis()
    }

    pub async fn begin(&self) -> Result<Tx<'_>, StoreError> {
        self.db.begin().await
    }

    /// The newest version of a state and its content as read earlier in the epoch now under
    /// way, and that epoch: its read may be answered from memory, provided its record is
    /// appended with [`EnvStore::append_read`] in that epoch.
    /// Returns the version number, its content and the epoch.
    pub fn remembered_latest(&self, state: &str) -> Option<(i64, Bytes, Epoch)> {
        let epoch = self.db.epoch()?;
        let kept = self.recent.get(state)?;
        (kept.read_in == Some(epoch)).then_some((kept.version, kept.content, epoch))
    }

    /// Appends the record of a read answered from memory, in a group commit, only if nothing
    /// was written here since `epoch` began; `Ok(false)`, with nothing stored, otherwise.
    pub async fn append_read(&self, record: &Record, epoch: Epoch) -> Result<bool, StoreError> {
        self.db.append_record_in(record, Some(epoch)).await
    }

    /// The newest version of a state with its content, as a stream of chunks; `None` when there
    /// is none or the newest records a deletion.
    pub async fn latest_stream(
        &self,
        state: &str,
    ) -> Result<Option<(VersionMeta, ContentStream)>, StoreError> {
        // Taken before the lookup: what the lookup finds is at least as new as the epoch.
        let read_in = self.db.epoch();
        let Some(meta) = self
            .db
            .lookups()
            .run(async |conn| latest_version(conn, state).await)
            .await?
            .filter(|meta| !meta.deleted)
        else {
            return Ok(None);
        };
        if let Some(kept) = self.recent.get(state).filter(|k| k.version == meta.version) {
            self.recent.keep(
                state,
                Newest {
                    read_in,
                    ..kept.clone()
                },
            );
            let content = kept.content;
            return Ok(Some((meta, stream::once(async { Ok(content) }).boxed())));
        }
        let first: Option<(Option<Vec<u8>>,)> = sqlx::query_as(
            "SELECT COALESCE(v.content, c.data) FROM versions v LEFT JOIN content_chunks c \
             ON c.state = v.state AND c.version = v.version AND c.seq = 0 \
             WHERE v.state = $1 AND v.version = $2",
        )
        .bind(state)
        .bind(meta.version)
        .fetch_optional(self.db.pool())
        .await?;
        let Some((Some(first),)) = first else {
            return Err(StoreError::Corrupt(format!(
                "{state} version {}: its content is missing",
                meta.version
            )));
        };
        let first = Bytes::from(first);
        if first.len() as i64 == meta.size && first.len() <= CHUNK_SIZE {
            // Whole already: checked before it is answered or kept, never as it streams.
            check(&meta, &first)?;
            self.recent.keep(
                state,
                Newest {
                    version: meta.version,
                    content: first.clone(),
                    read_in,
                },
            );
            return Ok(Some((meta, stream::once(async { Ok(first) }).boxed())));
        }
        let stream = self.rest(&meta, first);
        Ok(Some((meta, stream)))
    }

    /// The newest version of a state with its content; `None` when there is none or the newest
    /// records a deletion.
    pub async fn latest_content(
        &self,
        state: &str,
    ) -> Result<Option<(VersionMeta, Vec<u8>)>, StoreError> {
        match self.latest_stream(state).await? {
            Some((meta, chunks)) => {
                let content = collect(meta.size, chunks).await?;
                Ok(Some((meta, content)))
            }
            None => Ok(None),
        }
    }

    /// One version with its content (`None` for a deletion's content).
    pub async fn version(
        &self,
        state: &str,
        version: i64,
    ) -> Result<Option<(VersionMeta, Option<Vec<u8>>)>, StoreError> {
        let row: Option<WithFirstChunk> = sqlx::query_as(&format!(
            "{WITH_FIRST_CHUNK} WHERE v.state = $1 AND v.version = $2"
        ))
        .bind(state)
        .bind(version)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(WithFirstChunk { meta, content }) = row else {
            return Ok(None);
        };
        let content = match content {
            Some(first) => Some(collect(meta.size, self.rest(&meta, first.into())).await?),
            None => None,
        };
        Ok(Some((meta, content)))
    }

    /// A version's content from its first chunk on: the chunks after it are read one at a time
    /// as the stream is polled, until `size` bytes have come, and checked ([`verified`]).
    fn rest(&self, meta: &VersionMeta, first: Bytes) -> ContentStream {
        let pool = self.db.pool().clone();
        let (state, version, size) = (meta.state.clone(), meta.version, meta.size);
        let received = first.len() as i64;
        let rest = stream::try_unfold((1i64, received), move |(seq, received)| {
            let (pool, state) = (pool.clone(), state.clone());
            async move {
                if received >= size {
                    return Ok(None);
                }
                let chunk: Option<(Vec<u8>,)> = sqlx::query_as(
                        "SELECT data FROM content_chunks WHERE state = $1 AND version = $2 AND seq = $3",
                    )
                    .bind(&state)
                    .bind(version)
                    .bind(seq)
                    .fetch_optional(&pool)
                    .await?;
                match chunk {
                    Some((data,)) if !data.is_empty() => {
                        let received = received + data.len() as i64;
                        Ok(Some((Bytes::from(data), (seq + 1, received))))
                    }
                    _ => Err(StoreError::Corrupt(format!(
                        "{state} version {version}: content chunk {seq} is missing"
                    ))),
                }
            }
        });
        verified(
            meta,
            stream::once(async move { Ok(first) }).chain(rest).boxed(),
        )
    }

    /// The names of every state, with their newest version, and the locks held.
    pub async fn states(&self) -> Result<Vec<VersionMeta>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {META_COLUMNS} FROM versions v WHERE v.version = \
             (SELECT MAX(version) FROM versions w WHERE w.state = v.state) ORDER BY v.state"
        ))
        .fetch_all(self.db.pool())
        .await?)
    }

    /// Every version of a state, oldest first, without content.
    pub async fn history(&self, state: &str) -> Result<Vec<VersionMeta>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {META_COLUMNS} FROM versions v WHERE v.state = $1 ORDER BY v.version"
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

    /// The locks taken before `before` (as stored) and held still, by state, oldest first.
    pub async fn locks_taken_before(
        &self,
        before: &str,
    ) -> Result<Vec<(String, HeldLock)>, StoreError> {
        #[derive(FromRow)]
        struct Held {
            state: String,
            #[sqlx(flatten)]
            lock: HeldLock,
        }
        let held: Vec<Held> = sqlx::query_as(
            "SELECT state, lock_id, principal, branch, subject, operation, info, created_at, \
             change_number, active_at FROM locks WHERE created_at < $1 ORDER BY created_at",
        )
        .bind(before)
        .fetch_all(self.db.pool())
        .await?;
        Ok(held.into_iter().map(|h| (h.state, h.lock)).collect())
    }

    /// How many locks are held now, and when the oldest was taken (as stored).
    pub async fn locks_held(&self) -> Result<(i64, Option<String>), StoreError> {
        let mut conn = self.db.pool().acquire().await?;
        Ok(
            sqlx::query_as("SELECT COUNT(*), MIN(created_at) FROM locks")
                .fetch_one(&mut *conn)
                .await?,
        )
    }
}

async fn held_lock(
    conn: &mut sqlx::AnyConnection,
    state: &str,
) -> Result<Option<HeldLock>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT lock_id, principal, branch, subject, operation, info, created_at, change_number, \
         active_at FROM locks WHERE state = $1",
    )
    .bind(state)
    .fetch_optional(conn)
    .await?)
}

/// Checks a whole content against its version's SHA-256.
fn check(meta: &VersionMeta, content: &[u8]) -> Result<(), StoreError> {
    if crate::state::sha256_hex(content) == meta.sha256 {
        Ok(())
    } else {
        Err(damaged(meta))
    }
}

fn damaged(meta: &VersionMeta) -> StoreError {
    StoreError::Damaged {
        state: meta.state.clone(),
        version: meta.version,
    }
}

/// `chunks`, hashed as they pass; the chunk that completes the version's size is let through
/// only if the digest matches, and replaced by [`StoreError::Damaged`] otherwise. So a damaged
/// content never arrives whole: its reader gets fewer bytes than the size, then the error.
fn verified(meta: &VersionMeta, chunks: ContentStream) -> ContentStream {
    let (size, expected) = (meta.size, meta.sha256.clone());
    let (state, version) = (meta.state.clone(), meta.version);
    let mut hasher = sha2::Sha256::new();
    let mut received = 0i64;
    chunks
        .map(move |chunk| {
            let chunk = chunk?;
            hasher.update(&chunk);
            received += chunk.len() as i64;
            if received >= size && hex::encode(hasher.finalize_reset()) != expected {
                return Err(StoreError::Damaged {
                    state: state.clone(),
                    version,
                });
            }
            Ok(chunk)
        })
        .boxed()
}

/// A whole content from its stream of chunks.
async fn collect(size: i64, mut chunks: ContentStream) -> Result<Vec<u8>, StoreError> {
    let mut content = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    while let Some(chunk) = chunks.try_next().await? {
        content.extend_from_slice(&chunk);
    }
    Ok(content)
}

/// The newest version of a state, deletions included.
async fn latest_version<'c>(
    db: impl sqlx::Executor<'c, Database = Any>,
    state: &str,
) -> Result<Option<VersionMeta>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {META_COLUMNS} FROM versions v WHERE v.state = $1 ORDER BY v.version DESC LIMIT 1"
    ))
    .bind(state)
    .fetch_optional(db)
    .await?)
}

impl Tx<'_> {
    /// The newest version of a state, deletions included.
    pub async fn latest_version(&mut self, state: &str) -> Result<Option<VersionMeta>, StoreError> {
        latest_version(self.conn(), state).await
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
             operation, lock_id, forced, deleted, created_at, change_number, resources, beyond_plan, \
             facts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
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
        .bind(self.now())
        .bind(v.change_number)
        .bind(v.resources)
        .bind(match v.beyond_plan {
            [] => None,
            beyond => Some(serde_json::to_string(beyond).map_err(|e| StoreError::Corrupt(e.to_string()))?),
        })
        .bind(v.facts)
        .execute(self.conn())
        .await
        .map_err(|e| self.explain(e.into()))?;
        self.written
            .push((v.state.to_string(), next, v.sha256.to_string()));
        if let Some(content) = v.content {
            // An empty content is one empty chunk, so that every version but a deletion has one.
            let chunks = content
                .chunks(CHUNK_SIZE)
                .chain((content.is_empty()).then_some(content));
            for (seq, chunk) in chunks.enumerate() {
                sqlx::query(
                    "INSERT INTO content_chunks (state, version, seq, data) VALUES ($1, $2, $3, $4)",
                )
                .bind(v.state)
                .bind(next)
                .bind(seq as i64)
                .bind(chunk)
                .execute(self.conn())
                .await
                .map_err(|e| self.explain(e.into()))?;
            }
        }
        Ok(next)
    }

    pub async fn held_lock(&mut self, state: &str) -> Result<Option<HeldLock>, StoreError> {
        held_lock(self.conn(), state).await
    }

    /// Takes the lock of `state` for the identity in `lock`, which names the change it is
    /// taken for, if any.
    pub async fn insert_lock(&mut self, state: &str, lock: &NewLock<'_>) -> Result<(), StoreError> {
        let taken = self.now();
        sqlx::query(
            "INSERT INTO locks (state, lock_id, principal, branch, subject, operation, info, \
             created_at, change_number, active_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(state)
        .bind(lock.lock_id)
        .bind(lock.principal)
        .bind(lock.branch)
        .bind(lock.subject)
        .bind(lock.operation)
        .bind(lock.info)
        .bind(&taken)
        .bind(lock.change_number)
        .bind(&taken)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Records that the holder of `state`'s lock is alive (a renewal or a write under it).
    pub async fn touch_lock(&mut self, state: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE locks SET active_at = $1 WHERE state = $2")
            .bind(self.now())
            .bind(state)
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

    /// Records a reader's plan lock, and forgets those taken before `forget_before`.
    pub async fn insert_read_lock(
        &mut self,
        state: &str,
        lock_id: &str,
        principal: &str,
        forget_before: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        if let Some(before) = forget_before {
            sqlx::query("DELETE FROM read_locks WHERE created_at < $1")
                .bind(before.stored())
                .execute(self.conn())
                .await?;
        }
        sqlx::query(
            "INSERT INTO read_locks (lock_id, state, principal, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (lock_id) DO UPDATE SET state = excluded.state, \
             principal = excluded.principal, created_at = excluded.created_at",
        )
        .bind(lock_id)
        .bind(state)
        .bind(principal)
        .bind(self.now())
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use sqlx::{Connection, Executor, SqliteConnection};

    use super::*;
    use crate::config::storage::environment_file;
    use crate::store::Stores;

    fn meta_of(content: &[u8]) -> VersionMeta {
        VersionMeta {
            state: "app".into(),
            version: 3,
            sha256: crate::state::sha256_hex(content),
            serial: Some(1),
            lineage: None,
            size: content.len() as i64,
            principal: "user:alice".into(),
            operation: None,
            lock_id: None,
            forced: false,
            deleted: false,
            created_at: String::new(),
            change_number: None,
            resources: None,
            beyond_plan: Vec::new(),
        }
    }

    async fn read(meta: &VersionMeta, chunks: &[&'static [u8]]) -> Vec<Result<Bytes, String>> {
        let chunks: Vec<Result<Bytes, StoreError>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        let chunks = stream::iter(chunks).boxed();
        verified(meta, chunks)
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
            .await
    }

    #[tokio::test]
    async fn a_damaged_content_loses_its_last_chunk_to_the_error() {
        let meta = meta_of(b"abcdef");
        let intact = read(&meta, &[b"ab", b"cd", b"ef"]).await;
        assert_eq!(intact.len(), 3);
        assert!(intact.iter().all(Result::is_ok), "{intact:?}");

        // The damage is in the middle; it is found, and said, in place of the last chunk.
        let damaged = read(&meta, &[b"ab", b"cX", b"ef"]).await;
        assert_eq!(
            damaged[..2],
            [Ok(Bytes::from_static(b"ab")), Ok(Bytes::from_static(b"cX"))]
        );
        assert_eq!(
            damaged[2],
            Err("version 3 of app is damaged: its content does not match its sha256".into())
        );
        assert_eq!(damaged.len(), 3);
    }

    /// A SQLite environment `dev` whose state `app` has one version, read once in the epoch
    /// now under way (so a read of it may be answered from memory); `server_lines` go into the
    /// server block. Also a connection of its own to the database, holding its write lock.
    async fn dev_with_one_version(
        server_lines: &str,
    ) -> (tempfile::TempDir, Stores, Epoch, SqliteConnection) {
        let (dir, stores) = crate::store::tests::open_dev(server_lines).await;
        let env = stores.environment("dev").unwrap();
        let mut tx = env.begin().await.unwrap();
        tx.append_version(NewVersion {
            state: "app",
            sha256: &crate::state::sha256_hex(b"{}"),
            serial: Some(1),
            lineage: Some("l"),
            principal: "user:alice",
            operation: None,
            lock_id: None,
            forced: false,
            change_number: None,
            content: Some(b"{}"),
            resources: None,
            beyond_plan: &[],
            facts: None,
        })
        .await
        .unwrap();
        tx.commit().await.unwrap();
        // A first record learns the chain's head; a read after it starts the epoch's memory.
        env.db
            .append_record(&Record::new("state:read"))
            .await
            .unwrap();
        env.latest_content("app").await.unwrap().unwrap();
        let (_, _, epoch) = env.remembered_latest("app").unwrap();
        let file = environment_file(dir.path(), "dev");
        let mut other = SqliteConnection::connect(&format!("sqlite:{}", file.display()))
            .await
            .unwrap();
        other.execute("BEGIN IMMEDIATE").await.unwrap();
        (dir, stores, epoch, other)
    }

    /// Until a group commit has taken everything queued (and holds the writer lock).
    async fn commit_under_way(env: &EnvStore) {
        while env.db.commits.has_queued() || env.db.writer.try_lock().is_ok() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// This server's own group commit writes nothing but records: a read that arrives while
    /// one is under way is still answered from memory, and its record still commits. On
    /// sqlx's connection (`audit_sync = "all"`), whose append waits for another connection's
    /// write lock, so that the commit can be held under way.
    #[tokio::test]
    async fn a_read_during_a_group_commit_is_answered_from_memory() {
        let (_dir, stores, epoch, mut other) = dev_with_one_version("audit_sync = \"all\"").await;
        let env = stores.environment("dev").unwrap();
        let record = Record::new("state:read");
        let read = env.append_read(&record, epoch);
        let meanwhile = async {
            commit_under_way(&env).await;
            let remembered = env.remembered_latest("app").map(|(version, ..)| version);
            other.execute("ROLLBACK").await.unwrap();
            remembered
        };
        let (appended, remembered) = tokio::join!(read, meanwhile);
        assert_eq!(
            remembered,
            Some(1),
            "not answered from memory during a commit"
        );
        assert!(appended.unwrap(), "the read's record was refused as stale");
    }

    /// Relaxed group commits are flushed every so many, not only every so often: the flush
    /// is what lets SQLite's write-ahead log start over, and each commit adds a few pages.
    #[tokio::test]
    async fn the_write_ahead_log_stays_small_under_a_stream_of_appends() {
        let (dir, stores, _, mut other) = dev_with_one_version("").await;
        other.execute("ROLLBACK").await.unwrap();
        let env = stores.environment("dev").unwrap();
        append_reads(&env, 3000).await;
        assert_small_write_ahead_log(dir.path());
    }

    /// A flush that is late (its sync of the log waits on a busy disk) holds appends off once
    /// too many commits wait for it, rather than let the log grow meanwhile.
    #[tokio::test]
    async fn the_write_ahead_log_stays_small_when_the_flush_is_late() {
        let (dir, stores, _, mut other) = dev_with_one_version("").await;
        other.execute("ROLLBACK").await.unwrap();
        let env = stores.environment("dev").unwrap();
        env.db.commits.hold_off_the_flush().await;
        append_reads(&env, 3000).await;
        assert_small_write_ahead_log(dir.path());
    }

    async fn append_reads(env: &EnvStore, n: usize) {
        for _ in 0..n {
            env.db
                .append_record(&Record::new("state:read"))
                .await
                .unwrap();
        }
    }

    fn assert_small_write_ahead_log(data_dir: &Path) {
        let wal = data_dir.join("environments").join("dev.db-wal");
        let size = std::fs::metadata(&wal).unwrap().len();
        assert!(size < 8 << 20, "{} is {size} bytes", wal.display());
    }

    /// The SQLite appender never waits on an async thread: when another connection holds the
    /// write lock it fails at once, and the group commit goes the ordinary way, which waits
    /// for the lock. Meeting another writer ends the epoch, so a read answered from memory
    /// gives way (nothing of it stored); a record of its own is committed once the lock is
    /// let go, and not before.
    #[tokio::test]
    async fn an_append_that_meets_another_writer_waits_off_the_async_threads() {
        let (_dir, stores, epoch, mut other) = dev_with_one_version("").await;
        let env = stores.environment("dev").unwrap();
        let count = async || -> i64 {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit")
                .fetch_one(env.db.pool())
                .await
                .unwrap();
            n
        };
        let before = count().await;
        let released = AtomicBool::new(false);
        let (from_memory, record) = (Record::new("state:read"), Record::new("state:lock"));
        let appends = async {
            let read = env.append_read(&from_memory, epoch).await.unwrap();
            let own = env.db.append_record(&record).await;
            (read, own, released.load(Ordering::SeqCst))
        };
        let meanwhile = async {
            commit_under_way(&env).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            released.store(true, Ordering::SeqCst);
            other.execute("ROLLBACK").await.unwrap();
        };
        let ((read, own, after_release), ()) = tokio::join!(appends, meanwhile);
        assert!(!read, "a read from memory was recorded past another writer");
        own.unwrap();
        assert!(
            after_release,
            "answered while another connection held the write lock"
        );
        assert_eq!(
            count().await,
            before + 1,
            "only the record of its own is stored"
        );
    }
}
