//! Decoder jobs: a conditional generator trained for a finished run by a
//! worker of the one queue; progress is written as it trains, the report
//! with the job's end.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use sslab_shared::api::RunStatus;
use sslab_shared::decoder::{DecoderJob, DecoderReport, DecoderSpec};

use super::{Claimant, JobKind, Lease, Owner, Result, Store, StoreError, now_ms};

const COLUMNS: &str = "id, run_id, spec, report, status, step, total_steps, last_loss, error, \
     created_at, finished_at, team_id, created_by";

fn from_row(row: &AnyRow) -> Result<DecoderJob> {
    let status: String = row.try_get("status")?;
    let spec: String = row.try_get("spec")?;
    let report: Option<String> = row.try_get("report")?;
    Ok(DecoderJob {
        id: row.try_get("id")?,
        run: row.try_get("run_id")?,
        status: RunStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("decoder status `{status}`")))?,
        error: row.try_get("error")?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| StoreError::Corrupt(format!("decoder spec: {e}")))?,
        step: row.try_get("step")?,
        total_steps: row.try_get("total_steps")?,
        last_loss: row.try_get("last_loss")?,
        report: report
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("decoder report: {e}")))?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
        team: row.try_get("team_id")?,
        created_by: row.try_get("created_by")?,
    })
}

impl Store {
    /// Queues a decoder for run `run`. `requires`: what a worker needs to
    /// read its images.
    pub async fn create_decoder(
        &self,
        run: &str,
        spec: &DecoderSpec,
        owner: &Owner,
        requires: &str,
    ) -> Result<DecoderJob> {
        let id = format!("dc{}", &uuid::Uuid::new_v4().simple().to_string()[..14]);
        let body = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let total = (spec.steps * spec.layers.len()) as i64;
        sqlx::query(
            "INSERT INTO decoders (id, run_id, spec, status, total_steps, created_at, team_id, created_by, requires) \
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(run)
        .bind(&body)
        .bind(total)
        .bind(now_ms())
        .bind(&owner.team)
        .bind(owner.user.as_deref())
        .bind(requires)
        .execute(&self.pool)
        .await?;
        self.decoder(&id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("decoder {id} vanished")))
    }

    pub async fn decoder(&self, id: &str) -> Result<Option<DecoderJob>> {
        let sql = format!("SELECT {COLUMNS} FROM decoders WHERE id = $1");
        sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| from_row(&r))
            .transpose()
    }

    /// The run's decoders, newest first.
    pub async fn run_decoders(&self, run: &str) -> Result<Vec<DecoderJob>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM decoders WHERE run_id = $1 ORDER BY created_at DESC, id"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(run)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    pub async fn claim_next_decoder<'a>(
        &self,
        worker: impl Into<Claimant<'a>>,
        lease_ms: i64,
    ) -> Result<Option<(DecoderJob, Lease)>> {
        let claimed = self
            .claim(
                JobKind::Decoder,
                worker.into(),
                lease_ms,
                ", step = 0, last_loss = NULL",
                COLUMNS,
            )
            .await?;
        claimed
            .map(|(row, lease)| Ok((from_row(&row)?, lease)))
            .transpose()
    }

    /// Records progress and extends the lease. `None` if the lease is no
    /// longer held, else whether a cancel was asked.
    pub async fn decoder_progress(
        &self,
        lease: &Lease,
        step: i64,
        loss: f64,
        lease_ms: i64,
    ) -> Result<Option<bool>> {
        let row = sqlx::query(
            "UPDATE decoders SET step = $1, last_loss = $2, lease_expires_at = $3 \
             WHERE id = $4 AND worker = $5 AND status = 'running' RETURNING cancel_requested",
        )
        .bind(step)
        .bind(loss.is_finite().then_some(loss))
        .bind(now_ms() + lease_ms)
        .bind(&lease.id)
        .bind(&lease.token)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<i64, _>("cancel_requested")? != 0),
            None => None,
        })
    }

    /// Ends a held decoder job, with its report when it succeeded.
    pub async fn finish_decoder(
        &self,
        lease: &Lease,
        status: RunStatus,
        error: Option<&str>,
        report: Option<&DecoderReport>,
    ) -> Result<bool> {
        let report = report
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        // A report comes with success: the progress then reads every step done.
        sqlx::query(
            "UPDATE decoders SET report = $1, \
             step = CASE WHEN $1 IS NULL THEN step ELSE total_steps END \
             WHERE id = $2 AND worker = $3",
        )
        .bind(report)
        .bind(&lease.id)
        .bind(&lease.token)
        .execute(&mut *tx)
        .await?;
        Self::end(tx, lease, status, error).await
    }

    /// Cancels a queued job at once; asks the worker of a running one to stop.
    pub async fn cancel_decoder(&self, id: &str) -> Result<Option<DecoderJob>> {
        self.cancel(JobKind::Decoder, id).await?;
        self.decoder(id).await
    }
}
