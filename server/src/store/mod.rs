//! The database: runs, metrics, evaluations, sweeps and data sets, on SQLite (embedded default)
//! or PostgreSQL (teams), through sqlx's `Any` driver. Ids and times are
//! TEXT and INTEGER (milliseconds) so both dialects map them the same way.

mod accounts;
mod audits;
mod cka;
mod datasets;
mod decoders;
mod deletes;
mod demos;
mod evaluations;
mod exports;
mod labels;
mod memorization;
mod projects;
mod queue;
mod runs;
mod search;
mod studies;
mod sweeps;
#[cfg(test)]
mod tests;
mod workers;

/// The SQL files of `migrations/`, embedded by the build script.
mod migrations {
    include!(concat!(env!("OUT_DIR"), "/migrations.rs"));
}

/// The dialect's migrations, as sqlx's `migrate!` would embed them (same
/// versions and checksums, so databases it migrated stay valid).
fn migrator(dialect: Dialect) -> Migrator {
    let files = match dialect {
        Dialect::Sqlite => migrations::SQLITE,
        Dialect::Postgres => migrations::POSTGRES,
    };
    Migrator::with_migrations(
        files
            .iter()
            .map(|&(version, description, sql)| {
                let no_tx = sql.starts_with("-- no-transaction");
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    no_tx,
                )
            })
            .collect(),
    )
}

pub use accounts::NewTokenRow;
pub use cka::CkaOutcome;
pub use deletes::Deleted;
pub use labels::{LabelFilter, Labelled};
pub use queue::{Claimant, JobKind, LOCAL_PREFIX, Lease};
pub use runs::{Claim, RunFilter, SERVER_DATA, is_page_token};
pub use studies::NewSweep;

use sqlx::AnyPool;
use sqlx::SqlSafeStr;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database URL `{0}`: use sqlite://… or postgres://…")]
    Url(String),
}

/// Who a new job or data set belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub team: String,
    /// The user's id; none for a team's service token or the local CLI.
    pub user: Option<String>,
    /// Where what it creates goes, within the team.
    pub project: String,
}

impl Owner {
    /// The team rows from before teams belong to, and the local CLI's.
    pub const DEFAULT_TEAM: &str = "default";

    #[cfg(test)]
    pub fn default_team() -> Owner {
        Owner {
            team: Owner::DEFAULT_TEAM.into(),
            user: None,
            project: sslab_shared::project::DEFAULT_PROJECT.into(),
        }
    }

    /// An idempotency key as stored: the team's own.
    pub(crate) fn scoped_key(&self, key: &str) -> String {
        format!("{}/{key}", self.team)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Whether an insert wrote its row: `false` when a unique key was taken.
pub(crate) fn inserted(
    result: std::result::Result<sqlx::any::AnyQueryResult, sqlx::Error>,
) -> Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Connects and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(StoreError::Url(url.to_string()));
        };
        let mut options = AnyPoolOptions::new().max_connections(8);
        if dialect == Dialect::Sqlite {
            // One writer at a time; WAL and a busy timeout keep readers going.
            options = options.max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 5000")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        // sqlx's Any driver declares a missing f64 as a float4 parameter, and
        // a statement PostgreSQL prepared with one then refuses the next
        // present value ("incorrect binary data format"); statements are
        // prepared afresh each time instead of cached.
        let url = if dialect == Dialect::Postgres && !url.contains("statement-cache-capacity") {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}statement-cache-capacity=0")
        } else {
            url.to_string()
        };
        let pool = options.connect(&url).await?;
        migrator(dialect).run(&pool).await?;
        Ok(Store { pool, dialect })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }
}
