//! CKA jobs: two finished runs compared layer by layer by a worker of the
//! one queue; the result is written with the job's end.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use sslab_shared::api::RunStatus;
use sslab_shared::cka::{CkaFamily, CkaJob, CkaRequest, CkaResult};

use super::{Claimant, JobKind, Lease, Owner, Result, Store, StoreError, now_ms};

const COLUMNS: &str =
    "id, request, result, status, error, created_at, finished_at, team_id, created_by";

/// What a CKA job produced: a pair's layer × layer matrix or a family's.
pub enum CkaOutcome {
    Pair(CkaResult),
    Family(CkaFamily),
}

fn from_row(row: &AnyRow) -> Result<CkaJob> {
    let status: String = row.try_get("status")?;
    let request: String = row.try_get("request")?;
    let result: Option<String> = row.try_get("result")?;
    let request: CkaRequest = serde_json::from_str(&request)
        .map_err(|e| StoreError::Corrupt(format!("CKA request: {e}")))?;
    // A family job's result column holds a `CkaFamily`, a pair's a `CkaResult`.
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("CKA result: {e}"));
    let (result, family) = match (result, request.runs.is_some()) {
        (None, _) => (None, None),
        (Some(r), false) => (Some(serde_json::from_str(&r).map_err(corrupt)?), None),
        (Some(r), true) => (None, Some(serde_json::from_str(&r).map_err(corrupt)?)),
    };
    Ok(CkaJob {
        id: row.try_get("id")?,
        status: RunStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("CKA job status `{status}`")))?,
        error: row.try_get("error")?,
        request,
        result,
        family,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
        team: row.try_get("team_id")?,
        created_by: row.try_get("created_by")?,
    })
}

impl Store {
    /// `requires`: what a worker needs to read the images it compares on.
    pub async fn create_cka(
        &self,
        request: &CkaRequest,
        owner: &Owner,
        requires: &str,
    ) -> Result<CkaJob> {
        let mut tx = self.pool.begin().await?;
        let id = insert_cka(&mut tx, request, owner, requires).await?;
        let sql = format!("SELECT {COLUMNS} FROM cka_jobs WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        from_row(&row)
    }

    pub async fn cka(&self, id: &str) -> Result<Option<CkaJob>> {
        let sql = format!("SELECT {COLUMNS} FROM cka_jobs WHERE id = $1");
        sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| from_row(&r))
            .transpose()
    }

    pub async fn claim_next_cka<'a>(
        &self,
        worker: impl Into<Claimant<'a>>,
        lease_ms: i64,
    ) -> Result<Option<(CkaJob, Lease)>> {
        let claimed = self
            .claim(JobKind::Cka, worker.into(), lease_ms, "", COLUMNS)
            .await?;
        claimed
            .map(|(row, lease)| Ok((from_row(&row)?, lease)))
            .transpose()
    }

    /// Ends a held CKA job, with its result when it succeeded.
    pub async fn finish_cka(
        &self,
        lease: &Lease,
        status: RunStatus,
        error: Option<&str>,
        result: Option<&CkaOutcome>,
    ) -> Result<bool> {
        let result = result
            .map(|r| match r {
                CkaOutcome::Pair(p) => serde_json::to_string(p),
                CkaOutcome::Family(f) => serde_json::to_string(f),
            })
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE cka_jobs SET result = $1 WHERE id = $2 AND worker = $3")
            .bind(result)
            .bind(&lease.id)
            .bind(&lease.token)
            .execute(&mut *tx)
            .await?;
        Self::end(tx, lease, status, error).await
    }

    /// Cancels a queued job at once; asks the worker of a running one to stop.
    pub async fn cancel_cka(&self, id: &str) -> Result<Option<CkaJob>> {
        self.cancel(JobKind::Cka, id).await?;
        self.cka(id).await
    }
}

/// Inserts a queued CKA job in `tx`; returns its id.
pub(super) async fn insert_cka(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    request: &CkaRequest,
    owner: &Owner,
    requires: &str,
) -> Result<String> {
    let id = format!("ck{}", &uuid::Uuid::new_v4().simple().to_string()[..14]);
    let body = serde_json::to_string(request).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO cka_jobs (id, request, status, created_at, team_id, created_by, requires) \
         VALUES ($1, $2, 'queued', $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(&body)
    .bind(now_ms())
    .bind(&owner.team)
    .bind(owner.user.as_deref())
    .bind(requires)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}
