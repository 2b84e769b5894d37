//! The dashboard's routes (`/ui`): a second edge over the same operations as the API. A
//! bulkhead token signs a person in and becomes a session cookie (HttpOnly, SameSite=Strict,
//! Secure under TLS, expiring); every page is recorded in the audit log like the API request
//! it stands for, shows only what the operations let the principal read, and every form
//! carries the session's CSRF token (and must come from this server's own pages).
//!
//! The pages are rendered by [`crate::ui`]; this module only reads requests, calls
//! operations and answers.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::Markup;
use serde::Deserialize;

use super::audit::AuditParams;
use super::audited::{header_str, read_limited};
use super::raw::Raw;
use super::record::{Audit, Begin, Route, Told};
use super::{ApiError, App};
use crate::audit::Record;
use crate::changes::resolution::Resolution;
use crate::identity::session::Session;
use crate::operations::audit_log::{self, Asked};
use crate::operations::read::{self, Answer, Past};
use crate::operations::{decide, OpError, StateRequest};
use crate::ui::{self, Frame, Notice};

/// The cookie that holds a session's secret.
const COOKIE: &str = "bulkhead_session";
/// The largest form the dashboard reads (a rejection's reason is at most 4 KiB).
const FORM_MAX: u64 = 16 * 1024;
/// How many records the audit page shows.
const AUDIT_SHOWN: i64 = 200;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/ui", get(environments))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/style.css", get(style))
        .route("/ui/login", get(sign_in_page).post(sign_in))
        .route("/ui/logout", post(sign_out))
        .route("/ui/environments/{env}", get(environment))
        .route("/ui/history/{env}/{*name}", get(history))
        .route("/ui/changes", get(changes))
        .route("/ui/changes/{id}", get(change))
        .route("/ui/changes/{id}/{verb}", post(decide))
        .route("/ui/audit", get(audit))
        .layer(axum::middleware::from_fn(guard_headers))
}

/// Headers of every dashboard answer: no script, style or form target but the server's own,
/// no framing, nothing cached or leaked to another site.
async fn guard_headers(request: axum::extract::Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // Same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` with
    // the dashboard's own forms, which could then not be told from a forged one.
    set(headers, header::REFERRER_POLICY, "same-origin");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}

/// A page as an answer; `audited` when its record was committed with its effect.
fn html(status: StatusCode, page: Markup, told: Told) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page.into_string(),
    )
        .into_response();
    response.extensions_mut().insert(told);
    response
}

fn shown(page: Markup) -> Response {
    html(StatusCode::OK, page, Told::Allowed { audited: false })
}

/// How a dashboard request was turned away: to the sign-in page, or with a page that says
/// why, in the frame of the session when there is one.
pub enum UiError {
    SignIn(ApiError),
    Refused(Option<Frame>, ApiError),
}

impl<E: Into<ApiError>> From<E> for UiError {
    fn from(e: E) -> Self {
        UiError::Refused(None, e.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        match self {
            UiError::SignIn(e) => {
                let mut response = Redirect::to("/ui/login").into_response();
                response.extensions_mut().insert(e.told());
                response
            }
            UiError::Refused(frame, e) => {
                // The API's answer, for its log line and its record; the page says the same.
                let told = e.told();
                let status = e.status();
                let sentence = match &e {
                    ApiError::Op(OpError::Internal(detail)) => {
                        tracing::error!(%detail, "dashboard request failed");
                        "internal error: the server's log says more".to_string()
                    }
                    other => other.to_string(),
                };
                html(
                    status,
                    ui::refusal(frame.as_ref(), status.as_u16(), &sentence),
                    told,
                )
            }
        }
    }
}

/// The session's secret as the browser sent it.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// The signed-in session of a request, its principal named in the record; a request without
/// one is sent to sign in.
pub struct Signed {
    session: Session,
    secret: String,
}

impl FromRequestParts<Arc<App>> for Signed {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, UiError> {
        let audit = Audit::from_request_parts(parts, app).await?;
        let secret = cookie(&parts.headers).ok_or_else(|| {
            UiError::SignIn(
                OpError::Unauthenticated("not signed in to the dashboard".into()).into(),
            )
        })?;
        let session = app
            .resume(secret)
            .await
            .map_err(|e| UiError::SignIn(e.into()))?;
        let mut record = audit.record().await;
        record.principal = Some(session.caller.principal.to_string());
        Ok(Signed {
            session,
            secret: secret.to_string(),
        })
    }
}

impl Signed {
    /// What every page of this session needs: its frame, and where the request came from.
    async fn view(&self, app: &App, raw: &Raw) -> Result<Viewing, UiError> {
        let ip = raw.client()?;
        Ok(Viewing {
            frame: Frame {
                who: self.session.caller.principal.to_string(),
                csrf: self.session.csrf.clone(),
                breakglass: read::open_breakglass(app, &self.session.caller, ip).await?,
            },
            ip,
        })
    }

    /// Refuses a form that does not carry this session's CSRF token, or that a page of another
    /// site sent.
    fn check_form(&self, raw: &Raw, csrf: Option<&str>) -> Result<(), UiError> {
        let forged = |why: &str| {
            UiError::Refused(
                None,
                OpError::Forbidden(format!(
                    "{why}: the form was not sent from a page of this dashboard; nothing was done. Reload the page and try again"
                ))
                .into(),
            )
        };
        if let (Some(origin), Some(host)) = (
            header_str(&raw.headers, header::ORIGIN),
            header_str(&raw.headers, header::HOST),
        ) {
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            if origin_host != host {
                return Err(forged("the form came from another site"));
            }
        }
        match csrf {
            Some(token) if self.session.csrf_matches(token) => Ok(()),
            _ => Err(forged("the form's CSRF token is missing or wrong")),
        }
    }
}

/// A page being answered: the frame it is shown in, and the client's address.
struct Viewing {
    frame: Frame,
    ip: std::net::IpAddr,
}

impl Viewing {
    /// A refusal shown in this page's frame.
    fn refused(&self, e: impl Into<ApiError>) -> UiError {
        UiError::Refused(Some(self.frame.clone()), e.into())
    }
}

/// Reads a form of at most [`FORM_MAX`] bytes.
async fn form<T: serde::de::DeserializeOwned>(raw: &Raw, body: Body) -> Result<T, UiError> {
    let bytes = read_limited(&raw.headers, body, FORM_MAX, "the dashboard's forms").await?;
    serde_urlencoded::from_bytes(&bytes).map_err(|e| {
        UiError::from(OpError::BadRequest(format!(
            "the form cannot be read ({e}): send it from the dashboard's page"
        )))
    })
}

/// Declares the action a dashboard route records, for a route that reads nothing first.
macro_rules! page_route {
    ($name:ident, $action:expr) => {
        pub struct $name;
        impl Route for $name {
            fn action(_: &Raw) -> &'static str {
                $action
            }
            fn read(_: &Raw, _: &mut Record) -> Result<Self, ApiError> {
                Ok($name)
            }
        }
    };
}

page_route!(StatusPage, "status:read");
page_route!(ChangesPage, "change:list");
page_route!(ChangePage, "change:read");
page_route!(AuditPage, crate::policy::Action::AuditRead.as_str());
page_route!(SignIn, "ui:sign-in");
page_route!(SignOut, "ui:sign-out");

/// `GET /ui/style.css`: not recorded (nothing is read).
async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        ui::STYLE,
    )
        .into_response()
}

/// `GET /ui/login`: not recorded; the sign-in itself is.
async fn sign_in_page() -> Response {
    shown(ui::sign_in(None))
}

#[derive(Deserialize)]
struct SignInForm {
    token: String,
}

/// `POST /ui/login`: a token in, a session cookie out.
async fn sign_in(
    State(app): State<Arc<App>>,
    _: Begin<SignIn>,
    audit: Audit,
    raw: Raw,
    body: Body,
) -> Result<Response, UiError> {
    let refused = |e: ApiError| {
        let sentence = e.to_string();
        let told = e.told();
        html(e.status(), ui::sign_in(Some(&sentence)), told)
    };
    let SignInForm { token } = match form(&raw, body).await {
        Ok(form) => form,
        Err(UiError::Refused(_, e) | UiError::SignIn(e)) => return Ok(refused(e)),
    };
    let mut record = audit.record().await;
    let signed = match app.sign_in(&token, &mut record).await {
        Ok(signed) => signed,
        Err(e) => return Ok(refused(e.into())),
    };
    let mut response = Redirect::to("/ui").into_response();
    set_session_cookie(
        &mut response,
        &app,
        &signed.secret,
        app.config.server.ui_session.as_secs(),
    );
    response
        .extensions_mut()
        .insert(Told::Allowed { audited: true });
    Ok(response)
}

/// Sets the session cookie to `value` for `max_age` seconds (0 forgets it), with the same flags
/// on sign-in and sign-out so that the browser replaces the one with the other: HttpOnly,
/// SameSite=Strict, only under `/ui`, and Secure under TLS.
fn set_session_cookie(response: &mut Response, app: &App, value: &str, max_age: u64) {
    let secure = if app.config.server.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie =
        format!("{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    // A session secret is URL-safe text, so the value is always a valid header.
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

/// `POST /ui/logout`: ends the session and forgets its cookie.
async fn sign_out(
    State(app): State<Arc<App>>,
    _: Begin<SignOut>,
    signed: Signed,
    raw: Raw,
    body: Body,
) -> Result<Response, UiError> {
    let CsrfForm { csrf } = form(&raw, body).await?;
    signed.check_form(&raw, csrf.as_deref())?;
    app.sign_out(&signed.secret).await?;
    let mut response = Redirect::to("/ui/login").into_response();
    set_session_cookie(&mut response, &app, "", 0);
    response
        .extensions_mut()
        .insert(Told::Allowed { audited: false });
    Ok(response)
}

/// `GET /ui`: the environments.
async fn environments(
    State(app): State<Arc<App>>,
    _: Begin<StatusPage>,
    signed: Signed,
    raw: Raw,
) -> Result<Response, UiError> {
    let page = signed.view(&app, &raw).await?;
    let envs = read::status(&app, &signed.session.caller, page.ip)
        .await
        .map_err(|e| page.refused(e))?;
    Ok(shown(ui::environments(&page.frame, &envs)))
}

/// The environment of a page's address, in its record.
pub struct EnvironmentPage(String);

impl Route for EnvironmentPage {
    fn action(_: &Raw) -> &'static str {
        "status:read"
    }
    fn read(raw: &Raw, record: &mut Record) -> Result<Self, ApiError> {
        let env = raw.param("env")?;
        record.environment = Some(env.clone());
        Ok(EnvironmentPage(env))
    }
}

/// `GET /ui/environments/{env}`: its states, locks and changes.
async fn environment(
    State(app): State<Arc<App>>,
    Begin(EnvironmentPage(name)): Begin<EnvironmentPage>,
    signed: Signed,
    audit: Audit,
    raw: Raw,
) -> Result<Response, UiError> {
    let page = signed.view(&app, &raw).await?;
    let caller = &signed.session.caller;
    let mut record = audit.record().await;
    let env = read::environment(&app, caller, page.ip, &mut record, &name)
        .await
        .map_err(|e| page.refused(e))?;
    let listing = read::changes(&app, caller, page.ip, &mut record, Some(&name), None)
        .await
        .map_err(|e| page.refused(e))?;
    let health = crate::operations::drift::status(&app, caller, page.ip, &mut record, Some(&name))
        .await
        .map_err(|e| page.refused(e))?;
    Ok(shown(ui::environment(
        &page.frame,
        &env,
        &listing.changes,
        &health.states,
    )))
}

#[derive(Debug, Default, Deserialize)]
struct CompareParams {
    from: Option<i64>,
    to: Option<i64>,
}

/// A state's page as it arrives.
pub struct HistoryPage {
    env: String,
    name: String,
    compare: Result<CompareParams, ApiError>,
}

impl HistoryPage {
    fn params(raw: &Raw) -> Result<CompareParams, ApiError> {
        raw.query("the history page takes ?from=A&to=B, both version numbers")
    }
}

impl Route for HistoryPage {
    fn action(raw: &Raw) -> &'static str {
        match HistoryPage::params(raw) {
            Ok(CompareParams {
                from: Some(_),
                to: Some(_),
            }) => "state:diff",
            _ => "state:history",
        }
    }
    fn read(raw: &Raw, record: &mut Record) -> Result<Self, ApiError> {
        let (env, name) = (raw.param("env")?, raw.param("name")?);
        record.environment = Some(env.clone());
        record.state = Some(name.clone());
        Ok(HistoryPage {
            env,
            name,
            compare: HistoryPage::params(raw),
        })
    }
}

/// `GET /ui/history/{env}/{name}[?from=A&to=B]`: the versions, and a diff of two.
async fn history(
    State(app): State<Arc<App>>,
    Begin(asked): Begin<HistoryPage>,
    signed: Signed,
    audit: Audit,
    raw: Raw,
) -> Result<Response, UiError> {
    let page = signed.view(&app, &raw).await?;
    let compare = asked.compare.map_err(|e| page.refused(e))?;
    let mut record = audit.record().await;
    let request = StateRequest::new(
        &app,
        signed.session.caller.clone(),
        &asked.env,
        &asked.name,
        page.ip,
        None,
    )
    .await
    .map_err(|e| page.refused(e))?;
    let entries = match read::past(&request, &mut record, Past::Versions).await {
        Ok(Answer::Versions(entries)) => entries,
        Ok(_) => {
            return Err(UiError::from(OpError::Internal(
                "a history read answered no versions".into(),
            )))
        }
        Err(e) => return Err(page.refused(e)),
    };
    let diff = match (compare.from, compare.to) {
        (Some(from), Some(to)) => {
            let asked = Past::Diff {
                from: Some(from),
                to: Some(to),
            };
            match read::past(&request, &mut record, asked).await {
                Ok(Answer::Diff(diff)) => Some((from, to, diff)),
                Ok(_) => None,
                Err(e) => return Err(page.refused(e)),
            }
        }
        _ => None,
    };
    let compared = diff.as_ref().map(|(from, to, diff)| ui::Compared {
        from: *from,
        to: *to,
        diff,
    });
    Ok(shown(ui::history(
        &page.frame,
        request.env.name.as_str(),
        request.name.as_str(),
        &entries,
        compared.as_ref(),
    )))
}

#[derive(Debug, Default, Deserialize)]
struct ChangesParams {
    environment: Option<String>,
}

/// `GET /ui/changes[?environment=ENV]`.
async fn changes(
    State(app): State<Arc<App>>,
    _: Begin<ChangesPage>,
    signed: Signed,
    audit: Audit,
    raw: Raw,
) -> Result<Response, UiError> {
    let page = signed.view(&app, &raw).await?;
    let params: ChangesParams = raw
        .query("the changes page takes ?environment=ENV, optionally")
        .map_err(|e| page.refused(e))?;
    let environment = params.environment.filter(|e| !e.is_empty());
    let mut record = audit.record().await;
    record.environment = environment.clone();
    let listing = read::changes(
        &app,
        &signed.session.caller,
        page.ip,
        &mut record,
        environment.as_deref(),
        None,
    )
    .await
    .map_err(|e| page.refused(e))?;
    Ok(shown(ui::changes(
        &page.frame,
        &listing,
        environment.as_deref(),
    )))
}

#[derive(Debug, Default, Deserialize)]
struct ChangeParams {
    /// What the form before did, to say so: `approve` or `reject`, nothing else is shown.
    done: Option<String>,
}

/// `GET /ui/changes/{id}`.
async fn change(
    State(app): State<Arc<App>>,
    _: Begin<ChangePage>,
    signed: Signed,
    audit: Audit,
    raw: Raw,
) -> Result<Response, UiError> {
    let page = signed.view(&app, &raw).await?;
    let id = raw.param("id").map_err(|e| page.refused(e))?;
    let params: ChangeParams = raw
        .query("a change's page takes no query")
        .unwrap_or_default();
    let mut record = audit.record().await;
    let change = read::change(&app, &signed.session.caller, page.ip, &mut record, &id)
        .await
        .map_err(|e| page.refused(e))?;
    let notice = match params.done.as_deref().and_then(Resolution::parse) {
        Some(Resolution::Approve) => Some(Notice::Done(format!("You approved {}.", change.id))),
        Some(Resolution::Reject) => Some(Notice::Done(format!("You rejected {}.", change.id))),
        _ => None,
    };
    Ok(shown(ui::change(&page.frame, &change, notice.as_ref())))
}

/// A decision as the dashboard sends it: approve or reject.
pub struct DecidePage(Option<Resolution>);

impl Route for DecidePage {
    fn action(raw: &Raw) -> &'static str {
        DecidePage::of(raw).map_or("change:decide", Resolution::action)
    }
    fn read(raw: &Raw, _: &mut Record) -> Result<Self, ApiError> {
        Ok(DecidePage(DecidePage::of(raw)))
    }
}

impl DecidePage {
    fn of(raw: &Raw) -> Option<Resolution> {
        match Resolution::parse(&raw.param("verb").unwrap_or_default()) {
            Some(r @ (Resolution::Approve | Resolution::Reject)) => Some(r),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct DecideForm {
    csrf: Option<String>,
    reason: Option<String>,
}

/// `POST /ui/changes/{id}/approve|reject`: decided by the same operation as the API, so the
/// same rules hold (never the author; only approvers); the refusal is shown on the change.
async fn decide(
    State(app): State<Arc<App>>,
    Begin(DecidePage(asked)): Begin<DecidePage>,
    signed: Signed,
    audit: Audit,
    raw: Raw,
    body: Body,
) -> Result<Response, UiError> {
    let page = signed.view(&app, &raw).await?;
    let id = raw.param("id")?;
    let DecideForm { csrf, reason } = form(&raw, body).await?;
    signed.check_form(&raw, csrf.as_deref())?;
    let caller = &signed.session.caller;
    let mut record = audit.record().await;
    let verb = raw.param("verb")?;
    let reason = reason.filter(|r| !r.trim().is_empty());
    let decided = decide::decide(
        &app,
        caller,
        page.ip,
        &mut record,
        &id,
        asked.ok_or(verb.as_str()),
        reason.as_deref(),
    )
    .await;
    match decided {
        Ok(_) => {
            let verb = asked.map_or("", Resolution::as_str);
            let mut response =
                Redirect::to(&format!("{}?done={verb}", ui::change_href(&id))).into_response();
            response
                .extensions_mut()
                .insert(Told::Allowed { audited: true });
            Ok(response)
        }
        Err(refusal) => {
            let e = ApiError::from(refusal);
            // The change as it stands, to show the refusal on it; a change that cannot be read
            // is refused as a page of its own.
            let mut scratch = Record::new("change:read");
            let Ok(change) = read::change(&app, caller, page.ip, &mut scratch, &id).await else {
                return Err(page.refused(e));
            };
            let told = e.told();
            Ok(html(
                e.status(),
                ui::change(&page.frame, &change, Some(&Notice::Refused(e.to_string()))),
                told,
            ))
        }
    }
}

/// A filter field as the form sent it, to show again; nothing where it sent none.
fn shown_text(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("")
}

/// `GET /ui/audit[?env=&state=&principal=&action=&decision=&since=&until=]`: the newest
/// records the principal may read.
async fn audit(
    State(app): State<Arc<App>>,
    _: Begin<AuditPage>,
    signed: Signed,
    audit: Audit,
    raw: Raw,
) -> Result<Response, UiError> {
    let page = signed.view(&app, &raw).await?;
    let sent: AuditParams = raw
        .query("the audit page takes ?env=, &state=, &principal=, &action=, &decision=, &since= and &until=")
        .map_err(|e| page.refused(e))?;
    // A form sends its empty fields: they filter nothing.
    let given = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
    let params = AuditParams {
        env: given(&sent.env),
        state: given(&sent.state),
        principal: given(&sent.principal),
        action: given(&sent.action),
        decision: given(&sent.decision),
        since: given(&sent.since),
        until: given(&sent.until),
        last: Some(AUDIT_SHOWN),
        ..AuditParams::default()
    };
    let mut record = audit.record().await;
    record.environment = params.env.clone();
    let filter = params.filter(&app).map_err(|e| page.refused(e))?;
    let found = audit_log::page(
        &app,
        &signed.session.caller,
        page.ip,
        &mut record,
        Asked {
            chain: params.env.as_deref(),
            filter,
            after: None,
        },
    )
    .await
    .map_err(|e| page.refused(e))?;
    let form = ui::AuditForm {
        env: shown_text(&sent.env),
        state: shown_text(&sent.state),
        principal: shown_text(&sent.principal),
        action: shown_text(&sent.action),
        decision: shown_text(&sent.decision),
        since: shown_text(&sent.since),
        until: shown_text(&sent.until),
    };
    let more = found.records.len() as i64 >= AUDIT_SHOWN;
    Ok(shown(ui::audit(&page.frame, &form, &found.records, more)))
}
