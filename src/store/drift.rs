//! Signals and drift reports in an environment's database: the signals raised on writes and
//! lock releases and their acknowledgement, the reports a pipeline posts, and each state's
//! drift as its newest report says. Stores and fetches; what is a signal, and what is drift, is
//! [`crate::drift`]'s.
//!
//! Reports are kept to the newest [`REPORTS_KEPT`] per state, so that an hourly pipeline does
//! not grow the database without end; what must outlive them (since when a state has drifted,
//! when it was last clean) is kept in its `drift_states` row.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use super::{EnvStore, StoreError, Tx};
use crate::drift::{Drifted, Facts, Kind, Report, Signal};

/// The most reports kept per state.
pub const REPORTS_KEPT: i64 = 20;

/// The most rows a listing returns: the newest.
const LISTED_MAX: i64 = 1000;

/// A signal as stored.
#[derive(Debug, Clone, FromRow, Serialize, Deserialize)]
pub struct SignalRow {
    pub id: i64,
    pub state: String,
    pub kind: String,
    pub severity: String,
    pub evidence: String,
    pub version: Option<i64>,
    pub principal: String,
    pub created_at: String,
    pub resolved_by: Option<i64>,
    pub resolved_at: Option<String>,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<String>,
    pub reason: Option<String>,
}

impl SignalRow {
    /// A warning nobody has acknowledged and no later version has resolved.
    pub fn is_open(&self) -> bool {
        self.severity == crate::drift::Severity::Warning.as_str()
            && self.resolved_at.is_none()
            && self.acknowledged_at.is_none()
    }
}

/// A drifted resource as a report stores it: since when it has been reported drifted without a
/// clean report between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracked {
    #[serde(flatten)]
    pub drifted: Drifted,
    pub since: String,
}

/// A report as stored.
#[derive(Debug, Clone, FromRow)]
struct ReportRow {
    id: i64,
    state: String,
    principal: String,
    created_at: String,
    plan_sha256: String,
    terraform_version: Option<String>,
    count: i64,
    drifted: String,
}

/// A report as read back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredReport {
    pub id: i64,
    pub state: String,
    pub principal: String,
    pub created_at: String,
    pub plan_sha256: String,
    pub terraform_version: Option<String>,
    pub count: i64,
    pub drifted: Vec<Tracked>,
}

impl TryFrom<ReportRow> for StoredReport {
    type Error = StoreError;

    fn try_from(row: ReportRow) -> Result<StoredReport, StoreError> {
        let drifted = serde_json::from_str(&row.drifted).map_err(|e| {
            StoreError::Corrupt(format!("drift report {} of {}: {e}", row.id, row.state))
        })?;
        Ok(StoredReport {
            id: row.id,
            state: row.state,
            principal: row.principal,
            created_at: row.created_at,
            plan_sha256: row.plan_sha256,
            terraform_version: row.terraform_version,
            count: row.count,
            drifted,
        })
    }
}

/// What [`Tx::add_report`] stored.
pub struct Added {
    pub report: StoredReport,
    /// The state's drift now.
    pub drift: DriftState,
    /// Whether the report finds drift the report before did not name (other resources, or
    /// any after a clean report): what owners are told of.
    pub new: bool,
}

/// A state's drift as its newest report says.
#[derive(Debug, Clone, FromRow, Serialize, Deserialize)]
pub struct DriftState {
    pub state: String,
    pub report_id: i64,
    pub reported_at: String,
    pub count: i64,
    /// When the drift now reported was first reported; `None` when the newest report is clean.
    pub drifted_since: Option<String>,
    /// When a report last found no drift.
    pub clean_at: Option<String>,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<String>,
    pub reason: Option<String>,
}

impl DriftState {
    /// Drift reported and not acknowledged.
    pub fn is_open(&self) -> bool {
        self.count > 0 && self.acknowledged_at.is_none()
    }
}

const SIGNAL_COLUMNS: &str = "id, state, kind, severity, evidence, version, principal, \
     created_at, resolved_by, resolved_at, acknowledged_by, acknowledged_at, reason";

const DRIFT_STATE_COLUMNS: &str = "state, report_id, reported_at, count, drifted_since, \
     clean_at, acknowledged_by, acknowledged_at, reason";

const REPORT_COLUMNS: &str =
    "id, state, principal, created_at, plan_sha256, terraform_version, count, drifted";

/// The drift of `state` as its newest report says; `None` before its first report.
async fn drift_of<'c>(
    db: impl sqlx::Executor<'c, Database = sqlx::Any>,
    state: &str,
) -> Result<Option<DriftState>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {DRIFT_STATE_COLUMNS} FROM drift_states WHERE state = $1"
    ))
    .bind(state)
    .fetch_optional(db)
    .await?)
}

fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Tx<'_> {
    /// What the newest version of `state` says of itself (`None` when it was not taken: a
    /// version from before, an unreadable state, or no version).
    pub async fn latest_facts(&mut self, state: &str) -> Result<Option<Facts>, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT facts FROM versions WHERE state = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(state)
        .fetch_optional(self.conn())
        .await?;
        match row.and_then(|(facts,)| facts) {
            // Facts that no longer read (a newer server's) are as good as none: no signal
            // is raised from a comparison with them.
            Some(text) => Ok(serde_json::from_str(&text).ok()),
            None => Ok(None),
        }
    }

    /// Stores `signals` of `state`, raised by `principal`'s request (writing `version`, if it
    /// wrote one); their ids.
    pub async fn add_signals(
        &mut self,
        state: &str,
        version: Option<i64>,
        principal: &str,
        signals: &[Signal],
    ) -> Result<Vec<i64>, StoreError> {
        let mut ids = Vec::with_capacity(signals.len());
        for signal in signals {
            let (id,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) + 1 FROM signals")
                .fetch_one(self.conn())
                .await?;
            let now = self.now();
            sqlx::query(
                "INSERT INTO signals (id, state, kind, severity, evidence, version, principal, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(id)
            .bind(state)
            .bind(signal.kind.as_str())
            .bind(signal.severity.as_str())
            .bind(&signal.evidence)
            .bind(version)
            .bind(principal)
            .bind(now)
            .execute(self.conn())
            .await
            .map_err(|e| self.explain(e.into()))?;
            ids.push(id);
        }
        Ok(ids)
    }

    /// Resolves the open signals of `kinds` on `state`: `version` no longer has their
    /// condition. One statement, whatever the kinds: every write runs it.
    pub async fn resolve_signals(
        &mut self,
        state: &str,
        kinds: &[Kind],
        version: i64,
    ) -> Result<(), StoreError> {
        if kinds.is_empty() {
            return Ok(());
        }
        let placeholders: Vec<String> = (0..kinds.len()).map(|i| format!("${}", i + 4)).collect();
        let sql = format!(
            "UPDATE signals SET resolved_by = $1, resolved_at = $2 WHERE state = $3 \
             AND kind IN ({}) AND resolved_at IS NULL AND acknowledged_at IS NULL",
            placeholders.join(", ")
        );
        let now = self.now();
        let mut query = sqlx::query(&sql).bind(version).bind(now).bind(state);
        for kind in kinds {
            query = query.bind(kind.as_str());
        }
        query.execute(self.conn()).await?;
        Ok(())
    }

    /// Whether any version of `state` was written under lock `lock_id` since `taken_at` (as
    /// stored).
    pub async fn wrote_under(
        &mut self,
        state: &str,
        lock_id: &str,
        taken_at: &str,
    ) -> Result<bool, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM versions WHERE state = $1 AND lock_id = $2 AND created_at >= $3",
        )
        .bind(state)
        .bind(lock_id)
        .bind(taken_at)
        .fetch_one(self.conn())
        .await?;
        Ok(n > 0)
    }

    /// Signal `id` of `state`, if it has one.
    pub async fn signal(&mut self, state: &str, id: i64) -> Result<Option<SignalRow>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {SIGNAL_COLUMNS} FROM signals WHERE state = $1 AND id = $2"
        ))
        .bind(state)
        .bind(id)
        .fetch_optional(self.conn())
        .await?)
    }

    /// Acknowledges signal `id` of `state` for `by`, with `reason`, if it is still open.
    pub async fn acknowledge_signal(
        &mut self,
        state: &str,
        id: i64,
        by: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let now = self.now();
        Ok(sqlx::query(
            "UPDATE signals SET acknowledged_by = $1, acknowledged_at = $2, reason = $3 \
             WHERE state = $4 AND id = $5 AND severity = 'warning' AND resolved_at IS NULL \
             AND acknowledged_at IS NULL",
        )
        .bind(by)
        .bind(now)
        .bind(reason)
        .bind(state)
        .bind(id)
        .execute(self.conn())
        .await?
        .rows_affected()
            == 1)
    }

    /// Acknowledges the drift now reported for `state` for `by`, with `reason`, if it is
    /// still open.
    pub async fn acknowledge_drift(
        &mut self,
        state: &str,
        by: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let now = self.now();
        Ok(sqlx::query(
            "UPDATE drift_states SET acknowledged_by = $1, acknowledged_at = $2, reason = $3 \
             WHERE state = $4 AND count > 0 AND acknowledged_at IS NULL",
        )
        .bind(by)
        .bind(now)
        .bind(reason)
        .bind(state)
        .execute(self.conn())
        .await?
        .rows_affected()
            == 1)
    }

    /// Stores `report` of `state`, posted by `principal`: each drifted resource carries since
    /// when it has been reported (from the report before, unless a clean one came between),
    /// and the state's drift is brought up to date. An acknowledgement outlives a report that
    /// names the same resources, and no other. Older reports past [`REPORTS_KEPT`] go.
    pub async fn add_report(
        &mut self,
        state: &str,
        principal: &str,
        plan_sha256: &str,
        report: &Report,
    ) -> Result<Added, StoreError> {
        let now = self.now();
        let before = drift_of(self.conn(), state).await?;
        let previous: Option<StoredReport> = match &before {
            Some(b) => sqlx::query_as::<_, ReportRow>(&format!(
                "SELECT {REPORT_COLUMNS} FROM drift_reports WHERE id = $1"
            ))
            .bind(b.report_id)
            .fetch_optional(self.conn())
            .await?
            .map(StoredReport::try_from)
            .transpose()?,
            None => None,
        };
        let since: HashMap<&str, &str> = previous
            .iter()
            .flat_map(|p| &p.drifted)
            .map(|t| (t.drifted.address.as_str(), t.since.as_str()))
            .collect();
        let drifted: Vec<Tracked> = report
            .drifted
            .iter()
            .map(|d| Tracked {
                since: since
                    .get(d.address.as_str())
                    .unwrap_or(&now.as_str())
                    .to_string(),
                drifted: d.clone(),
            })
            .collect();
        let (id,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) + 1 FROM drift_reports")
            .fetch_one(self.conn())
            .await?;
        let count = report.count as i64;
        sqlx::query(&format!(
            "INSERT INTO drift_reports ({REPORT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(id)
        .bind(state)
        .bind(principal)
        .bind(&now)
        .bind(plan_sha256)
        .bind(report.terraform_version.as_deref())
        .bind(count)
        .bind(to_json(&drifted)?)
        .execute(self.conn())
        .await
        .map_err(|e| self.explain(e.into()))?;
        let addresses = |tracked: &[Tracked]| -> BTreeSet<String> {
            tracked.iter().map(|t| t.drifted.address.clone()).collect()
        };
        let same_drift = previous
            .as_ref()
            .is_some_and(|p| p.count == count && addresses(&p.drifted) == addresses(&drifted));
        let kept_ack = before
            .as_ref()
            .filter(|b| same_drift && count > 0 && b.acknowledged_at.is_some());
        let drifted_since = match (count, &before) {
            (0, _) => None,
            (_, Some(b)) if b.count > 0 => b.drifted_since.clone(),
            _ => Some(now.clone()),
        };
        let clean_at = match count {
            0 => Some(now.clone()),
            _ => before.as_ref().and_then(|b| b.clean_at.clone()),
        };
        let row = DriftState {
            state: state.to_string(),
            report_id: id,
            reported_at: now.clone(),
            count,
            drifted_since,
            clean_at,
            acknowledged_by: kept_ack.and_then(|b| b.acknowledged_by.clone()),
            acknowledged_at: kept_ack.and_then(|b| b.acknowledged_at.clone()),
            reason: kept_ack.and_then(|b| b.reason.clone()),
        };
        sqlx::query(&format!(
            "INSERT INTO drift_states ({DRIFT_STATE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, \
             $8, $9) ON CONFLICT (state) DO UPDATE SET report_id = excluded.report_id, \
             reported_at = excluded.reported_at, count = excluded.count, \
             drifted_since = excluded.drifted_since, clean_at = excluded.clean_at, \
             acknowledged_by = excluded.acknowledged_by, \
             acknowledged_at = excluded.acknowledged_at, reason = excluded.reason"
        ))
        .bind(&row.state)
        .bind(row.report_id)
        .bind(&row.reported_at)
        .bind(row.count)
        .bind(&row.drifted_since)
        .bind(&row.clean_at)
        .bind(&row.acknowledged_by)
        .bind(&row.acknowledged_at)
        .bind(&row.reason)
        .execute(self.conn())
        .await?;
        sqlx::query("DELETE FROM drift_reports WHERE state = $1 AND id <= $2")
            .bind(state)
            .bind(id - REPORTS_KEPT)
            .execute(self.conn())
            .await?;
        let stored = StoredReport {
            id,
            state: state.to_string(),
            principal: principal.to_string(),
            created_at: now,
            plan_sha256: plan_sha256.to_string(),
            terraform_version: report.terraform_version.clone(),
            count,
            drifted,
        };
        Ok(Added {
            report: stored,
            drift: row,
            new: count > 0 && !same_drift,
        })
    }
}

impl EnvStore {
    /// The signals of `state` (of every state, without one), newest first, at most
    /// [`LISTED_MAX`]; only those open with `open_only`.
    pub async fn signals(
        &self,
        state: Option<&str>,
        open_only: bool,
    ) -> Result<Vec<SignalRow>, StoreError> {
        let open = if open_only {
            " AND severity = 'warning' AND resolved_at IS NULL AND acknowledged_at IS NULL"
        } else {
            ""
        };
        let query = match state {
            Some(_) => format!(
                "SELECT {SIGNAL_COLUMNS} FROM signals WHERE state = $1{open} ORDER BY id DESC LIMIT {LISTED_MAX}"
            ),
            None => format!(
                "SELECT {SIGNAL_COLUMNS} FROM signals WHERE 1 = 1{open} ORDER BY id DESC LIMIT {LISTED_MAX}"
            ),
        };
        let mut query = sqlx::query_as(&query);
        if let Some(state) = state {
            query = query.bind(state);
        }
        Ok(query.fetch_all(self.db.pool()).await?)
    }

    /// The drift of `state` as its newest report says; `None` before its first report.
    pub async fn drift_of(&self, state: &str) -> Result<Option<DriftState>, StoreError> {
        drift_of(self.db.pool(), state).await
    }

    /// Every state's drift as its newest report says, by state name.
    pub async fn drift_states(&self) -> Result<Vec<DriftState>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {DRIFT_STATE_COLUMNS} FROM drift_states ORDER BY state"
        ))
        .fetch_all(self.db.pool())
        .await?)
    }

    /// The reports kept for `state`, newest first.
    pub async fn drift_reports(&self, state: &str) -> Result<Vec<StoredReport>, StoreError> {
        let rows: Vec<ReportRow> = sqlx::query_as(&format!(
            "SELECT {REPORT_COLUMNS} FROM drift_reports WHERE state = $1 ORDER BY id DESC"
        ))
        .bind(state)
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter().map(StoredReport::try_from).collect()
    }
}
