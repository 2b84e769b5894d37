//! A change proposed to a protected environment, with the JSON of its saved plan: checked
//! before the plan is read, then stored with its summary, the plan's SHA-256 and the
//! fingerprint of its effect (never the plan itself). Its plan can be replaced while it is
//! open ([`replan`]), which dismisses the approvals given to the plan before.

use std::net::IpAddr;

use serde::Deserialize;

use super::{bounded, commit, NamedChange, OpError, Server, CREATED, DONE};
use crate::audit::Record;
use crate::changes::{fingerprint, plan, Change, Fingerprint};
use crate::config::Environment;
use crate::identity::Caller;
use crate::policy::Action;
use crate::state::{sha256_hex, StateName};
use crate::store::change_requests::{NewChange, NewPlan};
use crate::store::EnvStore;

/// The longest title a change may have, in bytes.
const TITLE_LIMIT: usize = 1024;
/// The longest branch name or commit a change may name, in bytes.
const REF_LIMIT: usize = 256;

/// What a proposal says about its change, besides the plan.
#[derive(Debug, Deserialize)]
pub struct Proposal {
    pub environment: String,
    pub state: String,
    pub title: Option<String>,
    pub branch: Option<String>,
    pub commit: Option<String>,
}

/// A proposal that may go ahead, whose plan may now be read.
pub struct Proposing<'a> {
    server: &'a Server,
    env: &'a Environment,
    store: std::sync::Arc<EnvStore>,
    state: StateName,
    proposal: Proposal,
}

/// Checks that `caller` may propose `proposal`, before its plan is read.
pub async fn check<'a>(
    server: &'a Server,
    caller: &Caller,
    source_ip: IpAddr,
    record: &mut Record,
    proposal: Proposal,
) -> Result<Proposing<'a>, OpError> {
    let (env, store) = server
        .environment(&proposal.environment, caller, source_ip)
        .await?;
    server.require(caller, record, Action::ChangeCreate, env, source_ip)?;
    if !env.protected() {
        return Err(OpError::BadRequest(format!(
            "{} is not protected (it has no approval block): its writers apply changes directly",
            env.name
        )));
    }
    let state = StateName::parse(&proposal.state).map_err(OpError::BadRequest)?;
    bounded("title", proposal.title.as_deref(), TITLE_LIMIT)?;
    bounded("branch", proposal.branch.as_deref(), REF_LIMIT)?;
    bounded("commit", proposal.commit.as_deref(), REF_LIMIT)?;
    require_commit(env, proposal.commit.as_deref())?;
    Ok(Proposing {
        server,
        env,
        store,
        state,
        proposal,
    })
}

impl Proposing<'_> {
    /// The most a plan may bring: the environment's `max_plan_size`.
    pub fn limit(&self) -> u64 {
        self.env.max_plan_size
    }

    /// Stores the change `caller` proposes with the plan `bytes`.
    pub async fn propose(
        self,
        caller: &Caller,
        record: &mut Record,
        bytes: Vec<u8>,
    ) -> Result<Option<Change>, OpError> {
        let read = PlanFacts::of(self.server, &bytes)?;
        // Only what was read of it is kept: the plan need not be held while it is stored.
        drop(bytes);
        let (env, proposal) = (self.env, &self.proposal);
        let author = caller.principal.to_string();
        let title = proposal.title.as_deref().unwrap_or_default();
        let mut tx = self.store.begin().await?;
        let number = tx
            .insert_change(NewChange {
                state: self.state.as_str(),
                title: title.trim(),
                author: &author,
                plan_sha256: &read.sha256,
                summary: &read.summary,
                branch: proposal.branch.as_deref(),
                commit: proposal.commit.as_deref(),
                fingerprint: &read.fingerprint,
            })
            .await?;
        let change = tx
            .change(&env.name, env.required_approvals(), number)
            .await?;
        record.change = change.as_ref().map(|c| c.id.clone());
        // What its approvers are told of it, from the record alone.
        let (add, chg, destroy) = read.summary.counts();
        let counts = format!("{add} to add, {chg} to change, {destroy} to destroy");
        record.reason = Some(match title.trim() {
            "" => format!("proposed: {counts}"),
            title => format!("proposed: {counts}: {title}"),
        });
        commit(tx, record, CREATED).await?;
        Ok(change.map(|c| c.at(self.server.clock.now().as_datetime())))
    }
}

/// What is kept of a plan: its summary, its SHA-256 and the fingerprint of its effect.
/// Read once from the bytes, which need not be held after.
pub(super) struct PlanFacts {
    pub summary: plan::PlanSummary,
    pub sha256: String,
    pub fingerprint: Fingerprint,
}

impl PlanFacts {
    /// Reads the plan JSON `bytes`, refused in words when it is not one.
    pub fn of(server: &Server, bytes: &[u8]) -> Result<PlanFacts, OpError> {
        let not_stored = |e: String| OpError::BadRequest(format!("the plan was not stored: {e}"));
        let summary = plan::summarize(bytes).map_err(not_stored)?;
        let key = server.stores.audit_key().plans();
        let fingerprint = fingerprint::fingerprint(bytes, key.bytes()).map_err(not_stored)?;
        Ok(PlanFacts {
            summary,
            sha256: sha256_hex(bytes),
            fingerprint,
        })
    }
}

/// Where the environment binds applies to their commit, a change must name the commit its plan
/// was made from.
fn require_commit(env: &Environment, commit: Option<&str>) -> Result<(), OpError> {
    if env.binding().commit && commit.is_none_or(|c| c.trim().is_empty()) {
        return Err(OpError::BadRequest(format!(
            "{} binds each apply to the commit its plan was made from, and this plan names none: pass --commit SHA (the `git rev-parse HEAD` the plan was made at); nothing was stored",
            env.name
        )));
    }
    Ok(())
}

/// A new plan for an open change, by its author: the change's next revision. The approvals
/// given before are dismissed (they approved another plan) and so is an attestation; refused
/// while an apply holds a lock for the change.
pub struct Replanning<'a> {
    server: &'a Server,
    named: NamedChange<'a>,
    commit: Option<String>,
}

/// Checks that `caller` may replace the plan of the change `text` names, before the plan is
/// read.
pub async fn replan<'a>(
    server: &'a Server,
    caller: &Caller,
    source_ip: IpAddr,
    record: &mut Record,
    text: &str,
    commit: Option<String>,
) -> Result<Replanning<'a>, OpError> {
    let named = server.named(caller, source_ip, record, text).await?;
    let change = named.read(record).await?;
    server.require(caller, record, Action::ChangeCreate, named.env, source_ip)?;
    bounded("commit", commit.as_deref(), REF_LIMIT)?;
    // A new plan is from a new commit: where applies are bound to commits, it must be named.
    let commit = commit.filter(|c| !c.trim().is_empty());
    if commit.is_none() {
        require_commit(named.env, None)?;
    }
    let me = caller.principal.to_string();
    if change.author != me {
        return Err(OpError::Forbidden(format!(
            "change {} was proposed by {}, not {me}: only its author replaces its plan; propose a change of your own with `bulkhead change create`",
            named.id, change.author
        )));
    }
    Ok(Replanning {
        server,
        named,
        commit,
    })
}

impl Replanning<'_> {
    pub fn limit(&self) -> u64 {
        self.named.env.max_plan_size
    }

    /// Stores the plan `bytes` as the change's next revision.
    pub async fn replace(self, record: &mut Record, bytes: Vec<u8>) -> Result<Change, OpError> {
        let read = PlanFacts::of(self.server, &bytes)?;
        drop(bytes);
        let named = &self.named;
        let id = &named.id;
        let mut tx = named.store.begin().await?;
        let change = named.load_open(&mut tx).await?;
        if let Some((state, held)) = tx.lock_for_change(id.number).await? {
            return Err(OpError::Conflict(format!(
                "change {id} is being applied (lock {} on {state}): its plan cannot be replaced during its apply; wait for the apply to end, or propose a new change",
                held.lock_id
            )));
        }
        // Without --commit the change keeps the commit it named.
        let planned_at = self.commit.as_deref().or(change.commit.as_deref());
        let dismissed = tx
            .replace_plan(
                id.number,
                NewPlan {
                    plan_sha256: &read.sha256,
                    summary: &read.summary,
                    commit: planned_at,
                    fingerprint: &read.fingerprint,
                },
            )
            .await?;
        let (add, chg, destroy) = read.summary.counts();
        record.reason = Some(format!(
            "plan replaced: revision {}, {add} to add, {chg} to change, {destroy} to destroy, commit {}; {}",
            change.revision + 1,
            planned_at.unwrap_or("none named"),
            if dismissed.is_empty() {
                "no approval to dismiss".to_string()
            } else {
                format!("approvals dismissed: {}", dismissed.join(", "))
            }
        ));
        let change = named.load(&mut tx).await?;
        commit(tx, record, DONE).await?;
        Ok(change.at(self.server.clock.now().as_datetime()))
    }
}
