//! The one job queue: runs, evaluation jobs, audits, exports and CKA jobs are rows of their own
//! tables with the same queue columns (`status`, `worker`,
//! `lease_expires_at`, `attempts`, `cancel_requested`), claimed with a lease
//! that the holder renews and that every report must show.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use sslab_shared::api::RunStatus;

use super::{Dialect, Result, Store, now_ms};

/// The ids of a server's in-process workers begin with this.
pub const LOCAL_PREFIX: &str = "local-";

/// How many times a job may be claimed before an interruption counts as a failure.
pub const MAX_ATTEMPTS: i64 = 3;

/// What the queue holds; each kind is a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Run,
    Evaluation,
    Audit,
    Export,
    Cka,
    Decoder,
}

impl JobKind {
    pub const ALL: [JobKind; 6] = [
        JobKind::Run,
        JobKind::Evaluation,
        JobKind::Audit,
        JobKind::Export,
        JobKind::Cka,
        JobKind::Decoder,
    ];

    /// Its name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Run => "run",
            JobKind::Evaluation => "evaluation",
            JobKind::Audit => "audit",
            JobKind::Export => "export",
            JobKind::Cka => "cka",
            JobKind::Decoder => "decoder",
        }
    }

    fn table(self) -> &'static str {
        match self {
            JobKind::Run => "runs",
            JobKind::Evaluation => "evaluation_jobs",
            JobKind::Audit => "audits",
            JobKind::Export => "exports",
            JobKind::Cka => "cka_jobs",
            JobKind::Decoder => "decoders",
        }
    }
}

/// Who claims: a worker's id and what it can run beyond the plain CPU
/// (`cuda`). A job whose `requires` is set waits for a worker that has it.
#[derive(Debug, Clone, Copy)]
pub struct Claimant<'a> {
    pub id: &'a str,
    pub capabilities: &'a [String],
    /// The one team it serves; none: every team.
    pub team: Option<&'a str>,
}

impl<'a> From<&'a str> for Claimant<'a> {
    /// A worker that runs what needs nothing special.
    fn from(id: &'a str) -> Self {
        Claimant {
            id,
            capabilities: &[],
            team: None,
        }
    }
}

/// A claimed job. `token` is unique to this claim: a report that carries an
/// older claim's token (a worker that lost its lease and came back) is
/// refused even when the same worker holds the job again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub kind: JobKind,
    pub id: String,
    pub token: String,
    /// 1 for the first claim of the job.
    pub attempt: i64,
}

impl Store {
    /// How many jobs of each kind are in each status, over every team.
    pub async fn job_counts(&self) -> Result<Vec<(JobKind, String, i64)>> {
        let mut out = Vec::new();
        for kind in JobKind::ALL {
            let sql = format!(
                "SELECT status, COUNT(*) AS n FROM {} GROUP BY status",
                kind.table()
            );
            for row in sqlx::query(AssertSqlSafe(sql))
                .fetch_all(&self.pool)
                .await?
            {
                out.push((kind, row.try_get("status")?, row.try_get("n")?));
            }
        }
        Ok(out)
    }

    /// Claims the oldest queued job of `kind` that `worker` can run (its
    /// `requires` empty or among the worker's capabilities), holding it for
    /// `lease_ms`. `reset` are extra `column = value` assignments of the
    /// kind (progress that a new attempt starts from); `columns` are read
    /// back from the claimed row.
    pub(super) async fn claim(
        &self,
        kind: JobKind,
        worker: Claimant<'_>,
        lease_ms: i64,
        reset: &str,
        columns: &str,
    ) -> Result<Option<(AnyRow, Lease)>> {
        let lock = match self.dialect {
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let table = kind.table();
        let token = format!(
            "{}#{}",
            worker.id,
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let now = now_ms();
        let can: Vec<String> = (0..worker.capabilities.len())
            .map(|i| format!(", ${}", i + 4))
            .collect();
        let team = match worker.team {
            Some(_) => format!("AND team_id = ${} ", worker.capabilities.len() + 4),
            None => String::new(),
        };
        let sql = format!(
            "UPDATE {table} SET status = 'running', worker = $1, lease_expires_at = $2, \
                 started_at = $3, attempts = attempts + 1{reset} \
             WHERE id = (SELECT id FROM {table} WHERE status = 'queued' \
                 AND requires IN (''{can}) {team}ORDER BY created_at, id LIMIT 1 {lock}) \
               AND status = 'queued' \
             RETURNING {columns}, attempts",
            can = can.concat()
        );
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(&token)
            .bind(now + lease_ms)
            .bind(now);
        for c in worker.capabilities {
            query = query.bind(c);
        }
        if let Some(team) = worker.team {
            query = query.bind(team);
        }
        let Some(row) = query.fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let lease = Lease {
            kind,
            id: row.try_get("id")?,
            token,
            attempt: row.try_get("attempts")?,
        };
        Ok(Some((row, lease)))
    }

    /// The lease `token` of job `id`, if it is the job's current one.
    pub async fn lease_of(&self, kind: JobKind, id: &str, token: &str) -> Result<Option<Lease>> {
        let sql = format!(
            "SELECT attempts FROM {} WHERE id = $1 AND worker = $2 AND status = 'running'",
            kind.table()
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .bind(token)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(Lease {
                kind,
                id: id.to_string(),
                token: token.to_string(),
                attempt: r.try_get("attempts")?,
            }),
            None => None,
        })
    }

    /// Extends the lease. `None` if it is no longer held, else whether a
    /// cancel was requested.
    pub async fn heartbeat(&self, lease: &Lease, lease_ms: i64) -> Result<Option<bool>> {
        let sql = format!(
            "UPDATE {} SET lease_expires_at = $1 WHERE id = $2 AND worker = $3 AND status = 'running' \
             RETURNING cancel_requested",
            lease.kind.table()
        );
        let row = sqlx::query(AssertSqlSafe(sql))
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

    /// Ends a held job and commits `tx`, the transaction that wrote the
    /// job's results beside it; rolls it back instead if the lease was lost.
    /// Returns whether the job was ended.
    pub(super) async fn end(
        mut tx: sqlx::Transaction<'_, sqlx::Any>,
        lease: &Lease,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE {} SET status = $1, error = $2, finished_at = $3, worker = NULL, lease_expires_at = NULL \
             WHERE id = $4 AND worker = $5 AND status = 'running'",
            lease.kind.table()
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(status.as_str())
            .bind(error)
            .bind(now_ms())
            .bind(&lease.id)
            .bind(&lease.token)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if done {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(done)
    }

    /// Hands a held job back to the queue (its worker is stopping), or fails
    /// it if it has been tried too often.
    pub async fn release(&self, lease: &Lease, why: &str) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET \
                 status = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'queued' END, \
                 error = CASE WHEN attempts >= $1 THEN $2 ELSE NULL END, \
                 finished_at = CASE WHEN attempts >= $1 THEN $3 ELSE NULL END, \
                 worker = NULL, lease_expires_at = NULL \
             WHERE id = $4 AND worker = $5 AND status = 'running'",
            lease.kind.table()
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(MAX_ATTEMPTS)
            .bind(format!("{why}; gave up after {MAX_ATTEMPTS} attempts"))
            .bind(now_ms())
            .bind(&lease.id)
            .bind(&lease.token)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Cancels a queued job at once; asks the holder of a running one to stop.
    pub(super) async fn cancel(&self, kind: JobKind, id: &str) -> Result<()> {
        let table = kind.table();
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "UPDATE {table} SET status = 'cancelled', finished_at = $1 WHERE id = $2 AND status = 'queued'"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let sql =
            format!("UPDATE {table} SET cancel_requested = 1 WHERE id = $1 AND status = 'running'");
        sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Jobs whose worker vanished (lease expired, or held by a server's
    /// in-process worker when `local_too`, at the start of a server that is
    /// its database's only server) go back to the queue, are cancelled if
    /// that was asked, or fail after too many attempts. Remote workers keep
    /// their leases across a server restart. Returns how many were touched.
    pub async fn recover_orphans(&self, local_too: bool) -> Result<u64> {
        let local = if local_too {
            format!(" OR worker LIKE '{LOCAL_PREFIX}%'")
        } else {
            String::new()
        };
        let mut touched = 0;
        for kind in JobKind::ALL {
            let sql = format!(
                "UPDATE {} SET \
                     status = CASE WHEN cancel_requested <> 0 THEN 'cancelled' \
                                   WHEN attempts >= $1 THEN 'failed' ELSE 'queued' END, \
                     error = CASE WHEN cancel_requested = 0 AND attempts >= $1 THEN $2 ELSE NULL END, \
                     finished_at = CASE WHEN cancel_requested <> 0 OR attempts >= $1 THEN $3 ELSE NULL END, \
                     worker = NULL, lease_expires_at = NULL \
                 WHERE status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < $4{local})",
                kind.table()
            );
            let done = sqlx::query(AssertSqlSafe(sql))
                .bind(MAX_ATTEMPTS)
                .bind(format!(
                    "its worker stopped while it was running, {MAX_ATTEMPTS} times"
                ))
                .bind(now_ms())
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
            touched += done.rows_affected();
        }
        Ok(touched)
    }
}
