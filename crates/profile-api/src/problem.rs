//! Errors as RFC 9457 `application/problem+json`: one enum, [`ApiError`], mapped to a status
//! once, here. Internal causes are logged and never shown. `problem_layer` also turns every
//! other 4xx/5xx (unknown route, wrong method, framework rejections) into a problem and fills
//! `instance` with the request path.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Content type of every error body.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Seconds clients are asked to wait when a dependency is down.
const RETRY_AFTER_SECONDS: &str = "2";

/// One invalid field of a request body (422 only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON member name, e.g. `email`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An RFC 9457 problem details object.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// URI reference naming the problem type.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// The request path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Invalid fields (422 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON (or not a JSON object).
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// 400: a header is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 404: no profile with this id.
    #[error("profile {0:?} not found")]
    NotFound(String),
    /// 404: the path is not a route of this API.
    #[error("no route for {0}")]
    NoRoute(String),
    /// 405: the route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 412: `If-Match` does not match the current version (or the profile does not exist).
    #[error("{0}")]
    PreconditionFailed(String),
    /// 413: the body is larger than 64 KiB.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 415: wrong `Content-Type`.
    #[error("unsupported content type {found:?}: use {expected}")]
    UnsupportedMediaType {
        /// What the request said.
        found: String,
        /// What the route accepts.
        expected: &'static str,
    },
    /// 422: the JSON is well-formed but some fields are unknown or invalid.
    #[error("invalid fields")]
    Validation(Vec<FieldError>),
    /// 401 with `WWW-Authenticate: Bearer`: no valid bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a valid token that may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 429 with `Retry-After` (seconds): the caller's rate limit is used up.
    #[error("rate limit exceeded; retry in {0} s")]
    TooManyRequests(u64),
    /// 503 with `Retry-After`: PostgreSQL is unreachable.
    #[error("database unavailable")]
    Unavailable,
    /// 503 with `Retry-After`: the request took longer than the configured limit.
    #[error("request timed out")]
    Timeout,
    /// 500: anything else; the cause is logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) | Self::NoRoute(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable | Self::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn type_slug(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed-json",
            Self::BadRequest(_) => "bad-request",
            Self::NotFound(_) => "profile-not-found",
            Self::NoRoute(_) => "no-route",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::PreconditionFailed(_) => "precondition-failed",
            Self::PayloadTooLarge(_) => "payload-too-large",
            Self::UnsupportedMediaType { .. } => "unsupported-media-type",
            Self::Validation(_) => "validation-failed",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::TooManyRequests(_) => "rate-limited",
            Self::Unavailable => "database-unavailable",
            Self::Timeout => "request-timeout",
            Self::Internal(_) => "internal-error",
        }
    }

    /// The problem body (without `instance`, which `problem_layer` adds).
    pub fn problem(&self) -> Problem {
        let status = self.status();
        let detail = match self {
            Self::Internal(_) => "an internal error occurred; it has been logged".to_owned(),
            Self::Validation(errors) => {
                let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                format!("invalid fields: {}", fields.join(", "))
            }
            Self::Unavailable => {
                "the database is unavailable; nothing was changed, retry later".to_owned()
            }
            other => other.to_string(),
        };
        Problem {
            problem_type: format!("https://statecast.dev/problems/{}", self.type_slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            instance: None,
            errors: match self {
                Self::Validation(errors) => Some(errors.clone()),
                _ => None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(cause) = &self {
            tracing::error!(error = %cause, "internal error");
        }
        let mut response = problem_response(self.status(), self.problem());
        match &self {
            Self::Unavailable | Self::Timeout => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECONDS),
                );
            }
            Self::TooManyRequests(seconds) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
            }
            Self::Unauthorized(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"statecast\""),
                );
            }
            _ => {}
        }
        response
    }
}

fn problem_response(status: StatusCode, problem: Problem) -> Response {
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        )],
        body,
    )
        .into_response();
    response.extensions_mut().insert(problem);
    response
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(error: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        match error {
            AuthError::MissingToken | AuthError::InvalidToken(_) => {
                Self::Unauthorized(error.to_string())
            }
            AuthError::Forbidden(message) => Self::Forbidden(message),
            AuthError::RateLimited(seconds) => Self::TooManyRequests(seconds),
            AuthError::KeysUnavailable => Self::Unavailable,
        }
    }
}

/// Fallback for unknown routes.
pub(crate) async fn no_route(request: Request) -> ApiError {
    ApiError::NoRoute(request.uri().path().to_owned())
}

/// Fallback for known routes called with the wrong method.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Outermost middleware: every 4xx/5xx leaves as problem+json with `instance` = request path.
pub(crate) async fn problem_layer(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, _body) = response.into_parts();
    let mut problem = parts.extensions.remove::<Problem>().unwrap_or_else(|| {
        // A response made by the framework or a layer, not by ApiError.
        let slug = status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
            .replace(' ', "-");
        Problem {
            problem_type: format!("https://statecast.dev/problems/{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: status.canonical_reason().unwrap_or("error").to_owned(),
            instance: None,
            errors: None,
        }
    });
    problem.instance = Some(path);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
    );
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}
