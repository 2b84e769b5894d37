//! Why a database could not do what was asked, and which of those faults are a full disk or a
//! database out of reach (which callers answer as such, not as internal errors).

use std::path::PathBuf;

use crate::audit::ChainProblem;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the database {location}: {source}{}",
        super::open::files_exhausted(source)
    )]
    Open {
        location: String,
        source: sqlx::Error,
    },
    /// Not opened: the process is at (or near) its open-file limit.
    #[error("{cause}")]
    Exhausted { cause: String },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bring the database {location} up to date: {source}")]
    Migrate {
        location: String,
        source: sqlx::migrate::MigrateError,
    },
    #[error("cannot open the database {location}: {source}")]
    OpenSqlite {
        location: String,
        source: rusqlite::Error,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value that cannot be read back, or encoded for storage.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// A version whose content, as read back, does not hash to the SHA-256 stored with it.
    #[error("version {version} of {state} is damaged: its content does not match its sha256")]
    Damaged { state: String, version: i64 },
    /// A group commit of audit records failed.
    #[error("the audit records could not be committed: {0}")]
    Batch(String),
    /// A write found no room on the disk; SQLite rolled it back whole.
    #[error("the disk under {location} is full: free space; nothing was written")]
    DiskFull { location: String },
    /// The database did not answer (down, restarting, or out of reach).
    #[error("the database {location} cannot be reached ({detail}): the request was not carried out; try again once it is back")]
    Unreachable { location: String, detail: String },
    /// A task doing database work stopped before it finished.
    #[error("database work stopped before it finished: {0}")]
    Task(String),
    #[error(transparent)]
    Key(#[from] crate::audit::key::KeyError),
    /// An audit chain that cannot be appended to under this key.
    #[error("the audit chain of {location}: {problem}")]
    Chain {
        location: String,
        problem: ChainProblem,
    },
    /// A database that should be there is not (commands that only read never create one).
    #[error("the database {location} does not exist: it was deleted or moved (restore it from a backup); nothing was created in its place")]
    Missing { location: String },
}

impl StoreError {
    /// The write found no room on the disk: SQLite's `SQLITE_FULL` (in any extended form),
    /// PostgreSQL's `disk_full`, or `ENOSPC` from the file system.
    pub fn is_disk_full(&self) -> bool {
        pub(super) const ENOSPC: i32 = 28;
        match self {
            StoreError::DiskFull { .. } => true,
            StoreError::Database(sqlx::Error::Database(e)) => {
                let code = e.code();
                let code = code.as_deref().unwrap_or("");
                code == "53100" || code.parse::<i32>().is_ok_and(|c| c & 0xff == 13)
            }
            StoreError::Database(sqlx::Error::Io(e)) => e.raw_os_error() == Some(ENOSPC),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            _ => false,
        }
    }

    /// The database could not be talked to at all, as opposed to refusing what was asked.
    pub fn is_outage(&self) -> bool {
        match self {
            StoreError::Unreachable { .. } => true,
            StoreError::Database(e) => sqlx_outage(e),
            _ => false,
        }
    }
}

/// A connection that failed or could not be made, or PostgreSQL saying it is going away or
/// not yet up (SQLSTATE class 08, and 57P01 to 57P03).
pub(super) fn sqlx_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => e
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}
