//! Runs: creation, lists, metrics, evaluation rows, and their place in the job queue.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use sslab_shared::RunSpec;
use sslab_shared::api::{Evaluation, MetricPoint, Page, Run, RunStatus, SystemSample};
use sslab_shared::worker::MetricBatch;

use super::{Claimant, JobKind, Lease, Owner, Result, Store, StoreError, now_ms};

/// A claimed run and its lease.
pub struct Claim {
    pub run: Run,
    pub lease: Lease,
}

pub(super) const RUN_COLUMNS: &str = "id, name, status, method, backbone, spec, created_at, started_at, \
    finished_at, error, step, total_steps, epoch, last_loss, knn_backbone, cancel_requested, sweep_id, \
    team_id, created_by, project, tags, note, archived";

pub(super) fn run_from_row(row: &AnyRow) -> Result<Run> {
    let status: String = row.try_get("status")?;
    let spec: String = row.try_get("spec")?;
    let (tags, note, archived) = super::labels::labels_from_row(row)?;
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
        team: row.try_get("team_id")?,
        created_by: row.try_get("created_by")?,
        project: row.try_get("project")?,
        tags,
        note,
        archived,
    })
}

/// Which runs a list shows; every field narrows it.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Lists always stay within one team.
    pub team: String,
    pub status: Option<RunStatus>,
    pub sweep_id: Option<String>,
    pub method: Option<String>,
    /// Part of the name, any case.
    pub name_contains: Option<String>,
    /// Runs with this tag.
    pub tag: Option<String>,
    /// Runs of this project.
    pub project: Option<String>,
    /// Only archived runs (`Some(true)`), only the others (`Some(false)`),
    /// or both.
    pub archived: Option<bool>,
}

#[cfg(test)]
impl RunFilter {
    /// Every run of the team.
    pub fn team(team: &str) -> RunFilter {
        RunFilter {
            team: team.to_string(),
            ..RunFilter::default()
        }
    }
}

pub(super) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

pub(super) fn default_run_name(spec: &RunSpec, id: &str) -> String {
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
pub(super) fn parse_page_token(token: &str) -> Option<(i64, String)> {
    let (t, id) = token.split_once('.')?;
    Some((t.parse().ok()?, id.to_string()))
}

pub fn is_page_token(token: &str) -> bool {
    parse_page_token(token).is_some()
}

impl Store {
    /// Stores a new queued run. With an idempotency key already used, returns
    /// the run created then (and `false`).
    pub async fn create_run(
        &self,
        spec: &RunSpec,
        owner: &Owner,
        idempotency_key: Option<&str>,
    ) -> Result<(Run, bool)> {
        // Keys are the team's own: another team's key never finds this run.
        let idempotency_key = idempotency_key.map(|k| owner.scoped_key(k));
        let idempotency_key = idempotency_key.as_deref();
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
            "INSERT INTO runs (id, name, status, method, backbone, spec, created_at, total_steps, \
             idempotency_key, team_id, created_by, requires, project) \
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&id)
        .bind(&name)
        .bind(spec.method.name())
        .bind(spec.backbone.kind.name())
        .bind(&spec_json)
        .bind(now_ms())
        .bind(spec.total_steps() as i64)
        .bind(idempotency_key)
        .bind(&owner.team)
        .bind(owner.user.as_deref())
        .bind(requires(spec))
        .bind(&owner.project)
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
        // `clause $n` (and `tail`), `n` the next free placeholder.
        let mut add = |clause: &str, value: String, tail: &str| {
            binds.push(value);
            clauses.push_str(&format!(" AND {clause} ${}{tail}", binds.len() + 3));
        };
        add("team_id =", filter.team.clone(), "");
        if let Some(project) = &filter.project {
            add("project =", project.clone(), "");
        }
        if let Some(s) = filter.status {
            add("status =", s.as_str().to_string(), "");
        }
        if let Some(s) = &filter.sweep_id {
            add("sweep_id =", s.clone(), "");
        }
        if let Some(m) = &filter.method {
            add("method =", m.clone(), "");
        }
        if let Some(text) = filter.name_contains.as_deref().filter(|t| !t.is_empty()) {
            let escaped = super::labels::like_escaped(&text.to_lowercase());
            add("LOWER(name) LIKE", format!("%{escaped}%"), " ESCAPE '\\'");
        }
        if let Some(tag) = &filter.tag {
            add(
                "EXISTS (SELECT 1 FROM run_tags t WHERE t.run_id = runs.id AND t.tag =",
                tag.clone(),
                ")",
            );
        }
        match filter.archived {
            Some(true) => clauses.push_str(" AND archived = 1"),
            Some(false) => clauses.push_str(" AND archived = 0"),
            None => {}
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

    /// Claims the oldest queued run. A first attempt starts clean (no
    /// metrics or evaluations of an earlier life of the run); a later one
    /// (its worker died) keeps its metrics, for the worker to resume from
    /// the last checkpoint and drop only what comes after it.
    pub async fn claim_next<'a>(
        &self,
        worker: impl Into<Claimant<'a>>,
        lease_ms: i64,
    ) -> Result<Option<Claim>> {
        let reset = ", step = 0, epoch = 0, last_loss = NULL";
        let Some((row, lease)) = self
            .claim(JobKind::Run, worker.into(), lease_ms, reset, RUN_COLUMNS)
            .await?
        else {
            return Ok(None);
        };
        let run = run_from_row(&row)?;
        if lease.attempt <= 1 {
            self.drop_metrics_from(&run.id, 0).await?;
        }
        sqlx::query("DELETE FROM evaluations WHERE run_id = $1")
            .bind(&run.id)
            .execute(&self.pool)
            .await?;
        Ok(Some(Claim { run, lease }))
    }

    /// A held run starts after `epochs` epochs (0: from scratch): what an
    /// earlier attempt stored after them is dropped. `false` when the lease
    /// is no longer held.
    pub async fn start_run(&self, lease: &Lease, epochs: i64) -> Result<bool> {
        let held = sqlx::query(
            "SELECT 1 AS one FROM runs WHERE id = $1 AND worker = $2 AND status = 'running'",
        )
        .bind(&lease.id)
        .bind(&lease.token)
        .fetch_optional(&self.pool)
        .await?
        .is_some();
        if held {
            self.drop_metrics_from(&lease.id, epochs).await?;
        }
        Ok(held)
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

    /// Appends metrics (memorization readings and system samples too)
    /// reported under `lease` and moves the run's progress to the last step,
    /// in one transaction. Steps and sample times already stored are kept,
    /// so a batch sent twice stores nothing twice. `total_steps`, when
    /// given, corrects the run's length (file-based data sets are counted
    /// only once they are read). Returns `false`, storing nothing, when the
    /// lease is no longer held.
    pub async fn add_metrics(&self, lease: &Lease, batch: &MetricBatch) -> Result<bool> {
        let MetricBatch {
            points,
            total_steps,
            memorization,
            system,
        } = batch;
        let mut tx = self.pool.begin().await?;
        let last = points.last();
        let held = sqlx::query(
            "UPDATE runs SET step = COALESCE($1, step), epoch = COALESCE($2, epoch), \
                 last_loss = COALESCE($3, last_loss), total_steps = COALESCE($4, total_steps) \
             WHERE id = $5 AND worker = $6 AND status = 'running'",
        )
        .bind(last.map(|p| p.step))
        .bind(last.map(|p| p.epoch))
        .bind(last.map(|p| p.loss))
        .bind(total_steps)
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
        for p in points {
            sqlx::query(
                "INSERT INTO metrics (run_id, step, epoch, loss, lr, images_per_sec, data_wait, online_probe_acc) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (run_id, step) DO NOTHING",
            )
            .bind(&lease.id)
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
        for p in memorization {
            Store::insert_memorization(&mut tx, &lease.id, p).await?;
        }
        for s in system {
            sqlx::query(
                "INSERT INTO system_metrics (run_id, at, step, cpu_percent, rss_bytes, gpu_util, gpu_memory_bytes) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id, at) DO NOTHING",
            )
            .bind(&lease.id)
            .bind(s.at)
            .bind(s.step)
            .bind(s.cpu_percent)
            .bind(s.rss_bytes)
            .bind(s.gpu_util)
            .bind(s.gpu_memory_bytes)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The system samples of a run, oldest first.
    pub async fn system_samples(&self, id: &str) -> Result<Vec<SystemSample>> {
        let rows = sqlx::query(
            "SELECT at, step, cpu_percent, rss_bytes, gpu_util, gpu_memory_bytes FROM system_metrics \
             WHERE run_id = $1 ORDER BY at",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SystemSample {
                    at: r.try_get("at")?,
                    step: r.try_get("step")?,
                    cpu_percent: r.try_get("cpu_percent")?,
                    rss_bytes: r.try_get("rss_bytes")?,
                    gpu_util: r.try_get("gpu_util")?,
                    gpu_memory_bytes: r.try_get("gpu_memory_bytes")?,
                })
            })
            .collect()
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

    pub(super) async fn insert_evaluations(
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

    /// Ends a held run: its status, why (for failures), and its
    /// evaluations, all in one transaction. Returns false if the lease was lost.
    pub async fn finish_run(
        &self,
        lease: &Lease,
        status: RunStatus,
        error: Option<&str>,
        evaluations: &[Evaluation],
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        Self::insert_evaluations(&mut tx, &lease.id, "", evaluations).await?;
        let knn = evaluations
            .iter()
            .find(|e| e.layer == "backbone" && e.probe == "knn" && e.metric == "top1")
            .map(|e| e.value);
        sqlx::query("UPDATE runs SET knn_backbone = $1 WHERE id = $2 AND worker = $3")
            .bind(knn)
            .bind(&lease.id)
            .bind(&lease.token)
            .execute(&mut *tx)
            .await?;
        Self::end(tx, lease, status, error).await
    }

    /// Cancels a queued run at once; asks the worker of a running one to stop.
    /// Returns the run as it is afterwards, `None` if there is no such run.
    pub async fn request_cancel(&self, id: &str) -> Result<Option<Run>> {
        self.cancel(JobKind::Run, id).await?;
        self.run(id).await
    }
}

/// What a worker needs to train `spec`: a server folder named in the spec
/// only the server's own workers read; a registered data set is fetched
/// through the API by any worker, and the built-in scenes are made anywhere.
pub(super) fn requires(spec: &RunSpec) -> &'static str {
    use sslab_shared::spec::DataSpec;
    let on_server = |d: &DataSpec| d.server_path().is_some();
    if on_server(&spec.data) || spec.eval.data.as_ref().is_some_and(on_server) {
        SERVER_DATA
    } else {
        ""
    }
}

/// The capability of reading the server's data folders: in-process workers'.
pub const SERVER_DATA: &str = "server-data";
