//! Studies: the study row and its parts (sweeps, audits, CKA jobs) created
//! in one transaction, and what its parts have stored, for the report.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use sslab_shared::api::{Page, RunStatus, StatusCounts};
use sslab_shared::cka::CkaRequest;
use sslab_shared::study::{AuditPoint, Study, StudyItem, StudySpec};
use sslab_shared::sweep::{SweepPoint, SweepSpec};

use super::runs::{new_id, parse_page_token};
use super::{Owner, Result, Store, StoreError, now_ms};
use crate::study::report::Results;

const COLUMNS: &str = "id, name, spec, created_at, team_id, created_by, project";

/// A sweep of a study, expanded.
pub struct NewSweep<'a> {
    pub key: &'a str,
    pub spec: &'a SweepSpec,
    pub points: &'a [SweepPoint],
}

/// One part row: what kind, its key in the spec, seed and point, and the
/// id of the sweep, audit or CKA job.
struct PartRow {
    kind: String,
    part: String,
    seed: u64,
    point: serde_json::Map<String, serde_json::Value>,
    target: String,
}

fn corrupt(what: &str) -> impl Fn(serde_json::Error) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("stored {what} does not parse: {e}"))
}

impl Store {
    /// Stores the study with every sweep (and its runs) and audit queued,
    /// in one transaction; with an idempotency key already used, returns
    /// the study created then.
    pub async fn create_study(
        &self,
        spec: &StudySpec,
        sweeps: &[NewSweep<'_>],
        audits: &[(String, Vec<AuditPoint>)],
        owner: &Owner,
        idempotency_key: Option<&str>,
    ) -> Result<(Study, bool)> {
        let key = idempotency_key.map(|k| owner.scoped_key(k));
        if let Some(key) = &key
            && let Some(study) = self.study_by_key(key).await?
        {
            return Ok((study, false));
        }
        let id = format!("st{}", &new_id()[..14]);
        let body = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO studies (id, name, spec, created_at, team_id, created_by, project, idempotency_key, pending) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&id)
        .bind(spec.name.trim())
        .bind(&body)
        .bind(now_ms())
        .bind(&owner.team)
        .bind(owner.user.as_deref())
        .bind(&owner.project)
        .bind(key.as_deref())
        .bind(i64::from(!spec.cka.is_empty()))
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            tx.rollback().await?;
            if let sqlx::Error::Database(d) = &e
                && d.is_unique_violation()
                && let Some(key) = &key
                && let Some(study) = self.study_by_key(key).await?
            {
                return Ok((study, false));
            }
            return Err(e.into());
        }
        let link = "INSERT INTO study_parts (study_id, kind, part, seed, point, target_id) \
                    VALUES ($1, $2, $3, $4, $5, $6)";
        for s in sweeps {
            let sweep = super::sweeps::insert_sweep(&mut tx, s.spec, s.points, owner, None).await?;
            sqlx::query(link)
                .bind(&id)
                .bind("sweep")
                .bind(format!("sweeps.{}", s.key))
                .bind(0i64)
                .bind("{}")
                .bind(&sweep)
                .execute(&mut *tx)
                .await?;
        }
        for (key, points) in audits {
            for point in points {
                let audit = super::audits::insert_audit(&mut tx, &point.spec, owner).await?;
                let values = serde_json::to_string(&point.values)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                sqlx::query(link)
                    .bind(&id)
                    .bind("audit")
                    .bind(format!("audits.{key}"))
                    .bind(point.seed as i64)
                    .bind(values)
                    .bind(&audit)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        let study = self
            .study(&id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("inserted study vanished".into()))?;
        Ok((study, true))
    }

    async fn study_by_key(&self, key: &str) -> Result<Option<Study>> {
        let row = sqlx::query("SELECT id FROM studies WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => self.study(&r.try_get::<String, _>("id")?).await,
            None => Ok(None),
        }
    }

    pub async fn study(&self, id: &str) -> Result<Option<Study>> {
        let sql = format!("SELECT {COLUMNS} FROM studies WHERE id = $1");
        let Some(row) = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(self.study_from_row(&row).await?))
    }

    async fn study_from_row(&self, row: &AnyRow) -> Result<Study> {
        let id: String = row.try_get("id")?;
        let spec: String = row.try_get("spec")?;
        let spec: StudySpec = serde_json::from_str(&spec).map_err(corrupt("study spec"))?;
        let counts = self.study_counts(&id).await?;
        Ok(Study {
            name: row.try_get("name")?,
            paper: spec.paper.clone(),
            question: spec.question.clone(),
            claim: spec.claim.clone(),
            created_at: row.try_get("created_at")?,
            team: row.try_get("team_id")?,
            created_by: row.try_get("created_by")?,
            project: row.try_get("project")?,
            counts,
            parts: spec.part_count(),
            spec,
            id,
        })
    }

    /// The study's runs, audits and comparisons by status, without their figures.
    async fn study_counts(&self, id: &str) -> Result<StatusCounts> {
        let mut counts = StatusCounts::default();
        let parts = self.study_parts(id).await?;
        let sweeps: Vec<String> = parts
            .iter()
            .filter(|p| p.kind == "sweep")
            .map(|p| p.target.clone())
            .collect();
        let by_sweep = self.sweep_counts(&sweeps).await?;
        for sweep in &sweeps {
            match by_sweep.get(sweep) {
                Some(c) => {
                    counts.queued += c.queued;
                    counts.running += c.running;
                    counts.succeeded += c.succeeded;
                    counts.failed += c.failed;
                    counts.cancelled += c.cancelled;
                }
                None if self.sweep(sweep).await?.is_none() => counts.failed += 1,
                None => {}
            }
        }
        for p in &parts {
            let status = match p.kind.as_str() {
                "audit" => self.audit(&p.target).await?.map(|a| a.status),
                "cka" => self.cka(&p.target).await?.map(|c| c.status),
                _ => continue,
            };
            // A deleted part counts as failed, as the report lists it.
            counts.add(status.unwrap_or(RunStatus::Failed), 1);
        }
        Ok(counts)
    }

    /// Newest first.
    pub async fn list_studies(
        &self,
        team: &str,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<Page<Study>> {
        let (t, id) = page_token
            .and_then(parse_page_token)
            .unwrap_or((i64::MAX, "\u{10FFFF}".to_string()));
        let sql = format!(
            "SELECT {COLUMNS} FROM studies \
             WHERE (created_at < $1 OR (created_at = $1 AND id < $2)) AND team_id = $4 \
             ORDER BY created_at DESC, id DESC LIMIT $3"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(t)
            .bind(id)
            .bind(page_size as i64 + 1)
            .bind(team)
            .fetch_all(&self.pool)
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            items.push(self.study_from_row(row).await?);
        }
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

    async fn study_parts(&self, id: &str) -> Result<Vec<PartRow>> {
        let rows = sqlx::query(
            "SELECT kind, part, seed, point, target_id FROM study_parts \
             WHERE study_id = $1 ORDER BY part, seed, target_id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let point: String = r.try_get("point")?;
                Ok(PartRow {
                    kind: r.try_get("kind")?,
                    part: r.try_get("part")?,
                    seed: r.try_get::<i64, _>("seed")? as u64,
                    point: serde_json::from_str(&point).map_err(corrupt("study point"))?,
                    target: r.try_get("target_id")?,
                })
            })
            .collect()
    }

    /// What every part of the study has stored now. A part deleted since
    /// is listed as failed, by name, so the report says what is missing.
    pub async fn study_results(&self, id: &str) -> Result<Results> {
        let mut out = Results::default();
        let gone = |p: &PartRow, what: &str| StudyItem {
            kind: p.kind.clone(),
            part: p.part.clone(),
            id: p.target.clone(),
            name: p.target.clone(),
            status: RunStatus::Failed,
            seed: p.seed,
            values: p.point.clone(),
            error: Some(format!("the {what} `{}` was deleted", p.target)),
        };
        for p in self.study_parts(id).await? {
            match p.kind.as_str() {
                "sweep" => {
                    if self.sweep(&p.target).await?.is_none() {
                        out.runs.push((gone(&p, "sweep"), Vec::new()));
                        continue;
                    }
                    for r in self.sweep_runs(&p.target).await? {
                        let item = StudyItem {
                            kind: "run".into(),
                            part: p.part.clone(),
                            id: r.id,
                            name: r.name,
                            status: r.status,
                            seed: r.seed,
                            values: r.values,
                            error: r.error,
                        };
                        out.runs.push((item, r.evaluations));
                    }
                }
                "audit" => {
                    let Some(a) = self.audit(&p.target).await? else {
                        out.audits.push((gone(&p, "audit"), Vec::new()));
                        continue;
                    };
                    let snapshots = if a.status == RunStatus::Succeeded {
                        self.audit_report(&a.id)
                            .await?
                            .map(|r| r.snapshots)
                            .unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    let item = StudyItem {
                        kind: "audit".into(),
                        part: p.part.clone(),
                        id: a.id,
                        name: a.name,
                        status: a.status,
                        seed: p.seed,
                        values: p.point.clone(),
                        error: a.error,
                    };
                    out.audits.push((item, snapshots));
                }
                _ => {
                    let Some(c) = self.cka(&p.target).await? else {
                        out.cka.push((gone(&p, "CKA job"), None));
                        continue;
                    };
                    let item = StudyItem {
                        kind: "cka".into(),
                        part: p.part.clone(),
                        name: format!("{} seed={}", p.part, p.seed),
                        id: c.id,
                        status: c.status,
                        seed: p.seed,
                        values: p.point.clone(),
                        error: c.error,
                    };
                    out.cka.push((item, c.result));
                }
            }
        }
        Ok(out)
    }

    /// Studies with comparisons still to queue, or `only` that one if it
    /// has: (id, spec, owner).
    pub async fn pending_studies(
        &self,
        only: Option<&str>,
    ) -> Result<Vec<(String, StudySpec, Owner)>> {
        let rows = sqlx::query(
            "SELECT id, spec, team_id, created_by, project FROM studies \
             WHERE pending = 1 AND ($1 = '' OR id = $1) ORDER BY created_at LIMIT 100",
        )
        .bind(only.unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let spec: String = r.try_get("spec")?;
                Ok((
                    r.try_get("id")?,
                    serde_json::from_str(&spec).map_err(corrupt("study spec"))?,
                    Owner {
                        team: r.try_get("team_id")?,
                        user: r.try_get("created_by")?,
                        project: r.try_get("project")?,
                    },
                ))
            })
            .collect()
    }

    /// Cancels every unfinished part and queues no more comparisons.
    pub async fn cancel_study(&self, id: &str) -> Result<()> {
        self.study_settled(id).await?;
        for p in self.study_parts(id).await? {
            match p.kind.as_str() {
                "sweep" => {
                    self.cancel_sweep(&p.target).await?;
                }
                "audit" => {
                    self.cancel_audit(&p.target).await?;
                }
                _ => {
                    self.cancel_cka(&p.target).await?;
                }
            }
        }
        Ok(())
    }

    pub async fn study_settled(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE studies SET pending = 0 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Queues a study's comparison of one seed's runs with its part row, in
    /// one transaction; `false` if another server queued it first.
    pub async fn add_study_cka(
        &self,
        study: &str,
        part: &str,
        seed: u64,
        request: &CkaRequest,
        owner: &Owner,
        requires: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let job = super::cka::insert_cka(&mut tx, request, owner, requires).await?;
        let linked = sqlx::query(
            "INSERT INTO study_parts (study_id, kind, part, seed, point, target_id) \
             VALUES ($1, 'cka', $2, $3, '{}', $4)",
        )
        .bind(study)
        .bind(part)
        .bind(seed as i64)
        .bind(&job)
        .execute(&mut *tx)
        .await;
        match linked {
            Ok(_) => {
                tx.commit().await?;
                Ok(true)
            }
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                tx.rollback().await?;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}
