//! The detectors: what a write or a lock release shows about whether a state still says what
//! stands in the cloud, and whether it is still the history it claims to be. Each takes what
//! the backend already knows of the event (the versions before and after as [`Seen`], what
//! surrounds a write as [`Write`]) and returns the signals it raises, each kind at most once,
//! in [`Kind`] order. Pure: they read no store and never refuse anything; a write that raises
//! a warning has been written.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{cut, Facts};
use crate::history;

/// What a signal says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Written outside any change request.
    OutsideChange,
    /// The lineage of the state changed: another state's history was written over it.
    LineageChanged,
    /// The lineage written is also another state's.
    LineageShared,
    /// The serial rose by more than one: writes were made somewhere else.
    SerialJump,
    /// Resources changed under a state command (`terraform state push`, `state mv`, `import`,
    /// ...), not under a plan.
    StateSurgery,
    /// Attributes changed with no instance added or removed: possibly drift accepted into the
    /// state by a refresh.
    RefreshAccepted,
    /// Instances left tainted or deposed by an apply that failed part-way.
    Tainted,
    /// Checks (preconditions, postconditions, `check` blocks) that failed in the last apply.
    FailedChecks,
    /// The terraform version that wrote the state, or the providers its resources name,
    /// changed.
    ToolchainChanged,
    /// A lock held longer than the threshold.
    LongLock,
    /// A lock released with nothing written under it.
    EmptyLock,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::OutsideChange,
        Kind::LineageChanged,
        Kind::LineageShared,
        Kind::SerialJump,
        Kind::StateSurgery,
        Kind::RefreshAccepted,
        Kind::Tainted,
        Kind::FailedChecks,
        Kind::ToolchainChanged,
        Kind::LongLock,
        Kind::EmptyLock,
    ];

    /// The kebab-case name, as serde spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OutsideChange => "outside-change",
            Kind::LineageChanged => "lineage-changed",
            Kind::LineageShared => "lineage-shared",
            Kind::SerialJump => "serial-jump",
            Kind::StateSurgery => "state-surgery",
            Kind::RefreshAccepted => "refresh-accepted",
            Kind::Tainted => "tainted",
            Kind::FailedChecks => "failed-checks",
            Kind::ToolchainChanged => "toolchain-changed",
            Kind::LongLock => "long-lock",
            Kind::EmptyLock => "empty-lock",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// What a person reads in a list: one short phrase, e.g. "written outside any change".
    pub fn describe(self) -> &'static str {
        match self {
            Kind::OutsideChange => "written outside any change",
            Kind::LineageChanged => "lineage changed: another state's history",
            Kind::LineageShared => "lineage shared with another state",
            Kind::SerialJump => "serial jumped past writes made elsewhere",
            Kind::StateSurgery => "resources changed by a state command, not a plan",
            Kind::RefreshAccepted => "attributes changed, nothing added or removed",
            Kind::Tainted => "instances left tainted or deposed",
            Kind::FailedChecks => "checks failed in the last apply",
            Kind::ToolchainChanged => "terraform version or providers changed",
            Kind::LongLock => "lock held for long",
            Kind::EmptyLock => "lock released with nothing written",
        }
    }

    /// Kinds that describe a condition of the newest version (Tainted, FailedChecks): a later
    /// version without the condition resolves them. Every other kind is an event: it stays
    /// what happened.
    pub fn is_condition(self) -> bool {
        matches!(self, Kind::Tainted | Kind::FailedChecks)
    }
}

/// How much a signal asks of a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Recorded and shown, never open.
    Notice,
    /// Open until acknowledged or resolved.
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Notice => "notice",
            Severity::Warning => "warning",
        }
    }
}

/// The most bytes of a signal's evidence.
pub const EVIDENCE_CAP: usize = 1024;

/// One thing a detector saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    pub kind: Kind,
    pub severity: Severity,
    /// One or two sentences of evidence, for a person; at most [`EVIDENCE_CAP`] bytes (cut at
    /// a character boundary with "…").
    pub evidence: String,
}

/// A state version as the detectors see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen<'a> {
    pub serial: Option<i64>,
    pub lineage: Option<&'a str>,
    /// Its resource instances as [`crate::history::fingerprint`] gives them (JSON: address ->
    /// digest); `None` when unreadable (encrypted) or unknown.
    pub resources: Option<&'a str>,
    /// `None` when unreadable (encrypted) or unknown.
    pub facts: Option<&'a Facts>,
}

/// What surrounds a write.
#[derive(Debug, Clone, Default)]
pub struct Write<'a> {
    /// The environment has an approval block.
    pub protected: bool,
    /// The change id it was written under (`prod-3`), if any.
    pub change: Option<&'a str>,
    /// `Some(true)` when the change it is written under planned no resource change at all (a
    /// refresh-only plan); `None` without a change.
    pub change_plans_nothing: Option<bool>,
    /// The break-glass grant it was allowed under, if any.
    pub breakglass: Option<&'a str>,
    /// The lock operation it was written under (`OperationTypeApply`, `OperationTypeRefresh`,
    /// `state-push`, `state-mv`, `state-rm`, `state-replace-provider`, `import`, `taint`,
    /// `untaint`, ...); `None` for a write without a lock (`terraform -lock=false`).
    pub operation: Option<&'a str>,
    /// Pushed past a lineage or serial check with the force-write right.
    pub forced: bool,
    /// Other places (`ENV/STATE`) where the new version's lineage has been seen, when its
    /// lineage is new to this state.
    pub lineage_elsewhere: &'a [String],
}

/// The signals of a write of `after` over `before` (`None`: the state's first version, or the
/// version before is a deletion). Without a version before, only what `after` and the write
/// show alone is looked at: outside a change, a shared lineage, tainted instances, failed
/// checks.
pub fn on_write(before: Option<&Seen<'_>>, after: &Seen<'_>, write: &Write<'_>) -> Vec<Signal> {
    // Read once, for the two detectors that need it: a large state's digests take a while.
    let compared = before
        .and_then(|before| before.resources.zip(after.resources))
        .and_then(|(old, new)| history::compare(old, new));
    [
        outside_change(write),
        before.and_then(|before| lineage_changed(before, after, write)),
        lineage_shared(write),
        // A state pushed by hand carries whatever serial its editor gave it, and terraform adds
        // one: what it skipped is told by the surgery, not as writes this backend missed.
        before
            .filter(|_| !write.operation.is_some_and(is_surgery))
            .and_then(|before| serial_jump(before, after)),
        before.and_then(|_| state_surgery(compared.as_ref(), write)),
        before.and_then(|_| refresh_accepted(compared.as_ref(), write)),
        tainted(before, after),
        failed_checks(before, after),
        before.and_then(|before| toolchain_changed(before, after, write)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The conditions (see [`Kind::is_condition`]) that a version whose state says `facts` no
/// longer has: their open signals are resolved by it.
pub fn resolved_by(facts: &Facts) -> Vec<Kind> {
    Kind::ALL
        .into_iter()
        .filter(|kind| kind.is_condition())
        .filter(|kind| match kind {
            Kind::Tainted => facts.tainted.is_empty() && facts.deposed.is_empty(),
            Kind::FailedChecks => facts.failed_checks.is_empty(),
            _ => false,
        })
        .collect()
}

/// The default threshold of a long lock: one hour.
pub const LONG_LOCK: Duration = Duration::from_secs(60 * 60);

/// The signals of a lock released: `operation` it was taken for, `holder` who held it,
/// `held_for` how long it was held, `wrote` whether any version was written under it, `long`
/// the threshold for a long lock.
pub fn on_release(
    operation: &str,
    holder: &str,
    held_for: Duration,
    wrote: bool,
    long: Duration,
) -> Vec<Signal> {
    let mut out = Vec::new();
    if held_for > long {
        out.push(signal(
            Kind::LongLock,
            Severity::Warning,
            format!(
                "held for {} by {holder} for {operation}, longer than {}: every other writer waited or was refused meanwhile",
                duration(held_for),
                duration(long)
            ),
        ));
    }
    // A plan reads the state and never writes it: its lock is empty by nature.
    if !wrote && operation != "OperationTypePlan" {
        let what = match operation {
            "OperationTypeApply" => "the apply",
            "OperationTypeRefresh" => "the refresh",
            _ => "the operation",
        };
        out.push(signal(
            Kind::EmptyLock,
            Severity::Notice,
            format!(
                "released by its holder {holder} with nothing written under its {operation} lock: {what} changed nothing, or stopped before writing"
            ),
        ));
    }
    out
}

fn signal(kind: Kind, severity: Severity, evidence: String) -> Signal {
    Signal {
        kind,
        severity,
        evidence: cut(evidence, EVIDENCE_CAP),
    }
}

/// The most names a sentence of evidence lists.
const NAMED: usize = 5;

/// Up to [`NAMED`] names, then how many more: `a`, `a and b`, `a, b, c, d, e and 3 more`. Each
/// name is cut first, so that a long one costs no more than the evidence can hold.
fn names<S: AsRef<str>>(items: &[S]) -> String {
    let shown: Vec<String> = items
        .iter()
        .take(NAMED)
        .map(|item| cut(item.as_ref().to_string(), EVIDENCE_CAP / 4))
        .collect();
    let more = items.len().saturating_sub(NAMED);
    match (shown.as_slice(), more) {
        ([], _) => String::new(),
        ([one], _) => one.clone(),
        ([first @ .., last], 0) => format!("{} and {last}", first.join(", ")),
        (all, more) => format!("{} and {more} more", all.join(", ")),
    }
}

/// `n` and the noun, singular or plural: `1 write`, `3 writes`.
fn count(n: u128, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Whether a lock operation is one of terraform's state commands rather than a plan, apply or
/// refresh (which are named `OperationType...`).
fn is_surgery(operation: &str) -> bool {
    !operation.starts_with("OperationType")
}

/// The command a lock operation comes from: `state-push` is `terraform state push`,
/// `state-replace-provider` is `terraform state replace-provider`, `import` is
/// `terraform import`.
fn command(operation: &str) -> String {
    match operation.strip_prefix("state-") {
        Some(sub) => format!("terraform state {sub}"),
        None if operation.is_empty() => "terraform".to_string(),
        None => format!("terraform {operation}"),
    }
}

fn outside_change(write: &Write<'_>) -> Option<Signal> {
    if write.change.is_some() {
        return None;
    }
    Some(match (write.protected, write.breakglass) {
        (true, Some(grant)) => signal(
            Kind::OutsideChange,
            Severity::Warning,
            format!("written under break-glass {grant}, outside any change"),
        ),
        (true, None) => signal(
            Kind::OutsideChange,
            Severity::Warning,
            "written in a protected environment outside any change".to_string(),
        ),
        (false, _) => signal(
            Kind::OutsideChange,
            Severity::Notice,
            "written outside any change: this environment is not protected".to_string(),
        ),
    })
}

fn lineage_changed(before: &Seen<'_>, after: &Seen<'_>, write: &Write<'_>) -> Option<Signal> {
    let (Some(old), Some(new)) = (before.lineage, after.lineage) else {
        return None;
    };
    if old == new {
        return None;
    }
    let forced = if write.forced { " (forced push)" } else { "" };
    Some(signal(
        Kind::LineageChanged,
        Severity::Warning,
        format!("lineage changed from {old} to {new}{forced}: this is another state's history now"),
    ))
}

fn lineage_shared(write: &Write<'_>) -> Option<Signal> {
    if write.lineage_elsewhere.is_empty() {
        return None;
    }
    Some(signal(
        Kind::LineageShared,
        Severity::Warning,
        format!(
            "the same lineage is in {}: a state copied where it does not belong",
            names(write.lineage_elsewhere)
        ),
    ))
}

fn serial_jump(before: &Seen<'_>, after: &Seen<'_>) -> Option<Signal> {
    let (Some(old), Some(new)) = (before.serial, after.serial) else {
        return None;
    };
    // Serials come from the state: wide arithmetic, so that no pair of them overflows.
    let missed = i128::from(new) - i128::from(old) - 1;
    if missed < 1 {
        return None;
    }
    Some(signal(
        Kind::SerialJump,
        Severity::Warning,
        format!(
            "serial went from {old} to {new}: {} this backend never saw (a state kept elsewhere, then pushed)",
            count(missed.unsigned_abs(), "write", "writes")
        ),
    ))
}

/// Resources changed by a state command (`compared`: `None` when either side cannot be read).
fn state_surgery(compared: Option<&history::Compared>, write: &Write<'_>) -> Option<Signal> {
    let operation = write.operation.filter(|op| is_surgery(op))?;
    let under = format!("under `{}`", command(operation));
    let Some(compared) = compared else {
        return Some(signal(
            Kind::StateSurgery,
            Severity::Warning,
            format!("written {under}, contents not readable: what it changed is not known"),
        ));
    };
    if compared.is_empty() {
        return None;
    }
    Some(signal(
        Kind::StateSurgery,
        Severity::Warning,
        format!(
            "{} added, {} changed, {} removed {under}, not by a plan: {}; compare this version with the one before",
            compared.added.len(),
            compared.changed.len(),
            compared.removed.len(),
            names(&compared.touched())
        ),
    ))
}

/// Attributes changed with no instance added or removed (`compared`: `None` when either side
/// cannot be read).
fn refresh_accepted(compared: Option<&history::Compared>, write: &Write<'_>) -> Option<Signal> {
    if write.operation.is_some_and(is_surgery) {
        return None; // state surgery, told apart above
    }
    let compared = compared?;
    if compared.changed.is_empty() || !compared.added.is_empty() || !compared.removed.is_empty() {
        return None;
    }
    let instances = count(compared.changed.len() as u128, "instance", "instances");
    let which = names(&compared.changed);
    let refresh = write.operation == Some("OperationTypeRefresh");
    let plans_nothing = write.change_plans_nothing == Some(true);
    // In a protected environment an in-place update under a change that plans resource
    // changes is the change doing its work; only one without such a plan is worth a warning.
    let unplanned_in_protected = write.protected && write.change_plans_nothing != Some(false);
    let (severity, evidence) = match write.change {
        Some(change) if plans_nothing => (
            Severity::Warning,
            format!(
                "under change {change}, whose plan changes nothing: a refresh-only apply accepted drift into the state ({instances}: {which})"
            ),
        ),
        _ if refresh => (
            Severity::Warning,
            format!(
                "written by `terraform refresh`: attributes of {instances} changed, none added or removed ({which}); drift was accepted into the state without a review"
            ),
        ),
        _ => (
            if plans_nothing || unplanned_in_protected {
                Severity::Warning
            } else {
                Severity::Notice
            },
            format!(
                "attributes of {instances} changed, none added or removed ({which}): an in-place update, or drift accepted by `terraform apply -refresh-only`; a drift report tells which"
            ),
        ),
    };
    Some(signal(Kind::RefreshAccepted, severity, evidence))
}

/// Tainted and deposed instances of `facts`, if known.
fn unhealthy(facts: Option<&Facts>) -> BTreeSet<&str> {
    facts
        .into_iter()
        .flat_map(|f| f.tainted.iter().chain(&f.deposed))
        .map(String::as_str)
        .collect()
}

fn tainted(before: Option<&Seen<'_>>, after: &Seen<'_>) -> Option<Signal> {
    let facts = after.facts?;
    let known = unhealthy(before.and_then(|b| b.facts));
    let is_new = |address: &&String| !known.contains(address.as_str());
    let tainted: Vec<&String> = facts.tainted.iter().filter(is_new).collect();
    let deposed: Vec<&String> = facts.deposed.iter().filter(is_new).collect();
    let mut sentences = Vec::new();
    if !tainted.is_empty() {
        let (verb, it) = if tainted.len() == 1 {
            ("is", "it")
        } else {
            ("are", "them")
        };
        sentences.push(format!(
            "{} {verb} tainted: the last apply failed part-way; the next apply replaces {it}.",
            names(&tainted)
        ));
    }
    if !deposed.is_empty() {
        let what = if deposed.len() == 1 {
            "keeps a deposed object"
        } else {
            "keep deposed objects"
        };
        sentences.push(format!(
            "{} {what}: a create-before-destroy replacement could not destroy the old object; the next apply tries again.",
            names(&deposed)
        ));
    }
    if sentences.is_empty() {
        return None;
    }
    Some(signal(
        Kind::Tainted,
        Severity::Warning,
        sentences.join(" "),
    ))
}

fn failed_checks(before: Option<&Seen<'_>>, after: &Seen<'_>) -> Option<Signal> {
    let facts = after.facts?;
    let known = before.and_then(|b| b.facts).map(|f| &f.failed_checks);
    let new: Vec<&String> = facts
        .failed_checks
        .iter()
        .filter(|check| known.is_none_or(|known| !known.contains(*check)))
        .collect();
    if new.is_empty() {
        return None;
    }
    Some(signal(
        Kind::FailedChecks,
        Severity::Warning,
        format!(
            "checks failed in the last apply: {}; `terraform plan` shows their messages",
            names(&new)
        ),
    ))
}

fn toolchain_changed(before: &Seen<'_>, after: &Seen<'_>, write: &Write<'_>) -> Option<Signal> {
    let (old, new) = (before.facts?, after.facts?);
    let mut parts = Vec::new();
    if let (Some(was), Some(now)) = (&old.terraform_version, &new.terraform_version) {
        if was != now {
            parts.push(format!(
                "written by terraform {now}, the version before by {was}"
            ));
        }
    }
    let added: Vec<&String> = new.providers.difference(&old.providers).collect();
    let removed: Vec<&String> = old.providers.difference(&new.providers).collect();
    // A provider only added (a first resource of it) or only removed (its last resource
    // destroyed) is the configuration growing or shrinking; one taking another's place
    // (`terraform state replace-provider`, a move between registries) changes who manages
    // what is already there.
    if !added.is_empty() && !removed.is_empty() {
        parts.push(format!(
            "providers added: {}; providers removed: {}",
            names(&added),
            names(&removed)
        ));
    }
    if parts.is_empty() {
        return None;
    }
    let severity = if write.protected {
        Severity::Warning
    } else {
        Severity::Notice
    };
    Some(signal(
        Kind::ToolchainChanged,
        severity,
        format!(
            "{}: check that every pipeline and person writing this state uses the same toolchain",
            parts.join("; ")
        ),
    ))
}

/// `2h10m`, `45m`, `45m30s`, `30s`: the two largest units, a zero second one left out.
fn duration(d: Duration) -> String {
    let total = d.as_secs();
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    match (hours, minutes, seconds) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version as the backend keeps it: what the detectors are given of it.
    struct Version {
        serial: Option<i64>,
        lineage: Option<String>,
        resources: Option<String>,
        facts: Option<Facts>,
    }

    impl Version {
        fn of(content: &str) -> Version {
            let head: serde_json::Value = serde_json::from_str(content).unwrap();
            Version {
                serial: head["serial"].as_i64(),
                lineage: head["lineage"].as_str().map(str::to_string),
                resources: history::fingerprint(content.as_bytes()),
                facts: Facts::of(content.as_bytes()),
            }
        }

        fn seen(&self) -> Seen<'_> {
            Seen {
                serial: self.serial,
                lineage: self.lineage.as_deref(),
                resources: self.resources.as_deref(),
                facts: self.facts.as_ref(),
            }
        }
    }

    const PROVIDER: &str = r#"provider[\"terraform.io/builtin/terraform\"]"#;

    /// A terraform 1.11 state of serial `serial` with one `terraform_data` per `(name, input,
    /// status)`.
    fn state(serial: i64, resources: &[(&str, &str, &str)]) -> Version {
        let resources: Vec<String> = resources
            .iter()
            .map(|(name, input, status)| {
                format!(
                    r#"{{"mode":"managed","type":"terraform_data","name":"{name}","provider":"{PROVIDER}","instances":[{{"schema_version":0,"attributes":{{"id":"{name}-id","input":{{"value":"{input}","type":"string"}}}},"sensitive_attributes":[]{status}}}]}}"#
                )
            })
            .collect();
        Version::of(&format!(
            r#"{{"version":4,"terraform_version":"1.11.4","serial":{serial},"lineage":"L1","outputs":{{}},"resources":[{}],"check_results":null}}"#,
            resources.join(",")
        ))
    }

    const OK: &str = "";
    const TAINTED: &str = r#","status":"tainted""#;

    fn encrypted(serial: i64, lineage: &str) -> Version {
        Version::of(&format!(
            r#"{{"serial":{serial},"lineage":"{lineage}","encrypted_data":"eA==","encryption_version":"v0"}}"#
        ))
    }

    /// An apply under change `prod-3` that plans resource changes, in a protected environment.
    fn planned() -> Write<'static> {
        Write {
            protected: true,
            change: Some("prod-3"),
            change_plans_nothing: Some(false),
            operation: Some("OperationTypeApply"),
            ..Write::default()
        }
    }

    /// An apply in an environment that is not protected.
    fn unprotected() -> Write<'static> {
        Write {
            operation: Some("OperationTypeApply"),
            ..Write::default()
        }
    }

    fn kinds(signals: &[Signal]) -> Vec<Kind> {
        signals.iter().map(|s| s.kind).collect()
    }

    fn find(signals: &[Signal], kind: Kind) -> &Signal {
        signals
            .iter()
            .find(|s| s.kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} in {signals:?}"))
    }

    fn write(before: &Version, after: &Version, write: &Write<'_>) -> Vec<Signal> {
        on_write(Some(&before.seen()), &after.seen(), write)
    }

    #[test]
    fn kinds_and_severities_are_named_as_serde_names_them() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.as_str())
            );
            assert!(!kind.describe().is_empty());
            assert_eq!(
                kind.is_condition(),
                matches!(kind, Kind::Tainted | Kind::FailedChecks)
            );
        }
        assert!(Kind::ALL.windows(2).all(|w| w[0] < w[1]), "ALL is in order");
        assert_eq!(Kind::parse("OutsideChange"), None);
        assert_eq!(Kind::OutsideChange.describe(), "written outside any change");
        for severity in [Severity::Notice, Severity::Warning] {
            assert_eq!(
                serde_json::to_string(&severity).unwrap(),
                format!("\"{}\"", severity.as_str())
            );
        }
        assert!(Severity::Notice < Severity::Warning);
    }

    #[test]
    fn an_ordinary_apply_under_its_change_raises_nothing() {
        let before = state(1, &[("x", "a", OK)]);
        let after = state(2, &[("x", "a", OK), ("y", "b", OK)]);
        assert_eq!(write(&before, &after, &planned()), vec![]);
        assert_eq!(on_write(None, &after.seen(), &planned()), vec![]);
    }

    #[test]
    fn outside_change_warns_only_in_a_protected_environment() {
        let (before, after) = (state(1, &[]), state(2, &[]));
        let grant = Write {
            protected: true,
            breakglass: Some("bg-2"),
            ..unprotected()
        };
        let signals = write(&before, &after, &grant);
        let s = find(&signals, Kind::OutsideChange);
        assert_eq!(s.severity, Severity::Warning);
        assert_eq!(
            s.evidence,
            "written under break-glass bg-2, outside any change"
        );

        let bare = Write {
            protected: true,
            ..unprotected()
        };
        let signals = write(&before, &after, &bare);
        let s = find(&signals, Kind::OutsideChange);
        assert_eq!(s.severity, Severity::Warning);
        assert!(
            s.evidence.contains("protected environment"),
            "{}",
            s.evidence
        );

        let signals = write(&before, &after, &unprotected());
        let s = find(&signals, Kind::OutsideChange);
        assert_eq!(s.severity, Severity::Notice);
        assert!(s.evidence.contains("not protected"), "{}", s.evidence);
        assert_eq!(kinds(&signals), vec![Kind::OutsideChange]);
    }

    #[test]
    fn a_new_lineage_is_another_states_history() {
        let before = state(1, &[]);
        let mut after = state(2, &[]);
        after.lineage = Some("L2".into());
        let forced = Write {
            forced: true,
            ..planned()
        };
        let signals = write(&before, &after, &forced);
        assert_eq!(kinds(&signals), vec![Kind::LineageChanged]);
        assert_eq!(
            signals[0].evidence,
            "lineage changed from L1 to L2 (forced push): this is another state's history now"
        );
        assert_eq!(signals[0].severity, Severity::Warning);
        assert!(!write(&before, &after, &planned())[0]
            .evidence
            .contains("forced"));

        assert_eq!(write(&before, &state(2, &[]), &planned()), vec![]);
        assert_eq!(on_write(None, &after.seen(), &planned()), vec![]);
        let mut unknown = state(2, &[]);
        unknown.lineage = None;
        assert_eq!(write(&before, &unknown, &planned()), vec![]);
    }

    #[test]
    fn a_lineage_seen_elsewhere_is_a_copied_state() {
        let places: Vec<String> = (1..=7).map(|i| format!("staging/s{i}")).collect();
        let one = [String::from("staging/network")];
        let after = state(1, &[]);
        let shared = Write {
            lineage_elsewhere: &one,
            ..planned()
        };
        let signals = on_write(None, &after.seen(), &shared);
        assert_eq!(kinds(&signals), vec![Kind::LineageShared]);
        assert_eq!(
            signals[0].evidence,
            "the same lineage is in staging/network: a state copied where it does not belong"
        );
        let many = Write {
            lineage_elsewhere: &places,
            ..planned()
        };
        let signals = on_write(None, &after.seen(), &many);
        assert!(
            signals[0]
                .evidence
                .contains("staging/s1, staging/s2, staging/s3, staging/s4, staging/s5 and 2 more"),
            "{}",
            signals[0].evidence
        );
        assert!(!signals[0].evidence.contains("staging/s6"));
    }

    #[test]
    fn a_serial_that_skips_is_a_jump_and_one_step_is_not() {
        let before = state(3, &[]);
        let signals = write(&before, &state(9, &[]), &planned());
        assert_eq!(kinds(&signals), vec![Kind::SerialJump]);
        assert_eq!(
            signals[0].evidence,
            "serial went from 3 to 9: 5 writes this backend never saw (a state kept elsewhere, then pushed)"
        );
        assert!(write(&before, &state(5, &[]), &planned())[0]
            .evidence
            .contains(": 1 write this"));
        assert_eq!(write(&before, &state(4, &[]), &planned()), vec![]);
        assert_eq!(write(&before, &state(3, &[]), &planned()), vec![]);
        assert_eq!(write(&before, &state(1, &[]), &planned()), vec![]);
        assert_eq!(on_write(None, &state(9, &[]).seen(), &planned()), vec![]);

        let mut low = state(0, &[]);
        low.serial = Some(i64::MIN);
        let mut high = state(0, &[]);
        high.serial = Some(i64::MAX);
        assert_eq!(
            kinds(&write(&low, &high, &planned())),
            vec![Kind::SerialJump]
        );
        assert_eq!(write(&high, &low, &planned()), vec![]);

        // Pushed by hand: the surgery says it, not a jump.
        let push = Write {
            operation: Some("state-push"),
            ..planned()
        };
        assert_eq!(write(&before, &state(9, &[]), &push), vec![]);
    }

    #[test]
    fn resources_changed_by_a_state_command_are_surgery_not_refresh() {
        let before = state(1, &[("x", "a", OK), ("y", "a", OK)]);
        let after = state(2, &[("x", "b", OK), ("y", "a", OK)]);
        let push = Write {
            operation: Some("state-push"),
            ..planned()
        };
        let signals = write(&before, &after, &push);
        assert_eq!(kinds(&signals), vec![Kind::StateSurgery]);
        let s = &signals[0];
        assert_eq!(s.severity, Severity::Warning);
        assert_eq!(
            s.evidence,
            "0 added, 1 changed, 0 removed under `terraform state push`, not by a plan: terraform_data.x; compare this version with the one before"
        );

        let moved = state(2, &[("z", "a", OK), ("y", "a", OK)]);
        let mv = Write {
            operation: Some("state-replace-provider"),
            ..planned()
        };
        let signals = write(&before, &moved, &mv);
        assert_eq!(kinds(&signals), vec![Kind::StateSurgery]);
        assert!(signals[0]
            .evidence
            .starts_with("1 added, 0 changed, 1 removed under `terraform state replace-provider`"));
        assert!(signals[0]
            .evidence
            .contains("terraform_data.x and terraform_data.z"));
        let import = Write {
            operation: Some("import"),
            ..planned()
        };
        assert!(write(&before, &moved, &import)[0]
            .evidence
            .contains("under `terraform import`"));

        // A state command that changed no resource (an output, say) is no surgery.
        assert_eq!(
            write(&before, &state(2, &[("x", "a", OK), ("y", "a", OK)]), &push),
            vec![]
        );
        // Nor is what an apply adds.
        assert_eq!(write(&before, &moved, &planned()), vec![]);
        assert_eq!(on_write(None, &after.seen(), &push), vec![]);
    }

    #[test]
    fn surgery_on_contents_that_cannot_be_read_is_still_surgery() {
        let push = Write {
            operation: Some("state-push"),
            ..planned()
        };
        let signals = write(&encrypted(1, "L1"), &encrypted(2, "L1"), &push);
        assert_eq!(kinds(&signals), vec![Kind::StateSurgery]);
        assert!(signals[0].evidence.contains("contents not readable"));
        let signals = write(&state(1, &[]), &encrypted(2, "L1"), &push);
        assert_eq!(kinds(&signals), vec![Kind::StateSurgery]);
    }

    #[test]
    fn attributes_changed_in_place_may_be_accepted_drift() {
        let before = state(1, &[("x", "a", OK), ("y", "a", OK)]);
        let after = state(2, &[("x", "b", OK), ("y", "a", OK)]);

        let signals = write(&before, &after, &unprotected());
        assert_eq!(
            kinds(&signals),
            vec![Kind::OutsideChange, Kind::RefreshAccepted]
        );
        let s = find(&signals, Kind::RefreshAccepted);
        assert_eq!(s.severity, Severity::Notice);
        assert_eq!(
            s.evidence,
            "attributes of 1 instance changed, none added or removed (terraform_data.x): an in-place update, or drift accepted by `terraform apply -refresh-only`; a drift report tells which"
        );
        let unlocked = Write {
            operation: None,
            ..unprotected()
        };
        let s = write(&before, &after, &unlocked);
        assert_eq!(find(&s, Kind::RefreshAccepted).severity, Severity::Notice);

        let refresh = Write {
            operation: Some("OperationTypeRefresh"),
            ..unprotected()
        };
        let signals = write(&before, &after, &refresh);
        let s = find(&signals, Kind::RefreshAccepted);
        assert_eq!(s.severity, Severity::Warning);
        assert!(s.evidence.contains("`terraform refresh`"), "{}", s.evidence);

        let refresh_only = Write {
            change_plans_nothing: Some(true),
            ..planned()
        };
        let signals = write(&before, &after, &refresh_only);
        assert_eq!(kinds(&signals), vec![Kind::RefreshAccepted]);
        assert_eq!(signals[0].severity, Severity::Warning);
        assert_eq!(
            signals[0].evidence,
            "under change prod-3, whose plan changes nothing: a refresh-only apply accepted drift into the state (1 instance: terraform_data.x)"
        );

        // Protected, outside any change: a warning; under a change that plans updates: the
        // change doing its work, a notice.
        let outside = Write {
            change: None,
            change_plans_nothing: None,
            ..planned()
        };
        let signals = write(&before, &after, &outside);
        assert_eq!(
            find(&signals, Kind::RefreshAccepted).severity,
            Severity::Warning
        );
        let signals = write(&before, &after, &planned());
        assert_eq!(
            find(&signals, Kind::RefreshAccepted).severity,
            Severity::Notice
        );
    }

    #[test]
    fn no_refresh_is_seen_where_instances_come_or_go_or_nothing_changed() {
        let before = state(1, &[("x", "a", OK)]);
        let grown = state(2, &[("x", "b", OK), ("y", "a", OK)]);
        assert_eq!(
            write(&before, &grown, &unprotected()),
            vec![signal(
                Kind::OutsideChange,
                Severity::Notice,
                "written outside any change: this environment is not protected".into()
            )]
        );
        assert_eq!(
            write(&before, &state(2, &[("x", "a", OK)]), &planned()),
            vec![]
        );
        // Every resource destroyed: no refresh, and a provider gone with its last resource
        // is no toolchain change.
        assert_eq!(write(&before, &state(2, &[]), &planned()), vec![]);
        assert_eq!(
            write(&encrypted(1, "L1"), &encrypted(2, "L1"), &planned()),
            vec![]
        );
    }

    #[test]
    fn a_version_without_a_condition_resolves_it() {
        let mut facts = Facts::default();
        assert_eq!(resolved_by(&facts), vec![Kind::Tainted, Kind::FailedChecks]);
        facts.deposed.insert("aws_instance.web".into());
        assert_eq!(resolved_by(&facts), vec![Kind::FailedChecks]);
        facts.failed_checks.insert("check.health".into());
        assert_eq!(resolved_by(&facts), vec![]);
    }

    #[test]
    fn newly_tainted_or_deposed_instances_warn_once() {
        let before = state(1, &[("x", "a", OK), ("y", "a", OK)]);
        let after = state(2, &[("x", "a", TAINTED), ("y", "a", OK)]);
        let signals = write(&before, &after, &planned());
        assert_eq!(kinds(&signals), vec![Kind::Tainted]);
        assert_eq!(signals[0].severity, Severity::Warning);
        assert_eq!(
            signals[0].evidence,
            "terraform_data.x is tainted: the last apply failed part-way; the next apply replaces it."
        );
        // Still tainted in the next version: said already.
        let again = state(3, &[("x", "a", TAINTED), ("y", "a", OK)]);
        assert_eq!(write(&after, &again, &planned()), vec![]);
        // A first version that is tainted says so.
        let first = on_write(None, &after.seen(), &planned());
        assert_eq!(kinds(&first), vec![Kind::Tainted]);

        let both = state(2, &[("x", "a", TAINTED), ("y", "a", TAINTED)]);
        let signals = write(&before, &both, &planned());
        assert!(signals[0]
            .evidence
            .starts_with("terraform_data.x and terraform_data.y are tainted"));

        let deposed = Version::of(&format!(
            r#"{{"serial":2,"lineage":"L1","terraform_version":"1.11.4","resources":[{{"mode":"managed","type":"terraform_data","name":"x","provider":"{PROVIDER}","instances":[{{"attributes":{{}}}},{{"deposed":"00000001","attributes":{{}}}}]}},{{"mode":"managed","type":"terraform_data","name":"y","provider":"{PROVIDER}","instances":[{{"attributes":{{"id":"y-id","input":{{"value":"a","type":"string"}}}}}}]}}]}}"#
        ));
        let signals = write(&before, &deposed, &planned());
        let s = find(&signals, Kind::Tainted);
        assert!(
            s.evidence
                .starts_with("terraform_data.x keeps a deposed object"),
            "{}",
            s.evidence
        );
    }

    #[test]
    fn newly_failed_checks_warn_once() {
        let with_checks = |serial: i64, checks: &str| {
            Version::of(&format!(
                r#"{{"serial":{serial},"lineage":"L1","terraform_version":"1.11.4","resources":[],"check_results":[{checks}]}}"#
            ))
        };
        let health = r#"{"object_kind":"check","config_addr":"check.health","status":"fail","objects":[{"object_addr":"check.health","status":"fail","failure_messages":["503"]}]}"#;
        let before = with_checks(1, "");
        let after = with_checks(2, health);
        let signals = write(&before, &after, &planned());
        assert_eq!(kinds(&signals), vec![Kind::FailedChecks]);
        assert_eq!(signals[0].severity, Severity::Warning);
        assert_eq!(
            signals[0].evidence,
            "checks failed in the last apply: check.health; `terraform plan` shows their messages"
        );
        assert_eq!(write(&after, &with_checks(3, health), &planned()), vec![]);
        assert_eq!(
            kinds(&on_write(None, &after.seen(), &planned())),
            vec![Kind::FailedChecks]
        );
    }

    #[test]
    fn a_new_terraform_version_or_provider_set_is_a_toolchain_change() {
        let before = state(1, &[("x", "a", OK)]);
        let newer = Version::of(&format!(
            r#"{{"serial":2,"lineage":"L1","terraform_version":"1.12.0","resources":[{{"mode":"managed","type":"terraform_data","name":"x","provider":"{PROVIDER}","instances":[{{"attributes":{{"id":"x-id","input":{{"value":"a","type":"string"}}}}}}]}}]}}"#
        ));
        let signals = write(&before, &newer, &planned());
        assert_eq!(kinds(&signals), vec![Kind::ToolchainChanged]);
        assert_eq!(signals[0].severity, Severity::Warning);
        assert!(signals[0]
            .evidence
            .starts_with("written by terraform 1.12.0, the version before by 1.11.4"));
        let signals = write(
            &before,
            &newer,
            &Write {
                change: Some("dev-1"),
                ..unprotected()
            },
        );
        assert_eq!(signals[0].severity, Severity::Notice);

        let mut forked = state(2, &[("x", "a", OK)]);
        if let Some(facts) = forked.facts.as_mut() {
            facts.providers = [r#"provider["registry.opentofu.org/acme/terraform"]"#.to_string()]
                .into_iter()
                .collect();
        }
        let signals = write(&before, &forked, &planned());
        let s = find(&signals, Kind::ToolchainChanged);
        assert!(
            s.evidence.contains(r#"providers added: provider["registry.opentofu.org/acme/terraform"]; providers removed: provider["terraform.io/builtin/terraform"]"#),
            "{}",
            s.evidence
        );

        assert_eq!(
            write(&before, &state(2, &[("x", "a", OK)]), &planned()),
            vec![]
        );
        assert_eq!(on_write(None, &newer.seen(), &planned()), vec![]);
        assert_eq!(write(&encrypted(1, "L1"), &newer, &planned()), vec![]);
    }

    #[test]
    fn a_first_version_raises_only_what_it_shows_alone() {
        let after = state(9, &[("x", "a", TAINTED)]);
        let elsewhere = [String::from("staging/app")];
        let everything = Write {
            protected: true,
            change: None,
            change_plans_nothing: None,
            operation: Some("state-push"),
            forced: true,
            lineage_elsewhere: &elsewhere,
            ..Write::default()
        };
        let signals = on_write(None, &after.seen(), &everything);
        assert_eq!(
            kinds(&signals),
            vec![Kind::OutsideChange, Kind::LineageShared, Kind::Tainted]
        );
    }

    #[test]
    fn encrypted_states_raise_only_what_needs_no_content() {
        let before = encrypted(1, "L1");
        let after = encrypted(4, "L2");
        assert_eq!(after.facts, None);
        let forced = Write {
            forced: true,
            ..unprotected()
        };
        let signals = write(&before, &after, &forced);
        assert_eq!(
            kinds(&signals),
            vec![Kind::OutsideChange, Kind::LineageChanged, Kind::SerialJump]
        );
        assert_eq!(
            write(&encrypted(1, "L1"), &encrypted(2, "L1"), &planned()),
            vec![]
        );
    }

    #[test]
    fn each_kind_is_raised_once_in_kind_order() {
        let before = state(1, &[("x", "a", OK), ("y", "a", OK)]);
        let mut after = state(5, &[("x", "b", TAINTED), ("y", "b", TAINTED)]);
        after.lineage = Some("L2".into());
        let elsewhere = [String::from("a/b"), String::from("c/d")];
        let w = Write {
            lineage_elsewhere: &elsewhere,
            ..unprotected()
        };
        let signals = write(&before, &after, &w);
        let got = kinds(&signals);
        assert_eq!(
            got,
            vec![
                Kind::OutsideChange,
                Kind::LineageChanged,
                Kind::LineageShared,
                Kind::SerialJump,
                Kind::RefreshAccepted,
                Kind::Tainted
            ]
        );
    }

    #[test]
    fn evidence_from_state_content_is_capped() {
        let long = "n".repeat(5000);
        let before = state(1, &[]);
        let after = state(2, &[(&long, "a", TAINTED), ("é", "a", TAINTED)]);
        let signals = write(&before, &after, &planned());
        let s = find(&signals, Kind::Tainted);
        assert!(s.evidence.len() <= EVIDENCE_CAP, "{}", s.evidence.len());
        assert!(s.evidence.contains('…'));

        let places: Vec<String> = (0..5)
            .map(|i| format!("é{}", "é".repeat(600 + i)))
            .collect();
        let w = Write {
            lineage_elsewhere: &places,
            ..planned()
        };
        let signals = on_write(None, &after.seen(), &w);
        for s in &signals {
            assert!(s.evidence.len() <= EVIDENCE_CAP);
            assert!(s.evidence.ends_with('…') || s.evidence.len() < EVIDENCE_CAP);
        }
    }

    #[test]
    fn a_long_lock_warns() {
        let held = Duration::from_secs(2 * 3600 + 10 * 60 + 5);
        let signals = on_release("OperationTypeApply", "user:alice", held, true, LONG_LOCK);
        assert_eq!(kinds(&signals), vec![Kind::LongLock]);
        assert_eq!(signals[0].severity, Severity::Warning);
        assert!(signals[0]
            .evidence
            .starts_with("held for 2h10m by user:alice for OperationTypeApply, longer than 1h"));
        assert_eq!(
            on_release(
                "OperationTypeApply",
                "user:alice",
                LONG_LOCK,
                true,
                LONG_LOCK
            ),
            vec![]
        );
        let short = Duration::from_secs(45 * 60);
        assert_eq!(
            kinds(&on_release("OperationTypePlan", "ci", held, false, short)),
            vec![Kind::LongLock]
        );
    }

    #[test]
    fn a_lock_released_with_nothing_written_is_noticed_unless_it_was_a_plan() {
        let minute = Duration::from_secs(60);
        let signals = on_release("OperationTypeApply", "user:alice", minute, false, LONG_LOCK);
        assert_eq!(kinds(&signals), vec![Kind::EmptyLock]);
        assert_eq!(signals[0].severity, Severity::Notice);
        assert_eq!(
            signals[0].evidence,
            "released by its holder user:alice with nothing written under its OperationTypeApply lock: the apply changed nothing, or stopped before writing"
        );
        assert_eq!(
            on_release("OperationTypePlan", "user:alice", minute, false, LONG_LOCK),
            vec![]
        );
        assert_eq!(
            on_release("OperationTypeApply", "user:alice", minute, true, LONG_LOCK),
            vec![]
        );
        assert!(
            on_release("state-mv", "user:bob", minute, false, LONG_LOCK)[0]
                .evidence
                .contains("the operation changed nothing")
        );
        let both = on_release("OperationTypeApply", "ci", LONG_LOCK * 3, false, LONG_LOCK);
        assert_eq!(kinds(&both), vec![Kind::LongLock, Kind::EmptyLock]);
    }

    #[test]
    fn durations_read_as_people_write_them() {
        let secs = Duration::from_secs;
        assert_eq!(duration(secs(30)), "30s");
        assert_eq!(duration(secs(0)), "0s");
        assert_eq!(duration(secs(45 * 60)), "45m");
        assert_eq!(duration(secs(45 * 60 + 30)), "45m30s");
        assert_eq!(duration(secs(2 * 3600 + 10 * 60 + 59)), "2h10m");
        assert_eq!(duration(secs(3600)), "1h");
        assert_eq!(duration(secs(50 * 3600)), "50h");
    }

    #[test]
    fn commands_are_named_as_typed() {
        assert_eq!(command("state-push"), "terraform state push");
        assert_eq!(command("state-rm"), "terraform state rm");
        assert_eq!(
            command("state-replace-provider"),
            "terraform state replace-provider"
        );
        assert_eq!(command("taint"), "terraform taint");
        assert_eq!(command("force-unlock"), "terraform force-unlock");
        assert!(is_surgery("import"));
        assert!(is_surgery("state-push"));
        assert!(!is_surgery("OperationTypeApply"));
    }
}
