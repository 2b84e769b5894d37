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
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;

use super::audited::{authenticate, commit_with_record, finish, read_body, Reply};
use super::raw::Raw;
use super::{ApiError, App};
use crate::audit::{Outcome, Record};
use crate::changes::{self, ChangeId};
use crate::config::Environment;
use crate::identity::{Caller, Principal};
use crate::lock::{self, LockInfo, Unlock};
use crate::policy::{refusal, Action, Decision, RequestContext};
use crate::state::{self, Document, StateName, Write};
use crate::store::environment::{ContentStream, HeldLock, NewVersion};
use crate::store::{EnvStore, Tx};

/// Lock bodies are small; anything bigger is not terraform talking.
const LOCK_BODY_LIMIT: u64 = 64 * 1024;

/// `/v1/state/{env}/{*name}`: every method of the protocol.
pub async fn state(State(app): State<Arc<App>>, raw: Raw, body: Body) -> Response {
    let mut record = raw.record(action_of(&raw.method));
    let result = async {
        let (env, name) = (raw.param("env")?, raw.param("name")?);
        record.environment = Some(env.clone());
        record.state = Some(name.clone());
        let request = Incoming {
            peer: raw.peer()?,
            env,
            name,
            method: raw.method,
            uri: raw.uri,
            headers: raw.headers,
            body,
        };
        handle(&app, &mut record, request).await
    }
    .await;
    finish(&app, record, result).await
}

/// `/v1/state/{env}` and `/v1/state/{env}/`: a state address without a name.
pub async fn nameless(State(app): State<Arc<App>>, raw: Raw) -> Response {
    let mut record = raw.record(action_of(&raw.method));
    let result = async {
        record.environment = Some(raw.param("env")?);
        authenticate(&app, &mut record, &raw.headers).await?;
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
pub(super) struct Call<'a> {
    pub(super) app: &'a App,
    pub(super) caller: Caller,
    pub(super) env: &'a Environment,
    pub(super) store: &'a EnvStore,
    pub(super) name: StateName,
    pub(super) peer: SocketAddr,
    /// The `?change=` of the backend address, in a protected environment.
    pub(super) change: Option<String>,
}

/// What allows a write in a protected environment.
pub(super) enum Grant {
    Change(i64),
    Breakglass,
}

impl Call<'_> {
    pub(super) fn principal(&self) -> &Principal {
        &self.caller.principal
    }

    pub(super) fn decide(&self, action: Action, operation: &str) -> Decision {
        self.app.policy.decide(
            self.principal(),
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
    pub(super) fn require(
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

    /// Whether the caller holds an open break-glass grant here; names it in the record.
    pub(super) async fn breakglass(&self, record: &mut Record) -> Result<bool, ApiError> {
        if self.env.breakglass.is_none() {
            return Ok(false);
        }
        let me = self.principal().to_string();
        let grant = self
            .store
            .open_breakglass()
            .await?
            .into_iter()
            .find(|g| g.principal == me);
        Ok(match grant {
            Some(g) => {
                let id = breakglass_id(&self.env.name, g.number);
                record.policy = Some(format!("break-glass {id}"));
                record.breakglass = Some(id);
                true
            }
            None => false,
        })
    }

    /// A writing permission: by policy, or under an open break-glass grant.
    pub(super) async fn require_writing(
        &self,
        record: &mut Record,
        action: Action,
        operation: &str,
    ) -> Result<(), ApiError> {
        match self.require(record, action, operation) {
            Err(refused) if !self.breakglass(record).await? => Err(refused),
            _ => Ok(()),
        }
    }

    pub(super) fn refusal(&self, action: Action) -> String {
        refusal::sentence(self.principal(), action, self.env)
    }

    /// In a protected environment, what allows this writer to write now: an open break-glass
    /// grant, or the approved, unexpired, unused change named by `?change=`, from an allowed
    /// branch. The inner error names the missing step.
    pub(super) async fn protected_grant(
        &self,
        tx: &mut Tx<'_>,
        record: &mut Record,
    ) -> Result<Result<Grant, String>, ApiError> {
        let env = self.env;
        if let Some(bg) = tx
            .open_breakglass_for(&self.principal().to_string())
            .await?
        {
            let id = breakglass_id(&env.name, bg.number);
            record.breakglass = Some(id.clone());
            record.reason = Some(format!(
                "break-glass {id} until {}: {}",
                bg.expires_at, bg.reason
            ));
            return Ok(Ok(Grant::Breakglass));
        }
        let Some(text) = &self.change else {
            return Ok(Err(changes::no_change_named(&env.name)));
        };
        record.change = Some(text.clone());
        let change = match ChangeId::parse(text)
            .ok()
            .filter(|id| id.environment == env.name)
        {
            Some(id) => {
                tx.change(&env.name, env.required_approvals(), id.number)
                    .await?
            }
            None => None,
        };
        Ok(changes::check_grant(
            env,
            self.name.as_str(),
            text,
            change.as_ref(),
            self.caller.branch.as_deref(),
            chrono::Utc::now(),
        )
        .map(Grant::Change))
    }
}

pub fn breakglass_id(env: &str, number: i64) -> String {
    format!("{env}-bg{number}")
}

async fn handle(app: &App, record: &mut Record, req: Incoming) -> Result<Reply, ApiError> {
    let caller = authenticate(app, record, &req.headers).await?;
    let (env, store) = app.environment(&req.env)?;
    let name = StateName::parse(&req.name).map_err(ApiError::BadRequest)?;
    let query: Query<HashMap<String, String>> = Query::try_from_uri(&req.uri)
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))?;
    let mut query = query.0;
    let call = Call {
        app,
        caller,
        env,
        store,
        name,
        peer: req.peer,
        change: query.remove("change"),
    };
    match req.method.as_str() {
        "GET" => get(&call, record).await,
        "POST" | "PUT" => post(&call, record, query.remove("ID"), &req.headers, req.body).await,
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
    // From memory, when nothing can have been written since the newest version was read: the
    // record, naming the version served, is committed only if so.
    if let Some((version, content, epoch)) = call.store.remembered_latest(call.name.as_str()) {
        record.version = Some(version);
        record.decision = Outcome::Allow;
        record.status = Some(StatusCode::OK.as_u16());
        match call.store.append_read(record, epoch).await {
            Ok(true) => return Ok(Reply::ok(content)),
            // Written meanwhile: read from the database.
            Ok(false) => record.version = None,
            Err(e) => {
                tracing::error!(error = %e, "cannot write the audit record; refusing the request");
                return Err(ApiError::AuditUnavailable);
            }
        }
    }
    match call.store.latest_stream(call.name.as_str()).await? {
        // Streamed chunk by chunk; the declared length lets the client tell a cut-off body.
        Some((meta, chunks)) => {
            record.version = Some(meta.version);
            let body = ContentBody {
                chunks,
                remaining: u64::try_from(meta.size).unwrap_or(0),
            };
            Ok(Reply {
                audited: false,
                ..Reply::ok(Body::new(body))
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

/// A state's content as a response body: its chunks as they are read from the store, with the
/// length known up front, so that the response carries `Content-Length` and a client can tell
/// a cut-off body from a whole one.
struct ContentBody {
    chunks: ContentStream,
    remaining: u64,
}

impl http_body::Body for ContentBody {
    type Data = axum::body::Bytes;
    type Error = crate::store::StoreError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use futures_util::StreamExt;
        self.chunks.poll_next_unpin(cx).map(|next| match next {
            Some(Ok(chunk)) => {
                self.remaining = self.remaining.saturating_sub(chunk.len() as u64);
                Some(Ok(http_body::Frame::data(chunk)))
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot read a state's content; the response is cut off");
                Some(Err(e))
            }
            None => None,
        })
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

async fn lock(call: &Call<'_>, record: &mut Record, body: &[u8]) -> Result<Reply, ApiError> {
    let info = LockInfo::parse_lock(body).map_err(ApiError::BadRequest)?;
    record.lock_id = Some(info.id.clone());
    let mut decision = call.decide(Action::StateLock, &info.operation);
    record.policy = Some(decision.explanation());
    if !decision.allowed && call.breakglass(record).await? {
        decision.allowed = true;
    }
    let principal = call.principal().to_string();
    let state = call.name.as_str();

    // A plan by a reader, or a plan for a change not yet proposed in a protected environment:
    // granted, but it blocks nobody and nothing can be written under it.
    let planning_only = !decision.allowed || (call.env.protected() && call.change.is_none());
    if info.operation == lock::PLAN && planning_only {
        let read = call.decide(Action::StateRead, &info.operation);
        if read.allowed {
            record.policy = Some(read.explanation());
            record.reason =
                Some("read-only plan lock: blocks no writer; writes under it are refused".into());
            let mut tx = call.store.begin().await?;
            tx.insert_read_lock(state, &info.id, &principal).await?;
            commit_with_record(tx, record, StatusCode::OK).await?;
            return Ok(Reply::ok(body.to_vec()));
        }
    }
    if !decision.allowed {
        let sentence = call.refusal(Action::StateLock);
        return Err(ApiError::Locked(Box::new(LockInfo::refusal(
            &sentence,
            &info.operation,
        ))));
    }

    let mut tx = call.store.begin().await?;
    let grant = if call.env.protected() {
        match call.protected_grant(&mut tx, record).await? {
            Ok(grant) => Some(grant),
            Err(problem) => {
                let sentence = refusal::missing_step(call.principal(), call.env, &problem);
                return Err(ApiError::Locked(Box::new(LockInfo::refusal(
                    &sentence,
                    &info.operation,
                ))));
            }
        }
    } else {
        None
    };
    match tx.held_lock(state).await? {
        None => {
            let text = String::from_utf8_lossy(body);
            tx.insert_lock(state, &info.id, &principal, &info.operation, &text)
                .await?;
            if let Some(Grant::Change(number)) = grant {
                tx.set_lock_change(state, number).await?;
            }
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

/// Releases `held`; a change it was taken for is used up when something was written under it.
async fn release(
    tx: &mut Tx<'_>,
    call: &Call<'_>,
    record: &mut Record,
    held: &HeldLock,
) -> Result<(), ApiError> {
    let state = call.name.as_str();
    if let Some(number) = held.change_number {
        let id = ChangeId {
            environment: call.env.name.clone(),
            number,
        };
        record.change = Some(id.to_string());
        if let Some(version) = tx.version_under_lock(state, &held.lock_id).await? {
            tx.mark_applied(number, &held.principal, version).await?;
            record.reason = Some(format!("change {id} applied as version {version}"));
        }
    }
    tx.release_lock(state).await?;
    Ok(())
}

async fn unlock(call: &Call<'_>, record: &mut Record, body: &[u8]) -> Result<Reply, ApiError> {
    let principal = call.principal().to_string();
    let state = call.name.as_str();
    match Unlock::parse(body).map_err(ApiError::BadRequest)? {
        Unlock::Own(info) => {
            record.lock_id = Some(info.id.clone());
            let mut tx = call.store.begin().await?;
            match tx.held_lock(state).await? {
                Some(held) if held.lock_id == info.id => {
                    if held.principal == principal {
                        // Whoever was granted a lock may always release it.
                        record.policy = Some("lock holder".into());
                    } else {
                        record.action = Action::StateForceUnlock.as_str().into();
                        call.require(record, Action::StateForceUnlock, &held.operation)?;
                        record.reason = Some(format!("released the lock of {}", held.principal));
                    }
                    release(&mut tx, call, record, &held).await?;
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
                    release(&mut tx, call, record, &held).await?;
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
    let principal = call.principal().to_string();
    let state = call.name.as_str();
    record.lock_id = lock_id.clone();
    // Authorize before reading what may be a large body.
    call.require_writing(record, Action::StateWrite, "").await?;
    let bytes = read_body(headers, body, call.env.max_state_size).await?;
    let doc = Document::parse(&bytes).map_err(|e| ApiError::BadRequest(e.to_string()))?;

    let mut tx = call.store.begin().await?;
    // In a protected environment, an unlocked write (terraform -lock=false) must carry its
    // own grant, and a write under a lock carries the grant the lock was taken with.
    let mut unlocked_change = None;
    let mut lock_change = None;
    let operation = match (tx.held_lock(state).await?, &lock_id) {
        (Some(held), Some(id)) if held.lock_id == *id && held.principal == principal => {
            call.require_writing(record, Action::StateWrite, &held.operation)
                .await?;
            lock_change = held.change_number;
            if let Some(number) = held.change_number {
                record.change = Some(
                    ChangeId {
                        environment: call.env.name.clone(),
                        number,
                    }
                    .to_string(),
                );
            }
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
        (None, None) => {
            if call.env.protected() {
                match call.protected_grant(&mut tx, record).await? {
                    Ok(Grant::Change(number)) => unlocked_change = Some(number),
                    Ok(Grant::Breakglass) => {}
                    Err(problem) => {
                        return Err(ApiError::Forbidden(refusal::missing_step(
                            call.principal(),
                            call.env,
                            &problem,
                        )))
                    }
                }
            }
            None
        }
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
            change_number: lock_change.or(unlocked_change),
            content: Some(&bytes),
        })
        .await?;
    if let Some(number) = unlocked_change {
        tx.mark_applied(number, &principal, version).await?;
    }
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
                    principal: &call.principal().to_string(),
                    operation: None,
                    lock_id: None,
                    forced: false,
                    change_number: None,
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
