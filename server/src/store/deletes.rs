//! Deleting runs, sweeps, audits and data sets: what still uses each, and
//! the rows, each in one statement (the database cascades to metrics,
//! evaluations, jobs, logs and tags).

use sqlx::Row;

use super::{Result, Store};

/// What a delete did.
#[derive(Debug, PartialEq)]
pub enum Deleted {
    Yes,
    /// No such row (any more).
    Gone,
    /// It, or one of its runs, is queued or running.
    Busy,
}

const BUSY: &str = "('queued', 'running')";

impl Store {
    /// The first column of `sql`'s rows, bound to `keys`.
    async fn ids(&self, sql: &str, keys: &[&str]) -> Result<Vec<String>> {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
        for k in keys {
            q = q.bind(*k);
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }

    /// What still reads the run or audit `id` (`kind` is `run` or
    /// `audit`), in words: export jobs of it, demos published from it, and
    /// for a run the audits and CKA jobs that read it.
    pub async fn users(&self, kind: &str, id: &str) -> Result<Vec<String>> {
        let mut users = Vec::new();
        let exports =
            format!("SELECT id FROM exports WHERE source_kind = '{kind}' AND source_id = $1");
        for e in self.ids(&exports, &[id]).await? {
            users.push(format!("export job `{e}`"));
        }
        // Ids are hex, so they need no LIKE escaping.
        if kind == "run" {
            for a in self
                .ids(
                    "SELECT id FROM audits WHERE spec LIKE $1",
                    &[&format!("%\"{id}\"%")],
                )
                .await?
            {
                users.push(format!("audit `{a}`"));
            }
            for c in self
                .ids(
                    "SELECT id FROM cka_jobs WHERE request LIKE $1",
                    &[&format!("%\"{id}\"%")],
                )
                .await?
            {
                users.push(format!("CKA job `{c}`"));
            }
        }
        for d in self
            .ids(
                "SELECT slug FROM demos WHERE body LIKE $1",
                &[&format!("%\"{kind} {id}\"%")],
            )
            .await?
        {
            users.push(format!("demo `{d}`"));
        }
        Ok(users)
    }

    /// What of `team` was made from its data set `name` with content
    /// `hash`: runs, sweeps, audits and CKA jobs whose specs recorded both.
    pub async fn dataset_users(&self, team: &str, name: &str, hash: &str) -> Result<Vec<String>> {
        // Hashes are `sha256:` and hex; names may hold LIKE's wildcards.
        let escaped = name
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let like = format!("%\"source\":\"dataset\",\"name\":\"{escaped}\",%\"{hash}\"%");
        let mut users = Vec::new();
        for (what, sql) in [
            (
                "run",
                "SELECT id FROM runs WHERE team_id = $2 AND spec LIKE $1 ESCAPE '\\'",
            ),
            (
                "sweep",
                "SELECT id FROM sweeps WHERE team_id = $2 AND spec LIKE $1 ESCAPE '\\'",
            ),
            (
                "audit",
                "SELECT id FROM audits WHERE team_id = $2 AND spec LIKE $1 ESCAPE '\\'",
            ),
            (
                "CKA job",
                "SELECT id FROM cka_jobs WHERE team_id = $2 AND request LIKE $1 ESCAPE '\\'",
            ),
        ] {
            let found = self.ids(sql, &[&like, team]).await?;
            users.extend(found.into_iter().map(|id| format!("{what} `{id}`")));
        }
        Ok(users)
    }

    /// `DELETE` by `sql` (bound to `keys`); when nothing went, whether
    /// `exists` (same keys) still finds the row.
    async fn delete_where(&self, sql: &str, exists: &str, keys: &[&str]) -> Result<Deleted> {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
        for k in keys {
            q = q.bind(*k);
        }
        if q.execute(&self.pool).await?.rows_affected() > 0 {
            return Ok(Deleted::Yes);
        }
        Ok(if self.ids(exists, keys).await?.is_empty() {
            Deleted::Gone
        } else {
            Deleted::Busy
        })
    }

    /// The run's rows, unless it is queued or running.
    pub async fn delete_run(&self, id: &str) -> Result<Deleted> {
        self.delete_where(
            &format!("DELETE FROM runs WHERE id = $1 AND status NOT IN {BUSY}"),
            "SELECT id FROM runs WHERE id = $1",
            &[id],
        )
        .await
    }

    /// The sweep and all its runs' rows, unless one of them is queued or
    /// running.
    pub async fn delete_sweep(&self, id: &str) -> Result<Deleted> {
        self.delete_where(
            &format!(
                "DELETE FROM sweeps WHERE id = $1 AND NOT EXISTS \
                 (SELECT 1 FROM runs WHERE sweep_id = $1 AND status IN {BUSY})"
            ),
            "SELECT id FROM sweeps WHERE id = $1",
            &[id],
        )
        .await
    }

    pub async fn delete_audit(&self, id: &str) -> Result<Deleted> {
        self.delete_where(
            &format!("DELETE FROM audits WHERE id = $1 AND status NOT IN {BUSY}"),
            "SELECT id FROM audits WHERE id = $1",
            &[id],
        )
        .await
    }

    /// The data set's row (a data set is never busy).
    pub async fn delete_dataset(&self, team: &str, name: &str) -> Result<Deleted> {
        self.delete_where(
            "DELETE FROM datasets WHERE team_id = $1 AND name = $2",
            "SELECT id FROM datasets WHERE team_id = $1 AND name = $2",
            &[team, name],
        )
        .await
    }

    /// Who registered the team's data set of that name (`None` for an
    /// admin's import from before teams).
    pub async fn dataset_created_by(&self, team: &str, name: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query("SELECT created_by FROM datasets WHERE team_id = $1 AND name = $2")
                .bind(team)
                .bind(name)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get::<Option<String>, _>(0))
                .transpose()?
                .flatten(),
        )
    }
}
