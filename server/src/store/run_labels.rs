//! A run's tags, note and archived flag, and deleting a run's rows.

use sqlx::Row;
use sslab_shared::api::Run;
use sslab_shared::labels::RunUpdate;

use super::{Result, Store};

/// What `delete_run` did.
#[derive(Debug, PartialEq)]
pub enum Deleted {
    Yes,
    /// No such run (any more).
    Gone,
    /// Queued or running now.
    Busy,
}

impl Store {
    /// Applies the checked fields of `update`; `None` when there is no such
    /// run. The tags go to both of their places in one transaction.
    pub async fn update_run(&self, id: &str, update: &RunUpdate) -> Result<Option<Run>> {
        let mut tx = self.pool.begin().await?;
        let tags = update
            .tags
            .as_ref()
            .map(|t| serde_json::to_string(t).expect("strings serialise"));
        let found = sqlx::query(
            "UPDATE runs SET name = COALESCE($2, name), tags = COALESCE($3, tags), \
             note = COALESCE($4, note), archived = COALESCE($5, archived) WHERE id = $1",
        )
        .bind(id)
        .bind(update.name.as_deref())
        .bind(tags)
        .bind(update.note.as_deref())
        .bind(update.archived.map(i64::from))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if found == 0 {
            return Ok(None);
        }
        if let Some(tags) = &update.tags {
            sqlx::query("DELETE FROM run_tags WHERE run_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            for t in tags {
                sqlx::query("INSERT INTO run_tags (run_id, tag) VALUES ($1, $2)")
                    .bind(id)
                    .bind(t)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        self.run(id).await
    }

    /// What still reads the run, in words: export jobs of it, CKA jobs that
    /// compare it, demos published from it.
    pub async fn run_users(&self, id: &str) -> Result<Vec<String>> {
        let mut users = Vec::new();
        let ids = |sql: &'static str, key: String| async move {
            sqlx::query(sql)
                .bind(key)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| Ok(r.try_get::<String, _>(0)?))
                .collect::<Result<Vec<String>>>()
        };
        for e in ids(
            "SELECT id FROM exports WHERE source_kind = 'run' AND source_id = $1",
            id.to_string(),
        )
        .await?
        {
            users.push(format!("export job `{e}`"));
        }
        // Run ids are hex, so they need no LIKE escaping.
        for c in ids(
            "SELECT id FROM cka_jobs WHERE request LIKE $1",
            format!("%\"{id}\"%"),
        )
        .await?
        {
            users.push(format!("CKA job `{c}`"));
        }
        for d in ids(
            "SELECT slug FROM demos WHERE body LIKE $1",
            format!("%\"run {id}\"%"),
        )
        .await?
        {
            users.push(format!("demo `{d}`"));
        }
        Ok(users)
    }

    /// Deletes the run's rows (metrics, evaluations, jobs, logs and tags go
    /// with it) unless it is queued or running.
    pub async fn delete_run(&self, id: &str) -> Result<Deleted> {
        let gone =
            sqlx::query("DELETE FROM runs WHERE id = $1 AND status NOT IN ('queued', 'running')")
                .bind(id)
                .execute(&self.pool)
                .await?
                .rows_affected();
        if gone > 0 {
            return Ok(Deleted::Yes);
        }
        Ok(match self.run(id).await? {
            Some(_) => Deleted::Busy,
            None => Deleted::Gone,
        })
    }
}
