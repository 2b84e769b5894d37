//! Write authority: the one verdict on whether a request may change a state — LOCK, a write
//! (POST/PUT), UNLOCK, force-unlock, DELETE and rollback.
//!
//! Pure. The caller gathers the [`Facts`] (the lock held and the identity that took it, the
//! change named or the lock was taken for, the caller's break-glass grant) inside the
//! transaction that carries out the effect, and asks [`decide`] on *every* request: authority is
//! never inherited from an earlier request, and a lock ID (which readers see) grants nothing.
//! The server's answer, the audit record's `policy` and `reason`, and `bulkhead policy
//! explain` all render the [`Verdict`] this returns, so they cannot disagree.

use chrono::{DateTime, Utc};

use crate::changes::{self, BreakglassGrant, Change, ChangeId, Status};
use crate::config::Environment;
use crate::lock::{self, HeldLock, LockInfo};
use crate::policy::{refusal, Action, Barrier, Decision, Policy, RequestContext};
use crate::principal::{self, Caller};
use crate::state;
use crate::time::Timestamp;

/// What a request asks to do to a state.
#[derive(Debug, Clone, Copy)]
pub enum Ask<'a> {
    /// LOCK with this LockInfo ID and operation.
    Lock {
        id: &'a str,
        operation: &'a str,
    },
    /// A write (POST/PUT), under the lock `lock_id` names (`?ID=`) or unlocked
    /// (`-lock=false`); `past` is the write rule it breaks, if any, which only
    /// `state:force-write` may push past.
    Write {
        lock_id: Option<&'a str>,
        past: Option<&'a state::Refusal>,
    },
    /// UNLOCK with the LockInfo the lock was taken with.
    Unlock {
        id: &'a str,
    },
    /// `terraform force-unlock` (no body) or OpenTofu's (an ID alone).
    ForceUnlock {
        id: Option<&'a str>,
    },
    Delete,
    /// Write an earlier version again; `past` as for a write (another lineage).
    Rollback {
        past: Option<&'a state::Refusal>,
    },
}

/// Everything a verdict depends on, gathered by the caller.
pub struct Facts<'a> {
    pub policy: &'a Policy,
    pub env: &'a Environment,
    pub state: &'a str,
    pub caller: &'a Caller,
    pub source_ip: Option<std::net::IpAddr>,
    /// The lock the state is held under now.
    pub held: Option<&'a HeldLock>,
    /// Whether the lock ID the request names is a reader's plan lock of the caller on this
    /// state.
    pub own_read_lock: bool,
    /// The caller's open break-glass grant in this environment, if it has one.
    pub breakglass: Option<&'a BreakglassGrant>,
    /// `?change=` as sent, and the change it names when that is one of this environment's.
    pub named: Option<(&'a str, Option<&'a Change>)>,
    /// The change the held lock was taken for, as it stands now.
    pub lock_change: Option<&'a Change>,
    pub now: DateTime<Utc>,
}

/// What an allowed request does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Take the lock, for this change (protected environments).
    TakeLock { change: Option<i64> },
    /// Release a lock whose lease ran out and take it for the caller, for this change.
    TakeOver { change: Option<i64> },
    /// The caller's own lock, asked for again (clients retry): its lease is renewed.
    LockRetried,
    /// A reader's plan lock: granted, blocking nobody; nothing can be written under it.
    ReadLock,
    /// Store the content, for this change; `use_up` when the write itself is the apply
    /// (an unlocked write), not a lock that is used up when released.
    Write { change: Option<i64>, use_up: bool },
    /// Release the held lock (a change applied under it is used up).
    Release,
    /// Release the caller's plan lock.
    ReleaseReadLock,
    /// Nothing was held: nothing to release.
    NothingHeld,
    /// Record a deletion, for this change.
    Delete { change: Option<i64> },
    /// Write the earlier version again, for this change.
    Rollback { change: Option<i64> },
}

/// How a refusal is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 403 with the sentence.
    Forbidden(String),
    /// 423 with a LockInfo whose ID is the sentence (what terraform shows of a refused lock).
    Locked(Box<LockInfo>),
    /// 423 with a LockInfo that names the holder of the lock in the way.
    Held(Box<LockInfo>),
    /// 409: a rule of the state refused it.
    Conflict(String),
}

impl Refusal {
    pub fn sentence(&self) -> &str {
        match self {
            Refusal::Forbidden(s) | Refusal::Conflict(s) => s,
            Refusal::Locked(info) | Refusal::Held(info) => &info.id,
        }
    }
}

/// The verdict on one request, and what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The action decided: a release of another identity's lock is a force-unlock.
    pub action: Action,
    pub outcome: Result<Effect, Refusal>,
    /// The rules that decided, in the audit record's `policy`: policy ids, `lock holder`,
    /// `break-glass prod-bg2`, the change process.
    pub decided_by: String,
    /// What was notable, in the audit record's `reason` (a refusal's sentence goes there too).
    pub reason: Option<String>,
    /// The break-glass grant it was allowed under.
    pub breakglass: Option<String>,
    /// The change it was named for or acted under.
    pub change: Option<String>,
    /// Allowed past a write rule with `state:force-write`.
    pub forced: bool,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// What lets a write into a protected environment go ahead.
enum Grant {
    Change(i64),
    Breakglass,
}

/// The verdict on `ask`, from `facts`.
pub fn decide(ask: Ask<'_>, facts: &Facts<'_>) -> Verdict {
    let mut judge = Judge {
        f: facts,
        v: Verdict {
            action: action_of(ask),
            outcome: Ok(Effect::NothingHeld),
            decided_by: String::new(),
            reason: None,
            breakglass: None,
            change: None,
            forced: false,
        },
        barred: None,
    };
    let outcome = match ask {
        Ask::Lock { id, operation } => judge.lock(id, operation),
        Ask::Write { lock_id, past } => judge.write(lock_id, past),
        Ask::Unlock { id } => judge.unlock(id),
        Ask::ForceUnlock { id } => judge.force_unlock(id),
        Ask::Delete => judge.delete(),
        Ask::Rollback { past } => judge.rollback(past),
    };
    let mut v = judge.v;
    if let Err(refused) = &outcome {
        v.reason = Some(refused.sentence().to_string());
    }
    v.outcome = outcome;
    v
}

fn action_of(ask: Ask<'_>) -> Action {
    match ask {
        Ask::Lock { .. } => Action::StateLock,
        Ask::Write { .. } => Action::StateWrite,
        Ask::Unlock { .. } => Action::StateUnlock,
        Ask::ForceUnlock { .. } => Action::StateForceUnlock,
        Ask::Delete => Action::StateDelete,
        Ask::Rollback { .. } => Action::StateRollback,
    }
}

struct Judge<'f, 'a> {
    f: &'f Facts<'a>,
    v: Verdict,
    /// The barrier of the last refusal the policies gave.
    barred: Option<Barrier>,
}

type Outcome = Result<Effect, Refusal>;

impl<'a> Judge<'_, 'a> {
    /// The policies' decision on `action`; the barrier of a refusal is kept for its sentence.
    fn policy(&mut self, action: Action, operation: &str) -> Decision {
        let decision = self.f.policy.decide(
            &self.f.caller.principal,
            action,
            &self.f.env.name,
            &RequestContext {
                state: self.f.state,
                operation,
                source_ip: self.f.source_ip,
                certificate: self.f.caller.certificate.as_ref(),
            },
        );
        // Told of the barrier when nothing else stood in the way: the permits, or a break-glass
        // grant that would have stood in for them.
        if !decision.allowed {
            let grant = self.grant().is_some();
            self.barred = decision
                .barrier
                .clone()
                .filter(|_| decision.permitted || grant);
        }
        decision
    }

    /// The caller's open break-glass grant, where the environment has a break-glass procedure.
    fn grant(&self) -> Option<&'a BreakglassGrant> {
        self.f
            .breakglass
            .filter(|_| self.f.env.breakglass.is_some())
    }

    /// The policies' decision on `action`, recorded; an open break-glass grant stands in for
    /// a writing permission the policies lack, never for a barrier.
    fn writer(&mut self, action: Action, operation: &str) -> bool {
        let decision = self.policy(action, operation);
        self.v.decided_by = decision.explanation();
        if decision.allowed {
            return true;
        }
        if decision.barrier.is_some() {
            return false;
        }
        match self.breakglass() {
            Some(id) => {
                self.v.decided_by = format!("break-glass {id}");
                true
            }
            None => false,
        }
    }

    /// The caller's open break-glass grant, named in the verdict.
    fn breakglass(&mut self) -> Option<String> {
        let grant = self.grant()?;
        self.v.breakglass = Some(grant.id.clone());
        Some(grant.id.clone())
    }

    /// The sentence of a refused `action`: the barrier's, when one refused it.
    fn sentence(&self, action: Action) -> String {
        match &self.barred {
            Some(barrier) => {
                refusal::barred(self.f.caller, action, self.f.env, barrier, self.f.source_ip)
            }
            None => refusal::sentence(&self.f.caller.principal, action, self.f.env),
        }
    }

    /// `sentence` for a write refused without a lock (`terraform -lock=false`), which comes
    /// after terraform has changed the infrastructure: what became of the state it could not
    /// store, and whom to give it to.
    fn unlocked(&self, sentence: &str) -> String {
        format!(
            "{sentence}. This write came without a lock (terraform -lock=false), after the \
             apply had run: nothing was stored, and terraform kept the state it could not write \
             in errored.tfstate, which records what the apply changed. Do not push it yourself: \
             hand errored.tfstate to {}, who can push it with `terraform state push \
             errored.tfstate` where they may write",
            self.f.env.owner
        )
    }

    fn missing_step(&self, problem: &str) -> String {
        refusal::missing_step(&self.f.caller.principal, self.f.env, problem)
    }

    fn refused_lock(&self, sentence: &str, operation: &str) -> Refusal {
        Refusal::Locked(Box::new(LockInfo::refusal(sentence, operation)))
    }

    fn held_by_another(held: &HeldLock) -> Refusal {
        Refusal::Held(Box::new(LockInfo::holder(held)))
    }

    /// Whether the caller holds an open break-glass grant here; names it in the verdict.
    fn under_breakglass(&mut self) -> bool {
        let Some(grant) = self.grant() else {
            return false;
        };
        self.v.breakglass = Some(grant.id.clone());
        self.v.reason = Some(format!(
            "break-glass {} until {}: {}",
            grant.id, grant.expires_at, grant.reason
        ));
        true
    }

    /// In a protected environment, what lets a new write go ahead now: an open break-glass
    /// grant, or the approved, unexpired, unused change `?change=` names, from an allowed
    /// branch. The error names the missing step.
    fn protected_grant(&mut self) -> Result<Grant, String> {
        let f = self.f;
        if self.under_breakglass() {
            return Ok(Grant::Breakglass);
        }
        let Some((text, change)) = f.named else {
            return Err(changes::no_change_named(&f.env.name));
        };
        self.v.change = Some(text.to_string());
        changes::check_grant(f.env, f.state, text, change, f.caller, f.now).map(Grant::Change)
    }

    /// The grant of a protected environment for a new write, or the refusal naming the step.
    fn require_grant(&mut self) -> Result<Option<i64>, String> {
        if !self.f.env.protected() {
            return Ok(None);
        }
        let grant = self.protected_grant()?;
        let f = self.f;
        if let Grant::Change(number) = grant {
            self.v.decided_by.push_str(&format!(
                "; change {} is approved and unused",
                ChangeId::new(&f.env.name, number)
            ));
            if let Some(branch) = &f.caller.branch {
                self.v
                    .decided_by
                    .push_str(&format!(", from allowed branch {branch}"));
            }
            return Ok(Some(number));
        }
        Ok(None)
    }

    fn lock(&mut self, id: &str, operation: &str) -> Outcome {
        let f = self.f;
        let writer = self.writer(Action::StateLock, operation);
        // A plan by a reader, or a plan for a change not yet proposed in a protected
        // environment, or the pipeline's own plan for a change bound to its plan (which it
        // attests once it has it): granted, but it blocks nobody and nothing can be written
        // under it.
        let planning_only =
            !writer || (f.env.protected() && (f.named.is_none() || f.env.binding().plan));
        if operation == lock::PLAN && planning_only {
            let read = self.policy(Action::StateRead, operation);
            if read.allowed {
                self.v.decided_by = read.explanation();
                self.v.breakglass = None;
                self.v.reason = Some(
                    "read-only plan lock: blocks no writer; writes under it are refused".into(),
                );
                return Ok(Effect::ReadLock);
            }
        }
        if !writer {
            return Err(self.refused_lock(&self.sentence(Action::StateLock), operation));
        }
        let change = match self.require_grant() {
            Ok(change) => change,
            Err(problem) => return Err(self.refused_lock(&self.missing_step(&problem), operation)),
        };
        match f.held {
            None => Ok(Effect::TakeLock { change }),
            // A retry of the same lock for the same change; the holder naming another change
            // under that ID would have the server record a lock for one change and versions
            // written for another.
            Some(held)
                if held.lock_id == id
                    && held.taken_by(f.caller)
                    && held.change_number == change =>
            {
                self.v.reason = Some("lock already held by the caller under this ID".into());
                Ok(Effect::LockRetried)
            }
            // The holder has neither written nor renewed for the environment's lease: it is taken
            // to be gone (a killed client), and its lock goes to a caller who may lock here.
            Some(held) if held.lease_ran_out(f.env.lock_lease, f.now) => {
                let lease = f.env.lock_lease.map_or(0, |l| l.as_secs());
                self.v
                    .decided_by
                    .push_str(&format!("; lease of lock {} ran out", held.lock_id));
                self.v.reason = Some(format!(
                    "took over the lock of {} idle since {} (lease {}): lock {} released",
                    held.holder(),
                    held.last_active(),
                    duration_text(lease),
                    held.lock_id
                ));
                Ok(Effect::TakeOver { change })
            }
            Some(held) => Err(Self::held_by_another(held)),
        }
    }

    fn write(&mut self, lock_id: Option<&str>, past: Option<&state::Refusal>) -> Outcome {
        let f = self.f;
        let under = f.held.filter(|h| lock_id == Some(h.lock_id.as_str()));
        let operation = under.map_or("", |h| h.operation.as_str());
        if !self.writer(Action::StateWrite, operation) {
            let sentence = self.sentence(Action::StateWrite);
            return Err(Refusal::Forbidden(match lock_id {
                None => self.unlocked(&sentence),
                Some(_) => sentence,
            }));
        }
        let effect = match (f.held, lock_id) {
            (Some(held), Some(_)) if under.is_some() => {
                if held.principal != f.caller.principal.to_string() {
                    return Err(Self::held_by_another(held));
                }
                if !held.taken_by(f.caller) {
                    return Err(Refusal::Forbidden(self.missing_step(&format!(
                        "lock {} was taken by {}, and these credentials are {}: a write under a lock must come from the very identity that took it (same branch, same OIDC subject); take a lock of your own",
                        held.lock_id,
                        principal::describe_proved(&held.principal, held.branch.as_deref()),
                        principal::describe_proved(
                            &f.caller.principal.to_string(),
                            f.caller.branch.as_deref()
                        ),
                    ))));
                }
                self.v.decided_by = format!("lock holder; {}", self.v.decided_by);
                let change = self.authority_under(held)?;
                Effect::Write {
                    change,
                    use_up: false,
                }
            }
            (Some(held), _) => return Err(Self::held_by_another(held)),
            (None, Some(id)) => {
                return Err(Refusal::Conflict(if f.own_read_lock {
                    format!("lock {id} is a read-only plan lock: nothing can be written under it")
                } else {
                    format!("lock {id} is not held (released or force-unlocked meanwhile): nothing was written; run terraform again")
                }))
            }
            // terraform -lock=false: the write carries its own grant, used up at once.
            (None, None) => match self.require_grant() {
                Ok(change) => Effect::Write {
                    change,
                    use_up: change.is_some(),
                },
                Err(problem) => {
                    let sentence = self.missing_step(&problem);
                    return Err(Refusal::Forbidden(self.unlocked(&sentence)));
                }
            },
        };
        self.force(past, operation)?;
        Ok(effect)
    }

    /// In a protected environment, what still lets the holder of `held` write under it: an
    /// open break-glass grant, or the change the lock was taken for while that change is open
    /// and within its apply window. Returns the change.
    fn authority_under(&mut self, held: &HeldLock) -> Result<Option<i64>, Refusal> {
        let f = self.f;
        if !f.env.protected() {
            return Ok(None);
        }
        let Some(number) = held.change_number else {
            if self.under_breakglass() {
                return Ok(None);
            }
            return Err(Refusal::Forbidden(self.missing_step(&format!(
                "lock {} was taken under a break-glass grant that has ended: release it, and apply through a change request",
                held.lock_id
            ))));
        };
        let id = ChangeId::new(&f.env.name, number);
        self.v.change = Some(id.to_string());
        let problem = match f.lock_change.map(|c| c.status) {
            Some(Status::Open) => match apply_window_end(f.env, held) {
                Err(()) => Some(format!(
                    "lock {} records no readable time ({}), so its apply window cannot be told: nothing more may be written under it; release the lock and take a new one",
                    held.lock_id, held.created_at
                )),
                Ok(Some(end)) if f.now > end => Some(format!(
                    "the apply window of change {id} ended at {} ({} after lock {} was taken): release the lock and apply again under a fresh approval",
                    Timestamp::from(end).to_seconds(),
                    window_text(f.env),
                    held.lock_id
                )),
                _ => None,
            },
            Some(status) => Some(format!(
                "change {id} was {} while its apply held lock {}: nothing more may be written under it; release the lock and create a new change",
                status.as_str(),
                held.lock_id
            )),
            None => Some(format!("there is no change {id}")),
        };
        match problem {
            None => {
                self.v
                    .decided_by
                    .push_str(&format!("; change {id} open, within its apply window"));
                Ok(Some(number))
            }
            // Versions written under the grant carry no change the change does not cover.
            Some(_) if self.under_breakglass() => Ok(None),
            Some(problem) => Err(Refusal::Forbidden(self.missing_step(&problem))),
        }
    }

    /// Pushing past a write rule needs `state:force-write` and a rule that may be pushed past.
    fn force(&mut self, past: Option<&state::Refusal>, operation: &str) -> Result<(), Refusal> {
        let Some(refused) = past else { return Ok(()) };
        let force = self.policy(Action::StateForceWrite, operation);
        if !(refused.forceable() && force.allowed) {
            return Err(Refusal::Conflict(format!(
                "{refused}; forcing it needs state:force-write in {}",
                self.f.env.name
            )));
        }
        self.v.decided_by = format!("{}; {}", self.v.decided_by, force.explanation());
        self.v.reason = Some(format!("forced past: {refused}"));
        self.v.forced = true;
        Ok(())
    }

    fn unlock(&mut self, id: &str) -> Outcome {
        let f = self.f;
        match f.held {
            Some(held) if held.lock_id == id => {
                if held.taken_by(f.caller) {
                    // The holder releases its own lock while it still may write here.
                    if !self.writer(Action::StateUnlock, &held.operation) {
                        return Err(Refusal::Forbidden(format!(
                            "{} no longer may write {}: ask {} to force-unlock lock {}",
                            f.caller.describe(),
                            f.env.name,
                            refusal::list_or_owner(&f.env.force_unlock, &f.env.owner),
                            held.lock_id
                        )));
                    }
                    self.v.decided_by = format!("lock holder; {}", self.v.decided_by);
                    return Ok(Effect::Release);
                }
                // Another identity presenting the lock's ID: that is a force-unlock.
                self.v.action = Action::StateForceUnlock;
                let decision = self.policy(Action::StateForceUnlock, &held.operation);
                self.v.decided_by = decision.explanation();
                if !decision.allowed {
                    return Err(Refusal::Forbidden(format!(
                        "lock {} was taken by {}, not {}: releasing it is a force-unlock; {}",
                        held.lock_id,
                        held.holder(),
                        f.caller.describe(),
                        self.sentence(Action::StateForceUnlock)
                    )));
                }
                self.v.reason = Some(format!("released the lock of {}", held.holder()));
                Ok(Effect::Release)
            }
            _ if f.own_read_lock => {
                self.v.decided_by = "plan lock holder".into();
                self.v.reason = Some("released a read-only plan lock".into());
                Ok(Effect::ReleaseReadLock)
            }
            Some(held) => Err(Self::held_by_another(held)),
            None => {
                self.v.decided_by = "nothing held".into();
                self.v.reason = Some("no lock was held under this ID".into());
                Ok(Effect::NothingHeld)
            }
        }
    }

    fn force_unlock(&mut self, id: Option<&str>) -> Outcome {
        let decision = self.policy(Action::StateForceUnlock, "");
        self.v.decided_by = decision.explanation();
        if !decision.allowed {
            return Err(Refusal::Forbidden(self.sentence(Action::StateForceUnlock)));
        }
        match self.f.held {
            Some(held) => {
                if let Some(id) = id.filter(|id| !lock::names(held, id)) {
                    return Err(Refusal::Conflict(format!(
                        "lock {id} is not the lock held: {}",
                        LockInfo::holder(held).id
                    )));
                }
                self.v.reason = Some(format!("force-unlocked the lock of {}", held.holder()));
                Ok(Effect::Release)
            }
            None => {
                self.v.reason = Some("no lock was held".into());
                Ok(Effect::NothingHeld)
            }
        }
    }

    fn delete(&mut self) -> Outcome {
        let decision = self.policy(Action::StateDelete, "");
        self.v.decided_by = decision.explanation();
        if !decision.allowed {
            return Err(Refusal::Forbidden(self.sentence(Action::StateDelete)));
        }
        if let Some(held) = self.f.held {
            return Err(Self::held_by_another(held));
        }
        match self.require_grant() {
            Ok(change) => Ok(Effect::Delete { change }),
            Err(problem) => Err(Refusal::Forbidden(self.missing_step(&problem))),
        }
    }

    fn rollback(&mut self, past: Option<&state::Refusal>) -> Outcome {
        if !self.writer(Action::StateRollback, "rollback") {
            return Err(Refusal::Forbidden(self.sentence(Action::StateRollback)));
        }
        if let Some(held) = self.f.held {
            return Err(Self::held_by_another(held));
        }
        let change = match self.require_grant() {
            Ok(change) => change,
            Err(problem) => return Err(Refusal::Forbidden(self.missing_step(&problem))),
        };
        self.force(past, "rollback")?;
        Ok(Effect::Rollback { change })
    }
}

/// When the writes of a change's apply under `held` must end (`None`: no approval block, no
/// window). `Err` when that cannot be told from the lock's time: the window is then over, since
/// a lock whose age is unknown must not authorize writes for ever.
fn apply_window_end(env: &Environment, held: &HeldLock) -> Result<Option<DateTime<Utc>>, ()> {
    let Some(approval) = env.approval.as_ref() else {
        return Ok(None);
    };
    let taken = Timestamp::parse(&held.created_at).map_err(drop)?;
    taken
        .plus(approval.apply_window)
        .map(|end| Some(end.as_datetime()))
        .ok_or(())
}

fn window_text(env: &Environment) -> String {
    duration_text(
        env.approval
            .as_ref()
            .map_or(0, |a| a.apply_window.as_secs()),
    )
}

/// A duration as config writes it: `5m`, `2h`, `90s`.
fn duration_text(secs: u64) -> String {
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (h, 0, 0) if h > 0 => format!("{h}h"),
        (0, m, 0) if m > 0 => format!("{m}m"),
        _ => format!("{secs}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::principal::Principal;

    const CONFIG: &str = r#"
team "platform" { members = ["pat"] }
team "app" { members = ["alice"] }
service "ci-prod" {}
environment "prod" {
  owner = "team:platform"
  read  = ["team:app", "team:platform"]
  write = ["service:ci-prod"]
  approval { required = 1 }
}
"#;

    fn ci(branch: &str) -> Caller {
        Caller {
            principal: Principal::Service("ci-prod".into()),
            branch: Some(branch.into()),
            subject: Some(format!("repo:acme/infra:ref:refs/heads/{branch}")),
            commit: None,
            certificate: None,
        }
    }

    fn held_by(caller: &Caller, taken: DateTime<Utc>) -> HeldLock {
        HeldLock {
            lock_id: "L".into(),
            principal: caller.principal.to_string(),
            branch: caller.branch.clone(),
            subject: caller.subject.clone(),
            operation: "OperationTypeApply".into(),
            info: String::new(),
            created_at: taken.to_rfc3339(),
            change_number: Some(1),
            active_at: None,
        }
    }

    fn change(status: Status) -> Change {
        Change {
            id: "prod-1".into(),
            environment: "prod".into(),
            state: "network".into(),
            title: String::new(),
            author: "user:alice".into(),
            created_at: String::new(),
            plan_sha256: String::new(),
            summary: Default::default(),
            branch: None,
            commit: None,
            status,
            approvals: Vec::new(),
            required: 1,
            readiness: String::new(),
            closed_at: None,
            closed_by: None,
            reason: None,
            applied_version: None,
            revision: 1,
            fingerprint: None,
            attestation: None,
            diverged: Vec::new(),
        }
    }

    /// What `caller` asks of state `network` in `env` while `held` is held: no change named,
    /// no break-glass, now.
    fn facts<'a>(
        policy: &'a Policy,
        env: &'a Environment,
        caller: &'a Caller,
        held: &'a HeldLock,
    ) -> Facts<'a> {
        Facts {
            policy,
            env,
            state: "network",
            caller,
            source_ip: None,
            held: Some(held),
            own_read_lock: false,
            breakglass: None,
            named: None,
            lock_change: None,
            now: Utc::now(),
        }
    }

    /// The verdict on a write under lock L, held by `holder` since `taken`, for `caller`.
    fn write_under_lock(
        caller: &Caller,
        holder: &Caller,
        status: Status,
        taken: DateTime<Utc>,
    ) -> Verdict {
        let config = Config::parse(std::path::Path::new("b.hcl"), CONFIG).unwrap();
        let policy = Policy::compile(&config).unwrap();
        let held = held_by(holder, taken);
        let change = change(status);
        let facts = Facts {
            lock_change: Some(&change),
            ..facts(&policy, config.environment("prod").unwrap(), caller, &held)
        };
        decide(
            Ask::Write {
                lock_id: Some("L"),
                past: None,
            },
            &facts,
        )
    }

    #[test]
    fn a_write_under_a_lock_needs_the_identity_that_took_it() {
        let now = Utc::now();
        let main = ci("main");
        let allowed = write_under_lock(&main, &main, Status::Open, now);
        assert_eq!(
            allowed.outcome,
            Ok(Effect::Write {
                change: Some(1),
                use_up: false
            })
        );
        assert!(allowed
            .decided_by
            .starts_with("lock holder; prod.write.service:ci-prod"));
        let refused = write_under_lock(&ci("feature-x"), &main, Status::Open, now);
        let sentence = refused.outcome.unwrap_err();
        assert!(sentence
            .sentence()
            .contains("lock L was taken by service:ci-prod (branch main)"));
        let static_token = Caller {
            branch: None,
            subject: None,
            ..main.clone()
        };
        assert!(!write_under_lock(&static_token, &main, Status::Open, now).allowed());
    }

    #[test]
    fn a_closed_change_or_an_old_lock_ends_the_grant() {
        let main = ci("main");
        for status in [Status::Rejected, Status::Cancelled, Status::Applied] {
            let v = write_under_lock(&main, &main, status, Utc::now());
            assert!(!v.allowed(), "{status:?}");
            assert!(v.reason.unwrap().contains(status.as_str()));
        }
        let old = Utc::now() - chrono::Duration::hours(2);
        let v = write_under_lock(&main, &main, Status::Open, old);
        assert!(v
            .reason
            .unwrap()
            .contains("the apply window of change prod-1 ended"));
    }

    const LEASED: &str = r#"
team "platform" { members = ["pat"] }
team "app" { members = ["alice", "bob"] }
user "carol" {}
service "ci-prod" {}
environment "dev" {
  owner      = "team:platform"
  read       = ["user:carol"]
  write      = ["team:app"]
  lock_lease = "5m"
}
environment "stage" {
  owner = "team:platform"
  write = ["team:app"]
}
environment "prod" {
  owner      = "team:platform"
  write      = ["service:ci-prod"]
  lock_lease = "5m"
  approval { required = 1 }
}
"#;

    fn user(name: &str) -> Caller {
        Caller {
            principal: Principal::User(name.into()),
            branch: None,
            subject: None,
            commit: None,
            certificate: None,
        }
    }

    /// The verdict on LOCK M by `caller` in `env`, where `holder` took lock L and was last
    /// active `idle` ago.
    fn lock_over(env: &str, caller: &Caller, holder: &Caller, idle: chrono::Duration) -> Verdict {
        let config = Config::parse(std::path::Path::new("b.hcl"), LEASED).unwrap();
        let policy = Policy::compile(&config).unwrap();
        let now = Utc::now();
        let mut held = held_by(holder, now - chrono::Duration::hours(1));
        held.change_number = None;
        held.active_at = Some((now - idle).to_rfc3339());
        let facts = Facts {
            now,
            ..facts(&policy, config.environment(env).unwrap(), caller, &held)
        };
        decide(
            Ask::Lock {
                id: "M",
                operation: "OperationTypeApply",
            },
            &facts,
        )
    }

    #[test]
    fn a_lock_idle_past_its_lease_is_taken_over_by_a_writer() {
        let (alice, bob) = (user("alice"), user("bob"));
        let v = lock_over("dev", &bob, &alice, chrono::Duration::minutes(6));
        assert_eq!(v.outcome, Ok(Effect::TakeOver { change: None }));
        let reason = v.reason.unwrap();
        assert!(
            reason.starts_with("took over the lock of user:alice idle since "),
            "{reason}"
        );
        assert!(reason.ends_with("(lease 5m): lock L released"), "{reason}");
        assert!(
            v.decided_by.ends_with("; lease of lock L ran out"),
            "{}",
            v.decided_by
        );
    }

    #[test]
    fn a_lock_within_its_lease_or_without_one_is_held() {
        let (alice, bob) = (user("alice"), user("bob"));
        let recent = lock_over("dev", &bob, &alice, chrono::Duration::minutes(4));
        assert!(
            matches!(recent.outcome, Err(Refusal::Held(ref i)) if i.id.starts_with("L held by user:alice"))
        );
        let no_lease = lock_over("stage", &bob, &alice, chrono::Duration::days(30));
        assert!(
            matches!(no_lease.outcome, Err(Refusal::Held(ref i)) if i.id.starts_with("L held by user:alice"))
        );
    }

    #[test]
    fn a_takeover_needs_what_any_lock_needs() {
        let alice = user("alice");
        let idle = chrono::Duration::hours(1);
        // A reader may not lock, lease or not.
        let reader = lock_over("dev", &user("carol"), &alice, idle);
        assert!(!reader.allowed());
        // A protected environment: the taker needs its own grant.
        let ci = ci("main");
        let ungranted = lock_over("prod", &ci, &ci, idle);
        let refused = ungranted.outcome.unwrap_err();
        assert!(!refused.sentence().starts_with("L held by"), "{refused:?}");
        assert!(ungranted.reason.unwrap().contains("change"));
    }

    #[test]
    fn break_glass_stands_in_for_a_permit_never_for_a_barrier() {
        let text = r#"
team "platform" { members = ["pat"] }
environment "prod" {
  owner      = "team:platform"
  read       = ["team:platform"]
  write_from = ["10.20.0.0/16"]
  approval { required = 1 }
  breakglass { allowed = ["user:pat"] }
}
"#;
        let config = Config::parse(std::path::Path::new("b.hcl"), text).unwrap();
        let policy = Policy::compile(&config).unwrap();
        let env = config.environment("prod").unwrap();
        let pat = user("pat");
        let grant = BreakglassGrant {
            id: "prod-bg1".into(),
            environment: "prod".into(),
            principal: "user:pat".into(),
            reason: "outage".into(),
            opened_at: String::new(),
            expires_at: "2099-01-01T00:00:00Z".into(),
        };
        let from = |ip: [u8; 4]| {
            let held = held_by(&pat, Utc::now());
            let facts = Facts {
                held: None,
                breakglass: Some(&grant),
                source_ip: Some(std::net::IpAddr::from(ip)),
                ..facts(&policy, env, &pat, &held)
            };
            decide(
                Ask::Lock {
                    id: "M",
                    operation: "OperationTypeApply",
                },
                &facts,
            )
        };
        // Inside the network the grant stands in for the write permit pat lacks.
        let inside = from([10, 20, 0, 9]);
        assert_eq!(inside.outcome, Ok(Effect::TakeLock { change: None }));
        assert_eq!(inside.breakglass.as_deref(), Some("prod-bg1"));
        // Outside, it does not lift write_from, and the refusal says where to come from.
        let outside = from([192, 0, 2, 1]);
        let refused = outside.outcome.unwrap_err();
        assert!(
            refused
                .sentence()
                .starts_with("user:pat may not write prod from 192.0.2.1"),
            "{}",
            refused.sentence()
        );
        assert_eq!(outside.decided_by, "prod.write_from");
    }
}
