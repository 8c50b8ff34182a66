//! Published demos' rows; their files are in the artifact store.

use sqlx::Row;
use sqlx::any::AnyRow;
use sslab_shared::demo::Demo;

use super::{Owner, Result, Store, StoreError};

fn from_row(row: &AnyRow) -> Result<Demo> {
    let body: String = row.try_get("body")?;
    let mut d: Demo =
        serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(format!("demo row: {e}")))?;
    d.team = row.try_get("team_id")?;
    d.created_by = row.try_get("created_by")?;
    Ok(d)
}

impl Store {
    /// `false` when the slug is taken (nothing is written).
    pub async fn insert_demo(&self, d: &Demo, owner: &Owner) -> Result<bool> {
        let body = serde_json::to_string(d).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let inserted = sqlx::query(
            "INSERT INTO demos (slug, team_id, body, created_by, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&d.slug)
        .bind(&owner.team)
        .bind(&body)
        .bind(owner.user.as_deref())
        .bind(d.created_at)
        .execute(&self.pool)
        .await;
        super::inserted(inserted)
    }

    /// The demo of that slug, whichever team published it (demo pages are public).
    pub async fn demo(&self, slug: &str) -> Result<Option<Demo>> {
        sqlx::query("SELECT body, team_id, created_by FROM demos WHERE slug = $1")
            .bind(slug)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| from_row(&r))
            .transpose()
    }

    /// The team's demos, newest first.
    pub async fn list_demos(&self, team: &str) -> Result<Vec<Demo>> {
        sqlx::query(
            "SELECT body, team_id, created_by FROM demos WHERE team_id = $1 \
             ORDER BY created_at DESC, slug",
        )
        .bind(team)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(from_row)
        .collect()
    }

    /// Unpublishes; `false` when there was no such demo.
    pub async fn delete_demo(&self, slug: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM demos WHERE slug = $1")
            .bind(slug)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
