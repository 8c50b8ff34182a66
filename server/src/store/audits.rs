//! Déjà vu audits: queued, claimed with a lease like runs, their report
//! written with their end.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use sslab_shared::api::{Audit, RunStatus};
use sslab_shared::audit::{AuditReport, AuditSpec};

use super::{Claimant, JobKind, LabelFilter, Lease, Owner, Result, Store, StoreError, now_ms};

const COLUMNS: &str = "id, name, status, spec, created_at, started_at, finished_at, error, \
    stage, step, total_steps, team_id, created_by, project, tags, note, archived";

fn from_row(row: &AnyRow) -> Result<Audit> {
    let status: String = row.try_get("status")?;
    let spec: String = row.try_get("spec")?;
    let (tags, note, archived) = super::labels::labels_from_row(row)?;
    Ok(Audit {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        status: RunStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("audit status `{status}`")))?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| StoreError::Corrupt(format!("audit spec: {e}")))?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        error: row.try_get("error")?,
        stage: row.try_get("stage")?,
        step: row.try_get("step")?,
        total_steps: row.try_get("total_steps")?,
        team: row.try_get("team_id")?,
        created_by: row.try_get("created_by")?,
        project: row.try_get("project")?,
        tags,
        note,
        archived,
    })
}

impl Store {
    pub async fn create_audit(&self, spec: &AuditSpec, owner: &Owner) -> Result<Audit> {
        // Read back in the same transaction: no worker can claim the audit
        // before its creator has seen it queued.
        let mut tx = self.pool.begin().await?;
        let id = insert_audit(&mut tx, spec, owner).await?;
        let sql = format!("SELECT {COLUMNS} FROM audits WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        from_row(&row)
    }

    pub async fn audit(&self, id: &str) -> Result<Option<Audit>> {
        let sql = format!("SELECT {COLUMNS} FROM audits WHERE id = $1");
        sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| from_row(&r))
            .transpose()
    }

    /// Newest first.
    pub async fn list_audits(
        &self,
        team: &str,
        limit: usize,
        filter: &LabelFilter,
    ) -> Result<Vec<Audit>> {
        let (clauses, binds) = filter.clauses(3);
        let sql = format!(
            "SELECT {COLUMNS} FROM audits WHERE team_id = $2{clauses} ORDER BY created_at DESC, id DESC LIMIT $1"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .bind(limit as i64)
            .bind(team);
        for b in binds {
            q = q.bind(b);
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    /// The report of an audit that succeeded.
    pub async fn audit_report(&self, id: &str) -> Result<Option<AuditReport>> {
        let row = sqlx::query("SELECT report FROM audits WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(text) = row
            .map(|r| r.try_get::<Option<String>, _>("report"))
            .transpose()?
            .flatten()
        else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("audit report: {e}")))
    }

    /// Claims the oldest queued audit. An interrupted attempt starts over:
    /// nothing of it is kept.
    pub async fn claim_next_audit<'a>(
        &self,
        worker: impl Into<Claimant<'a>>,
        lease_ms: i64,
    ) -> Result<Option<(Audit, Lease)>> {
        let reset = ", step = 0, stage = ''";
        let claimed = self
            .claim(JobKind::Audit, worker.into(), lease_ms, reset, COLUMNS)
            .await?;
        claimed
            .map(|(row, lease)| Ok((from_row(&row)?, lease)))
            .transpose()
    }

    /// Records progress and extends the lease. `None` if the lease is no
    /// longer held, else whether a cancel was requested.
    pub async fn audit_progress(
        &self,
        lease: &Lease,
        lease_ms: i64,
        stage: &str,
        step: i64,
        total_steps: i64,
    ) -> Result<Option<bool>> {
        let held = self.heartbeat(lease, lease_ms).await?;
        if held.is_some() {
            sqlx::query(
                "UPDATE audits SET stage = $1, step = $2, total_steps = $3 \
                 WHERE id = $4 AND worker = $5 AND status = 'running'",
            )
            .bind(stage)
            .bind(step)
            .bind(total_steps)
            .bind(&lease.id)
            .bind(&lease.token)
            .execute(&self.pool)
            .await?;
        }
        Ok(held)
    }

    /// Ends a held audit, with its report when it succeeded.
    pub async fn finish_audit(
        &self,
        lease: &Lease,
        status: RunStatus,
        error: Option<&str>,
        report: Option<&AuditReport>,
    ) -> Result<bool> {
        let report = report
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE audits SET report = $1 WHERE id = $2 AND worker = $3")
            .bind(report)
            .bind(&lease.id)
            .bind(&lease.token)
            .execute(&mut *tx)
            .await?;
        Self::end(tx, lease, status, error).await
    }

    /// Cancels a queued audit at once; asks the worker of a running one to stop.
    pub async fn cancel_audit(&self, id: &str) -> Result<Option<Audit>> {
        self.cancel(JobKind::Audit, id).await?;
        self.audit(id).await
    }
}

/// Inserts a queued audit in `tx`; returns its id.
pub(super) async fn insert_audit(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    spec: &AuditSpec,
    owner: &Owner,
) -> Result<String> {
    let id = format!("au{}", &uuid::Uuid::new_v4().simple().to_string()[..14]);
    let name = if spec.name.trim().is_empty() {
        format!("audit-{}", &id[2..8])
    } else {
        spec.name.clone()
    };
    let body = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO audits (id, name, status, spec, created_at, total_steps, team_id, created_by, project, requires) \
         VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&id)
    .bind(&name)
    .bind(&body)
    .bind(now_ms())
    // Finished runs are attacked without training.
    .bind(if spec.runs.is_some() {
        0
    } else {
        spec.run.total_steps() as i64
    })
    .bind(&owner.team)
    .bind(owner.user.as_deref())
    .bind(&owner.project)
    .bind(super::runs::requires(&spec.run))
    .execute(&mut **tx)
    .await?;
    Ok(id)
}
