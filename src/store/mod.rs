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
//! - [`environment`], [`change_requests`], [`system`], [`sessions`], [`audit`], [`notify`]: the
//!   domain methods on an environment's states and locks, its change requests and break-glass
//!   grants, the tokens, the dashboard's sign-ins, the audit records, and how far each notify
//!   block has delivered.
//! - `error`: [`StoreError`], and which faults are a full disk or an outage.

pub mod audit;
mod chain;
pub mod change_requests;
mod database;
mod dialect;
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

/// Every database the server uses. The server-wide one and each declared environment's are
/// opened and migrated at start; environments whose database could not be are kept apart,
/// with the reason. A personal environment's is opened (created and migrated, the first time)
/// by its first request, and kept open.
///
/// Each environment has a slot that is filled once: requests that find it empty wait on the
/// one opening it, so a database is never opened twice; an opening that fails leaves the
/// slot empty for the next request to try again. Each database newly opened is told on
/// [`Stores::subscribe_opened`], for the checkpoint writers to watch its chain.
pub struct Stores {
    pub system: SystemStore,
    environments: std::sync::Mutex<HashMap<String, Slot>>,
    unavailable: HashMap<String, Unavailable>,
    key: AuditKey,
    clock: Clock,
    checkpoint_dir: std::path::PathBuf,
    audit_sync: crate::config::AuditSync,
    opened: tokio::sync::broadcast::Sender<Opened>,
}

/// An environment's database, once it is open.
type Slot = Arc<tokio::sync::OnceCell<Arc<EnvStore>>>;

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
        let mut files = open::FileBudget::default();
        for env in config.declared() {
            let location = config.environment_location(env);
            let chain = Chain::new(&env.name, &key, &config.server.checkpoint_dir);
            // One environment's database harms only that environment: the server starts and
            // serves the others. So does one past the open-file limit, rather than taking
            // the descriptors the listener and connections need.
            let opened = match files.short() {
                Some(cause) => Err(StoreError::Exhausted { cause }),
                None => open_environment(&location, chain, config.server.audit_sync, &clock).await,
            };
            match opened {
                Ok(store) => {
                    let slot = Slot::new(tokio::sync::OnceCell::new_with(Some(Arc::new(store))));
                    environments.insert(env.name.clone(), slot);
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
            environments: std::sync::Mutex::new(environments),
            unavailable,
            key,
            clock,
            checkpoint_dir: config.server.checkpoint_dir.clone(),
            audit_sync: config.server.audit_sync,
            opened: tokio::sync::broadcast::channel(OPENED_BACKLOG).0,
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

    /// An environment's store, when its database is open.
    pub fn environment(&self, name: &str) -> Option<Arc<EnvStore>> {
        lock_ignoring_poison(&self.environments)
            .get(name)?
            .get()
            .cloned()
    }

    /// A personal environment's store, its database opened (and created, and migrated) first
    /// when it is not open yet. A failure leaves it closed, for the next request to try again.
    pub async fn open_personal(
        &self,
        config: &Config,
        env: &crate::config::Environment,
    ) -> Result<Arc<EnvStore>, StoreError> {
        let slot = lock_ignoring_poison(&self.environments)
            .entry(env.name.clone())
            .or_default()
            .clone();
        let store = slot
            .get_or_try_init(|| async {
                if let Some(cause) = open::FileBudget::default().short() {
                    return Err(StoreError::Exhausted { cause });
                }
                let location = config.environment_location(env);
                let chain = Chain::new(&env.name, &self.key, &self.checkpoint_dir);
                let store = open_environment(&location, chain, self.audit_sync, &self.clock)
                    .await
                    .map(Arc::new)?;
                tracing::info!(environment = %env.name, database = %location.describe(), "opened the environment's database");
                // Nobody listening (no checkpoint writers yet) is no fault.
                let _ = self.opened.send((env.name.clone(), store.db.watch_head()));
                Ok(store)
            })
            .await?;
        Ok(store.clone())
    }

    /// Whether an environment's database is open or exists: a personal environment's does
    /// not until its first use. Telling creates nothing.
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
    /// whose database could not be opened has none to check, append to or checkpoint).
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

/// Opens an environment's database, with its migrations.
async fn open_environment(
    location: &crate::config::storage::Location,
    chain: Chain,
    sync: crate::config::AuditSync,
    clock: &Clock,
) -> Result<EnvStore, StoreError> {
    let migrations = (&SQLITE_ENVIRONMENT, &POSTGRES_ENVIRONMENT);
    let db = open(location, chain, migrations, sync, clock).await?;
    Ok(EnvStore {
        db,
        recent: Default::default(),
    })
}

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
