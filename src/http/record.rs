//! The audit record of every API request, written in one place: the [`layer`] around every
//! route. A handler's first extractor, [`Begin`], opens the record with its action (a typed
//! value of the route, never text from the address) and the facts known before anyone is
//! authenticated; [`Caller`] authenticates and names the caller in it; the handler and the
//! operations it calls fill in the rest. The answer says how it ended ([`Told`], put in the
//! response's extensions by [`Reply`] and [`ApiError`]), and the layer then writes the record,
//! unless the effect's transaction committed it already, and refuses the request when it cannot
//! (fail closed).
//!
//! The layer also works out where the request comes from ([`Origin`]: the client's address,
//! behind a trusted proxy the one it forwarded for, and the client certificate), which the
//! record names and the handlers read.
//!
//! A request no handler opened a record for (`/healthz`, `/readyz`) is not recorded.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use super::audited::{authenticate, header_str};
use super::origin::{Origin, PeerCertificate};
use super::raw::Raw;
use super::{ApiError, App};
use crate::audit::{Outcome, Record};
use crate::identity;
use crate::operations::OpError;

/// How a request ended, as its answer tells the layer.
#[derive(Debug, Clone)]
pub enum Told {
    Allowed {
        /// Committed with the effect already.
        audited: bool,
    },
    Refused {
        decision: Outcome,
        reason: String,
        /// The version a refusal is about (a damaged one).
        version: Option<i64>,
        /// The refusal is that the record cannot be written.
        audited: bool,
    },
}

/// The record of one request, shared by its extractors, its handler and the layer.
#[derive(Clone)]
pub struct Audit(Arc<Mutex<Entry>>);

pub struct Entry {
    record: Record,
    /// Whether a handler opened it: only then is it written.
    begun: bool,
}

impl Audit {
    /// The record, for as long as the guard lives: a request's steps take it one after the
    /// other, never at once.
    pub async fn record(&self) -> MappedMutexGuard<'_, Record> {
        MutexGuard::map(self.0.lock().await, |entry| &mut entry.record)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Audit {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Audit>().cloned().ok_or_else(|| {
            OpError::Internal("the route runs without the audit layer: add it".into()).into()
        })
    }
}

/// The layer around every route: writes the record a handler opened once the answer is known,
/// and answers that the request was refused when the record cannot be written.
pub async fn layer(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let mut record = Record::new("");
    if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        let certificate = request
            .extensions()
            .get::<PeerCertificate>()
            .map(|c| c.0.clone());
        let origin = Origin::of(
            peer.ip(),
            request.headers(),
            &app.config.server.trusted_proxies,
            certificate,
        );
        record.source = Some(origin.client.to_string());
        record.peer = origin.proxy().map(|p| p.to_string());
        record.certificate = origin.certificate.as_ref().map(|c| c.to_string());
        request.extensions_mut().insert(origin);
    }
    record.user_agent = header_str(request.headers(), header::USER_AGENT).map(str::to_string);
    let audit = Audit(Arc::new(Mutex::new(Entry {
        record,
        begun: false,
    })));
    request.extensions_mut().insert(audit.clone());
    let response = next.run(request).await;
    let Entry { mut record, begun } = {
        let mut entry = audit.0.lock().await;
        Entry {
            record: std::mem::replace(&mut entry.record, Record::new("")),
            begun: entry.begun,
        }
    };
    if !begun {
        return response;
    }
    record.status = Some(response.status().as_u16());
    let audited = match response.extensions().get::<Told>().cloned() {
        Some(Told::Allowed { audited }) => {
            record.decision = Outcome::Allow;
            audited
        }
        Some(Told::Refused {
            decision,
            reason,
            version,
            audited,
        }) => {
            record.decision = decision;
            record.reason = Some(reason);
            if version.is_some() {
                record.version = version;
            }
            // Refused because the record could not be written, inside the effect's
            // transaction: an append that failed as much as one the layer makes below.
            if audited {
                app.metrics.audit_append_failed();
            }
            audited
        }
        // An answer that is neither a reply nor a refusal of ours: recorded as a fault.
        None => {
            record.decision = Outcome::Error;
            false
        }
    };
    let response = if audited {
        response
    } else {
        match app.record(&record).await {
            Ok(()) => response,
            Err(e) => {
                app.metrics.audit_append_failed();
                ApiError::from(e).into_response()
            }
        }
    };
    // An environment the config does not know is `other`: the labels stay bounded.
    let environment = match record.environment.as_deref() {
        Some(name) if app.config.environment(name).is_some() => name,
        Some(_) => "other",
        None => "none",
    };
    app.metrics.answered(
        environment,
        &record.action,
        record.decision.as_str(),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    // The status the client receives, which is not the one recorded when the record itself
    // could not be written.
    tracing::info!(
        principal = record.principal.as_deref().unwrap_or("-"),
        action = %record.action,
        environment = record.environment.as_deref().unwrap_or("-"),
        state = record.state.as_deref().unwrap_or("-"),
        decision = record.decision.as_str(),
        status = response.status().as_u16(),
        "request"
    );
    response
}

/// A route's request as it arrives: its action, and what its record says before anyone is
/// authenticated.
pub trait Route: Sized {
    /// The action the record names.
    fn action(raw: &Raw) -> &'static str;
    /// What the route reads from the request first, noted in the record; a refusal here is
    /// recorded without a caller.
    fn read(raw: &Raw, record: &mut Record) -> Result<Self, ApiError>;
}

/// Opens the request's record for route `R` (always a handler's first extractor after the
/// state), with what `R` reads.
pub struct Begin<R>(pub R);

impl<R: Route, S: Send + Sync> FromRequestParts<S> for Begin<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let audit = Audit::from_request_parts(parts, state).await?;
        let raw = match Raw::from_request_parts(parts, state).await {
            Ok(raw) => raw,
            Err(never) => match never {},
        };
        let mut entry = audit.0.lock().await;
        entry.begun = true;
        entry.record.action = R::action(&raw).to_string();
        R::read(&raw, &mut entry.record).map(Begin)
    }
}

/// The authenticated caller, named in the request's record.
pub struct Caller(pub identity::Caller);

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let audit = Audit::from_request_parts(parts, app).await?;
        let mut record = audit.record().await;
        let certificate = parts
            .extensions
            .get::<Origin>()
            .and_then(|o| o.certificate.clone());
        authenticate(app, &mut record, &parts.headers, certificate.as_deref())
            .await
            .map(Caller)
    }
}

impl ApiError {
    /// How this refusal ends its request, for the record.
    pub(super) fn told(&self) -> Told {
        Told::Refused {
            decision: match self {
                ApiError::Op(e) if e.is_fault() => Outcome::Error,
                _ => Outcome::Deny,
            },
            reason: self.reason(),
            version: match self {
                ApiError::Op(OpError::Damaged { version, .. }) => Some(*version),
                _ => None,
            },
            audited: matches!(self, ApiError::Op(OpError::AuditUnavailable)),
        }
    }
}
