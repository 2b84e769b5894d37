//! `GET /metrics`: the server's measurements, with each environment's locks, pending changes
//! and open break-glass grants read from its store when scraped. Readable by a caller whom
//! the policies grant `audit:read` in some environment, or by anyone on the address of
//! `server { metrics_listen }`, which serves nothing else.

use std::net::IpAddr;

use super::{OpError, Server};
use crate::changes::{Readiness, Status};
use crate::identity::Caller;
use crate::metrics::EnvironmentGauges;
use crate::policy::Action;

/// The measurements in Prometheus's text format, for `caller`.
pub async fn scrape(
    server: &Server,
    caller: &Caller,
    source_ip: IpAddr,
) -> Result<String, OpError> {
    let may = server
        .config
        .environments
        .iter()
        .any(|env| server.may(caller, Action::AuditRead, env, source_ip));
    if !may {
        return Err(OpError::Forbidden(format!(
            "{} may not read the server's metrics: they are for whoever may read an environment's audit log (audit:read)",
            caller.principal
        )));
    }
    measure(server).await
}

/// The measurements in Prometheus's text format, for whoever reaches
/// `server { metrics_listen }` (an address only the scrapers can reach).
pub async fn measure(server: &Server) -> Result<String, OpError> {
    let now = server.clock.now().as_datetime();
    for env in &server.config.environments {
        let Some(store) = server.stores.environment(&env.name) else {
            continue;
        };
        let mut gauges = EnvironmentGauges {
            locks_held: 0,
            oldest_lock_seconds: 0.0,
            pending_changes: 0,
            breakglass_open: 0,
        };
        let (held, oldest) = store.locks_held().await?;
        gauges.locks_held = held;
        if let Some(taken) = oldest.and_then(|t| crate::time::Timestamp::parse(&t).ok()) {
            gauges.oldest_lock_seconds =
                (now - taken.as_datetime()).num_milliseconds().max(0) as f64 / 1000.0;
        }
        gauges.pending_changes = store
            .changes(&env.name, env.required_approvals(), Some(Status::Open))
            .await?
            .iter()
            .filter(|c| c.readiness(now) != Readiness::Approved)
            .count() as i64;
        gauges.breakglass_open = store.open_breakglass().await?.len() as i64;
        server.metrics.environment(&env.name, &gauges);
    }
    for (chain, db) in server.stores.chains() {
        server.metrics.chain(&chain, &db.commit_totals());
    }
    server
        .metrics
        .render()
        .map_err(|e| OpError::Internal(format!("cannot render the metrics: {e}")))
}
