//! `sslab admin …`: teams, users and tokens, straight in the database, for
//! operators and scripts. Never prompts; a token is printed alone on the
//! last line so that `| tail -1` captures it.

use std::io::Read;

use anyhow::{Context, bail};
use clap::Subcommand;
use sslab_shared::auth::{Role, Scope};

use crate::auth;
use crate::http::{issue_sign_in_code, issue_token};
use crate::store::{NewTokenRow, Store};

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// A new team.
    CreateTeam { name: String },
    /// A new user in a team; prints a one-time sign-in link.
    CreateUser {
        name: String,
        #[arg(long)]
        team: String,
        /// viewer | member | admin
        #[arg(long, value_parser = parse_role, default_value = "member")]
        role: Role,
        /// Read the password from standard input (one line).
        #[arg(long)]
        password_stdin: bool,
        /// The server's address, for the sign-in link.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
    },
    /// A token for a user (personal) or, with `--site`, a site-wide worker token.
    CreateToken {
        #[arg(long, required_unless_present = "site")]
        user: Option<String>,
        /// The user's team; their only team when not given.
        #[arg(long)]
        team: Option<String>,
        /// read | write | worker | metrics
        #[arg(long, value_parser = parse_scope, default_value = "write")]
        scope: Scope,
        #[arg(long, default_value = "cli")]
        name: String,
        /// Days until it stops working.
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// A worker token for every team's jobs.
        #[arg(long, conflicts_with_all = ["user", "team"])]
        site: bool,
    },
    /// A new one-time sign-in link for an existing user (24 h).
    SignInLink {
        name: String,
        /// The team the link signs into; their only team when not given.
        #[arg(long)]
        team: Option<String>,
        /// The server's address, for the link.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
    },
    /// Sets a user's password, read from standard input (one line).
    SetPassword {
        name: String,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Every token: id, name, scope, owner, team, and whether it still works.
    ListTokens,
    /// Stops a token from working.
    RevokeToken { id: String },
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("`{text}` is not a role; use viewer, member or admin"))
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    Scope::parse(text)
        .ok_or_else(|| format!("`{text}` is not a scope; use read, write, worker or metrics"))
}

pub async fn run(command: &AdminCommand, store: &Store) -> anyhow::Result<()> {
    match command {
        AdminCommand::CreateTeam { name } => {
            auth::check_name("team", name).map_err(anyhow::Error::msg)?;
            match store.create_team(name).await? {
                Some(id) => println!("created team `{name}` ({id})"),
                None => bail!("a team named `{name}` exists already"),
            }
        }
        AdminCommand::CreateUser {
            name,
            team,
            role,
            password_stdin,
            url,
        } => {
            auth::check_name("user", name).map_err(anyhow::Error::msg)?;
            let team_id = team_id(store, team).await?;
            let hash = if *password_stdin {
                Some(read_password()?)
            } else {
                None
            };
            let Some(user_id) = store.create_user(name, hash.as_deref(), false).await? else {
                bail!("a user named `{name}` exists already");
            };
            store.set_membership(&team_id, &user_id, *role).await?;
            let code = issue_sign_in_code(store, &user_id, &team_id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("created user `{name}`, {} of team `{team}`", role.as_str());
            println!("one-time sign-in link (24 h):");
            println!("{}/signin?code={code}", url.trim_end_matches('/'));
        }
        AdminCommand::CreateToken {
            user,
            team,
            scope,
            name,
            expires_in_days,
            site,
        } => {
            auth::check_name("token", name).map_err(anyhow::Error::msg)?;
            let (user_id, team_id) = if *site {
                if *scope != Scope::Worker {
                    bail!("a site-wide token is a worker token: add `--scope worker`");
                }
                (None, None)
            } else {
                let user_name = user.as_deref().unwrap_or_default();
                let u = store
                    .user_by_name(user_name)
                    .await?
                    .with_context(|| format!("no user named `{user_name}`"))?;
                let team_id = match team {
                    Some(t) => team_id(store, t).await?,
                    None => {
                        let teams = store.teams_of(&u.id).await?;
                        match teams.as_slice() {
                            [only] => only.id.clone(),
                            [] => bail!("`{user_name}` belongs to no team"),
                            _ => bail!("`{user_name}` is in several teams: add `--team`"),
                        }
                    }
                };
                if !store.teams_of(&u.id).await?.iter().any(|t| t.id == team_id) {
                    bail!("`{user_name}` is not a member of that team");
                }
                (Some(u.id), Some(team_id))
            };
            let expires_at =
                expires_in_days.map(|d| crate::store::now_ms() + i64::from(d) * 24 * 3600 * 1000);
            let created = issue_token(
                store,
                &NewTokenRow {
                    hash: "",
                    name,
                    kind: "personal",
                    scope: *scope,
                    user_id: user_id.as_deref(),
                    team_id: team_id.as_deref(),
                    expires_at,
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "token {} ({}, scope {}); it is shown only now:",
                created.token.id,
                created.token.name,
                created.token.scope.as_str()
            );
            println!("{}", created.secret);
        }
        AdminCommand::SignInLink { name, team, url } => {
            let user = store
                .user_by_name(name)
                .await?
                .with_context(|| format!("no user named `{name}`"))?;
            let teams = store.teams_of(&user.id).await?;
            let team_id = match team {
                Some(t) => {
                    let id = team_id(store, t).await?;
                    if !teams.iter().any(|m| m.id == id) {
                        bail!("`{name}` is not a member of `{t}`");
                    }
                    id
                }
                None => match teams.as_slice() {
                    [only] => only.id.clone(),
                    [] => bail!("`{name}` belongs to no team"),
                    _ => bail!("`{name}` is in several teams: add `--team`"),
                },
            };
            let code = issue_sign_in_code(store, &user.id, &team_id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("one-time sign-in link for `{name}` (24 h):");
            println!("{}/signin?code={code}", url.trim_end_matches('/'));
        }
        AdminCommand::SetPassword { name, .. } => {
            let user = store
                .user_by_name(name)
                .await?
                .with_context(|| format!("no user named `{name}`"))?;
            let hash = read_password()?;
            store.set_password(&user.id, &hash).await?;
            println!("set the password of `{name}`");
        }
        AdminCommand::ListTokens => {
            println!(
                "{:<17} {:<16} {:<8} {:<8} {:<16} {:<16} state",
                "id", "name", "kind", "scope", "user", "team"
            );
            for t in store.tokens(None, None).await? {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else if t.expires_at.is_some_and(|e| e <= crate::store::now_ms()) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<17} {:<16} {:<8} {:<8} {:<16} {:<16} {state}",
                    t.id,
                    t.name,
                    t.kind,
                    t.scope.as_str(),
                    t.user.as_deref().unwrap_or("-"),
                    t.team.as_deref().unwrap_or("(site)"),
                );
            }
        }
        AdminCommand::RevokeToken { id } => {
            if store.revoke_token(id).await? {
                println!("revoked token {id}");
            } else {
                bail!("no active token with id `{id}`");
            }
        }
    }
    Ok(())
}

/// A password from standard input (its line end dropped), checked and hashed.
fn read_password() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the password from standard input")?;
    let password = text.trim_end_matches(['\r', '\n']);
    auth::check_password(password).map_err(anyhow::Error::msg)?;
    auth::hash_password(password)
}

async fn team_id(store: &Store, name: &str) -> anyhow::Result<String> {
    store
        .team_id(name)
        .await?
        .with_context(|| format!("no team named `{name}`"))
}

/// On the first start of an empty database: the admin `admin` in the
/// default team, with a one-time sign-in link and a token, printed.
pub async fn bootstrap(store: &Store, base: &str) -> anyhow::Result<()> {
    if store.user_count().await? > 0 {
        return Ok(());
    }
    let team = crate::store::Owner::DEFAULT_TEAM;
    let Some(user_id) = store.create_user("admin", None, true).await? else {
        return Ok(());
    };
    store.set_membership(team, &user_id, Role::Admin).await?;
    let code = issue_sign_in_code(store, &user_id, team)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let token = issue_token(
        store,
        &NewTokenRow {
            hash: "",
            name: "first-start",
            kind: "personal",
            scope: Scope::Write,
            user_id: Some(&user_id),
            team_id: Some(team),
            expires_at: None,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("sslab first start: created the user `admin`, admin of team `default`");
    println!("sslab sign-in link (once, 24 h): {base}/signin?code={code}");
    println!("sslab admin token: {}", token.secret);
    Ok(())
}
