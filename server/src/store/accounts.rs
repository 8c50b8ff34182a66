//! Teams, users, memberships, tokens and dashboard sessions.

use sqlx::Row;
use sqlx::any::AnyRow;
use sslab_shared::auth::{Member, Role, Scope, TeamRole, TokenInfo};

use super::{Result, Store, StoreError, now_ms};
use crate::auth::{Principal, Via};

/// A stored user.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub name: String,
    pub password_hash: Option<String>,
}

/// A token to store; its secret is already hashed.
pub struct NewTokenRow<'a> {
    pub hash: &'a str,
    pub name: &'a str,
    pub kind: &'a str,
    pub scope: Scope,
    pub user_id: Option<&'a str>,
    pub team_id: Option<&'a str>,
    pub expires_at: Option<i64>,
}

/// A token with the ids that decide who may see or revoke it.
pub struct TokenOwner {
    pub info: TokenInfo,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
}

/// Why a presented secret was refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refused {
    Unknown,
    Revoked,
    Expired,
    /// The user left the team the token was made for.
    NotMember,
}

impl Refused {
    pub fn message(&self) -> &'static str {
        match self {
            Refused::Unknown => "the token or session is not known to this server",
            Refused::Revoked => "the token was revoked",
            Refused::Expired => "the token or session has expired",
            Refused::NotMember => "the token's user is no longer a member of its team",
        }
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

fn role(text: &str) -> Result<Role> {
    Role::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown role `{text}`")))
}

fn scope(text: &str) -> Result<Scope> {
    Scope::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown scope `{text}`")))
}

const TOKEN_COLUMNS: &str = "t.id, t.name, t.kind, t.scope, t.user_id, t.team_id, t.created_at, \
    t.expires_at, t.revoked_at, t.last_used_at, u.name AS user_name, tm.name AS team_name";

fn token_from_row(row: &AnyRow) -> Result<TokenOwner> {
    let s: String = row.try_get("scope")?;
    Ok(TokenOwner {
        info: TokenInfo {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            kind: row.try_get("kind")?,
            scope: scope(&s)?,
            user: row.try_get("user_name")?,
            team: row.try_get("team_name")?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            revoked_at: row.try_get("revoked_at")?,
            last_used_at: row.try_get("last_used_at")?,
        },
        user_id: row.try_get("user_id")?,
        team_id: row.try_get("team_id")?,
    })
}

impl Store {
    /// A new team; `None` when the name is taken.
    pub async fn create_team(&self, name: &str) -> Result<Option<String>> {
        let id = new_id();
        let inserted = sqlx::query("INSERT INTO teams (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(name)
            .bind(now_ms())
            .execute(&self.pool)
            .await;
        Ok(super::inserted(inserted)?.then_some(id))
    }

    /// A team's id by its name.
    pub async fn team_id(&self, name: &str) -> Result<Option<String>> {
        Ok(sqlx::query("SELECT id FROM teams WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get("id"))
            .transpose()?)
    }

    /// A new user; `None` when the name is taken.
    pub async fn create_user(
        &self,
        name: &str,
        password_hash: Option<&str>,
        site_admin: bool,
    ) -> Result<Option<String>> {
        let id = new_id();
        let inserted = sqlx::query(
            "INSERT INTO users (id, name, password_hash, site_admin, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(name)
        .bind(password_hash)
        .bind(site_admin as i64)
        .bind(now_ms())
        .execute(&self.pool)
        .await;
        Ok(super::inserted(inserted)?.then_some(id))
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        sqlx::query("SELECT id, name, password_hash FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| {
                Ok(User {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    password_hash: r.try_get("password_hash")?,
                })
            })
            .transpose()
    }

    pub async fn set_password(&self, user_id: &str, hash: &str) -> Result<()> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn user_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    /// Adds the user to the team with `role`, or changes their role.
    pub async fn set_membership(&self, team_id: &str, user_id: &str, role: Role) -> Result<()> {
        sqlx::query(
            "INSERT INTO memberships (team_id, user_id, role) VALUES ($1, $2, $3) \
             ON CONFLICT (team_id, user_id) DO UPDATE SET role = excluded.role",
        )
        .bind(team_id)
        .bind(user_id)
        .bind(role.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes the user from the team and ends their sessions in it;
    /// `false` when they were not a member.
    pub async fn remove_membership(&self, team_id: &str, user_id: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query("DELETE FROM memberships WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM sessions WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(gone > 0)
    }

    /// `(id, name, role)` rows of a membership query bound to `key`.
    async fn memberships(
        &self,
        sql: &'static str,
        key: &str,
    ) -> Result<Vec<(String, String, Role)>> {
        sqlx::query(sql)
            .bind(key)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                let role_text: String = r.try_get("role")?;
                Ok((r.try_get("id")?, r.try_get("name")?, role(&role_text)?))
            })
            .collect()
    }

    pub async fn members(&self, team_id: &str) -> Result<Vec<Member>> {
        let rows = self
            .memberships(
                "SELECT u.id, u.name, m.role FROM memberships m JOIN users u ON u.id = m.user_id \
                 WHERE m.team_id = $1 ORDER BY u.name",
                team_id,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(user_id, name, role)| Member {
                user_id,
                name,
                role,
            })
            .collect())
    }

    /// The teams a user belongs to, by name.
    pub async fn teams_of(&self, user_id: &str) -> Result<Vec<TeamRole>> {
        let rows = self
            .memberships(
                "SELECT t.id, t.name, m.role FROM memberships m JOIN teams t ON t.id = m.team_id \
                 WHERE m.user_id = $1 ORDER BY t.name",
                user_id,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name, role)| TeamRole { id, name, role })
            .collect())
    }

    /// Stores a token; returns its id.
    pub async fn insert_token(&self, t: &NewTokenRow<'_>) -> Result<String> {
        let id = new_id();
        sqlx::query(
            "INSERT INTO tokens (id, hash, name, kind, scope, user_id, team_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&id)
        .bind(t.hash)
        .bind(t.name)
        .bind(t.kind)
        .bind(t.scope.as_str())
        .bind(t.user_id)
        .bind(t.team_id)
        .bind(now_ms())
        .bind(t.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// Who a token's hash stands for, or why it is refused.
    pub async fn token_principal(
        &self,
        hash: &str,
    ) -> Result<std::result::Result<Principal, Refused>> {
        let row = sqlx::query(
            "SELECT t.id, t.kind, t.scope, t.user_id, t.team_id, t.expires_at, t.revoked_at, \
             t.last_used_at, t.name, u.name AS user_name, u.site_admin, tm.name AS team_name, m.role \
             FROM tokens t LEFT JOIN users u ON u.id = t.user_id \
             LEFT JOIN teams tm ON tm.id = t.team_id \
             LEFT JOIN memberships m ON m.team_id = t.team_id AND m.user_id = t.user_id \
             WHERE t.hash = $1 AND t.kind <> 'signin'",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Err(Refused::Unknown));
        };
        let now = now_ms();
        if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
            return Ok(Err(Refused::Revoked));
        }
        if row
            .try_get::<Option<i64>, _>("expires_at")?
            .is_some_and(|t| t <= now)
        {
            return Ok(Err(Refused::Expired));
        }
        let id: String = row.try_get("id")?;
        let kind: String = row.try_get("kind")?;
        let scope_text: String = row.try_get("scope")?;
        let user_id: Option<String> = row.try_get("user_id")?;
        let team_id: Option<String> = row.try_get("team_id")?;
        let role = match (kind.as_str(), row.try_get::<Option<String>, _>("role")?) {
            // A service token acts as a member of its team.
            ("service", _) => Role::Member,
            (_, Some(r)) => role(&r)?,
            // A site-wide worker token has no team to be a member of.
            (_, None) if team_id.is_none() => Role::Viewer,
            (_, None) => return Ok(Err(Refused::NotMember)),
        };
        // Written at most once a minute per token: reads stay reads.
        let last: Option<i64> = row.try_get("last_used_at")?;
        if last.is_none_or(|t| now - t > 60_000) {
            sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(&id)
                .execute(&self.pool)
                .await?;
        }
        let name: Option<String> = row.try_get("user_name")?;
        Ok(Ok(Principal {
            user_id,
            name: match name {
                Some(n) => n,
                None => row.try_get("name")?,
            },
            team_id,
            team_name: row
                .try_get::<Option<String>, _>("team_name")?
                .unwrap_or_default(),
            role,
            scope: scope(&scope_text)?,
            site_admin: row.try_get::<Option<i64>, _>("site_admin")?.unwrap_or(0) != 0,
            expires_at: row.try_get("expires_at")?,
            via: Via::Token { id },
        }))
    }

    /// Tokens, newest first: those of `team_id` (with `user_id`, only that
    /// user's), or every token on the server when both are `None`.
    pub async fn tokens(
        &self,
        team_id: Option<&str>,
        user_id: Option<&str>,
    ) -> Result<Vec<TokenInfo>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens t LEFT JOIN users u ON u.id = t.user_id \
             LEFT JOIN teams tm ON tm.id = t.team_id \
             WHERE t.kind <> 'signin' AND (CAST($1 AS TEXT) IS NULL OR t.team_id = $1) \
             AND (CAST($2 AS TEXT) IS NULL OR t.user_id = $2) ORDER BY t.created_at DESC, t.id DESC"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(team_id)
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| token_from_row(r).map(|t| t.info))
            .collect()
    }

    pub async fn token(&self, id: &str) -> Result<Option<TokenOwner>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens t LEFT JOIN users u ON u.id = t.user_id \
             LEFT JOIN teams tm ON tm.id = t.team_id WHERE t.id = $1 AND t.kind <> 'signin'"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| token_from_row(&r))
            .transpose()
    }

    /// Revokes a token; `false` when there is none or it already was.
    pub async fn revoke_token(&self, id: &str) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL AND kind <> 'signin'",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected()
            > 0)
    }

    /// Uses up a sign-in link's code: the user and team it signs into.
    pub async fn consume_sign_in(&self, hash: &str) -> Result<Option<(String, String)>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let used = sqlx::query(
            "UPDATE tokens SET revoked_at = $1, last_used_at = $1 WHERE hash = $2 AND kind = 'signin' \
             AND revoked_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if used == 0 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT user_id, team_id FROM tokens WHERE hash = $1")
            .bind(hash)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some((row.try_get("user_id")?, row.try_get("team_id")?)))
    }

    pub async fn create_session(
        &self,
        hash: &str,
        user_id: &str,
        team_id: &str,
        csrf: &str,
    ) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO sessions (hash, user_id, team_id, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(hash)
        .bind(user_id)
        .bind(team_id)
        .bind(csrf)
        .bind(now)
        .bind(now + crate::auth::SESSION_MS)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Who a session cookie's hash stands for.
    pub async fn session_principal(
        &self,
        hash: &str,
    ) -> Result<std::result::Result<Principal, Refused>> {
        let row = sqlx::query(
            "SELECT s.user_id, s.team_id, s.csrf, s.expires_at, u.name AS user_name, u.site_admin, \
             tm.name AS team_name, m.role FROM sessions s JOIN users u ON u.id = s.user_id \
             JOIN teams tm ON tm.id = s.team_id \
             LEFT JOIN memberships m ON m.team_id = s.team_id AND m.user_id = s.user_id \
             WHERE s.hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Err(Refused::Unknown));
        };
        if row.try_get::<i64, _>("expires_at")? <= now_ms() {
            return Ok(Err(Refused::Expired));
        }
        let Some(role_text) = row.try_get::<Option<String>, _>("role")? else {
            return Ok(Err(Refused::NotMember));
        };
        Ok(Ok(Principal {
            user_id: Some(row.try_get("user_id")?),
            name: row.try_get("user_name")?,
            team_id: Some(row.try_get("team_id")?),
            team_name: row.try_get("team_name")?,
            role: role(&role_text)?,
            scope: Scope::Write,
            site_admin: row.try_get::<i64, _>("site_admin")? != 0,
            expires_at: None,
            via: Via::Session {
                hash: hash.to_string(),
                csrf: row.try_get("csrf")?,
            },
        }))
    }

    pub async fn end_session(&self, hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE hash = $1")
            .bind(hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_session_team(&self, hash: &str, team_id: &str) -> Result<()> {
        sqlx::query("UPDATE sessions SET team_id = $1 WHERE hash = $2")
            .bind(team_id)
            .bind(hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
