//! One integration-test binary: the real server on port 0, real HTTP, real terraform.

mod changes;
mod check;
mod cli;
mod edges;
mod helpers;
mod history;
mod instances;
mod protocol;
mod terraform;
