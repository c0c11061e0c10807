//! Errors in the OpenAI API's shape: `{"error": {"message", "type", "param", "code"}}` with a
//! 4xx status (5xx only when the model itself fails).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::pipeline::completion::CompletionError;

/// One error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<&'static str>,
    /// A machine-readable code (`invalid_api_key`, `context_length_exceeded`, …).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 about `param`.
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param,
            code: None,
        }
    }

    /// With `code`.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// With `status`.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The OpenAI `type` for this status.
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind(),
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

impl From<CompletionError> for ApiError {
    fn from(e: CompletionError) -> Self {
        let message = e.to_string();
        match e {
            CompletionError::UnknownConcept { .. } => {
                ApiError::invalid(Some("steering"), message).with_code("unknown_concept")
            }
            CompletionError::BadLambda { .. } => {
                ApiError::invalid(Some("steering"), message).with_code("invalid_lambda")
            }
            CompletionError::ContextLength { .. } => {
                ApiError::invalid(Some("messages"), message).with_code("context_length_exceeded")
            }
            CompletionError::KvLimit { .. } => {
                ApiError::invalid(Some("max_tokens"), message).with_code("kv_cache_limit")
            }
            CompletionError::Invalid(_) => ApiError::invalid(None, message),
            CompletionError::Steering(_) => ApiError::invalid(Some("steering"), message),
        }
    }
}
