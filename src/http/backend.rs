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
use crate::changes::{self, BreakglassGrant, Change, ChangeId};
use crate::config::Environment;
use crate::identity::{Caller, Principal};
use crate::lock::{HeldLock, LockInfo, Unlock};
use crate::policy::{refusal, Action, Decision, RequestContext};
use crate::state::{self, Document, StateName, Write};
use crate::store::environment::{ContentStream, NewLock, NewVersion};
use crate::store::{EnvStore, Tx};
use crate::verdict::{self, Ask, Effect, Facts};

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

/// The facts of a verdict, as read inside the transaction that carries out its effect.
pub(super) struct Gathered {
    pub(super) held: Option<HeldLock>,
    own_read_lock: bool,
    breakglass: Option<BreakglassGrant>,
    named: Option<Change>,
    lock_change: Option<Change>,
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

    /// Decides a request that changes nothing, records the deciding policies, and refuses
    /// with the sentence when denied.
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
            Err(ApiError::Forbidden(refusal::sentence(
                self.principal(),
                action,
                self.env,
            )))
        }
    }

    /// Reads, inside `tx`, what the verdict on a request depends on; `lock_id` is the lock
    /// the request names.
    pub(super) async fn gather(
        &self,
        tx: &mut Tx<'_>,
        lock_id: Option<&str>,
    ) -> Result<Gathered, ApiError> {
        let env = self.env;
        let state = self.name.as_str();
        let me = self.principal().to_string();
        let held = tx.held_lock(state).await?;
        let own_read_lock = match lock_id {
            Some(id) => tx
                .read_lock(id)
                .await?
                .is_some_and(|r| r.state == state && r.principal == me),
            None => false,
        };
        let breakglass = match env.breakglass {
            Some(_) => tx
                .open_breakglass_for(&me)
                .await?
                .map(|row| row.grant(&env.name)),
            None => None,
        };
        let named = match self
            .change
            .as_deref()
            .and_then(|text| ChangeId::parse(text).ok())
        {
            Some(id) if id.environment == env.name => {
                tx.change(&env.name, env.required_approvals(), id.number)
                    .await?
            }
            _ => None,
        };
        let lock_change = match held.as_ref().and_then(|h| h.change_number) {
            Some(number) => {
                tx.change(&env.name, env.required_approvals(), number)
                    .await?
            }
            None => None,
        };
        Ok(Gathered {
            held,
            own_read_lock,
            breakglass,
            named,
            lock_change,
        })
    }

    /// The verdict on `ask` from what was gathered, rendered into the record; the effect to
    /// carry out, or the refusal to answer.
    pub(super) fn judge(
        &self,
        record: &mut Record,
        gathered: &Gathered,
        ask: Ask<'_>,
    ) -> Result<Effect, ApiError> {
        let facts = Facts {
            policy: &self.app.policy,
            env: self.env,
            state: self.name.as_str(),
            caller: &self.caller,
            source_ip: Some(self.peer.ip()),
            held: gathered.held.as_ref(),
            own_read_lock: gathered.own_read_lock,
            breakglass: gathered.breakglass.as_ref(),
            named: self
                .change
                .as_deref()
                .map(|text| (text, gathered.named.as_ref())),
            lock_change: gathered.lock_change.as_ref(),
            now: chrono::Utc::now(),
        };
        let verdict = verdict::decide(ask, &facts);
        record.action = verdict.action.as_str().into();
        record.policy = Some(verdict.decided_by);
        record.reason = verdict.reason;
        record.breakglass = verdict.breakglass;
        record.change = verdict.change.or(record.change.take());
        record.forced = verdict.forced;
        verdict.outcome.map_err(ApiError::from)
    }

    /// Gathers the facts in a transaction of its own and judges `ask`, before a body is read:
    /// a refused writer's body is never read. The verdict that counts is taken again, with
    /// the body, in the transaction that writes.
    async fn judge_early(
        &self,
        record: &mut Record,
        ask: Ask<'_>,
        lock_id: Option<&str>,
    ) -> Result<(), ApiError> {
        let mut tx = self.store.begin().await?;
        let gathered = self.gather(&mut tx, lock_id).await?;
        drop(tx);
        self.judge(record, &gathered, ask).map(|_| ())
    }
}

async fn handle(app: &Arc<App>, record: &mut Record, req: Incoming) -> Result<Reply, ApiError> {
    let caller = authenticate(app, record, &req.headers).await?;
    let (env, store) = app.environment(&req.env)?;
    let name = StateName::parse(&req.name).map_err(ApiError::BadRequest)?;
    let mut query = parameters(&req.uri)?;
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
        "GET" => get(&call, record, app).await,
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

/// The query of a state request. `change` and `ID` decide what a request may do: named twice,
/// whatever else reads the address (a proxy, a log, a person) may take the one value and the
/// verdict the other, so a repeated one is refused.
fn parameters(uri: &Uri) -> Result<HashMap<String, String>, ApiError> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))?;
    let mut query = HashMap::new();
    for (name, value) in pairs {
        if let Some(decisive) = ["change", "ID"].into_iter().find(|d| *d == name) {
            if query.contains_key(decisive) {
                return Err(ApiError::BadRequest(format!(
                    "the query names `{decisive}` more than once: name it once"
                )));
            }
        }
        query.insert(name, value);
    }
    Ok(query)
}

async fn get(call: &Call<'_>, record: &mut Record, app: &Arc<App>) -> Result<Reply, ApiError> {
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
            Err(e) => return Err(ApiError::audit_unwritable(e)),
        }
    }
    match call.store.latest_stream(call.name.as_str()).await? {
        // Streamed chunk by chunk; the declared length lets the client tell a cut-off body.
        Some((meta, chunks)) => {
            record.version = Some(meta.version);
            let body = ContentBody {
                chunks,
                remaining: u64::try_from(meta.size).unwrap_or(0),
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
///
/// The store checks the content as it streams and withholds its last chunk when the content
/// does not match its SHA-256 (see [`crate::store::environment`]); the body then ends in an
/// error, so the connection is aborted and terraform fails instead of taking the damaged
/// state. The request's record was written when the answer began, so the damage gets a record
/// of its own, committed before the body ends.
struct ContentBody {
    chunks: ContentStream,
    remaining: u64,
    /// The server and the request's record, to record damage with.
    on_damage: Option<(Arc<App>, Record)>,
    /// The damage being recorded, which ends the body once committed.
    recording: Option<futures_util::future::BoxFuture<'static, crate::store::StoreError>>,
}

/// Records that version `version` of the state being served was found damaged.
async fn record_damage(app: Arc<App>, mut record: Record, state: String, version: i64) {
    tracing::error!(state = %state, version, "a state's content does not match its sha256; the response is cut off");
    record.reason = Some(super::error::damage_reason(&state, version));
    record.time = crate::store::now();
    record.decision = Outcome::Error;
    // The answer began as 200 and was cut off: it has no status of its own.
    record.status = None;
    if let Err(e) = super::record(&app, &record).await {
        tracing::error!(error = %e, "cannot write the audit record of a damaged content");
    }
}

impl http_body::Body for ContentBody {
    type Data = axum::body::Bytes;
    type Error = crate::store::StoreError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use crate::store::StoreError;
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
            Some(Err(StoreError::Damaged { state, version })) => {
                let damage = StoreError::Damaged {
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

async fn lock(call: &Call<'_>, record: &mut Record, body: &[u8]) -> Result<Reply, ApiError> {
    let info = LockInfo::parse_lock(body).map_err(ApiError::BadRequest)?;
    record.lock_id = Some(info.id.clone());
    let principal = call.principal().to_string();
    let state = call.name.as_str();
    let mut tx = call.store.begin().await?;
    let gathered = call.gather(&mut tx, None).await?;
    let ask = Ask::Lock {
        id: &info.id,
        operation: &info.operation,
    };
    match call.judge(record, &gathered, ask)? {
        Effect::ReadLock => tx.insert_read_lock(state, &info.id, &principal).await?,
        effect @ (Effect::TakeLock { change } | Effect::TakeOver { change }) => {
            if matches!(effect, Effect::TakeOver { .. }) {
                take_over(&mut tx, call, record, &gathered, change).await?;
                record.lock_id = Some(info.id.clone());
            }
            // The LockInfo as parsed (bounded), not the body as sent.
            let text = info.to_json();
            let lock = NewLock {
                lock_id: &info.id,
                principal: &principal,
                branch: call.caller.branch.as_deref(),
                subject: call.caller.subject.as_deref(),
                operation: &info.operation,
                info: &text,
                change_number: change,
            };
            tx.insert_lock(state, &lock).await?;
        }
        Effect::LockRetried => tx.touch_lock(state).await?,
        other => return Err(unexpected(other)),
    }
    commit_with_record(tx, record, StatusCode::OK).await?;
    Ok(Reply::ok(body.to_vec()))
}

/// Releases the lock whose lease ran out, loudly: the verdict's reason says whose it was and
/// since when it was idle; a change applied under it is used up, as at a force-unlock.
async fn take_over(
    tx: &mut Tx<'_>,
    call: &Call<'_>,
    record: &mut Record,
    gathered: &Gathered,
    effect_change: Option<i64>,
) -> Result<(), ApiError> {
    let took_over = record.reason.take().unwrap_or_default();
    // The record is the new lock's: its change, not the one the idle lock was taken for.
    let change = record.change.clone();
    let used_up = release(tx, call, record, gathered).await?;
    record.change = change;
    // The idle lock's apply wrote for this very change, which its release has used up: a new
    // lock for it could write nothing. Refused here, at the lock, with nothing changed.
    if let (Some(number), Some(held)) = (used_up, &gathered.held) {
        if effect_change == Some(number) {
            let id = ChangeId::new(&call.env.name, number);
            let sentence = format!(
                "change {id} was written under lock {} of {}, idle since {}: that apply used it up; propose a new change and take the lock under it",
                held.lock_id,
                held.holder(),
                held.last_active()
            );
            return Err(ApiError::Locked(Box::new(LockInfo::refusal(
                &sentence,
                &held.operation,
            ))));
        }
    }
    if let Some(held) = &gathered.held {
        tracing::warn!(
            environment = %call.env.name,
            state = %call.name.as_str(),
            holder = %held.holder(),
            idle_since = %held.last_active(),
            taker = %call.caller.describe(),
            "a lock whose lease ran out was taken over"
        );
    }
    record.reason = Some(match record.reason.take() {
        Some(applied) => format!("{took_over}; {applied}"),
        None => took_over,
    });
    Ok(())
}

/// An effect the verdict does not give for the request asked: a fault of the server.
fn unexpected(effect: Effect) -> ApiError {
    ApiError::Internal(format!(
        "the verdict gave an effect of another request: {effect:?}"
    ))
}

/// Releases `held`; a change it was taken for, still open, is used up when something was
/// written for it under the lock. Returns the change so used up.
async fn release(
    tx: &mut Tx<'_>,
    call: &Call<'_>,
    record: &mut Record,
    gathered: &Gathered,
) -> Result<Option<i64>, ApiError> {
    let Some(held) = &gathered.held else {
        return Ok(None);
    };
    let state = call.name.as_str();
    record.lock_id = Some(held.lock_id.clone());
    let open = gathered
        .lock_change
        .as_ref()
        .is_some_and(|c| c.status == changes::Status::Open);
    if let Some(number) = held.change_number.filter(|_| open) {
        let id = ChangeId::new(&call.env.name, number);
        record.change = Some(id.to_string());
        if let Some(version) = tx.version_under_lock(state, &held.lock_id, number).await? {
            tx.mark_applied(number, &held.principal, version).await?;
            record.reason = Some(format!("change {id} applied as version {version}"));
            tx.release_lock(state).await?;
            return Ok(Some(number));
        }
    }
    tx.release_lock(state).await?;
    Ok(None)
}

async fn unlock(call: &Call<'_>, record: &mut Record, body: &[u8]) -> Result<Reply, ApiError> {
    let request = Unlock::parse(body).map_err(ApiError::BadRequest)?;
    let (ask, named) = match &request {
        Unlock::Own(info) => (Ask::Unlock { id: &info.id }, Some(info.id.as_str())),
        Unlock::Force(id) => (Ask::ForceUnlock { id: id.as_deref() }, id.as_deref()),
    };
    record.lock_id = named.map(str::to_string);
    let mut tx = call.store.begin().await?;
    let gathered = call.gather(&mut tx, named).await?;
    match call.judge(record, &gathered, ask)? {
        Effect::Release => {
            release(&mut tx, call, record, &gathered).await?;
        }
        Effect::ReleaseReadLock => {
            if let Some(id) = named {
                tx.release_read_lock(id).await?;
            }
        }
        Effect::NothingHeld => {}
        other => return Err(unexpected(other)),
    }
    commit_with_record(tx, record, StatusCode::OK).await?;
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
    let lock_id = lock_id.as_deref();
    call.judge_early(
        record,
        Ask::Write {
            lock_id,
            past: None,
        },
        lock_id,
    )
    .await?;
    let bytes = read_body(headers, body, call.env.max_state_size).await?;
    let doc = Document::parse(&bytes).map_err(|e| ApiError::BadRequest(e.to_string()))?;

    let mut tx = call.store.begin().await?;
    let gathered = call.gather(&mut tx, lock_id).await?;
    let current = tx.latest_version(state).await?;
    let checked = state::check_write(current.as_ref(), &doc);
    let ask = Ask::Write {
        lock_id,
        past: checked.as_ref().err(),
    };
    let Effect::Write { change, use_up } = call.judge(record, &gathered, ask)? else {
        return Err(ApiError::Internal(
            "the verdict on a write gave another effect".into(),
        ));
    };
    // The holder is alive: its lease starts again.
    let under_lock = gathered
        .held
        .as_ref()
        .is_some_and(|h| lock_id == Some(h.lock_id.as_str()));
    if under_lock {
        tx.touch_lock(state).await?;
    }
    if let Ok(Write::Unchanged) = checked {
        record.version = current.map(|c| c.version);
        record.reason = Some("identical to the current version: nothing stored".into());
        commit_with_record(tx, record, StatusCode::OK).await?;
        return Ok(Reply::done());
    }
    let operation = gathered
        .held
        .as_ref()
        .filter(|h| lock_id == Some(h.lock_id.as_str()))
        .map(|h| h.operation.as_str());
    let version = tx
        .append_version(NewVersion {
            state,
            sha256: &doc.sha256,
            serial: Some(doc.serial),
            lineage: Some(&doc.lineage),
            principal: &principal,
            operation,
            lock_id,
            forced: record.forced,
            change_number: change,
            content: Some(&bytes),
        })
        .await?;
    if let Some(number) = change.filter(|_| use_up) {
        tx.mark_applied(number, &principal, version).await?;
    }
    record.version = Some(version);
    commit_with_record(tx, record, StatusCode::OK).await?;
    Ok(Reply::done())
}

async fn delete(call: &Call<'_>, record: &mut Record) -> Result<Reply, ApiError> {
    let state = call.name.as_str();
    let principal = call.principal().to_string();
    let mut tx = call.store.begin().await?;
    let gathered = call.gather(&mut tx, None).await?;
    let Effect::Delete { change } = call.judge(record, &gathered, Ask::Delete)? else {
        return Err(ApiError::Internal(
            "the verdict on a delete gave another effect".into(),
        ));
    };
    match tx.latest_version(state).await? {
        Some(current) if !current.deleted => {
            // A deletion is a version too: the history stays and can be restored.
            let version = tx
                .append_version(NewVersion {
                    state,
                    sha256: "",
                    serial: None,
                    lineage: None,
                    principal: &principal,
                    operation: None,
                    lock_id: None,
                    forced: false,
                    change_number: change,
                    content: None,
                })
                .await?;
            if let Some(number) = change {
                tx.mark_applied(number, &principal, version).await?;
            }
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
