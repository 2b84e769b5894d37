//! One database's audit chain as this server appends to it: its name and key, and the newest
//! head appended, which the chain's checkpoint writer follows.

use std::path::Path;

use super::error::sqlx_outage;
use super::StoreError;
use crate::audit::{AuditKey, ChainKey, Head};

/// One database's audit chain, as its appenders share it: its name, its key, and the newest
/// head appended by this server (which checkpoints are written from).
pub(crate) struct Chain {
    pub name: String,
    pub key: ChainKey,
    /// The database, as errors name it.
    pub(super) location: String,
    /// The disk under the database was found full, and no write has succeeded since: the
    /// episode is logged once, when it begins, and once when it ends.
    pub(super) full: std::sync::atomic::AtomicBool,
    /// This server has written checkpoints of it (to `checkpoint_dir`).
    pub(super) checkpointed: bool,
    pub(super) head: tokio::sync::watch::Sender<Head>,
}

impl Chain {
    pub(super) fn new(name: &str, key: &AuditKey, checkpoint_dir: &Path) -> Chain {
        Chain {
            name: name.to_string(),
            key: key.chain(name),
            location: String::new(),
            full: std::sync::atomic::AtomicBool::new(false),
            checkpointed: crate::audit::checkpoint::file(checkpoint_dir, name).exists(),
            head: tokio::sync::watch::Sender::new(Head {
                seq: 0,
                hash: crate::audit::GENESIS.to_string(),
            }),
        }
    }

    /// What a failed write or read tells the person who asked for it: a full disk and an
    /// outage name this database; anything else is left as it is.
    pub fn explain(&self, e: StoreError) -> StoreError {
        use std::sync::atomic::Ordering;
        if e.is_disk_full() {
            if !self.full.swap(true, Ordering::SeqCst) {
                tracing::error!(
                    database = %self.location,
                    error = %e,
                    "the disk under the database is full: writes to it are refused until space is freed"
                );
            }
            return StoreError::DiskFull {
                location: self.location.clone(),
            };
        }
        match e {
            StoreError::Database(e) if sqlx_outage(&e) => StoreError::Unreachable {
                location: self.location.clone(),
                detail: e.to_string(),
            },
            e => e,
        }
    }

    /// A write was committed: a full-disk episode, if any, is over.
    pub fn wrote(&self) {
        if self.full.swap(false, std::sync::atomic::Ordering::SeqCst) {
            tracing::info!(database = %self.location, "writes to the database succeed again");
        }
    }

    /// Records committed up to `head`: checkpoint writers waiting for it are woken. Costs a
    /// short lock, never I/O.
    pub fn appended(&self, head: Head) {
        self.head.send_if_modified(|known| {
            let newer = head.seq > known.seq;
            if newer {
                *known = head;
            }
            newer
        });
    }
}
