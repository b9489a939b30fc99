//! Every error the server answers is JSON: `{"error": {"message": …, "field": …}}`
//! with the status that says whose fault it is (4xx: the request's, with the
//! request field at fault where there is one).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn bad_request(field: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            field: field.map(str::to_string),
            ..ApiError::new(StatusCode::BAD_REQUEST, message)
        }
    }

    /// A request the engine refused: 400 naming the field.
    pub fn invalid(e: Error) -> Self {
        match e {
            Error::InvalidArgument { name, message } => {
                let field = (!name.starts_with('(')).then_some(name);
                ApiError {
                    field,
                    ..ApiError::new(StatusCode::BAD_REQUEST, message)
                }
            }
            other => ApiError::bad_request(None, other.to_string()),
        }
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "field": self.field}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
