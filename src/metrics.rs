//! What the server measures, in Prometheus's text format (`GET /metrics`): every answer by
//! environment, action, decision and status with its latency, audit records that could not be
//! written, and, read when scraped, each environment's locks, pending changes and open
//! break-glass grants; for each notify block, its outbox depth and its delivery attempts. Labels take only bounded values: an environment the request named
//! that the config does not know is `other`, so a client cannot grow the series.

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The server's measurements.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    seconds: HistogramVec,
    audit_failures: IntCounter,
    locks_held: IntGaugeVec,
    oldest_lock: GaugeVec,
    pending_changes: IntGaugeVec,
    breakglass_open: IntGaugeVec,
    commits: IntCounterVec,
    committed_records: IntCounterVec,
    commit_seconds: CounterVec,
    flushes: IntCounterVec,
    flush_seconds: CounterVec,
    notify_outbox: IntGaugeVec,
    notify_attempts: IntCounterVec,
}

/// One audit chain's group commits and flushes so far, as its database counts them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChainTotals {
    pub commits: u64,
    pub records: u64,
    pub commit_seconds: f64,
    pub flushes: u64,
    pub flush_seconds: f64,
}

/// What an environment holds when scraped.
pub struct EnvironmentGauges {
    pub locks_held: i64,
    /// Seconds since the oldest lock held was taken (0 when none is).
    pub oldest_lock_seconds: f64,
    pub pending_changes: i64,
    pub breakglass_open: i64,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "bulkhead_requests_total",
                "Answers, by environment, action, decision and status",
            ),
            &["environment", "action", "decision", "status"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new("bulkhead_request_seconds", "Time to answer, by action").buckets(
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ],
            ),
            &["action"],
        )?;
        let audit_failures = IntCounter::new(
            "bulkhead_audit_append_failures_total",
            "Audit records that could not be written (each refused its request)",
        )?;
        let gauge =
            |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["environment"]);
        let locks_held = gauge("bulkhead_locks_held", "State locks held now")?;
        let oldest_lock = GaugeVec::new(
            Opts::new(
                "bulkhead_oldest_lock_age_seconds",
                "Age of the oldest lock held",
            ),
            &["environment"],
        )?;
        let pending_changes = gauge("bulkhead_changes_pending", "Open changes not yet approved")?;
        let breakglass_open = gauge("bulkhead_breakglass_open", "Open break-glass grants")?;
        let by_chain =
            |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["chain"]);
        let commits = by_chain(
            "bulkhead_group_commits_total",
            "Group commits of audit records",
        )?;
        let committed_records = by_chain(
            "bulkhead_group_commit_records_total",
            "Audit records appended by group commits (divided by the commits: their size)",
        )?;
        let commit_seconds = CounterVec::new(
            Opts::new(
                "bulkhead_group_commit_seconds_total",
                "Time spent in group commits",
            ),
            &["chain"],
        )?;
        let flushes = by_chain(
            "bulkhead_flushes_total",
            "Flushes of relaxed audit commits to disk",
        )?;
        let flush_seconds = CounterVec::new(
            Opts::new("bulkhead_flush_seconds_total", "Time spent flushing"),
            &["chain"],
        )?;
        let notify_outbox = IntGaugeVec::new(
            Opts::new(
                "bulkhead_notify_outbox_depth",
                "Events read from the audit log for a notify block and not yet delivered or given up",
            ),
            &["notify"],
        )?;
        let notify_attempts = IntCounterVec::new(
            Opts::new(
                "bulkhead_notify_attempts_total",
                "Attempts to deliver an event, by notify block and outcome (delivered, failed, given-up)",
            ),
            &["notify", "outcome"],
        )?;
        registry.register(Box::new(notify_outbox.clone()))?;
        registry.register(Box::new(notify_attempts.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(audit_failures.clone()))?;
        registry.register(Box::new(locks_held.clone()))?;
        registry.register(Box::new(oldest_lock.clone()))?;
        registry.register(Box::new(pending_changes.clone()))?;
        registry.register(Box::new(breakglass_open.clone()))?;
        registry.register(Box::new(commits.clone()))?;
        registry.register(Box::new(committed_records.clone()))?;
        registry.register(Box::new(commit_seconds.clone()))?;
        registry.register(Box::new(flushes.clone()))?;
        registry.register(Box::new(flush_seconds.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            seconds,
            audit_failures,
            locks_held,
            oldest_lock,
            pending_changes,
            breakglass_open,
            commits,
            committed_records,
            commit_seconds,
            flushes,
            flush_seconds,
            notify_outbox,
            notify_attempts,
        })
    }

    /// How many events notify block `notify` has waiting. `notify` is a block of the config.
    pub fn notify_outbox(&self, notify: &str, depth: usize) {
        self.notify_outbox
            .with_label_values(&[notify])
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// One attempt of notify block `notify` ended with `outcome`: `delivered`, `failed` or
    /// `given-up`.
    pub fn notify_attempt(&self, notify: &str, outcome: &str) {
        self.notify_attempts
            .with_label_values(&[notify, outcome])
            .inc();
    }

    /// A chain's totals as its database counts them: the counters move up to them.
    pub fn chain(&self, chain: &str, t: &ChainTotals) {
        let up = |c: &IntCounterVec, to: u64| {
            let c = c.with_label_values(&[chain]);
            c.inc_by(to.saturating_sub(c.get()));
        };
        let up_f = |c: &CounterVec, to: f64| {
            let c = c.with_label_values(&[chain]);
            let by = to - c.get();
            if by > 0.0 {
                c.inc_by(by);
            }
        };
        up(&self.commits, t.commits);
        up(&self.committed_records, t.records);
        up_f(&self.commit_seconds, t.commit_seconds);
        up(&self.flushes, t.flushes);
        up_f(&self.flush_seconds, t.flush_seconds);
    }

    /// One answer. `environment` must be one the config knows, or `other`.
    pub fn answered(
        &self,
        environment: &str,
        action: &str,
        decision: &str,
        status: u16,
        seconds: f64,
    ) {
        let status = status.to_string();
        self.requests
            .with_label_values(&[environment, action, decision, &status])
            .inc();
        self.seconds.with_label_values(&[action]).observe(seconds);
    }

    pub fn audit_append_failed(&self) {
        self.audit_failures.inc();
    }

    pub fn environment(&self, name: &str, g: &EnvironmentGauges) {
        self.locks_held.with_label_values(&[name]).set(g.locks_held);
        self.oldest_lock
            .with_label_values(&[name])
            .set(g.oldest_lock_seconds);
        self.pending_changes
            .with_label_values(&[name])
            .set(g.pending_changes);
        self.breakglass_open
            .with_label_values(&[name])
            .set(g.breakglass_open);
    }

    /// Every measurement, in Prometheus's text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_by_their_labels_and_rendered() {
        let m = Metrics::new().unwrap();
        m.answered("prod", "state:lock", "deny", 423, 0.002);
        m.answered("prod", "state:lock", "deny", 423, 0.004);
        m.audit_append_failed();
        let text = m.render().unwrap();
        assert!(
            text.contains(r#"bulkhead_requests_total{action="state:lock",decision="deny",environment="prod",status="423"} 2"#),
            "{text}"
        );
        assert!(
            text.contains("bulkhead_audit_append_failures_total 1"),
            "{text}"
        );
        assert!(text.contains("bulkhead_request_seconds_bucket"), "{text}");
    }
}
