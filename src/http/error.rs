//! The one error type of the HTTP layer and its one mapping to responses.
//!
//! Refusals carry a sentence for the person at the other end; server faults are logged once
//! and answered with a generic message, never with internal details.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::lock::LockInfo;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    /// Policy refused a request other than a lock.
    #[error("{0}")]
    Forbidden(String),
    /// A 423 whose LockInfo body says why (refused by policy, or held by someone else).
    #[error("{}", .0.id)]
    Locked(Box<LockInfo>),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// The client did not send its body in time.
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The audit record could not be written, so the request is refused (fail closed).
    #[error(
        "the audit log cannot be written, so the request was refused; the server's log says why"
    )]
    AuditUnavailable,
    /// A write found the disk under a database full (507): the sentence names the database.
    #[error("{0}")]
    DiskFull(String),
    /// A database did not answer (503): the sentence names it.
    #[error("{0}")]
    DatabaseDown(String),
    /// A stored version's content does not match its SHA-256: a fault of the server's storage
    /// (so a 5xx), said plainly because the way out is the client's to take.
    #[error("version {version} of {state} is damaged: its content does not match its sha256; restore it with `bulkhead state rollback` to an intact version")]
    Damaged { state: String, version: i64 },
    /// A server fault; the detail goes to the log, not to the client.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::Damaged { state, version } => ApiError::Damaged { state, version },
            e @ (StoreError::DiskFull { .. } | StoreError::Unreachable { .. }) => {
                ApiError::unavailable(e)
            }
            // Not named after its database (it failed where none could be told): said all
            // the same, so that the person at the other end knows what to fix.
            e if e.is_disk_full() => ApiError::DiskFull(
                "the disk under one of the server's databases is full: free space; nothing was written".into(),
            ),
            e if e.is_outage() => {
                tracing::error!(error = %e, "a database cannot be reached");
                ApiError::DatabaseDown(
                    "one of the server's databases cannot be reached: the request was not carried out; try again once it is back (the server's log says which)".into(),
                )
            }
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::operations::OpError> for ApiError {
    fn from(e: crate::operations::OpError) -> Self {
        use crate::operations::OpError;
        match e {
            OpError::Forbidden(sentence) => ApiError::Forbidden(sentence),
            OpError::Locked(info) => ApiError::Locked(info),
            OpError::BadRequest(sentence) => ApiError::BadRequest(sentence),
            OpError::NotFound(sentence) => ApiError::NotFound(sentence),
            OpError::Conflict(sentence) => ApiError::Conflict(sentence),
            OpError::DatabaseDown(sentence) => ApiError::DatabaseDown(sentence),
            OpError::AuditUnwritable(e) => ApiError::audit_unwritable(e),
            OpError::Store(e) => ApiError::from(e),
            OpError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

impl ApiError {
    fn unavailable(e: crate::store::StoreError) -> ApiError {
        if e.is_disk_full() {
            ApiError::DiskFull(e.to_string())
        } else {
            ApiError::DatabaseDown(e.to_string())
        }
    }

    /// The answer when an audit record could not be written: a full disk or an unreachable
    /// database says so; anything else is the audit log refusing (and goes to the log).
    pub fn audit_unwritable(e: crate::store::StoreError) -> ApiError {
        match ApiError::from(e) {
            e @ (ApiError::DiskFull(_) | ApiError::DatabaseDown(_)) => e,
            other => {
                tracing::error!(error = %other, "cannot write the audit record; refusing the request");
                ApiError::AuditUnavailable
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Locked(_) => StatusCode::LOCKED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::DatabaseDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Damaged { .. } | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the audit log records as the reason (internal details stay in the server log).
    pub fn reason(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal error".to_string(),
            ApiError::Damaged { state, version } => damage_reason(state, *version),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let told = self.told();
        let mut response = match &self {
            ApiError::Locked(info) => (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                info.to_json(),
            )
                .into_response(),
            ApiError::Damaged { state, version } => {
                tracing::error!(state = %state, version, "a version's content does not match its sha256; not served");
                (status, format!("{self}\n")).into_response()
            }
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "request failed");
                (status, "internal error: the server's log says more\n").into_response()
            }
            other => (status, format!("{other}\n")).into_response(),
        };
        match self {
            ApiError::Unauthenticated(_) => {
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

    #[test]
    fn a_full_disk_and_an_outage_say_so_and_other_faults_stay_internal() {
        let full = ApiError::from(StoreError::DiskFull {
            location: "data/environments/dev.db".into(),
        });
        assert_eq!(full.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(
            full.to_string(),
            "the disk under data/environments/dev.db is full: free space; nothing was written"
        );
        let down = ApiError::from(StoreError::Unreachable {
            location: "postgres://bulkhead@db/x (schema bulkhead_env_dev)".into(),
            detail: "connection refused".into(),
        });
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(down.to_string().starts_with(
            "the database postgres://bulkhead@db/x (schema bulkhead_env_dev) cannot be reached"
        ));
        // Not named after a database, but said all the same.
        let timed_out = ApiError::from(StoreError::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(timed_out.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(timed_out.to_string().contains("cannot be reached"));
        let refused = ApiError::from(StoreError::Database(sqlx::Error::Io(
            std::io::ErrorKind::ConnectionRefused.into(),
        )));
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        let no_space = ApiError::from(StoreError::Database(sqlx::Error::Io(
            std::io::Error::from_raw_os_error(28),
        )));
        assert_eq!(no_space.status(), StatusCode::INSUFFICIENT_STORAGE);
        // An audit record that cannot be written for another reason is the audit log's refusal.
        assert!(matches!(
            ApiError::audit_unwritable(StoreError::Batch("refused".into())),
            ApiError::AuditUnavailable
        ));
        assert!(matches!(
            ApiError::audit_unwritable(StoreError::Database(sqlx::Error::PoolClosed)),
            ApiError::DatabaseDown(_)
        ));
        assert!(matches!(
            ApiError::from(StoreError::Corrupt("x".into())),
            ApiError::Internal(_)
        ));
    }
}
