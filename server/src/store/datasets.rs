//! The data set registry's rows.

use sqlx::Row;
use sqlx::any::AnyRow;
use sslab_shared::dataset::Dataset;

use super::{Result, Store, StoreError};

fn from_row(row: &AnyRow) -> Result<Dataset> {
    let body: String = row.try_get("body")?;
    serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(format!("data set row: {e}")))
}

impl Store {
    /// Registers `d`; `false` when its name is taken (nothing is written).
    pub async fn insert_dataset(&self, d: &Dataset) -> Result<bool> {
        let body = serde_json::to_string(d).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let inserted = sqlx::query(
            "INSERT INTO datasets (id, name, format, hash, body, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&d.id)
        .bind(&d.name)
        .bind(d.format.as_str())
        .bind(&d.hash)
        .bind(&body)
        .bind(d.created_at)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn dataset(&self, name: &str) -> Result<Option<Dataset>> {
        sqlx::query("SELECT body FROM datasets WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| from_row(&r))
            .transpose()
    }

    /// Every registered data set, newest first.
    pub async fn list_datasets(&self) -> Result<Vec<Dataset>> {
        sqlx::query("SELECT body FROM datasets ORDER BY created_at DESC, id DESC")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(from_row)
            .collect()
    }
}
