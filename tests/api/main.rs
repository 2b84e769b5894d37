//! One integration-test binary: the real server on port 0, real HTTP, real terraform.

mod attacks;
mod audit_api;
mod audit_integrity;
mod authority;
mod binding;
mod browser;
mod changes;
mod check;
mod cli;
mod content_integrity;
mod dashboard;
mod edges;
mod explain;
mod helpers;
mod history;
mod instances;
mod isolation;
mod layers;
mod leases;
mod metrics;
mod notify;
mod oidc;
mod protocol;
mod resources;
mod self_healing;
mod terraform;
