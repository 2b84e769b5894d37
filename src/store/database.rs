//! One database and its concurrency model (see [`Database`]): the writer lock every write goes
//! through, group commits of audit records, and the epochs in which reads may be answered
//! from memory; its write transactions ([`Tx`]) and its connections outside the pool.

use std::sync::Arc;

use sqlx::any::AnyConnectOptions;
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Executor, Transaction};
use tokio::sync::{oneshot, Mutex, MutexGuard};

use super::chain::Chain;
use super::dialect::Dialect;
use super::group_commit::{self, Epoch, GroupCommit};
use super::sqlite_appender::SqliteAppender;
use super::{audit, StoreError};
use crate::audit::{Head, Record};
use crate::time::Clock;

/// How many times, 10 ms apart, closing a database waits for a flush under way to end.
const CLOSE_WAITS: usize = 200;

/// A connection of its own, outside the pool (which tests a connection with a round trip
/// each time it is returned), for short work that runs one at a time anyway. It is opened on
/// first use, and again after a failure.
pub(super) struct OwnConnection {
    pub(super) options: AnyConnectOptions,
    pub(super) session: String,
    pub(super) conn: Mutex<Option<AnyConnection>>,
}

impl OwnConnection {
    /// Runs `work` on the connection, waiting for whoever uses it now.
    pub(super) async fn run<T>(
        &self,
        work: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.conn.lock().await;
        let conn = match &mut *slot {
            Some(conn) => conn,
            None => {
                let mut conn = self.options.connect().await?;
                conn.execute(self.session.as_str()).await?;
                slot.insert(conn)
            }
        };
        let done = work(conn).await;
        // A statement the database refused (a taken position, say) leaves the connection as it
        // was, unless it ended a transaction that the driver still counts as open; any other
        // failure may not have.
        if let Err(e) = &done {
            let refused = matches!(e, StoreError::Database(sqlx::Error::Database(_)));
            if !refused || !usable(conn).await {
                *slot = None;
            }
        }
        done
    }
}

/// Whether a connection can be used again: it answers, and no transaction is open on it as
/// the driver counts them. When SQLite ends a transaction by itself (`SQLITE_FULL` rolls it
/// back), the driver's ROLLBACK fails and its count stays at one: every later BEGIN on that
/// connection would fail, so such a connection is closed instead, and a new one opened.
/// A connection that seems to be in a transaction is pinged first: the ping runs after any
/// rollback still queued on it, which lowers the count when it succeeds. (sqlx pings every
/// connection returned to the pool afterwards anyway, so only these cost a round trip more.)
pub(super) async fn usable(conn: &mut AnyConnection) -> bool {
    use sqlx::Connection;
    if !conn.is_in_transaction() {
        return true;
    }
    conn.ping().await.is_ok() && !conn.is_in_transaction()
}

/// The dedicated connections of one database.
pub(super) struct Connections {
    /// For the hot reads of every request (the newest version of a state).
    pub(super) lookups: OwnConnection,
    /// For group commits of audit records.
    pub(super) records: OwnConnection,
    /// For group commits of audit records on SQLite, when they are flushed later.
    pub(super) appender: Option<SqliteAppender>,
    /// `records` commits without waiting for the disk (`audit_sync = "writes"`).
    pub(super) relaxed: bool,
}

/// One database, and the rule that keeps what this server remembers of it true: **every write
/// goes through the writer lock**. This struct is the only way to a connection (its pool and
/// its transactions' connections are private to the store), so the rule cannot be bypassed.
///
/// - **The writer lock.** A write transaction ([`Database::begin`]) first takes `writer`, an
///   in-process mutex (so this server's writers queue fairly instead of spinning), then the
///   database's own: `BEGIN IMMEDIATE` on SQLite (so it cannot fail half-way on a lock upgrade
///   when another process, such as the CLI, writes too), a transaction advisory lock named
///   after the schema on PostgreSQL (so writers on every server instance sharing the database
///   queue on it, and a lock check and the grant that follows it cannot interleave with
///   another instance's).
/// - **Group commit.** An audit record written alone (a read, a refusal) is queued; whoever
///   gets the writer lock next appends everything queued by then in one statement and one
///   commit (`group_commit`), in a task of its own (so a request that goes away cannot cut a
///   commit short), and answers every waiter before it lets the lock go. Between commits the
///   chain's head is remembered, so an append needs no read of it; the primary key refuses an
///   append after a head that is no longer the newest.
/// - **Reads answered from memory.** While the head stays known, nothing was written to the
///   database but these group commits, since every other write (here or in another process)
///   appends its record in its own transaction. That span is an [`Epoch`]: it ends when a
///   write transaction begins here, and when an append finds the chain grown by someone else.
///   A state's newest version read in an epoch is still the newest while the epoch lasts, so
///   a read may be answered from memory, and its record commits only in that epoch
///   ([`EnvStore::append_read`](super::EnvStore::append_read)): refused as stale otherwise, before anything of it is stored.
///   This holds only because every write goes through the writer lock.
///
/// Reads other than those run on the pool beside the writer. On SQLite with
/// `audit_sync = "writes"`, the INSERT of a group commit runs on the calling thread, through
/// rusqlite (`sqlite_appender`), still under the writer lock.
pub struct Database {
    pub(super) pool: AnyPool,
    pub(super) connections: Arc<Connections>,
    pub(super) chain: Arc<Chain>,
    /// How this kind of database is written and flushed.
    pub(super) dialect: Dialect,
    pub(super) writer: Arc<Mutex<()>>,
    pub(super) commits: Arc<GroupCommit>,
    /// What every time this database stores is read from.
    pub(super) clock: Clock,
    /// The newest position of its chain when it was opened.
    opened_at: i64,
}

impl Database {
    /// Closes its connections, once nothing else holds it: its head's watchers are told it
    /// has ended (the sender goes with it).
    ///
    /// A flush of relaxed commits still scheduled is made first, and waited for (its task
    /// holds the connections): SQLite keeps every descriptor of a file open while any
    /// connection to it is, so one connection left would keep all of them. The connections
    /// are closed here rather than dropped, which closes them later, in their drivers'
    /// threads: whoever closes a database to free its files counts them next.
    pub(super) async fn close(self) {
        use sqlx::Connection;
        self.commits.flush_now();
        let mut connections = self.connections;
        for _ in 0..CLOSE_WAITS {
            match Arc::try_unwrap(connections) {
                Ok(only) => {
                    self.pool.close().await;
                    for own in [only.lookups, only.records] {
                        if let Some(conn) = own.conn.into_inner() {
                            let _ = conn.close().await;
                        }
                    }
                    return;
                }
                Err(shared) => connections = shared,
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tracing::warn!(chain = %self.chain.name, "a flush of the audit log was still under way as its database closed: the database's files close when it ends");
        self.pool.close().await;
    }

    /// What its group commits of audit records and their flushes have done so far.
    pub fn commit_totals(&self) -> crate::metrics::ChainTotals {
        self.commits.totals()
    }

    pub(super) fn new(
        pool: AnyPool,
        connections: Connections,
        chain: Arc<Chain>,
        dialect: Dialect,
        clock: Clock,
    ) -> Self {
        let opened_at = chain.head.borrow().seq;
        Database {
            opened_at,
            connections: Arc::new(connections),
            chain,
            pool,
            dialect,
            writer: Arc::new(Mutex::new(())),
            commits: Arc::default(),
            clock,
        }
    }

    /// The time to store now, as the database's clock tells it.
    pub(super) fn now(&self) -> String {
        self.clock.now().stored()
    }

    pub async fn begin(&self) -> Result<Tx<'_>, StoreError> {
        let guard = self.writer.lock().await;
        self.commits.forget();
        // Begun in a task of its own: a request that goes away while BEGIN is under way would
        // otherwise leave a transaction open on a pooled connection, holding the database's
        // write lock for good. The task always ends with a transaction value, whose drop
        // rolls back.
        let (pool, dialect) = (self.pool.clone(), self.dialect);
        let tx = tokio::spawn(async move { dialect.begin(&pool).await })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
            .map_err(|e| self.chain.explain(e))?;
        Ok(Tx {
            _guard: guard,
            tx,
            chain: &self.chain,
            clock: &self.clock,
            appended: None,
            written: Vec::new(),
        })
    }

    /// The name of this database's audit chain.
    pub fn chain_name(&self) -> &str {
        &self.chain.name
    }

    /// The newest position of its chain when it was opened: where a notify block that has
    /// read none of it starts.
    pub fn opened_at(&self) -> i64 {
        self.opened_at
    }

    /// The newest head of this database's chain that this server has appended, as it changes.
    pub fn watch_head(&self) -> tokio::sync::watch::Receiver<Head> {
        self.chain.head.subscribe()
    }

    /// Appends an audit record in a transaction of its own, together with the records other
    /// requests append at the same moment (group commit): many records, one commit and one
    /// flush to disk. Returns once the record is committed; an error means it was not.
    pub async fn append_record(&self, record: &Record) -> Result<(), StoreError> {
        self.append_record_in(record, None).await.map(drop)
    }

    /// [`Database::append_record`], but with `only_in`, only if nothing was written to this
    /// database since that epoch began: `Ok(false)` (and nothing stored) otherwise.
    pub(super) async fn append_record_in(
        &self,
        record: &Record,
        only_in: Option<Epoch>,
    ) -> Result<bool, StoreError> {
        let mut outcome = self.commits.enqueue(record, only_in);
        // Answered by a commit that took this record before this request had the writer lock,
        // or the lock, for a commit of its own.
        let guard = tokio::select! {
            biased;
            answered = &mut outcome => return self.answered(answered),
            guard = self.writer.clone().lock_owned() => guard,
        };
        // Nothing queued: an earlier commit took this record, and answered it.
        if self.commits.has_queued() {
            let commits = self.commits.clone();
            let parts = group_commit::DatabaseParts {
                connections: self.connections.clone(),
                chain: self.chain.clone(),
                dialect: self.dialect,
                writer: self.writer.clone(),
            };
            tokio::spawn(async move {
                // The tasks already runnable go first, for two turns of the runtime (before it
                // comes back to a task that yielded, it looks for requests that have arrived):
                // requests just read queue their records, and this commit takes them too, where
                // they would otherwise wait for the next one. Fewer, bigger commits under load,
                // and no timer. A second turn still paid off at 8 connections; more did not.
                for _ in 0..2 {
                    tokio::task::yield_now().await;
                }
                commits.commit_queued(&parts).await;
                drop(guard);
            });
        }
        self.answered(outcome.await)
    }

    pub(super) fn answered(
        &self,
        outcome: Result<Result<bool, group_commit::Failure>, oneshot::error::RecvError>,
    ) -> Result<bool, StoreError> {
        use group_commit::Failure;
        let location = || self.chain.location.clone();
        match outcome {
            Ok(outcome) => outcome.map_err(|failure| match failure {
                Failure::DiskFull => StoreError::DiskFull {
                    location: location(),
                },
                Failure::Unreachable(detail) => StoreError::Unreachable {
                    location: location(),
                    detail,
                },
                Failure::Other(message) => StoreError::Batch(message),
            }),
            Err(_) => Err(StoreError::Batch(
                "the commit that held the record stopped".into(),
            )),
        }
    }

    /// The epoch now, if one is under way: see [`group_commit`].
    pub(super) fn epoch(&self) -> Option<Epoch> {
        self.commits.epoch()
    }

    /// For reads: they may run beside the writer, never a write.
    pub(super) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The connection for the reads every request makes.
    pub(super) fn lookups(&self) -> &OwnConnection {
        &self.connections.lookups
    }
}

/// A write transaction; dropping it without [`Tx::commit`] rolls everything back.
pub struct Tx<'a> {
    pub(super) _guard: MutexGuard<'a, ()>,
    pub(super) tx: Transaction<'static, Any>,
    pub(super) chain: &'a Chain,
    pub(super) clock: &'a Clock,
    /// The chain's head after the records appended in this transaction.
    pub(super) appended: Option<Head>,
    /// The versions written in this transaction: (state, version, sha256).
    pub(super) written: Vec<(String, i64, String)>,
}

impl Tx<'_> {
    /// The time to store now, as the database's clock tells it.
    pub(super) fn now(&self) -> String {
        self.clock.now().stored()
    }
    pub async fn commit(self) -> Result<(), StoreError> {
        let chain = self.chain;
        self.tx
            .commit()
            .await
            .map_err(|e| chain.explain(e.into()))?;
        chain.wrote();
        if let Some(head) = self.appended {
            chain.appended(head);
        }
        Ok(())
    }

    /// [`Chain::explain`]: a full disk or an outage, named after this database.
    pub(super) fn explain(&self, e: StoreError) -> StoreError {
        self.chain.explain(e)
    }

    /// Appends an audit record to this database's chain, in this transaction. A record naming
    /// a version written in it carries that version's SHA-256, so the chain vouches for the
    /// content too.
    pub async fn append_record(&mut self, record: &Record) -> Result<(), StoreError> {
        self.append_records(std::slice::from_ref(record)).await
    }

    /// Appends audit records in order, in this transaction.
    pub async fn append_records(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let sha256 = |r: &Record| {
            let (state, version) = (r.state.as_deref()?, r.version?);
            self.written
                .iter()
                .find(|(s, v, sha)| s == state && *v == version && !sha.is_empty())
                .map(|(.., sha)| sha.clone())
        };
        let records: Vec<std::borrow::Cow<'_, Record>> = records
            .iter()
            .map(|r| match sha256(r) {
                Some(sha) if r.sha256.is_none() => {
                    let mut r = r.clone();
                    r.sha256 = Some(sha);
                    std::borrow::Cow::Owned(r)
                }
                _ => std::borrow::Cow::Borrowed(r),
            })
            .collect();
        let head = audit::append_all(&mut self.tx, &self.chain.key, &records)
            .await
            .map_err(|e| self.chain.explain(e))?;
        self.appended = Some(head);
        Ok(())
    }

    pub(super) fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}
