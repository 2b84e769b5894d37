//! Requests that match no route (404), or a route but not its method (405): answered with a
//! sentence and recorded in the server's audit chain like every other request, with the caller
//! when credentials come along, and the method and path, capped.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::Response;

use super::audited::{authenticate, finish};
use super::raw::Raw;
use super::{ApiError, App};

/// How much of a client's path (and method) a record keeps: enough to tell what was asked
/// for, never a client's whole request line.
const PATH_LIMIT: usize = 256;
const METHOD_LIMIT: usize = 32;

/// The router's fallback: no route has this path.
pub async fn not_found(State(app): State<Arc<App>>, raw: Raw) -> Response {
    refuse(&app, raw, "request:not-found", |method, path| {
        ApiError::NotFound(format!(
            "not found: there is no {method} {path}; states live under /v1/state/ENVIRONMENT/NAME, change requests under /v1/changes"
        ))
    })
    .await
}

/// A route's fallback for methods it does not answer; the router adds the `Allow` header.
pub async fn method_not_allowed(State(app): State<Arc<App>>, raw: Raw) -> Response {
    let mut response = refuse(&app, raw, "request:method-not-allowed", |method, path| {
        ApiError::MethodNotAllowed(format!(
            "{path} does not answer {method}: the Allow header lists the methods it does"
        ))
    })
    .await;
    // The router knows this route's methods; the state protocol's list would be wrong here.
    response.headers_mut().remove(header::ALLOW);
    response
}

async fn refuse(
    app: &App,
    raw: Raw,
    action: &str,
    refusal: impl FnOnce(&str, &str) -> ApiError,
) -> Response {
    let mut record = raw.record(action);
    // Only to name the caller: the answer is the same whoever asks.
    if raw.headers.contains_key(header::AUTHORIZATION) {
        let _ = authenticate(app, &mut record, &raw.headers).await;
    }
    let method = capped(raw.method.as_str(), METHOD_LIMIT);
    let path = capped(raw.uri.path(), PATH_LIMIT);
    finish(app, record, Err(refusal(&method, &path))).await
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
