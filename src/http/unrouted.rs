//! Requests that match no route (404), or a route but not its method (405): answered with a
//! sentence and recorded in the server's audit chain like every other request, with the caller
//! when credentials come along, and the method and path, capped.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::audited::authenticate;
use super::raw::Raw;
use super::record::{Audit, Begin, Route};
use super::{ApiError, App};
use crate::audit::Record;
use crate::operations::OpError;

/// How much of a client's path (and method) a record keeps: enough to tell what was asked
/// for, never a client's whole request line.
const PATH_LIMIT: usize = 256;
const METHOD_LIMIT: usize = 32;

/// A request no route has.
pub struct Unrouted;

impl Route for Unrouted {
    fn action(_: &Raw) -> &'static str {
        "request:not-found"
    }

    fn read(_: &Raw, _: &mut Record) -> Result<Self, ApiError> {
        Ok(Unrouted)
    }
}

/// A request whose route does not answer its method.
pub struct Unanswered;

impl Route for Unanswered {
    fn action(_: &Raw) -> &'static str {
        "request:method-not-allowed"
    }

    fn read(_: &Raw, _: &mut Record) -> Result<Self, ApiError> {
        Ok(Unanswered)
    }
}

/// The router's fallback: no route has this path.
pub async fn not_found(
    State(app): State<Arc<App>>,
    _: Begin<Unrouted>,
    audit: Audit,
    raw: Raw,
) -> ApiError {
    refuse(&app, &audit, raw, |method, path| {
        OpError::NotFound(format!(
            "not found: there is no {method} {path}; states live under /v1/state/ENVIRONMENT/NAME, change requests under /v1/changes"
        )).into()
    })
    .await
}

/// A route's fallback for methods it does not answer; the router adds the `Allow` header.
pub async fn method_not_allowed(
    State(app): State<Arc<App>>,
    _: Begin<Unanswered>,
    audit: Audit,
    raw: Raw,
) -> Response {
    let mut response = refuse(&app, &audit, raw, |method, path| {
        ApiError::MethodNotAllowed(format!(
            "{path} does not answer {method}: the Allow header lists the methods it does"
        ))
    })
    .await
    .into_response();
    // The router knows this route's methods; the state protocol's list would be wrong here.
    response.headers_mut().remove(header::ALLOW);
    response
}

async fn refuse(
    app: &App,
    audit: &Audit,
    raw: Raw,
    refusal: impl FnOnce(&str, &str) -> ApiError,
) -> ApiError {
    // Only to name the caller: the answer is the same whoever asks.
    if raw.headers.contains_key(header::AUTHORIZATION) {
        let mut record = audit.record().await;
        let certificate = raw.origin().ok().and_then(|o| o.certificate.clone());
        let _ = authenticate(app, &mut record, &raw.headers, certificate.as_deref()).await;
    }
    let method = capped(raw.method.as_str(), METHOD_LIMIT);
    let path = capped(raw.uri.path(), PATH_LIMIT);
    refusal(&method, &path)
}

/// At most `limit` bytes of `text`, cut at a character boundary and marked as cut.
fn capped(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_cut_at_a_character() {
        assert_eq!(capped("/v1/x", 8), "/v1/x");
        assert_eq!(capped("/v1/abcdef", 4), "/v1/... (10 bytes)");
        assert_eq!(capped("/é", 2), "/... (3 bytes)");
    }
}
