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
//! one at a time, and why reads may be answered from memory, is stated once, on [`Database`].
//!
//! Each database's audit chain is keyed with a key of its own, derived from the audit key
//! ([`crate::audit::key`]), and readied when the database is opened: the unkeyed part of a chain
//! from before is sealed, and a chain whose newest record does not match the key stops the
//! server. Appends tell the chain's checkpoint writer the new head, in memory.
//!
//! # Parts
//! - `open`: databases opened, migrated and their chains readied; or opened read-only.
//! - `database`: one database, its writer lock, its transactions and its connections.
//! - `dialect`: every difference between SQLite and PostgreSQL.
//! - `group_commit` and `sqlite_appender`: audit records appended many at a time.
//! - `chain`: a database's audit chain as this server appends to it.
//! - [`environment`], [`change_requests`], [`drift`], [`system`], [`sessions`], [`audit`],
//!   [`notify`]: the domain methods on an environment's states and locks, its change requests
//!   and break-glass grants, its signals and drift reports, the tokens (and where each state
//!   lineage was seen), the dashboard's sign-ins, the audit records, and how far each notify
//!   block has delivered.
//! - `error`: [`StoreError`], and which faults are a full disk or an outage.

pub mod audit;
mod chain;
pub mod change_requests;
mod database;
mod dialect;
pub mod drift;
pub mod environment;
mod error;
mod group_commit;
pub mod notify;
mod open;
pub mod sessions;
mod sqlite_appender;
pub mod system;

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::migrate::Migrator;

use crate::audit::AuditKey;
use crate::config::Config;
use crate::time::Clock;
pub use audit::ChainReader;
use chain::Chain;
pub use database::{Database, Tx};
pub use environment::EnvStore;
pub use error::StoreError;
pub use group_commit::Epoch;
use open::{create_dir, open, open_system_with};
pub use open::{former_personal, open_read_only, open_system, ReadOnly, Unavailable, SERVER_CHAIN};
pub use system::SystemStore;

static SQLITE_ENVIRONMENT: Migrator = sqlx::migrate!("migrations/sqlite/environment");
static SQLITE_SYSTEM: Migrator = sqlx::migrate!("migrations/sqlite/system");
static POSTGRES_ENVIRONMENT: Migrator = sqlx::migrate!("migrations/postgres/environment");
static POSTGRES_SYSTEM: Migrator = sqlx::migrate!("migrations/postgres/system");

/// Every database the server uses. The server-wide one is opened and migrated at start, and
/// so are the declared environments [`AtStart`] names; every other environment's database is
/// opened (created and migrated, the first time) by its first request, and closed again once
/// nobody has used it for a while ([`Stores::close_idle`]) or when its files are needed for
/// another ([`Stores::open_environment`]). So what the server holds grows with the
/// environments in use, not with those it knows.
///
/// Each environment has a slot that is filled once: requests that find it empty wait on the
/// one opening it, so a database is never opened twice; an opening that fails leaves the
/// slot empty and the reason kept, which answers the requests of the next
/// [`RETRY_AFTER`] before one tries again. Each database newly opened is told on
/// [`Stores::subscribe_opened`], for the checkpoint writers to watch its chain; its head's
/// sender is dropped when it closes, which ends that watch.
pub struct Stores {
    pub system: SystemStore,
    environments: std::sync::Mutex<HashMap<String, Slot>>,
    unavailable: std::sync::Mutex<HashMap<String, Down>>,
    /// The environments opened at start, which stay open.
    kept_open: std::collections::HashSet<String>,
    key: AuditKey,
    clock: Clock,
    checkpoint_dir: std::path::PathBuf,
    audit_sync: crate::config::AuditSync,
    opened: tokio::sync::broadcast::Sender<Opened>,
}

/// Which declared environments have their database opened when the stores are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtStart {
    /// Every one (the commands run on the server's host, which read them all).
    Every,
    /// The protected ones (those with an `approval` block): a production database that is
    /// down, or whose audit chain does not verify, is known from the first second, and the
    /// latter stops the server. The others are opened on first use.
    Protected,
}

/// An environment's database, once it is open.
type Slot = Arc<tokio::sync::OnceCell<Arc<EnvStore>>>;

/// Why an environment's database could not be opened, and when to try again.
struct Down {
    why: Unavailable,
    retry_at: std::time::Instant,
}

/// How long an environment whose database could not be opened is refused with the reason
/// found, before a request tries to open it again: a file that is no database, or a database
/// server that does not answer, is not tried by every request (each try can take
/// [`open::OPEN_TIMEOUT`]), and one put right is served again without a restart.
pub const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// A database opened after start: its chain's name and its head as it changes.
pub type Opened = (String, tokio::sync::watch::Receiver<crate::audit::Head>);

/// A database whose audit chain is read or appended to: the server's, or an environment's
/// (held open while this is).
pub enum ChainStore<'a> {
    Server(&'a Database),
    Environment(Arc<EnvStore>),
}

impl std::ops::Deref for ChainStore<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        match self {
            ChainStore::Server(db) => db,
            ChainStore::Environment(store) => &store.db,
        }
    }
}

impl Stores {
    /// Opens the server-wide database and every declared environment's, stamping what they
    /// store with the system clock: what the commands run on the server's host use.
    pub async fn open(config: &Config) -> Result<Stores, StoreError> {
        Stores::open_with(config, Clock::system(), AtStart::Every).await
    }

    /// Opens the server-wide database and the declared environments' `at_start` names,
    /// stamping what is stored with `clock` (the one decisions read).
    pub async fn open_with(
        config: &Config,
        clock: Clock,
        at_start: AtStart,
    ) -> Result<Stores, StoreError> {
        create_dir(&config.server.data_dir.join("environments"))?;
        let key = AuditKey::for_server(&config.server.audit_key_file)?;
        let system = open_system_with(config, &key, &clock).await?;
        let kept_open = config
            .declared()
            .filter(|env| at_start == AtStart::Every || env.protected())
            .map(|env| env.name.clone())
            .collect();
        let stores = Stores {
            system,
            environments: std::sync::Mutex::default(),
            unavailable: std::sync::Mutex::default(),
            kept_open,
            key,
            clock,
            checkpoint_dir: config.server.checkpoint_dir.clone(),
            audit_sync: config.server.audit_sync,
            opened: tokio::sync::broadcast::channel(OPENED_BACKLOG).0,
        };
        let mut files = open::FileBudget::default();
        let now = std::time::Instant::now();
        for env in config.declared() {
            if !stores.kept_open.contains(&env.name) {
                continue;
            }
            let location = config.environment_location(env);
            // One environment's database harms only that environment: the server starts and
            // serves the others. So does one past the open-file limit, rather than taking
            // the descriptors the listener and connections need.
            let opened = match files.short() {
                Some(cause) => Err(StoreError::Exhausted { cause }),
                None => stores.open_database(&env.name, &location).await,
            };
            match opened {
                Ok(store) => {
                    let slot = Slot::new(tokio::sync::OnceCell::new_with(Some(Arc::new(store))));
                    lock_ignoring_poison(&stores.environments).insert(env.name.clone(), slot);
                }
                // A chain that does not verify under this key stops the server, as ever: that
                // is evidence for a person to judge, not a fault to serve around.
                Err(e @ StoreError::Chain { .. }) => return Err(e),
                Err(e) => {
                    stores.set_down(&env.name, &location, &e, now);
                }
            }
        }
        Ok(stores)
    }

    /// Keeps why an environment's database could not be opened, told in one line of the log.
    fn set_down(
        &self,
        name: &str,
        location: &crate::config::storage::Location,
        e: &StoreError,
        now: std::time::Instant,
    ) -> Unavailable {
        let why = Unavailable::of(location, e);
        tracing::error!(
            environment = %name,
            database = %why.location,
            cause = %why.cause,
            "environment unavailable: its database cannot be opened; the other environments are served"
        );
        let down = Down {
            why: why.clone(),
            retry_at: now + RETRY_AFTER,
        };
        lock_ignoring_poison(&self.unavailable).insert(name.to_string(), down);
        why
    }

    /// Why an environment of the config is not served, when the last try to open its
    /// database failed.
    pub fn unavailable(&self, name: &str) -> Option<Unavailable> {
        lock_ignoring_poison(&self.unavailable)
            .get(name)
            .map(|down| down.why.clone())
    }

    /// Every environment whose database could not be opened when last tried, by name.
    pub fn unavailable_environments(&self) -> Vec<(String, Unavailable)> {
        let mut out: Vec<(String, Unavailable)> = lock_ignoring_poison(&self.unavailable)
            .iter()
            .map(|(name, down)| (name.clone(), down.why.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The key the chains are keyed with (checkpoints are signed with a key derived from it).
    pub fn audit_key(&self) -> &AuditKey {
        &self.key
    }

    /// An environment's store, when its database is open.
    pub fn environment(&self, name: &str) -> Option<Arc<EnvStore>> {
        let store = lock_ignoring_poison(&self.environments)
            .get(name)?
            .get()
            .cloned()?;
        store.used_at(self.clock.now());
        Some(store)
    }

    /// An environment's store, its database opened (and created, and migrated) first when it
    /// is not open yet; refused with the reason while an earlier try failed less than
    /// [`RETRY_AFTER`] ago. Short of files for it, the databases nobody holds are closed
    /// first.
    pub async fn open_environment(
        &self,
        config: &Config,
        env: &crate::config::Environment,
    ) -> Result<Arc<EnvStore>, Unavailable> {
        if let Some(store) = self.environment(&env.name) {
            return Ok(store);
        }
        let now = std::time::Instant::now();
        if let Some(down) = lock_ignoring_poison(&self.unavailable).get(&env.name) {
            if now < down.retry_at {
                return Err(down.why.clone());
            }
        }
        let slot = lock_ignoring_poison(&self.environments)
            .entry(env.name.clone())
            .or_default()
            .clone();
        let location = config.environment_location(env);
        let opened = slot
            .get_or_try_init(|| async {
                // Counted again only once closing has freed files.
                if open::FileBudget::default().short().is_some() {
                    self.close_unheld(None).await;
                    if let Some(cause) = open::FileBudget::default().short() {
                        return Err(StoreError::Exhausted { cause });
                    }
                }
                let store = Arc::new(self.open_database(&env.name, &location).await?);
                tracing::info!(environment = %env.name, database = %location.describe(), "opened the environment's database");
                // Nobody listening (no checkpoint writers yet) is no fault.
                let _ = self.opened.send((env.name.clone(), store.db.watch_head()));
                Ok(store)
            })
            .await;
        match opened {
            Ok(store) => {
                lock_ignoring_poison(&self.unavailable).remove(&env.name);
                store.used_at(self.clock.now());
                Ok(store.clone())
            }
            Err(e) => Err(self.set_down(&env.name, &location, &e, now)),
        }
    }

    /// Opens one environment's database, with its migrations, its chain readied.
    async fn open_database(
        &self,
        name: &str,
        location: &crate::config::storage::Location,
    ) -> Result<EnvStore, StoreError> {
        let chain = Chain::new(name, &self.key, &self.checkpoint_dir);
        let migrations = (&SQLITE_ENVIRONMENT, &POSTGRES_ENVIRONMENT);
        let db = open(location, chain, migrations, self.audit_sync, &self.clock).await?;
        Ok(EnvStore::new(db, self.clock.now()))
    }

    /// Closes the databases of the environments nobody holds and nobody has used since
    /// `before` (those opened at start stay open); the names of those closed. A request
    /// that comes for one later opens it again.
    pub async fn close_idle(&self, before: crate::time::Timestamp) -> Vec<String> {
        self.close_unheld(Some(before)).await
    }

    /// [`Stores::close_idle`], or, with no `before`, every one nobody holds.
    async fn close_unheld(&self, before: Option<crate::time::Timestamp>) -> Vec<String> {
        let closing: Vec<(String, Arc<EnvStore>)> = {
            let mut slots = lock_ignoring_poison(&self.environments);
            let idle: Vec<String> = slots
                .iter()
                .filter(|(name, slot)| {
                    // Held by the map alone: no request has it, nor waits for its opening.
                    !self.kept_open.contains(*name)
                        && Arc::strong_count(slot) == 1
                        && slot.get().is_some_and(|store| {
                            Arc::strong_count(store) == 1
                                && before.is_none_or(|before| store.unused_since(before))
                        })
                })
                .map(|(name, _)| name.clone())
                .collect();
            idle.into_iter()
                .filter_map(|name| {
                    let store = slots.remove(&name)?.get()?.clone();
                    Some((name, store))
                })
                .collect()
        };
        let mut closed = Vec::new();
        for (name, store) in closing {
            if let Some(store) = Arc::into_inner(store) {
                store.db.close().await;
                tracing::info!(environment = %name, "closed the environment's database, unused for a while");
                closed.push(name);
            }
        }
        closed
    }

    /// Whether an environment's database is open or exists: a database is made by its
    /// environment's first use. Telling creates nothing.
    pub async fn used(
        &self,
        config: &Config,
        env: &crate::config::Environment,
    ) -> Result<bool, StoreError> {
        if self.environment(&env.name).is_some() {
            return Ok(true);
        }
        Ok(open::existing(&config.environment_location(env))
            .await?
            .is_some())
    }

    /// Tells of each environment database opened from now on.
    pub fn subscribe_opened(&self) -> tokio::sync::broadcast::Receiver<Opened> {
        self.opened.subscribe()
    }

    /// The environment's store, or the system store for requests outside any environment
    /// (or in one whose database is not open).
    pub fn audit_store(&self, environment: Option<&str>) -> ChainStore<'_> {
        match environment.and_then(|e| self.environment(e)) {
            Some(store) => ChainStore::Environment(store),
            None => ChainStore::Server(&self.system.db),
        }
    }

    /// Every audit chain: the server's first, then each open environment's by name (one
    /// whose database is not open has none to check, append to or checkpoint now).
    pub fn chains(&self) -> Vec<(String, ChainStore<'_>)> {
        let mut open: Vec<(String, Arc<EnvStore>)> = lock_ignoring_poison(&self.environments)
            .iter()
            .filter_map(|(name, slot)| Some((name.clone(), slot.get()?.clone())))
            .collect();
        open.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = vec![("server".to_string(), ChainStore::Server(&self.system.db))];
        out.extend(
            open.into_iter()
                .map(|(name, store)| (name, ChainStore::Environment(store))),
        );
        out
    }
}

/// How many openings may wait to be told before the slowest listener misses some.
const OPENED_BACKLOG: usize = 1024;

/// A std mutex whose holders only replace, push or drain whole values: a panic elsewhere
/// cannot leave what it guards half-changed, so a poisoned lock is used as it is.
fn lock_ignoring_poison<T>(value: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    value
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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

    use super::database::OwnConnection;
    use super::*;
    use sqlx::any::AnyConnectOptions;
    use sqlx::{AnyConnection, ConnectOptions, Connection, Executor};
    use tokio::sync::Mutex;

    /// Ends the transaction open on `conn` behind the driver's back, as SQLite does when a
    /// write finds the disk full: the driver still counts it as open, and its own ROLLBACK,
    /// when the transaction is dropped, fails.
    async fn end_behind_the_drivers_back(conn: &mut AnyConnection) {
        conn.execute("ROLLBACK").await.unwrap();
        assert!(conn.is_in_transaction());
    }

    /// The files under `dir` this process holds open (other tests open files of their own).
    fn open_files(dir: &std::path::Path) -> usize {
        let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
            return 0;
        };
        fds.flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter(|target| target.starts_with(dir))
            .count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_environment_database_holds_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = format!(
            "server {{\n  data_dir = {:?}\n}}\nteam \"app\" {{ members = [\"alice\"] }}\n",
            dir.path()
        );
        for i in 0..8 {
            text.push_str(&format!(
                "environment \"e{i}\" {{ owner = \"team:app\" }}\n"
            ));
        }
        let config = Config::parse(&dir.path().join("bulkhead.hcl"), &text).unwrap();
        let stores = Stores::open_with(&config, Clock::system(), AtStart::Protected)
            .await
            .unwrap();
        let before = open_files(dir.path());
        for env in config.declared() {
            let store = stores.open_environment(&config, env).await.unwrap();
            let mut tx = store.begin().await.unwrap();
            tx.conn();
            tx.commit().await.unwrap();
            store.db.newest_position().await.unwrap();
            store.states().await.unwrap();
            // A relaxed commit schedules a flush, whose task holds the connections a while.
            let mut record = crate::audit::Record::new("state:read");
            record.environment = Some(env.name.clone());
            store.db.append_record(&record).await.unwrap();
        }
        assert!(open_files(dir.path()) > before);
        assert_eq!(stores.close_unheld(None).await.len(), 8);
        assert_eq!(open_files(dir.path()), before);
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
        let dedicated = OwnConnection {
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
