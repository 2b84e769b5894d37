//! The Terraform/OpenTofu `http` backend protocol: GET, POST (or PUT), DELETE, LOCK and
//! UNLOCK on `/v1/state/{environment}/{name...}`.
//!
//! Every request is authenticated, authorized and recorded in its environment's audit chain,
//! whatever its outcome; a request whose record cannot be written is refused. Refusals are
//! made at LOCK whenever possible, because a write refused at POST leaves terraform with
//! resources created and its state in `errored.tfstate`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};

use super::audited::{read_body, Reply};
use super::raw::Raw;
use super::record::{Audit, Begin, Caller, Route};
use super::{ApiError, App};
use crate::audit::{Outcome, Record};
use crate::lock::LockInfo;
use crate::operations::{delete, lock, read, unlock, write, OpError, StateRequest};
use crate::policy::Action;

/// Lock bodies are small; anything bigger is not terraform talking.
const LOCK_BODY_LIMIT: u64 = 64 * 1024;

/// The address of a state: `/v1/state/{env}/{*name}`.
pub struct StateAddress {
    env: String,
    name: String,
}

impl Route for StateAddress {
    fn action(raw: &Raw) -> &'static str {
        action_of(&raw.method)
    }

    fn read(raw: &Raw, record: &mut Record) -> Result<Self, ApiError> {
        let (env, name) = (raw.param("env")?, raw.param("name")?);
        record.environment = Some(env.clone());
        record.state = Some(name.clone());
        Ok(StateAddress { env, name })
    }
}

/// `/v1/state/{env}` and `/v1/state/{env}/`: an environment's address, naming no state.
pub struct EnvAddress;

impl Route for EnvAddress {
    fn action(raw: &Raw) -> &'static str {
        action_of(&raw.method)
    }

    fn read(raw: &Raw, record: &mut Record) -> Result<Self, ApiError> {
        record.environment = Some(raw.param("env")?);
        Ok(EnvAddress)
    }
}

/// `/v1/state/{env}/{*name}`: every method of the protocol.
pub async fn state(
    State(app): State<Arc<App>>,
    Begin(address): Begin<StateAddress>,
    Caller(caller): Caller,
    audit: Audit,
    raw: Raw,
    body: Body,
) -> Result<Reply, ApiError> {
    let mut record = audit.record().await;
    let record = &mut *record;
    let client = raw.client()?;
    let mut call =
        StateRequest::new(&app, caller, &address.env, &address.name, client, None).await?;
    let mut query = parameters(&raw.uri)?;
    call.change = query.remove("change");
    let headers = &raw.headers;
    match raw.method.as_str() {
        "GET" => get(&call, record, &app).await,
        "POST" | "PUT" => {
            let writing = write::prepare(&call, record, query.remove("ID")).await?;
            let bytes = read_body(headers, body, writing.limit()).await?;
            writing.write(record, &bytes).await?;
            Ok(Reply::done())
        }
        "DELETE" => {
            delete::delete(&call, record).await?;
            Ok(Reply::done())
        }
        "LOCK" => {
            let body = read_body(headers, body, LOCK_BODY_LIMIT).await?;
            // A refusal is not a lock someone will let go: each client is answered in the
            // form that ends its retries at once where it can, with the sentence shown.
            let client = serde_json::from_slice::<LockInfo>(&body)
                .map(|asked| asked.version)
                .unwrap_or_default();
            lock::lock(&call, record, &body)
                .await
                .map_err(|e| match e {
                    OpError::LockRefused(info) => {
                        OpError::LockRefused(Box::new(info.refusal_for(&client)))
                    }
                    e => e,
                })?;
            Ok(Reply::ok(body))
        }
        "UNLOCK" => {
            let body = read_body(headers, body, LOCK_BODY_LIMIT).await?;
            unlock::unlock(&call, record, &body).await?;
            Ok(Reply::done())
        }
        other => Err(ApiError::MethodNotAllowed(format!(
            "{other} is not part of the state protocol: use GET, POST, DELETE, LOCK or UNLOCK"
        ))),
    }
}

/// `/v1/state/{env}` and `/v1/state/{env}/`: a state address without a name.
pub async fn nameless(_: Begin<EnvAddress>, _: Caller) -> Result<Reply, ApiError> {
    Err(
        OpError::BadRequest("the address names no state: use /v1/state/ENVIRONMENT/NAME".into())
            .into(),
    )
}

/// The query of a state request. `change` and `ID` decide what a request may do: named twice,
/// whatever else reads the address (a proxy, a log, a person) may take the one value and the
/// verdict the other, so a repeated one is refused.
fn parameters(uri: &Uri) -> Result<HashMap<String, String>, ApiError> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| OpError::BadRequest(format!("bad query string: {e}")))?;
    let mut query = HashMap::new();
    for (name, value) in pairs {
        if let Some(decisive) = ["change", "ID"].into_iter().find(|d| *d == name) {
            if query.contains_key(decisive) {
                return Err(OpError::BadRequest(format!(
                    "the query names `{decisive}` more than once: name it once"
                ))
                .into());
            }
        }
        query.insert(name, value);
    }
    Ok(query)
}

async fn get(
    call: &StateRequest<'_>,
    record: &mut Record,
    app: &Arc<App>,
) -> Result<Reply, ApiError> {
    match read::state(call, record).await? {
        read::Content::Remembered(content) => Ok(Reply::ok(content)),
        // Streamed chunk by chunk; the declared length lets the client tell a cut-off body.
        read::Content::Stream { size, chunks } => {
            let body = ContentBody {
                chunks,
                remaining: size,
                on_damage: Some((app.clone(), record.clone())),
                recording: None,
            };
            Ok(Reply {
                audited: false,
                ..Reply::ok(Body::new(body))
            })
        }
        // No state yet. 204 rather than 404, so that "no state" never looks like "no such
        // environment" (a 404 would let terraform start a new lineage anyway).
        read::Content::Nothing => Ok(Reply {
            status: StatusCode::NO_CONTENT,
            body: None,
            audited: false,
        }),
    }
}

/// A state's content as a response body: its chunks as they are read from the store, with the
/// length known up front, so that the response carries `Content-Length` and a client can tell
/// a cut-off body from a whole one.
///
/// The content is checked as it streams, and its last chunk withheld when the content does
/// not match its SHA-256 ([`OpError::Damaged`] instead); the body then ends in an
/// error, so the connection is aborted and terraform fails instead of taking the damaged
/// state. The request's record was written when the answer began, so the damage gets a record
/// of its own, committed before the body ends.
struct ContentBody {
    chunks: read::Chunks,
    remaining: u64,
    /// The server and the request's record, to record damage with.
    on_damage: Option<(Arc<App>, Record)>,
    /// The damage being recorded, which ends the body once committed.
    recording: Option<futures_util::future::BoxFuture<'static, OpError>>,
}

/// Records that version `version` of the state being served was found damaged.
async fn record_damage(app: Arc<App>, mut record: Record, state: String, version: i64) {
    tracing::error!(state = %state, version, "a state's content does not match its sha256; the response is cut off");
    record.reason = Some(super::error::damage_reason(&state, version));
    record.time = app.clock.now().stored();
    record.decision = Outcome::Error;
    // The answer began as 200 and was cut off: it has no status of its own.
    record.status = None;
    if let Err(e) = app.record(&record).await {
        tracing::error!(error = %e, "cannot write the audit record of a damaged content");
    }
}

impl http_body::Body for ContentBody {
    type Data = axum::body::Bytes;
    type Error = OpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use futures_util::{FutureExt, StreamExt};
        use std::task::Poll;
        if let Some(recording) = self.recording.as_mut() {
            let damage = std::task::ready!(recording.poll_unpin(cx));
            self.recording = None;
            return Poll::Ready(Some(Err(damage)));
        }
        match std::task::ready!(self.chunks.poll_next_unpin(cx)) {
            Some(Ok(chunk)) => {
                self.remaining = self.remaining.saturating_sub(chunk.len() as u64);
                Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
            Some(Err(OpError::Damaged { state, version })) => {
                let damage = OpError::Damaged {
                    state: state.clone(),
                    version,
                };
                match self.on_damage.take() {
                    Some((app, record)) => {
                        // A task of its own, so that the record is written even when the
                        // client goes away first; the body ends once it is.
                        let written = tokio::spawn(record_damage(app, record, state, version));
                        self.recording = Some(
                            async move {
                                let _ = written.await;
                                damage
                            }
                            .boxed(),
                        );
                        self.poll_frame(cx)
                    }
                    None => Poll::Ready(Some(Err(damage))),
                }
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot read a state's content; the response is cut off");
                Poll::Ready(Some(Err(e)))
            }
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

fn action_of(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => Action::StateRead.as_str(),
        "POST" | "PUT" => Action::StateWrite.as_str(),
        "DELETE" => Action::StateDelete.as_str(),
        "LOCK" => Action::StateLock.as_str(),
        "UNLOCK" => Action::StateUnlock.as_str(),
        _ => "state:unknown-method",
    }
}
