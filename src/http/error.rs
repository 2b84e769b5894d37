//! The one error type of the HTTP layer and its one mapping to responses.
//!
//! Refusals carry a sentence for the person at the other end; server faults are logged once
//! and answered with a generic message, never with internal details.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::operations::OpError;

/// An operation's refusal or fault, or a request the HTTP layer turned away itself.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// What the operation answered.
    #[error(transparent)]
    Op(#[from] OpError),
    #[error("{0}")]
    TooLarge(String),
    /// The client did not send its body in time.
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    MethodNotAllowed(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Op(e) => match e {
                OpError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                OpError::Forbidden(_) => StatusCode::FORBIDDEN,
                OpError::Locked(_) | OpError::LockRefused(_) => StatusCode::LOCKED,
                OpError::BadRequest(_) => StatusCode::BAD_REQUEST,
                OpError::NotFound(_) => StatusCode::NOT_FOUND,
                OpError::Conflict(_) => StatusCode::CONFLICT,
                OpError::AuditUnavailable | OpError::DatabaseDown(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                OpError::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
                OpError::Damaged { .. } | OpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// What the audit log records as the reason (internal details stay in the server log).
    pub fn reason(&self) -> String {
        match self {
            ApiError::Op(OpError::Internal(_)) => "internal error".to_string(),
            ApiError::Op(OpError::Damaged { state, version }) => damage_reason(state, *version),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let told = self.told();
        let mut response = match &self {
            ApiError::Op(OpError::Locked(info) | OpError::LockRefused(info)) => (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                info.to_json(),
            )
                .into_response(),
            ApiError::Op(OpError::Damaged { state, version }) => {
                tracing::error!(state = %state, version, "a version's content does not match its sha256; not served");
                (status, format!("{self}\n")).into_response()
            }
            ApiError::Op(OpError::Internal(detail)) => {
                tracing::error!(%detail, "request failed");
                (status, "internal error: the server's log says more\n").into_response()
            }
            other => (status, format!("{other}\n")).into_response(),
        };
        match self {
            ApiError::Op(OpError::Unauthenticated(_)) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"bulkhead\""),
                );
            }
            ApiError::MethodNotAllowed(_) => {
                response.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, POST, PUT, DELETE, LOCK, UNLOCK"),
                );
            }
            _ => {}
        }
        response.extensions_mut().insert(told);
        response
    }
}

/// The audit reason of a read that met a damaged version.
pub fn damage_reason(state: &str, version: i64) -> String {
    format!("content damaged: version {version} of {state} does not match its sha256")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    fn answer(e: StoreError) -> ApiError {
        ApiError::from(OpError::from(e))
    }

    #[test]
    fn a_full_disk_and_an_outage_say_so_and_other_faults_stay_internal() {
        let full = answer(StoreError::DiskFull {
            location: "data/environments/dev.db".into(),
        });
        assert_eq!(full.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(
            full.to_string(),
            "the disk under data/environments/dev.db is full: free space; nothing was written"
        );
        let down = answer(StoreError::Unreachable {
            location: "postgres://bulkhead@db/x (schema bulkhead_env_dev)".into(),
            detail: "connection refused".into(),
        });
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(down.to_string().starts_with(
            "the database postgres://bulkhead@db/x (schema bulkhead_env_dev) cannot be reached"
        ));
        // Not named after a database, but said all the same.
        let timed_out = answer(StoreError::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(timed_out.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(timed_out.to_string().contains("cannot be reached"));
        let refused = answer(StoreError::Database(sqlx::Error::Io(
            std::io::ErrorKind::ConnectionRefused.into(),
        )));
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        let no_space = answer(StoreError::Database(sqlx::Error::Io(
            std::io::Error::from_raw_os_error(28),
        )));
        assert_eq!(no_space.status(), StatusCode::INSUFFICIENT_STORAGE);
        // An audit record that cannot be written for another reason is the audit log's refusal.
        let unwritable = |e| ApiError::from(OpError::audit_unwritable(e));
        let refused = unwritable(StoreError::Batch("refused".into()));
        assert!(matches!(refused, ApiError::Op(OpError::AuditUnavailable)));
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(matches!(
            unwritable(StoreError::Database(sqlx::Error::PoolClosed)),
            ApiError::Op(OpError::DatabaseDown(_))
        ));
        let corrupt = answer(StoreError::Corrupt("x".into()));
        assert_eq!(corrupt.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(corrupt.reason(), "internal error");
    }
}
