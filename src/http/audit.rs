//! The audit log over the API (`GET /v1/audit`): the records a caller may read (`audit:read`
//! in an environment, by default its owner), filtered as `bulkhead audit log` filters them,
//! a page at a time. The request itself is recorded, as every request is.

use std::sync::Arc;

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Deserialize;

use super::audited::Reply;
use super::raw::Raw;
use super::record::{Audit, Begin, Caller, Route};
use super::{ApiError, App};
use crate::audit::{Filter, Outcome, Record};
use crate::changes::ChangeId;
use crate::identity::Principal;
use crate::operations::audit_log::{self, Asked};
use crate::operations::OpError;
use crate::policy::Action;
use crate::time::Timestamp;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuditParams {
    pub(super) env: Option<String>,
    pub(super) state: Option<String>,
    pub(super) principal: Option<String>,
    pub(super) change: Option<String>,
    pub(super) action: Option<String>,
    pub(super) decision: Option<String>,
    pub(super) since: Option<String>,
    pub(super) until: Option<String>,
    pub(super) last: Option<i64>,
    pub(super) limit: Option<i64>,
    pub(super) after: Option<String>,
    /// Keep the answer open and send each new record as it is written (server-sent events).
    #[serde(default)]
    pub(super) follow: bool,
}

impl AuditParams {
    /// What the query asks for, as a filter of every chain; refused with a sentence naming the
    /// parameter that is wrong.
    pub(super) fn filter(&self, app: &App) -> Result<Filter, OpError> {
        let p = self;
        if let Some(d) = p.decision.as_deref() {
            if Outcome::parse(d).is_none() {
                return Err(OpError::BadRequest(format!(
                    "decision={d}: use allow, deny or error"
                )));
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
        Ok(Filter {
            state: p.state.clone(),
            principal,
            change,
            action: p.action.clone(),
            decision: p.decision.clone(),
            since: time("since", p.since.as_deref())?,
            until: time("until", p.until.as_deref())?,
            last: p.last,
            first: p.limit,
            ..Filter::default()
        })
    }
}

const USAGE: &str = "GET /v1/audit takes, all optional: ?env=ENV (or server), &state=, &principal=, &change=ID, &action=, &decision=allow|deny|error, &since= and &until= (RFC 3339), &last=N or &limit=N (at most 1000), &after=CURSOR, &follow=true";

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
    let client = raw.client()?;
    let p = params?;
    let filter = p.filter(&app)?;
    let page = audit_log::page(
        &app,
        &caller,
        client,
        &mut record,
        Asked {
            chain: p.env.as_deref(),
            filter: filter.clone(),
            after: p.after.as_deref(),
        },
    )
    .await?;
    if !p.follow {
        return Reply::json(StatusCode::OK, &page, false);
    }
    record.reason = Some(format!(
        "following the audit log, from {} records",
        page.records.len()
    ));
    let following = Following {
        app: app.clone(),
        caller,
        source_ip: client,
        chain: p.env,
        filter: Filter {
            last: None,
            ..filter
        },
        cursor: page.cursor.clone(),
        first: Some(page),
        until: tokio::time::Instant::now() + FOLLOW_FOR,
        idle: 0,
        done: false,
    };
    let stream = futures_util::stream::unfold(following, |mut f| async move {
        let chunk = f.next().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), f))
    });
    Ok(Reply {
        status: StatusCode::OK,
        body: Some(("text/event-stream", Body::from_stream(stream))),
        audited: false,
    })
}

/// How long one following answer stays open; the client then asks again from its cursor, and
/// the caller's rights are checked again on every look.
const FOLLOW_FOR: Duration = Duration::from_secs(3600);
/// How often a following answer looks for new records.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// Looks without a record before a comment keeps the connection known to be alive.
const KEEP_ALIVE_EVERY: u32 = 15;

/// A following answer: each look for new records after the cursor, as server-sent events
/// (`id:` the cursor to resume from, `data:` one record's JSON).
struct Following {
    app: Arc<App>,
    caller: crate::identity::Caller,
    source_ip: std::net::IpAddr,
    chain: Option<String>,
    filter: Filter,
    cursor: String,
    /// The page that answered the request, sent first.
    first: Option<crate::audit::Page>,
    until: tokio::time::Instant,
    idle: u32,
    done: bool,
}

impl Following {
    /// The next bytes to send; `None` once the answer ends.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if self.done || tokio::time::Instant::now() >= self.until {
                return None;
            }
            let page = match self.first.take() {
                // Where the client resumes from, even before any record.
                Some(page) if page.records.is_empty() => {
                    self.cursor = page.cursor;
                    return Some(Bytes::from(format!("id: {}\n\n", self.cursor)));
                }
                Some(page) => page,
                None => {
                    tokio::time::sleep(FOLLOW_EVERY).await;
                    // A look of its own: not recorded, since the request that opened it was.
                    let mut scratch = Record::new(Action::AuditRead.as_str());
                    let asked = Asked {
                        chain: self.chain.as_deref(),
                        filter: self.filter.clone(),
                        after: Some(&self.cursor),
                    };
                    match audit_log::page(
                        &self.app,
                        &self.caller,
                        self.source_ip,
                        &mut scratch,
                        asked,
                    )
                    .await
                    {
                        Ok(page) => page,
                        Err(e) => {
                            self.done = true;
                            return Some(Bytes::from(format!(
                                "event: error\ndata: {}\n\n",
                                e.to_string().replace('\n', " ")
                            )));
                        }
                    }
                }
            };
            self.cursor = page.cursor.clone();
            if page.records.is_empty() {
                self.idle += 1;
                if self.idle >= KEEP_ALIVE_EVERY {
                    self.idle = 0;
                    return Some(Bytes::from_static(b": still following\n\n"));
                }
                continue;
            }
            self.idle = 0;
            let mut out = String::new();
            for r in &page.records {
                if let Ok(json) = serde_json::to_string(r) {
                    out.push_str(&format!("data: {json}\n\n"));
                }
            }
            out.push_str(&format!("id: {}\n\n", self.cursor));
            return Some(Bytes::from(out));
        }
    }
}
