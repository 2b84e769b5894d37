//! What every API request shares: authentication, the audit record of its outcome, and the
//! answer. A request whose audit record cannot be written is refused (fail closed); an effect
//! and its record commit in one transaction.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::{ApiError, App};
use crate::audit::{self, Outcome, Record};
use crate::identity::{self, Caller};
use crate::store::Tx;

/// A successful answer, and whether its audit record was already committed with its effect.
pub struct Reply {
    pub status: StatusCode,
    pub body: Option<(&'static str, Body)>,
    pub audited: bool,
}

impl Reply {
    /// 200 with a JSON body, recorded with its effect.
    pub fn ok(body: impl Into<Body>) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: Some(("application/json", body.into())),
            audited: true,
        }
    }

    /// A JSON body with `status`.
    pub fn json(
        status: StatusCode,
        value: &impl serde::Serialize,
        audited: bool,
    ) -> Result<Reply, ApiError> {
        let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Reply {
            status,
            body: Some(("application/json", body.into())),
            audited,
        })
    }

    /// 200 without a body, recorded with its effect.
    pub fn done() -> Reply {
        Reply {
            status: StatusCode::OK,
            body: None,
            audited: true,
        }
    }
}

/// Authenticates the request and names the caller in its record.
pub async fn authenticate(
    app: &App,
    record: &mut Record,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let caller = identity::authenticate(
        &app.config,
        &app.stores.system,
        &app.oidc,
        header_str(headers, header::AUTHORIZATION),
    )
    .await
    .map_err(|e| match e {
        identity::AuthError::Store(e) => ApiError::from(e),
        other => ApiError::Unauthenticated(other.to_string()),
    })?;
    record.principal = Some(caller.principal.to_string());
    record.branch = caller.branch.clone();
    Ok(caller)
}

/// Records the request as allowed inside `tx` and commits both; the record failing to write
/// rolls the effect back.
pub async fn commit_with_record(
    mut tx: Tx<'_>,
    record: &mut Record,
    status: StatusCode,
) -> Result<(), ApiError> {
    record.decision = Outcome::Allow;
    record.status = Some(status.as_u16());
    if let Err(e) = audit::append(tx.conn(), record).await {
        tracing::error!(error = %e, "cannot write the audit record; refusing the request");
        return Err(ApiError::AuditUnavailable);
    }
    tx.commit().await?;
    Ok(())
}

/// Records the outcome (unless the effect's transaction already did) and answers.
pub async fn finish(app: &App, mut record: Record, result: Result<Reply, ApiError>) -> Response {
    let (response, audited) = match result {
        Ok(reply) => {
            record.decision = Outcome::Allow;
            record.status = Some(reply.status.as_u16());
            let mut response = reply.status.into_response();
            if let Some((content_type, body)) = reply.body {
                response =
                    (reply.status, [(header::CONTENT_TYPE, content_type)], body).into_response();
            }
            (response, reply.audited)
        }
        Err(err) => {
            record.decision = match err {
                ApiError::Internal(_) | ApiError::AuditUnavailable => Outcome::Error,
                _ => Outcome::Deny,
            };
            record.status = Some(err.status().as_u16());
            record.reason = Some(err.reason());
            let already = matches!(err, ApiError::AuditUnavailable);
            (err.into_response(), already)
        }
    };
    tracing::info!(
        principal = record.principal.as_deref().unwrap_or("-"),
        action = %record.action,
        environment = record.environment.as_deref().unwrap_or("-"),
        state = record.state.as_deref().unwrap_or("-"),
        decision = record.decision.as_str(),
        status = record.status.unwrap_or(0),
        "request"
    );
    if !audited {
        if let Err(e) = super::record(app, &record).await {
            tracing::error!(error = %e, "cannot write the audit record; refusing the request");
            return ApiError::AuditUnavailable.into_response();
        }
    }
    response
}

pub async fn read_body(headers: &HeaderMap, body: Body, limit: u64) -> Result<Vec<u8>, ApiError> {
    let too_large = |size: Option<u64>| {
        ApiError::TooLarge(match size {
            Some(size) => crate::state::Refusal::TooLarge {
                size: size as usize,
                limit,
            }
            .to_string(),
            None => format!(
                "the body is over this environment's limit of {limit} bytes (max_state_size)"
            ),
        })
    };
    let declared = header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(declared));
    }
    // One buffer of the declared size, filled frame by frame: a large state is held once.
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::BadRequest(format!("the body could not be read: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                return Err(too_large(None));
            }
            bytes.extend_from_slice(&data);
        }
    }
    check_content_md5(headers, &bytes)?;
    Ok(bytes)
}

/// Terraform sends `Content-MD5` with every body; a mismatch means the body was damaged on
/// the way, and nothing may be stored from it.
fn check_content_md5(headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    use base64::Engine;
    use md5::{Digest, Md5};
    let Some(sent) = headers.get("content-md5") else {
        return Ok(());
    };
    let expected = base64::engine::general_purpose::STANDARD.encode(Md5::digest(body));
    if sent.as_bytes() == expected.as_bytes() {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "the body does not match its Content-MD5 header: it was damaged in transit; nothing was stored".into(),
        ))
    }
}

pub fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}
