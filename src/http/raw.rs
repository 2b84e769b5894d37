//! What every handler takes from a request: its raw parts, an extractor that never refuses, so
//! that the request's audit record is opened before anything the client sent is parsed. Path
//! parameters and query strings are read afterwards ([`Raw::param`], [`Raw::query`]); a bad
//! one is an [`ApiError`] with a sentence, recorded like any other refusal.

use std::convert::Infallible;
use std::net::IpAddr;

use axum::extract::{FromRequestParts, Query, RawPathParams};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, Uri};
use serde::de::DeserializeOwned;

use super::origin::Origin;
use super::ApiError;
use crate::operations::OpError;

/// A request's method, address, headers and client, not yet judged.
pub struct Raw {
    origin: Option<Origin>,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// The route's path parameters, percent-decoded, or why they cannot be.
    params: Result<Vec<(String, String)>, String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Raw {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Infallible> {
        let params = match RawPathParams::from_request_parts(parts, state).await {
            Ok(params) => Ok(params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()),
            Err(e) => Err(e.to_string()),
        };
        Ok(Raw {
            origin: parts.extensions.get::<Origin>().cloned(),
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            params,
        })
    }
}

impl Raw {
    /// Where the request comes from: the client's address and certificate.
    pub fn origin(&self) -> Result<&Origin, ApiError> {
        self.origin.as_ref().ok_or_else(|| {
            OpError::Internal(
                "the router runs without client addresses: serve it with ConnectInfo and the audit layer".into(),
            )
            .into()
        })
    }

    /// The client's address, which the policies may need.
    pub fn client(&self) -> Result<IpAddr, ApiError> {
        self.origin().map(|o| o.client)
    }

    /// The path parameter `name` of the route, percent-decoded.
    pub fn param(&self, name: &str) -> Result<String, ApiError> {
        let params = self.params.as_ref().map_err(|e| {
            OpError::BadRequest(format!(
                "the address is not text once its %-escapes are decoded ({e}): write it in UTF-8"
            ))
        })?;
        params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .ok_or_else(|| OpError::Internal(format!("the route has no parameter `{name}`")).into())
    }

    /// The query string read as `T`; `usage` says what the route takes, for the refusal.
    pub fn query<T: DeserializeOwned>(&self, usage: &str) -> Result<T, ApiError> {
        Query::<T>::try_from_uri(&self.uri)
            .map(|q| q.0)
            .map_err(|e| {
                let why =
                    std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
                OpError::BadRequest(format!(
                    "the query string was not understood ({why}): {usage}"
                ))
                .into()
            })
    }
}
