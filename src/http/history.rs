//! Who changed what, and how to undo it: a state's versions, their content and differences,
//! rollback (`/v1/history/{env}/{name...}`), and the status of every environment
//! (`/v1/status`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use serde::Deserialize;

use super::audited::Reply;
use super::raw::Raw;
use super::record::{Audit, Begin, Caller, Route};
use super::{ApiError, App};
use crate::audit::Record;
use crate::operations::read::{self, Answer, Past};
use crate::operations::OpError;
use crate::operations::{rollback, StateRequest};
use crate::policy::Action;

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

/// A history request as it arrives: what it asks for, and of which state.
pub struct HistoryAsk {
    past: Past,
    env: String,
    name: String,
    /// Refused only once the caller is known.
    params: Result<HistoryParams, ApiError>,
}

impl HistoryAsk {
    fn params(raw: &Raw) -> Result<HistoryParams, ApiError> {
        raw.query::<HistoryParams>(
            "GET takes ?version=N or ?from=A&to=B, POST takes ?rollback_to=N and optionally &change=ID",
        )
    }

    fn past(params: &Result<HistoryParams, ApiError>) -> Past {
        match params {
            Ok(p) => match (p.version, p.from, p.to) {
                (Some(n), _, _) => Past::Version(n),
                (None, None, None) => Past::Versions,
                (None, from, to) => Past::Diff { from, to },
            },
            Err(_) => Past::Versions,
        }
    }
}

impl Route for HistoryAsk {
    fn action(raw: &Raw) -> &'static str {
        match raw.method {
            Method::POST => Action::StateRollback.as_str(),
            _ => HistoryAsk::past(&HistoryAsk::params(raw)).action(),
        }
    }

    fn read(raw: &Raw, record: &mut Record) -> Result<Self, ApiError> {
        let params = HistoryAsk::params(raw);
        let (env, name) = (raw.param("env")?, raw.param("name")?);
        record.environment = Some(env.clone());
        record.state = Some(name.clone());
        Ok(HistoryAsk {
            past: HistoryAsk::past(&params),
            env,
            name,
            params,
        })
    }
}

/// `GET /v1/history/{env}/{name}[?version=N | ?from=A&to=B]`, `POST ...?rollback_to=N[&change=ID]`.
pub async fn history(
    State(app): State<Arc<App>>,
    Begin(ask): Begin<HistoryAsk>,
    Caller(caller): Caller,
    audit: Audit,
    raw: Raw,
) -> Result<Reply, ApiError> {
    let mut record = audit.record().await;
    let record = &mut *record;
    let client = raw.client()?;
    let params = ask.params?;
    let call = StateRequest::new(&app, caller, &ask.env, &ask.name, client, params.change).await?;
    if raw.method == Method::POST {
        let to = params
            .rollback_to
            .ok_or_else(|| OpError::BadRequest("POST needs ?rollback_to=VERSION".into()))?;
        let done = rollback::rollback(&call, record, to).await?;
        return Reply::json(
            StatusCode::OK,
            &serde_json::json!({ "version": done.version, "rolled_back_to": done.to, "serial": done.serial }),
            true,
        );
    }
    match read::past(&call, record, ask.past).await? {
        Answer::Content(content) => Ok(Reply {
            audited: false,
            ..Reply::ok(content)
        }),
        Answer::Diff(diff) => Reply::json(StatusCode::OK, &diff, false),
        Answer::Versions(entries) => Reply::json(StatusCode::OK, &entries, false),
    }
}

/// `GET /v1/status`.
pub struct StatusAsk;

impl Route for StatusAsk {
    fn action(_: &Raw) -> &'static str {
        "status:read"
    }

    fn read(_: &Raw, _: &mut Record) -> Result<Self, ApiError> {
        Ok(StatusAsk)
    }
}

/// `GET /v1/status`: every environment the caller may read.
pub async fn status(
    State(app): State<Arc<App>>,
    _: Begin<StatusAsk>,
    Caller(caller): Caller,
    raw: Raw,
) -> Result<Reply, ApiError> {
    let client = raw.client()?;
    let out = read::status(&app, &caller, client).await?;
    Reply::json(StatusCode::OK, &out, false)
}
