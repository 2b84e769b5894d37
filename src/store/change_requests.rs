//! Change requests, approvals and break-glass grants in an environment's database.

use sqlx::{AnyConnection, FromRow};

use super::{EnvStore, StoreError, Tx};
use crate::changes::{
    Approval, Attestation, BreakglassGrant, Change, ChangeId, Fingerprint, PlanSummary, Status,
};
use crate::lock::HeldLock;
use crate::principal::Caller;

#[derive(FromRow)]
struct ChangeRow {
    number: i64,
    state: String,
    title: String,
    author: String,
    created_at: String,
    plan_sha256: String,
    summary: String,
    branch: Option<String>,
    commit_sha: Option<String>,
    status: String,
    closed_at: Option<String>,
    closed_by: Option<String>,
    reason: Option<String>,
    applied_version: Option<i64>,
    revision: i64,
    fingerprint: Option<String>,
    attested_by: Option<String>,
    attested_branch: Option<String>,
    attested_subject: Option<String>,
    attested_at: Option<String>,
    diverged: Option<String>,
}

/// A new change, as proposed.
pub struct NewChange<'a> {
    pub state: &'a str,
    pub title: &'a str,
    pub author: &'a str,
    pub plan_sha256: &'a str,
    pub summary: &'a PlanSummary,
    pub branch: Option<&'a str>,
    pub commit: Option<&'a str>,
    pub fingerprint: &'a Fingerprint,
}

/// A change's plan, replacing the one before (`change update`).
pub struct NewPlan<'a> {
    pub plan_sha256: &'a str,
    pub summary: &'a PlanSummary,
    pub commit: Option<&'a str>,
    pub fingerprint: &'a Fingerprint,
}

#[derive(Debug, Clone, FromRow, serde::Serialize, serde::Deserialize)]
pub struct Breakglass {
    pub number: i64,
    pub principal: String,
    pub reason: String,
    pub opened_at: String,
    pub expires_at: String,
    pub closed_at: Option<String>,
    pub closed_by: Option<String>,
}

impl Breakglass {
    /// The grant as listed, with its id in `environment`.
    pub fn grant(self, environment: &str) -> BreakglassGrant {
        BreakglassGrant {
            id: crate::changes::breakglass_id(environment, self.number),
            environment: environment.to_string(),
            principal: self.principal,
            reason: self.reason,
            opened_at: self.opened_at,
            expires_at: self.expires_at,
        }
    }
}

const CHANGE_COLUMNS: &str = "number, state, title, author, created_at, plan_sha256, summary, \
     branch, commit_sha, status, closed_at, closed_by, reason, applied_version, revision, \
     fingerprint, attested_by, attested_branch, attested_subject, attested_at, diverged";

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

async fn load(
    conn: &mut AnyConnection,
    environment: &str,
    required: u32,
    row: ChangeRow,
) -> Result<Change, StoreError> {
    let approvals: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT approver, approved_at, expires_at FROM approvals WHERE change_number = $1 ORDER BY approved_at",
    )
    .bind(row.number)
    .fetch_all(&mut *conn)
    .await?;
    let corrupt = |what: &str, e: serde_json::Error| {
        StoreError::Corrupt(format!("change {}: {what}: {e}", row.number))
    };
    let fingerprint = match &row.fingerprint {
        Some(text) => Some(serde_json::from_str(text).map_err(|e| corrupt("fingerprint", e))?),
        None => None,
    };
    let diverged = match &row.diverged {
        Some(text) => serde_json::from_str(text).map_err(|e| corrupt("diverged", e))?,
        None => Vec::new(),
    };
    let attestation = match (row.attested_by, row.attested_at) {
        (Some(principal), Some(at)) => Some(Attestation {
            principal,
            branch: row.attested_branch,
            subject: row.attested_subject,
            at,
        }),
        _ => None,
    };
    Ok(Change {
        id: ChangeId {
            environment: environment.to_string(),
            number: row.number,
        }
        .to_string(),
        environment: environment.to_string(),
        state: row.state,
        title: row.title,
        author: row.author,
        created_at: row.created_at,
        plan_sha256: row.plan_sha256,
        summary: serde_json::from_str(&row.summary)
            .map_err(|e| StoreError::Corrupt(format!("change {}: summary: {e}", row.number)))?,
        branch: row.branch,
        commit: row.commit_sha,
        status: Status::parse(&row.status).ok_or_else(|| {
            StoreError::Corrupt(format!("change {}: status `{}`", row.number, row.status))
        })?,
        approvals: approvals
            .into_iter()
            .map(|(approver, approved_at, expires_at)| Approval {
                approver,
                approved_at,
                expires_at,
            })
            .collect(),
        required,
        readiness: String::new(),
        closed_at: row.closed_at,
        closed_by: row.closed_by,
        reason: row.reason,
        applied_version: row.applied_version,
        revision: row.revision,
        fingerprint,
        attestation,
        diverged,
    })
}

async fn fetch_change(
    conn: &mut AnyConnection,
    environment: &str,
    required: u32,
    number: i64,
) -> Result<Option<Change>, StoreError> {
    let row: Option<ChangeRow> = sqlx::query_as(&format!(
        "SELECT {CHANGE_COLUMNS} FROM changes WHERE number = $1"
    ))
    .bind(number)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => Ok(Some(load(conn, environment, required, row).await?)),
        None => Ok(None),
    }
}

impl EnvStore {
    /// Every change of this environment, newest first, optionally only those with `status`.
    pub async fn changes(
        &self,
        environment: &str,
        required: u32,
        status: Option<Status>,
    ) -> Result<Vec<Change>, StoreError> {
        let mut conn = self.db.pool().acquire().await?;
        let rows: Vec<ChangeRow> = sqlx::query_as(&format!(
            "SELECT {CHANGE_COLUMNS} FROM changes WHERE ($1 IS NULL OR status = $1) ORDER BY number DESC"
        ))
        .bind(status.map(Status::as_str))
        .fetch_all(&mut *conn)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(load(&mut conn, environment, required, row).await?);
        }
        Ok(out)
    }

    pub async fn change(
        &self,
        environment: &str,
        required: u32,
        number: i64,
    ) -> Result<Option<Change>, StoreError> {
        let mut conn = self.db.pool().acquire().await?;
        fetch_change(&mut conn, environment, required, number).await
    }

    /// The numbers of the newest `limit` changes that diverged from their plan, newest first.
    pub async fn diverged_changes(&self, limit: i64) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.db.pool().acquire().await?;
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT number FROM changes WHERE diverged IS NOT NULL ORDER BY number DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }

    /// Open break-glass grants (not closed, not expired).
    pub async fn open_breakglass(&self) -> Result<Vec<Breakglass>, StoreError> {
        let mut conn = self.db.pool().acquire().await?;
        open_breakglass(&mut conn, None, &self.db.now()).await
    }

    /// The open grant a request of `principal` acts under (see `grant_of`).
    pub async fn open_breakglass_for(
        &self,
        principal: &str,
    ) -> Result<Option<Breakglass>, StoreError> {
        let mut conn = self.db.pool().acquire().await?;
        grant_of(&mut conn, principal, &self.db.now()).await
    }
}

/// The open grant a request of `principal` acts under: the newest, when it has several. The
/// server and `policy explain` both read it from here, so they name the same grant.
async fn grant_of(
    conn: &mut AnyConnection,
    principal: &str,
    now: &str,
) -> Result<Option<Breakglass>, StoreError> {
    Ok(open_breakglass(conn, Some(principal), now).await?.pop())
}

/// The grants not closed and not expired at `now`, of `principal` when given.
async fn open_breakglass(
    conn: &mut AnyConnection,
    principal: Option<&str>,
    now: &str,
) -> Result<Vec<Breakglass>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT number, principal, reason, opened_at, expires_at, closed_at, closed_by FROM breakglass \
         WHERE closed_at IS NULL AND expires_at > $1 AND ($2 IS NULL OR principal = $2) ORDER BY number",
    )
    .bind(now)
    .bind(principal)
    .fetch_all(conn)
    .await?)
}

impl Tx<'_> {
    pub async fn insert_change(&mut self, c: NewChange<'_>) -> Result<i64, StoreError> {
        let summary = to_json(c.summary)?;
        let fingerprint = to_json(c.fingerprint)?;
        let (number,): (i64,) = sqlx::query_as(
            "INSERT INTO changes (state, title, author, created_at, plan_sha256, summary, branch, commit_sha, fingerprint) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING number",
        )
        .bind(c.state)
        .bind(c.title)
        .bind(c.author)
        .bind(self.now())
        .bind(c.plan_sha256)
        .bind(summary)
        .bind(c.branch)
        .bind(c.commit)
        .bind(fingerprint)
        .fetch_one(self.conn())
        .await?;
        Ok(number)
    }

    /// Replaces an open change's plan: its next revision, without the approvals and the
    /// attestation of the one before. Returns the approvers whose approvals were dismissed.
    pub async fn replace_plan(
        &mut self,
        number: i64,
        plan: NewPlan<'_>,
    ) -> Result<Vec<String>, StoreError> {
        let dismissed: Vec<(String,)> =
            sqlx::query_as("DELETE FROM approvals WHERE change_number = $1 RETURNING approver")
                .bind(number)
                .fetch_all(self.conn())
                .await?;
        sqlx::query(
            "UPDATE changes SET plan_sha256 = $1, summary = $2, commit_sha = $3, fingerprint = $4, \
             revision = revision + 1, attested_by = NULL, attested_branch = NULL, \
             attested_subject = NULL, attested_at = NULL WHERE number = $5 AND status = 'open'",
        )
        .bind(plan.plan_sha256)
        .bind(to_json(plan.summary)?)
        .bind(plan.commit)
        .bind(to_json(plan.fingerprint)?)
        .bind(number)
        .execute(self.conn())
        .await?;
        let mut dismissed: Vec<String> = dismissed.into_iter().map(|(a,)| a).collect();
        dismissed.sort();
        Ok(dismissed)
    }

    /// Records that `caller` attested it applies change `number`'s plan (replacing an
    /// attestation before).
    pub async fn attest(&mut self, number: i64, caller: &Caller) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE changes SET attested_by = $1, attested_branch = $2, attested_subject = $3, \
             attested_at = $4 WHERE number = $5 AND status = 'open'",
        )
        .bind(caller.principal.to_string())
        .bind(caller.branch.as_deref())
        .bind(caller.subject.as_deref())
        .bind(self.now())
        .bind(number)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Records addresses written under change `number` beyond its plan: `diverged`, the
    /// addresses of every such write together.
    pub async fn mark_diverged(
        &mut self,
        number: i64,
        diverged: &[String],
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE changes SET diverged = $1 WHERE number = $2")
            .bind(to_json(&diverged)?)
            .bind(number)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    pub async fn change(
        &mut self,
        environment: &str,
        required: u32,
        number: i64,
    ) -> Result<Option<Change>, StoreError> {
        fetch_change(self.conn(), environment, required, number).await
    }

    /// Adds (or renews) an approval.
    pub async fn approve(
        &mut self,
        number: i64,
        approver: &str,
        expires_at: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO approvals (change_number, approver, approved_at, expires_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (change_number, approver) DO UPDATE SET approved_at = excluded.approved_at, \
             expires_at = excluded.expires_at",
        )
        .bind(number)
        .bind(approver)
        .bind(self.now())
        .bind(expires_at)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Closes an open change as rejected, cancelled or applied.
    pub async fn close_change(
        &mut self,
        number: i64,
        status: Status,
        by: &str,
        reason: Option<&str>,
        applied_version: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE changes SET status = $1, closed_at = $2, closed_by = $3, reason = $4, applied_version = $5 \
             WHERE number = $6 AND status = 'open'",
        )
        .bind(status.as_str())
        .bind(self.now())
        .bind(by)
        .bind(reason)
        .bind(applied_version)
        .bind(number)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Marks a change used up by the version it wrote.
    pub async fn mark_applied(
        &mut self,
        number: i64,
        by: &str,
        version: i64,
    ) -> Result<(), StoreError> {
        self.close_change(number, Status::Applied, by, None, Some(version))
            .await
    }

    /// The lock held for change `number`'s apply, if any.
    pub async fn lock_for_change(
        &mut self,
        number: i64,
    ) -> Result<Option<(String, HeldLock)>, StoreError> {
        #[derive(FromRow)]
        struct Row {
            state: String,
            #[sqlx(flatten)]
            held: HeldLock,
        }
        let row: Option<Row> = sqlx::query_as(
            "SELECT state, lock_id, principal, branch, subject, operation, info, created_at, \
             change_number, active_at FROM locks WHERE change_number = $1",
        )
        .bind(number)
        .fetch_optional(self.conn())
        .await?;
        Ok(row.map(|r| (r.state, r.held)))
    }

    /// The newest version written for change `number` under `lock_id`, if any.
    pub async fn version_under_lock(
        &mut self,
        state: &str,
        lock_id: &str,
        number: i64,
    ) -> Result<Option<i64>, StoreError> {
        let (v,): (Option<i64>,) = sqlx::query_as(
            "SELECT MAX(version) FROM versions WHERE state = $1 AND lock_id = $2 \
             AND change_number = $3",
        )
        .bind(state)
        .bind(lock_id)
        .bind(number)
        .fetch_one(self.conn())
        .await?;
        Ok(v)
    }

    /// The open grant a request of `principal` acts under (see `grant_of`).
    pub async fn open_breakglass_for(
        &mut self,
        principal: &str,
    ) -> Result<Option<Breakglass>, StoreError> {
        let now = self.now();
        grant_of(self.conn(), principal, &now).await
    }

    pub async fn insert_breakglass(
        &mut self,
        principal: &str,
        reason: &str,
        expires_at: &str,
    ) -> Result<i64, StoreError> {
        let (number,): (i64,) = sqlx::query_as(
            "INSERT INTO breakglass (principal, reason, opened_at, expires_at) VALUES ($1, $2, $3, $4) RETURNING number",
        )
        .bind(principal)
        .bind(reason)
        .bind(self.now())
        .bind(expires_at)
        .fetch_one(self.conn())
        .await?;
        Ok(number)
    }

    pub async fn breakglass(&mut self, number: i64) -> Result<Option<Breakglass>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT number, principal, reason, opened_at, expires_at, closed_at, closed_by FROM breakglass WHERE number = $1",
        )
        .bind(number)
        .fetch_optional(self.conn())
        .await?)
    }

    pub async fn close_breakglass(&mut self, number: i64, by: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE breakglass SET closed_at = $1, closed_by = $2 WHERE number = $3 AND closed_at IS NULL")
            .bind(self.now())
            .bind(by)
            .bind(number)
            .execute(self.conn())
            .await?;
        Ok(())
    }
}
