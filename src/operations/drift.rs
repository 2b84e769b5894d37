//! Keeping state accurate: the signals a write or a lock's release raises (stored in the
//! transaction of the write or release, and named in its audit record), the drift reports a
//! pipeline posts from its refresh-only plans, the health of states, and acknowledgements.
//!
//! What is a signal and what is drift is decided by [`crate::drift`]; this file gathers what
//! the detectors compare and stores what they find. A signal never refuses a request: it is a
//! record of what the backend saw, for the owner to look at.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{bounded, commit, OpError, Server, StateRequest, CREATED, DONE, REASON_LIMIT};
use crate::audit::{Found, Raised, Record};
use crate::changes::Change;
use crate::drift::signals::{self, Seen, Write};
use crate::drift::{Facts, Report};
use crate::identity::Caller;
use crate::lock::HeldLock;
use crate::policy::Action;
use crate::state::{Document, VersionMeta};
use crate::store::Tx;

pub use crate::store::drift::{DriftState, SignalRow, StoredReport, Tracked};

/// What a version stores of its content besides the content, from one reading of it: its
/// resource fingerprint ([`crate::history::fingerprint`]), and what it says of itself with
/// the JSON that is stored as. Both `None` for a content that is not a readable state (an
/// encrypted OpenTofu state).
pub(super) struct Read {
    pub resources: Option<String>,
    pub facts: Option<(Facts, String)>,
}

pub(super) fn read(content: &[u8]) -> Read {
    match Facts::read(content) {
        Some((facts, resources)) => Read {
            resources: Some(resources),
            facts: serde_json::to_string(&facts).ok().map(|json| (facts, json)),
        },
        None => Read {
            resources: None,
            facts: None,
        },
    }
}

/// A write as the detectors compare it: the version before and the one written.
pub(super) struct Written<'a> {
    /// The state's newest version before the write, unless that records a deletion.
    pub before: Option<&'a VersionMeta>,
    pub before_facts: Option<Facts>,
    pub doc: &'a Document,
    pub resources: Option<&'a str>,
    pub facts: Option<&'a Facts>,
    pub version: i64,
    /// The lock it was written under: `None` for a write without one.
    pub lock: Option<&'a HeldLock>,
    /// The change it was written under.
    pub change: Option<&'a Change>,
}

/// Raises the signals of a write, stores them in `tx` and names them in `record`; resolves
/// the open signals of conditions the new version no longer has.
pub(super) async fn on_write(
    tx: &mut Tx<'_>,
    req: &StateRequest<'_>,
    record: &mut Record,
    w: Written<'_>,
) -> Result<(), OpError> {
    let state = req.name.as_str();
    let new_lineage = w.before.and_then(|b| b.lineage.as_deref()) != Some(&w.doc.lineage);
    let elsewhere = if new_lineage {
        lineage_elsewhere(req, &w.doc.lineage).await
    } else {
        Vec::new()
    };
    let before = w.before.map(|b| Seen {
        serial: b.serial,
        lineage: b.lineage.as_deref(),
        resources: b.resources.as_deref(),
        facts: w.before_facts.as_ref(),
    });
    let after = Seen {
        serial: Some(w.doc.serial),
        lineage: Some(&w.doc.lineage),
        resources: w.resources,
        facts: w.facts,
    };
    let change_id = w.change.map(|c| c.id.as_str());
    let write = Write {
        protected: req.env.protected(),
        change: change_id,
        change_plans_nothing: w.change.map(|c| c.summary.counts() == (0, 0, 0)),
        breakglass: record.breakglass.as_deref(),
        operation: w.lock.map(|l| l.operation.as_str()),
        forced: record.forced,
        lineage_elsewhere: &elsewhere,
    };
    let raised = signals::on_write(before.as_ref(), &after, &write);
    if let Some(facts) = w.facts {
        let gone = signals::resolved_by(facts);
        tx.resolve_signals(state, &gone, w.version).await?;
    }
    store(tx, req, record, Some(w.version), &raised).await
}

/// The other places where `lineage` was seen, noting this one. A failure to look is logged
/// and taken as none: a signal is worth less than the write it would describe.
async fn lineage_elsewhere(req: &StateRequest<'_>, lineage: &str) -> Vec<String> {
    let system = &req.server.stores.system;
    match system
        .lineage_seen(lineage, &req.env.name, req.name.as_str())
        .await
    {
        Ok(places) => places,
        Err(e) => {
            tracing::warn!(error = %e, environment = %req.env.name, "cannot look up where a lineage was seen; no lineage-shared signal for this write");
            Vec::new()
        }
    }
}

/// Raises the signals of releasing `held`, stores them in `tx` and names them in `record`.
pub(super) async fn on_release(
    tx: &mut Tx<'_>,
    req: &StateRequest<'_>,
    record: &mut Record,
    held: &HeldLock,
) -> Result<(), OpError> {
    let state = req.name.as_str();
    let now = req.server.clock.now();
    let held_for = crate::time::Timestamp::parse(&held.created_at)
        .map(|taken| now.since(taken))
        .unwrap_or_default();
    let wrote = tx
        .wrote_under(state, &held.lock_id, &held.created_at)
        .await?;
    let raised = signals::on_release(
        &held.operation,
        &held.holder(),
        held_for,
        wrote,
        signals::LONG_LOCK,
    );
    store(tx, req, record, None, &raised).await
}

async fn store(
    tx: &mut Tx<'_>,
    req: &StateRequest<'_>,
    record: &mut Record,
    version: Option<i64>,
    raised: &[crate::drift::Signal],
) -> Result<(), OpError> {
    if raised.is_empty() {
        return Ok(());
    }
    let principal = req.principal().to_string();
    let ids = tx
        .add_signals(req.name.as_str(), version, &principal, raised)
        .await?;
    record.signals = ids
        .into_iter()
        .zip(raised)
        .map(|(id, s)| Raised {
            id,
            kind: s.kind.as_str().to_string(),
            severity: s.severity.as_str().to_string(),
            evidence: s.evidence.clone(),
        })
        .collect();
    Ok(())
}

/// A drift report judged on who sends it, whose body may now be read.
pub struct Reporting<'r, 'a> {
    req: &'r StateRequest<'a>,
}

/// What a report stored, and the state's drift now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reported {
    pub report: StoredReport,
    pub drift: DriftState,
}

/// Refuses a report from anyone who may not report drift in the environment (its writers
/// may), before the plan is read.
pub fn prepare<'r, 'a>(
    req: &'r StateRequest<'a>,
    record: &mut Record,
) -> Result<Reporting<'r, 'a>, OpError> {
    req.require(record, Action::DriftReport)?;
    Ok(Reporting { req })
}

impl Reporting<'_, '_> {
    /// The most a plan may bring: the environment's `max_plan_size`.
    pub fn limit(&self) -> u64 {
        self.req.env.max_plan_size
    }

    /// Stores what the refresh-only plan `bytes` found for the state.
    pub async fn report(self, record: &mut Record, bytes: &[u8]) -> Result<Reported, OpError> {
        let req = self.req;
        let state = req.name.as_str();
        let report = Report::parse(bytes).map_err(|e| OpError::BadRequest(e.to_string()))?;
        let mut tx = req.store.begin().await?;
        if tx.latest_version(state).await?.is_none_or(|v| v.deleted) {
            return Err(OpError::NotFound(format!(
                "there is no state {state} in {}: a drift report is for a state this backend holds; check the address (`bulkhead drift report ENV/NAME`)",
                req.env.name
            )));
        }
        let sha256 = crate::state::sha256_hex(bytes);
        let principal = req.principal().to_string();
        let added = tx.add_report(state, &principal, &sha256, &report).await?;
        let (stored, drift) = (added.report, added.drift);
        record.drift = Some(Found::of(report.addresses(), report.count, added.new));
        record.reason = Some(if report.is_clean() {
            format!("drift report {}: no drift", stored.id)
        } else {
            format!(
                "drift report {}: {} resource{} drifted: {}",
                stored.id,
                report.count,
                if report.count == 1 { "" } else { "s" },
                crate::text::first_of(
                    &report
                        .addresses()
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>(),
                    Found::SHOWN
                )
            )
        });
        commit(tx, record, CREATED).await?;
        Ok(Reported {
            report: stored,
            drift,
        })
    }
}

/// Every state with something to say, of every environment the caller may read (or of
/// `only`), and when each environment was last reported on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DriftStatus {
    pub environments: Vec<EnvironmentDrift>,
    /// States with open signals or a drift report: those with something open first, oldest
    /// first, then the rest by name.
    pub states: Vec<StateHealth>,
}

impl DriftStatus {
    /// Whether anything is open: what `bulkhead drift status` fails on.
    pub fn open(&self) -> bool {
        self.states.iter().any(|s| s.open)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvironmentDrift {
    pub environment: String,
    pub owner: String,
    pub protected: bool,
    /// When the newest drift report of any of its states was posted.
    pub reported_at: Option<String>,
    /// Why its database cannot be read now, if it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateHealth {
    pub environment: String,
    pub state: String,
    /// An open signal, or drift not acknowledged.
    pub open: bool,
    /// When the oldest open thing began.
    pub since: Option<String>,
    /// Its open signals, newest first.
    pub signals: Vec<SignalRow>,
    pub drift: Option<DriftState>,
    /// Its lock, when it has been held longer than [`signals::LONG_LOCK`]: a stuck apply, or
    /// a client that died holding it (released, it is a `long-lock` signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_long: Option<HeldLong>,
}

/// A lock held for long, as `drift status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldLong {
    pub lock_id: String,
    pub holder: String,
    pub operation: String,
    pub since: String,
}

/// The health of the states of the environments `caller` may read, or of `only`.
pub async fn status(
    server: &Server,
    caller: &Caller,
    source_ip: IpAddr,
    record: &mut Record,
    only: Option<&str>,
) -> Result<DriftStatus, OpError> {
    let environments: Vec<_> = match only {
        Some(name) => vec![server.readable(caller, source_ip, record, name)?],
        None => server
            .config
            .environments
            .iter()
            .filter(|env| server.may_read(caller, env, source_ip))
            .collect(),
    };
    let mut out = DriftStatus::default();
    for env in environments {
        let mut listed = EnvironmentDrift {
            environment: env.name.clone(),
            owner: env.owner.to_string(),
            protected: env.protected(),
            reported_at: None,
            unavailable: None,
        };
        // Looking creates no database for an environment nobody has used.
        if server.stores.unavailable(&env.name).is_none()
            && !server.stores.used(&server.config, env).await?
        {
            out.environments.push(listed);
            continue;
        }
        let store = match server.environment(&env.name, caller, source_ip).await {
            Ok((_, store)) => store,
            Err(OpError::DatabaseDown(sentence)) => {
                listed.unavailable = Some(sentence);
                out.environments.push(listed);
                continue;
            }
            Err(e) => return Err(e),
        };
        let drifts = store.drift_states().await?;
        let open_signals = store.signals(None, true).await?;
        let long_ago = server
            .clock
            .now()
            .minus(signals::LONG_LOCK)
            .map(|t| t.stored());
        let held_long = match long_ago {
            Some(before) => store.locks_taken_before(&before).await?,
            None => Vec::new(),
        };
        listed.reported_at = drifts.iter().map(|d| d.reported_at.clone()).max();
        let mut names: Vec<&str> = drifts
            .iter()
            .map(|d| d.state.as_str())
            .chain(open_signals.iter().map(|s| s.state.as_str()))
            .chain(held_long.iter().map(|(state, _)| state.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let signals: Vec<SignalRow> = open_signals
                .iter()
                .filter(|s| s.state == name)
                .cloned()
                .collect();
            let drift = drifts.iter().find(|d| d.state == name).cloned();
            let held = held_long
                .iter()
                .find(|(state, _)| state == name)
                .map(|(_, lock)| HeldLong {
                    lock_id: lock.lock_id.clone(),
                    holder: lock.holder(),
                    operation: lock.operation.clone(),
                    since: lock.created_at.clone(),
                });
            out.states
                .push(health(&env.name, name, signals, drift, held));
        }
        out.environments.push(listed);
    }
    out.states.sort_by(|a, b| {
        (!a.open, &a.since, &a.environment, &a.state).cmp(&(
            !b.open,
            &b.since,
            &b.environment,
            &b.state,
        ))
    });
    Ok(out)
}

fn health(
    environment: &str,
    state: &str,
    signals: Vec<SignalRow>,
    drift: Option<DriftState>,
    held_long: Option<HeldLong>,
) -> StateHealth {
    let open_drift = drift.as_ref().filter(|d| d.is_open());
    let since = signals
        .iter()
        .map(|s| s.created_at.clone())
        .chain(open_drift.and_then(|d| d.drifted_since.clone()))
        .chain(held_long.as_ref().map(|h| h.since.clone()))
        .min();
    StateHealth {
        environment: environment.to_string(),
        state: state.to_string(),
        open: signals.iter().any(SignalRow::is_open) || open_drift.is_some() || held_long.is_some(),
        since,
        signals,
        drift,
        held_long,
    }
}

/// One state's signals, open or not, its drift and its newest report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateDrift {
    pub environment: String,
    pub state: String,
    pub open: bool,
    /// Every signal, newest first (at most the newest thousand).
    pub signals: Vec<SignalRow>,
    pub drift: Option<DriftState>,
    /// The newest report, with what drifted and since when.
    pub report: Option<StoredReport>,
    /// The reports kept before it: when, by whom, and how many resources drifted.
    pub earlier: Vec<ReportLine>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportLine {
    pub id: i64,
    pub created_at: String,
    pub principal: String,
    pub count: i64,
}

/// The signals and drift of the state `req` names, for someone who may read it.
pub async fn show(req: &StateRequest<'_>, record: &mut Record) -> Result<StateDrift, OpError> {
    req.require(record, Action::StateRead)?;
    let state = req.name.as_str();
    let signals = req.store.signals(Some(state), false).await?;
    let mut reports = req.store.drift_reports(state).await?.into_iter();
    let report = reports.next();
    let earlier = reports
        .map(|r| ReportLine {
            id: r.id,
            created_at: r.created_at,
            principal: r.principal,
            count: r.count,
        })
        .collect();
    let drift = req.store.drift_of(state).await?;
    let open =
        signals.iter().any(SignalRow::is_open) || drift.as_ref().is_some_and(DriftState::is_open);
    Ok(StateDrift {
        environment: req.env.name.clone(),
        state: state.to_string(),
        open,
        signals,
        drift,
        report,
        earlier,
    })
}

/// What an acknowledgement names: one signal, or the drift now reported.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Acknowledgement {
    #[serde(default)]
    pub signal: Option<i64>,
    #[serde(default)]
    pub drift: bool,
    pub reason: String,
}

/// Acknowledges a signal, or the drift now reported, of the state `req` names: recorded with
/// its reason, it is no longer open.
pub async fn acknowledge(
    req: &StateRequest<'_>,
    record: &mut Record,
    ack: &Acknowledgement,
) -> Result<(), OpError> {
    req.require(record, Action::DriftAcknowledge)?;
    let state = req.name.as_str();
    let what = match (ack.signal, ack.drift) {
        (Some(id), false) => format!("signal {id}"),
        (None, true) => "the drift reported".to_string(),
        _ => {
            return Err(OpError::BadRequest(
                "name what you acknowledge: a signal (`\"signal\": N`) or the drift (`\"drift\": true`), one of them".into(),
            ))
        }
    };
    let reason = ack.reason.trim();
    if reason.is_empty() {
        return Err(OpError::BadRequest(format!(
            "acknowledging {what} needs a reason: say why it is known and fine (`--reason`)"
        )));
    }
    bounded("reason", Some(reason), REASON_LIMIT)?;
    let me = req.principal().to_string();
    let mut tx = req.store.begin().await?;
    let done = match ack.signal {
        Some(id) => {
            let row = tx.signal(state, id).await?.ok_or_else(|| {
                OpError::NotFound(format!(
                    "there is no signal {id} on {}/{state}: `bulkhead drift show {}/{state}` lists them",
                    req.env.name, req.env.name
                ))
            })?;
            if !row.is_open() {
                return Err(OpError::Conflict(closed(&row)));
            }
            tx.acknowledge_signal(state, id, &me, reason).await?
        }
        None => tx.acknowledge_drift(state, &me, reason).await?,
    };
    if !done {
        return Err(OpError::Conflict(format!(
            "{}/{state} has no open drift to acknowledge: its newest report is clean, already acknowledged, or there is none",
            req.env.name
        )));
    }
    record.reason = Some(format!("acknowledged {what}: {reason}"));
    commit(tx, record, DONE).await
}

/// Why a signal cannot be acknowledged: it is not open.
fn closed(row: &SignalRow) -> String {
    let id = row.id;
    if let (Some(by), Some(at)) = (&row.acknowledged_by, &row.acknowledged_at) {
        return format!("signal {id} was acknowledged by {by} at {at}: nothing to do");
    }
    if let Some(version) = row.resolved_by {
        return format!("signal {id} was resolved by version {version}, which no longer has its condition: nothing to do");
    }
    format!(
        "signal {id} is a notice: notices are recorded, never open, and need no acknowledgement"
    )
}
