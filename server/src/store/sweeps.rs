//! Sweeps: a spec expanded into runs created together, sharing its id.

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use sslab_shared::RunSpec;
use sslab_shared::api::{Evaluation, Page, RunStatus, StatusCounts, Sweep, SweepRun};
use sslab_shared::sweep::{SweepPoint, SweepSpec};

use super::runs::{default_run_name, new_id, parse_page_token};
use super::{LabelFilter, Owner, Result, Store, StoreError, now_ms};

const SWEEP_COLUMNS: &str =
    "id, name, spec, created_at, run_count, team_id, created_by, project, tags, note, archived";

impl Store {
    /// Stores the sweep and all its runs in one transaction; with an
    /// idempotency key already used, returns the sweep created then.
    pub async fn create_sweep(
        &self,
        spec: &SweepSpec,
        points: &[SweepPoint],
        owner: &Owner,
        idempotency_key: Option<&str>,
    ) -> Result<(Sweep, bool)> {
        let idempotency_key = idempotency_key.map(|k| owner.scoped_key(k));
        let idempotency_key = idempotency_key.as_deref();
        if let Some(key) = idempotency_key
            && let Some(id) = self.sweep_id_by_key(key).await?
            && let Some(sweep) = self.sweep(&id).await?
        {
            return Ok((sweep, false));
        }
        let mut tx = self.pool.begin().await?;
        let inserted = insert_sweep(&mut tx, spec, points, owner, idempotency_key).await;
        let id = match inserted {
            Ok(id) => id,
            Err(e) => {
                tx.rollback().await?;
                if let StoreError::Db(sqlx::Error::Database(d)) = &e
                    && d.is_unique_violation()
                    && let Some(key) = idempotency_key
                    && let Some(id) = self.sweep_id_by_key(key).await?
                    && let Some(sweep) = self.sweep(&id).await?
                {
                    return Ok((sweep, false));
                }
                return Err(e);
            }
        };
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
        let (tags, note, archived) = super::labels::labels_from_row(row)?;
        Ok(Sweep {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            spec: serde_json::from_str(&spec).map_err(|e| {
                StoreError::Corrupt(format!("stored sweep spec does not parse: {e}"))
            })?,
            created_at: row.try_get("created_at")?,
            run_count: row.try_get("run_count")?,
            counts,
            team: row.try_get("team_id")?,
            created_by: row.try_get("created_by")?,
            project: row.try_get("project")?,
            tags,
            note,
            archived,
        })
    }

    /// Run counts by status for each of `ids`.
    pub(super) async fn sweep_counts(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, StatusCounts>> {
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
        let Some(row) = sqlx::query(AssertSqlSafe(format!(
            "SELECT {SWEEP_COLUMNS} FROM sweeps WHERE id = $1"
        )))
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
        team: &str,
        page_size: usize,
        page_token: Option<&str>,
        filter: &LabelFilter,
    ) -> Result<Page<Sweep>> {
        let (t, id) = page_token
            .and_then(parse_page_token)
            .unwrap_or((i64::MAX, "\u{10FFFF}".to_string()));
        let (clauses, binds) = filter.clauses(5);
        let mut q = sqlx::query(AssertSqlSafe(format!(
            "SELECT {SWEEP_COLUMNS} FROM sweeps \
             WHERE (created_at < $1 OR (created_at = $1 AND id < $2)) AND team_id = $4{clauses} \
             ORDER BY created_at DESC, id DESC LIMIT $3"
        )))
        .bind(t)
        .bind(id)
        .bind(page_size as i64 + 1)
        .bind(team);
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.fetch_all(&self.pool).await?;
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

/// Inserts a sweep and its runs (queued) in `tx`; returns the sweep's id.
pub(super) async fn insert_sweep(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    spec: &SweepSpec,
    points: &[SweepPoint],
    owner: &Owner,
    idempotency_key: Option<&str>,
) -> Result<String> {
    let id = format!("sw{}", &new_id()[..14]);
    let name = if spec.name.trim().is_empty() {
        format!("sweep-{}", &id[2..8])
    } else {
        spec.name.trim().to_string()
    };
    let spec_json = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let now = now_ms();
    sqlx::query(
            "INSERT INTO sweeps (id, name, spec, created_at, run_count, idempotency_key, team_id, created_by, project) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&id)
        .bind(&name)
        .bind(&spec_json)
        .bind(now)
        .bind(points.len() as i64)
        .bind(idempotency_key)
        .bind(&owner.team)
        .bind(owner.user.as_deref())
        .bind(&owner.project)
        .execute(&mut **tx)
        .await?;
    for (i, point) in points.iter().enumerate() {
        let run_id = new_id();
        let spec_json =
            serde_json::to_string(&point.spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let values =
            serde_json::to_string(&point.values).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // One millisecond apart, so that the queue and the list keep the
        // expansion order.
        sqlx::query(
            "INSERT INTO runs (id, name, status, method, backbone, spec, created_at, total_steps, \
                 sweep_id, sweep_point, team_id, created_by, requires, project) \
                 VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
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
        .bind(&owner.team)
        .bind(owner.user.as_deref())
        .bind(super::runs::requires(&point.spec))
        .bind(&owner.project)
        .execute(&mut **tx)
        .await?;
    }
    Ok(id)
}
