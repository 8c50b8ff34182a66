//! The data set registry's rows.

use sqlx::Row;
use sqlx::any::AnyRow;
use sslab_shared::dataset::Dataset;

use super::{Owner, Result, Store, StoreError};

fn from_row(row: &AnyRow) -> Result<Dataset> {
    let body: String = row.try_get("body")?;
    let mut d: Dataset = serde_json::from_str(&body)
        .map_err(|e| StoreError::Corrupt(format!("data set row: {e}")))?;
    d.team = row.try_get("team_id")?;
    Ok(d)
}

impl Store {
    /// Registers `d` for `owner.team`; `false` when the team already has
    /// its name (nothing is written).
    pub async fn insert_dataset(&self, d: &Dataset, owner: &Owner) -> Result<bool> {
        let body = serde_json::to_string(d).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let inserted = sqlx::query(
            "INSERT INTO datasets (id, name, format, hash, body, created_at, team_id, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&d.id)
        .bind(&d.name)
        .bind(d.format.as_str())
        .bind(&d.hash)
        .bind(&body)
        .bind(d.created_at)
        .bind(&owner.team)
        .bind(owner.user.as_deref())
        .execute(&self.pool)
        .await;
        super::inserted(inserted)
    }

    /// The team's data set of that name.
    pub async fn dataset(&self, team: &str, name: &str) -> Result<Option<Dataset>> {
        sqlx::query("SELECT body, team_id FROM datasets WHERE team_id = $1 AND name = $2")
            .bind(team)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| from_row(&r))
            .transpose()
    }

    /// The team's data sets, newest first.
    pub async fn list_datasets(&self, team: &str) -> Result<Vec<Dataset>> {
        sqlx::query(
            "SELECT body, team_id FROM datasets WHERE team_id = $1 ORDER BY created_at DESC, id DESC",
        )
        .bind(team)
        .fetch_all(&self.pool)
            .await?
            .iter()
            .map(from_row)
            .collect()
    }
}
