//! Tags, note and archived flag of runs, sweeps and audits.

use sqlx::Row;
use sqlx::any::AnyRow;
use sslab_shared::labels::LabelUpdate;

use super::{Result, Store, StoreError};

/// What carries labels, by its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labelled {
    Run,
    Sweep,
    Audit,
}

impl Labelled {
    fn table(self) -> &'static str {
        match self {
            Labelled::Run => "runs",
            Labelled::Sweep => "sweeps",
            Labelled::Audit => "audits",
        }
    }
}

/// The `tags`, `note` and `archived` columns of a row.
pub(super) fn labels_from_row(row: &AnyRow) -> Result<(Vec<String>, String, bool)> {
    let tags = serde_json::from_str(&row.try_get::<String, _>("tags")?)
        .map_err(|e| StoreError::Corrupt(format!("stored tags do not parse: {e}")))?;
    Ok((
        tags,
        row.try_get("note")?,
        row.try_get::<i64, _>("archived")? != 0,
    ))
}

/// A `LIKE` pattern (with `ESCAPE '\'`) matching a stored JSON tag list
/// that holds exactly `tag`. Checked tags hold no quote or backslash, so
/// the quotes around it bound the match.
pub fn tag_pattern(tag: &str) -> String {
    format!("%\"{}\"%", like_escaped(tag))
}

/// `text` with `LIKE`'s wildcards and escape character taken literally.
pub(super) fn like_escaped(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// A sweeps or audits list narrowed by tag and archived flag.
#[derive(Debug, Clone, Default)]
pub struct LabelFilter {
    pub tag: Option<String>,
    pub project: Option<String>,
    /// Only archived (`Some(true)`), only the others, or both (`None`).
    pub archived: Option<bool>,
}

impl LabelFilter {
    /// ` AND …` clauses whose placeholders start at `$first`, and their values.
    pub(super) fn clauses(&self, first: usize) -> (String, Vec<String>) {
        let mut sql = String::new();
        let mut binds = Vec::new();
        if let Some(tag) = &self.tag {
            sql.push_str(&format!(
                " AND tags LIKE ${} ESCAPE '\\'",
                first + binds.len()
            ));
            binds.push(tag_pattern(tag));
        }
        if let Some(project) = &self.project {
            sql.push_str(&format!(" AND project = ${}", first + binds.len()));
            binds.push(project.clone());
        }
        match self.archived {
            Some(true) => sql.push_str(" AND archived = 1"),
            Some(false) => sql.push_str(" AND archived = 0"),
            None => {}
        }
        (sql, binds)
    }
}

impl Store {
    /// Applies the checked fields of `update`; `false` when there is no
    /// such row. A run's tags go to both of their places in one transaction.
    pub async fn update_labels(
        &self,
        what: Labelled,
        id: &str,
        update: &LabelUpdate,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let tags = update
            .tags
            .as_ref()
            .map(|t| serde_json::to_string(t).expect("strings serialise"));
        let sql = format!(
            "UPDATE {} SET name = COALESCE($2, name), tags = COALESCE($3, tags), \
             note = COALESCE($4, note), archived = COALESCE($5, archived), \
             project = COALESCE($6, project) WHERE id = $1",
            what.table()
        );
        let found = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(update.name.as_deref())
            .bind(tags)
            .bind(update.note.as_deref())
            .bind(update.archived.map(i64::from))
            .bind(update.project.as_deref())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if found == 0 {
            return Ok(false);
        }
        // A sweep's runs stay in its project.
        if let (Labelled::Sweep, Some(project)) = (what, &update.project) {
            sqlx::query("UPDATE runs SET project = $2 WHERE sweep_id = $1")
                .bind(id)
                .bind(project)
                .execute(&mut *tx)
                .await?;
        }
        if let (Labelled::Run, Some(tags)) = (what, &update.tags) {
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
        Ok(true)
    }
}
