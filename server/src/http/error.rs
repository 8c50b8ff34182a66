//! One error type for every handler, mapped to a status code and the JSON
//! body `{ "error": { "code", "message", "field"? } }`. Server faults are
//! logged and answered with a generic message.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sslab_shared::SpecError;
use sslab_shared::api::{ErrorBody, ErrorDetail};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidSpec(SpecError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// No credentials, or ones that do not work; the answer asks for a bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// Credentials that work but do not allow this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Wait this many seconds before trying again.
    #[error("{1}")]
    TooManyRequests(u64, String),
    #[error("{0}")]
    Conflict(String),
    /// Files that cannot be used as what they were sent as.
    #[error("{0}")]
    InvalidData(String),
    #[error("{0}")]
    TooLarge(String),
    /// The server could not store what it was sent (a full disk, say); the
    /// message is logged, never sent.
    #[error("{0}")]
    Storage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match &self {
            ApiError::TooManyRequests(secs, _) => Some(*secs),
            _ => None,
        };
        let unauthorized = matches!(self, ApiError::Unauthorized(_));
        let (status, code, message, field) = match self {
            ApiError::InvalidSpec(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_spec",
                e.to_string(),
                Some(e.field).filter(|f| !f.is_empty()),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m, None),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m, None),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m, None),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m, None),
            ApiError::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                m,
                None,
            ),
            ApiError::TooManyRequests(_, m) => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests", m, None)
            }
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m, None),
            ApiError::InvalidData(m) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_data", m, None),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", m, None),
            // The detail names server paths: it goes to the log only.
            ApiError::Storage(m) => {
                tracing::error!(error = %m, "storage error");
                (
                    StatusCode::INSUFFICIENT_STORAGE,
                    "storage",
                    "the server could not write to its storage (a full disk, or a folder it may not write); its log names the file".into(),
                    None,
                )
            }
            ApiError::Store(e) => {
                tracing::error!(error = %e, "store error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal server error".into(),
                    None,
                )
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal server error".into(),
                    None,
                )
            }
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message,
                field,
            },
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = retry_after {
            headers.insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if unauthorized {
            headers.insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"sslab\""),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<crate::datasets::RegistryError> for ApiError {
    fn from(e: crate::datasets::RegistryError) -> Self {
        use crate::datasets::RegistryError as R;
        match e {
            R::Invalid(e) => ApiError::InvalidSpec(e),
            R::Data(m) => ApiError::InvalidData(m),
            R::Exists(_) => ApiError::Conflict(e.to_string()),
            R::Store(e) => ApiError::Store(e),
            R::Io(m) => ApiError::Storage(m),
        }
    }
}
