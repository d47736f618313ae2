//! Error bodies in the original's shapes, their OpenAPI schemas, and the mapping of framework errors to them.
//!
//! `{"detail": "..."}` for 401/404/405/409/413/503-style errors, `{"detail": [{"loc","msg","type"}]}` for
//! validation errors, `{"detail": {"error": "policy_violation", ...}}` for policy rejections. Internal errors
//! are logged once here with the request's trace id and answered with a generic message.

use domain::validation::{detail_json, ValidationError};
use poem::http::StatusCode;
use poem::Response;
use poem_openapi::{Object, Union};
use serde_json::{json, Value};

/// `{"detail": "<message>"}`.
#[derive(Debug, Clone, Object)]
pub struct ErrorDetail {
    /// What went wrong.
    pub detail: String,
}

impl ErrorDetail {
    pub fn new(detail: impl Into<String>) -> ErrorDetail {
        ErrorDetail { detail: detail.into() }
    }
}

/// One validation problem, as FastAPI reports it.
#[derive(Debug, Clone, Object)]
pub struct ValidationErrorItem {
    /// Where: `"body"`, `"query"`, `"path"` or `"header"`, then field names and list indexes.
    pub loc: Vec<Value>,
    /// Human-readable message.
    pub msg: String,
    /// Machine-readable kind, e.g. `missing`, `string_too_short`, `extra_forbidden`.
    #[oai(rename = "type")]
    pub kind: String,
}

/// `{"detail": [ValidationErrorItem, ...]}`: the request does not match the schema.
#[derive(Debug, Clone, Object)]
pub struct HttpValidationError {
    pub detail: Vec<ValidationErrorItem>,
}

/// The policy gate's rejection.
#[derive(Debug, Clone, Object)]
pub struct PolicyViolation {
    /// Always `policy_violation`.
    pub error: String,
    /// `REPO_NOT_ALLOWED`, `NETWORK_ACCESS_DENIED`, `SECRETS_ACCESS_DENIED`, `TIME_BUDGET_TOO_LOW`,
    /// `TIME_BUDGET_TOO_HIGH` or `INVALID_OPERATION`.
    pub code: String,
    pub message: String,
}

/// `{"detail": PolicyViolation}`.
#[derive(Debug, Clone, Object)]
pub struct PolicyViolationError {
    pub detail: PolicyViolation,
}

/// A 422: either a schema validation error or a policy violation.
#[derive(Debug, Clone, Union)]
#[oai(one_of)]
pub enum UnprocessableEntity {
    Validation(HttpValidationError),
    Policy(PolicyViolationError),
}

fn json_response(status: StatusCode, body: Value) -> Response {
    Response::builder().status(status).content_type("application/json").body(body.to_string())
}

/// A 422 response as an error, for extractors.
pub fn unprocessable(errors: &[ValidationError]) -> poem::Error {
    poem::Error::from_response(json_response(StatusCode::UNPROCESSABLE_ENTITY, detail_json(errors)))
}

/// The 422 body of validation errors, typed for operation responses.
pub fn validation_error(errors: &[ValidationError]) -> UnprocessableEntity {
    UnprocessableEntity::Validation(HttpValidationError {
        detail: errors
            .iter()
            .map(|error| {
                let rendered = error.to_json();
                ValidationErrorItem {
                    loc: rendered["loc"].as_array().cloned().unwrap_or_default(),
                    msg: error.msg.clone(),
                    kind: error.kind.clone(),
                }
            })
            .collect(),
    })
}

/// A 413 response as an error.
pub fn payload_too_large() -> poem::Error {
    poem::Error::from_response(json_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({ "detail": "Request body is too large" }),
    ))
}

/// A 401 response with `WWW-Authenticate: Bearer`.
pub fn unauthorized() -> Response {
    let mut response = json_response(StatusCode::UNAUTHORIZED, json!({ "detail": "Invalid or missing API key" }));
    response.headers_mut().insert("www-authenticate", poem::http::HeaderValue::from_static("Bearer"));
    response
}

/// How long a client is asked to wait before it retries while the database is unavailable (`Retry-After`).
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// A 503 with `Retry-After` when the database is unavailable for now (it is restarting, unreachable, or no
/// connection was free in time: [`app::database_unavailable`]), else a 500 for an unexpected failure. Logged here,
/// once, with the chain (the 503 as a warning); the client gets a generic message. A command answered 503 may
/// still have committed if the database went away during its commit: retry it with the same `idempotency_key`.
pub fn internal(error: &anyhow::Error) -> poem::Error {
    if app::database_unavailable(error) {
        tracing::warn!("database unavailable: {error:#}");
        let mut response = json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "detail": "The database is unavailable; retry shortly" }),
        );
        response.headers_mut().insert("retry-after", poem::http::HeaderValue::from(RETRY_AFTER_SECONDS));
        return poem::Error::from_response(response);
    }
    tracing::error!("failed to handle request: {error:#}");
    poem::Error::from_response(json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({ "detail": "Internal server error; see the server log for this request's trace id" }),
    ))
}

/// Turns any error that escaped an endpoint into a response in the original's shapes.
pub fn to_response(error: poem::Error) -> Response {
    if !error.has_source() {
        // Built with `from_response` by our own extractors: already in shape.
        return error.into_response();
    }
    if let Some(param) = error.downcast_ref::<poem_openapi::error::ParseParamError>() {
        let kind = if param.reason.contains("required") { "missing" } else { "value_error" };
        return json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            detail_json(&[ValidationError::new(vec!["query".into(), param.name.into()], kind, param.reason.clone())]),
        );
    }
    let status = error.status();
    if error.is::<poem_openapi::error::ParsePathError>() || error.is::<poem::error::NotFoundError>() {
        return json_response(StatusCode::NOT_FOUND, json!({ "detail": "Not Found" }));
    }
    if error.is::<poem::error::MethodNotAllowedError>() {
        return json_response(StatusCode::METHOD_NOT_ALLOWED, json!({ "detail": "Method Not Allowed" }));
    }
    if status.is_server_error() {
        tracing::error!("failed to handle request: {error:#}");
        return json_response(status, json!({ "detail": "Internal server error" }));
    }
    json_response(status, json!({ "detail": error.to_string() }))
}
