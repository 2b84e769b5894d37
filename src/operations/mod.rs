//! What a caller can do, one file per thing: read a state, write it, lock it, unlock it,
//! delete it, roll it back, propose a change (or a new plan for it), attest to its plan,
//! decide on one, open or close a break-glass grant, report drift and acknowledge what the
//! backend saw ([`drift`]); and, beside them, deliver the
//! notifications their audit records are ([`notify`]). Each is a small function over the server's parts and a store transaction that
//! reads the facts, asks the domain ([`crate::verdict`], [`crate::changes`]) and carries out
//! the effect, filling in the facts of its audit record and committing that record with the
//! effect, so that one cannot exist without the other.
//!
//! Operations never know HTTP: they answer an [`OpError`] (the sentences a refused person
//! reads), which an edge maps to its own answers. They read every decision time from the
//! [`Server`]'s [`Clock`], so that a test can move it.

pub mod attest;
pub mod audit_log;
pub mod breakglass;
pub mod decide;
pub mod delete;
pub mod drift;
pub mod health;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod propose;
pub mod read;
pub mod rollback;
pub mod session;
pub mod unlock;
pub mod write;

use std::net::IpAddr;
use std::sync::Arc;

use crate::audit::{checkpoint, Outcome, Record, Refused};
use crate::certificate::ClientCertificate;
use crate::changes::{BreakglassGrant, Change, ChangeId};
use crate::config::{Config, Environment};
use crate::identity::oidc::{OidcError, OidcVerifier};
use crate::identity::{self, AuthError, Caller, Principal};
use crate::lock::{HeldLock, LockInfo};
use crate::policy::{refusal, Action, Decision, Policy, PolicyError, RequestContext};
use crate::state::StateName;
use crate::store::{AtStart, EnvStore, StoreError, Stores, Tx};
use crate::time::Clock;
use crate::verdict::{self, Ask, Effect, Facts};

/// The status an audit record names for an effect committed with it: the answer the caller
/// receives.
pub const DONE: u16 = 200;
pub const CREATED: u16 = 201;
pub const NO_CONTENT: u16 = 204;

/// Everything an operation needs, built once at start.
pub struct Server {
    pub config: Config,
    pub policy: Policy,
    pub oidc: OidcVerifier,
    pub stores: Stores,
    /// The time every decision reads.
    pub clock: Clock,
    /// What the server measures (`GET /metrics`).
    pub metrics: crate::metrics::Metrics,
}

/// Why the server could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Oidc(#[from] OidcError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot set up the server's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Why an operation was not carried out: a refusal with the sentence its caller reads, or a
/// fault of the server, already told apart (a full disk, a database that does not answer, a
/// damaged version, an audit log that cannot be written) so that every edge answers alike.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request's credentials prove no principal.
    #[error("{0}")]
    Unauthenticated(String),
    /// Policy refused a request other than a lock.
    #[error("{0}")]
    Forbidden(String),
    /// Refused at a lock because it is held by someone else: the LockInfo names the holder.
    #[error("{}", .0.id)]
    Locked(Box<LockInfo>),
    /// A lock refused by the rules: the LockInfo's `Info` says why (see
    /// [`LockInfo::refusal`]).
    #[error("{}", .0.info)]
    LockRefused(Box<LockInfo>),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The audit record could not be written, so the request is refused (fail closed).
    #[error(
        "the audit log cannot be written, so the request was refused; the server's log says why"
    )]
    AuditUnavailable,
    /// A write found the disk under a database full: the sentence names the database.
    #[error("{0}")]
    DiskFull(String),
    /// A database did not answer, or could not be opened at start: the sentence names it.
    #[error("{0}")]
    DatabaseDown(String),
    /// A stored version's content does not match its SHA-256: a fault of the server's storage,
    /// said plainly because the way out is the caller's to take.
    #[error("version {version} of {state} is damaged: its content does not match its sha256; restore it with `bulkhead state rollback` to an intact version")]
    Damaged { state: String, version: i64 },
    /// A fault of the server; the detail goes to the log, not to the caller.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Damaged { state, version } => OpError::Damaged { state, version },
            e @ (StoreError::DiskFull { .. } | StoreError::Unreachable { .. }) => {
                if e.is_disk_full() {
                    OpError::DiskFull(e.to_string())
                } else {
                    OpError::DatabaseDown(e.to_string())
                }
            }
            // Not named after its database (it failed where none could be told): said all
            // the same, so that the person at the other end knows what to fix.
            e if e.is_disk_full() => OpError::DiskFull(
                "the disk under one of the server's databases is full: free space; nothing was written".into(),
            ),
            e if e.is_outage() => {
                tracing::error!(error = %e, "a database cannot be reached");
                OpError::DatabaseDown(
                    "one of the server's databases cannot be reached: the request was not carried out; try again once it is back (the server's log says which)".into(),
                )
            }
            e => OpError::Internal(e.to_string()),
        }
    }
}

impl From<AuthError> for OpError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Store(e) => OpError::from(e),
            other => OpError::Unauthenticated(other.to_string()),
        }
    }
}

impl OpError {
    /// The refusal when an audit record could not be written: a full disk or an unreachable
    /// database says so; anything else is the audit log refusing (and goes to the log).
    pub fn audit_unwritable(e: StoreError) -> OpError {
        match OpError::from(e) {
            e @ (OpError::DiskFull(_) | OpError::DatabaseDown(_)) => e,
            other => {
                tracing::error!(error = %other, "cannot write the audit record; refusing the request");
                OpError::AuditUnavailable
            }
        }
    }

    /// A fault of the server rather than a refusal of the request.
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            OpError::Internal(_)
                | OpError::AuditUnavailable
                | OpError::Damaged { .. }
                | OpError::DiskFull(_)
                | OpError::DatabaseDown(_)
        )
    }
}

impl From<verdict::Refusal> for OpError {
    fn from(refusal: verdict::Refusal) -> Self {
        use verdict::Refusal;
        match refusal {
            Refusal::Forbidden(sentence) => OpError::Forbidden(sentence),
            Refusal::Locked(info) => OpError::LockRefused(info),
            Refusal::Held(info) => OpError::Locked(info),
            Refusal::Conflict(sentence) => OpError::Conflict(sentence),
        }
    }
}

impl Server {
    /// Compiles the policies and opens every database, deciding on the system clock.
    pub async fn open(config: Config) -> Result<Arc<Server>, OpenError> {
        Server::open_with(config, Clock::system()).await
    }

    /// [`Server::open`], deciding on `clock`.
    pub async fn open_with(mut config: Config, clock: Clock) -> Result<Arc<Server>, OpenError> {
        // A sandbox whose member left stays, for its readers, while its database does.
        for name in crate::store::former_personal(&config).await {
            config.add_former(&name);
        }
        let policy = Policy::compile(&config)?;
        let oidc = OidcVerifier::load(&config).await?;
        let stores = Stores::open_with(&config, clock.clone(), AtStart::Protected).await?;
        Ok(Arc::new(Server {
            config,
            policy,
            oidc,
            stores,
            clock,
            metrics: crate::metrics::Metrics::new()?,
        }))
    }

    /// An environment of the config with its store, for `caller`: refused when its database
    /// could not be opened, or when there is none of that name (naming the known ones). A
    /// database that is not open is opened (and created, the first time) by a request of
    /// someone who may read it; anyone else is refused first, so that nobody can make the
    /// server open or create every environment's database.
    pub async fn environment(
        &self,
        name: &str,
        caller: &Caller,
        source_ip: IpAddr,
    ) -> Result<(&Environment, Arc<EnvStore>), OpError> {
        let Some(env) = self.config.environment(name) else {
            let known: Vec<&str> = self.config.declared().map(|e| e.name.as_str()).collect();
            let personal = match self.config.templates.as_slice() {
                [] => String::new(),
                templates => format!(
                    ", and a personal one for each member of {}",
                    templates
                        .iter()
                        .map(|t| format!("`{}-<member>`", t.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return Err(OpError::NotFound(format!(
                "there is no environment `{name}`: known environments are {}{personal}",
                known.join(", ")
            )));
        };
        if let Some(store) = self.stores.environment(name) {
            return Ok((env, store));
        }
        // One whom only a barrier holds back may read here: the request's own action is
        // refused next, in the barrier's words for that action.
        let decision = self.decide(caller, Action::StateRead, env, "", source_ip);
        if !decision.permitted {
            let sentence = refusal::sentence(&caller.principal, Action::StateRead, env);
            return Err(OpError::Forbidden(sentence));
        }
        match self.stores.open_environment(&self.config, env).await {
            Ok(store) => Ok((env, store)),
            Err(down) => Err(OpError::DatabaseDown(down.sentence(&env.name))),
        }
    }

    /// Appends a record to the chain of its environment (or the server's), committed with the
    /// records of concurrent requests.
    /// Refused as [`OpError::audit_unwritable`] when it cannot be.
    pub async fn record(&self, record: &Record) -> Result<(), OpError> {
        self.stores
            .audit_store(record.environment.as_deref())
            .append_record(record)
            .await
            .map_err(OpError::audit_unwritable)
    }

    /// Starts writing checkpoints of every audit chain's head: one now, then as the chains
    /// grow (see [`checkpoint`]).
    pub async fn start_checkpoints(&self) -> checkpoint::Writers {
        let server = &self.config.server;
        checkpoint::Writers::start(
            &self.stores,
            &server.checkpoint_dir,
            server.checkpoint_every,
        )
        .await
    }

    /// Closes, every little while, the databases of the environments nobody has used for
    /// `server { idle_close }` (see [`Server::close_idle`]), until aborted.
    pub fn start_closing_idle(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let server = self.clone();
        let every = (self.config.server.idle_close / 4).min(std::time::Duration::from_secs(60));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                server.close_idle().await;
            }
        })
    }

    /// Closes the databases of the environments that no request has used for
    /// `server { idle_close }` and that no request holds: those opened at start stay open.
    /// The names of those closed.
    pub async fn close_idle(&self) -> Vec<String> {
        let idle = self.config.server.idle_close;
        let Some(before) = self.clock.now().minus(idle) else {
            return Vec::new();
        };
        self.stores.close_idle(before).await
    }

    /// Writes the last checkpoints, once serving has ended.
    pub async fn stop_checkpoints(&self, writers: checkpoint::Writers) {
        writers.shutdown(&self.stores).await;
    }

    /// Authenticates the `Authorization` header value of a request, which came with the
    /// client certificate `certificate`.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        certificate: Option<&ClientCertificate>,
    ) -> Result<Caller, OpError> {
        Ok(identity::authenticate(
            &self.config,
            &self.stores.system,
            &self.oidc,
            authorization,
            certificate,
        )
        .await?)
    }

    /// Whether the policies let `caller` do `action` in `env` (on `state`, when it is about
    /// one), the deciding policies recorded; refused with the sentence when not.
    pub fn require(
        &self,
        caller: &Caller,
        record: &mut Record,
        action: Action,
        env: &Environment,
        source_ip: IpAddr,
    ) -> Result<(), OpError> {
        let state = record.state.clone().unwrap_or_default();
        self.require_on(caller, record, action, env, &state, source_ip)
    }

    /// [`Server::require`] on `state`.
    fn require_on(
        &self,
        caller: &Caller,
        record: &mut Record,
        action: Action,
        env: &Environment,
        state: &str,
        source_ip: IpAddr,
    ) -> Result<(), OpError> {
        let decision = self.decide(caller, action, env, state, source_ip);
        record.policy = Some(decision.explanation());
        if decision.allowed {
            Ok(())
        } else {
            Err(OpError::Forbidden(refusal::refused(
                caller,
                action,
                env,
                &decision,
                Some(source_ip),
            )))
        }
    }

    /// The sentence `caller`, refused `action` in `env`, reads.
    pub fn refusal(
        &self,
        caller: &Caller,
        action: Action,
        env: &Environment,
        source_ip: IpAddr,
    ) -> String {
        let decision = self.decide(caller, action, env, "", source_ip);
        refusal::refused(caller, action, env, &decision, Some(source_ip))
    }

    /// The policies' decision on `caller` doing `action` in `env`, on `state` (or none).
    fn decide(
        &self,
        caller: &Caller,
        action: Action,
        env: &Environment,
        state: &str,
        source_ip: IpAddr,
    ) -> Decision {
        let ctx = RequestContext {
            state,
            operation: "",
            source_ip: Some(source_ip),
            certificate: caller.certificate.as_ref(),
        };
        self.policy
            .decide(&caller.principal, action, &env.name, &ctx)
    }

    /// Environment `name`, for a caller who may read it (named in `record`); refused when
    /// there is no such environment or the caller may not read it.
    pub fn readable(
        &self,
        caller: &Caller,
        source_ip: IpAddr,
        record: &mut Record,
        name: &str,
    ) -> Result<&Environment, OpError> {
        let env = self
            .config
            .environment(name)
            .ok_or_else(|| OpError::NotFound(format!("there is no environment `{name}`")))?;
        record.environment = Some(env.name.clone());
        self.require(caller, record, Action::StateRead, env, source_ip)?;
        Ok(env)
    }

    /// Whether `caller` may read `env` at all: what lists and status show.
    pub fn may_read(&self, caller: &Caller, env: &Environment, source_ip: IpAddr) -> bool {
        self.may(caller, Action::StateRead, env, source_ip)
    }

    /// Whether the policies let `caller` do `action` in `env`, on no state in particular.
    pub fn may(
        &self,
        caller: &Caller,
        action: Action,
        env: &Environment,
        source_ip: IpAddr,
    ) -> bool {
        self.decide(caller, action, env, "", source_ip).allowed
    }
}

/// The change an id names, in its environment: where every operation on one change starts.
pub struct NamedChange<'a> {
    pub env: &'a Environment,
    pub store: Arc<EnvStore>,
    pub id: ChangeId,
}

impl Server {
    /// The change `text` names, its id and environment filled into `record`; refused when
    /// `text` is no change id or names no environment.
    pub async fn named(
        &self,
        caller: &Caller,
        source_ip: IpAddr,
        record: &mut Record,
        text: &str,
    ) -> Result<NamedChange<'_>, OpError> {
        let id = ChangeId::parse(text).map_err(|e| OpError::BadRequest(e.to_string()))?;
        let (env, store) = self.environment(&id.environment, caller, source_ip).await?;
        record.change = Some(id.to_string());
        record.environment = Some(env.name.clone());
        Ok(NamedChange { env, store, id })
    }
}

impl NamedChange<'_> {
    fn absent(&self) -> OpError {
        OpError::NotFound(format!("there is no change {}", self.id))
    }

    /// The change as stored now; its state filled into `record`.
    pub async fn read(&self, record: &mut Record) -> Result<Change, OpError> {
        let env = self.env;
        let change = self
            .store
            .change(&env.name, env.required_approvals(), self.id.number)
            .await?
            .ok_or_else(|| self.absent())?;
        record.state = Some(change.state.clone());
        Ok(change)
    }

    /// The change as it stands in `tx`.
    pub async fn load(&self, tx: &mut Tx<'_>) -> Result<Change, OpError> {
        let env = self.env;
        tx.change(&env.name, env.required_approvals(), self.id.number)
            .await?
            .ok_or_else(|| self.absent())
    }

    /// The change as it stands in `tx`, refused unless it is open.
    pub async fn load_open(&self, tx: &mut Tx<'_>) -> Result<Change, OpError> {
        let change = self.load(tx).await?;
        crate::changes::resolution::check_open(&change, &self.id).map_err(OpError::Conflict)?;
        Ok(change)
    }
}

/// Records the request as allowed inside `tx` and commits both; the record failing to write
/// rolls the effect back.
pub async fn commit(mut tx: Tx<'_>, record: &mut Record, status: u16) -> Result<(), OpError> {
    record.decision = Outcome::Allow;
    record.status = Some(status);
    if let Err(e) = tx.append_record(record).await {
        return Err(OpError::audit_unwritable(e));
    }
    tx.commit().await?;
    Ok(())
}

/// One authenticated request against one state.
pub struct StateRequest<'a> {
    pub server: &'a Server,
    pub caller: Caller,
    pub env: &'a Environment,
    pub store: Arc<EnvStore>,
    pub name: StateName,
    pub source_ip: IpAddr,
    /// The `?change=` of the backend address, in a protected environment.
    pub change: Option<String>,
}

impl<'a> StateRequest<'a> {
    /// The request of `caller` on state `name` of environment `env`: refused when there is no
    /// such environment, or the name is not a state's.
    pub async fn new(
        server: &'a Server,
        caller: Caller,
        env: &str,
        name: &str,
        source_ip: IpAddr,
        change: Option<String>,
    ) -> Result<StateRequest<'a>, OpError> {
        let (env, store) = server.environment(env, &caller, source_ip).await?;
        let name = StateName::parse(name).map_err(OpError::BadRequest)?;
        Ok(StateRequest {
            server,
            caller,
            env,
            store,
            name,
            source_ip,
            change,
        })
    }

    pub fn principal(&self) -> &Principal {
        &self.caller.principal
    }

    /// Decides a request that changes nothing, records the deciding policies, and refuses
    /// with the sentence when denied.
    pub fn require(&self, record: &mut Record, action: Action) -> Result<(), OpError> {
        self.server.require_on(
            &self.caller,
            record,
            action,
            self.env,
            self.name.as_str(),
            self.source_ip,
        )
    }

    /// Reads, inside `tx`, what the verdict on this request depends on; `lock_id` is the lock
    /// the request names.
    pub async fn gather(
        &self,
        tx: &mut Tx<'_>,
        lock_id: Option<&str>,
    ) -> Result<Gathered, StoreError> {
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
        let named = match named_change(env, self.change.as_deref()) {
            Some(number) => {
                tx.change(&env.name, env.required_approvals(), number)
                    .await?
            }
            None => None,
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
    /// carry out, or the refusal.
    pub fn judge(
        &self,
        record: &mut Record,
        gathered: &Gathered,
        ask: Ask<'_>,
    ) -> Result<Effect, OpError> {
        let asker = Asker {
            policy: &self.server.policy,
            env: self.env,
            state: self.name.as_str(),
            caller: &self.caller,
            source_ip: Some(self.source_ip),
            change: self.change.as_deref(),
            now: self.server.clock.now(),
        };
        let verdict = verdict::decide(ask, &gathered.facts(&asker));
        record.action = verdict.action.as_str().into();
        record.policy = Some(verdict.decided_by);
        record.reason = verdict.reason;
        record.breakglass = verdict.breakglass;
        record.change = verdict.change.or(record.change.take());
        record.forced = verdict.forced;
        record.refused = verdict.outcome.as_ref().err().map(|refusal| match refusal {
            verdict::Refusal::Forbidden(_) | verdict::Refusal::Locked(_) => Refused::Authority,
            verdict::Refusal::Held(_) => Refused::Held,
            verdict::Refusal::Conflict(_) => Refused::Conflict,
        });
        verdict.outcome.map_err(OpError::from)
    }

    /// Gathers the facts in a transaction of its own and judges `ask`, before anything the
    /// request brings is read: a refused caller's body is never read, nor content shown to
    /// it. The verdict that counts is taken again in the transaction that carries it out.
    pub async fn judge_early(
        &self,
        record: &mut Record,
        ask: Ask<'_>,
        lock_id: Option<&str>,
    ) -> Result<(), OpError> {
        let mut tx = self.store.begin().await?;
        let gathered = self.gather(&mut tx, lock_id).await?;
        drop(tx);
        self.judge(record, &gathered, ask).map(|_| ())
    }
}

/// The number of the change `text` names, when it names one of `env`'s (a change of another
/// environment, or text that is no change id, is left to the verdict to refuse in words).
pub fn named_change(env: &Environment, text: Option<&str>) -> Option<i64> {
    let id = ChangeId::parse(text?).ok()?;
    (id.environment == env.name).then_some(id.number)
}

/// What the server would read from the environment's database, for `bulkhead policy explain`
/// on the server's host: the change `text` names
/// (`None` when there is none: the explanation then says so, as the server would), and the
/// principal's open break-glass grant.
pub async fn recorded(
    config: &Config,
    env: &Environment,
    principal: &Principal,
    text: Option<&str>,
) -> Result<(Option<Change>, Option<BreakglassGrant>), StoreError> {
    let stores = Stores::open(config).await?;
    let Some(store) = stores.environment(&env.name) else {
        return Ok((None, None));
    };
    let change = match named_change(env, text) {
        Some(number) => {
            store
                .change(&env.name, env.required_approvals(), number)
                .await?
        }
        None => None,
    };
    let me = principal.to_string();
    let breakglass = store
        .open_breakglass_for(&me)
        .await?
        .map(|row| row.grant(&env.name));
    Ok((change, breakglass))
}

/// The facts of a verdict that are read from the store.
pub struct Gathered {
    /// The lock the state is held under.
    pub held: Option<HeldLock>,
    /// Whether the lock the request names is a plan lock of the caller on this state.
    pub own_read_lock: bool,
    /// The caller's open break-glass grant.
    pub breakglass: Option<BreakglassGrant>,
    /// The change the request names, when it is one of the environment's.
    pub named: Option<Change>,
    /// The change the held lock was taken for.
    pub lock_change: Option<Change>,
}

/// Who asks what of which state, and when: the facts of a verdict that are not read from the
/// store.
pub struct Asker<'a> {
    pub policy: &'a Policy,
    pub env: &'a Environment,
    pub state: &'a str,
    pub caller: &'a Caller,
    pub source_ip: Option<IpAddr>,
    /// `?change=` as sent.
    pub change: Option<&'a str>,
    pub now: crate::time::Timestamp,
}

impl Gathered {
    /// The change `id`, when the request named it or the held lock was taken for it.
    pub fn change(&self, id: &str) -> Option<&Change> {
        [&self.lock_change, &self.named]
            .into_iter()
            .flatten()
            .find(|c| c.id == id)
    }

    /// The facts the verdict decides on: the one place they are put together, for the server
    /// and for `bulkhead policy explain` alike.
    pub fn facts<'a>(&'a self, asker: &Asker<'a>) -> Facts<'a> {
        Facts {
            policy: asker.policy,
            env: asker.env,
            state: asker.state,
            caller: asker.caller,
            source_ip: asker.source_ip,
            held: self.held.as_ref(),
            own_read_lock: self.own_read_lock,
            breakglass: self.breakglass.as_ref(),
            named: asker.change.map(|text| (text, self.named.as_ref())),
            lock_change: self.lock_change.as_ref(),
            now: asker.now.as_datetime(),
        }
    }
}

/// An effect the verdict does not give for the request asked: a fault of the server.
pub(crate) fn unexpected(effect: Effect) -> OpError {
    OpError::Internal(format!(
        "the verdict gave an effect of another request: {effect:?}"
    ))
}

/// The longest reason a rejection, cancellation or break-glass grant may give, in bytes.
const REASON_LIMIT: usize = 4096;

/// Refuses a text parameter longer than `limit` bytes, with a sentence that says so.
fn bounded(what: &str, text: Option<&str>, limit: usize) -> Result<(), OpError> {
    match text {
        Some(text) if text.len() > limit => Err(OpError::BadRequest(format!(
            "the {what} is {} bytes, over the limit of {limit} bytes: shorten it; nothing was stored",
            text.len()
        ))),
        _ => Ok(()),
    }
}
