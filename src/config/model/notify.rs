//! A `notify` block: a receiver (a URL), the body it is sent (signed JSON or a Slack message),
//! the events it is told of, in which environments, the secret its JSON is signed with, and
//! how a failed delivery is retried. The kinds of event a block can name are listed here, as
//! the config spells them; what each means is [`crate::notify`]'s.

use std::path::PathBuf;
use std::time::Duration;

/// What a receiver can be told of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NotifyEvent {
    /// A change was proposed: its approvers are told.
    ChangeCreated,
    /// A change was approved (one of its approvals, when it needs several).
    ChangeApproved,
    ChangeRejected,
    ChangeCancelled,
    /// A change was used up: written as a version of its state.
    ChangeApplied,
    /// A write under a change touched resources beyond its approved plan.
    ChangeDiverged,
    BreakglassOpened,
    BreakglassClosed,
    /// A write or lock in a protected environment refused for want of a right or a grant.
    StateRefused,
    /// Someone released a lock another identity held.
    StateForceUnlocked,
    /// A write or a lock's release raised a warning signal (a lineage change, state surgery,
    /// tainted instances, ...).
    StateSignal,
    /// A drift report found resources changed outside terraform that the report before did
    /// not name.
    StateDrift,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 12] = [
        NotifyEvent::ChangeCreated,
        NotifyEvent::ChangeApproved,
        NotifyEvent::ChangeRejected,
        NotifyEvent::ChangeCancelled,
        NotifyEvent::ChangeApplied,
        NotifyEvent::ChangeDiverged,
        NotifyEvent::BreakglassOpened,
        NotifyEvent::BreakglassClosed,
        NotifyEvent::StateRefused,
        NotifyEvent::StateForceUnlocked,
        NotifyEvent::StateSignal,
        NotifyEvent::StateDrift,
    ];

    /// As the config and the JSON body spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::ChangeCreated => "change.created",
            NotifyEvent::ChangeApproved => "change.approved",
            NotifyEvent::ChangeRejected => "change.rejected",
            NotifyEvent::ChangeCancelled => "change.cancelled",
            NotifyEvent::ChangeApplied => "change.applied",
            NotifyEvent::ChangeDiverged => "change.diverged",
            NotifyEvent::BreakglassOpened => "breakglass.opened",
            NotifyEvent::BreakglassClosed => "breakglass.closed",
            NotifyEvent::StateRefused => "state.refused",
            NotifyEvent::StateForceUnlocked => "state.force-unlocked",
            NotifyEvent::StateSignal => "state.signal",
            NotifyEvent::StateDrift => "state.drift",
        }
    }

    pub fn parse(text: &str) -> Option<NotifyEvent> {
        NotifyEvent::ALL.into_iter().find(|e| e.as_str() == text)
    }
}

impl std::fmt::Display for NotifyEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body a receiver is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyFormat {
    /// The event as JSON of a stable schema, signed.
    Json,
    /// A Slack incoming-webhook message.
    Slack,
}

/// Where the secret that signs a receiver's bodies is read from when the server starts: never
/// the config file itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file holding it (surrounding whitespace ignored).
    File(PathBuf),
    /// An environment variable of the server's process.
    Env(String),
}

/// How a failed delivery is retried: after `first`, doubling up to `max`, each wait with
/// jitter; given up after `attempts` attempts, or once the event is older than `max_age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub first: Duration,
    pub max: Duration,
    pub attempts: u32,
    pub max_age: Duration,
    /// How long one attempt may take.
    pub timeout: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            first: Duration::from_secs(1),
            max: Duration::from_secs(300),
            attempts: 25,
            max_age: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The most attempts `max_attempts` may ask for.
pub(in crate::config) const ATTEMPTS_MAX: u64 = 10_000;

/// One `notify "NAME" { ... }` block.
#[derive(Debug, Clone)]
pub struct Notify {
    pub name: String,
    /// Where the block starts in the config file.
    pub line: usize,
    /// An `http` or `https` URL.
    pub url: String,
    pub format: NotifyFormat,
    /// What it is told of (every event when the block names none).
    pub events: Vec<NotifyEvent>,
    /// The environments it is told about (every one when the block names none).
    pub environments: Vec<String>,
    /// Required for JSON; a Slack message is signed too when one is given.
    pub secret: Option<SecretSource>,
    pub retry: Retry,
}

impl Notify {
    /// Whether it is told of `event` in `environment`.
    pub fn wants(&self, event: NotifyEvent, environment: &str) -> bool {
        self.events.contains(&event) && self.environments.iter().any(|e| e == environment)
    }

    /// The URL as it may be logged: scheme and host, since a Slack webhook's path is its secret.
    pub fn url_shown(&self) -> String {
        match reqwest::Url::parse(&self.url) {
            Ok(url) => format!(
                "{}://{}{}/…",
                url.scheme(),
                url.host_str().unwrap_or(""),
                url.port().map(|p| format!(":{p}")).unwrap_or_default()
            ),
            Err(_) => "(unreadable URL)".into(),
        }
    }
}
