//! The API's error type: a status code and a JSON body `{"error": {"code", "message"}}`.
//! Internal details are logged in the request's span, never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// No live agent's credential on a route of the agent API; the message says which.
    #[error("{0}")]
    Unauthenticated(String),
    /// A foreign `Host` or `Origin`.
    #[error("{0}")]
    Forbidden(String),
    /// A body or parameter that is not acceptable; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// A body over `daemon.max_body_bytes`, or a batch over `daemon.max_batch_events`.
    #[error("{0}")]
    TooLarge(String),
    /// The request conflicts with the stored state (illegal transition, dependency cycle).
    #[error("{code}: {message}")]
    Conflict { code: &'static str, message: String },
    /// Another process holds the database's write lock.
    #[error("{0}")]
    Busy(String),
    /// No space left for the database (the message names its path).
    #[error("{0}")]
    DiskFull(String),
    /// Anything else; details are logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized | ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::Unauthenticated(_) => "no_agent_credential",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::Conflict { code, .. } => code,
            ApiError::Busy(_) => "busy",
            ApiError::DiskFull(_) => "disk_full",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                "internal error; see the daemon's log".to_string()
            }
            ApiError::Conflict { message, .. } => message.clone(),
            other => other.to_string(),
        };
        let body = json!({ "error": { "code": self.code(), "message": message } });
        (self.status_code(), Json(body)).into_response()
    }
}

impl From<crate::placement::PlacementError> for ApiError {
    fn from(error: crate::placement::PlacementError) -> Self {
        use crate::placement::PlacementError;
        match error {
            PlacementError::Store(error) => error.into(),
            PlacementError::Repo(_)
            | PlacementError::PinWithoutSync
            | PlacementError::StackedElsewhere(_) => ApiError::BadRequest(error.to_string()),
        }
    }
}

impl From<crate::conflicts::ConflictError> for ApiError {
    fn from(error: crate::conflicts::ConflictError) -> Self {
        use crate::conflicts::ConflictError;
        match error {
            ConflictError::Store(error) => error.into(),
            ConflictError::NoBranch { .. } => ApiError::NotFound(error.to_string()),
            ConflictError::Git { .. } | ConflictError::Spawn { .. } => {
                ApiError::Internal(error.to_string())
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::TaskNotFound(_)
            | StoreError::ContextNotFound(_)
            | StoreError::DecisionNotFound(_) => ApiError::NotFound(error.to_string()),
            StoreError::Ambiguous { .. } | StoreError::Invalid { .. } => {
                ApiError::BadRequest(error.to_string())
            }
            StoreError::Cycle(_) => {
                ApiError::Conflict { code: "dependency_cycle", message: error.to_string() }
            }
            StoreError::Transition(_) => {
                ApiError::Conflict { code: "illegal_transition", message: error.to_string() }
            }
            StoreError::Land(_) => {
                ApiError::Conflict { code: "illegal_land_transition", message: error.to_string() }
            }
            StoreError::Routed(_) => {
                ApiError::Conflict { code: "routed_task_state", message: error.to_string() }
            }
            StoreError::Refused(_) => ApiError::Forbidden(error.to_string()),
            StoreError::Busy => ApiError::Busy(error.to_string()),
            StoreError::DiskFull => ApiError::DiskFull(error.to_string()),
            StoreError::Open { .. }
            | StoreError::NotADatabase { .. }
            | StoreError::Closed
            | StoreError::Backup { .. }
            | StoreError::Database(_) => ApiError::Internal(error.to_string()),
        }
    }
}

impl From<crate::review::ReviewError> for ApiError {
    fn from(error: crate::review::ReviewError) -> Self {
        use crate::review::ReviewError;
        match error {
            ReviewError::Store(error) => error.into(),
            ReviewError::Diff(error) => error.into(),
            ReviewError::OutsideDiff(_) => ApiError::BadRequest(error.to_string()),
        }
    }
}

impl From<crate::land::LandError> for ApiError {
    fn from(error: crate::land::LandError) -> Self {
        use crate::land::LandError;
        match error {
            LandError::Store(error) => error.into(),
            LandError::NoCheckout { .. } | LandError::NoRepository { .. } => {
                ApiError::BadRequest(error.to_string())
            }
            LandError::Config(_) => {
                ApiError::Conflict { code: "config_invalid", message: error.to_string() }
            }
            LandError::Git(_) | LandError::Join(_) => ApiError::Internal(error.to_string()),
        }
    }
}
