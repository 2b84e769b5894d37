//! Storage: where states, locks, tokens and audit records live.
//!
//! Each environment has a database of its own (by default a SQLite file under the data
//! directory, so production's file is separate from everyone else's), holding its state
//! versions, its locks and its audit chain; a state write and its audit record commit in one
//! transaction. The server-wide database holds tokens and the audit chain of requests that
//! name no known environment. This module stores and fetches; it decides nothing: callers
//! check permissions and write rules before they write.

pub mod changes;
pub mod environment;
pub mod system;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use crate::config::Config;
pub use environment::EnvStore;
pub use system::SystemStore;

static ENVIRONMENT_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite/environment");
static SYSTEM_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite/system");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {location}: {source}")]
    Open {
        location: String,
        source: sqlx::Error,
    },
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
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored value that cannot be read back, or encoded for storage.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

/// Checks a `storage` URL from the config without connecting.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("sqlite:") {
        return Ok(());
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Err("PostgreSQL storage is not available in this version; use a sqlite: URL or leave storage unset".into());
    }
    Err(format!(
        "`{url}` is not a database URL: use sqlite:PATH, or leave storage unset for a file under the data directory"
    ))
}

/// Opens only the server-wide database (tokens), for commands that need nothing else.
pub async fn open_system(config: &Config) -> Result<SystemStore, StoreError> {
    let data_dir = &config.server.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let pool = open_sqlite(
        &SqliteUrl::File(data_dir.join("bulkhead.db")),
        &SYSTEM_MIGRATIONS,
    )
    .await?;
    Ok(SystemStore::new(pool))
}

/// Every database the server uses, opened and migrated.
pub struct Stores {
    pub system: SystemStore,
    environments: HashMap<String, EnvStore>,
}

impl Stores {
    pub async fn open(config: &Config) -> Result<Stores, StoreError> {
        let data_dir = &config.server.data_dir;
        std::fs::create_dir_all(data_dir.join("environments")).map_err(|source| {
            StoreError::DataDir {
                path: data_dir.clone(),
                source,
            }
        })?;
        let system = open_system(config).await?;
        let mut environments = HashMap::new();
        for env in &config.environments {
            let location = match &env.storage {
                Some(url) => SqliteUrl::Url(url.clone()),
                None => SqliteUrl::File(environment_file(data_dir, &env.name)),
            };
            let pool = open_sqlite(&location, &ENVIRONMENT_MIGRATIONS).await?;
            environments.insert(env.name.clone(), EnvStore::new(pool));
        }
        Ok(Stores {
            system,
            environments,
        })
    }

    pub fn environment(&self, name: &str) -> Option<&EnvStore> {
        self.environments.get(name)
    }

    /// The environment's store, or the system store for requests outside any environment.
    pub fn audit_store(&self, environment: Option<&str>) -> &Serialized {
        environment
            .and_then(|e| self.environments.get(e))
            .map(|e| &e.db)
            .unwrap_or(&self.system.db)
    }

    /// Every audit chain: the server's first, then each environment's by name.
    pub fn chains(&self) -> Vec<(String, &Serialized)> {
        let mut names: Vec<&String> = self.environments.keys().collect();
        names.sort();
        let mut out = vec![("server".to_string(), &self.system.db)];
        out.extend(
            names
                .into_iter()
                .filter_map(|n| self.environments.get(n).map(|s| (n.clone(), &s.db))),
        );
        out
    }
}

enum SqliteUrl {
    File(PathBuf),
    Url(String),
}

async fn open_sqlite(location: &SqliteUrl, migrator: &Migrator) -> Result<SqlitePool, StoreError> {
    let (options, name) = match location {
        SqliteUrl::File(path) => (
            SqliteConnectOptions::new().filename(path),
            path.display().to_string(),
        ),
        SqliteUrl::Url(url) => (
            SqliteConnectOptions::from_str(url).map_err(|source| StoreError::Open {
                location: url.clone(),
                source,
            })?,
            url.clone(),
        ),
    };
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Open {
            location: name.clone(),
            source,
        })?;
    migrator
        .run(&pool)
        .await
        .map_err(|source| StoreError::Migrate {
            location: name,
            source,
        })?;
    Ok(pool)
}

/// A database whose writes run one at a time: each write transaction starts with
/// `BEGIN IMMEDIATE` (so it cannot fail half-way on a lock upgrade when another process, such as
/// the CLI, writes too) and holds an in-process mutex (so this server's own writers queue
/// fairly instead of spinning on SQLite's busy handler).
pub struct Serialized {
    pool: SqlitePool,
    writer: Mutex<()>,
}

impl Serialized {
    fn new(pool: SqlitePool) -> Self {
        Serialized {
            pool,
            writer: Mutex::new(()),
        }
    }

    pub async fn begin(&self) -> Result<Tx<'_>, StoreError> {
        let guard = self.writer.lock().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(Tx { _guard: guard, tx })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// A write transaction; dropping it without [`Tx::commit`] rolls everything back.
pub struct Tx<'a> {
    _guard: MutexGuard<'a, ()>,
    tx: Transaction<'static, Sqlite>,
}

impl Tx<'_> {
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    pub fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

/// Now, as stored: RFC 3339 in UTC with microseconds, so text order is time order.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Where an environment without a `storage` URL keeps its database.
pub fn environment_file(data_dir: &Path, env: &str) -> PathBuf {
    data_dir.join("environments").join(format!("{env}.db"))
}
