//! Re-evaluation jobs of finished runs.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use sslab_shared::api::{Evaluation, EvaluationJob, EvaluationRequest, RunStatus};

use super::{Claimant, JobKind, Lease, Result, Store, StoreError, now_ms};

const JOB_COLUMNS: &str = "id, run_id, status, request, created_at, finished_at, error, created_by";

fn job_from_row(row: &AnyRow) -> Result<EvaluationJob> {
    let status: String = row.try_get("status")?;
    let request: String = row.try_get("request")?;
    Ok(EvaluationJob {
        id: row.try_get("id")?,
        run_id: row.try_get("run_id")?,
        status: RunStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown job status `{status}`")))?,
        request: serde_json::from_str::<EvaluationRequest>(&request).map_err(|e| {
            StoreError::Corrupt(format!("stored evaluation request does not parse: {e}"))
        })?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
        error: row.try_get("error")?,
        created_by: row.try_get("created_by")?,
    })
}

/// Re-evaluation jobs: the same queue discipline as runs (claim with a
/// lease, hand back or fail when the worker vanishes).
impl Store {
    pub async fn create_evaluation_job(
        &self,
        run_id: &str,
        request: &EvaluationRequest,
        created_by: Option<&str>,
    ) -> Result<EvaluationJob> {
        let id = format!("ev{}", &uuid::Uuid::new_v4().simple().to_string()[..14]);
        let body =
            serde_json::to_string(request).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // The run's team, and what the run needs of a worker unless the
        // request reads a server folder of its own.
        let own = match request.eval.data.as_ref().and_then(|d| d.server_path()) {
            Some(_) => super::SERVER_DATA,
            None => "",
        };
        sqlx::query(
            "INSERT INTO evaluation_jobs (id, run_id, status, request, created_at, created_by, team_id, requires) \
             VALUES ($1, $2, 'queued', $3, $4, $5, \
                 COALESCE((SELECT team_id FROM runs WHERE id = $2), 'default'), \
                 COALESCE(NULLIF($6, ''), (SELECT requires FROM runs WHERE id = $2), ''))",
        )
        .bind(&id)
        .bind(run_id)
        .bind(body)
        .bind(now_ms())
        .bind(created_by)
        .bind(own)
        .execute(&self.pool)
        .await?;
        self.evaluation_job(&id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("inserted job vanished".into()))
    }

    pub async fn evaluation_job(&self, id: &str) -> Result<Option<EvaluationJob>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM evaluation_jobs WHERE id = $1");
        sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| job_from_row(&r))
            .transpose()
    }

    pub async fn evaluation_jobs(&self, run_id: &str) -> Result<Vec<EvaluationJob>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM evaluation_jobs WHERE run_id = $1 ORDER BY created_at, id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Claims the oldest queued re-evaluation. Rows are written only with
    /// the job's end, in one transaction, so an interrupted attempt leaves
    /// nothing to clean up.
    pub async fn claim_next_evaluation<'a>(
        &self,
        worker: impl Into<Claimant<'a>>,
        lease_ms: i64,
    ) -> Result<Option<(EvaluationJob, Lease)>> {
        let claimed = self
            .claim(
                JobKind::Evaluation,
                worker.into(),
                lease_ms,
                "",
                JOB_COLUMNS,
            )
            .await?;
        claimed
            .map(|(row, lease)| Ok((job_from_row(&row)?, lease)))
            .transpose()
    }

    /// Ends a held job, with its rows, in one transaction.
    pub async fn finish_evaluation(
        &self,
        job: &EvaluationJob,
        lease: &Lease,
        status: RunStatus,
        error: Option<&str>,
        rows: &[Evaluation],
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        Self::insert_evaluations(&mut tx, &job.run_id, &job.id, rows).await?;
        Self::end(tx, lease, status, error).await
    }

    /// Cancels a queued job at once; asks the worker of a running one to
    /// stop. The job as it is afterwards, `None` if there is none.
    pub async fn cancel_evaluation(&self, id: &str) -> Result<Option<EvaluationJob>> {
        self.cancel(JobKind::Evaluation, id).await?;
        self.evaluation_job(id).await
    }
}
