//! One query over a team's runs, sweeps, audits and data sets: an id's
//! start, a part of a name, or a tag's start, any case.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use sslab_shared::api::RunStatus;
use sslab_shared::labels::{SearchHit, SearchKind};

use super::labels::like_escaped;
use super::{Result, Store, StoreError};

/// How each kind is searched: its table, the column the API names it by,
/// the columns read (`status`, `tags` and `archived` as constants where it
/// has none) and a third match, on `$5`.
struct Source {
    kind: SearchKind,
    table: &'static str,
    id: &'static str,
    columns: &'static str,
    tag_match: &'static str,
    /// `$5` from the escaped, lower-case query.
    tag_pattern: fn(&str) -> String,
}

fn prefix(q: &str) -> String {
    format!("{q}%")
}

/// A tag's start inside a stored JSON list.
fn listed_prefix(q: &str) -> String {
    format!("%\"{q}%")
}

const SOURCES: [Source; 4] = [
    Source {
        kind: SearchKind::Run,
        table: "runs",
        id: "id",
        columns: "id, name, status, tags, archived, created_at",
        // Not correlated: the matching tags are found once, not per run.
        tag_match: "id IN (SELECT t.run_id FROM run_tags t WHERE LOWER(t.tag) LIKE $5 ESCAPE '\\')",
        tag_pattern: prefix,
    },
    Source {
        kind: SearchKind::Sweep,
        table: "sweeps",
        id: "id",
        columns: "id, name, NULL AS status, tags, archived, created_at",
        tag_match: "LOWER(tags) LIKE $5 ESCAPE '\\'",
        tag_pattern: listed_prefix,
    },
    Source {
        kind: SearchKind::Audit,
        table: "audits",
        id: "id",
        columns: "id, name, status, tags, archived, created_at",
        tag_match: "LOWER(tags) LIKE $5 ESCAPE '\\'",
        tag_pattern: listed_prefix,
    },
    // A data set is found by its name, or its content hash's start.
    Source {
        kind: SearchKind::Dataset,
        table: "datasets",
        id: "name",
        columns: "name AS id, name, NULL AS status, '[]' AS tags, CAST(0 AS BIGINT) AS archived, created_at",
        tag_match: "hash LIKE $5 ESCAPE '\\'",
        tag_pattern: prefix,
    },
];

fn hit(kind: SearchKind, row: &AnyRow, query: &str) -> Result<SearchHit> {
    let id: String = row.try_get("id")?;
    let name: String = row.try_get("name")?;
    let status = row
        .try_get::<Option<String>, _>("status")?
        .map(|s| RunStatus::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("status `{s}`"))))
        .transpose()?;
    let tags: Vec<String> = serde_json::from_str(&row.try_get::<String, _>("tags")?)
        .map_err(|e| StoreError::Corrupt(format!("stored tags do not parse: {e}")))?;
    let q = query.to_lowercase();
    let matched = if id.to_lowercase().starts_with(&q) {
        "id"
    } else if name.to_lowercase().contains(&q) {
        "name"
    } else {
        "tag"
    };
    Ok(SearchHit {
        kind,
        id,
        name,
        status,
        tags,
        archived: row.try_get::<i64, _>("archived")? != 0,
        created_at: row.try_get("created_at")?,
        matched: matched.to_string(),
    })
}

impl Store {
    /// Up to `limit` of each kind, kind by kind (runs, sweeps, audits, data
    /// sets): an exact id first, then newest first. Archived ones are
    /// found too, and say so.
    pub async fn search(&self, team: &str, query: &str, limit: usize) -> Result<Vec<SearchHit>> {
        let q = like_escaped(&query.to_lowercase());
        let mut hits = Vec::new();
        for source in &SOURCES {
            let Source {
                kind,
                table,
                id,
                columns,
                tag_match,
                tag_pattern,
            } = source;
            // The exact id alone first: the newest-first walk below can then
            // stop at `limit` rows on the team's time index.
            let exact_sql =
                format!("SELECT {columns} FROM {table} WHERE team_id = $1 AND {id} = $2");
            let exact = sqlx::query(AssertSqlSafe(exact_sql))
                .bind(team)
                .bind(query)
                .fetch_optional(&self.pool)
                .await?;
            let sql = format!(
                "SELECT {columns} FROM {table} WHERE team_id = $1 AND \
                 (LOWER({id}) LIKE $2 ESCAPE '\\' OR LOWER(name) LIKE $3 ESCAPE '\\' OR {tag_match}) \
                 ORDER BY created_at DESC, {id} DESC LIMIT $4"
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(team)
                .bind(prefix(&q))
                .bind(format!("%{q}%"))
                .bind(limit as i64)
                .bind(tag_pattern(&q))
                .fetch_all(&self.pool)
                .await?;
            let first = exact.as_ref().map(|r| hit(*kind, r, query)).transpose()?;
            let exact_id = first.as_ref().map(|h| h.id.clone());
            let rest = rows
                .iter()
                .map(|r| hit(*kind, r, query))
                .filter(|h| !matches!((h, &exact_id), (Ok(h), Some(e)) if &h.id == e));
            let mut of_kind: Vec<SearchHit> = first
                .into_iter()
                .map(Ok)
                .chain(rest)
                .collect::<Result<_>>()?;
            of_kind.truncate(limit);
            hits.extend(of_kind);
        }
        Ok(hits)
    }
}
