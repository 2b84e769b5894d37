//! A change proposed to a protected environment, with the JSON of its saved plan: checked
//! before the plan is read, then stored with its summary and the plan's SHA-256 (never the
//! plan itself).

use std::net::IpAddr;

use serde::Deserialize;

use super::{bounded, commit, OpError, Server, CREATED};
use crate::audit::Record;
use crate::changes::{plan, Change};
use crate::config::Environment;
use crate::identity::Caller;
use crate::policy::Action;
use crate::state::{sha256_hex, StateName};
use crate::store::change_requests::NewChange;
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
    store: &'a EnvStore,
    state: StateName,
    proposal: Proposal,
}

/// Checks that `caller` may propose `proposal`, before its plan is read.
pub fn check<'a>(
    server: &'a Server,
    caller: &Caller,
    source_ip: IpAddr,
    record: &mut Record,
    proposal: Proposal,
) -> Result<Proposing<'a>, OpError> {
    let (env, store) = server.environment(&proposal.environment)?;
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
        let summary = plan::summarize(&bytes)
            .map_err(|e| OpError::BadRequest(format!("the plan was not stored: {e}")))?;
        let plan_sha256 = sha256_hex(&bytes);
        // Only its summary and hash are kept: the plan need not be held while it is stored.
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
                plan_sha256: &plan_sha256,
                summary: &summary,
                branch: proposal.branch.as_deref(),
                commit: proposal.commit.as_deref(),
            })
            .await?;
        let change = tx
            .change(&env.name, env.required_approvals(), number)
            .await?;
        record.change = change.as_ref().map(|c| c.id.clone());
        commit(tx, record, CREATED).await?;
        Ok(change.map(|c| c.at(self.server.clock.now().as_datetime())))
    }
}
