//! Export jobs: a finished run or audit written as a demo bundle by a
//! worker of the one queue.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use sslab_shared::api::RunStatus;
use sslab_shared::demo::{Export, ExportOptions, ExportSource};

use super::{Claimant, JobKind, Lease, Owner, Result, Store, StoreError, now_ms};

const COLUMNS: &str = "id, source_kind, source_id, options, status, error, bytes, created_at, \
    finished_at, team_id, created_by";

fn from_row(row: &AnyRow) -> Result<Export> {
    let status: String = row.try_get("status")?;
    let source: String = row.try_get("source_kind")?;
    let options: String = row.try_get("options")?;
    Ok(Export {
        id: row.try_get("id")?,
        source: match source.as_str() {
            "run" => ExportSource::Run,
            "audit" => ExportSource::Audit,
            other => return Err(StoreError::Corrupt(format!("export source `{other}`"))),
        },
        source_id: row.try_get("source_id")?,
        options: serde_json::from_str(&options)
            .map_err(|e| StoreError::Corrupt(format!("export options: {e}")))?,
        status: RunStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("export status `{status}`")))?,
        error: row.try_get("error")?,
        bytes: row.try_get::<i64, _>("bytes")?.max(0) as u64,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
        team: row.try_get("team_id")?,
        created_by: row.try_get("created_by")?,
    })
}

impl Store {
    pub async fn create_export(
        &self,
        source: ExportSource,
        source_id: &str,
        options: &ExportOptions,
        owner: &Owner,
    ) -> Result<Export> {
        let id = format!("ex{}", &uuid::Uuid::new_v4().simple().to_string()[..14]);
        let options =
            serde_json::to_string(options).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO exports (id, source_kind, source_id, options, status, created_at, team_id, created_by) \
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7)",
        )
        .bind(&id)
        .bind(source.as_str())
        .bind(source_id)
        .bind(&options)
        .bind(now_ms())
        .bind(&owner.team)
        .bind(owner.user.as_deref())
        .execute(&mut *tx)
        .await?;
        let sql = format!("SELECT {COLUMNS} FROM exports WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        from_row(&row)
    }

    pub async fn export(&self, id: &str) -> Result<Option<Export>> {
        let sql = format!("SELECT {COLUMNS} FROM exports WHERE id = $1");
        sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| from_row(&r))
            .transpose()
    }

    /// Claims the oldest queued export.
    pub async fn claim_next_export<'a>(
        &self,
        worker: impl Into<Claimant<'a>>,
        lease_ms: i64,
    ) -> Result<Option<(Export, Lease)>> {
        let claimed = self
            .claim(JobKind::Export, worker.into(), lease_ms, "", COLUMNS)
            .await?;
        claimed
            .map(|(row, lease)| Ok((from_row(&row)?, lease)))
            .transpose()
    }

    /// Ends a held export with the bundle's size.
    pub async fn finish_export(
        &self,
        lease: &Lease,
        status: RunStatus,
        error: Option<&str>,
        bytes: u64,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE exports SET bytes = $1 WHERE id = $2 AND worker = $3")
            .bind(bytes as i64)
            .bind(&lease.id)
            .bind(&lease.token)
            .execute(&mut *tx)
            .await?;
        Self::end(tx, lease, status, error).await
    }
}
