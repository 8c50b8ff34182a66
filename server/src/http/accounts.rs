//! Signing in and out, the signed-in user, their tokens, and the team's
//! members.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use sslab_shared::auth::{
    AddMember, AddedMember, CreatedToken, Me, Member, NewToken, Role, Scope, SignIn, SwitchTeam,
    TeamRole, TokenInfo,
};

use super::authn::JsonText;
use super::{ApiError, ApiResult, AppState};
use crate::auth::{self, Principal, Via};
use crate::store::{NewTokenRow, Store};

/// Routes anyone may call.
pub fn public_router() -> Router<AppState> {
    Router::new().route("/sign-in", post(sign_in))
}

/// Routes any credential may call: its own session and tokens.
pub fn account_router() -> Router<AppState> {
    Router::new()
        .route("/session", get(me))
        .route("/session/team", post(switch_team))
        .route("/session/password", post(set_password))
        .route("/sign-out", post(sign_out))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}/revoke", post(revoke_token))
}

/// Routes of the team's own: who is in it.
pub fn team_router() -> Router<AppState> {
    Router::new()
        .route("/members", get(members).post(add_member))
        .route("/members/{user_id}", delete(remove_member))
}

/// The address a request came from, when the server knows it: the peer,
/// or behind a proxy the operator trusts (`--trusted-proxy`), the last
/// address that proxy added to `X-Forwarded-For`.
struct Peer(Option<IpAddr>);

impl FromRequestParts<AppState> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let forwarded = || {
            parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|a| a.trim().parse::<IpAddr>().ok())
                .next_back()
        };
        Ok(Peer(match peer {
            Some(ip) if state.trusted_proxies.contains(&ip) => forwarded().or(peer),
            _ => peer,
        }))
    }
}

#[utoipa::path(
    operation_id = "sign_in",
    post,
    path = "/sign-in",
    tag = "accounts",
    request_body = sslab_shared::auth::SignIn,
    responses((status = 200, description = "signed in; sets the session cookie", body = sslab_shared::auth::Me), (status = 401, description = "wrong name or password, or a used link", body = sslab_shared::api::ErrorBody), (status = 415, description = "not JSON", body = sslab_shared::api::ErrorBody), (status = 429, description = "too many failures: wait Retry-After seconds", body = sslab_shared::api::ErrorBody)),
    security(())
)]
async fn sign_in(
    State(state): State<AppState>,
    Peer(peer): Peer,
    JsonText(body): JsonText,
) -> ApiResult<Response> {
    let req: SignIn = sslab_shared::error::from_json(&body).map_err(ApiError::InvalidSpec)?;
    let address_key = format!("ip:{}", peer.map_or("?".into(), |ip| ip.to_string()));
    // Every attempt counts before it is checked, so that parallel guesses
    // meet the back-off too; a success takes back only its own count.
    check_backoff(&state, &address_key)?;
    state.backoff.failed(&address_key);
    let (user_id, team_id) = if !req.code.is_empty() {
        match state
            .store
            .consume_sign_in(&auth::hash_secret(req.code.trim()))
            .await?
        {
            Some(found) => found,
            None => {
                return Err(ApiError::Unauthorized(
                    "this sign-in link is unknown, used or expired; ask an admin for a new one"
                        .into(),
                ));
            }
        }
    } else {
        if auth::check_name("user", &req.name).is_err() || req.password.len() > 1024 {
            return Err(ApiError::Unauthorized("wrong name or password".into()));
        }
        let account_key = format!("user:{}", req.name);
        check_backoff(&state, &account_key)?;
        state.backoff.failed(&account_key);
        let user = state.store.user_by_name(&req.name).await?;
        // Hashing runs on a blocking thread: it takes tens of milliseconds by
        // design, and as long for a name that does not exist.
        let password = req.password.clone();
        let hash = user.as_ref().and_then(|u| u.password_hash.clone());
        let ok = tokio::task::spawn_blocking(move || match hash {
            Some(h) => auth::verify_password(&password, &h),
            None => {
                auth::verify_password(&password, auth::dummy_hash());
                false
            }
        })
        .await
        .unwrap_or(false);
        let Some(user) = user.filter(|_| ok) else {
            return Err(ApiError::Unauthorized("wrong name or password".into()));
        };
        state.backoff.forgive(&account_key);
        let teams = state.store.teams_of(&user.id).await?;
        let Some(team) = teams.first() else {
            return Err(ApiError::Forbidden(format!(
                "`{}` belongs to no team yet; ask an admin to add them",
                user.name
            )));
        };
        (user.id, team.id.clone())
    };
    state.backoff.forgive(&address_key);
    let secret = auth::new_secret();
    let csrf = uuid::Uuid::new_v4().simple().to_string();
    let hash = auth::hash_secret(&secret);
    state
        .store
        .create_session(&hash, &user_id, &team_id, &csrf)
        .await?;
    let principal = state
        .store
        .session_principal(&hash)
        .await?
        .map_err(|why| ApiError::Unauthorized(why.message().into()))?;
    let me = me_of(&state.store, &principal).await?;
    let cookie = format!(
        "{}={secret}; Path=/; HttpOnly; SameSite=Strict{}; Max-Age={}",
        auth::SESSION_COOKIE,
        if state.secure_cookies { "; Secure" } else { "" },
        auth::SESSION_MS / 1000
    );
    Ok((
        [(
            header::SET_COOKIE,
            HeaderValue::try_from(cookie).map_err(anyhow::Error::new)?,
        )],
        Json(me),
    )
        .into_response())
}

fn check_backoff(state: &AppState, key: &str) -> ApiResult<()> {
    match state.backoff.wait(key) {
        Some(wait) => Err(ApiError::TooManyRequests(
            wait.as_secs().max(1),
            format!(
                "too many failed sign-ins; try again in {} s",
                wait.as_secs().max(1)
            ),
        )),
        None => Ok(()),
    }
}

async fn me_of(store: &Store, p: &Principal) -> ApiResult<Me> {
    let teams = match &p.user_id {
        Some(user) => store.teams_of(user).await?,
        None => Vec::new(),
    };
    Ok(Me {
        user_id: p.user_id.clone(),
        name: p.name.clone(),
        team: TeamRole {
            id: p.team().to_string(),
            name: p.team_name.clone(),
            role: p.role,
        },
        teams,
        scope: p.scope,
        csrf: match &p.via {
            Via::Session { csrf, .. } => Some(csrf.clone()),
            Via::Token { .. } => None,
        },
    })
}

#[utoipa::path(
    operation_id = "get_session",
    get,
    path = "/session",
    tag = "accounts",
    responses((status = 200, description = "OK", body = sslab_shared::auth::Me), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn me(State(state): State<AppState>, p: Principal) -> ApiResult<Json<Me>> {
    Ok(Json(me_of(&state.store, &p).await?))
}

#[utoipa::path(
    operation_id = "sign_out",
    post,
    path = "/sign-out",
    tag = "accounts",
    responses((status = 204, description = "signed out"), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn sign_out(State(state): State<AppState>, p: Principal) -> ApiResult<Response> {
    if let Via::Session { hash, .. } = &p.via {
        state.store.end_session(hash).await?;
    }
    let cookie = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict{}; Max-Age=0",
        auth::SESSION_COOKIE,
        if state.secure_cookies { "; Secure" } else { "" },
    );
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

#[utoipa::path(
    operation_id = "switch_team",
    post,
    path = "/session/team",
    tag = "accounts",
    request_body = sslab_shared::auth::SwitchTeam,
    responses((status = 200, description = "OK", body = sslab_shared::auth::Me), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 400, description = "tokens belong to one team", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn switch_team(
    State(state): State<AppState>,
    p: Principal,
    JsonText(body): JsonText,
) -> ApiResult<Json<Me>> {
    let req: SwitchTeam = sslab_shared::error::from_json(&body).map_err(ApiError::InvalidSpec)?;
    let Via::Session { hash, .. } = &p.via else {
        return Err(ApiError::BadRequest(
            "a token belongs to one team; make a token in the other team instead".into(),
        ));
    };
    let teams = match &p.user_id {
        Some(user) => state.store.teams_of(user).await?,
        None => Vec::new(),
    };
    let Some(team) = teams
        .iter()
        .find(|t| t.id == req.team || t.name == req.team)
    else {
        return Err(ApiError::NotFound(format!(
            "you are in no team `{}`",
            req.team
        )));
    };
    state.store.set_session_team(hash, &team.id).await?;
    let p = state
        .store
        .session_principal(hash)
        .await?
        .map_err(|why| ApiError::Unauthorized(why.message().into()))?;
    Ok(Json(me_of(&state.store, &p).await?))
}

#[utoipa::path(
    operation_id = "set_password",
    post,
    path = "/session/password",
    tag = "accounts",
    request_body = sslab_shared::auth::SetPassword,
    responses((status = 204, description = "set"), (status = 400, description = "only a signed-in user sets a password", body = sslab_shared::api::ErrorBody), (status = 422, description = "too short or too long", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
/// Sets the signed-in user's password (after a sign-in link, say).
async fn set_password(
    State(state): State<AppState>,
    p: Principal,
    JsonText(body): JsonText,
) -> ApiResult<StatusCode> {
    let req: sslab_shared::auth::SetPassword =
        sslab_shared::error::from_json(&body).map_err(ApiError::InvalidSpec)?;
    let (Via::Session { .. }, Some(user)) = (&p.via, &p.user_id) else {
        return Err(ApiError::BadRequest(
            "sign in to the dashboard to set your password; tokens cannot".into(),
        ));
    };
    auth::check_password(&req.password)
        .map_err(|m| ApiError::InvalidSpec(sslab_shared::SpecError::new("password", m)))?;
    let password = req.password;
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(anyhow::Error::new)??;
    state.store.set_password(user, &hash).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Your own tokens in this team; an admin sees every token of the team.
#[utoipa::path(
    operation_id = "list_tokens",
    get,
    path = "/tokens",
    tag = "accounts",
    responses((status = 200, description = "yours; an admin's: the team's", body = Vec<sslab_shared::auth::TokenInfo>), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn list_tokens(
    State(state): State<AppState>,
    p: Principal,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    let Some(team) = &p.team_id else {
        return Err(ApiError::Forbidden(
            "a site-wide worker token lists nothing".into(),
        ));
    };
    if p.is_admin() {
        return Ok(Json(state.store.tokens(Some(team), None).await?));
    }
    match p.user_id.as_deref() {
        Some(user) => Ok(Json(state.store.tokens(Some(team), Some(user)).await?)),
        // A service token owns no tokens.
        None => Ok(Json(Vec::new())),
    }
}

#[utoipa::path(
    operation_id = "create_token",
    post,
    path = "/tokens",
    tag = "accounts",
    request_body = sslab_shared::auth::NewToken,
    responses((status = 201, description = "the secret, shown once", body = sslab_shared::auth::CreatedToken), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn create_token(
    State(state): State<AppState>,
    p: Principal,
    JsonText(body): JsonText,
) -> ApiResult<Response> {
    let req: NewToken = sslab_shared::error::from_json(&body).map_err(ApiError::InvalidSpec)?;
    auth::check_name("token", &req.name)
        .map_err(|m| ApiError::InvalidSpec(sslab_shared::SpecError::new("name", m)))?;
    if p.scope != Scope::Write || p.team_id.is_none() {
        return Err(ApiError::Forbidden(format!(
            "a {} token cannot make tokens",
            p.scope.as_str()
        )));
    }
    if (req.service || req.scope == Scope::Worker) && !p.is_admin() {
        return Err(ApiError::Forbidden(
            "only a team admin makes service and worker tokens".into(),
        ));
    }
    // Metrics count every team's jobs: the operator's to hand out.
    if req.scope == Scope::Metrics && !p.site_admin {
        return Err(ApiError::Forbidden(
            "only a site admin makes metrics tokens".into(),
        ));
    }
    if !req.service && p.user_id.is_none() {
        return Err(ApiError::Forbidden(
            "a service token cannot make personal tokens".into(),
        ));
    }
    let asked = req
        .expires_in_days
        .map(|d| crate::store::now_ms() + i64::from(d) * 24 * 3600 * 1000);
    // A token cannot make one that outlives it.
    let expires_at = match (asked, p.expires_at) {
        (Some(a), Some(own)) => Some(a.min(own)),
        (a, own) => a.or(own),
    };
    let created = issue_token(
        &state.store,
        &NewTokenRow {
            hash: "",
            name: &req.name,
            kind: if req.service { "service" } else { "personal" },
            scope: req.scope,
            user_id: if req.service {
                None
            } else {
                p.user_id.as_deref()
            },
            team_id: p.team_id.as_deref(),
            expires_at,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Stores a new token (`row.hash` is ignored) and returns it with its secret.
pub async fn issue_token(store: &Store, row: &NewTokenRow<'_>) -> ApiResult<CreatedToken> {
    let secret = auth::new_secret();
    let hash = auth::hash_secret(&secret);
    let id = store
        .insert_token(&NewTokenRow {
            hash: &hash,
            ..*row
        })
        .await?;
    let owner = store
        .token(&id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the new token vanished"))?;
    Ok(CreatedToken {
        token: owner.info,
        secret,
    })
}

/// A one-time sign-in code for `user_id` into `team_id`.
pub async fn issue_sign_in_code(store: &Store, user_id: &str, team_id: &str) -> ApiResult<String> {
    let secret = auth::new_secret();
    store
        .insert_token(&NewTokenRow {
            hash: &auth::hash_secret(&secret),
            name: "sign-in link",
            kind: "signin",
            scope: Scope::Write,
            user_id: Some(user_id),
            team_id: Some(team_id),
            expires_at: Some(crate::store::now_ms() + auth::SIGN_IN_LINK_MS),
        })
        .await?;
    Ok(secret)
}

/// Revokes your own token, or as an admin any token of the team.
#[utoipa::path(
    operation_id = "revoke_token",
    post,
    path = "/tokens/{id}/revoke",
    tag = "accounts",
    params(("id" = String, Path, description = "the token's id")),
    responses((status = 200, description = "OK", body = sslab_shared::auth::TokenInfo), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn revoke_token(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenInfo>> {
    let missing = || ApiError::NotFound(format!("no token with id `{id}`"));
    let token = state.store.token(&id).await?.ok_or_else(missing)?;
    let same_team = token.team_id.is_some() && token.team_id == p.team_id;
    let own = token.user_id.is_some() && token.user_id == p.user_id;
    if p.scope != Scope::Write || !same_team || !(own || p.is_admin()) {
        return Err(missing());
    }
    state.store.revoke_token(&id).await?;
    let token = state.store.token(&id).await?.ok_or_else(missing)?;
    Ok(Json(token.info))
}

#[utoipa::path(
    operation_id = "list_members",
    get,
    path = "/members",
    tag = "accounts",
    responses((status = 200, description = "OK", body = Vec<sslab_shared::auth::Member>), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn members(State(state): State<AppState>, p: Principal) -> ApiResult<Json<Vec<Member>>> {
    Ok(Json(state.store.members(p.team()).await?))
}

fn require_admin(p: &Principal) -> ApiResult<()> {
    if p.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "only an admin of team `{}` manages its members",
            p.team_name
        )))
    }
}

/// Adds a user to the team (creating them, with a one-time sign-in link,
/// when the name is new) or changes their role.
#[utoipa::path(
    operation_id = "add_member",
    post,
    path = "/members",
    tag = "accounts",
    request_body = sslab_shared::auth::AddMember,
    responses((status = 201, description = "a new user, with a sign-in link", body = sslab_shared::auth::AddedMember), (status = 200, description = "the role changed", body = sslab_shared::auth::AddedMember), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 409, description = "conflicts with the object's state", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn add_member(
    State(state): State<AppState>,
    p: Principal,
    JsonText(body): JsonText,
) -> ApiResult<Response> {
    require_admin(&p)?;
    let req: AddMember = sslab_shared::error::from_json(&body).map_err(ApiError::InvalidSpec)?;
    auth::check_name("user", &req.name)
        .map_err(|m| ApiError::InvalidSpec(sslab_shared::SpecError::new("name", m)))?;
    let (user_id, fresh) = match state.store.user_by_name(&req.name).await? {
        Some(u) => (u.id, false),
        // Accounts are the site's: a team admin who could make them could
        // make one that another team later adds, and sign in as it.
        None if !p.site_admin => {
            return Err(ApiError::NotFound(format!(
                "no user named `{}`; the operator creates accounts (sslab admin create-user)",
                req.name
            )));
        }
        None => match state.store.create_user(&req.name, None, false).await? {
            Some(id) => (id, true),
            None => {
                return Err(ApiError::Conflict(format!(
                    "`{}` was created meanwhile; try again",
                    req.name
                )));
            }
        },
    };
    if Some(&user_id) == p.user_id.as_ref() && req.role != Role::Admin {
        return Err(ApiError::Conflict(
            "you cannot lower your own role; another admin can".into(),
        ));
    }
    state
        .store
        .set_membership(p.team(), &user_id, req.role)
        .await?;
    let sign_in_link = if fresh {
        let code = issue_sign_in_code(&state.store, &user_id, p.team()).await?;
        Some(format!("/signin?code={code}"))
    } else {
        None
    };
    let status = if fresh {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(AddedMember {
            member: Member {
                user_id,
                name: req.name,
                role: req.role,
            },
            sign_in_link,
        }),
    )
        .into_response())
}

#[utoipa::path(
    operation_id = "remove_member",
    delete,
    path = "/members/{user_id}",
    tag = "accounts",
    params(("user_id" = String, Path)),
    responses((status = 204, description = "removed"), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 409, description = "conflicts with the object's state", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn remove_member(
    State(state): State<AppState>,
    p: Principal,
    Path(user_id): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&p)?;
    if Some(&user_id) == p.user_id.as_ref() {
        return Err(ApiError::Conflict(
            "you cannot remove yourself; another admin can".into(),
        ));
    }
    if !state.store.remove_membership(p.team(), &user_id).await? {
        return Err(ApiError::NotFound(format!(
            "no member with id `{user_id}` in this team"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}
