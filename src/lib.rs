//! bulkhead: privilege boundaries between infrastructure environments for teams that use
//! Terraform or OpenTofu.
//!
//! # Layers
//! The code is in four layers, and an arrow points only downwards:
//!
//! ```text
//! edges        cli, http, ui, client          translate requests and answers, nothing more
//!   |
//! operations   operations, identity, checks   one function per thing a caller can do: it
//!   |     \                                   reads facts, asks the domain, changes the store
//!   |    store                                the databases; no rule is decided here
//!   |     /
//! domain       config, policy, verdict, lock, state, history, drift, changes, audit,
//!              ownership, principal, certificate, metrics, notify, text, time
//!                                             pure rules and types: no I/O, no store
//! ```
//!
//! Edges call operations (and, for what they show, the domain); operations call the store and
//! the domain; the store calls the domain; the domain calls only the domain. No module imports
//! from a layer above its own, and no two modules import each other.
//!
//! # Modules
//! - [`config`]: `bulkhead.hcl` read into validated types.
//! - [`principal`]: who a request is from, once authenticated, and how a person reads it.
//! - [`certificate`]: what a verified client certificate says, and what a service requires
//!   of one.
//! - [`identity`]: authentication: API tokens, OIDC ID tokens, the credentials of a request.
//! - [`policy`]: the config compiled to Cedar policies; decisions with their reasons, and the
//!   sentence a refused person reads.
//! - [`changes`]: change requests, their plans and approvals.
//! - [`ownership`]: which environment a repository path belongs to.
//! - [`checks`]: `bulkhead check`, one file per check.
//! - [`state`]: state names, state documents and the rules a write must pass.
//! - [`history`]: what changed between two state versions.
//! - [`drift`]: keeping state accurate: the signals computed from each write and each lock
//!   release, and the drift a pipeline's refresh-only plan reports.
//! - [`lock`]: terraform's LockInfo, what LOCK/UNLOCK bodies mean, and who holds a lock.
//! - [`verdict`]: the one decision on whether a request may change a state.
//! - [`operations`]: what a caller can do (read, write, lock, unlock, delete, roll back,
//!   propose and decide on changes, break-glass), one file each, over a store transaction.
//! - [`store`]: the databases (one per environment, one for the server).
//! - [`audit`]: the audit log, chained with a keyed MAC (its key outside the databases), its
//!   signed checkpoints, and the verification of a database against it.
//! - [`http`]: the server: router, the state protocol handlers, the error mapping.
//! - [`ui`]: the dashboard's pages, rendered from what the operations answer.
//! - [`client`]: a typed client of the HTTP API.
//! - [`cli`]: the command line.
//! - [`metrics`]: what the server measures, in Prometheus's text format.
//! - [`notify`]: which audit records are events a `notify` block is told of, their JSON and
//!   Slack bodies and signatures, and when a failed delivery is retried or given up.
//! - [`text`]: request and plan text made safe to show at a terminal.
//! - [`time`]: timestamps and the clock every decision reads.

pub mod audit;
pub mod certificate;
pub mod changes;
pub mod checks;
pub mod cli;
pub mod client;
pub mod config;
pub mod drift;
pub mod history;
pub mod http;
pub mod identity;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod operations;
pub mod ownership;
pub mod policy;
pub mod principal;
pub mod state;
pub mod store;
pub mod text;
pub mod time;
pub mod ui;
pub mod verdict;
