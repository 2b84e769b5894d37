//! Reads: a state's newest content, one of its versions, the difference between two, its
//! history; the changes and break-glass grants of the environments a caller may read; the
//! status of every environment. Nothing here writes but the audit record of a read served
//! from memory.

use std::net::IpAddr;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};

use super::{OpError, Server, StateRequest, DONE};
use crate::audit::{Outcome, Record};
use crate::changes::{self, Change, ChangeId, Listing, Readiness};
use crate::config::Environment;
use crate::history::{self, Diff, EnvironmentStatus, HistoryEntry, LockStatus, StateStatus};
use crate::identity::Caller;
use crate::policy::Action;
use crate::store::environment::VersionMeta;
use crate::store::StoreError;

/// The most diverged changes the status of one environment names.
const DIVERGED_SHOWN: i64 = 20;

/// A state's newest content, as the read found it.
pub enum Content {
    /// Served from memory; its record, naming the version, is committed already.
    Remembered(Bytes),
    /// Read from the database as it streams (checked against its SHA-256 on the way); its
    /// record, naming the version, is the edge's to write.
    Stream {
        /// Its length, known before it streams.
        size: u64,
        /// Ends in [`OpError::Damaged`], short of `size`, when the content does not match.
        chunks: Chunks,
    },
    /// No state yet.
    Nothing,
}

/// A content's chunks as they are read from the store.
pub type Chunks = BoxStream<'static, Result<Bytes, OpError>>;

/// GET: the newest content of a state.
pub async fn state(req: &StateRequest<'_>, record: &mut Record) -> Result<Content, OpError> {
    req.require(record, Action::StateRead)?;
    // From memory, when nothing can have been written since the newest version was read: the
    // record, naming the version served, is committed only if so.
    if let Some((version, content, epoch)) = req.store.remembered_latest(req.name.as_str()) {
        record.version = Some(version);
        record.decision = Outcome::Allow;
        record.status = Some(DONE);
        match req.store.append_read(record, epoch).await {
            Ok(true) => return Ok(Content::Remembered(content)),
            // Written meanwhile: read from the database.
            Ok(false) => record.version = None,
            Err(e) => return Err(OpError::audit_unwritable(e)),
        }
    }
    Ok(match req.store.latest_stream(req.name.as_str()).await? {
        Some((meta, chunks)) => {
            record.version = Some(meta.version);
            Content::Stream {
                size: u64::try_from(meta.size).unwrap_or(0),
                chunks: chunks.map(|chunk| chunk.map_err(OpError::from)).boxed(),
            }
        }
        None => Content::Nothing,
    })
}

/// What a history request asks for.
#[derive(Debug, Clone, Copy)]
pub enum Past {
    /// The content of one version.
    Version(i64),
    /// What changed from one version to another (both needed).
    Diff { from: Option<i64>, to: Option<i64> },
    /// Every version, with what each changed.
    Versions,
}

impl Past {
    /// The action its audit record names.
    pub fn action(self) -> &'static str {
        match self {
            Past::Version(_) => Action::StateRead.as_str(),
            Past::Diff { .. } => "state:diff",
            Past::Versions => "state:history",
        }
    }
}

/// What a history request answers.
pub enum Answer {
    Content(Vec<u8>),
    Diff(Diff),
    Versions(Vec<HistoryEntry>),
}

/// GET on a state's history: a version, a diff, or the versions.
pub async fn past(
    req: &StateRequest<'_>,
    record: &mut Record,
    past: Past,
) -> Result<Answer, OpError> {
    req.require(record, Action::StateRead)?;
    let state = req.name.as_str();
    match past {
        Past::Version(n) => {
            let (meta, content) = version(req, n).await?;
            record.version = Some(meta.version);
            let content = content.ok_or_else(|| {
                OpError::NotFound(format!(
                    "version {n} of {state} records a deletion: it has no content"
                ))
            })?;
            Ok(Answer::Content(content))
        }
        Past::Diff { from, to } => {
            let (Some(a), Some(b)) = (from, to) else {
                return Err(OpError::BadRequest(
                    "a diff needs both ?from=A and ?to=B".into(),
                ));
            };
            let (_, before) = version(req, a).await?;
            let (_, after) = version(req, b).await?;
            Ok(Answer::Diff(history::diff(
                before.as_deref(),
                after.as_deref(),
            )))
        }
        Past::Versions => versions(req).await.map(Answer::Versions),
    }
}

async fn versions(req: &StateRequest<'_>) -> Result<Vec<HistoryEntry>, OpError> {
    let (state, store) = (req.name.as_str(), &req.store);
    let mut entries = Vec::new();
    // Each version's instances, compared with the one before; `None` when unreadable.
    let no_state = || Some("{}".to_string());
    let mut previous = no_state();
    for meta in store.history(state).await? {
        let current = match (&meta.resources, meta.deleted) {
            (_, true) => no_state(),
            (Some(taken), _) => Some(taken.clone()),
            // Written before fingerprints were taken at write time. A damaged one is listed
            // as unreadable, so the history still shows where to roll back to.
            (None, false) => match store.version(state, meta.version).await {
                Err(StoreError::Damaged { .. }) => None,
                read => read?
                    .and_then(|(_, content)| content)
                    .and_then(|content| history::fingerprint(&content)),
            },
        };
        let (added, changed, removed) = match (&previous, &current) {
            (Some(before), Some(after)) => history::count_changes(before, after),
            _ => None,
        }
        .unwrap_or_default();
        entries.push(HistoryEntry {
            change: meta
                .change_number
                .map(|number| ChangeId::new(&req.env.name, number).to_string()),
            meta,
            added,
            changed,
            removed,
        });
        previous = current;
    }
    Ok(entries)
}

/// Version `n` of the request's state and its content (`None` for a deletion).
pub(super) async fn version(
    req: &StateRequest<'_>,
    n: i64,
) -> Result<(VersionMeta, Option<Vec<u8>>), OpError> {
    req.store
        .version(req.name.as_str(), n)
        .await?
        .ok_or_else(|| OpError::NotFound(format!("{} has no version {n}", req.name.as_str())))
}

/// The changes (of one status, when asked) and the open break-glass grants of `environment`,
/// or of every environment `caller` may read.
pub async fn changes(
    server: &Server,
    caller: &Caller,
    source_ip: IpAddr,
    record: &mut Record,
    environment: Option<&str>,
    status: Option<changes::Status>,
) -> Result<Listing, OpError> {
    let envs = match environment {
        Some(name) => {
            let (env, store) = server.environment(name, caller, source_ip).await?;
            server.require(caller, record, Action::StateRead, env, source_ip)?;
            vec![(env, store)]
        }
        None => server
            .config
            .environments
            .iter()
            .filter(|env| server.may_read(caller, env, source_ip))
            .filter_map(|env| Some((env, server.stores.environment(&env.name)?)))
            .collect(),
    };
    let mut listing = Listing::default();
    let now = server.clock.now().as_datetime();
    for (env, store) in envs {
        listing.changes.extend(
            store
                .changes(&env.name, env.required_approvals(), status)
                .await?
                .into_iter()
                .map(|c| c.at(now)),
        );
        for row in store.open_breakglass().await? {
            listing.breakglass.push(row.grant(&env.name));
        }
    }
    Ok(listing)
}

/// The open break-glass grants of every environment `caller` may read: what the dashboard's
/// banner shows.
pub async fn open_breakglass(
    server: &Server,
    caller: &Caller,
    source_ip: IpAddr,
) -> Result<Vec<changes::BreakglassGrant>, OpError> {
    let mut grants = Vec::new();
    for env in &server.config.environments {
        if env.breakglass.is_none() || !server.may_read(caller, env, source_ip) {
            continue;
        }
        if let Some(store) = server.stores.environment(&env.name) {
            for row in store.open_breakglass().await? {
                grants.push(row.grant(&env.name));
            }
        }
    }
    Ok(grants)
}

/// One change, by its id.
pub async fn change(
    server: &Server,
    caller: &Caller,
    source_ip: IpAddr,
    record: &mut Record,
    text: &str,
) -> Result<Change, OpError> {
    let named = server.named(caller, source_ip, record, text).await?;
    server.require(caller, record, Action::StateRead, named.env, source_ip)?;
    let change = named.read(record).await?;
    Ok(change.at(server.clock.now().as_datetime()))
}

/// Every environment `caller` may read: its states and their locks, its open changes, its
/// open break-glass grants, or why it is not served.
pub async fn status(
    server: &Server,
    caller: &Caller,
    source_ip: IpAddr,
) -> Result<Vec<EnvironmentStatus>, OpError> {
    let mut out = Vec::new();
    for env in &server.config.environments {
        if server.may_read(caller, env, source_ip) {
            out.push(environment_status(server, caller, source_ip, env).await?);
        }
    }
    Ok(out)
}

/// The status of environment `name`, refused unless `caller` may read it.
pub async fn environment(
    server: &Server,
    caller: &Caller,
    source_ip: IpAddr,
    record: &mut Record,
    name: &str,
) -> Result<EnvironmentStatus, OpError> {
    let env = server.readable(caller, source_ip, record, name)?;
    environment_status(server, caller, source_ip, env).await
}

async fn environment_status(
    server: &Server,
    caller: &Caller,
    source_ip: IpAddr,
    env: &Environment,
) -> Result<EnvironmentStatus, OpError> {
    let nothing = |unavailable| EnvironmentStatus {
        environment: env.name.clone(),
        owner: env.owner.to_string(),
        protected: env.protected(),
        states: Vec::new(),
        pending_changes: Vec::new(),
        approved_changes: Vec::new(),
        diverged_changes: Vec::new(),
        breakglass: Vec::new(),
        lock_lease_seconds: env.lock_lease.map(|l| l.as_secs()),
        write_from: networks(&env.write_from),
        read_from: networks(&env.read_from),
        unavailable,
    };
    // Looking creates no database for an environment nobody has used.
    if server.stores.unavailable(&env.name).is_none()
        && !server.stores.used(&server.config, env).await?
    {
        return Ok(nothing(None));
    }
    let store = match server.environment(&env.name, caller, source_ip).await {
        Ok((_, store)) => store,
        Err(OpError::DatabaseDown(sentence)) => return Ok(nothing(Some(sentence))),
        Err(e) => return Err(e),
    };
    let now = server.clock.now().as_datetime();
    let mut states = Vec::new();
    for meta in store.states().await? {
        let lock = store.held_lock(&meta.state).await?.map(|l| LockStatus {
            lease_ran_out: l.lease_ran_out(env.lock_lease, now),
            active_at: Some(l.last_active().to_string()),
            who: serde_json::from_str::<crate::lock::LockInfo>(&l.info)
                .ok()
                .map(|info| crate::text::printable(&info.who).into_owned())
                .filter(|who| !who.is_empty()),
            branch: l.branch,
            id: l.lock_id,
            principal: l.principal,
            operation: l.operation,
            since: l.created_at,
        });
        states.push(StateStatus {
            name: meta.state,
            version: meta.version,
            serial: meta.serial,
            principal: meta.principal,
            updated_at: meta.created_at,
            deleted: meta.deleted,
            lock,
        });
    }
    let open = store
        .changes(
            &env.name,
            env.required_approvals(),
            Some(changes::Status::Open),
        )
        .await?;
    let (approved, pending): (Vec<_>, Vec<_>) = open
        .into_iter()
        .partition(|c| c.readiness(now) == Readiness::Approved);
    let diverged = store
        .diverged_changes(DIVERGED_SHOWN)
        .await?
        .into_iter()
        .map(|n| ChangeId::new(&env.name, n).to_string())
        .collect();
    let breakglass = store
        .open_breakglass()
        .await?
        .into_iter()
        .map(|row| row.grant(&env.name))
        .collect();
    Ok(EnvironmentStatus {
        environment: env.name.clone(),
        owner: env.owner.to_string(),
        protected: env.protected(),
        lock_lease_seconds: env.lock_lease.map(|l| l.as_secs()),
        write_from: networks(&env.write_from),
        read_from: networks(&env.read_from),
        states,
        pending_changes: pending.into_iter().map(|c| c.id).collect(),
        approved_changes: approved.into_iter().map(|c| c.id).collect(),
        diverged_changes: diverged,
        breakglass,
        unavailable: None,
    })
}

/// Networks as the config writes them.
fn networks(list: &[ipnet::IpNet]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}
