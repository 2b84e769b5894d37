//! Notifications: which audit records are events a `notify` block is told of, what each event
//! says, how it is rendered ([`body`]: signed JSON, or a Slack message) and when a failed
//! delivery is tried again or given up.
//!
//! An event is derived from its audit record alone ([`Event::of`]), with the environment's
//! config for what the record does not hold (its owner, who may approve), so that the audit
//! log itself is the outbox: an event exists exactly when its record committed. Everything
//! here is pure: reading the chains, sending and recording deliveries is
//! [`crate::operations::notify`]'s.

pub mod body;

use std::time::Duration;

use crate::audit::{Outcome, Raised, Record, Refused};
use crate::config::{Environment, Retry};
pub use crate::config::{Notify, NotifyEvent, NotifyFormat};

/// Where a record is: its chain (an environment's name) and its position there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position<'a> {
    pub chain: &'a str,
    pub seq: i64,
}

/// One event, as every receiver is told of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `{chain}:{seq}:{event}`: stable across deliveries, for a receiver to drop duplicates.
    pub id: String,
    pub kind: NotifyEvent,
    /// When the request was made (RFC 3339).
    pub time: String,
    pub environment: String,
    /// Who is accountable for the environment.
    pub owner: String,
    pub state: Option<String>,
    /// Who made the request.
    pub principal: Option<String>,
    pub change: Option<String>,
    pub version: Option<i64>,
    pub breakglass: Option<String>,
    pub lock_id: Option<String>,
    /// Whose lock a force-unlock released.
    pub lock_holder: Option<String>,
    /// Who may approve the change (of `change.created`): the approval block's approvers, or
    /// the owner.
    pub approvers: Vec<String>,
    /// How many approvals the change needs (of `change.created`).
    pub required_approvals: Option<u32>,
    /// The resource addresses written beyond the plan (of `change.diverged`): the first few,
    /// and how many in all.
    pub beyond_plan: Option<(Vec<String>, usize)>,
    /// The warnings raised (of `state.signal`).
    pub signals: Vec<Raised>,
    /// The drifted resource addresses (of `state.drift`): the first few, and how many in all.
    pub drifted: Option<(Vec<String>, usize)>,
    /// The record's action, decision and status.
    pub action: String,
    pub decision: Outcome,
    pub status: Option<u16>,
    /// The record's reason: a refusal's sentence, a rejection's reason, what a proposal plans.
    pub reason: Option<String>,
}

impl Event {
    /// The events the record at `at` in `env`'s chain is: none for most (reads, locks
    /// granted, ...), one for most of the rest, two for a write that both applied and diverged
    /// from its change.
    pub fn of(at: Position<'_>, record: &Record, env: &Environment) -> Vec<Event> {
        let mut kinds = Vec::new();
        match record.decision {
            Outcome::Allow => {
                match record.action.as_str() {
                    "change:create" => kinds.push(NotifyEvent::ChangeCreated),
                    "change:approve" => kinds.push(NotifyEvent::ChangeApproved),
                    "change:reject" => kinds.push(NotifyEvent::ChangeRejected),
                    "change:cancel" => kinds.push(NotifyEvent::ChangeCancelled),
                    "breakglass:open" => kinds.push(NotifyEvent::BreakglassOpened),
                    "breakglass:close" => kinds.push(NotifyEvent::BreakglassClosed),
                    "state:force-unlock" if record.released.is_some() => {
                        kinds.push(NotifyEvent::StateForceUnlocked)
                    }
                    _ => {}
                }
                if record.diverged.is_some() {
                    kinds.push(NotifyEvent::ChangeDiverged);
                }
                if record.applied.is_some() {
                    kinds.push(NotifyEvent::ChangeApplied);
                }
                if record.signals.iter().any(is_warning) {
                    kinds.push(NotifyEvent::StateSignal);
                }
                if record.drift.as_ref().is_some_and(|d| d.new) {
                    kinds.push(NotifyEvent::StateDrift);
                }
            }
            Outcome::Deny => {
                let about_writing = matches!(record.action.as_str(), "state:write" | "state:lock");
                if about_writing && env.protected() && record.refused == Some(Refused::Authority) {
                    kinds.push(NotifyEvent::StateRefused);
                }
            }
            Outcome::Error => {}
        }
        kinds
            .into_iter()
            .map(|kind| Event::new(&at, kind, record, env))
            .collect()
    }

    fn new(at: &Position<'_>, kind: NotifyEvent, record: &Record, env: &Environment) -> Event {
        let mut event = Event {
            id: format!("{}:{}:{kind}", at.chain, at.seq),
            kind,
            time: record.time.clone(),
            environment: env.name.clone(),
            owner: env.owner.to_string(),
            state: record.state.clone(),
            principal: record.principal.clone(),
            change: record.change.clone(),
            version: record.version,
            breakglass: record.breakglass.clone(),
            lock_id: record.lock_id.clone(),
            lock_holder: None,
            approvers: Vec::new(),
            required_approvals: None,
            beyond_plan: None,
            signals: Vec::new(),
            drifted: None,
            action: record.action.clone(),
            decision: record.decision,
            status: record.status,
            reason: record.reason.clone(),
        };
        match kind {
            NotifyEvent::ChangeCreated => {
                event.approvers = approvers(env);
                event.required_approvals = Some(env.required_approvals());
            }
            NotifyEvent::ChangeApplied => {
                if let Some(applied) = &record.applied {
                    event.change = Some(applied.change.clone());
                    event.version = Some(applied.version);
                }
            }
            NotifyEvent::ChangeDiverged => {
                if let Some(diverged) = &record.diverged {
                    event.change = Some(diverged.change.clone());
                    event.beyond_plan = Some((diverged.addresses.clone(), diverged.count));
                }
            }
            NotifyEvent::StateForceUnlocked => event.lock_holder = record.released.clone(),
            NotifyEvent::StateSignal => {
                event.signals = record
                    .signals
                    .iter()
                    .filter(|s| is_warning(s))
                    .cloned()
                    .collect();
            }
            NotifyEvent::StateDrift => {
                if let Some(found) = &record.drift {
                    event.drifted = Some((found.addresses.clone(), found.count));
                }
            }
            _ => {}
        }
        event
    }

    /// One sentence saying what happened, for people (the Slack message, the JSON `summary`).
    pub fn summary(&self) -> String {
        let who = self
            .principal
            .as_deref()
            .unwrap_or("someone unauthenticated");
        let env = &self.environment;
        let at = match &self.state {
            Some(state) => format!("{env}/{state}"),
            None => env.clone(),
        };
        let change = self.change.as_deref().unwrap_or("(none named)");
        let with_reason = |text: String| match &self.reason {
            Some(reason) => format!("{text}: {reason}"),
            None => text,
        };
        match self.kind {
            NotifyEvent::ChangeCreated => with_reason(format!(
                "{who} proposed change {change} to {at}; it needs {} approval{} from {}",
                self.required_approvals.unwrap_or(1),
                if self.required_approvals.unwrap_or(1) == 1 {
                    ""
                } else {
                    "s"
                },
                self.approvers.join(", ")
            )),
            NotifyEvent::ChangeApproved => {
                with_reason(format!("{who} approved change {change} to {at}"))
            }
            NotifyEvent::ChangeRejected => {
                with_reason(format!("{who} rejected change {change} to {at}"))
            }
            NotifyEvent::ChangeCancelled => {
                with_reason(format!("{who} cancelled change {change} to {at}"))
            }
            NotifyEvent::ChangeApplied => format!(
                "change {change} was applied to {at} as version {}, by {who}",
                self.version.map_or("?".to_string(), |v| v.to_string())
            ),
            NotifyEvent::ChangeDiverged => {
                let (addresses, count) = self.beyond_plan.clone().unwrap_or_default();
                let more = count.saturating_sub(addresses.len());
                format!(
                    "change {change} wrote beyond its approved plan in {at}, by {who}: {count} resource instance{} not in the plan: {}{}",
                    if count == 1 { "" } else { "s" },
                    addresses.join(", "),
                    if more > 0 { format!(" and {more} more") } else { String::new() }
                )
            }
            NotifyEvent::BreakglassOpened => with_reason(format!(
                "BREAK-GLASS {} opened in {env} by {who}",
                self.breakglass.as_deref().unwrap_or("?")
            )),
            NotifyEvent::BreakglassClosed => format!(
                "break-glass {} closed in {env} by {who}",
                self.breakglass.as_deref().unwrap_or("?")
            ),
            NotifyEvent::StateRefused => with_reason(format!(
                "{who} was refused {} of {at}",
                self.action.strip_prefix("state:").unwrap_or(&self.action)
            )),
            NotifyEvent::StateSignal => format!(
                "{at} needs a look: {}, seen in a request of {who} ({}); acknowledge with `bulkhead drift ack {at} --signal N --reason ...`",
                self.signals
                    .iter()
                    .map(|s| format!("signal {} {}: {}", s.id, s.kind, s.evidence))
                    .collect::<Vec<_>>()
                    .join("; "),
                self.action
            ),
            NotifyEvent::StateDrift => {
                let (addresses, count) = self.drifted.clone().unwrap_or_default();
                format!(
                    "drift in {at}, reported by {who}: {count} resource{} changed outside terraform: {}",
                    if count == 1 { "" } else { "s" },
                    some_of(&addresses, count)
                )
            }
            NotifyEvent::StateForceUnlocked => format!(
                "{who} force-unlocked {} on {at}{}",
                match &self.lock_holder {
                    Some(holder) => format!("the lock of {holder}"),
                    None => "a lock".into(),
                },
                self.lock_id
                    .as_deref()
                    .map(|id| format!(" (lock {id})"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// Whether a raised signal is a warning: notices are recorded, never told.
fn is_warning(signal: &Raised) -> bool {
    signal.severity == crate::drift::Severity::Warning.as_str()
}

/// `addresses`, the first few of `count`, as a sentence's end: `a, b and 3 more`.
fn some_of(addresses: &[String], count: usize) -> String {
    let more = count.saturating_sub(addresses.len());
    format!(
        "{}{}",
        addresses.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

/// Who may approve changes to `env`: its approval block's approvers, or else its owner.
fn approvers(env: &Environment) -> Vec<String> {
    match env.approval.as_ref().map(|a| &a.approvers) {
        Some(listed) if !listed.is_empty() => listed.iter().map(|s| s.to_string()).collect(),
        _ => vec![env.owner.to_string()],
    }
}

/// How long to wait after failed attempt number `attempt` (1 for the first) before the next:
/// `retry.first` doubling up to `retry.max`, of which a random half (`jitter` in 0..1) is
/// taken off, so that receivers back from an outage are not hit by every sender at once.
pub fn wait_after(retry: &Retry, attempt: u32, jitter: f64) -> Duration {
    let doubled = retry
        .first
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(31)));
    let base = doubled.min(retry.max);
    base.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0)
}

/// Whether an event that failed `attempts` times, and is `age` old, is given up.
pub fn give_up(retry: &Retry, attempts: u32, age: Duration) -> bool {
    attempts >= retry.attempts || age >= retry.max_age
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Applied, Diverged};
    use crate::config::Config;

    fn config() -> Config {
        Config::parse(
            std::path::Path::new("b.hcl"),
            r#"
team "platform" { members = ["pat"] }
team "app" { members = ["alice"] }
service "ci-prod" {}
environment "dev" { owner = "team:app" }
environment "prod" {
  owner = "team:platform"
  write = ["service:ci-prod"]
  approval {
    required  = 2
    approvers = ["team:platform", "user:alice"]
  }
}
"#,
        )
        .unwrap()
    }

    fn at(seq: i64) -> Position<'static> {
        Position { chain: "prod", seq }
    }

    fn allowed(action: &str) -> Record {
        let mut r = Record::new(action);
        r.decision = Outcome::Allow;
        r.environment = Some("prod".into());
        r.state = Some("network".into());
        r.principal = Some("user:alice".into());
        r.change = Some("prod-1".into());
        r
    }

    #[test]
    fn a_proposal_names_who_may_approve_it() {
        let c = config();
        let prod = c.environment("prod").unwrap();
        let events = Event::of(at(7), &allowed("change:create"), prod);
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.id, "prod:7:change.created");
        assert_eq!(e.approvers, vec!["team:platform", "user:alice"]);
        assert_eq!(e.required_approvals, Some(2));
        assert!(
            e.summary()
                .contains("needs 2 approvals from team:platform, user:alice"),
            "{}",
            e.summary()
        );
        let dev = c.environment("dev").unwrap();
        let mut r = allowed("change:create");
        r.environment = Some("dev".into());
        assert_eq!(Event::of(at(1), &r, dev)[0].approvers, vec!["team:app"]);
    }

    #[test]
    fn a_warning_signal_is_an_event_and_a_notice_is_not() {
        let c = config();
        let prod = c.environment("prod").unwrap();
        let raised = |severity: &str| Raised {
            id: 4,
            kind: "state-surgery".into(),
            severity: severity.into(),
            evidence: "1 added under `terraform state push`".into(),
        };
        let mut r = allowed("state:write");
        r.signals = vec![raised("notice")];
        assert!(Event::of(at(2), &r, prod).is_empty());
        r.signals.push(raised("warning"));
        let events = Event::of(at(3), &r, prod);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, NotifyEvent::StateSignal);
        assert_eq!(events[0].signals, vec![raised("warning")]);
        let summary = events[0].summary();
        assert!(
            summary.contains("prod/network needs a look: signal 4 state-surgery"),
            "{summary}"
        );
    }

    #[test]
    fn new_drift_is_an_event_and_the_same_drift_again_is_not() {
        let c = config();
        let prod = c.environment("prod").unwrap();
        let mut r = allowed("drift:report");
        r.drift = Some(crate::audit::Found::of(["aws_vpc.main"], 3, false));
        assert!(Event::of(at(5), &r, prod).is_empty());
        r.drift = Some(crate::audit::Found::of(["aws_vpc.main"], 3, true));
        let events = Event::of(at(6), &r, prod);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, NotifyEvent::StateDrift);
        assert_eq!(
            events[0].summary(),
            "drift in prod/network, reported by user:alice: 3 resources changed outside terraform: aws_vpc.main and 2 more"
        );
    }

    #[test]
    fn a_write_that_applied_and_diverged_is_two_events() {
        let c = config();
        let prod = c.environment("prod").unwrap();
        let mut r = allowed("state:write");
        r.version = Some(4);
        r.applied = Some(Applied {
            change: "prod-1".into(),
            version: 4,
        });
        r.diverged = Some(Diverged::of("prod-1", &["aws_s3_bucket.x".into()]));
        let kinds: Vec<_> = Event::of(at(3), &r, prod).iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![NotifyEvent::ChangeDiverged, NotifyEvent::ChangeApplied]
        );
        // A write that used up nothing is no event.
        assert!(Event::of(at(3), &allowed("state:write"), prod).is_empty());
    }

    #[test]
    fn only_refusals_for_want_of_authority_in_protected_environments_are_events() {
        let c = config();
        let mut r = allowed("state:lock");
        r.decision = Outcome::Deny;
        r.refused = Some(Refused::Authority);
        let prod = c.environment("prod").unwrap();
        assert_eq!(
            Event::of(at(1), &r, prod)[0].kind,
            NotifyEvent::StateRefused
        );
        r.refused = Some(Refused::Held);
        assert!(
            Event::of(at(1), &r, prod).is_empty(),
            "waiting for a lock is no event"
        );
        r.refused = Some(Refused::Authority);
        assert!(Event::of(at(1), &r, c.environment("dev").unwrap()).is_empty());
        r.action = "state:read".into();
        assert!(Event::of(at(1), &r, prod).is_empty());
    }

    #[test]
    fn a_force_unlock_is_an_event_when_it_released_a_lock() {
        let c = config();
        let prod = c.environment("prod").unwrap();
        let mut r = allowed("state:force-unlock");
        assert!(Event::of(at(1), &r, prod).is_empty());
        r.released = Some("user:pat".into());
        let e = &Event::of(at(1), &r, prod)[0];
        assert_eq!(e.lock_holder.as_deref(), Some("user:pat"));
        assert!(e
            .summary()
            .starts_with("user:alice force-unlocked the lock of user:pat"));
    }

    #[test]
    fn waits_double_up_to_the_cap_less_their_jitter() {
        let retry = Retry {
            first: Duration::from_secs(1),
            max: Duration::from_secs(300),
            ..Retry::default()
        };
        assert_eq!(wait_after(&retry, 1, 0.0), Duration::from_secs(1));
        assert_eq!(wait_after(&retry, 4, 0.0), Duration::from_secs(8));
        assert_eq!(wait_after(&retry, 4, 1.0), Duration::from_secs(4));
        assert_eq!(wait_after(&retry, 20, 0.0), Duration::from_secs(300));
        assert_eq!(wait_after(&retry, u32::MAX, 0.0), Duration::from_secs(300));
        assert!(give_up(&retry, retry.attempts, Duration::ZERO));
        assert!(give_up(&retry, 1, retry.max_age));
        assert!(!give_up(&retry, 1, Duration::from_secs(60)));
    }
}
