//! Storage: where states, locks, tokens and audit records live.
//!
//! Each environment has a database of its own (by default a SQLite file under the data
//! directory, so production's file is separate from everyone else's; or a schema of its own in
//! PostgreSQL), holding its state versions, its locks and its audit chain; a state write and its
//! audit record commit in one transaction. The server-wide database holds tokens and the audit
//! chain of requests that name no known environment. This module stores and fetches; it
//! decides nothing: callers check permissions and write rules before they write.
//!
//! Both database kinds run the same SQL through sqlx's `Any` driver (`$N` placeholders, which
//! SQLite accepts too); each kind has its own migrations. How writes to one database happen
//! one at a time, and why reads may be answered from memory, is stated once, on [`Serialized`].
//!
//! Each database's audit chain is keyed with a key of its own, derived from the audit key
//! ([`crate::audit::key`]), and readied when the database is opened: the unkeyed part of a chain
//! from before is sealed, and a chain whose newest record does not match the key stops the
//! server. Appends tell the chain's checkpoint writer the new head, in memory.

pub mod audit;
pub mod changes;
mod dialect;
pub mod environment;
mod group_commit;
mod sqlite_appender;
pub mod system;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Executor, Transaction};
use tokio::sync::{oneshot, Mutex, MutexGuard};

use crate::audit::{AuditKey, ChainKey, ChainProblem, Head, Record};
use crate::config::storage::Location;
use crate::config::{AuditSync, Config, Environment};
use crate::time::Clock;
pub use audit::ChainReader;
use dialect::{quote, Connect, Dialect};
pub use environment::EnvStore;
pub use group_commit::Epoch;
use group_commit::GroupCommit;
use sqlite_appender::SqliteAppender;
pub use system::SystemStore;

static SQLITE_ENVIRONMENT: Migrator = sqlx::migrate!("migrations/sqlite/environment");
static SQLITE_SYSTEM: Migrator = sqlx::migrate!("migrations/sqlite/system");
static POSTGRES_ENVIRONMENT: Migrator = sqlx::migrate!("migrations/postgres/environment");
static POSTGRES_SYSTEM: Migrator = sqlx::migrate!("migrations/postgres/system");

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
        const ENOSPC: i32 = 28;
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
fn sqlx_outage(e: &sqlx::Error) -> bool {
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

fn create_dir(path: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(path).map_err(|source| StoreError::DataDir {
        path: path.to_path_buf(),
        source,
    })
}

/// The name of the server-wide database's audit chain.
pub const SERVER_CHAIN: &str = "server";

/// Opens only the server-wide database (tokens), for commands that need nothing else.
pub async fn open_system(config: &Config) -> Result<SystemStore, StoreError> {
    create_dir(&config.server.data_dir)?;
    let key = AuditKey::for_server(&config.server.audit_key_file)?;
    open_system_with(config, &key, &Clock::system()).await
}

async fn open_system_with(
    config: &Config,
    key: &AuditKey,
    clock: &Clock,
) -> Result<SystemStore, StoreError> {
    let migrations = (&SQLITE_SYSTEM, &POSTGRES_SYSTEM);
    let chain = Chain::new(SERVER_CHAIN, key, &config.server.checkpoint_dir);
    let db = open(
        &config.system_location(),
        chain,
        migrations,
        config.server.audit_sync,
        clock,
    )
    .await?;
    Ok(SystemStore {
        db,
        recent: system::RecentTokens::new(config.server.token_cache, clock.clone()),
    })
}

/// How long opening one database may take before it is given up as unopenable: long enough
/// for a PostgreSQL server across a network, far shorter than the pool's 30 s, which a file
/// that is not a database would otherwise wait out in full.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// An environment whose database could not be opened or brought up to date when the server
/// started: it is refused with a 503 saying so, and every other environment is served.
#[derive(Debug, Clone)]
pub struct Unavailable {
    /// The database, as errors name it (a file, or a redacted URL).
    pub location: String,
    /// Why it could not be opened, as the database or the driver said it.
    pub cause: String,
}

impl Unavailable {
    fn of(location: &Location, e: &StoreError) -> Unavailable {
        let cause = match e {
            StoreError::Open { source, .. } => cause_of(source),
            StoreError::Migrate {
                source: sqlx::migrate::MigrateError::Execute(source),
                ..
            } => cause_of(source),
            StoreError::Database(source) => cause_of(source),
            e => e.to_string(),
        };
        Unavailable {
            location: location.describe(),
            cause,
        }
    }

    /// The sentence a request to the environment is refused with.
    pub fn sentence(&self, environment: &str) -> String {
        format!(
            "environment {environment} is unavailable: its database {} cannot be opened ({}); \
             the other environments are served",
            self.location, self.cause
        )
    }
}

/// The database's own words where it gave some ("file is not a database"), else the driver's.
fn cause_of(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        e => e.to_string(),
    }
}

/// Every database the server uses, opened and migrated; environments whose database could
/// not be are kept apart, with the reason.
pub struct Stores {
    pub system: SystemStore,
    environments: HashMap<String, EnvStore>,
    unavailable: HashMap<String, Unavailable>,
    key: AuditKey,
    clock: Clock,
}

impl Stores {
    /// Opens every database, stamping what it stores with the system clock.
    pub async fn open(config: &Config) -> Result<Stores, StoreError> {
        Stores::open_with(config, Clock::system()).await
    }

    /// [`Stores::open`], stamping what is stored with `clock` (the one decisions read).
    pub async fn open_with(config: &Config, clock: Clock) -> Result<Stores, StoreError> {
        create_dir(&config.server.data_dir.join("environments"))?;
        let key = AuditKey::for_server(&config.server.audit_key_file)?;
        let system = open_system_with(config, &key, &clock).await?;
        let mut environments = HashMap::new();
        let mut unavailable = HashMap::new();
        for env in &config.environments {
            let location = config.environment_location(env);
            let migrations = (&SQLITE_ENVIRONMENT, &POSTGRES_ENVIRONMENT);
            let chain = Chain::new(&env.name, &key, &config.server.checkpoint_dir);
            // One environment's database harms only that environment: the server starts and
            // serves the others.
            match open(
                &location,
                chain,
                migrations,
                config.server.audit_sync,
                &clock,
            )
            .await
            {
                Ok(db) => {
                    let recent = Default::default();
                    environments.insert(env.name.clone(), EnvStore { db, recent });
                }
                // A chain that does not verify under this key stops the server, as ever: that
                // is evidence for a person to judge, not a fault to serve around.
                Err(e @ StoreError::Chain { .. }) => return Err(e),
                Err(e) => {
                    let down = Unavailable::of(&location, &e);
                    tracing::error!(
                        environment = %env.name,
                        database = %down.location,
                        cause = %down.cause,
                        "environment unavailable: its database cannot be opened; the other environments are served"
                    );
                    unavailable.insert(env.name.clone(), down);
                }
            }
        }
        Ok(Stores {
            system,
            environments,
            unavailable,
            key,
            clock,
        })
    }

    /// Why an environment of the config is not served, if it is not.
    pub fn unavailable(&self, name: &str) -> Option<&Unavailable> {
        self.unavailable.get(name)
    }

    /// Every environment that is not served, by name.
    pub fn unavailable_environments(&self) -> Vec<(&str, &Unavailable)> {
        let mut out: Vec<(&str, &Unavailable)> = self
            .unavailable
            .iter()
            .map(|(name, down)| (name.as_str(), down))
            .collect();
        out.sort_by_key(|(name, _)| *name);
        out
    }

    /// The key the chains are keyed with (checkpoints are signed with a key derived from it).
    pub fn audit_key(&self) -> &AuditKey {
        &self.key
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

    /// Every audit chain: the server's first, then each served environment's by name (one
    /// whose database could not be opened has none to check, append to or checkpoint).
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

/// One audit chain's database, opened for reading only.
pub struct ReadOnly {
    /// The chain's name: [`SERVER_CHAIN`] or an environment's.
    pub chain: String,
    /// An environment's database (which holds states and changes besides its chain).
    pub environment: bool,
    /// The database, or why it cannot be read (one that does not exist is not created).
    pub database: Result<ChainReader, StoreError>,
}

/// Every audit chain's database, the server's first, opened for reading only, as verification
/// needs them: nothing is created or migrated, and a database that does not exist is an error
/// naming it.
pub async fn open_read_only(config: &Config) -> Vec<ReadOnly> {
    sqlx::any::install_default_drivers();
    let mut out = vec![ReadOnly {
        chain: SERVER_CHAIN.into(),
        environment: false,
        database: open_existing(&config.system_location()).await,
    }];
    let mut envs: Vec<&Environment> = config.environments.iter().collect();
    envs.sort_by(|a, b| a.name.cmp(&b.name));
    for env in envs {
        out.push(ReadOnly {
            chain: env.name.clone(),
            environment: true,
            database: open_existing(&config.environment_location(env)).await,
        });
    }
    out
}

async fn open_existing(location: &Location) -> Result<ChainReader, StoreError> {
    let name = location.describe();
    let opened = |source| StoreError::Open {
        location: name.clone(),
        source,
    };
    let dialect = Dialect::of(location);
    let Some(Connect { options, schema }) = dialect.connect_existing(location).map_err(opened)?
    else {
        return Err(StoreError::Missing {
            location: name.clone(),
        });
    };
    if let Some(schema) = &schema {
        let mut conn = options.connect().await.map_err(opened)?;
        let exists: Option<(String,)> =
            sqlx::query_as("SELECT nspname::text FROM pg_namespace WHERE nspname = $1")
                .bind(schema)
                .fetch_optional(&mut conn)
                .await
                .map_err(opened)?;
        if exists.is_none() {
            return Err(StoreError::Missing {
                location: name.clone(),
            });
        }
    }
    let session = schema.map(|schema| {
        format!(
            "SET search_path TO {}; SET default_transaction_read_only = on",
            quote(&schema)
        )
    });
    probe(dialect, &options, session.as_deref().unwrap_or("SELECT 1"))
        .await
        .map_err(opened)?;
    AnyPoolOptions::new()
        .max_connections(2)
        .after_connect(move |conn, _| {
            let session = session.clone();
            Box::pin(async move {
                if let Some(session) = session {
                    conn.execute(session.as_str()).await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map(|pool| ChainReader { pool })
        .map_err(opened)
}

/// Connects once, runs `session` and reads the schema, within [`OPEN_TIMEOUT`]: a file that is
/// not a database, or a server that does not answer, fails here with its reason.
async fn probe(
    dialect: Dialect,
    options: &AnyConnectOptions,
    session: &str,
) -> Result<(), sqlx::Error> {
    let attempt = async {
        let mut conn = options.connect().await?;
        conn.execute(session).await?;
        if dialect.probes_schema() {
            conn.execute("SELECT count(*) FROM sqlite_master").await?;
        }
        sqlx::Connection::close(conn).await
    };
    match tokio::time::timeout(OPEN_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s", OPEN_TIMEOUT.as_secs()),
        ))),
    }
}

/// Opens a database of either kind, applies its migrations (SQLite's, PostgreSQL's) and readies
/// its audit chain for appending under the chain's key ([`audit::open_chain`]).
async fn open(
    location: &Location,
    mut chain: Chain,
    migrations: (&'static Migrator, &'static Migrator),
    sync: AuditSync,
    clock: &Clock,
) -> Result<Serialized, StoreError> {
    sqlx::any::install_default_drivers();
    let name = location.describe();
    let opened = |source| StoreError::Open {
        location: name.clone(),
        source,
    };
    let dialect = Dialect::of(location);
    chain.location = name.clone();
    let Connect { options, schema } = dialect.connect(location).map_err(opened)?;
    let session = dialect.session(schema.as_deref());
    // The pool retries a connection its session statement failed on until its timeout; one
    // connection made first fails at once, with the database's reason.
    probe(dialect, &options, &session).await.map_err(opened)?;
    if let Some(schema) = &schema {
        create_schema(&options, schema).await.map_err(opened)?;
    }
    let pool_session = session.clone();
    let pool = AnyPoolOptions::new()
        .max_connections(dialect.max_connections())
        .test_before_acquire(dialect.tests_connections())
        .after_connect(move |conn, _| {
            let session = pool_session.clone();
            Box::pin(async move {
                conn.execute(session.as_str()).await?;
                Ok(())
            })
        })
        .after_release(|conn, _| Box::pin(async move { Ok(usable(conn).await) }))
        .connect_with(options.clone())
        .await
        .map_err(opened)?;
    // Group commits have a connection of their own; with audit_sync = "writes", one that
    // commits without waiting for the disk.
    let relaxed = sync == AuditSync::Writes;
    let records_session = if relaxed {
        dialect.relaxed(&session)
    } else {
        session.clone()
    };
    dialect
        .migrator(migrations)
        .run(&pool)
        .await
        .map_err(|source| StoreError::Migrate {
            location: name.clone(),
            source,
        })?;
    {
        let conn = &mut *pool.acquire().await?;
        match audit::open_chain(conn, &chain.key, chain.checkpointed).await? {
            Ok(crate::audit::Opened::Intact) => {}
            Ok(crate::audit::Opened::Sealed(n)) => tracing::info!(
                chain = %chain.name,
                records = n,
                "verified and sealed the audit records written before records were keyed"
            ),
            Err(problem) => {
                return Err(StoreError::Chain {
                    location: name,
                    problem,
                })
            }
        }
        chain.appended(audit::head(conn).await?);
    }
    let dedicated = |session| Dedicated {
        options: options.clone(),
        session,
        conn: Mutex::default(),
    };
    let lookups = dedicated(session);
    let records = dedicated(records_session);
    // Where records are flushed later, group commits on a SQLite file are made on the calling
    // thread (see `sqlite_appender`); an in-memory database has no file to share.
    let appender = relaxed
        .then(|| dialect.file(location))
        .flatten()
        .map(|path| SqliteAppender::open(&path))
        .transpose()
        .map_err(|source| StoreError::OpenSqlite {
            location: location.describe(),
            source,
        })?;
    Ok(Serialized::new(
        pool,
        Connections {
            lookups,
            records,
            appender,
            relaxed,
        },
        Arc::new(chain),
        dialect,
        clock.clone(),
    ))
}

/// One database's audit chain, as its appenders share it: its name, its key, and the newest
/// head appended by this server (which checkpoints are written from).
pub(crate) struct Chain {
    pub name: String,
    pub key: ChainKey,
    /// The database, as errors name it.
    location: String,
    /// The disk under the database was found full, and no write has succeeded since: the
    /// episode is logged once, when it begins, and once when it ends.
    full: std::sync::atomic::AtomicBool,
    /// This server has written checkpoints of it (to `checkpoint_dir`).
    checkpointed: bool,
    head: tokio::sync::watch::Sender<Head>,
}

impl Chain {
    fn new(name: &str, key: &AuditKey, checkpoint_dir: &Path) -> Chain {
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

/// A connection of its own, outside the pool (which tests a connection with a round trip
/// each time it is returned), for short work that runs one at a time anyway. It is opened on
/// first use, and again after a failure.
pub(super) struct Dedicated {
    options: AnyConnectOptions,
    session: String,
    conn: Mutex<Option<AnyConnection>>,
}

impl Dedicated {
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
async fn usable(conn: &mut AnyConnection) -> bool {
    use sqlx::Connection;
    if !conn.is_in_transaction() {
        return true;
    }
    conn.ping().await.is_ok() && !conn.is_in_transaction()
}

/// The dedicated connections of one database.
struct Connections {
    /// For the hot reads of every request (the newest version of a state).
    lookups: Dedicated,
    /// For group commits of audit records.
    records: Dedicated,
    /// For group commits of audit records on SQLite, when they are flushed later.
    appender: Option<SqliteAppender>,
    /// `records` commits without waiting for the disk (`audit_sync = "writes"`).
    relaxed: bool,
}

/// Creates a PostgreSQL schema unless it exists; two instances starting at once may race on
/// it, so the second's failure is forgiven when the schema is there after all.
async fn create_schema(options: &AnyConnectOptions, schema: &str) -> Result<(), sqlx::Error> {
    let mut conn = options.connect().await?;
    let created = conn
        .execute(format!("CREATE SCHEMA IF NOT EXISTS {}", quote(schema)).as_str())
        .await;
    if let Err(e) = created {
        let exists: Option<(String,)> =
            sqlx::query_as("SELECT nspname::text FROM pg_namespace WHERE nspname = $1")
                .bind(schema)
                .fetch_optional(&mut conn)
                .await?;
        if exists.is_none() {
            return Err(e);
        }
    }
    Ok(())
}

/// One database, and the rule that keeps what this server remembers of it true: **every write
/// goes through the writer lock**. This struct is the only way to a connection (its pool and
/// its transactions' connections are private to the store), so the rule cannot be bypassed.
///
/// - **The writer lock.** A write transaction ([`Serialized::begin`]) first takes `writer`, an
///   in-process mutex (so this server's writers queue fairly instead of spinning), then the
///   database's own: `BEGIN IMMEDIATE` on SQLite (so it cannot fail half-way on a lock upgrade
///   when another process, such as the CLI, writes too), a transaction advisory lock named
///   after the schema on PostgreSQL (so writers on every server instance sharing the database
///   queue on it, and a lock check and the grant that follows it cannot interleave with
///   another instance's).
/// - **Group commit.** An audit record written alone (a read, a refusal) is queued; whoever
///   gets the writer lock next appends everything queued by then in one statement and one
///   commit ([`group_commit`]), in a task of its own (so a request that goes away cannot cut a
///   commit short), and answers every waiter before it lets the lock go. Between commits the
///   chain's head is remembered, so an append needs no read of it; the primary key refuses an
///   append after a head that is no longer the newest.
/// - **Reads answered from memory.** While the head stays known, nothing was written to the
///   database but these group commits, since every other write (here or in another process)
///   appends its record in its own transaction. That span is an [`Epoch`]: it ends when a
///   write transaction begins here, and when an append finds the chain grown by someone else.
///   A state's newest version read in an epoch is still the newest while the epoch lasts, so
///   a read may be answered from memory, and its record commits only in that epoch
///   ([`EnvStore::append_read`]): refused as stale otherwise, before anything of it is stored.
///   This holds only because every write goes through the writer lock.
///
/// Reads other than those run on the pool beside the writer. On SQLite with
/// `audit_sync = "writes"`, the INSERT of a group commit runs on the calling thread, through
/// rusqlite ([`sqlite_appender`]), still under the writer lock.
pub struct Serialized {
    pool: AnyPool,
    connections: Arc<Connections>,
    chain: Arc<Chain>,
    /// How this kind of database is written and flushed.
    dialect: Dialect,
    writer: Arc<Mutex<()>>,
    commits: Arc<GroupCommit>,
    /// What every time this database stores is read from.
    clock: Clock,
}

impl Serialized {
    fn new(
        pool: AnyPool,
        connections: Connections,
        chain: Arc<Chain>,
        dialect: Dialect,
        clock: Clock,
    ) -> Self {
        Serialized {
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

    /// [`Serialized::append_record`], but with `only_in`, only if nothing was written to this
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
            let target = group_commit::Target {
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
                commits.commit_queued(&target).await;
                drop(guard);
            });
        }
        self.answered(outcome.await)
    }

    fn answered(
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
    fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The connection for the reads every request makes.
    pub(super) fn lookups(&self) -> &Dedicated {
        &self.connections.lookups
    }
}

/// A std mutex whose holders only replace, push or drain whole values: a panic elsewhere
/// cannot leave what it guards half-changed, so a poisoned lock is used as it is.
fn lock_ignoring_poison<T>(value: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    value
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A write transaction; dropping it without [`Tx::commit`] rolls everything back.
pub struct Tx<'a> {
    _guard: MutexGuard<'a, ()>,
    tx: Transaction<'static, Any>,
    chain: &'a Chain,
    clock: &'a Clock,
    /// The chain's head after the records appended in this transaction.
    appended: Option<Head>,
    /// The versions written in this transaction: (state, version, sha256).
    written: Vec<(String, i64, String)>,
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

    fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// The stores of a config with one SQLite environment `dev` in a fresh data directory;
    /// `server_lines` go into its `server` block.
    pub(crate) async fn open_dev(server_lines: &str) -> (tempfile::TempDir, Stores) {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "server {{\n  data_dir = {:?}\n  {server_lines}\n}}\n\
             team \"app\" {{ members = [\"alice\"] }}\n\
             environment \"dev\" {{ owner = \"team:app\" }}\n",
            dir.path()
        );
        let config = Config::parse(&dir.path().join("bulkhead.hcl"), &text).unwrap();
        let stores = Stores::open(&config).await.unwrap();
        (dir, stores)
    }

    use super::*;
    use sqlx::Connection;

    /// Ends the transaction open on `conn` behind the driver's back, as SQLite does when a
    /// write finds the disk full: the driver still counts it as open, and its own ROLLBACK,
    /// when the transaction is dropped, fails.
    async fn end_behind_the_drivers_back(conn: &mut AnyConnection) {
        conn.execute("ROLLBACK").await.unwrap();
        assert!(conn.is_in_transaction());
    }

    #[tokio::test]
    async fn a_pooled_connection_whose_transaction_sqlite_ended_is_not_reused() {
        let (_dir, stores) = open_dev("").await;
        let env = stores.environment("dev").unwrap();
        {
            let mut tx = env.begin().await.unwrap();
            end_behind_the_drivers_back(tx.conn()).await;
        }
        // More transactions than the pool has connections: each connection is taken.
        for _ in 0..8 {
            let tx = env.begin().await.unwrap();
            tx.commit().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_dedicated_connection_whose_transaction_sqlite_ended_is_replaced() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("x.db"))
            .create_if_missing(true)
            .to_url_lossy();
        let dedicated = Dedicated {
            options: AnyConnectOptions::from_url(&url).unwrap(),
            session: "PRAGMA journal_mode = WAL".into(),
            conn: Mutex::default(),
        };
        let failed = dedicated
            .run(async |conn: &mut AnyConnection| {
                let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                end_behind_the_drivers_back(&mut tx).await;
                // A statement the database refuses, as the write that found the disk full was.
                tx.execute("INSERT INTO nowhere VALUES (1)").await?;
                Ok(())
            })
            .await;
        assert!(matches!(
            failed,
            Err(StoreError::Database(sqlx::Error::Database(_)))
        ));
        dedicated
            .run(async |conn: &mut AnyConnection| {
                assert!(!conn.is_in_transaction());
                let tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                tx.commit().await?;
                Ok(())
            })
            .await
            .unwrap();
    }
}
