//! The Terraform/OpenTofu `http` backend protocol: GET, POST (or PUT), DELETE, LOCK and
//! UNLOCK on `/v1/state/{environment}/{name...}`.
//!
//! Every request is authenticated, authorized and recorded in its environment's audit chain,
//! whatever its outcome; a request whose record cannot be written is refused. Refusals are
//! made at LOCK whenever possible, because a write refused at POST leaves terraform with
//! resources created and its state in `errored.tfstate`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::{ApiError, App};
use crate::audit::{self, Outcome, Record};
use crate::config::Environment;
use crate::identity::{self, Principal};
use crate::lock::{self, LockInfo, Unlock};
use crate::policy::{refusal, Action, Decision, RequestContext};
use crate::state::{self, Document, StateName, Write};
use crate::store::environment::NewVersion;
use crate::store::{EnvStore, Tx};

/// Lock bodies are small; anything bigger is not terraform talking.
const LOCK_BODY_LIMIT: u64 = 64 * 1024;

/// A successful answer, and whether its audit record was already committed with its effect.
struct Reply {
    status: StatusCode,
    body: Option<(&'static str, Vec<u8>)>,
    audited: bool,
}

impl Reply {
    /// 200 with a JSON body, recorded with its effect.
    fn ok(body: Vec<u8>) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: Some(("application/json", body)),
            audited: true,
        }
    }

    /// 200 without a body, recorded with its effect.
    fn done() -> Reply {
        Reply {
            status: StatusCode::OK,
            body: None,
            audited: true,
        }
    }
}

/// `/v1/state/{env}/{*name}`: every method of the protocol.
pub async fn state(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((env, name)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut record = Record::new(action_of(&method));
    record.source = Some(peer.ip().to_string());
    record.user_agent = header_str(&headers, header::USER_AGENT).map(str::to_string);
    record.environment = Some(env.clone());
    record.state = Some(name.clone());
    let request = Incoming {
        peer,
        env,
        name,
        method,
        uri,
        headers,
        body,
    };
    let result = handle(&app, &mut record, request).await;
    finish(&app, record, result).await
}

/// `/v1/state/{env}` and `/v1/state/{env}/`: a state address without a name.
pub async fn nameless(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(env): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let mut record = Record::new(action_of(&method));
    record.source = Some(peer.ip().to_string());
    record.environment = Some(env);
    let result = async {
        authenticate(&app, &mut record, &headers).await?;
        Err::<Reply, _>(ApiError::BadRequest(
            "the address names no state: use /v1/state/ENVIRONMENT/NAME".into(),
        ))
    }
    .await;
    finish(&app, record, result).await
}

struct Incoming {
    peer: SocketAddr,
    env: String,
    name: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
}

/// One authenticated request against one state.
struct Call<'a> {
    app: &'a App,
    principal: Principal,
    env: &'a Environment,
    store: &'a EnvStore,
    name: StateName,
    peer: SocketAddr,
}

impl Call<'_> {
    fn decide(&self, action: Action, operation: &str) -> Decision {
        self.app.policy.decide(
            &self.principal,
            action,
            &self.env.name,
            &RequestContext {
                state: self.name.as_str(),
                operation,
                source_ip: Some(self.peer.ip()),
            },
        )
    }

    /// Decides, records the deciding policies, and refuses with the sentence when denied.
    fn require(
        &self,
        record: &mut Record,
        action: Action,
        operation: &str,
    ) -> Result<(), ApiError> {
        let decision = self.decide(action, operation);
        record.policy = Some(decision.explanation());
        if decision.allowed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(self.refusal(action)))
        }
    }

    fn refusal(&self, action: Action) -> String {
        refusal::sentence(&self.principal, action, self.env)
    }
}

async fn authenticate(
    app: &App,
    record: &mut Record,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let principal = identity::authenticate(
        &app.config,
        &app.stores.system,
        header_str(headers, header::AUTHORIZATION),
    )
    .await
    .map_err(|e| match e {
        identity::AuthError::Store(e) => ApiError::from(e),
        other => ApiError::Unauthenticated(other.to_string()),
    })?;
    record.principal = Some(principal.to_string());
    Ok(principal)
}

async fn handle(app: &App, record: &mut Record, req: Incoming) -> Result<Reply, ApiError> {
    let principal = authenticate(app, record, &req.headers).await?;
    let (Some(env), Some(store)) = (
        app.config.environment(&req.env),
        app.stores.environment(&req.env),
    ) else {
        let known: Vec<&str> = app
            .config
            .environments
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        return Err(ApiError::NotFound(format!(
            "there is no environment `{}`: known environments are {}",
            req.env,
            known.join(", ")
        )));
    };
    let name = StateName::parse(&req.name).map_err(ApiError::BadRequest)?;
    let call = Call {
        app,
        principal,
        env,
        store,
        name,
        peer: req.peer,
    };
    match req.method.as_str() {
        "GET" => get(&call, record).await,
        "POST" | "PUT" => {
            let query: Query<HashMap<String, String>> = Query::try_from_uri(&req.uri)
                .map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))?;
            let lock_id = query.0.get("ID").cloned();
            post(&call, record, lock_id, &req.headers, req.body).await
        }
        "DELETE" => delete(&call, record).await,
        "LOCK" => {
            let body = read_body(&req.headers, req.body, LOCK_BODY_LIMIT).await?;
            lock(&call, record, &body).await
        }
        "UNLOCK" => {
            let body = read_body(&req.headers, req.body, LOCK_BODY_LIMIT).await?;
            unlock(&call, record, &body).await
        }
        other => Err(ApiError::MethodNotAllowed(format!(
            "{other} is not part of the state protocol: use GET, POST, DELETE, LOCK or UNLOCK"
        ))),
    }
}

async fn get(call: &Call<'_>, record: &mut Record) -> Result<Reply, ApiError> {
    call.require(record, Action::StateRead, "")?;
    match call.store.latest_content(call.name.as_str()).await? {
        Some((meta, content)) => {
            record.version = Some(meta.version);
            Ok(Reply {
                audited: false,
                ..Reply::ok(content)
            })
        }
        // No state yet. 204 rather than 404, so that "no state" never looks like "no such
        // environment" (a 404 would let terraform start a new lineage anyway).
        None => Ok(Reply {
            status: StatusCode::NO_CONTENT,
            body: None,
            audited: false,
        }),
    }
}

async fn lock(call: &Call<'_>, record: &mut Record, body: &[u8]) -> Result<Reply, ApiError> {
    let info = LockInfo::parse_lock(body).map_err(ApiError::BadRequest)?;
    record.lock_id = Some(info.id.clone());
    let decision = call.decide(Action::StateLock, &info.operation);
    record.policy = Some(decision.explanation());
    let principal = call.principal.to_string();
    let state = call.name.as_str();

    if !decision.allowed {
        // A reader's plan: granted, but it blocks nobody and nothing can be written under it.
        let read = call.decide(Action::StateRead, &info.operation);
        if info.operation == lock::PLAN && read.allowed {
            record.policy = Some(read.explanation());
            record.reason =
                Some("read-only plan lock: blocks no writer; writes under it are refused".into());
            let mut tx = call.store.begin().await?;
            tx.insert_read_lock(state, &info.id, &principal).await?;
            commit_with_record(tx, record, StatusCode::OK).await?;
            return Ok(Reply::ok(body.to_vec()));
        }
        let sentence = call.refusal(Action::StateLock);
        return Err(ApiError::Locked(Box::new(LockInfo::refusal(
            &sentence,
            &info.operation,
        ))));
    }

    let mut tx = call.store.begin().await?;
    match tx.held_lock(state).await? {
        None => {
            let text = String::from_utf8_lossy(body);
            tx.insert_lock(state, &info.id, &principal, &info.operation, &text)
                .await?
        }
        // A retried LOCK (the client retries on connection errors): grant it again.
        Some(held) if held.lock_id == info.id && held.principal == principal => {
            record.reason = Some("lock already held by the caller under this ID".into());
        }
        Some(held) => return Err(ApiError::Locked(Box::new(LockInfo::holder(&held)))),
    }
    commit_with_record(tx, record, StatusCode::OK).await?;
    Ok(Reply::ok(body.to_vec()))
}

async fn unlock(call: &Call<'_>, record: &mut Record, body: &[u8]) -> Result<Reply, ApiError> {
    let principal = call.principal.to_string();
    let state = call.name.as_str();
    match Unlock::parse(body).map_err(ApiError::BadRequest)? {
        Unlock::Own(info) => {
            record.lock_id = Some(info.id.clone());
            let mut tx = call.store.begin().await?;
            match tx.held_lock(state).await? {
                Some(held) if held.lock_id == info.id => {
                    if held.principal == principal {
                        call.require(record, Action::StateUnlock, &held.operation)?;
                    } else {
                        record.action = Action::StateForceUnlock.as_str().into();
                        call.require(record, Action::StateForceUnlock, &held.operation)?;
                        record.reason = Some(format!("released the lock of {}", held.principal));
                    }
                    tx.release_lock(state).await?;
                }
                held => match tx.read_lock(&info.id).await? {
                    Some(read) if read.state == state && read.principal == principal => {
                        record.reason = Some("released a read-only plan lock".into());
                        tx.release_read_lock(&info.id).await?;
                    }
                    _ => match held {
                        Some(held) => {
                            return Err(ApiError::Locked(Box::new(LockInfo::holder(&held))))
                        }
                        None => record.reason = Some("no lock was held under this ID".into()),
                    },
                },
            }
            commit_with_record(tx, record, StatusCode::OK).await?;
        }
        Unlock::Force(id) => {
            record.action = Action::StateForceUnlock.as_str().into();
            record.lock_id = id.clone();
            call.require(record, Action::StateForceUnlock, "")?;
            let mut tx = call.store.begin().await?;
            match tx.held_lock(state).await? {
                Some(held) => {
                    if let Some(id) = id.filter(|id| !lock::names(&held, id)) {
                        return Err(ApiError::Conflict(format!(
                            "lock {id} is not the lock held: {}",
                            LockInfo::holder(&held).id
                        )));
                    }
                    record.lock_id = Some(held.lock_id.clone());
                    record.reason = Some(format!("force-unlocked the lock of {}", held.principal));
                    tx.release_lock(state).await?;
                }
                None => record.reason = Some("no lock was held".into()),
            }
            commit_with_record(tx, record, StatusCode::OK).await?;
        }
    }
    Ok(Reply::done())
}

async fn post(
    call: &Call<'_>,
    record: &mut Record,
    lock_id: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Reply, ApiError> {
    let principal = call.principal.to_string();
    let state = call.name.as_str();
    record.lock_id = lock_id.clone();
    // Authorize before reading what may be a large body.
    call.require(record, Action::StateWrite, "")?;
    let bytes = read_body(headers, body, call.env.max_state_size).await?;
    let doc = Document::parse(&bytes).map_err(|e| ApiError::BadRequest(e.to_string()))?;

    let mut tx = call.store.begin().await?;
    let operation = match (tx.held_lock(state).await?, &lock_id) {
        (Some(held), Some(id)) if held.lock_id == *id && held.principal == principal => {
            call.require(record, Action::StateWrite, &held.operation)?;
            Some(held.operation)
        }
        (Some(held), _) => return Err(ApiError::Locked(Box::new(LockInfo::holder(&held)))),
        (None, Some(id)) => {
            let problem = if tx.read_lock(id).await?.is_some() {
                format!("lock {id} is a read-only plan lock: nothing can be written under it")
            } else {
                format!("lock {id} is not held (released or force-unlocked meanwhile): nothing was written; run terraform again")
            };
            return Err(ApiError::Conflict(problem));
        }
        // terraform -lock=false: an unlocked write by a writer.
        (None, None) => None,
    };
    let op = operation.as_deref().unwrap_or("");
    let current = tx.latest_version(state).await?;
    let forced = match state::check_write(current.as_ref(), &doc) {
        Ok(Write::Unchanged) => {
            record.version = current.map(|c| c.version);
            record.reason = Some("identical to the current version: nothing stored".into());
            commit_with_record(tx, record, StatusCode::OK).await?;
            return Ok(Reply::done());
        }
        Ok(Write::Append) => false,
        Err(refused) => {
            let force = call.decide(Action::StateForceWrite, op);
            if !(refused.forceable() && force.allowed) {
                return Err(ApiError::Conflict(format!(
                    "{refused}; forcing it needs state:force-write in {}",
                    call.env.name
                )));
            }
            record.policy = Some(format!(
                "{}; {}",
                record.policy.take().unwrap_or_default(),
                force.explanation()
            ));
            record.reason = Some(format!("forced past: {refused}"));
            record.forced = true;
            true
        }
    };
    let version = tx
        .append_version(NewVersion {
            state,
            sha256: &doc.sha256,
            serial: Some(doc.serial),
            lineage: Some(&doc.lineage),
            principal: &principal,
            operation: operation.as_deref(),
            lock_id: lock_id.as_deref(),
            forced,
            content: Some(&bytes),
        })
        .await?;
    record.version = Some(version);
    commit_with_record(tx, record, StatusCode::OK).await?;
    Ok(Reply::done())
}

async fn delete(call: &Call<'_>, record: &mut Record) -> Result<Reply, ApiError> {
    call.require(record, Action::StateDelete, "")?;
    let state = call.name.as_str();
    let mut tx = call.store.begin().await?;
    if let Some(held) = tx.held_lock(state).await? {
        return Err(ApiError::Locked(Box::new(LockInfo::holder(&held))));
    }
    match tx.latest_version(state).await? {
        Some(current) if !current.deleted => {
            // A deletion is a version too: the history stays and can be restored.
            let version = tx
                .append_version(NewVersion {
                    state,
                    sha256: "",
                    serial: None,
                    lineage: None,
                    principal: &call.principal.to_string(),
                    operation: None,
                    lock_id: None,
                    forced: false,
                    content: None,
                })
                .await?;
            record.version = Some(version);
        }
        _ => {
            return Err(ApiError::NotFound(format!(
                "there is no state `{state}` in {}",
                call.env.name
            )))
        }
    }
    commit_with_record(tx, record, StatusCode::OK).await?;
    Ok(Reply::done())
}

/// Records the request as allowed inside `tx` and commits both; the record failing to write
/// rolls the effect back.
async fn commit_with_record(
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
async fn finish(app: &App, mut record: Record, result: Result<Reply, ApiError>) -> Response {
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
        "state request"
    );
    if !audited {
        if let Err(e) = super::record(app, &record).await {
            tracing::error!(error = %e, "cannot write the audit record; refusing the request");
            return ApiError::AuditUnavailable.into_response();
        }
    }
    response
}

async fn read_body(headers: &HeaderMap, body: Body, limit: u64) -> Result<Vec<u8>, ApiError> {
    let too_large = |size: Option<u64>| {
        ApiError::TooLarge(match size {
            Some(size) => state::Refusal::TooLarge {
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
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map(|b| b.to_vec())
        .map_err(|_| too_large(None))?;
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

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
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
