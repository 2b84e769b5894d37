//! Group commits of audit records on SQLite, made on the calling thread.
//!
//! sqlx runs each SQLite connection on a thread of its own, so every statement is a handoff to
//! that thread and back; for the one short INSERT of a group commit, made thousands of times a
//! second under load, the two thread switches cost more than the INSERT. This connection is a
//! synchronous one (rusqlite, on the same SQLite library), used for that INSERT alone.
//!
//! It runs on an async worker thread, so it must never wait: it fails at once when another
//! writer holds the database (the group commit then goes the ordinary way, on sqlx, which
//! waits), it never checkpoints (the group commit's flush does, holding the writer lock), and
//! it never waits for the disk: it is only used where records are flushed later
//! (`audit_sync = "writes"`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, ToSql};

use super::{audit, lock_ignoring_poison, StoreError};
use crate::audit::{chain_rows, ChainKey, Head, Record};

pub(super) struct SqliteAppender {
    conn: std::sync::Mutex<Connection>,
    /// The database's write-ahead log, which the group commit's flush syncs first.
    pub wal: PathBuf,
}

/// Prepared statements kept: one per batch size, and batches are mostly small.
const STATEMENTS_KEPT: usize = 64;

impl SqliteAppender {
    /// Opens the database file, which must exist already (the pool has opened and migrated
    /// it, in WAL mode).
    pub fn open(path: &Path) -> Result<SqliteAppender, rusqlite::Error> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::ZERO)?;
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0; PRAGMA foreign_keys = ON",
        )?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS_KEPT);
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        Ok(SqliteAppender {
            conn: std::sync::Mutex::new(conn),
            wal: PathBuf::from(wal),
        })
    }

    /// [`audit::insert_after`], on this connection: one statement, a transaction by itself.
    /// Fails, writing nothing, when the chain has grown past `head` or another writer holds
    /// the database.
    pub fn insert_after(
        &self,
        key: &ChainKey,
        head: &Head,
        records: &[&Record],
    ) -> Result<Head, StoreError> {
        let (rows, new_head) =
            chain_rows(key, head, records).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if rows.is_empty() {
            return Ok(new_head);
        }
        // Statements run whole or not at all: a poisoned connection is still a consistent one.
        let conn = lock_ignoring_poison(&self.conn);
        let mut insert = conn.prepare_cached(&audit::insert_statement(rows.len(), false))?;
        let values: Vec<&dyn ToSql> = rows
            .iter()
            .flat_map(|row| {
                [
                    &row.seq as &dyn ToSql,
                    &row.record,
                    &row.prev_hash,
                    &row.hash,
                    &row.fields.state,
                    &row.fields.principal,
                    &row.fields.change,
                    &row.fields.action,
                    &row.fields.decision,
                    &row.fields.at,
                ]
            })
            .collect();
        if let Err(e) = insert.execute(values.as_slice()) {
            drop(insert);
            // SQLite rolls a failed statement back by itself; should a transaction be left
            // open all the same (it cannot be seen to be here, but a full disk is where such
            // things happen), it is ended, so that the next append starts clean.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            return Err(e.into());
        }
        Ok(new_head)
    }
}
