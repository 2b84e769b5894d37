//! The change-request API (`/v1/changes`) and break-glass grants (`/v1/breakglass`).
//!
//! A change is proposed with the JSON of a saved plan, approved by approvers other than its
//! author, and used once by the pipeline (see `backend`, which enforces it at LOCK). Every
//! call is recorded in the environment's audit chain, refusals included.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::audited::{authenticate, finish, read_body, read_limited, Reply};
use super::raw::Raw;
use super::{ApiError, App};
use crate::changes::{Resolution, Status};
use crate::operations::propose::{self, Proposal};
use crate::operations::{breakglass, decide, read};
use crate::policy::Action;

/// `POST /v1/changes?environment=&state=[&title=&branch=&commit=]` with the plan JSON as body.
pub async fn create(State(app): State<Arc<App>>, raw: Raw, body: Body) -> Response {
    let mut record = raw.record(Action::ChangeCreate.as_str());
    let result = async {
        let headers = &raw.headers;
        let params = raw.query::<Proposal>(
            "POST /v1/changes takes ?environment=ENV&state=NAME, optionally &title=, &branch= and &commit=",
        );
        if let Ok(params) = &params {
            record.environment = Some(params.environment.clone());
            record.state = Some(params.state.clone());
        }
        let caller = authenticate(&app, &mut record, headers).await?;
        let peer = raw.peer()?;
        let proposing = propose::check(&app, &caller, peer.ip(), &mut record, params?)?;
        let bytes = read_limited(headers, body, proposing.limit(), "max_plan_size").await?;
        let change = proposing.propose(&caller, &mut record, bytes).await?;
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
        let listing = read::changes(
            &app,
            &caller,
            peer.ip(),
            &mut record,
            params.environment.as_deref(),
            status,
        )
        .await?;
        Reply::json(StatusCode::OK, &listing, false)
    }
    .await;
    finish(&app, record, result).await
}

/// `GET /v1/changes/{id}`.
pub async fn show(State(app): State<Arc<App>>, raw: Raw) -> Response {
    let mut record = raw.record("change:read");
    let result = async {
        let caller = authenticate(&app, &mut record, &raw.headers).await?;
        let peer = raw.peer()?;
        let id = raw.param("id")?;
        let change = read::change(&app, &caller, peer.ip(), &mut record, &id).await?;
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
    let asked = Resolution::parse(&verb).ok_or(verb.as_str());
    let mut record = raw.record(asked.map_or("change:decide", Resolution::action));
    let result = async {
        let caller = authenticate(&app, &mut record, &raw.headers).await?;
        let peer = raw.peer()?;
        let id = raw.param("id")?;
        let params: DecideParams =
            raw.query("POST /v1/changes/ID/approve|reject|cancel takes ?reason=TEXT, optionally")?;
        let change = decide::decide(
            &app,
            &caller,
            peer.ip(),
            &mut record,
            &id,
            asked,
            params.reason.as_deref(),
        )
        .await?;
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

/// `POST /v1/breakglass?environment=&ttl=` with `{"reason": "..."}`: time-boxed write without
/// a change request, loudly recorded.
pub async fn open_breakglass(State(app): State<Arc<App>>, raw: Raw, body: Body) -> Response {
    let mut record = raw.record(Action::BreakglassOpen.as_str());
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
        let opening =
            breakglass::check(&app, &caller, peer.ip(), &mut record, &params.environment)?;
        let bytes = read_body(headers, body, opening.limit()).await?;
        let opened = opening
            .open(&caller, &mut record, &bytes, params.ttl.as_deref())
            .await?;
        Reply::json(StatusCode::CREATED, &opened, true)
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
        breakglass::close(&app, &caller, peer.ip(), &mut record, &id).await?;
        Ok(Reply::done())
    }
    .await;
    finish(&app, record, result).await
}
