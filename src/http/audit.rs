//! The audit log over the API (`GET /v1/audit`): the records a caller may read (`audit:read`
//! in an environment, by default its owner), filtered as `bulkhead audit log` filters them,
//! a page at a time. The request itself is recorded, as every request is.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::audited::Reply;
use super::raw::Raw;
use super::record::{Audit, Begin, Caller, Route};
use super::{ApiError, App};
use crate::audit::{Filter, Record};
use crate::changes::ChangeId;
use crate::identity::Principal;
use crate::operations::audit_log::{self, Asked};
use crate::operations::OpError;
use crate::policy::Action;
use crate::time::Timestamp;

#[derive(Debug, Deserialize)]
pub struct AuditParams {
    env: Option<String>,
    state: Option<String>,
    principal: Option<String>,
    change: Option<String>,
    action: Option<String>,
    decision: Option<String>,
    since: Option<String>,
    until: Option<String>,
    last: Option<i64>,
    limit: Option<i64>,
    after: Option<String>,
}

const USAGE: &str = "GET /v1/audit takes, all optional: ?env=ENV (or server), &state=, &principal=, &change=ID, &action=, &decision=allow|deny|error, &since= and &until= (RFC 3339), &last=N or &limit=N (at most 1000), &after=CURSOR";

/// A read of the audit log as it arrives; its query is refused only once the caller is known.
pub struct Read(Result<AuditParams, ApiError>);

impl Route for Read {
    fn action(_: &Raw) -> &'static str {
        Action::AuditRead.as_str()
    }

    fn read(raw: &Raw, record: &mut Record) -> Result<Self, ApiError> {
        let params = raw.query::<AuditParams>(USAGE);
        if let Ok(params) = &params {
            record.environment = params.env.clone();
        }
        Ok(Read(params))
    }
}

/// A time of the query: RFC 3339, as records store it.
fn time(name: &str, text: Option<&str>) -> Result<Option<String>, OpError> {
    text.map(|t| {
        Timestamp::parse(t).map(|t| t.stored()).map_err(|_| {
            OpError::BadRequest(format!(
                "{name}={t}: not an RFC 3339 time; write e.g. 2026-11-27T10:00:00Z"
            ))
        })
    })
    .transpose()
}

/// `GET /v1/audit[?env=&state=&principal=&change=&action=&decision=&since=&until=&last=&limit=&after=]`.
pub async fn read(
    State(app): State<Arc<App>>,
    Begin(Read(params)): Begin<Read>,
    Caller(caller): Caller,
    audit: Audit,
    raw: Raw,
) -> Result<Reply, ApiError> {
    let mut record = audit.record().await;
    let peer = raw.peer()?;
    let p = params?;
    if let Some(d) = p.decision.as_deref() {
        if !["allow", "deny", "error"].contains(&d) {
            return Err(
                OpError::BadRequest(format!("decision={d}: use allow, deny or error")).into(),
            );
        }
    }
    let change = match p.change.as_deref() {
        Some(text) => Some(
            ChangeId::parse(text)
                .map_err(|e| OpError::BadRequest(e.to_string()))?
                .to_string(),
        ),
        None => None,
    };
    let principal = match p.principal.as_deref() {
        Some(text) => Some(
            Principal::as_recorded(&app.config, text)
                .map_err(|why| OpError::BadRequest(format!("principal={text}: {why}")))?,
        ),
        None => None,
    };
    let filter = Filter {
        state: p.state,
        principal,
        change,
        action: p.action,
        decision: p.decision,
        since: time("since", p.since.as_deref())?,
        until: time("until", p.until.as_deref())?,
        last: p.last,
        first: p.limit,
        ..Filter::default()
    };
    let page = audit_log::page(
        &app,
        &caller,
        peer.ip(),
        &mut record,
        Asked {
            chain: p.env.as_deref(),
            filter,
            after: p.after.as_deref(),
        },
    )
    .await?;
    Reply::json(StatusCode::OK, &page, false)
}
