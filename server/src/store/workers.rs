//! Workers as the server knows them (registered remote ones and its own
//! in-process ones), and the log lines a run's worker sends.

use sqlx::Row;
use sqlx::any::AnyRow;
use sslab_shared::worker::{HeldJob, LogLine, Registration, RunLogLine, WorkerInfo};

use super::{Lease, Result, Store, StoreError, now_ms};

const COLUMNS: &str = "id, team_id, host, device, slots, version, capabilities, kind, \
    registered_at, last_seen, draining";

fn worker_from_row(r: &AnyRow) -> Result<WorkerInfo> {
    let capabilities: String = r.try_get("capabilities")?;
    Ok(WorkerInfo {
        id: r.try_get("id")?,
        team: r.try_get("team_id")?,
        host: r.try_get("host")?,
        device: r.try_get("device")?,
        slots: r.try_get::<i64, _>("slots")? as u32,
        version: r.try_get("version")?,
        capabilities: serde_json::from_str(&capabilities)
            .map_err(|e| StoreError::Corrupt(format!("a worker's capabilities: {e}")))?,
        kind: r.try_get("kind")?,
        registered_at: r.try_get("registered_at")?,
        last_seen: r.try_get("last_seen")?,
        draining: r.try_get::<i64, _>("draining")? != 0,
        current: Vec::new(),
        jobs: Vec::new(),
    })
}

impl Store {
    /// Records a worker under `id`; `team` none for a site-wide one.
    pub async fn register_worker(
        &self,
        id: &str,
        team: Option<&str>,
        reg: &Registration,
        kind: &str,
    ) -> Result<WorkerInfo> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO workers (id, team_id, host, device, slots, version, capabilities, kind, \
             registered_at, last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(id)
        .bind(team)
        .bind(&reg.host)
        .bind(&reg.device)
        .bind(reg.slots as i64)
        .bind(&reg.version)
        .bind(serde_json::to_string(&reg.capabilities).unwrap_or_else(|_| "[]".into()))
        .bind(kind)
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.worker(id, team)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("worker {id} vanished")))
    }

    /// A worker, with the runs it holds of `team` (of every team: none).
    pub async fn worker(&self, id: &str, team: Option<&str>) -> Result<Option<WorkerInfo>> {
        let sql = format!("SELECT {COLUMNS} FROM workers WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => {
                let mut w = worker_from_row(&r)?;
                w.current = self.held_by(&w.id, team).await?;
                w.jobs = self.jobs_held_by(&w.id, team).await?;
                Ok(Some(w))
            }
            None => Ok(None),
        }
    }

    /// The workers that serve `team` (its own and the site-wide ones), most
    /// recently seen first.
    pub async fn list_workers(&self, team: &str) -> Result<Vec<WorkerInfo>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM workers WHERE team_id = $1 OR team_id IS NULL \
             ORDER BY last_seen DESC, id LIMIT 500"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(team)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut w = worker_from_row(r)?;
            w.current = self.held_by(&w.id, Some(team)).await?;
            w.jobs = self.jobs_held_by(&w.id, Some(team)).await?;
            out.push(w);
        }
        Ok(out)
    }

    /// The runs of `team` (any: none) a worker holds now: its leases start
    /// with its id and `#`.
    async fn held_by(&self, worker: &str, team: Option<&str>) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT id FROM runs WHERE status = 'running' AND worker LIKE $1 \
             AND ($2 IS NULL OR team_id = $2) ORDER BY started_at",
        )
        .bind(format!("{}#%", worker.replace(['%', '_'], "")))
        .bind(team)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("id")?))
            .collect()
    }

    /// The re-evaluations, audits and CKA jobs of `team` (any: none) a
    /// worker holds now.
    async fn jobs_held_by(&self, worker: &str, team: Option<&str>) -> Result<Vec<HeldJob>> {
        let mut out = Vec::new();
        for (kind, table, run) in [
            ("evaluation", "evaluation_jobs", "run_id"),
            ("audit", "audits", "NULL"),
            ("cka", "cka_jobs", "NULL"),
            ("decoder", "decoders", "run_id"),
        ] {
            let sql = format!(
                "SELECT id, {run} AS run FROM {table} WHERE status = 'running' AND worker LIKE $1 \
                 AND ($2 IS NULL OR team_id = $2) ORDER BY started_at"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(format!("{}#%", worker.replace(['%', '_'], "")))
                .bind(team)
                .fetch_all(&self.pool)
                .await?;
            for r in rows {
                out.push(HeldJob {
                    kind: kind.to_string(),
                    id: r.try_get("id")?,
                    run: r.try_get("run")?,
                });
            }
        }
        Ok(out)
    }

    /// Notes that the worker was heard from; returns whether it is draining
    /// (`None`: no such worker).
    pub async fn worker_seen(&self, id: &str) -> Result<Option<bool>> {
        let row = sqlx::query("UPDATE workers SET last_seen = $1 WHERE id = $2 RETURNING draining")
            .bind(now_ms())
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<i64, _>("draining")? != 0),
            None => None,
        })
    }

    /// Forgets workers of `kind` not heard from since `before` (ms).
    pub async fn forget_workers(&self, kind: &str, before: i64) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM workers WHERE kind = $1 AND last_seen < $2")
                .bind(kind)
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// Tells a worker to take no new job.
    pub async fn drain_worker(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE workers SET draining = 1 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The lease `token` of run `id`, if it is the run's current one.
    pub async fn run_lease(&self, id: &str, token: &str) -> Result<Option<Lease>> {
        self.lease_of(super::JobKind::Run, id, token).await
    }

    /// Appends log lines of the attempt `lease` stands for; a line sent
    /// twice is kept once. `false` when the lease is no longer held.
    pub async fn add_run_logs(&self, lease: &Lease, lines: &[LogLine]) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // A write first: SQLite cannot turn a read transaction into a
        // writing one while another writer waits.
        let held = sqlx::query(
            "UPDATE runs SET lease_expires_at = lease_expires_at \
             WHERE id = $1 AND worker = $2 AND status = 'running'",
        )
        .bind(&lease.id)
        .bind(&lease.token)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !held {
            tx.rollback().await?;
            return Ok(false);
        }
        for l in lines {
            sqlx::query(
                "INSERT INTO run_logs (run_id, attempt, seq, at, line) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (run_id, attempt, seq) DO NOTHING",
            )
            .bind(&lease.id)
            .bind(lease.attempt)
            .bind(l.seq)
            .bind(l.at)
            .bind(&l.text)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// A run's log, oldest first, at most `limit` lines.
    pub async fn run_logs(&self, id: &str, limit: i64) -> Result<Vec<RunLogLine>> {
        let rows = sqlx::query(
            "SELECT attempt, seq, at, line FROM run_logs WHERE run_id = $1 \
             ORDER BY attempt, seq LIMIT $2",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RunLogLine {
                    attempt: r.try_get("attempt")?,
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    text: r.try_get("line")?,
                })
            })
            .collect()
    }
}
