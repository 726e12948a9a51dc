//! HTTP: the router, the handlers, and the layers around them (problem+json conversion, server
//! spans, metrics, request timeout, body limit). Extractors are wrapped so their rejections become
//! problem+json too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Request, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::Value;
use tower_http::trace::TraceLayer;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use utoipa::ToSchema;

use crate::AppState;
use crate::model::Profile;
use crate::problem::{self, ApiError};
use crate::store::{self, Change};
use crate::validate::{self, EtagCondition};

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;
pub(crate) const JSON: &str = "application/json";
pub(crate) const MERGE_PATCH: &str = "application/merge-patch+json";
const X_CACHE: &str = "x-cache";
/// The route of one profile; the auth layer authorizes on its decoded `{id}`.
pub(crate) const PROFILE_ROUTE: &str = "/v1/profiles/{id}";
/// The methods [`PROFILE_ROUTE`] serves (HEAD with GET); others are 405 before any auth.
pub(crate) const PROFILE_METHODS: [Method; 5] = [
    Method::GET,
    Method::HEAD,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// The whole HTTP API.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            PROFILE_ROUTE,
            get(get_profile)
                .put(put_profile)
                .patch(patch_profile)
                .delete(delete_profile),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(problem::no_route)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            state.auth.clone(),
            crate::auth::layer,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), timeout))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::client::layer,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(server_span)
                .on_response(on_response),
        )
        .layer(middleware::from_fn(problem::problem_layer))
        .with_state(state)
}

/// `Path<String>` whose rejection is a problem, and whose id is validated.
pub(crate) struct ProfileId(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for ProfileId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e: PathRejection| ApiError::BadRequest(e.body_text()))?;
        validate::profile_id(&id)?;
        Ok(Self(id))
    }
}

/// The raw body; an over-limit body is 413, as a problem.
pub(crate) struct Body(pub(crate) Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state)
            .await
            .map(Self)
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(BODY_LIMIT)
                } else {
                    ApiError::BadRequest(e.body_text())
                }
            })
    }
}

fn require_content_type(headers: &HeaderMap, accepted: &[&'static str]) -> Result<(), ApiError> {
    let found = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = found
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if accepted.contains(&essence.as_str()) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType {
            found: found.to_owned(),
            expected: accepted.first().copied().unwrap_or(JSON),
        })
    }
}

fn condition(
    headers: &HeaderMap,
    name: header::HeaderName,
) -> Result<Option<EtagCondition>, ApiError> {
    headers
        .get(&name)
        .map(|v| {
            let text = v
                .to_str()
                .map_err(|_| ApiError::BadRequest(format!("{name} is not visible ASCII")))?;
            EtagCondition::parse(text).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{name} must be * or a comma-separated list of entity tags such as \"3\" \
                     or W/\"3\""
                ))
            })
        })
        .transpose()
}

fn etag_value(version: i64) -> HeaderValue {
    HeaderValue::from_str(&validate::etag(version)).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn profile_response(
    status: StatusCode,
    profile: &Profile,
    cache: Option<&'static str>,
) -> Response {
    let mut response = (status, Json(profile)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag_value(profile.version));
    if let Some(cache) = cache {
        headers.insert(X_CACHE, HeaderValue::from_static(cache));
    }
    if status == StatusCode::CREATED
        && let Ok(location) = HeaderValue::from_str(&format!("/v1/profiles/{}", profile.id))
    {
        headers.insert(header::LOCATION, location);
    }
    response
}

/// Get a profile. (Its part of the OpenAPI document, like that of the other profile handlers, is
/// written in `openapi.rs`, from the validation rules and the errors each can answer.)
pub(crate) async fn get_profile(
    State(state): State<Arc<AppState>>,
    ProfileId(id): ProfileId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let if_none_match = condition(&headers, header::IF_NONE_MATCH)?;
    let read = crate::read::get(&state, &id).await?;
    let Some(profile) = read.loaded.profile else {
        return Err(ApiError::NotFound(id));
    };
    let cache = read.result.as_str();
    if if_none_match.is_some_and(|c| c.matches_weak(Some(profile.version))) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response
            .headers_mut()
            .insert(header::ETAG, etag_value(profile.version));
        response
            .headers_mut()
            .insert(X_CACHE, HeaderValue::from_static(cache));
        return Ok(response);
    }
    Ok(profile_response(StatusCode::OK, &profile, Some(cache)))
}

/// Create or replace a profile.
pub(crate) async fn put_profile(
    State(state): State<Arc<AppState>>,
    ProfileId(id): ProfileId,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    require_content_type(&headers, &[JSON])?;
    let if_match = condition(&headers, header::IF_MATCH)?;
    let input = validate::profile_input(&validate::parse_json(&body)?)?;
    let written = state
        .write(&id, Change::Put(input), if_match.as_ref())
        .await?;
    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let profile = written
        .profile
        .ok_or_else(|| ApiError::Internal("put returned no profile".to_owned()))?;
    Ok(profile_response(status, &profile, None))
}

/// Change some fields with a JSON merge patch (RFC 7396).
pub(crate) async fn patch_profile(
    State(state): State<Arc<AppState>>,
    ProfileId(id): ProfileId,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    require_content_type(&headers, &[MERGE_PATCH, JSON])?;
    let if_match = condition(&headers, header::IF_MATCH)?;
    let patch: Value = validate::parse_json(&body)?;
    // Refuse non-objects, server-managed and unknown fields before touching the database.
    let Value::Object(members) = &patch else {
        return Err(ApiError::MalformedJson(
            "a merge patch must be a JSON object".to_owned(),
        ));
    };
    let refused = validate::patch_member_errors(members);
    if !refused.is_empty() {
        return Err(ApiError::Validation(refused));
    }
    let written = state
        .write(&id, Change::Patch(patch), if_match.as_ref())
        .await?;
    let profile = written
        .profile
        .ok_or_else(|| ApiError::Internal("patch returned no profile".to_owned()))?;
    Ok(profile_response(StatusCode::OK, &profile, None))
}

/// Delete a profile (its version keeps counting if it is created again).
pub(crate) async fn delete_profile(
    State(state): State<Arc<AppState>>,
    ProfileId(id): ProfileId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let if_match = condition(&headers, header::IF_MATCH)?;
    state.write(&id, Change::Delete, if_match.as_ref()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`, `ready` or `degraded`.
    pub(crate) status: &'static str,
    /// PostgreSQL: `up` or `down` (absent on /healthz).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) postgres: Option<&'static str>,
    /// Redis: `up` or `down` (down only degrades: reads bypass the cache).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) redis: Option<&'static str>,
    /// Kafka: `up` or `down` (down only degrades: events wait in the outbox).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kafka: Option<&'static str>,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        postgres: None,
        redis: None,
        kafka: None,
    })
}

/// Ready when PostgreSQL answers; Redis or Kafka being down only degrades.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, body = Health),
    (status = 503, description = "PostgreSQL unreachable", body = problem::Problem, content_type = "application/problem+json"),
))]
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Health>, ApiError> {
    let limit = Duration::from_secs(1);
    let (pg, redis, kafka) = tokio::join!(
        tokio::time::timeout(limit, store::ping(&state.pool)),
        state.cache.ping(),
        tokio::time::timeout(limit, kafka_reachable(&state.config.kafka_brokers)),
    );
    if !matches!(pg, Ok(Ok(()))) {
        return Err(ApiError::Unavailable);
    }
    let redis = if redis.is_ok() { "up" } else { "down" };
    let kafka = if matches!(kafka, Ok(true)) {
        "up"
    } else {
        "down"
    };
    Ok(Json(Health {
        status: if redis == "up" && kafka == "up" {
            "ready"
        } else {
            "degraded"
        },
        postgres: Some("up"),
        redis: Some(redis),
        kafka: Some(kafka),
    }))
}

/// Whether any bootstrap broker accepts TCP connections.
async fn kafka_reachable(brokers: &str) -> bool {
    for broker in brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        if tokio::net::TcpStream::connect(broker).await.is_ok() {
            return true;
        }
    }
    false
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text"),
))]
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Some(near) = &state.near {
        state.metrics.set_near_cache(near);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses(
    (status = 200, description = "OpenAPI 3.1", body = Object),
))]
pub(crate) async fn openapi(State(state): State<Arc<AppState>>) -> Response {
    Json(crate::openapi::document(&state.config.auth_settings())).into_response()
}

/// Answers 503 problem when a request takes longer than the configured limit.
async fn timeout(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.config.request_timeout(), next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

fn route_of(request: &Request) -> String {
    request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned())
}

async fn record_metrics(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = route_of(&request);
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.http_request(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// SERVER span named `METHOD /route/{template}`, child of the caller's W3C trace context.
fn server_span(request: &Request) -> Span {
    let route = route_of(request);
    let method = request.method().as_str();
    let span = tracing::info_span!(
        "http request",
        otel.kind = "server",
        otel.name = %format!("{method} {route}"),
        http.route = %route,
        http.request.method = %method,
        url.path = %request.uri().path(),
        client.address = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    let _ = span.set_parent(parent);
    span
}

fn on_response(response: &Response, latency: Duration, span: &Span) {
    span.record("http.response.status_code", response.status().as_u16());
    // One line per request, inside its span: the log carries the request's trace id.
    let client = response
        .extensions()
        .get::<crate::client::ClientAddr>()
        .map(|c| tracing::field::display(c.0));
    tracing::info!(
        status = response.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        client_address = client,
        "request completed"
    );
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}
