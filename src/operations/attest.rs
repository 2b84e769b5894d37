//! A pipeline's attestation that the saved plan it is about to apply has the effect of a
//! change's approved plan: the fingerprint of its own plan compared with the change's, under
//! the server's plan key, and recorded when they match. When they do not, it is refused with
//! the resources that differ, and nothing is recorded but the refusal. Where the environment
//! binds applies to their plan, only the identity that attested may then take the change's
//! lock (`changes::check_grant`).

use std::net::IpAddr;

use super::propose::PlanFacts;
use super::{commit, NamedChange, OpError, Server, DONE};
use crate::audit::Record;
use crate::changes::{fingerprint, Change};
use crate::identity::Caller;
use crate::policy::Action;
use crate::text::first_of;

/// The most differences a refusal names; the rest are counted.
const SHOWN: usize = 20;

/// An attestation that may go ahead, whose plan may now be read.
pub struct Attesting<'a> {
    server: &'a Server,
    named: NamedChange<'a>,
}

/// Checks that `caller` may attest to the change `text` names (it may write its environment:
/// it is the one to apply it), before the plan is read.
pub async fn check<'a>(
    server: &'a Server,
    caller: &Caller,
    source_ip: IpAddr,
    record: &mut Record,
    text: &str,
) -> Result<Attesting<'a>, OpError> {
    let named = server.named(caller, source_ip, record, text).await?;
    named.read(record).await?;
    server.require(caller, record, Action::StateWrite, named.env, source_ip)?;
    Ok(Attesting { server, named })
}

impl Attesting<'_> {
    pub fn limit(&self) -> u64 {
        self.named.env.max_plan_size
    }

    /// Compares the plan `bytes` with the change's and records the attestation of `caller`
    /// when their effects match.
    pub async fn attest(
        self,
        caller: &Caller,
        record: &mut Record,
        bytes: Vec<u8>,
    ) -> Result<Change, OpError> {
        let presented = PlanFacts::of(self.server, &bytes)?;
        drop(bytes);
        let named = &self.named;
        let id = &named.id;
        let mut tx = named.store.begin().await?;
        let change = named.load_open(&mut tx).await?;
        let Some(approved) = &change.fingerprint else {
            return Err(OpError::Conflict(format!(
                "change {id} was proposed before plans were fingerprinted, so its plan cannot be compared: its author replaces it with `bulkhead change update {id} --plan plan.json`, to be approved again"
            )));
        };
        let differences = fingerprint::differences(approved, &presented.fingerprint);
        if !differences.is_empty() {
            return Err(OpError::Conflict(mismatch(&change, &differences)));
        }
        tx.attest(id.number, caller).await?;
        record.reason = Some(format!(
            "plan attested: its effect is that of revision {} of change {id} ({} resource change(s))",
            change.revision,
            approved.resources.len()
        ));
        let change = named.load(&mut tx).await?;
        commit(tx, record, DONE).await?;
        Ok(change.at(self.server.clock.now().as_datetime()))
    }
}

/// The refusal of a plan whose effect is not the approved one: what differs, and the two ways
/// on.
fn mismatch(change: &Change, differences: &[fingerprint::Difference]) -> String {
    let id = &change.id;
    let from = match &change.commit {
        Some(sha) => format!("commit {sha}"),
        None => "the commit it was made from".to_string(),
    };
    format!(
        "this plan does not do what change {id}'s approved plan (revision {}) does: {}; nothing was attested. Apply the approved plan (re-plan from {from}), or, if this plan is the one to apply, have its author replace the change's plan with `bulkhead change update {id} --plan plan.json` and ask for approval again",
        change.revision,
        first_of(differences, SHOWN),
    )
}
