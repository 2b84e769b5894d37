//! Who changed what, and how to undo it: a state's versions, their content and differences,
//! rollback (`/v1/history/{env}/{name...}`), and the status of every environment
//! (`/v1/status`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::audited::{authenticate, commit_with_record, finish, Reply};
use super::backend::Call;
use super::raw::Raw;
use super::{ApiError, App};
use crate::audit::Record;
use crate::changes::{self, ChangeId};
use crate::history::{self, Diff, EnvironmentStatus, HistoryEntry, LockStatus, StateStatus};
use crate::policy::{Action, RequestContext};
use crate::state::{self, Document, StateName};
use crate::store::environment::{NewVersion, VersionMeta};
use crate::verdict::{Ask, Effect};

#[derive(Debug, Deserialize)]
pub struct HistoryParams {
    /// The content of this version.
    version: Option<i64>,
    /// A diff from this version...
    from: Option<i64>,
    /// ...to this one.
    to: Option<i64>,
    /// POST: write this version's content as a new version.
    rollback_to: Option<i64>,
    /// The change request a rollback in a protected environment is for.
    change: Option<String>,
}

/// `GET /v1/history/{env}/{name}[?version=N | ?from=A&to=B]`, `POST ...?rollback_to=N[&change=ID]`.
pub async fn history(State(app): State<Arc<App>>, raw: Raw) -> Response {
    let params = raw.query::<HistoryParams>(
        "GET takes ?version=N or ?from=A&to=B, POST takes ?rollback_to=N and optionally &change=ID",
    );
    let method = raw.method.clone();
    let action = match (&method, &params) {
        (&Method::POST, _) => Action::StateRollback.as_str(),
        (_, Ok(p)) if p.version.is_some() => Action::StateRead.as_str(),
        (_, Ok(p)) if p.from.is_some() || p.to.is_some() => "state:diff",
        _ => "state:history",
    };
    let mut record = raw.record(action);
    let result = async {
        let (env, name) = (raw.param("env")?, raw.param("name")?);
        record.environment = Some(env.clone());
        record.state = Some(name.clone());
        let caller = authenticate(&app, &mut record, &raw.headers).await?;
        let peer = raw.peer()?;
        let params = params?;
        let (env, store) = app.environment(&env)?;
        let name = StateName::parse(&name).map_err(ApiError::BadRequest)?;
        let call = Call {
            app: &app,
            caller,
            env,
            store,
            name,
            peer,
            change: params.change.clone(),
        };
        if method == Method::POST {
            let to = params
                .rollback_to
                .ok_or_else(|| ApiError::BadRequest("POST needs ?rollback_to=VERSION".into()))?;
            return rollback(&call, &mut record, to).await;
        }
        call.require(&mut record, Action::StateRead, "")?;
        let state = call.name.as_str();
        if let Some(n) = params.version {
            let (meta, content) = version(&call, n).await?;
            record.version = Some(meta.version);
            let content = content.ok_or_else(|| {
                ApiError::NotFound(format!(
                    "version {n} of {state} records a deletion: it has no content"
                ))
            })?;
            return Ok(Reply {
                audited: false,
                ..Reply::ok(content)
            });
        }
        if params.from.is_some() || params.to.is_some() {
            let (Some(a), Some(b)) = (params.from, params.to) else {
                return Err(ApiError::BadRequest(
                    "a diff needs both ?from=A and ?to=B".into(),
                ));
            };
            let (_, before) = version(&call, a).await?;
            let (_, after) = version(&call, b).await?;
            let diff: Diff = history::diff(before.as_deref(), after.as_deref());
            return Reply::json(StatusCode::OK, &diff, false);
        }
        let mut entries = Vec::new();
        // Each version's instances, compared with the one before; `None` when unreadable.
        let no_state = || Some("{}".to_string());
        let mut previous = no_state();
        for meta in store.history(state).await? {
            let current = match (&meta.resources, meta.deleted) {
                (_, true) => no_state(),
                (Some(taken), _) => Some(taken.clone()),
                // Written before fingerprints were taken at write time. A damaged one is
                // listed as unreadable, so the history still shows where to roll back to.
                (None, false) => match store.version(state, meta.version).await {
                    Err(crate::store::StoreError::Damaged { .. }) => None,
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
                change: meta.change_number.map(|number| {
                    ChangeId {
                        environment: env.name.clone(),
                        number,
                    }
                    .to_string()
                }),
                meta,
                added,
                changed,
                removed,
            });
            previous = current;
        }
        Reply::json(StatusCode::OK, &entries, false)
    }
    .await;
    finish(&app, record, result).await
}

async fn version(call: &Call<'_>, n: i64) -> Result<(VersionMeta, Option<Vec<u8>>), ApiError> {
    call.store
        .version(call.name.as_str(), n)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{} has no version {n}", call.name.as_str())))
}

/// Writes version `to`'s content as a new version, its serial raised above the current one so
/// that terraform accepts it. History is never rewritten.
async fn rollback(call: &Call<'_>, record: &mut Record, to: i64) -> Result<Reply, ApiError> {
    let state = call.name.as_str();
    // Judged before the version is read, so that a refused caller reads no content.
    let mut tx = call.store.begin().await?;
    let gathered = call.gather(&mut tx, None).await?;
    drop(tx);
    call.judge(record, &gathered, Ask::Rollback { past: None })?;
    let (target, content) = version(call, to).await?;
    let content = content.ok_or_else(|| {
        ApiError::NotFound(format!(
            "version {to} of {state} records a deletion: there is nothing to roll back to"
        ))
    })?;
    let mut tx = call.store.begin().await?;
    let gathered = call.gather(&mut tx, None).await?;
    let current = tx.latest_version(state).await?.filter(|c| !c.deleted);
    // Rolling back across lineages replaces one state by another: a forced write.
    let past = match (
        current.as_ref().and_then(|c| c.lineage.clone()),
        &target.lineage,
    ) {
        (Some(current), Some(sent)) if current != *sent => Some(state::Refusal::Lineage {
            current,
            sent: sent.clone(),
        }),
        _ => None,
    };
    let Effect::Rollback { change } = call.judge(
        record,
        &gathered,
        Ask::Rollback {
            past: past.as_ref(),
        },
    )?
    else {
        return Err(ApiError::Internal(
            "the verdict on a rollback gave another effect".into(),
        ));
    };
    let serial = match current.as_ref().and_then(|c| c.serial) {
        Some(serial) => serial.checked_add(1).filter(|s| *s <= state::MAX_SERIAL).ok_or_else(|| {
            ApiError::Conflict(format!(
                "the current serial of {state} is {serial}, the highest a state may have: nothing can follow it, not even a rollback"
            ))
        })?,
        None => target.serial.unwrap_or(0),
    };
    let content = with_serial(&content, serial).map_err(ApiError::Internal)?;
    let doc = Document::parse(&content).map_err(|e| ApiError::Internal(e.to_string()))?;
    let principal = call.principal().to_string();
    let version = tx
        .append_version(NewVersion {
            state,
            sha256: &doc.sha256,
            serial: Some(doc.serial),
            lineage: Some(&doc.lineage),
            principal: &principal,
            operation: Some("rollback"),
            lock_id: None,
            forced: record.forced,
            change_number: change,
            content: Some(&content),
        })
        .await?;
    if let Some(number) = change {
        tx.mark_applied(number, &principal, version).await?;
    }
    record.version = Some(version);
    let forced = record.reason.take().filter(|_| record.forced);
    record.reason = Some(match forced {
        Some(forced) => format!("rolled back to version {to} (serial {serial}); {forced}"),
        None => format!("rolled back to version {to} (serial {serial})"),
    });
    commit_with_record(tx, record, StatusCode::OK).await?;
    Reply::json(
        StatusCode::OK,
        &serde_json::json!({ "version": version, "rolled_back_to": to, "serial": serial }),
        true,
    )
}

/// The same document with another `serial`, its other fields (and their order) untouched.
fn with_serial(content: &[u8], serial: i64) -> Result<Vec<u8>, String> {
    let mut doc: serde_json::Value =
        serde_json::from_slice(content).map_err(|e| format!("stored version is not JSON: {e}"))?;
    let object = doc
        .as_object_mut()
        .ok_or("stored version is not a JSON object")?;
    object.insert("serial".into(), serial.into());
    serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())
}

/// `GET /v1/status`: every environment the caller may read.
pub async fn status(State(app): State<Arc<App>>, raw: Raw) -> Response {
    let mut record = raw.record("status:read");
    let result = async {
        let caller = authenticate(&app, &mut record, &raw.headers).await?;
        let peer = raw.peer()?;
        let ctx = RequestContext {
            state: "",
            operation: "",
            source_ip: Some(peer.ip()),
        };
        let mut out = Vec::new();
        for env in &app.config.environments {
            if !app
                .policy
                .decide(&caller.principal, Action::StateRead, &env.name, &ctx)
                .allowed
            {
                continue;
            }
            if let Some(down) = app.stores.unavailable(&env.name) {
                out.push(EnvironmentStatus {
                    environment: env.name.clone(),
                    owner: env.owner.to_string(),
                    protected: env.protected(),
                    states: Vec::new(),
                    pending_changes: Vec::new(),
                    approved_changes: Vec::new(),
                    breakglass: Vec::new(),
                    lock_lease_seconds: env.lock_lease.map(|l| l.as_secs()),
                    unavailable: Some(down.sentence(&env.name)),
                });
                continue;
            }
            let (_, store) = app.environment(&env.name)?;
            let mut states = Vec::new();
            for meta in store.states().await? {
                let now = chrono::Utc::now();
                let lock = store.held_lock(&meta.state).await?.map(|l| LockStatus {
                    lease_ran_out: l.lease_ran_out(env.lock_lease, now),
                    active_at: Some(l.last_active().to_string()),
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
            let (approved, pending): (Vec<_>, Vec<_>) =
                open.into_iter().partition(|c| c.readiness == "approved");
            let breakglass = store
                .open_breakglass()
                .await?
                .into_iter()
                .map(|row| row.grant(&env.name))
                .collect();
            out.push(EnvironmentStatus {
                environment: env.name.clone(),
                owner: env.owner.to_string(),
                protected: env.protected(),
                lock_lease_seconds: env.lock_lease.map(|l| l.as_secs()),
                states,
                pending_changes: pending.into_iter().map(|c| c.id).collect(),
                approved_changes: approved.into_iter().map(|c| c.id).collect(),
                breakglass,
                unavailable: None,
            });
        }
        Reply::json(StatusCode::OK, &out, false)
    }
    .await;
    finish(&app, record, result).await
}
