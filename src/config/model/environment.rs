//! An environment: who owns it, who may read, write, unlock and delete its states, where they
//! are stored and how large they may be, and the protection (approval, pipeline,
//! break-glass) that makes its writes need an approved change.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::Subject;

/// The default limit on one state document.
pub const DEFAULT_MAX_STATE_SIZE: u64 = 32 * 1024 * 1024;
/// The default of `environment { max_plan_size }`: plans carry the state before and after,
/// so they are larger than states.
pub const DEFAULT_MAX_PLAN_SIZE: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    /// Where the environment block starts in the config file.
    pub line: usize,
    pub owner: Subject,
    pub paths: Vec<String>,
    pub read: Vec<Subject>,
    pub write: Vec<Subject>,
    /// Who may release someone else's lock (default: the owner).
    pub force_unlock: Vec<Subject>,
    /// Who may push another lineage or an older serial (default: nobody).
    pub force_write: Vec<Subject>,
    /// Who may delete a state (default: the owner).
    pub delete: Vec<Subject>,
    /// A database URL of its own; `None` means the server's PostgreSQL, when it has one, or
    /// else a SQLite file under the data directory.
    pub storage: Option<String>,
    pub max_state_size: u64,
    /// The largest plan (`terraform show -json`) a change may be proposed with.
    pub max_plan_size: u64,
    /// How long a lock may sit idle (no write, no renewal by its holder) before another
    /// writer may take it over; `None`: never (a person force-unlocks).
    pub lock_lease: Option<Duration>,
    pub approval: Option<Approval>,
    pub pipeline: Option<Pipeline>,
    pub breakglass: Option<Breakglass>,
    /// Set on an environment made from a `personal` template, for one member.
    pub personal: Option<super::Personal>,
    /// The networks its states may be changed from (`write_from`); empty: any.
    pub write_from: Vec<IpNet>,
    /// The networks anything about it may be asked from (`read_from`), writes included;
    /// empty: any.
    pub read_from: Vec<IpNet>,
}

impl Environment {
    /// Whether a network list lets in every address (`0.0.0.0/0`, `::/0`, or no list at all).
    pub fn from_anywhere(networks: &[IpNet]) -> bool {
        networks.is_empty() || networks.iter().any(|n| n.prefix_len() == 0)
    }

    /// An address that both `write_from` and `read_from` let in, for asking the policies what
    /// their permits grant from where writes may come; `None` when neither names a network
    /// (or no address is in both).
    pub fn writable_from(&self) -> Option<IpAddr> {
        let lists = [&self.write_from, &self.read_from];
        let inside = |ip: &IpAddr| {
            lists
                .iter()
                .all(|list| list.is_empty() || list.iter().any(|n| n.contains(ip)))
        };
        lists
            .iter()
            .flat_map(|list| list.iter())
            .map(IpNet::network)
            .find(inside)
    }

    /// Whether writes need an approved change request.
    pub fn protected(&self) -> bool {
        self.approval.is_some()
    }

    /// How many approvals make a change approved (1 where the environment sets none).
    pub fn required_approvals(&self) -> u32 {
        self.approval.as_ref().map_or(1, |a| a.required)
    }

    /// What binds an apply to its change, besides environment and state.
    pub fn binding(&self) -> Binding {
        self.pipeline
            .as_ref()
            .map_or(Binding::default(), |p| p.bind)
    }
}

/// Four-eyes approval of changes: an environment with it is *protected*.
#[derive(Debug, Clone)]
pub struct Approval {
    pub required: u32,
    /// Who may approve (default: the owner); never a change's own author.
    pub approvers: Vec<Subject>,
    /// How long an approval stays valid.
    pub expires: Duration,
    /// How long the lock an approved change was applied under may authorize writes: past it,
    /// writes under that lock are refused (a stuck or stolen apply cannot write for ever).
    pub apply_window: Duration,
}

/// The default of `approval { apply_window }`.
pub const APPLY_WINDOW: Duration = Duration::from_secs(3600);
/// The default of `approval { expires }`.
pub(in crate::config) const APPROVAL_EXPIRES: Duration = Duration::from_secs(24 * 3600);
/// The most approvals `approval { required }` may ask for.
pub(in crate::config) const REQUIRED_MAX: u64 = 100;

#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Branches (from the verified OIDC `ref` claim) that may apply; empty: any.
    pub branches: Vec<String>,
    /// What an apply under a change must prove it applies (`bind`).
    pub bind: Binding,
}

/// `pipeline { bind = "commit" | "plan" | ["commit", "plan"] }`: what binds a change's apply
/// to what was approved, besides the change's environment and state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Binding {
    /// The pipeline's verified OIDC `sha` claim must be the commit the change was planned from.
    pub commit: bool,
    /// The pipeline must first attest, with its own saved plan, that it applies the approved
    /// plan's effect (`bulkhead change attest`).
    pub plan: bool,
}

impl Binding {
    /// As the config and `policy explain` spell it.
    pub fn describe(self) -> &'static str {
        match (self.commit, self.plan) {
            (false, false) => "none",
            (true, false) => "commit",
            (false, true) => "plan",
            (true, true) => "commit and plan",
        }
    }
}

/// Time-boxed emergency write without a change request.
#[derive(Debug, Clone)]
pub struct Breakglass {
    pub allowed: Vec<Subject>,
    pub max_ttl: Duration,
}

/// The default of `breakglass { max_ttl }`.
pub(in crate::config) const BREAKGLASS_MAX_TTL: Duration = Duration::from_secs(2 * 3600);
