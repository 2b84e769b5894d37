//! The change-request API (`/v1/changes`) and break-glass grants (`/v1/breakglass`).
//!
//! A change is proposed with the JSON of a saved plan, approved by approvers other than its
//! author, and used once by the pipeline (see `backend`, which enforces it at LOCK). Every
//! call is recorded in the environment's audit chain, refusals included.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::audited::{read_body, read_limited, Reply};
use super::raw::Raw;
use super::record::{Audit, Begin, Caller, Route};
use super::{ApiError, App};
use crate::audit::Record;
use crate::changes::{Resolution, Status};
use crate::operations::propose::{self, Proposal};
use crate::operations::OpError;
use crate::operations::{attest, breakglass, decide, read};
use crate::policy::Action;

/// A proposal as it arrives; its query is refused only once the caller is known.
pub struct Proposed(Result<Proposal, ApiError>);

impl Route for Proposed {
    fn action(_: &Raw) -> &'static str {
        Action::ChangeCreate.as_str()
    }

    fn read(raw: &Raw, record: &mut Record) -> Result<Self, ApiError> {
        let params = raw.query::<Proposal>(
            "POST /v1/changes takes ?environment=ENV&state=NAME, optionally &title=, &branch= and &commit=",
        );
        if let Ok(params) = &params {
            record.environment = Some(params.environment.clone());
            record.state = Some(params.state.clone());
        }
        Ok(Proposed(params))
    }
}

/// `POST /v1/changes?environment=&state=[&title=&branch=&commit=]` with the plan JSON as body.
pub async fn create(
    State(app): State<Arc<App>>,
    Begin(Proposed(params)): Begin<Proposed>,
    Caller(caller): Caller,
    audit: Audit,
    raw: Raw,
    body: Body,
) -> Result<Reply, ApiError> {
    let mut record = audit.record().await;
    let record = &mut *record;
    let client = raw.client()?;
    let proposing = propose::check(&app, &caller, client, record, params?).await?;
    let bytes = read_limited(&raw.headers, body, proposing.limit(), "max_plan_size").await?;
    let change = proposing.propose(&caller, record, bytes).await?;
    Reply::json(StatusCode::CREATED, &change, true)
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    environment: Option<String>,
    status: Option<String>,
}

/// A listing as it arrives; its query is refused only once the caller is known.
pub struct Listed(Result<ListParams, ApiError>);

impl Route for Listed {
    fn action(_: &Raw) -> &'static str {
        "change:list"
    }

    fn read(raw: &Raw, record: &mut Record) -> Result<Self, ApiError> {
        let params = raw.query::<ListParams>(
            "GET /v1/changes takes ?environment=ENV and ?status=STATUS, both optional",
        );
        if let Ok(params) = &params {
            record.environment = params.environment.clone();
        }
        Ok(Listed(params))
    }
}

/// `GET /v1/changes[?environment=&status=]`: the changes, and the open break-glass grants, of
/// every environment the caller may read.
pub async fn list(
    State(app): State<Arc<App>>,
    Begin(Listed(params)): Begin<Listed>,
    Caller(caller): Caller,
    audit: Audit,
    raw: Raw,
) -> Result<Reply, ApiError> {
    let mut record = audit.record().await;
    let client = raw.client()?;
    let params = params?;
    let status = match params.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            OpError::BadRequest(format!(
                "status `{s}`: use open, applied, rejected or cancelled"
            ))
        })?),
    };
    let listing = read::changes(
        &app,
        &caller,
        client,
        &mut record,
        params.environment.as_deref(),
        status,
    )
    .await?;
    Reply::json(StatusCode::OK, &listing, false)
}

/// `GET /v1/changes/{id}`.
pub struct Shown;

impl Route for Shown {
    fn action(_: &Raw) -> &'static str {
        "change:read"
    }

    fn read(_: &Raw, _: &mut Record) -> Result<Self, ApiError> {
        Ok(Shown)
    }
}

/// `GET /v1/changes/{id}`.
pub async fn show(
    State(app): State<Arc<App>>,
    _: Begin<Shown>,
    Caller(caller): Caller,
    audit: Audit,
    raw: Raw,
) -> Result<Reply, ApiError> {
    let mut record = audit.record().await;
    let client = raw.client()?;
    let id = raw.param("id")?;
    let change = read::change(&app, &caller, client, &mut record, &id).await?;
    Reply::json(StatusCode::OK, &change, false)
}

/// `POST /v1/changes/{id}/attest`.
pub struct Attested;

impl Route for Attested {
    fn action(_: &Raw) -> &'static str {
        "change:attest"
    }

    fn read(_: &Raw, _: &mut Record) -> Result<Self, ApiError> {
        Ok(Attested)
    }
}

/// `POST /v1/changes/{id}/attest` with the JSON of the saved plan the pipeline will apply:
/// recorded when its effect is the approved plan's, refused (409) naming what differs.
pub async fn attest(
    State(app): State<Arc<App>>,
    _: Begin<Attested>,
    Caller(caller): Caller,
    audit: Audit,
    raw: Raw,
    body: Body,
) -> Result<Reply, ApiError> {
    let mut record = audit.record().await;
    let record = &mut *record;
    let client = raw.client()?;
    let id = raw.param("id")?;
    let attesting = attest::check(&app, &caller, client, record, &id).await?;
    let bytes = read_limited(&raw.headers, body, attesting.limit(), "max_plan_size").await?;
    let change = attesting.attest(&caller, record, bytes).await?;
    Reply::json(StatusCode::OK, &change, true)
}

#[derive(Debug, Deserialize)]
pub struct ReplanParams {
    commit: Option<String>,
}

/// `PUT /v1/changes/{id}/plan`.
pub struct Replanned;

impl Route for Replanned {
    fn action(_: &Raw) -> &'static str {
        "change:update"
    }

    fn read(_: &Raw, _: &mut Record) -> Result<Self, ApiError> {
        Ok(Replanned)
    }
}

/// `PUT /v1/changes/{id}/plan[?commit=]` with the JSON of a new saved plan: the change's next
/// revision, its approvals dismissed.
pub async fn replan(
    State(app): State<Arc<App>>,
    _: Begin<Replanned>,
    Caller(caller): Caller,
    audit: Audit,
    raw: Raw,
    body: Body,
) -> Result<Reply, ApiError> {
    let mut record = audit.record().await;
    let record = &mut *record;
    let client = raw.client()?;
    let id = raw.param("id")?;
    let params: ReplanParams =
        raw.query("PUT /v1/changes/ID/plan takes ?commit=SHA, optionally")?;
    let replanning = propose::replan(&app, &caller, client, record, &id, params.commit).await?;
    let bytes = read_limited(&raw.headers, body, replanning.limit(), "max_plan_size").await?;
    let change = replanning.replace(record, bytes).await?;
    Reply::json(StatusCode::OK, &change, true)
}

#[derive(Debug, Deserialize)]
pub struct DecideParams {
    reason: Option<String>,
}

/// A decision as it arrives: what is decided, or the client's text when it is no decision.
pub struct Decided(Result<Resolution, String>);

impl Decided {
    fn of(raw: &Raw) -> Result<Resolution, String> {
        // The verb is the client's text: only the three known ones name an action.
        let verb = raw.param("verb").unwrap_or_default();
        Resolution::parse(&verb).ok_or(verb)
    }
}

impl Route for Decided {
    fn action(raw: &Raw) -> &'static str {
        Decided::of(raw).map_or("change:decide", Resolution::action)
    }

    fn read(raw: &Raw, _: &mut Record) -> Result<Self, ApiError> {
        Ok(Decided(Decided::of(raw)))
    }
}

/// `POST /v1/changes/{id}/approve|reject|cancel[?reason=]`.
pub async fn decide(
    State(app): State<Arc<App>>,
    Begin(Decided(asked)): Begin<Decided>,
    Caller(caller): Caller,
    audit: Audit,
    raw: Raw,
) -> Result<Reply, ApiError> {
    let mut record = audit.record().await;
    let client = raw.client()?;
    let id = raw.param("id")?;
    let params: DecideParams =
        raw.query("POST /v1/changes/ID/approve|reject|cancel takes ?reason=TEXT, optionally")?;
    let change = decide::decide(
        &app,
        &caller,
        client,
        &mut record,
        &id,
        asked.as_ref().copied().map_err(String::as_str),
        params.reason.as_deref(),
    )
    .await?;
    Reply::json(StatusCode::OK, &change, true)
}

#[derive(Debug, Deserialize)]
pub struct BreakglassParams {
    environment: String,
    ttl: Option<String>,
}

/// An opening as it arrives; its query is refused only once the caller is known.
pub struct Opened(Result<BreakglassParams, ApiError>);

impl Route for Opened {
    fn action(_: &Raw) -> &'static str {
        Action::BreakglassOpen.as_str()
    }

    fn read(raw: &Raw, record: &mut Record) -> Result<Self, ApiError> {
        let params = raw.query::<BreakglassParams>(
            "POST /v1/breakglass takes ?environment=ENV, and ?ttl=DURATION optionally",
        );
        if let Ok(params) = &params {
            record.environment = Some(params.environment.clone());
        }
        Ok(Opened(params))
    }
}

/// `POST /v1/breakglass?environment=&ttl=` with `{"reason": "..."}`: time-boxed write without
/// a change request, loudly recorded.
pub async fn open_breakglass(
    State(app): State<Arc<App>>,
    Begin(Opened(params)): Begin<Opened>,
    Caller(caller): Caller,
    audit: Audit,
    raw: Raw,
    body: Body,
) -> Result<Reply, ApiError> {
    let mut record = audit.record().await;
    let record = &mut *record;
    let client = raw.client()?;
    let params = params?;
    let opening = breakglass::check(&app, &caller, client, record, &params.environment).await?;
    let bytes = read_body(&raw.headers, body, opening.limit()).await?;
    let opened = opening
        .open(&caller, record, &bytes, params.ttl.as_deref())
        .await?;
    Reply::json(StatusCode::CREATED, &opened, true)
}

/// `POST /v1/breakglass/{id}/close`.
pub struct Closed;

impl Route for Closed {
    fn action(_: &Raw) -> &'static str {
        "breakglass:close"
    }

    fn read(_: &Raw, _: &mut Record) -> Result<Self, ApiError> {
        Ok(Closed)
    }
}

/// `POST /v1/breakglass/{id}/close`: ends a grant early (its opener, or whoever may open one).
pub async fn close_breakglass(
    State(app): State<Arc<App>>,
    _: Begin<Closed>,
    Caller(caller): Caller,
    audit: Audit,
    raw: Raw,
) -> Result<Reply, ApiError> {
    let mut record = audit.record().await;
    let client = raw.client()?;
    let id = raw.param("id")?;
    breakglass::close(&app, &caller, client, &mut record, &id).await?;
    Ok(Reply::done())
}
