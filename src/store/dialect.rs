//! Every difference between SQLite and PostgreSQL that the store knows of, in one place: how a
//! database is addressed and opened, the session each connection starts with, how many
//! connections a pool holds, how writers are serialized and begun, and who flushes relaxed
//! commits to the disk. The rest of the store asks a [`Dialect`] and never matches on the kind
//! of database itself.

use std::path::Path;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use sqlx::any::AnyConnectOptions;
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Connection, Transaction};

use super::StoreError;
use crate::config::storage::{Kind, Location};

/// The kind of one database, and the key its writers are serialized under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dialect {
    kind: Kind,
    /// The transaction advisory lock key on PostgreSQL (one per schema).
    writer_key: i64,
}

/// How a database is to be connected to, and the schema that holds its tables on PostgreSQL.
pub(super) struct Connect {
    pub options: AnyConnectOptions,
    pub schema: Option<String>,
}

impl Dialect {
    /// The dialect of the database at `location`.
    pub fn of(location: &Location) -> Dialect {
        let kind = location.kind();
        let schema = match location {
            Location::Url { schema, .. } if kind == Kind::Postgres => schema.as_str(),
            _ => "",
        };
        let digest = Sha256::digest(format!("bulkhead:{schema}").as_bytes());
        let mut key = [0u8; 8];
        key.copy_from_slice(&digest[..8]);
        Dialect {
            kind,
            writer_key: i64::from_be_bytes(key),
        }
    }

    /// How to connect to the database at `location`, created if it is missing (a SQLite file;
    /// a PostgreSQL schema is created once connected, by the caller).
    pub fn connect(self, location: &Location) -> Result<Connect, sqlx::Error> {
        match location {
            Location::File(path) => Ok(Connect {
                options: sqlite_options(path, false)?,
                schema: None,
            }),
            Location::Url { url, schema } => {
                let mut url = url.clone();
                if self.kind == Kind::Sqlite && !url.contains("mode=") {
                    url.push_str(if url.contains('?') {
                        "&mode=rwc"
                    } else {
                        "?mode=rwc"
                    });
                }
                Ok(Connect {
                    options: AnyConnectOptions::from_str(&url)?,
                    schema: (self.kind == Kind::Postgres).then(|| schema.clone()),
                })
            }
        }
    }

    /// How to connect to the database at `location` for reading only, when it exists:
    /// `None` for a SQLite file that does not (a PostgreSQL schema's existence is the caller's
    /// to check, once connected).
    pub fn connect_existing(self, location: &Location) -> Result<Option<Connect>, sqlx::Error> {
        let file = |path: &Path| -> Result<Option<Connect>, sqlx::Error> {
            if !path.is_file() {
                return Ok(None);
            }
            Ok(Some(Connect {
                options: sqlite_options(path, true)?,
                schema: None,
            }))
        };
        match location {
            Location::File(path) => file(path),
            Location::Url { url, schema } => match self.kind {
                Kind::Sqlite => file(SqliteConnectOptions::from_str(url)?.get_filename()),
                Kind::Postgres => Ok(Some(Connect {
                    options: AnyConnectOptions::from_str(url)?,
                    schema: Some(schema.clone()),
                })),
            },
        }
    }

    /// The SQLite file behind `location`, if it is one that exists (an in-memory database has
    /// none).
    pub fn file(self, location: &Location) -> Option<std::path::PathBuf> {
        match location {
            Location::File(path) => Some(path.clone()),
            Location::Url { url, .. } if self.kind == Kind::Sqlite => {
                SqliteConnectOptions::from_str(url)
                    .ok()
                    .map(|options| options.get_filename().to_path_buf())
                    .filter(|path| path.is_file())
            }
            Location::Url { .. } => None,
        }
    }

    /// What every connection runs first: on PostgreSQL, work in the database's own schema; on
    /// SQLite, WAL (readers go on while a write commits), FULL sync (a commit is durable), a
    /// busy timeout and foreign keys.
    pub fn session(self, schema: Option<&str>) -> String {
        match schema {
            Some(schema) => format!("SET search_path TO {}", quote(schema)),
            None => "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON"
                .to_string(),
        }
    }

    /// `session`, for a connection that commits without waiting for the disk.
    pub fn relaxed(self, session: &str) -> String {
        match self.kind {
            Kind::Sqlite => format!("{session}; PRAGMA synchronous = NORMAL"),
            Kind::Postgres => format!("{session}; SET synchronous_commit = off"),
        }
    }

    /// The most connections a pool holds: SQLite has one writer at a time anyway.
    pub fn max_connections(self) -> u32 {
        match self.kind {
            Kind::Sqlite => 4,
            Kind::Postgres => 16,
        }
    }

    /// Whether a pooled connection is tested when it is taken out: sqlx tests it when it is
    /// returned anyway, and a second round trip per query is warranted only by a server that
    /// may have gone away meanwhile.
    pub fn tests_connections(self) -> bool {
        self.kind == Kind::Postgres
    }

    /// Whether reading the schema is what tells a file that is no database (opening a SQLite
    /// file reads nothing).
    pub fn probes_schema(self) -> bool {
        self.kind == Kind::Sqlite
    }

    /// The migrations of this kind, of `(sqlite, postgres)`.
    pub fn migrator(
        self,
        (sqlite, postgres): (&'static Migrator, &'static Migrator),
    ) -> &'static Migrator {
        match self.kind {
            Kind::Sqlite => sqlite,
            Kind::Postgres => postgres,
        }
    }

    /// Whether the writer lock of this process alone serializes the database's writers. A
    /// SQLite file has one server; a PostgreSQL database may have several, serialized by a
    /// transaction advisory lock as well (see [`Dialect::begin_on`]).
    pub fn one_writer_process(self) -> bool {
        self.kind == Kind::Sqlite
    }

    /// Whether the database flushes relaxed commits to the disk by itself (PostgreSQL's WAL
    /// writer does; SQLite's are flushed by a checkpoint of ours).
    pub fn flushes_by_itself(self) -> bool {
        self.kind == Kind::Postgres
    }

    /// A write transaction from `pool`: SQLite's `BEGIN IMMEDIATE` takes the write lock at
    /// once; on PostgreSQL, the advisory lock serializes writers across instances.
    pub async fn begin(self, pool: &AnyPool) -> Result<Transaction<'static, Any>, StoreError> {
        let mut tx = match self.kind {
            Kind::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
            Kind::Postgres => pool.begin().await?,
        };
        self.take_writer_lock(&mut tx).await?;
        Ok(tx)
    }

    /// [`Dialect::begin`] on a connection of its own.
    pub async fn begin_on<'c>(
        self,
        conn: &'c mut AnyConnection,
    ) -> Result<Transaction<'c, Any>, StoreError> {
        let mut tx = match self.kind {
            Kind::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await?,
            Kind::Postgres => conn.begin().await?,
        };
        self.take_writer_lock(&mut tx).await?;
        Ok(tx)
    }

    async fn take_writer_lock(self, conn: &mut AnyConnection) -> Result<(), StoreError> {
        if self.kind == Kind::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(self.writer_key)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

pub(super) fn sqlite_options(
    path: &Path,
    read_only: bool,
) -> Result<AnyConnectOptions, sqlx::Error> {
    let options = SqliteConnectOptions::new().filename(path);
    let options = if read_only {
        options.read_only(true)
    } else {
        options.create_if_missing(true)
    };
    AnyConnectOptions::from_url(&options.to_url_lossy())
}

/// A PostgreSQL identifier, quoted.
pub(super) fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}
