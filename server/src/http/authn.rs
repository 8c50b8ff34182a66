//! The authentication layer in front of every private route: it resolves a
//! bearer token or the dashboard's session cookie into a `Principal`,
//! checks the CSRF header of cookie-authorized changes, and applies the
//! one rule of the team routes — reading needs read access, anything else
//! write access. Handlers add what is finer (admins only, own objects).

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;

use super::{ApiError, ApiResult, AppState};
use crate::auth::{self, Principal, Via};

/// Which rule a group of routes follows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Access {
    /// The signed-in user's own things (session, tokens): any credential.
    Account,
    /// A team's objects: GET and HEAD read, every other method writes.
    Team,
    /// What workers call: worker tokens only.
    Worker,
}

pub async fn layer(
    State((state, access)): State<(AppState, Access)>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let principal = resolve(&state, request.headers()).await?;
    if let Some(limiter) = &state.rate_limit
        && let Some(wait) = auth::throttled(limiter, &principal)
    {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        return Err(ApiError::TooManyRequests(
            secs,
            format!("too many requests with this token; try again in {secs} s"),
        ));
    }
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if let Via::Session { csrf, .. } = &principal.via
        && !reads
    {
        let sent = request
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok());
        if sent != Some(csrf.as_str()) {
            return Err(ApiError::Forbidden(
                "a change made with the session cookie needs the X-CSRF-Token header that GET /api/v1/session gives".into(),
            ));
        }
    }
    if access == Access::Worker && principal.scope != sslab_shared::auth::Scope::Worker {
        return Err(ApiError::Forbidden(format!(
            "only a worker token calls /worker/…; this is a {} token",
            principal.scope.as_str()
        )));
    }
    if access == Access::Team {
        if reads && !principal.can_read() {
            return Err(ApiError::Forbidden(denied_read(&principal)));
        }
        if !reads && !principal.can_write() {
            return Err(ApiError::Forbidden(denied_write(&principal)));
        }
    }
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

fn denied_read(p: &Principal) -> String {
    format!(
        "a {} token reads nothing else; use a read or write token",
        p.scope.as_str()
    )
}

fn denied_write(p: &Principal) -> String {
    if p.scope != sslab_shared::auth::Scope::Write {
        format!("a {} token cannot change anything", p.scope.as_str())
    } else {
        format!(
            "a {} of team `{}` can read but not change; ask a team admin for the member role",
            p.role.as_str(),
            p.team_name
        )
    }
}

/// The principal a request's credentials stand for; 401 without any.
pub async fn resolve(state: &AppState, headers: &HeaderMap) -> ApiResult<Principal> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let secret = bearer(value.as_bytes())?;
        return match state
            .store
            .token_principal(&auth::hash_secret(secret))
            .await?
        {
            Ok(p) => Ok(p),
            Err(why) => Err(ApiError::Unauthorized(why.message().into())),
        };
    }
    if let Some(secret) = session_cookie(headers) {
        return match state
            .store
            .session_principal(&auth::hash_secret(&secret))
            .await?
        {
            Ok(p) => Ok(p),
            Err(why) => Err(ApiError::Unauthorized(format!(
                "{}; sign in again",
                why.message()
            ))),
        };
    }
    Err(ApiError::Unauthorized(
        "sign in, or send `Authorization: Bearer sslab_…` with a token".into(),
    ))
}

/// The secret of `Authorization: Bearer <secret>`, exactly: no extra spaces,
/// no other scheme, no other prefix.
fn bearer(value: &[u8]) -> ApiResult<&str> {
    let malformed = |why: &str| {
        ApiError::Unauthorized(format!(
            "malformed Authorization header ({why}); send `Authorization: Bearer sslab_…`"
        ))
    };
    let text = std::str::from_utf8(value).map_err(|_| malformed("not text"))?;
    let Some(secret) = text.strip_prefix("Bearer ") else {
        return Err(malformed("the scheme must be `Bearer`"));
    };
    if secret != secret.trim() || secret.contains(char::is_whitespace) {
        return Err(malformed("the token has spaces around or in it"));
    }
    if !auth::is_secret_shaped(secret) {
        return Err(malformed("not an sslab token: they start with `sslab_`"));
    }
    Ok(secret)
}

/// The session secret in the `Cookie` header, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == auth::SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
}

/// Handlers behind the layer take the principal it resolved.
impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("no credentials".into()))
    }
}

/// A JSON body, refused unless sent as `application/json`: a browser sends
/// no other type across sites without asking first.
pub struct JsonText(pub String);

impl<S: Send + Sync> axum::extract::FromRequest<S> for JsonText {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        let text = String::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge("the body is larger than this route takes (2 MB)".into())
            } else {
                ApiError::BadRequest(format!("cannot read the body: {}", e.body_text()))
            }
        })?;
        // An empty body carries nothing to misread; handlers that need one say so.
        if !json && !text.is_empty() {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as JSON with `Content-Type: application/json`".into(),
            ));
        }
        Ok(JsonText(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers_are_taken_exactly() {
        let good = auth::new_secret();
        assert_eq!(bearer(format!("Bearer {good}").as_bytes()).unwrap(), good);
        for bad in [
            format!("Bearer  {good}"),
            format!("Bearer {good} "),
            format!("bearer {good}"),
            format!("Token {good}"),
            format!("Bearer {}", good.replace("sslab_", "ghp_")),
            format!("Bearer {}", &good[..good.len() - 1]),
            "Bearer".to_string(),
        ] {
            let e = bearer(bad.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("malformed"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; sslab_session=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("xyz"));
        h.insert(header::COOKIE, "sslab_sessionx=1".parse().unwrap());
        assert_eq!(session_cookie(&h), None);
    }
}
