//! A run's tags, note and archived flag.

use sslab_shared::api::Run;
use sslab_shared::labels::RunUpdate;

use super::{Result, Store};

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
}
