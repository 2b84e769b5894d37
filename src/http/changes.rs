//! The change-request API (`/v1/changes`) and break-glass grants (`/v1/breakglass`).
//!
//! A change is proposed with the JSON of a saved plan, approved by approvers other than its
//! author, and used once by the pipeline (see `backend`, which enforces it at LOCK). Every
//! call is recorded in the environment's audit chain, refusals included.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::audited::{authenticate, commit_with_record, finish, read_body, read_limited, Reply};
use super::raw::Raw;
use super::{ApiError, App};
use crate::audit::Record;
use crate::changes::{plan, ChangeId, Listing, Status};
use crate::config::{parse_duration, Environment};
use crate::identity::Caller;
use crate::policy::{refusal, Action, RequestContext};
use crate::state::{sha256_hex, StateName};
use crate::store::changes::NewChange;
use crate::store::EnvStore;

/// The longest title a change may have, in bytes.
const TITLE_LIMIT: usize = 1024;
/// The longest branch name or commit a change may name, in bytes.
const REF_LIMIT: usize = 256;
/// The longest reason a rejection, cancellation or break-glass grant may give, in bytes.
const REASON_LIMIT: usize = 4096;

/// Refuses a text parameter longer than `limit` bytes, with a sentence that says so.
fn bounded(what: &str, text: Option<&str>, limit: usize) -> Result<(), ApiError> {
    match text {
        Some(text) if text.len() > limit => Err(ApiError::BadRequest(format!(
            "the {what} is {} bytes, over the limit of {limit} bytes: shorten it; nothing was stored",
            text.len()
        ))),
        _ => Ok(()),
    }
}

/// Authorizes `action` in `env` for the caller, or refuses with the sentence.
fn require(
    app: &App,
    caller: &Caller,
    record: &mut Record,
    action: Action,
    env: &Environment,
    peer: SocketAddr,
) -> Result<(), ApiError> {
    let decision = app.policy.decide(
        &caller.principal,
        action,
        &env.name,
        &RequestContext {
            state: record.state.as_deref().unwrap_or(""),
            operation: "",
            source_ip: Some(peer.ip()),
        },
    );
    record.policy = Some(decision.explanation());
    if decision.allowed {
        Ok(())
    } else {
        Err(ApiError::Forbidden(refusal::sentence(
            &caller.principal,
            action,
            env,
        )))
    }
}

#[derive(Debug, Deserialize)]
pub struct CreateParams {
    environment: String,
    state: String,
    title: Option<String>,
    branch: Option<String>,
    commit: Option<String>,
}

/// `POST /v1/changes?environment=&state=[&title=&branch=&commit=]` with the plan JSON as body.
pub async fn create(State(app): State<Arc<App>>, raw: Raw, body: Body) -> Response {
    let mut record = raw.record(Action::ChangeCreate.as_str());
    let result = async {
        let headers = &raw.headers;
        let params = raw.query::<CreateParams>(
            "POST /v1/changes takes ?environment=ENV&state=NAME, optionally &title=, &branch= and &commit=",
        );
        if let Ok(params) = &params {
            record.environment = Some(params.environment.clone());
            record.state = Some(params.state.clone());
        }
        let caller = authenticate(&app, &mut record, headers).await?;
        let peer = raw.peer()?;
        let params = params?;
        let (env, store) = app.environment(&params.environment)?;
        require(&app, &caller, &mut record, Action::ChangeCreate, env, peer)?;
        if !env.protected() {
            return Err(ApiError::BadRequest(format!(
                "{} is not protected (it has no approval block): its writers apply changes directly",
                env.name
            )));
        }
        let state = StateName::parse(&params.state).map_err(ApiError::BadRequest)?;
        bounded("title", params.title.as_deref(), TITLE_LIMIT)?;
        bounded("branch", params.branch.as_deref(), REF_LIMIT)?;
        bounded("commit", params.commit.as_deref(), REF_LIMIT)?;
        let bytes = read_limited(headers, body, env.max_plan_size, "max_plan_size").await?;
        let summary = plan::summarize(&bytes).map_err(|e| ApiError::BadRequest(format!("the plan was not stored: {e}")))?;
        let plan_sha256 = sha256_hex(&bytes);
        drop(bytes);
        let author = caller.principal.to_string();
        let title = params.title.unwrap_or_default();
        let mut tx = store.begin().await?;
        let number = tx
            .insert_change(NewChange {
                state: state.as_str(),
                title: title.trim(),
                author: &author,
                plan_sha256: &plan_sha256,
                summary: &summary,
                branch: params.branch.as_deref(),
                commit: params.commit.as_deref(),
            })
            .await?;
        let change = tx.change(&env.name, env.required_approvals(), number).await?;
        record.change = change.as_ref().map(|c| c.id.clone());
        commit_with_record(tx, &mut record, StatusCode::CREATED).await?;
        Reply::json(StatusCode::CREATED, &change, true)
    }
    .await;
    finish(&app, record, result).await
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    environment: Option<String>,
    status: Option<String>,
}

/// `GET /v1/changes[?environment=&status=]`: the changes, and the open break-glass grants, of
/// every environment the caller may read.
pub async fn list(State(app): State<Arc<App>>, raw: Raw) -> Response {
    let mut record = raw.record("change:list");
    let result = async {
        let params = raw.query::<ListParams>(
            "GET /v1/changes takes ?environment=ENV and ?status=STATUS, both optional",
        );
        if let Ok(params) = &params {
            record.environment = params.environment.clone();
        }
        let caller = authenticate(&app, &mut record, &raw.headers).await?;
        let peer = raw.peer()?;
        let params = params?;
        let status = match params.status.as_deref() {
            None => None,
            Some(s) => Some(Status::parse(s).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "status `{s}`: use open, applied, rejected or cancelled"
                ))
            })?),
        };
        let envs: Vec<(&Environment, &EnvStore)> = match &params.environment {
            Some(name) => {
                let (env, store) = app.environment(name)?;
                require(&app, &caller, &mut record, Action::StateRead, env, peer)?;
                vec![(env, store)]
            }
            None => app
                .config
                .environments
                .iter()
                .filter(|env| {
                    let ctx = RequestContext {
                        state: "",
                        operation: "",
                        source_ip: Some(peer.ip()),
                    };
                    app.policy
                        .decide(&caller.principal, Action::StateRead, &env.name, &ctx)
                        .allowed
                })
                .filter_map(|env| Some((env, app.stores.environment(&env.name)?)))
                .collect(),
        };
        let mut listing = Listing::default();
        for (env, store) in envs {
            listing.changes.extend(
                store
                    .changes(&env.name, env.required_approvals(), status)
                    .await?,
            );
            for row in store.open_breakglass().await? {
                listing.breakglass.push(row.grant(&env.name));
            }
        }
        Reply::json(StatusCode::OK, &listing, false)
    }
    .await;
    finish(&app, record, result).await
}

/// Resolves a change id to its environment and store.
fn change_env<'a>(
    app: &'a App,
    text: &str,
) -> Result<(ChangeId, &'a Environment, &'a EnvStore), ApiError> {
    let id = ChangeId::parse(text).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (env, store) = app.environment(&id.environment)?;
    Ok((id, env, store))
}

/// `GET /v1/changes/{id}`.
pub async fn show(State(app): State<Arc<App>>, raw: Raw) -> Response {
    let mut record = raw.record("change:read");
    let result = async {
        let caller = authenticate(&app, &mut record, &raw.headers).await?;
        let peer = raw.peer()?;
        let id = raw.param("id")?;
        let (cid, env, store) = change_env(&app, &id)?;
        record.change = Some(cid.to_string());
        record.environment = Some(env.name.clone());
        require(&app, &caller, &mut record, Action::StateRead, env, peer)?;
        let change = store
            .change(&env.name, env.required_approvals(), cid.number)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("there is no change {id}")))?;
        Reply::json(StatusCode::OK, &change, false)
    }
    .await;
    finish(&app, record, result).await
}

#[derive(Debug, Deserialize)]
pub struct DecideParams {
    reason: Option<String>,
}

/// `POST /v1/changes/{id}/approve|reject|cancel[?reason=]`.
pub async fn decide(State(app): State<Arc<App>>, raw: Raw) -> Response {
    // The verb is the client's text: only the three known ones name an action.
    let verb = raw.param("verb").unwrap_or_default();
    let action = match verb.as_str() {
        "approve" => "change:approve",
        "reject" => "change:reject",
        "cancel" => "change:cancel",
        _ => "change:decide",
    };
    let mut record = raw.record(action);
    let result = async {
        let caller = authenticate(&app, &mut record, &raw.headers).await?;
        let peer = raw.peer()?;
        let id = raw.param("id")?;
        let params: DecideParams =
            raw.query("POST /v1/changes/ID/approve|reject|cancel takes ?reason=TEXT, optionally")?;
        let (cid, env, store) = change_env(&app, &id)?;
        record.change = Some(cid.to_string());
        record.environment = Some(env.name.clone());
        let me = caller.principal.to_string();
        let mut tx = store.begin().await?;
        let change = tx
            .change(&env.name, env.required_approvals(), cid.number)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("there is no change {id}")))?;
        record.state = Some(change.state.clone());
        match verb.as_str() {
            "approve" => require(&app, &caller, &mut record, Action::ChangeApprove, env, peer)?,
            "reject" => require(&app, &caller, &mut record, Action::ChangeApprove, env, peer)?,
            "cancel" if change.author == me => {}
            "cancel" => require(&app, &caller, &mut record, Action::ChangeApprove, env, peer)?,
            other => return Err(ApiError::NotFound(format!("`{other}`: a change can be approved, rejected or cancelled"))),
        }
        bounded("reason", params.reason.as_deref(), REASON_LIMIT)?;
        if change.status != Status::Open {
            return Err(ApiError::Conflict(format!("change {id} is {} already", change.status.as_str())));
        }
        match verb.as_str() {
            "approve" => {
                if change.author == me {
                    return Err(ApiError::Forbidden(format!(
                        "{me} may not approve change {id}: its author can never approve it; ask another approver"
                    )));
                }
                let expires = env.approval.as_ref().map_or(std::time::Duration::from_secs(86400), |a| a.expires);
                let expires_at = chrono::Utc::now()
                    + chrono::Duration::from_std(expires).map_err(|e| ApiError::Internal(e.to_string()))?;
                let expires_at = expires_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                tx.approve(cid.number, &me, &expires_at).await?;
                record.reason = Some(format!("approval valid until {expires_at}"));
            }
            verb => {
                let status = if verb == "reject" { Status::Rejected } else { Status::Cancelled };
                // Closing a change ends the grant of an apply under way; once the apply has
                // written under it, the change is being applied, and it stays what it is.
                if let Some((state, held)) = tx.lock_for_change(cid.number).await? {
                    if let Some(version) = tx.version_under_lock(&state, &held.lock_id, cid.number).await? {
                        return Err(ApiError::Conflict(format!(
                            "change {id} cannot be {}: its apply under lock {} has written version {version} of {state} already, and the change is applied when that lock is released; to undo it, roll back through a new change",
                            status.as_str(), held.lock_id
                        )));
                    }
                    record.reason = Some(format!(
                        "{}; the apply holding lock {} on {state} may write nothing more",
                        params.reason.as_deref().unwrap_or(status.as_str()),
                        held.lock_id
                    ));
                }
                tx.close_change(cid.number, status, &me, params.reason.as_deref(), None).await?
            }
        }
        if record.reason.is_none() {
            record.reason = params.reason.clone();
        }
        let change = tx.change(&env.name, env.required_approvals(), cid.number).await?;
        commit_with_record(tx, &mut record, StatusCode::OK).await?;
        Reply::json(StatusCode::OK, &change, true)
    }
    .await;
    finish(&app, record, result).await
}

#[derive(Debug, Deserialize)]
pub struct BreakglassParams {
    environment: String,
    ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct BreakglassBody {
    reason: Option<String>,
}

/// `POST /v1/breakglass?environment=&ttl=` with `{"reason": "..."}`: time-boxed write without
/// a change request, loudly recorded.
pub async fn open_breakglass(State(app): State<Arc<App>>, raw: Raw, body: Body) -> Response {
    let mut record = raw.record("breakglass:open");
    let result = async {
        let headers = &raw.headers;
        let params = raw.query::<BreakglassParams>(
            "POST /v1/breakglass takes ?environment=ENV, and ?ttl=DURATION optionally",
        );
        if let Ok(params) = &params {
            record.environment = Some(params.environment.clone());
        }
        let caller = authenticate(&app, &mut record, headers).await?;
        let peer = raw.peer()?;
        let params = params?;
        let (env, store) = app.environment(&params.environment)?;
        require(&app, &caller, &mut record, Action::BreakglassOpen, env, peer)?;
        let Some(rules) = &env.breakglass else {
            return Err(ApiError::BadRequest(format!("{} has no breakglass block", env.name)));
        };
        let bytes = read_body(headers, body, 64 * 1024).await?;
        let reason = serde_json::from_slice::<BreakglassBody>(&bytes)
            .ok()
            .and_then(|b| b.reason)
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| ApiError::BadRequest("a reason is mandatory: say what is broken and why the change process cannot wait".into()))?;
        bounded("reason", Some(&reason), REASON_LIMIT)?;
        let ttl = match &params.ttl {
            None => rules.max_ttl,
            Some(t) => parse_duration(t).map_err(|e| ApiError::BadRequest(format!("ttl {e}")))?,
        };
        if ttl > rules.max_ttl {
            return Err(ApiError::BadRequest(format!(
                "ttl {} is longer than {}'s max_ttl of {}s",
                params.ttl.as_deref().unwrap_or(""),
                env.name,
                rules.max_ttl.as_secs()
            )));
        }
        let expires_at = chrono::Utc::now() + chrono::Duration::from_std(ttl).map_err(|e| ApiError::Internal(e.to_string()))?;
        let expires_at = expires_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let me = caller.principal.to_string();
        let mut tx = store.begin().await?;
        let number = tx.insert_breakglass(&me, &reason, &expires_at).await?;
        let id = crate::changes::breakglass_id(&env.name, number);
        let opened = tx.breakglass(number).await?;
        tracing::warn!(breakglass = %id, principal = %me, environment = %env.name, %expires_at, "BREAK-GLASS OPENED");
        record.breakglass = Some(id.clone());
        record.reason = Some(format!("break-glass opened until {expires_at}: {reason}"));
        commit_with_record(tx, &mut record, StatusCode::CREATED).await?;
        Reply::json(
            StatusCode::CREATED,
            &opened.map(|row| row.grant(&env.name)),
            true,
        )
    }
    .await;
    finish(&app, record, result).await
}

/// `POST /v1/breakglass/{id}/close`: ends a grant early (its opener, or whoever may open one).
pub async fn close_breakglass(State(app): State<Arc<App>>, raw: Raw) -> Response {
    let mut record = raw.record("breakglass:close");
    let result = async {
        let caller = authenticate(&app, &mut record, &raw.headers).await?;
        let peer = raw.peer()?;
        let id = raw.param("id")?;
        record.breakglass = Some(id.clone());
        let not_an_id = || {
            ApiError::NotFound(format!(
                "`{id}` is not a break-glass id (they look like prod-bg3)"
            ))
        };
        let (env_name, n) = id.rsplit_once("-bg").ok_or_else(not_an_id)?;
        let number: i64 = n.parse().map_err(|_| not_an_id())?;
        let (env, store) = app.environment(env_name)?;
        record.environment = Some(env.name.clone());
        let me = caller.principal.to_string();
        let mut tx = store.begin().await?;
        let grant = tx.breakglass(number).await?.ok_or_else(not_an_id)?;
        if grant.principal != me {
            require(
                &app,
                &caller,
                &mut record,
                Action::BreakglassOpen,
                env,
                peer,
            )?;
        }
        tx.close_breakglass(number, &me).await?;
        record.reason = Some(format!("break-glass of {} closed", grant.principal));
        commit_with_record(tx, &mut record, StatusCode::OK).await?;
        Ok(Reply::done())
    }
    .await;
    finish(&app, record, result).await
}
