//! Group commit of audit records that are written alone (reads, refusals): the records that
//! arrive together are appended in one statement and one commit, and each request is answered
//! once its own record is committed. The remembered head and the epochs it makes possible are
//! part of the store's concurrency model, stated on [`super::Database`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use sqlx::{AnyConnection, Executor};
use tokio::sync::oneshot;

use super::chain::Chain;
use super::database::Connections;
use super::dialect::Dialect;
use super::{audit, lock_ignoring_poison, StoreError};
use crate::audit::{index_due, Head, Record};
use crate::metrics::ChainTotals;

/// A span of time in which nothing was written to a database but this server's group commits
/// of records: it ends when a write transaction begins here, and when an append finds the
/// chain grown by someone else.
pub type Epoch = u64;

/// What a database's group commits share.
#[derive(Default)]
pub(super) struct GroupCommit {
    queue: std::sync::Mutex<Vec<Queued>>,
    known: std::sync::Mutex<HeadAndEpoch>,
    /// A flush of relaxed commits is scheduled.
    flush_due: AtomicBool,
    /// Relaxed commits since the last flush.
    unflushed: AtomicUsize,
    /// Brings the scheduled flush forward.
    flush_now: tokio::sync::Notify,
    /// What the group commits and flushes have done so far, for the metrics.
    counts: Counts,
}

/// Running totals of a database's group commits and flushes.
#[derive(Default)]
struct Counts {
    commits: AtomicU64,
    records: AtomicU64,
    commit_micros: AtomicU64,
    flushes: AtomicU64,
    flush_micros: AtomicU64,
}

/// What this server knows of the chain between its group commits.
#[derive(Default)]
struct HeadAndEpoch {
    /// The head after this server's last group commit, while nothing else may have appended.
    head: Option<Head>,
    epoch: Epoch,
}

/// A record waiting to be appended: the epoch it may only be committed in, if any, and who
/// waits for the outcome (committed, or refused as stale).
struct Queued {
    record: Record,
    only_in: Option<Epoch>,
    answer: oneshot::Sender<Result<bool, Failure>>,
}

/// The most records one group commit appends.
const MAX_RECORDS: usize = 256;

/// How soon a relaxed group commit reaches the disk.
const FLUSH_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

/// How many relaxed group commits bring the flush forward: each adds a few pages to the
/// write-ahead log, and the flush is what lets it start over, so this bounds its size (to a
/// few megabytes, as SQLite's own automatic checkpoint would) and the disk writes of a flush.
const FLUSH_AFTER: usize = 128;

/// How many relaxed group commits may wait for a flush that is late (its sync of the log is
/// slow, on a busy disk) before the next commit makes the flush itself, holding off appends:
/// the write-ahead log stays bounded however slow the disk.
const FLUSH_AT_MOST_AFTER: usize = 2 * FLUSH_AFTER;

/// Why a group commit failed, as every request waiting for it is told.
#[derive(Clone, Debug)]
pub(super) enum Failure {
    /// No room on the disk.
    DiskFull,
    /// The database did not answer: why.
    Unreachable(String),
    Other(String),
}

impl Failure {
    fn of(chain: &Chain, e: StoreError) -> Failure {
        match chain.explain(e) {
            StoreError::DiskFull { .. } => Failure::DiskFull,
            StoreError::Unreachable { detail, .. } => Failure::Unreachable(detail),
            e => Failure::Other(e.to_string()),
        }
    }
}

/// The parts of a [`super::Database`] that a group commit, in a task of its own, works with.
pub(super) struct DatabaseParts {
    pub connections: Arc<Connections>,
    pub chain: Arc<Chain>,
    pub dialect: Dialect,
    /// This server's lock on writing to the database.
    pub writer: Arc<tokio::sync::Mutex<()>>,
}

impl GroupCommit {
    /// The current epoch, when the head is known (otherwise nothing read now can be vouched
    /// for by the next commit).
    pub fn epoch(&self) -> Option<Epoch> {
        let known = lock_ignoring_poison(&self.known);
        known.head.as_ref().map(|_| known.epoch)
    }

    /// A write transaction begins: it may append, and write anything.
    pub fn forget(&self) {
        let mut known = lock_ignoring_poison(&self.known);
        known.head = None;
        known.epoch += 1;
    }

    pub fn has_queued(&self) -> bool {
        !lock_ignoring_poison(&self.queue).is_empty()
    }

    pub fn enqueue(
        &self,
        record: &Record,
        only_in: Option<Epoch>,
    ) -> oneshot::Receiver<Result<bool, Failure>> {
        let (answer, outcome) = oneshot::channel();
        lock_ignoring_poison(&self.queue).push(Queued {
            record: record.clone(),
            only_in,
            answer,
        });
        outcome
    }

    /// The totals so far.
    pub fn totals(&self) -> ChainTotals {
        let c = &self.counts;
        let seconds = |micros: &AtomicU64| micros.load(Ordering::Relaxed) as f64 / 1e6;
        ChainTotals {
            commits: c.commits.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            commit_seconds: seconds(&c.commit_micros),
            flushes: c.flushes.load(Ordering::Relaxed),
            flush_seconds: seconds(&c.flush_micros),
        }
    }

    /// Appends everything queued (the caller holds the writer lock).
    pub async fn commit_queued(self: Arc<Self>, parts: &DatabaseParts) {
        let started = std::time::Instant::now();
        let batch: Vec<Queued> = {
            let mut queue = lock_ignoring_poison(&self.queue);
            let n = queue.len().min(MAX_RECORDS);
            queue.drain(..n).collect()
        };
        if batch.is_empty() {
            return;
        }
        if self.unflushed.load(Ordering::SeqCst) >= FLUSH_AT_MOST_AFTER {
            self.flush(&parts.connections).await;
        }
        // The head stays known while this commit is under way: nothing but this commit can
        // append (the caller holds the writer lock), so reads meanwhile are still answered
        // from memory. If the commit finds the chain grown by someone else, the epoch ends.
        let (head, epoch) = {
            let known = lock_ignoring_poison(&self.known);
            (known.head.clone(), known.epoch)
        };
        let (mut batch, stale): (Vec<Queued>, Vec<Queued>) = batch
            .into_iter()
            .partition(|q| q.only_in.is_none() || (head.is_some() && q.only_in == Some(epoch)));
        answer(stale, Ok(false));
        let fast = match &head {
            Some(head) => commit(parts, Some(head), &batch).await.ok(),
            None => None,
        };
        let relearned = fast.is_none();
        let outcome = match fast {
            Some(new_head) => Ok(Some(new_head)),
            None => {
                // Someone else appended since, or the head is unknown: what was read in this
                // epoch may be out of date, and the head must be read again.
                let (keep, stale): (Vec<Queued>, Vec<Queued>) =
                    batch.into_iter().partition(|q| q.only_in.is_none());
                answer(stale, Ok(false));
                batch = keep;
                if batch.is_empty() {
                    Ok(None)
                } else {
                    commit(parts, None, &batch).await.map(Some)
                }
            }
        };
        {
            let mut known = lock_ignoring_poison(&self.known);
            if relearned {
                known.epoch += 1;
            }
            known.head = outcome.clone().ok().flatten();
        }
        if let Ok(Some(new_head)) = &outcome {
            if !batch.is_empty() {
                let c = &self.counts;
                c.commits.fetch_add(1, Ordering::Relaxed);
                c.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
                c.commit_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                parts.chain.wrote();
                parts.chain.appended(new_head.clone());
                self.flush_soon(parts);
            }
        }
        let index_due = match &outcome {
            Ok(Some(new_head)) => index_due(new_head.seq - batch.len() as i64, new_head.seq),
            _ => false,
        };
        answer(batch, outcome.map(|_| true));
        if index_due {
            index(&parts.connections).await;
        }
    }

    /// On SQLite with relaxed commits: makes sure the records committed so far reach the disk
    /// within [`FLUSH_WITHIN`], or after [`FLUSH_AFTER`] commits, by a checkpoint (which
    /// flushes the write-ahead log first, as this does before it takes the writer lock).
    /// PostgreSQL's WAL writer does the same by itself.
    /// Called by a group commit, holding the writer lock.
    fn flush_soon(self: &Arc<Self>, parts: &DatabaseParts) {
        if !parts.connections.relaxed || parts.dialect.flushes_by_itself() {
            return;
        }
        if self.unflushed.fetch_add(1, Ordering::SeqCst) + 1 == FLUSH_AFTER {
            self.flush_now.notify_one();
        }
        if self.flush_due.swap(true, Ordering::SeqCst) {
            return;
        }
        let (this, connections) = (self.clone(), parts.connections.clone());
        let writer = parts.writer.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(FLUSH_WITHIN) => {}
                () = this.flush_now.notified() => {}
            }
            // Most of the log reaches the disk first, while appends go on, so that the
            // checkpoint below, which holds them off, has little left to flush. Whatever fails
            // here fails again there, and is reported.
            if let Some(wal) = connections.appender.as_ref().map(|a| a.wal.clone()) {
                let flushed = tokio::task::spawn_blocking(move || {
                    std::fs::File::open(&wal).and_then(|log| log.sync_data())
                });
                let _ = flushed.await;
            }
            // With nothing appended meanwhile: a checkpoint beside appends on another
            // connection never catches up with them, and the write-ahead log would grow
            // without end.
            let _writing = writer.lock().await;
            this.flush_due.store(false, Ordering::SeqCst);
            this.flush(&connections).await;
        });
    }

    /// Makes the scheduled flush of relaxed commits, if any, now rather than when it is due.
    pub(super) fn flush_now(&self) {
        if self.flush_due.load(Ordering::SeqCst) {
            self.flush_now.notify_one();
        }
    }

    /// The checkpoint that flushes relaxed commits (the caller holds the writer lock).
    async fn flush(&self, connections: &Connections) {
        let started = std::time::Instant::now();
        self.unflushed.store(0, Ordering::SeqCst);
        let flushed = connections
            .records
            .run(async |conn| Ok(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").await?))
            .await;
        if let Err(e) = flushed {
            tracing::error!(error = %e, "cannot flush the audit log to disk");
        }
        self.counts.flushes.fetch_add(1, Ordering::Relaxed);
        self.counts
            .flush_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
impl GroupCommit {
    /// As if a flush were scheduled that does not come: the one scheduled already, if any, is
    /// made now, and the relaxed commits that follow schedule none.
    pub async fn hold_off_the_flush(&self) {
        while self.flush_due.load(Ordering::SeqCst) {
            self.flush_now.notify_one();
            tokio::task::yield_now().await;
        }
        self.flush_due.store(true, Ordering::SeqCst);
    }
}

/// Brings the audit index up to date, after a group commit (the caller holds the writer
/// lock). Should it fail, the records are indexed next time, and found from the chain itself
/// meanwhile.
async fn index(connections: &Connections) {
    let indexed = connections.records.run(audit::index).await;
    if let Err(e) = indexed {
        tracing::error!(error = %e, "cannot index the audit log");
    }
}

fn answer(batch: Vec<Queued>, outcome: Result<bool, Failure>) {
    for queued in batch {
        let _ = queued.answer.send(outcome.clone());
    }
}

/// Appends records after `head` (read first when unknown) on the SQLite appender, if any, or
/// the records connection; returns the new head. On SQLite, with the head known, the append is
/// a single statement, a transaction by itself: SQLite's write lock keeps any other writer's
/// transaction from interleaving with it, and the primary key refuses it if the chain grew
/// meanwhile. Otherwise it is a serialized transaction, so that it cannot slip between another
/// writer's read of the head and its append.
async fn commit(
    parts: &DatabaseParts,
    head: Option<&Head>,
    batch: &[Queued],
) -> Result<Head, Failure> {
    let records: Vec<&Record> = batch.iter().map(|q| &q.record).collect();
    let chain_key = &parts.chain.key;
    if let (Some(appender), Some(head)) = (&parts.connections.appender, head) {
        return appender
            .insert_after(chain_key, head, &records)
            .map_err(|e| Failure::of(&parts.chain, e));
    }
    let dialect = parts.dialect;
    parts
        .connections
        .records
        .run(async |conn: &mut AnyConnection| {
            // The writer lock held here is the only writer's: the head is still the newest.
            if let (true, Some(head)) = (dialect.one_writer_process(), head) {
                return audit::insert_after(conn, chain_key, head, &records).await;
            }
            let mut tx = dialect.begin_on(conn).await?;
            let head = match head {
                Some(head) => head.clone(),
                None => audit::head(&mut tx).await?,
            };
            let new_head = audit::insert_after(&mut tx, chain_key, &head, &records).await?;
            tx.commit().await?;
            Ok(new_head)
        })
        .await
        .map_err(|e: StoreError| Failure::of(&parts.chain, e))
}
