//! Projects of a team and what each holds.

use std::collections::BTreeMap;

use sqlx::{AssertSqlSafe, Row};
use sslab_shared::project::{DEFAULT_PROJECT, NewProject, Project};

use super::{Result, Store, now_ms};

/// What a project holds, by table.
const HOLDERS: [&str; 3] = ["runs", "sweeps", "audits"];

fn empty(name: &str) -> Project {
    Project {
        name: name.to_string(),
        description: String::new(),
        created_at: 0,
        created_by: None,
        runs: 0,
        sweeps: 0,
        audits: 0,
    }
}

impl Store {
    /// Whether `team` has project `name` (`default` always exists).
    pub async fn project_exists(&self, team: &str, name: &str) -> Result<bool> {
        if name == DEFAULT_PROJECT {
            return Ok(true);
        }
        Ok(
            sqlx::query("SELECT 1 AS one FROM projects WHERE team_id = $1 AND name = $2")
                .bind(team)
                .bind(name)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// The new project, or `None` when the team already has one of that name.
    pub async fn create_project(
        &self,
        team: &str,
        user: Option<&str>,
        new: &NewProject,
    ) -> Result<Option<Project>> {
        if new.name == DEFAULT_PROJECT {
            return Ok(None);
        }
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO projects (team_id, name, description, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(team)
        .bind(&new.name)
        .bind(&new.description)
        .bind(now)
        .bind(user)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(Some(Project {
                description: new.description.clone(),
                created_at: now,
                created_by: user.map(str::to_string),
                ..empty(&new.name)
            })),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The team's projects by name, `default` first, each with its counts.
    /// A project some row names but no project row holds is listed too, so
    /// that nothing becomes unreachable.
    pub async fn list_projects(&self, team: &str) -> Result<Vec<Project>> {
        let mut out: BTreeMap<String, Project> = BTreeMap::new();
        out.insert(DEFAULT_PROJECT.into(), empty(DEFAULT_PROJECT));
        let rows = sqlx::query(
            "SELECT name, description, created_at, created_by FROM projects WHERE team_id = $1",
        )
        .bind(team)
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let name: String = row.try_get("name")?;
            out.insert(
                name.clone(),
                Project {
                    description: row.try_get("description")?,
                    created_at: row.try_get("created_at")?,
                    created_by: row.try_get("created_by")?,
                    ..empty(&name)
                },
            );
        }
        for table in HOLDERS {
            let sql = format!(
                "SELECT project, COUNT(*) AS n FROM {table} WHERE team_id = $1 GROUP BY project"
            );
            for row in sqlx::query(AssertSqlSafe(sql))
                .bind(team)
                .fetch_all(&self.pool)
                .await?
            {
                let name: String = row.try_get("project")?;
                let n: i64 = row.try_get("n")?;
                let p = out.entry(name.clone()).or_insert_with(|| empty(&name));
                match table {
                    "runs" => p.runs = n,
                    "sweeps" => p.sweeps = n,
                    _ => p.audits = n,
                }
            }
        }
        let mut list: Vec<Project> = out.into_values().collect();
        list.sort_by_key(|p| (p.name != DEFAULT_PROJECT, p.name.clone()));
        Ok(list)
    }

    /// Deletes an empty project. `Err` names what it still holds; `Ok(false)`
    /// when there was no such project. One statement checks and deletes, so
    /// that no write between a check and the delete can fail it.
    pub async fn delete_project(
        &self,
        team: &str,
        name: &str,
    ) -> Result<std::result::Result<bool, String>> {
        let empty: String = HOLDERS
            .iter()
            .map(|t| {
                format!(" AND NOT EXISTS (SELECT 1 FROM {t} WHERE team_id = $1 AND project = $2)")
            })
            .collect();
        let sql = format!("DELETE FROM projects WHERE team_id = $1 AND name = $2{empty}");
        let gone = sqlx::query(AssertSqlSafe(sql))
            .bind(team)
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if gone > 0 {
            return Ok(Ok(true));
        }
        let mut held = Vec::new();
        for table in HOLDERS {
            let sql =
                format!("SELECT COUNT(*) AS n FROM {table} WHERE team_id = $1 AND project = $2");
            let n: i64 = sqlx::query(AssertSqlSafe(sql))
                .bind(team)
                .bind(name)
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
            if n > 0 {
                held.push(format!(
                    "{n} {}",
                    if n == 1 {
                        &table[..table.len() - 1]
                    } else {
                        table
                    }
                ));
            }
        }
        if held.is_empty() {
            Ok(Ok(false))
        } else {
            Ok(Err(held.join(", ")))
        }
    }
}
