//! Accounts as the API shows them: roles, token scopes, the signed-in user,
//! tokens and team members.

use serde::{Deserialize, Serialize};

/// What a member may do in a team; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// Reads everything in the team.
    Viewer,
    /// Also creates, and cancels or deletes what they created.
    Member,
    /// Also acts on everything in the team, its members and its tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Member, Role::Admin];

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// What a token may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Scope {
    /// Reads only, whatever the owner's role.
    Read,
    /// What the owner's role allows.
    #[default]
    Write,
    /// Claims and reports jobs (remote workers); nothing else.
    Worker,
    /// Reads `/metrics`; nothing else.
    Metrics,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Write, Scope::Worker, Scope::Metrics];

    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Worker => "worker",
            Scope::Metrics => "metrics",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A team and the role the signed-in user has in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TeamRole {
    pub id: String,
    pub name: String,
    pub role: Role,
}

/// `GET /session`: who is signed in, in which team.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Me {
    pub user_id: Option<String>,
    /// The user's name, or the token's for a service token.
    pub name: String,
    pub team: TeamRole,
    pub teams: Vec<TeamRole>,
    pub scope: Scope,
    /// Send it back as `X-CSRF-Token` with every state-changing request
    /// that the session cookie authorizes; none for tokens.
    pub csrf: Option<String>,
}

/// `POST /session`: a name and password, or the code of a sign-in link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignIn {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub code: String,
}

/// `POST /session/password`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    pub password: String,
}

/// `POST /session/team`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SwitchTeam {
    pub team: String,
}

/// A token as lists show it; the secret is never shown again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    /// `personal` (acts as its user) or `service` (the team's own).
    pub kind: String,
    pub scope: Scope,
    /// The owner's name; none for service tokens.
    pub user: Option<String>,
    /// None for a site-wide worker token.
    pub team: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// `POST /tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewToken {
    pub name: String,
    #[serde(default)]
    pub scope: Scope,
    /// A team service token instead of a personal one (admins).
    #[serde(default)]
    pub service: bool,
    /// Days until it stops working; none: until revoked.
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// The answer to `POST /tokens`: the secret, shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedToken {
    pub token: TokenInfo,
    pub secret: String,
}

/// A team member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Member {
    pub user_id: String,
    pub name: String,
    pub role: Role,
}

/// `POST /members`: adds a user (created if new) or changes their role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddMember {
    pub name: String,
    pub role: Role,
}

/// The answer to `POST /members`; a new user gets a one-time sign-in link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddedMember {
    pub member: Member,
    /// `/signin?code=…`, valid for a day and once.
    pub sign_in_link: Option<String>,
}
