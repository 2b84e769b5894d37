//! Opening databases: each one's location connected to (within a time limit, so a file that is
//! no database or a server that does not answer fails with its reason), migrated, and its audit
//! chain readied; or, for verification, opened read-only without creating anything.

use std::path::Path;
use std::sync::Arc;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{ConnectOptions, Executor};
use tokio::sync::Mutex;

use super::chain::Chain;
use super::database::{usable, Connections, Database, OwnConnection};
use super::dialect::{quote, sqlite_options, Connect, Dialect};
use super::sqlite_appender::SqliteAppender;
use super::{audit, system, ChainReader, StoreError, SystemStore, POSTGRES_SYSTEM, SQLITE_SYSTEM};
use crate::audit::AuditKey;
use crate::config::storage::{Kind, Location, ENVIRONMENT_SCHEMA};
use crate::config::{AuditSync, Config, Environment};
use crate::time::Clock;

pub(super) fn create_dir(path: &Path) -> Result<(), StoreError> {
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

pub(super) async fn open_system_with(
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
pub(super) const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why an environment's database could not be opened or brought up to date when last tried:
/// the environment is refused with a 503 saying so, and every other one is served.
#[derive(Debug, Clone)]
pub struct Unavailable {
    /// The database, as errors name it (a file, or a redacted URL).
    pub location: String,
    /// Why it could not be opened, as the database or the driver said it.
    pub cause: String,
}

impl Unavailable {
    pub fn of(location: &Location, e: &StoreError) -> Unavailable {
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

/// The database's own words where it gave some ("file is not a database"), else the driver's,
/// with [`files_exhausted`]'s sentence where that is why.
pub(super) fn cause_of(e: &sqlx::Error) -> String {
    let said = match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        e => e.to_string(),
    };
    format!("{said}{}", files_exhausted(e))
}

/// `": too many open files: …"` when opening failed for want of a file descriptor, else
/// nothing. SQLite says only "unable to open database file" then.
pub(super) fn files_exhausted(e: &sqlx::Error) -> String {
    let emfile = matches!(e, sqlx::Error::Io(io) if io.raw_os_error() == Some(EMFILE));
    match open_files() {
        Files::Exhausted { limit } => format!(": {}", too_many(None, limit)),
        _ if emfile => {
            ": too many open files; raise the limit with ulimit -n, or LimitNOFILE= in systemd"
                .to_string()
        }
        _ => String::new(),
    }
}

/// Whether the open-file limit leaves room for one more database, told without counting the
/// open files before every one (which, for thousands of environments, would cost more than
/// opening them): each database opened since the last count is taken to hold
/// [`PER_DATABASE`] files, and the files are counted again only when that estimate comes
/// within [`SPARE_FILES`] of the limit. Once short, it stays short: nothing it is used for
/// closes files meanwhile.
#[derive(Default)]
pub(super) struct FileBudget {
    /// The files open at the last count, and the databases opened since.
    counted: Option<(u64, u64)>,
    short: Option<String>,
}

impl FileBudget {
    /// Why another database should not be opened: fewer than [`SPARE_FILES`] descriptors
    /// left under the open-file limit, which connections and the listener need. `None`
    /// counts the database as opened.
    pub(super) fn short(&mut self) -> Option<String> {
        if self.short.is_some() {
            return self.short.clone();
        }
        if let (Some((open, since)), Ok((limit, _))) =
            (self.counted, rlimit::getrlimit(rlimit::Resource::NOFILE))
        {
            if open + (since + 1) * PER_DATABASE + SPARE_FILES <= limit {
                self.counted = Some((open, since + 1));
                return None;
            }
        }
        self.short = match open_files() {
            Files::Exhausted { limit } => Some(too_many(None, limit)),
            Files::Open { open, limit } if open + SPARE_FILES > limit => {
                Some(too_many(Some(open), limit))
            }
            Files::Open { open, .. } => {
                self.counted = Some((open, 1));
                None
            }
            Files::Unknown => None,
        };
        self.short.clone()
    }
}

const EMFILE: i32 = 24;

/// Descriptors left for the listener and the first connections, at the least.
const SPARE_FILES: u64 = 32;

/// The most descriptors one database is taken to hold until they are counted: about twice
/// what a SQLite environment holds when it has just been opened (its file, write-ahead log and
/// shared memory, for its first connections).
const PER_DATABASE: u64 = 16;

enum Files {
    Open { open: u64, limit: u64 },
    Exhausted { limit: u64 },
    Unknown,
}

fn open_files() -> Files {
    let Ok((limit, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return Files::Unknown;
    };
    match std::fs::read_dir("/proc/self/fd") {
        Ok(fds) => Files::Open {
            open: fds.count() as u64,
            limit,
        },
        // Counting them takes one more.
        Err(e) if e.raw_os_error() == Some(EMFILE) => Files::Exhausted { limit },
        Err(_) => Files::Unknown,
    }
}

fn too_many(open: Option<u64>, limit: u64) -> String {
    let open = open.map_or_else(|| "all".to_string(), |n| n.to_string());
    format!(
        "too many open files: {open} open, the limit is {limit}; raise the limit with \
         ulimit -n, or LimitNOFILE= in systemd"
    )
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

/// The environments whose database remains (a SQLite file under the data directory, or a
/// schema of the server's PostgreSQL) but that the config no longer has: among them, those a
/// `personal` template once made for someone who is no longer a member, which are kept and
/// served to the template's readers, never deleted. Which template, if any, claims each is
/// for [`Config::add_former`] to tell. A PostgreSQL server that does not answer has none to
/// tell of (opening the server's own database there says what is wrong).
pub async fn former_personal(config: &Config) -> Vec<String> {
    if config.templates.is_empty() {
        return Vec::new();
    }
    let mut found = match config.server.storage.as_deref() {
        Some(url) if Kind::of(url) == Some(Kind::Postgres) => {
            sqlx::any::install_default_drivers();
            match schemas(url, ENVIRONMENT_SCHEMA).await {
                Ok(names) => names,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the environments' schemas, to find former members' personal environments");
                    Vec::new()
                }
            }
        }
        _ => match std::fs::read_dir(config.server.data_dir.join("environments")) {
            Ok(entries) => entries
                .filter_map(|entry| {
                    let name = entry.ok()?.file_name().into_string().ok()?;
                    name.strip_suffix(".db").map(str::to_string)
                })
                .collect(),
            Err(_) => Vec::new(),
        },
    };
    found.retain(|env| config.environment(env).is_none());
    found.sort();
    found
}

/// The names, past `prefix`, of the schemas of the PostgreSQL database at `url` that start
/// with it.
async fn schemas(url: &str, prefix: &str) -> Result<Vec<String>, sqlx::Error> {
    let mut conn = url.parse::<AnyConnectOptions>()?.connect().await?;
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname::text, $1)",
    )
    .bind(prefix)
    .fetch_all(&mut conn)
    .await?;
    let _ = sqlx::Connection::close(conn).await;
    Ok(rows
        .into_iter()
        .filter_map(|(name,)| name.strip_prefix(prefix).map(str::to_string))
        .collect())
}

/// Every audit chain's database, the server's first, opened for reading only, as verification
/// needs them: nothing is created or migrated, and a database that does not exist is an error
/// naming it (for the caller to tell from the checkpoints whether it was ever made).
pub async fn open_read_only(config: &Config) -> Vec<ReadOnly> {
    sqlx::any::install_default_drivers();
    let mut out = vec![ReadOnly {
        chain: SERVER_CHAIN.into(),
        environment: false,
        database: open_existing(&config.system_location()).await,
    }];
    let mut config = config.clone();
    for name in former_personal(&config).await {
        config.add_former(&name);
    }
    let mut envs: Vec<&Environment> = config.environments.iter().collect();
    envs.sort_by(|a, b| a.name.cmp(&b.name));
    for env in envs {
        let database = open_existing(&config.environment_location(env)).await;
        out.push(ReadOnly {
            chain: env.name.clone(),
            environment: true,
            database,
        });
    }
    out
}

/// How to connect to the database at `location`, if it exists (nothing is created).
pub(super) async fn existing(location: &Location) -> Result<Option<Connect>, StoreError> {
    let opened = |source| StoreError::Open {
        location: location.describe(),
        source,
    };
    let Some(connect) = Dialect::of(location)
        .connect_existing(location)
        .map_err(opened)?
    else {
        return Ok(None);
    };
    if let Some(schema) = &connect.schema {
        let mut conn = connect.options.connect().await.map_err(opened)?;
        let exists: Option<(String,)> =
            sqlx::query_as("SELECT nspname::text FROM pg_namespace WHERE nspname = $1")
                .bind(schema)
                .fetch_optional(&mut conn)
                .await
                .map_err(opened)?;
        if exists.is_none() {
            return Ok(None);
        }
    }
    Ok(Some(connect))
}

pub(super) async fn open_existing(location: &Location) -> Result<ChainReader, StoreError> {
    let name = location.describe();
    let opened = |source| StoreError::Open {
        location: name.clone(),
        source,
    };
    let dialect = Dialect::of(location);
    let Some(Connect { options, schema }) = existing(location).await? else {
        return Err(StoreError::Missing {
            location: name.clone(),
        });
    };
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
pub(super) async fn probe(
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

/// Creates the SQLite file `path` with every migration of `migrator` applied, unless another
/// process made it meanwhile; whether it was made here. The migrated file is made once per
/// process and migrator, then copied: the migrations' dozen schema rewrites (SQLite re-reads
/// the whole schema after each `ALTER TABLE`) were most of what a new environment's first
/// request cost. The copy is written beside the file, flushed, and renamed into place, so a
/// crash leaves no file or a whole one.
async fn create_migrated(
    path: &Path,
    migrator: &'static Migrator,
    session: &str,
) -> Result<bool, sqlx::Error> {
    let lock = migration_lock(path).await?;
    if path.exists() {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let migrated = migrated_file(&dir, migrator, session).await?;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut name = path.clone().into_os_string();
        name.push(".new");
        let new = std::path::PathBuf::from(name);
        let mut file = std::fs::File::create(&new)?;
        file.write_all(&migrated)?;
        file.sync_all()?;
        std::fs::rename(&new, &path)?;
        std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()?;
        drop(lock);
        Ok::<_, std::io::Error>(true)
    })
    .await
    .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?
    .map_err(sqlx::Error::Io)
}

/// The contents of a SQLite file with every migration of `migrator` applied, made the first
/// time it is asked for by migrating a scratch file in `dir` (with no flush until the end:
/// nothing depends on it before), then kept.
async fn migrated_file(
    dir: &Path,
    migrator: &'static Migrator,
    session: &str,
) -> Result<Arc<Vec<u8>>, sqlx::Error> {
    /// Each migrator's migrated file, by the migrator's address.
    static MADE: std::sync::Mutex<Vec<(usize, Arc<Vec<u8>>)>> = std::sync::Mutex::new(Vec::new());
    let key = std::ptr::from_ref(migrator) as usize;
    let made = || MADE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, bytes)) = made().iter().find(|(k, _)| *k == key) {
        return Ok(bytes.clone());
    }
    let scratch = dir.join(format!(".migrating-{:016x}.db", rand::random::<u64>()));
    let unflushed = format!("{session}; PRAGMA synchronous = OFF");
    let setup = AnyPoolOptions::new()
        .max_connections(1)
        .after_connect(move |conn, _| {
            let session = unflushed.clone();
            Box::pin(async move {
                conn.execute(session.as_str()).await?;
                Ok(())
            })
        })
        .connect_with(sqlite_options(&scratch, false)?)
        .await?;
    let run = migrator.run(&setup).await;
    let checkpointed = setup.execute("PRAGMA wal_checkpoint(TRUNCATE)").await;
    setup.close().await;
    let read = std::fs::read(&scratch);
    for suffix in ["", "-wal", "-shm"] {
        let mut name = scratch.clone().into_os_string();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
    run.map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
    checkpointed?;
    let bytes = Arc::new(read?);
    made().push((key, bytes.clone()));
    Ok(bytes)
}

/// An exclusive lock on the directory of the SQLite file at `path`, taken by every process
/// that migrates a file there; released when the value is dropped. The directory, not the
/// file: SQLite's own locks on a file are lost when any descriptor of it in the process is
/// closed.
async fn migration_lock(path: &Path) -> Result<std::fs::File, sqlx::Error> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    tokio::task::spawn_blocking(move || {
        let dir = std::fs::File::open(dir)?;
        dir.lock()?;
        Ok::<_, std::io::Error>(dir)
    })
    .await
    .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?
    .map_err(sqlx::Error::Io)
}

/// Opens a database of either kind, applies its migrations (SQLite's, PostgreSQL's) and readies
/// its audit chain for appending under the chain's key ([`audit::open_chain`]).
pub(super) async fn open(
    location: &Location,
    mut chain: Chain,
    migrations: (&'static Migrator, &'static Migrator),
    sync: AuditSync,
    clock: &Clock,
) -> Result<Database, StoreError> {
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
    // A file made here is a copy of one this migrator brought up to date: nothing to run.
    let mut created = false;
    if let Location::File(path) = location {
        if !path.exists() {
            created = create_migrated(path, dialect.migrator(migrations), &session)
                .await
                .map_err(opened)?;
        }
    }
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
    if !created {
        // Held until the migrations are done: another process (an instance on the same data
        // directory) opening the same file at the same moment would otherwise run them too.
        let migrating = match dialect.file(location) {
            Some(path) => Some(migration_lock(&path).await.map_err(opened)?),
            None => None,
        };
        let migrated = dialect.migrator(migrations).run(&pool).await;
        drop(migrating);
        migrated.map_err(|source| StoreError::Migrate {
            location: name.clone(),
            source,
        })?;
    }
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
    let dedicated = |session| OwnConnection {
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
    Ok(Database::new(
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

/// Creates a PostgreSQL schema unless it exists; two instances starting at once may race on
/// it, so the second's failure is forgiven when the schema is there after all.
pub(super) async fn create_schema(
    options: &AnyConnectOptions,
    schema: &str,
) -> Result<(), sqlx::Error> {
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
