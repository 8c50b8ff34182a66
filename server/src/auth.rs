//! Who is asking, and what they may do: secrets and their hashes, passwords,
//! the principal every authorized request carries, and the sign-in back-off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sslab_shared::auth::{Role, Scope};

/// Every token starts with this, so that a leaked one is easy to spot.
pub const TOKEN_PREFIX: &str = "sslab_";
/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "sslab_session";
/// How long a dashboard session lasts.
pub const SESSION_MS: i64 = 14 * 24 * 3600 * 1000;
/// How long a sign-in link works (once).
pub const SIGN_IN_LINK_MS: i64 = 24 * 3600 * 1000;

/// A new secret: 61 random hex digits after the prefix (two v4 UUIDs, 244
/// random bits).
pub fn new_secret() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{TOKEN_PREFIX}{a}{}", &b[..29])
}

/// Secrets are random, so one SHA-256 is enough to store them safely.
pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `text` has the shape of a secret this server issues.
pub fn is_secret_shaped(text: &str) -> bool {
    text.strip_prefix(TOKEN_PREFIX)
        .is_some_and(|rest| rest.len() == 61 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;
    let salt = SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes())
        .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
        .to_string())
}

/// A hash to verify against when the account has none, so that an unknown
/// name takes as long to refuse as a wrong password.
pub fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("no account has this password").unwrap_or_default())
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::PasswordVerifier;
    argon2::password_hash::PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A password the server accepts.
pub fn check_password(password: &str) -> Result<(), String> {
    if password.chars().count() < 8 {
        return Err("a password has at least 8 characters".into());
    }
    if password.len() > 1024 {
        return Err("a password has at most 1024 bytes".into());
    }
    Ok(())
}

/// A user, team or token name the server accepts.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a {what} name is 1 to 64 letters, digits, `-`, `_`, `.` or `@`; got `{name}`"
        ))
    }
}

/// How the request proved who it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Via {
    Token {
        id: String,
    },
    /// The dashboard's cookie; state-changing requests also send `csrf`.
    Session {
        hash: String,
        csrf: String,
    },
}

/// The one asking: resolved once per request by the authentication layer.
#[derive(Debug, Clone)]
pub struct Principal {
    /// None for a team's service token.
    pub user_id: Option<String>,
    pub name: String,
    /// None only for a site-wide worker token.
    pub team_id: Option<String>,
    pub team_name: String,
    pub role: Role,
    pub scope: Scope,
    /// The operator's account (the first start's admin): sees `/metrics`.
    pub site_admin: bool,
    /// When the token stops working; none for sessions and lasting tokens.
    pub expires_at: Option<i64>,
    pub via: Via,
}

impl Principal {
    /// The team every object it reads or creates belongs to.
    pub fn team(&self) -> &str {
        self.team_id.as_deref().unwrap_or("")
    }

    pub fn can_read(&self) -> bool {
        self.team_id.is_some() && matches!(self.scope, Scope::Read | Scope::Write)
    }

    pub fn can_write(&self) -> bool {
        self.team_id.is_some() && self.scope == Scope::Write && self.role >= Role::Member
    }

    pub fn is_admin(&self) -> bool {
        self.team_id.is_some() && self.scope == Scope::Write && self.role == Role::Admin
    }

    /// Who a created object records as its creator: the user, or for a
    /// team's service token the token itself.
    pub fn actor(&self) -> Option<String> {
        match (&self.user_id, &self.via) {
            (Some(user), _) => Some(user.clone()),
            (None, Via::Token { id }) => Some(format!("token:{id}")),
            (None, Via::Session { .. }) => None,
        }
    }

    /// Members change what they created; admins anything in the team.
    pub fn may_change(&self, created_by: Option<&str>) -> bool {
        self.is_admin()
            || (self.can_write() && created_by.is_some() && created_by == self.actor().as_deref())
    }
}

/// Requests per token (or session) over time; worker tokens are not counted.
pub type Limiter = governor::DefaultKeyedRateLimiter<String>;

/// `per_second` sustained with bursts of `burst`; none when `per_second` is 0.
pub fn limiter(per_second: u32, burst: u32) -> Option<Arc<Limiter>> {
    let rate = std::num::NonZeroU32::new(per_second)?;
    let burst = std::num::NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
    Some(Arc::new(Limiter::keyed(
        governor::Quota::per_second(rate).allow_burst(burst),
    )))
}

/// How long the principal must wait before its next request, if at all.
pub fn throttled(limiter: &Limiter, p: &Principal) -> Option<Duration> {
    if p.scope == Scope::Worker {
        return None;
    }
    let key = match &p.via {
        Via::Token { id } => format!("t:{id}"),
        Via::Session { hash, .. } => format!("s:{hash}"),
    };
    limiter.check_key(&key).err().map(|not_until| {
        use governor::clock::Clock;
        not_until.wait_time_from(governor::clock::DefaultClock::default().now())
    })
}

/// Slows down guessing: after a few failures for one account or one
/// address, each further attempt waits twice as long as the last, up to a
/// minute. Kept in memory: a restart forgives.
#[derive(Clone, Default)]
pub struct Backoff {
    failures: Arc<Mutex<HashMap<String, (u32, Instant)>>>,
}

/// Failures before the back-off starts.
const FREE_FAILURES: u32 = 5;

impl Backoff {
    /// How long `key` must still wait, if at all.
    pub fn wait(&self, key: &str) -> Option<Duration> {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let (count, last) = map.get(key)?;
        if *count < FREE_FAILURES {
            return None;
        }
        let delay =
            Duration::from_secs(1 << (count - FREE_FAILURES).min(6)).min(Duration::from_secs(60));
        delay.checked_sub(last.elapsed())
    }

    pub fn failed(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, (_, last)| last.elapsed() < Duration::from_secs(3600));
        }
        let entry = map.entry(key.to_string()).or_insert((0, Instant::now()));
        entry.0 += 1;
        entry.1 = Instant::now();
    }

    /// Takes back one counted attempt (it succeeded).
    pub fn forgive(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(key) {
            entry.0 = entry.0.saturating_sub(1);
            if entry.0 == 0 {
                map.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_new_each_time_and_recognised() {
        let a = new_secret();
        assert!(is_secret_shaped(&a), "{a}");
        assert_ne!(a, new_secret());
        assert!(!is_secret_shaped(&format!(" {a}")));
        assert!(!is_secret_shaped(&a.replace(TOKEN_PREFIX, "ghp_")));
        assert_eq!(hash_secret(&a).len(), 64);
    }

    #[test]
    fn passwords_verify_only_themselves() {
        let h = hash_password("correct horse").unwrap();
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsE", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn backoff_starts_after_free_failures_and_clears_on_success() {
        let b = Backoff::default();
        for _ in 0..FREE_FAILURES - 1 {
            b.failed("u");
        }
        assert!(b.wait("u").is_none());
        b.failed("u");
        assert!(b.wait("u").is_some());
        // A success takes back its own attempt, not the ones before it.
        b.failed("u");
        b.forgive("u");
        assert!(b.wait("u").is_some());
        for _ in 0..FREE_FAILURES {
            b.forgive("u");
        }
        assert!(b.wait("u").is_none());
    }

    #[test]
    fn roles_and_scopes_combine() {
        let p = |role, scope| Principal {
            user_id: Some("u".into()),
            name: "n".into(),
            team_id: Some("t".into()),
            team_name: "t".into(),
            role,
            scope,
            site_admin: false,
            expires_at: None,
            via: Via::Token { id: "x".into() },
        };
        assert!(!p(Role::Viewer, Scope::Write).can_write());
        assert!(!p(Role::Admin, Scope::Read).can_write());
        assert!(p(Role::Admin, Scope::Read).can_read());
        assert!(!p(Role::Admin, Scope::Worker).can_read());
        assert!(p(Role::Member, Scope::Write).may_change(Some("u")));
        assert!(!p(Role::Member, Scope::Write).may_change(Some("v")));
        assert!(!p(Role::Member, Scope::Write).may_change(None));
        assert!(p(Role::Admin, Scope::Write).may_change(None));
        // A service token changes what it created.
        let mut service = p(Role::Member, Scope::Write);
        service.user_id = None;
        assert!(service.may_change(Some("token:x")));
        assert!(!service.may_change(Some("u")));
    }
}
