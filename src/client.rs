//! A typed client of bulkhead's HTTP API, used by the command line and the tests.

use serde::de::DeserializeOwned;

use crate::changes::{BreakglassGrant, Change, Listing};
use crate::history::{Diff, EnvironmentStatus, HistoryEntry};
use crate::operations::drift::{Acknowledgement, DriftStatus, Reported, StateDrift};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach bulkhead at {base}: {source} (set --server or BULKHEAD_ADDR)")]
    Connect {
        base: String,
        source: reqwest::Error,
    },
    /// The server answered with a refusal; `message` is its sentence.
    #[error("{message} (HTTP {status})")]
    Refused { status: u16, message: String },
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
}

pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// `base` is the server's address, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: &str, token: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| ClientError::Connect {
                base: self.base.clone(),
                source,
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let message = resp.text().await.unwrap_or_default().trim().to_string();
        Err(ClientError::Refused { status, message })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        self.send(req)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Proposes a change with the JSON of a saved plan (`terraform show -json plan.tfplan`).
    pub async fn create_change(
        &self,
        new: &NewChange<'_>,
        plan: Vec<u8>,
    ) -> Result<Change, ClientError> {
        let mut query = vec![("environment", new.environment), ("state", new.state)];
        query.extend(new.title.map(|t| ("title", t)));
        query.extend(new.branch.map(|b| ("branch", b)));
        query.extend(new.commit.map(|c| ("commit", c)));
        let req = self
            .http
            .post(self.url("/v1/changes"))
            .query(&query)
            .header("Content-Type", "application/json")
            .body(plan);
        self.json(req).await
    }

    pub async fn changes(
        &self,
        environment: Option<&str>,
        status: Option<&str>,
    ) -> Result<Listing, ClientError> {
        let mut query = Vec::new();
        query.extend(environment.map(|e| ("environment", e)));
        query.extend(status.map(|s| ("status", s)));
        self.json(self.http.get(self.url("/v1/changes")).query(&query))
            .await
    }

    pub async fn change(&self, id: &str) -> Result<Change, ClientError> {
        self.json(self.http.get(self.url(&format!("/v1/changes/{id}"))))
            .await
    }

    /// Attests, with the JSON of the saved plan about to be applied, that it does what change
    /// `id`'s approved plan does; refused (409) naming what differs.
    pub async fn attest(&self, id: &str, plan: Vec<u8>) -> Result<Change, ClientError> {
        let req = self
            .http
            .post(self.url(&format!("/v1/changes/{id}/attest")))
            .header("Content-Type", "application/json")
            .body(plan);
        self.json(req).await
    }

    /// Replaces change `id`'s plan (its author only): its approvals are dismissed.
    pub async fn replan(
        &self,
        id: &str,
        plan: Vec<u8>,
        commit: Option<&str>,
    ) -> Result<Change, ClientError> {
        let mut req = self
            .http
            .put(self.url(&format!("/v1/changes/{id}/plan")))
            .header("Content-Type", "application/json")
            .body(plan);
        if let Some(commit) = commit {
            req = req.query(&[("commit", commit)]);
        }
        self.json(req).await
    }

    /// One page of the audit log: `query` holds `GET /v1/audit`'s parameters.
    pub async fn audit(&self, query: &[(&str, String)]) -> Result<crate::audit::Page, ClientError> {
        self.json(self.http.get(self.url("/v1/audit")).query(query))
            .await
    }

    /// The audit log, followed: `GET /v1/audit?follow=true` with `query`, whose answer stays
    /// open, sending server-sent events (see [`FollowedEvent`]).
    pub async fn audit_follow(&self, query: &[(&str, String)]) -> Result<Followed, ClientError> {
        let resp = self
            .send(
                self.http
                    .get(self.url("/v1/audit"))
                    .query(query)
                    .query(&[("follow", "true")]),
            )
            .await?;
        Ok(Followed {
            resp,
            buffer: Vec::new(),
        })
    }

    /// `verb` is approve, reject or cancel.
    pub async fn decide(
        &self,
        id: &str,
        verb: &str,
        reason: Option<&str>,
    ) -> Result<Change, ClientError> {
        let mut req = self
            .http
            .post(self.url(&format!("/v1/changes/{id}/{verb}")));
        if let Some(reason) = reason {
            req = req.query(&[("reason", reason)]);
        }
        self.json(req).await
    }

    pub async fn open_breakglass(
        &self,
        environment: &str,
        reason: &str,
        ttl: Option<&str>,
    ) -> Result<BreakglassGrant, ClientError> {
        let mut query = vec![("environment", environment)];
        query.extend(ttl.map(|t| ("ttl", t)));
        let req = self
            .http
            .post(self.url("/v1/breakglass"))
            .query(&query)
            .json(&serde_json::json!({ "reason": reason }));
        self.json(req).await
    }

    pub async fn close_breakglass(&self, id: &str) -> Result<(), ClientError> {
        self.send(
            self.http
                .post(self.url(&format!("/v1/breakglass/{id}/close"))),
        )
        .await
        .map(|_| ())
    }
}

impl Client {
    fn history_url(&self, address: &str) -> String {
        self.url(&format!("/v1/history/{address}"))
    }

    /// The versions of `env/name`, oldest first.
    pub async fn history(&self, address: &str) -> Result<Vec<HistoryEntry>, ClientError> {
        self.json(self.http.get(self.history_url(address))).await
    }

    /// The content of one version.
    pub async fn version(&self, address: &str, version: i64) -> Result<Vec<u8>, ClientError> {
        let req = self
            .http
            .get(self.history_url(address))
            .query(&[("version", version)]);
        let resp = self.send(req).await?;
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub async fn diff(&self, address: &str, from: i64, to: i64) -> Result<Diff, ClientError> {
        let req = self
            .http
            .get(self.history_url(address))
            .query(&[("from", from), ("to", to)]);
        self.json(req).await
    }

    /// Writes version `to` again as the newest version; returns the server's answer.
    pub async fn rollback(
        &self,
        address: &str,
        to: i64,
        change: Option<&str>,
    ) -> Result<serde_json::Value, ClientError> {
        let mut req = self
            .http
            .post(self.history_url(address))
            .query(&[("rollback_to", to)]);
        if let Some(change) = change {
            req = req.query(&[("change", change)]);
        }
        self.json(req).await
    }

    /// Releases the lock `lock_id` of `env/name`, whoever holds it (a force-unlock, as
    /// OpenTofu sends it: an UNLOCK naming only the ID, refused if another lock is held).
    pub async fn force_unlock(&self, address: &str, lock_id: &str) -> Result<(), ClientError> {
        let method = reqwest::Method::from_bytes(b"UNLOCK")
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let body = serde_json::json!({ "ID": lock_id }).to_string();
        let req = self
            .http
            .request(method, self.url(&format!("/v1/state/{address}")))
            .body(body);
        self.send(req).await.map(|_| ())
    }

    pub async fn status(&self) -> Result<Vec<EnvironmentStatus>, ClientError> {
        self.json(self.http.get(self.url("/v1/status"))).await
    }
}

/// Keeping state accurate: drift reports, the health of states, acknowledgements.
impl Client {
    fn drift_url(&self, address: &str) -> String {
        self.url(&format!("/v1/drift/{address}"))
    }

    /// Posts what a refresh-only plan found for `env/name` (the JSON of `terraform show -json`).
    pub async fn drift_report(
        &self,
        address: &str,
        plan: Vec<u8>,
    ) -> Result<Reported, ClientError> {
        let req = self
            .http
            .post(self.drift_url(address))
            .header("Content-Type", "application/json")
            .body(plan);
        self.json(req).await
    }

    /// The states with open signals or drift reports, of every environment the caller may read
    /// (or of `env`).
    pub async fn drift_status(&self, env: Option<&str>) -> Result<DriftStatus, ClientError> {
        let query: Vec<(&str, &str)> = env.map(|e| ("env", e)).into_iter().collect();
        self.json(self.http.get(self.url("/v1/drift")).query(&query))
            .await
    }

    /// One state's signals, drift and newest report.
    pub async fn drift_show(&self, address: &str) -> Result<StateDrift, ClientError> {
        self.json(self.http.get(self.drift_url(address))).await
    }

    /// Acknowledges a signal, or the drift now reported, of `env/name`, with a reason.
    pub async fn drift_acknowledge(
        &self,
        address: &str,
        ack: &Acknowledgement,
    ) -> Result<(), ClientError> {
        let req = self
            .http
            .post(self.drift_url(address))
            .query(&[("acknowledge", "")])
            .json(ack);
        self.send(req).await.map(|_| ())
    }
}

/// What a new change names besides its plan.
pub struct NewChange<'a> {
    pub environment: &'a str,
    pub state: &'a str,
    pub title: Option<&'a str>,
    pub branch: Option<&'a str>,
    pub commit: Option<&'a str>,
}

/// A followed audit log, read event by event.
pub struct Followed {
    resp: reqwest::Response,
    buffer: Vec<u8>,
}

/// One event of a followed audit log.
#[derive(Debug)]
pub enum FollowedEvent {
    Record(Box<crate::audit::Record>),
    /// Where to resume from, should the answer end.
    Cursor(String),
    /// The server stopped following, saying why.
    Refused(String),
}

/// The most bytes one event may take before the answer is given up as not an event stream.
const EVENT_MAX: usize = 1 << 20;

impl Followed {
    /// The next event; `None` once the server ends the answer.
    pub async fn next(&mut self) -> Result<Option<FollowedEvent>, ClientError> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                let mut kind = "message";
                for line in text.lines() {
                    if let Some(k) = line.strip_prefix("event: ") {
                        kind = if k == "error" { "error" } else { "message" };
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        if kind == "error" {
                            return Ok(Some(FollowedEvent::Refused(data.to_string())));
                        }
                        let record = serde_json::from_str(data)
                            .map_err(|e| ClientError::Decode(e.to_string()))?;
                        return Ok(Some(FollowedEvent::Record(Box::new(record))));
                    } else if let Some(id) = line.strip_prefix("id: ") {
                        return Ok(Some(FollowedEvent::Cursor(id.to_string())));
                    }
                }
                continue; // a comment that keeps the connection alive
            }
            if self.buffer.len() > EVENT_MAX {
                return Err(ClientError::Decode(
                    "an event of the followed audit log is over 1 MiB".into(),
                ));
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(ClientError::Decode(format!(
                        "the followed audit log broke off: {e}"
                    )))
                }
            }
        }
    }
}
