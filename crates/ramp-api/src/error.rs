//! Error answers: every one is JSON, `{"error": ..}` plus details.

use crate::plane::ControlError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub(crate) use ramp_wire::v1::{ErrorBody, FieldError, PlanErrorBody};

/// A field error (`FieldError::new` for the wire type, which has no constructor).
pub(crate) fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// An error answer.
#[derive(Debug)]
pub(crate) struct Problem {
    status: StatusCode,
    body: ErrorBody,
}

impl Problem {
    pub(crate) fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Problem {
            status,
            body: ErrorBody {
                error: error.into(),
                fields: None,
                errors: None,
            },
        }
    }

    /// 400 naming every bad field.
    pub(crate) fn fields(fields: Vec<FieldError>) -> Self {
        let mut p = Problem::new(StatusCode::BAD_REQUEST, "invalid request");
        p.body.fields = Some(fields);
        p
    }

    /// 400 naming one bad field.
    pub(crate) fn field(field: &str, message: impl Into<String>) -> Self {
        Problem::fields(vec![field_error(field, message)])
    }

    pub(crate) fn unauthorized(message: &str) -> Self {
        Problem::new(StatusCode::UNAUTHORIZED, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<ControlError> for Problem {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound(_) => Problem::not_found(e.to_string()),
            ControlError::Conflict(_) | ControlError::AlreadyExists(_) => {
                Problem::new(StatusCode::CONFLICT, e.to_string())
            }
            ControlError::InvalidPlan(errors) => {
                let mut p = Problem::new(StatusCode::BAD_REQUEST, "invalid plan");
                p.body.errors = Some(
                    errors
                        .errors
                        .into_iter()
                        .map(|e| PlanErrorBody {
                            line: e.line,
                            col: e.col,
                            message: e.message,
                            help: e.help,
                            source_line: e.source_line,
                        })
                        .collect(),
                );
                p
            }
            ControlError::Invalid(message) => Problem::new(StatusCode::BAD_REQUEST, message),
            ControlError::NotAllowed(message) => Problem::new(StatusCode::FORBIDDEN, message),
            ControlError::Unavailable(_) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut response = (self.status, json_body(&self.body)).into_response();
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ramp\""),
            );
        }
        response
    }
}

/// A JSON body with its content type (serialising these types cannot fail).
pub(crate) fn json_body<T: Serialize>(value: &T) -> Response {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{\"error\":\"internal\"}".to_vec());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

/// Makes every error answer JSON, including the router's own (405 from method routing, 4xx
/// from extractors). Answers that are already JSON pass untouched.
pub(crate) async fn jsonify_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed".to_string(),
        StatusCode::NOT_FOUND => "not found".to_string(),
        StatusCode::PAYLOAD_TOO_LARGE => "request body too large".to_string(),
        s => s
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase(),
    };
    let body = ErrorBody {
        error: message,
        fields: None,
        errors: None,
    };
    let fresh = json_body(&body);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, fresh.into_body())
}
