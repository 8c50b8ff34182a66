//! The database: runs, metrics, evaluations, sweeps and data sets, on SQLite (embedded default)
//! or PostgreSQL (teams), through sqlx's `Any` driver. Ids and times are
//! TEXT and INTEGER (milliseconds) so both dialects map them the same way.

mod audits;
mod datasets;
mod memorization;

use std::collections::HashMap;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};
use sslab_shared::RunSpec;
use sslab_shared::api::{
    Evaluation, EvaluationJob, EvaluationRequest, MetricPoint, Page, Run, RunStatus, StatusCounts,
    Sweep, SweepRun,
};
use sslab_shared::sweep::{SweepPoint, SweepSpec};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database URL `{0}`: use sqlite://… or postgres://…")]
    Url(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
}

/// A claimed run, and which attempt at it this is (1 = the first).
pub struct Claim {
    pub run: Run,
    pub attempt: i64,
}

/// How many times a run may be claimed before an interruption counts as a failure.
pub const MAX_ATTEMPTS: i64 = 3;

const RUN_COLUMNS: &str = "id, name, status, method, backbone, spec, created_at, started_at, \
    finished_at, error, step, total_steps, epoch, last_loss, knn_backbone, cancel_requested, sweep_id";

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn run_from_row(row: &AnyRow) -> Result<Run> {
    let status: String = row.try_get("status")?;
    let spec: String = row.try_get("spec")?;
    Ok(Run {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        status: RunStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown run status `{status}`")))?,
        method: row.try_get("method")?,
        backbone: row.try_get("backbone")?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| StoreError::Corrupt(format!("stored spec does not parse: {e}")))?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        error: row.try_get("error")?,
        step: row.try_get("step")?,
        total_steps: row.try_get("total_steps")?,
        epoch: row.try_get("epoch")?,
        last_loss: row.try_get("last_loss")?,
        knn_backbone: row.try_get("knn_backbone")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        sweep_id: row.try_get("sweep_id")?,
    })
}

/// Which runs a list shows; every field narrows it.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub sweep_id: Option<String>,
    pub method: Option<String>,
    /// Part of the name, any case.
    pub name_contains: Option<String>,
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

fn default_run_name(spec: &RunSpec, id: &str) -> String {
    if spec.name.trim().is_empty() {
        format!(
            "{}-{}-{}",
            spec.method.name(),
            spec.backbone.kind.name(),
            &id[..6]
        )
    } else {
        spec.name.trim().to_string()
    }
}

/// Where a list page starts: after (created_at, id).
fn parse_page_token(token: &str) -> Option<(i64, String)> {
    let (t, id) = token.split_once('.')?;
    Some((t.parse().ok()?, id.to_string()))
}

pub fn is_page_token(token: &str) -> bool {
    parse_page_token(token).is_some()
}

impl Store {
    /// Connects and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(StoreError::Url(url.to_string()));
        };
        let mut options = AnyPoolOptions::new().max_connections(8);
        if dialect == Dialect::Sqlite {
            // One writer at a time; WAL and a busy timeout keep readers going.
            options = options.max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 5000")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        // sqlx's Any driver declares a missing f64 as a float4 parameter, and
        // a statement PostgreSQL prepared with one then refuses the next
        // present value ("incorrect binary data format"); statements are
        // prepared afresh each time instead of cached.
        let url = if dialect == Dialect::Postgres && !url.contains("statement-cache-capacity") {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}statement-cache-capacity=0")
        } else {
            url.to_string()
        };
        let pool = options.connect(&url).await?;
        match dialect {
            Dialect::Sqlite => sqlx::migrate!("../migrations/sqlite").run(&pool).await?,
            Dialect::Postgres => sqlx::migrate!("../migrations/postgres").run(&pool).await?,
        }
        Ok(Store { pool, dialect })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Stores a new queued run. With an idempotency key already used, returns
    /// the run created then (and `false`).
    pub async fn create_run(
        &self,
        spec: &RunSpec,
        idempotency_key: Option<&str>,
    ) -> Result<(Run, bool)> {
        if let Some(key) = idempotency_key
            && let Some(run) = self.run_by_idempotency_key(key).await?
        {
            return Ok((run, false));
        }
        let id = new_id();
        let name = default_run_name(spec, &id);
        let spec_json =
            serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // Read back in the same transaction: no worker can claim the run
        // before its creator has seen it queued.
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO runs (id, name, status, method, backbone, spec, created_at, total_steps, idempotency_key) \
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(&name)
        .bind(spec.method.name())
        .bind(spec.backbone.kind.name())
        .bind(&spec_json)
        .bind(now_ms())
        .bind(spec.total_steps() as i64)
        .bind(idempotency_key)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            // Two requests with one key raced; the other one won.
            Err(sqlx::Error::Database(e))
                if e.is_unique_violation() && idempotency_key.is_some() =>
            {
                tx.rollback().await?;
                if let Some(run) = self
                    .run_by_idempotency_key(idempotency_key.unwrap_or_default())
                    .await?
                {
                    return Ok((run, false));
                }
                return Err(sqlx::Error::Database(e).into());
            }
            Err(e) => return Err(e.into()),
        }
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((run_from_row(&row)?, true))
    }

    async fn run_by_idempotency_key(&self, key: &str) -> Result<Option<Run>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE idempotency_key = $1");
        sqlx::query(AssertSqlSafe(sql))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| run_from_row(&r))
            .transpose()
    }

    pub async fn run(&self, id: &str) -> Result<Option<Run>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| run_from_row(&r))
            .transpose()
    }

    /// Newest first. `page_token` is the previous page's `next_page_token`.
    pub async fn list_runs(
        &self,
        page_size: usize,
        page_token: Option<&str>,
        filter: &RunFilter,
    ) -> Result<Page<Run>> {
        // Without a token, start above every stored (created_at, id).
        let (t, id) = page_token
            .and_then(parse_page_token)
            .unwrap_or((i64::MAX, String::new()));
        let mut clauses = String::new();
        let mut binds: Vec<String> = Vec::new();
        let mut add = |clause: &str, value: String| {
            binds.push(value);
            clauses.push_str(&format!(" AND {clause} ${}", binds.len() + 3));
        };
        if let Some(s) = filter.status {
            add("status =", s.as_str().to_string());
        }
        if let Some(s) = &filter.sweep_id {
            add("sweep_id =", s.clone());
        }
        if let Some(m) = &filter.method {
            add("method =", m.clone());
        }
        if let Some(text) = filter.name_contains.as_deref().filter(|t| !t.is_empty()) {
            let escaped = text
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            add("LOWER(name) LIKE", format!("%{escaped}%"));
            clauses.push_str(" ESCAPE '\\'");
        }
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs \
             WHERE (created_at < $1 OR (created_at = $1 AND id < $2)){clauses} \
             ORDER BY created_at DESC, id DESC LIMIT $3"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .bind(t)
            .bind(if page_token.is_some() {
                id
            } else {
                "\u{10FFFF}".to_string()
            })
            .bind(page_size as i64 + 1);
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut items = rows.iter().map(run_from_row).collect::<Result<Vec<_>>>()?;
        let next_page_token = if items.len() > page_size {
            items.truncate(page_size);
            items.last().map(|r| format!("{}.{}", r.created_at, r.id))
        } else {
            None
        };
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Takes the oldest queued run for `worker`, holding it for `lease_ms`.
    /// Claims the oldest queued run. A first attempt starts clean (no
    /// metrics or evaluations of an earlier life of the run); a later one
    /// (its worker died) keeps its metrics, for the worker to resume from
    /// the last checkpoint and drop only what comes after it.
    pub async fn claim_next(&self, worker: &str, lease_ms: i64) -> Result<Option<Claim>> {
        let lock = match self.dialect {
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let now = now_ms();
        let sql = format!(
            "UPDATE runs SET status = 'running', worker = $1, lease_expires_at = $2, \
                 started_at = $3, attempts = attempts + 1, step = 0, epoch = 0, last_loss = NULL \
             WHERE id = (SELECT id FROM runs WHERE status = 'queued' ORDER BY created_at, id LIMIT 1 {lock}) \
               AND status = 'queued' \
             RETURNING {RUN_COLUMNS}, attempts"
        );
        let Some(row) = sqlx::query(AssertSqlSafe(sql))
            .bind(worker)
            .bind(now + lease_ms)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let run = run_from_row(&row)?;
        let attempt: i64 = row.try_get("attempts")?;
        if attempt <= 1 {
            self.drop_metrics_from(&run.id, 0).await?;
        }
        sqlx::query("DELETE FROM evaluations WHERE run_id = $1")
            .bind(&run.id)
            .execute(&self.pool)
            .await?;
        Ok(Some(Claim { run, attempt }))
    }

    /// Drops a run's metrics of epoch `epoch` (0-based) and later, and the
    /// memorization readings taken after them: what a resumed run trains again.
    pub async fn drop_metrics_from(&self, id: &str, epoch: i64) -> Result<()> {
        sqlx::query("DELETE FROM metrics WHERE run_id = $1 AND epoch >= $2")
            .bind(id)
            .bind(epoch)
            .execute(&self.pool)
            .await?;
        // A reading's epoch counts the epochs done.
        sqlx::query("DELETE FROM memorization WHERE run_id = $1 AND epoch > $2")
            .bind(id)
            .bind(epoch)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Extends the lease. Returns `None` if `worker` no longer holds the run,
    /// else whether a cancel was requested.
    pub async fn heartbeat(&self, id: &str, worker: &str, lease_ms: i64) -> Result<Option<bool>> {
        let row = sqlx::query(
            "UPDATE runs SET lease_expires_at = $1 WHERE id = $2 AND worker = $3 AND status = 'running' \
             RETURNING cancel_requested",
        )
        .bind(now_ms() + lease_ms)
        .bind(id)
        .bind(worker)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<i64, _>("cancel_requested")? != 0),
            None => None,
        })
    }

    /// Appends metrics and moves the run's progress to the last of them, in
    /// one transaction. `total_steps`, when given, corrects the run's length
    /// (file-based data sets are counted only once they are read).
    pub async fn add_metrics(
        &self,
        id: &str,
        points: &[MetricPoint],
        total_steps: Option<i64>,
    ) -> Result<()> {
        let Some(last) = points.last() else {
            return Ok(());
        };
        let mut tx = self.pool.begin().await?;
        for p in points {
            sqlx::query(
                "INSERT INTO metrics (run_id, step, epoch, loss, lr, images_per_sec, data_wait, online_probe_acc) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(id)
            .bind(p.step)
            .bind(p.epoch)
            .bind(p.loss)
            .bind(p.lr)
            .bind(p.images_per_sec)
            .bind(p.data_wait)
            .bind(p.online_probe_acc)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE runs SET step = $1, epoch = $2, last_loss = $3, total_steps = COALESCE($4, total_steps) \
             WHERE id = $5",
        )
        .bind(last.step)
        .bind(last.epoch)
        .bind(last.loss)
        .bind(total_steps)
        .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Metrics with `step > after_step`, oldest first.
    pub async fn metrics(
        &self,
        id: &str,
        after_step: i64,
        limit: usize,
    ) -> Result<Vec<MetricPoint>> {
        let rows = sqlx::query(
            "SELECT step, epoch, loss, lr, images_per_sec, data_wait, online_probe_acc FROM metrics \
             WHERE run_id = $1 AND step > $2 ORDER BY step LIMIT $3",
        )
        .bind(id)
        .bind(after_step)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MetricPoint {
                    step: r.try_get("step")?,
                    epoch: r.try_get("epoch")?,
                    loss: r.try_get("loss")?,
                    lr: r.try_get("lr")?,
                    images_per_sec: r.try_get("images_per_sec")?,
                    data_wait: r.try_get("data_wait")?,
                    online_probe_acc: r.try_get("online_probe_acc")?,
                })
            })
            .collect()
    }

    /// Evaluation rows of a run: those of the end of training first, then
    /// those of each re-evaluation job; `job` narrows to one ('' = training's).
    pub async fn evaluations(&self, id: &str, job: Option<&str>) -> Result<Vec<Evaluation>> {
        let rows = sqlx::query(
            "SELECT job_id, layer, probe, metric, value, settings FROM evaluations \
             WHERE run_id = $1 AND ($2 = '*' OR job_id = $2) \
             ORDER BY job_id, CASE WHEN layer = 'backbone' THEN '' ELSE layer END, probe, metric",
        )
        .bind(id)
        .bind(job.unwrap_or("*"))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let settings: String = r.try_get("settings")?;
                let job_id: String = r.try_get("job_id")?;
                Ok(Evaluation {
                    layer: r.try_get("layer")?,
                    probe: r.try_get("probe")?,
                    metric: r.try_get("metric")?,
                    value: r.try_get("value")?,
                    settings: serde_json::from_str(&settings).unwrap_or(serde_json::Value::Null),
                    job_id: (!job_id.is_empty()).then_some(job_id),
                })
            })
            .collect()
    }

    async fn insert_evaluations(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        run_id: &str,
        job_id: &str,
        rows: &[Evaluation],
    ) -> Result<()> {
        for e in rows {
            sqlx::query(
                "INSERT INTO evaluations (run_id, job_id, layer, probe, metric, value, settings) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(run_id)
            .bind(job_id)
            .bind(&e.layer)
            .bind(&e.probe)
            .bind(&e.metric)
            .bind(e.value)
            .bind(e.settings.to_string())
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Ends a run held by `worker`: its status, why (for failures), and its
    /// evaluations, all in one transaction. Returns false if the worker lost it.
    pub async fn finish_run(
        &self,
        id: &str,
        worker: &str,
        status: RunStatus,
        error: Option<&str>,
        evaluations: &[Evaluation],
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        Self::insert_evaluations(&mut tx, id, "", evaluations).await?;
        let knn = evaluations
            .iter()
            .find(|e| e.layer == "backbone" && e.probe == "knn" && e.metric == "top1")
            .map(|e| e.value);
        let done = sqlx::query(
            "UPDATE runs SET status = $1, error = $2, finished_at = $3, knn_backbone = $4, \
                 worker = NULL, lease_expires_at = NULL \
             WHERE id = $5 AND worker = $6 AND status = 'running'",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(now_ms())
        .bind(knn)
        .bind(id)
        .bind(worker)
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

    /// Hands a run back to the queue (the worker is shutting down), or fails
    /// it if it has been tried too often.
    pub async fn release_run(&self, id: &str, worker: &str, why: &str) -> Result<()> {
        sqlx::query(
            "UPDATE runs SET \
                 status = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'queued' END, \
                 error = CASE WHEN attempts >= $1 THEN $2 ELSE NULL END, \
                 finished_at = CASE WHEN attempts >= $1 THEN $3 ELSE NULL END, \
                 worker = NULL, lease_expires_at = NULL \
             WHERE id = $4 AND worker = $5 AND status = 'running'",
        )
        .bind(MAX_ATTEMPTS)
        .bind(format!("{why}; gave up after {MAX_ATTEMPTS} attempts"))
        .bind(now_ms())
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Runs whose worker vanished (lease expired, or `all_running` at the
    /// start of an embedded server that is the only worker) go back to the
    /// queue, or fail after too many attempts. Returns how many were touched.
    pub async fn recover_orphans(&self, all_running: bool) -> Result<u64> {
        let cutoff = if all_running { i64::MAX } else { now_ms() };
        let mut touched = 0;
        for (table, cancellable) in [("runs", true), ("evaluation_jobs", false), ("audits", true)] {
            touched += self.requeue_expired(table, cancellable, cutoff).await?;
        }
        Ok(touched)
    }

    /// Running jobs of `table` whose lease ended before `cutoff`: cancelled
    /// if asked (tables with `cancel_requested`), failed after too many
    /// attempts, else queued.
    async fn requeue_expired(
        &self,
        table: &'static str,
        cancellable: bool,
        cutoff: i64,
    ) -> Result<u64> {
        let cancel = if cancellable { "cancel_requested" } else { "0" };
        let sql = format!(
            "UPDATE {table} SET \
                 status = CASE WHEN {cancel} <> 0 THEN 'cancelled' \
                               WHEN attempts >= $1 THEN 'failed' ELSE 'queued' END, \
                 error = CASE WHEN {cancel} = 0 AND attempts >= $1 THEN $2 ELSE NULL END, \
                 finished_at = CASE WHEN {cancel} <> 0 OR attempts >= $1 THEN $3 ELSE NULL END, \
                 worker = NULL, lease_expires_at = NULL \
             WHERE status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < $4)"
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(MAX_ATTEMPTS)
            .bind(format!(
                "its worker stopped while it was running, {MAX_ATTEMPTS} times"
            ))
            .bind(now_ms())
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Cancels a queued run at once; asks the worker of a running one to stop.
    /// Returns the run as it is afterwards, `None` if there is no such run.
    pub async fn request_cancel(&self, id: &str) -> Result<Option<Run>> {
        sqlx::query(
            "UPDATE runs SET status = 'cancelled', finished_at = $1 WHERE id = $2 AND status = 'queued'",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        sqlx::query("UPDATE runs SET cancel_requested = 1 WHERE id = $1 AND status = 'running'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.run(id).await
    }
}

const JOB_COLUMNS: &str = "id, run_id, status, request, created_at, finished_at, error";

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
    })
}

/// Re-evaluation jobs: the same queue discipline as runs (claim with a
/// lease, hand back or fail when the worker vanishes).
impl Store {
    pub async fn create_evaluation_job(
        &self,
        run_id: &str,
        request: &EvaluationRequest,
    ) -> Result<EvaluationJob> {
        let id = format!("ev{}", &uuid::Uuid::new_v4().simple().to_string()[..14]);
        let body =
            serde_json::to_string(request).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO evaluation_jobs (id, run_id, status, request, created_at) VALUES ($1, $2, 'queued', $3, $4)",
        )
        .bind(&id)
        .bind(run_id)
        .bind(body)
        .bind(now_ms())
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

    pub async fn claim_next_evaluation(
        &self,
        worker: &str,
        lease_ms: i64,
    ) -> Result<Option<EvaluationJob>> {
        let lock = match self.dialect {
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let now = now_ms();
        let sql = format!(
            "UPDATE evaluation_jobs SET status = 'running', worker = $1, lease_expires_at = $2, \
                 started_at = $3, attempts = attempts + 1 \
             WHERE id = (SELECT id FROM evaluation_jobs WHERE status = 'queued' ORDER BY created_at, id LIMIT 1 {lock}) \
               AND status = 'queued' \
             RETURNING {JOB_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(worker)
            .bind(now + lease_ms)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        // Rows are written only with the job's end, in one transaction, so an
        // interrupted attempt leaves nothing to clean up.
        row.map(|r| job_from_row(&r)).transpose()
    }

    /// Ends a job held by `worker`, with its rows, in one transaction.
    pub async fn finish_evaluation(
        &self,
        job: &EvaluationJob,
        worker: &str,
        status: RunStatus,
        error: Option<&str>,
        rows: &[Evaluation],
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        Self::insert_evaluations(&mut tx, &job.run_id, &job.id, rows).await?;
        let done = sqlx::query(
            "UPDATE evaluation_jobs SET status = $1, error = $2, finished_at = $3, worker = NULL, lease_expires_at = NULL \
             WHERE id = $4 AND worker = $5 AND status = 'running'",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(now_ms())
        .bind(&job.id)
        .bind(worker)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if done {
            tx.commit().await?
        } else {
            tx.rollback().await?
        }
        Ok(done)
    }
}

/// Sweeps: a spec expanded into runs created together, sharing its id.
impl Store {
    /// Stores the sweep and all its runs in one transaction; with an
    /// idempotency key already used, returns the sweep created then.
    pub async fn create_sweep(
        &self,
        spec: &SweepSpec,
        points: &[SweepPoint],
        idempotency_key: Option<&str>,
    ) -> Result<(Sweep, bool)> {
        if let Some(key) = idempotency_key
            && let Some(id) = self.sweep_id_by_key(key).await?
            && let Some(sweep) = self.sweep(&id).await?
        {
            return Ok((sweep, false));
        }
        let id = format!("sw{}", &new_id()[..14]);
        let name = if spec.name.trim().is_empty() {
            format!("sweep-{}", &id[2..8])
        } else {
            spec.name.trim().to_string()
        };
        let spec_json =
            serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO sweeps (id, name, spec, created_at, run_count, idempotency_key) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(&name)
        .bind(&spec_json)
        .bind(now)
        .bind(points.len() as i64)
        .bind(idempotency_key)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            tx.rollback().await?;
            if let sqlx::Error::Database(d) = &e
                && d.is_unique_violation()
                && let Some(key) = idempotency_key
                && let Some(id) = self.sweep_id_by_key(key).await?
                && let Some(sweep) = self.sweep(&id).await?
            {
                return Ok((sweep, false));
            }
            return Err(e.into());
        }
        for (i, point) in points.iter().enumerate() {
            let run_id = new_id();
            let spec_json = serde_json::to_string(&point.spec)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let values = serde_json::to_string(&point.values)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            // One millisecond apart, so that the queue and the list keep the
            // expansion order.
            sqlx::query(
                "INSERT INTO runs (id, name, status, method, backbone, spec, created_at, total_steps, sweep_id, sweep_point) \
                 VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&run_id)
            .bind(default_run_name(&point.spec, &run_id))
            .bind(point.spec.method.name())
            .bind(point.spec.backbone.kind.name())
            .bind(spec_json)
            .bind(now + i as i64)
            .bind(point.spec.total_steps() as i64)
            .bind(&id)
            .bind(values)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let sweep = self
            .sweep(&id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("inserted sweep vanished".into()))?;
        Ok((sweep, true))
    }

    async fn sweep_id_by_key(&self, key: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query("SELECT id FROM sweeps WHERE idempotency_key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get::<String, _>("id"))
                .transpose()?,
        )
    }

    fn sweep_from_row(row: &AnyRow, counts: StatusCounts) -> Result<Sweep> {
        let spec: String = row.try_get("spec")?;
        Ok(Sweep {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            spec: serde_json::from_str(&spec).map_err(|e| {
                StoreError::Corrupt(format!("stored sweep spec does not parse: {e}"))
            })?,
            created_at: row.try_get("created_at")?,
            run_count: row.try_get("run_count")?,
            counts,
        })
    }

    /// Run counts by status for each of `ids`.
    async fn sweep_counts(&self, ids: &[String]) -> Result<HashMap<String, StatusCounts>> {
        let mut out: HashMap<String, StatusCounts> = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT sweep_id, status, COUNT(*) AS n FROM runs WHERE sweep_id IN ({}) GROUP BY sweep_id, status",
            marks.join(", ")
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in ids {
            q = q.bind(id);
        }
        for row in q.fetch_all(&self.pool).await? {
            let status: String = row.try_get("status")?;
            let status = RunStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown run status `{status}`")))?;
            out.entry(row.try_get("sweep_id")?)
                .or_default()
                .add(status, row.try_get("n")?);
        }
        Ok(out)
    }

    pub async fn sweep(&self, id: &str) -> Result<Option<Sweep>> {
        let Some(row) =
            sqlx::query("SELECT id, name, spec, created_at, run_count FROM sweeps WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        let mut counts = self.sweep_counts(&[id.to_string()]).await?;
        Ok(Some(Self::sweep_from_row(
            &row,
            counts.remove(id).unwrap_or_default(),
        )?))
    }

    /// Newest first, with their run counts.
    pub async fn list_sweeps(
        &self,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<Page<Sweep>> {
        let (t, id) = page_token
            .and_then(parse_page_token)
            .unwrap_or((i64::MAX, "\u{10FFFF}".to_string()));
        let rows = sqlx::query(
            "SELECT id, name, spec, created_at, run_count FROM sweeps \
             WHERE created_at < $1 OR (created_at = $1 AND id < $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3",
        )
        .bind(t)
        .bind(id)
        .bind(page_size as i64 + 1)
        .fetch_all(&self.pool)
        .await?;
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<std::result::Result<_, _>>()?;
        let mut counts = self.sweep_counts(&ids).await?;
        let mut items = rows
            .iter()
            .zip(&ids)
            .map(|(r, id)| Self::sweep_from_row(r, counts.remove(id).unwrap_or_default()))
            .collect::<Result<Vec<_>>>()?;
        let next_page_token = if items.len() > page_size {
            items.truncate(page_size);
            items.last().map(|s| format!("{}.{}", s.created_at, s.id))
        } else {
            None
        };
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// The runs of a sweep in expansion order, each with its point and its
    /// end-of-training evaluations: two queries, however many runs.
    pub async fn sweep_runs(&self, sweep_id: &str) -> Result<Vec<SweepRun>> {
        let rows = sqlx::query(
            "SELECT id, name, status, spec, sweep_point, last_loss, error FROM runs \
             WHERE sweep_id = $1 ORDER BY created_at, id",
        )
        .bind(sweep_id)
        .fetch_all(&self.pool)
        .await?;
        let mut runs = Vec::with_capacity(rows.len());
        let mut index = HashMap::new();
        for row in &rows {
            let status: String = row.try_get("status")?;
            let spec: String = row.try_get("spec")?;
            let spec: RunSpec = serde_json::from_str(&spec)
                .map_err(|e| StoreError::Corrupt(format!("stored spec does not parse: {e}")))?;
            let point: Option<String> = row.try_get("sweep_point")?;
            let values = match point {
                Some(p) => serde_json::from_str(&p).map_err(|e| {
                    StoreError::Corrupt(format!("stored sweep point does not parse: {e}"))
                })?,
                None => Default::default(),
            };
            let id: String = row.try_get("id")?;
            index.insert(id.clone(), runs.len());
            runs.push(SweepRun {
                id,
                name: row.try_get("name")?,
                status: RunStatus::parse(&status)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown run status `{status}`")))?,
                seed: spec.seed,
                values,
                last_loss: row.try_get("last_loss")?,
                error: row.try_get("error")?,
                evaluations: Vec::new(),
            });
        }
        let evals = sqlx::query(
            "SELECT e.run_id, e.layer, e.probe, e.metric, e.value FROM evaluations e \
             JOIN runs r ON r.id = e.run_id \
             WHERE r.sweep_id = $1 AND e.job_id = '' \
             ORDER BY e.run_id, CASE WHEN e.layer = 'backbone' THEN '' ELSE e.layer END, e.probe, e.metric",
        )
        .bind(sweep_id)
        .fetch_all(&self.pool)
        .await?;
        for row in &evals {
            let run_id: String = row.try_get("run_id")?;
            if let Some(&i) = index.get(&run_id) {
                runs[i].evaluations.push(Evaluation {
                    layer: row.try_get("layer")?,
                    probe: row.try_get("probe")?,
                    metric: row.try_get("metric")?,
                    value: row.try_get("value")?,
                    settings: serde_json::Value::Null,
                    job_id: None,
                });
            }
        }
        Ok(runs)
    }

    /// Cancels the queued runs of a sweep at once and asks running ones to
    /// stop. Returns how many runs were touched.
    pub async fn cancel_sweep(&self, sweep_id: &str) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let queued = sqlx::query(
            "UPDATE runs SET status = 'cancelled', finished_at = $1 WHERE sweep_id = $2 AND status = 'queued'",
        )
        .bind(now_ms())
        .bind(sweep_id)
        .execute(&mut *tx)
        .await?;
        let running = sqlx::query(
            "UPDATE runs SET cancel_requested = 1 WHERE sweep_id = $1 AND status = 'running'",
        )
        .bind(sweep_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(queued.rows_affected() + running.rows_affected())
    }

    /// Puts the failed and cancelled runs of a sweep back in the queue, to
    /// start over. Returns how many.
    pub async fn requeue_sweep(&self, sweep_id: &str) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        // Rows of the failed attempt must not stand beside a queued status.
        sqlx::query(
            "DELETE FROM evaluations WHERE job_id = '' AND run_id IN \
             (SELECT id FROM runs WHERE sweep_id = $1 AND status IN ('failed', 'cancelled'))",
        )
        .bind(sweep_id)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query(
            "UPDATE runs SET status = 'queued', error = NULL, started_at = NULL, finished_at = NULL, \
                 attempts = 0, cancel_requested = 0, step = 0, epoch = 0, last_loss = NULL, knn_backbone = NULL \
             WHERE sweep_id = $1 AND status IN ('failed', 'cancelled')",
        )
        .bind(sweep_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        (Store::connect(&url).await.unwrap(), dir)
    }

    fn spec() -> RunSpec {
        let mut s = RunSpec::default();
        s.optimizer.batch_size = 100;
        s
    }

    /// A missing float and a present one bound to the same statements in
    /// turn, on PostgreSQL when `SSLAB_TEST_DATABASE_URL` names one.
    #[tokio::test]
    async fn missing_and_present_floats_alternate_on_postgres() {
        use sqlx::Connection;
        let Ok(admin) = std::env::var("SSLAB_TEST_DATABASE_URL") else {
            return;
        };
        let mut conn = sqlx::postgres::PgConnection::connect(&admin).await.unwrap();
        let name = format!("sslab_store_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        let store = Store::connect(&format!("{base}/{name}")).await.unwrap();
        for round in 0..4 {
            let present = round % 2 == 1;
            store.create_run(&spec(), None).await.unwrap();
            let run = store.claim_next("w", 10_000).await.unwrap().unwrap().run;
            let m = MetricPoint {
                step: 1,
                epoch: 0,
                loss: 1.0,
                lr: 0.1,
                images_per_sec: 10.0,
                data_wait: present.then_some(0.1),
                online_probe_acc: present.then_some(0.5),
            };
            store.add_metrics(&run.id, &[m], Some(8)).await.unwrap();
            let ev = Evaluation {
                layer: "backbone".into(),
                probe: "knn".into(),
                metric: "top1".into(),
                value: 0.75,
                settings: serde_json::json!({}),
                job_id: None,
            };
            let evs = if present { vec![ev] } else { vec![] };
            assert!(
                store
                    .finish_run(&run.id, "w", RunStatus::Succeeded, None, &evs)
                    .await
                    .unwrap()
            );
            let done = store.run(&run.id).await.unwrap().unwrap();
            assert_eq!(done.knn_backbone, present.then_some(0.75), "round {round}");
        }
    }

    #[tokio::test]
    async fn lifecycle_and_pagination() {
        let (store, _dir) = store().await;
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(store.create_run(&spec(), None).await.unwrap().0.id);
        }
        let p1 = store
            .list_runs(2, None, &RunFilter::default())
            .await
            .unwrap();
        assert_eq!(p1.items.len(), 2);
        let p2 = store
            .list_runs(2, p1.next_page_token.as_deref(), &RunFilter::default())
            .await
            .unwrap();
        let p3 = store
            .list_runs(2, p2.next_page_token.as_deref(), &RunFilter::default())
            .await
            .unwrap();
        assert_eq!(p3.items.len(), 1);
        assert!(p3.next_page_token.is_none());
        let mut seen: Vec<String> = [p1, p2, p3]
            .into_iter()
            .flat_map(|p| p.items)
            .map(|r| r.id)
            .collect();
        seen.sort();
        ids.sort();
        assert_eq!(seen, ids);

        let claimed = store.claim_next("w1", 10_000).await.unwrap().unwrap().run;
        assert_eq!(claimed.status, RunStatus::Running);
        assert_eq!(
            store.heartbeat(&claimed.id, "w1", 10_000).await.unwrap(),
            Some(false)
        );
        assert_eq!(
            store.heartbeat(&claimed.id, "w2", 10_000).await.unwrap(),
            None
        );
        let m = MetricPoint {
            step: 1,
            epoch: 0,
            loss: 3.0,
            lr: 0.1,
            images_per_sec: 10.0,
            data_wait: Some(0.02),
            online_probe_acc: Some(0.5),
        };
        store
            .add_metrics(&claimed.id, &[m.clone()], Some(8))
            .await
            .unwrap();
        assert_eq!(store.metrics(&claimed.id, 0, 10).await.unwrap(), vec![m]);
        assert!(store.metrics(&claimed.id, 1, 10).await.unwrap().is_empty());
        let ev = Evaluation {
            layer: "backbone".into(),
            probe: "knn".into(),
            metric: "top1".into(),
            value: 0.75,
            settings: serde_json::json!({"k": 20}),
            job_id: None,
        };
        assert!(
            !store
                .finish_run(&claimed.id, "w2", RunStatus::Succeeded, None, &[ev.clone()])
                .await
                .unwrap()
        );
        assert!(
            store
                .finish_run(&claimed.id, "w1", RunStatus::Succeeded, None, &[ev.clone()])
                .await
                .unwrap()
        );
        let done = store.run(&claimed.id).await.unwrap().unwrap();
        assert_eq!(done.status, RunStatus::Succeeded);
        assert_eq!(done.knn_backbone, Some(0.75));
        assert_eq!(done.last_loss, Some(3.0));
        assert_eq!(
            store.evaluations(&claimed.id, None).await.unwrap(),
            vec![ev.clone()]
        );

        // A re-evaluation job adds rows of its own beside training's.
        let req = EvaluationRequest {
            eval: Default::default(),
        };
        let job = store
            .create_evaluation_job(&claimed.id, &req)
            .await
            .unwrap();
        let got = store
            .claim_next_evaluation("w1", 10_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.id, job.id);
        assert!(
            store
                .finish_evaluation(&got, "w1", RunStatus::Succeeded, None, &[ev.clone()])
                .await
                .unwrap()
        );
        let all = store.evaluations(&claimed.id, None).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].job_id.as_deref(), Some(job.id.as_str()));
        assert_eq!(
            store.evaluations(&claimed.id, Some("")).await.unwrap(),
            vec![ev]
        );
        assert_eq!(
            store.evaluation_jobs(&claimed.id).await.unwrap()[0].status,
            RunStatus::Succeeded
        );
        let only_done = store
            .list_runs(
                10,
                None,
                &RunFilter {
                    status: Some(RunStatus::Succeeded),
                    ..RunFilter::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(only_done.items.len(), 1);
    }

    /// A failed run of a sweep keeps its rows but is counted, not averaged;
    /// re-queueing the sweep starts it over.
    #[tokio::test]
    async fn sweep_runs_failures_and_requeue() {
        let (store, _dir) = store().await;
        let mut sweep = SweepSpec {
            seeds: vec![0],
            axes: vec![sslab_shared::sweep::SweepAxis {
                path: "projector.dims".into(),
                values: vec![serde_json::json!("32-8"), serde_json::json!("32-16")],
                min: None,
                max: None,
                log: false,
                integer: false,
            }],
            ..SweepSpec::default()
        };
        sweep.base.optimizer.batch_size = 100;
        let points = sweep.expand(10).unwrap();
        let (created, fresh) = store.create_sweep(&sweep, &points, None).await.unwrap();
        assert!(fresh);
        assert_eq!(created.counts.queued, 2);
        let row = |v: f64| Evaluation {
            layer: "backbone".into(),
            probe: "knn".into(),
            metric: "top1".into(),
            value: v,
            settings: serde_json::Value::Null,
            job_id: None,
        };
        // Claimed in expansion order.
        let first = store.claim_next("w", 10_000).await.unwrap().unwrap().run;
        assert_eq!(first.spec.projector.dims, "32-8");
        assert_eq!(first.sweep_id.as_deref(), Some(created.id.as_str()));
        store
            .finish_run(&first.id, "w", RunStatus::Succeeded, None, &[row(0.8)])
            .await
            .unwrap();
        let second = store.claim_next("w", 10_000).await.unwrap().unwrap().run;
        store
            .finish_run(
                &second.id,
                "w",
                RunStatus::Failed,
                Some("boom"),
                &[row(0.1)],
            )
            .await
            .unwrap();
        let runs = store.sweep_runs(&created.id).await.unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].error.as_deref(), Some("boom"));
        let (agg, excluded) = crate::sweep::aggregate(&["projector.dims".to_string()], &runs);
        assert_eq!(excluded.failed, 1);
        assert_eq!(agg.len(), 1);
        assert_eq!(agg[0].mean, 0.8);
        assert_eq!(store.requeue_sweep(&created.id).await.unwrap(), 1);
        let after = store.sweep(&created.id).await.unwrap().unwrap();
        assert_eq!((after.counts.queued, after.counts.succeeded), (1, 1));
        let again = store.run(&second.id).await.unwrap().unwrap();
        assert_eq!((again.status, again.error), (RunStatus::Queued, None));
        assert_eq!(store.cancel_sweep(&created.id).await.unwrap(), 1);
        let page = store.list_sweeps(10, None).await.unwrap();
        assert_eq!(page.items[0].counts.cancelled, 1);
    }

    #[tokio::test]
    async fn idempotency_cancel_and_orphans() {
        let (store, _dir) = store().await;
        let (a, created) = store.create_run(&spec(), Some("k1")).await.unwrap();
        assert!(created);
        let (b, created) = store.create_run(&spec(), Some("k1")).await.unwrap();
        assert!(!created);
        assert_eq!(a.id, b.id);

        // A queued run is cancelled at once.
        let queued = store.create_run(&spec(), None).await.unwrap().0;
        let claimed = store.claim_next("w", 10_000).await.unwrap().unwrap().run;
        assert_eq!(claimed.id, a.id);
        let c = store.request_cancel(&queued.id).await.unwrap().unwrap();
        assert_eq!(c.status, RunStatus::Cancelled);
        // A running one is asked to stop.
        let r = store.request_cancel(&claimed.id).await.unwrap().unwrap();
        assert_eq!(r.status, RunStatus::Running);
        assert!(r.cancel_requested);
        assert_eq!(
            store.heartbeat(&claimed.id, "w", 10_000).await.unwrap(),
            Some(true)
        );

        // A worker that died: its run is re-queued, then failed after MAX_ATTEMPTS.
        let run = store.create_run(&spec(), None).await.unwrap().0;
        for attempt in 1..=MAX_ATTEMPTS {
            let got = store.claim_next("dead", -1).await.unwrap().unwrap().run;
            assert_eq!(got.id, run.id);
            assert_eq!(store.recover_orphans(false).await.unwrap(), 1);
            let after = store.run(&run.id).await.unwrap().unwrap();
            let want = if attempt < MAX_ATTEMPTS {
                RunStatus::Queued
            } else {
                RunStatus::Failed
            };
            assert_eq!(after.status, want);
        }
        assert!(
            store
                .run(&run.id)
                .await
                .unwrap()
                .unwrap()
                .error
                .unwrap()
                .contains("worker stopped")
        );
        assert!(store.run("nope").await.unwrap().is_none());
    }
}
