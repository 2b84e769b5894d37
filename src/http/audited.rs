//! What every API request shares: authentication, its answer, and the reading of its body.
//! The answer tells the audit layer ([`super::record`]) how the request ended.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::record::Told;
use super::{ApiError, App};
use crate::audit::Record;
use crate::certificate::ClientCertificate;
use crate::identity::Caller;
use crate::operations::OpError;

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
        let body = serde_json::to_vec(value).map_err(|e| OpError::Internal(e.to_string()))?;
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

/// Authenticates the request, which came with the client certificate `certificate`, and
/// names the caller in its record.
pub async fn authenticate(
    app: &App,
    record: &mut Record,
    headers: &HeaderMap,
    certificate: Option<&ClientCertificate>,
) -> Result<Caller, ApiError> {
    let caller = app
        .authenticate(header_str(headers, header::AUTHORIZATION), certificate)
        .await?;
    record.principal = Some(caller.principal.to_string());
    record.branch = caller.branch.clone();
    Ok(caller)
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = match self.body {
            Some((content_type, body)) => {
                (self.status, [(header::CONTENT_TYPE, content_type)], body).into_response()
            }
            None => self.status.into_response(),
        };
        response.extensions_mut().insert(Told::Allowed {
            audited: self.audited,
        });
        response
    }
}

/// Reads a body of at most `limit` bytes, the limit being the state size of an environment
/// (`max_state_size`).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: u64) -> Result<Vec<u8>, ApiError> {
    read_limited(headers, body, limit, "max_state_size").await
}

/// Reads a body of at most `limit` bytes (the setting named `setting`), refusing with 413 one
/// that declares or brings more, and with 408 one that does not arrive within the server's
/// `body_timeout`.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    setting: &str,
) -> Result<Vec<u8>, ApiError> {
    let too_large = |size: Option<u64>| {
        ApiError::TooLarge(match size {
            Some(size) => format!(
                "the body is {size} bytes, over this environment's limit of {limit} bytes ({setting}); nothing was stored"
            ),
            None => format!(
                "the body is over this environment's limit of {limit} bytes ({setting}); nothing was stored"
            ),
        })
    };
    let declared = header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(declared));
    }
    let mut buffer = Buffer::new(declared, limit);
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            let e = e.into_inner();
            if super::connections::timed_out(e.as_ref()) {
                ApiError::Timeout(
                    "the body did not arrive within the server's body_timeout: nothing was stored; send it again over a faster link, or ask the operator to raise server.body_timeout".into(),
                )
            } else {
                OpError::BadRequest(format!("the body could not be read: {e}")).into()
            }
        })?;
        if let Ok(data) = frame.into_data() {
            buffer.push(&data).map_err(|()| too_large(None))?;
        }
    }
    let bytes = buffer.into_bytes();
    check_content_md5(headers, &bytes)?;
    Ok(bytes)
}

/// A body's bytes as they arrive. Memory follows the bytes received, never the length a
/// client declares: a client that declares 256 MiB and sends nothing costs nothing. The
/// declared length only stops the buffer growing past it, so an honest body is held once,
/// without the slack of doubling.
struct Buffer {
    bytes: Vec<u8>,
    declared: Option<usize>,
    limit: usize,
}

impl Buffer {
    fn new(declared: Option<u64>, limit: u64) -> Buffer {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Buffer {
            bytes: Vec::new(),
            declared: declared.and_then(|n| usize::try_from(n).ok()),
            limit,
        }
    }

    /// Appends a chunk; `Err` once the body is over the limit.
    fn push(&mut self, data: &[u8]) -> Result<(), ()> {
        let needed = self.bytes.len().checked_add(data.len()).ok_or(())?;
        if needed > self.limit {
            return Err(());
        }
        if needed > self.bytes.capacity() {
            // Double what has arrived, but not past what was declared (when the client told
            // the truth so far) or the limit.
            let ceiling = match self.declared {
                Some(declared) if declared >= needed => declared,
                _ => self.limit,
            };
            let grown = needed
                .max(self.bytes.capacity().saturating_mul(2))
                .min(ceiling);
            self.bytes.reserve_exact(grown - self.bytes.len());
        }
        self.bytes.extend_from_slice(data);
        Ok(())
    }

    fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
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
        Err(OpError::BadRequest(
            "the body does not match its Content-MD5 header: it was damaged in transit; nothing was stored".into(),
        ).into())
    }
}

pub fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::Buffer;

    #[test]
    fn a_declared_length_reserves_nothing_before_its_bytes_arrive() {
        let declared = 256 * 1024 * 1024;
        let mut buffer = Buffer::new(Some(declared), declared);
        assert_eq!(buffer.bytes.capacity(), 0);
        buffer.push(b"{\"version\":4}").unwrap();
        assert!(
            buffer.bytes.capacity() < 1024,
            "{}",
            buffer.bytes.capacity()
        );
    }

    #[test]
    fn grows_with_the_bytes_and_holds_an_honest_body_once() {
        let chunk = vec![b'x'; 16 * 1024];
        let declared = 100 * chunk.len() + 1;
        let mut buffer = Buffer::new(Some(declared as u64), 1 << 30);
        for _ in 0..100 {
            buffer.push(&chunk).unwrap();
            assert!(buffer.bytes.capacity() <= 2 * buffer.bytes.len());
        }
        buffer.push(b"!").unwrap();
        assert_eq!(buffer.bytes.len(), declared);
        assert_eq!(buffer.bytes.capacity(), declared);
    }

    #[test]
    fn refuses_bytes_past_the_limit_whatever_was_declared() {
        let mut buffer = Buffer::new(Some(4), 10);
        buffer.push(b"0123").unwrap();
        buffer.push(b"456789").unwrap();
        assert!(buffer.push(b"a").is_err());
        assert_eq!(buffer.bytes.len(), 10);
        assert!(buffer.bytes.capacity() <= 10);
    }
}
