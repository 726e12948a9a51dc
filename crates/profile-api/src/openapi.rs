//! The OpenAPI 3.1 document, built so that it says exactly what the API enforces:
//!
//! - the operational routes (`/healthz`, `/readyz`, `/metrics`, this document) and the problem
//!   schemas come from the handlers' `#[utoipa::path]` attributes and the types ([`ApiDoc`]);
//! - `/v1/profiles/{id}` is written here, from the constants and regular expressions that
//!   `validate.rs` checks requests with (id pattern and length, field lengths and patterns, the
//!   e-mail syntax, the country codes, the `If-Match` / `If-None-Match` syntax), and with every
//!   status each operation can answer, taken from [`ApiError`] and the layers in front of the
//!   handlers, each error as `application/problem+json`;
//! - the security requirements follow the running configuration (`AUTH_DISABLED`,
//!   `PUBLIC_READS`, the rate limit), so [`document`] takes the [`AuthSettings`].
//!
//! The unit tests below check the document against the validators (the same inputs accepted
//! and refused by both, judged for the document by the `jsonschema` crate, the engine the
//! contract fuzzer `scripts/contract-fuzz` validates with); the fuzzer checks it against the
//! running API.

use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use crate::auth::{ADMIN_SCOPE, AuthSettings};
use crate::problem::{ApiError, FieldError, PROBLEM_CONTENT_TYPE, Problem};
use crate::routes::{self, BODY_LIMIT, Health};
use crate::validate;

/// The operational part of the Profile API, from the handlers' attributes.
#[derive(OpenApi)]
#[openapi(
    info(title = "Statecast Profile API", description = "User profiles: read-through cached, changes published as CloudEvents."),
    paths(routes::healthz, routes::readyz, routes::metrics, routes::openapi),
    components(schemas(Problem, FieldError, Health)),
    tags(
        (name = "profiles", description = "Profile CRUD with ETags"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The name of the bearer security scheme.
const BEARER: &str = "bearer";

/// An operation on `/v1/profiles/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Get,
    Put,
    Patch,
    Delete,
}

impl Op {
    pub(crate) const ALL: [Self; 4] = [Self::Get, Self::Put, Self::Patch, Self::Delete];

    /// The lower-case method, as the document's key.
    pub(crate) fn method(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Put => "put",
            Self::Patch => "patch",
            Self::Delete => "delete",
        }
    }

    fn operation_id(self) -> &'static str {
        match self {
            Self::Get => "getProfile",
            Self::Put => "putProfile",
            Self::Patch => "patchProfile",
            Self::Delete => "deleteProfile",
        }
    }

    fn is_write(self) -> bool {
        self != Self::Get
    }

    fn has_body(self) -> bool {
        matches!(self, Self::Put | Self::Patch)
    }
}

/// One error an operation can answer: its status comes from the [`ApiError`] variant that
/// produces it, so the document's status is the one sent.
struct ErrorResponse {
    error: ApiError,
    description: String,
    /// `Retry-After` or `WWW-Authenticate`, when the error carries one.
    header: Option<(&'static str, Value, &'static str)>,
}

/// Every error `op` can answer under `settings`, in status order. Where each comes from:
/// - the auth layer (`auth::layer`): 400 for an id that does not percent-decode to UTF-8, 401
///   (a missing, invalid or malformed bearer token; a malformed `Authorization` header even with
///   `AUTH_DISABLED`), 403 for a write by another subject, 429 from the rate limit, 503 when the
///   JWKS cannot be fetched;
/// - the timeout layer: 503; the id extractor: 422; the `If-Match` / `If-None-Match` parser: 400;
/// - the body extractors (PUT, PATCH): 400 (not JSON, not an object), 413, 415, 422;
/// - the store: 404 (GET, PATCH, DELETE of an absent profile), 412 (writes), 503 (database down).
fn error_responses(op: Op, settings: &AuthSettings) -> Vec<ErrorResponse> {
    let retry_after = Some((
        "Retry-After",
        json!({"type": "string", "pattern": "^[0-9]+$"}),
        "Seconds to wait before retrying",
    ));
    let mut out = Vec::new();
    let mut bad_request = String::from(
        "Malformed request: the id does not percent-decode to UTF-8, or a conditional header is \
         not `*` or a comma-separated list of entity tags",
    );
    if op.has_body() {
        bad_request.push_str(", or the body is not a JSON object");
    }
    out.push(ErrorResponse {
        error: ApiError::BadRequest(String::new()),
        description: bad_request,
        header: None,
    });
    out.push(ErrorResponse {
        error: ApiError::Unauthorized(String::new()),
        description: if settings.disabled {
            "The Authorization header is not `Bearer <token>` (authentication is off)".to_owned()
        } else if op == Op::Get && settings.public_reads {
            "The bearer token sent is invalid or expired (none is needed: PUBLIC_READS)".to_owned()
        } else {
            "No valid bearer token".to_owned()
        },
        header: Some((
            "WWW-Authenticate",
            json!({"type": "string"}),
            "`Bearer realm=\"statecast\"`",
        )),
    });
    if op.is_write() && !settings.disabled {
        out.push(ErrorResponse {
            error: ApiError::Forbidden(String::new()),
            description: format!(
                "The token may not change this profile: its `sub` is not the id and it lacks the \
                 `{ADMIN_SCOPE}` scope"
            ),
            header: None,
        });
    }
    if op != Op::Put {
        out.push(ErrorResponse {
            error: ApiError::NotFound(String::new()),
            description: "No such profile (never created, or deleted)".to_owned(),
            header: None,
        });
    }
    if op.is_write() {
        out.push(ErrorResponse {
            error: ApiError::PreconditionFailed(String::new()),
            description: "`If-Match` matches no current version (or the profile does not exist)"
                .to_owned(),
            header: None,
        });
    }
    if op.has_body() {
        out.push(ErrorResponse {
            error: ApiError::PayloadTooLarge(BODY_LIMIT),
            description: format!("Body over {BODY_LIMIT} bytes"),
            header: None,
        });
        out.push(ErrorResponse {
            error: ApiError::UnsupportedMediaType {
                found: String::new(),
                expected: "",
            },
            description: "Content-Type is not one the operation accepts".to_owned(),
            header: None,
        });
    }
    out.push(ErrorResponse {
        error: ApiError::Validation(Vec::new()),
        description: match op {
            Op::Get | Op::Delete => "Invalid id".to_owned(),
            Op::Put => {
                "Invalid id, or invalid, missing, unknown or server-managed fields".to_owned()
            }
            Op::Patch => {
                "Invalid id, or a patch naming a server-managed or unknown field, or leaving an \
                 invalid profile"
                    .to_owned()
            }
        },
        header: None,
    });
    if settings.rate_limit_per_second > 0 {
        out.push(ErrorResponse {
            error: ApiError::TooManyRequests(1),
            description: "Rate limit of the caller exceeded".to_owned(),
            header: retry_after.clone(),
        });
    }
    out.push(ErrorResponse {
        error: ApiError::Unavailable,
        description: "Database unavailable (nothing was changed), the request timed out, or the \
                      key set cannot be fetched"
            .to_owned(),
        header: retry_after,
    });
    out.sort_by_key(|e| e.error.status());
    out
}

fn problem_response(e: &ErrorResponse) -> Value {
    let mut response = json!({
        "description": e.description,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    });
    if let Some((name, schema, description)) = &e.header {
        response["headers"] = json!({
            *name: {"required": true, "description": description, "schema": schema},
        });
    }
    response
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The schemas of the profile, generated from the validator's rules.
fn profile_schemas() -> Vec<(&'static str, Value)> {
    let field_refs = json!({
        "name": schema_ref("ProfileName"),
        "email": schema_ref("ProfileEmail"),
        "country": schema_ref("ProfileCountry"),
    });
    vec![
        (
            "ProfileId",
            json!({
                "type": "string",
                "description": format!("User id, 1-{} of `[A-Za-z0-9_-]`", validate::ID_MAX_LENGTH),
                "minLength": 1,
                "maxLength": validate::ID_MAX_LENGTH,
                "pattern": *validate::ID_PATTERN,
                "example": "alice",
            }),
        ),
        (
            "ProfileName",
            json!({
                "type": "string",
                "description": format!(
                    "Display name: 1-{} characters, not all white space, no control characters",
                    validate::NAME_MAX_LENGTH
                ),
                "minLength": 1,
                "maxLength": validate::NAME_MAX_LENGTH,
                "pattern": *validate::NAME_PATTERN,
                "example": "Alice",
            }),
        ),
        (
            "ProfileEmail",
            json!({
                "type": "string",
                "format": "email",
                "description": format!(
                    "E-mail address: a dot-atom local part of ASCII (at most {} characters, no \
                     quoted strings) `@` a host name (labels of at most {} letters, digits and \
                     inner hyphens, not `--` as third and fourth character, so no `xn--` \
                     labels; no address literals); at most {} characters in all",
                    validate::EMAIL_LOCAL_MAX_LENGTH,
                    validate::EMAIL_LABEL_MAX_LENGTH,
                    validate::EMAIL_MAX_LENGTH
                ),
                "maxLength": validate::EMAIL_MAX_LENGTH,
                "pattern": *validate::EMAIL_PATTERN,
                "example": "alice@example.com",
            }),
        ),
        (
            "ProfileCountry",
            json!({
                "type": "string",
                "description": "ISO 3166-1 alpha-2 country code, upper case",
                "enum": *validate::COUNTRY_CODES,
                "example": "PT",
            }),
        ),
        (
            "ProfileInput",
            json!({
                "type": "object",
                "description": "The client-writable part of a profile: the body of PUT",
                "required": validate::INPUT_FIELDS,
                "properties": field_refs,
                "additionalProperties": false,
            }),
        ),
        (
            "ProfilePatch",
            json!({
                "type": "object",
                "description": format!(
                    "A JSON merge patch (RFC 7396) of the writable fields. Every field of a \
                     profile is required, so `null` (remove) is refused for each, and the \
                     server-managed {} are refused too",
                    validate::SERVER_FIELDS.join(", ")
                ),
                "properties": field_refs,
                "additionalProperties": false,
            }),
        ),
        (
            "Profile",
            json!({
                "type": "object",
                "description": "A user profile",
                "required": ["id", "name", "email", "country", "version", "updatedAt"],
                "properties": {
                    "id": schema_ref("ProfileId"),
                    "name": schema_ref("ProfileName"),
                    "email": schema_ref("ProfileEmail"),
                    "country": schema_ref("ProfileCountry"),
                    "version": {
                        "type": "integer",
                        "format": "int64",
                        "minimum": 1,
                        "description": "Server-managed: 1 on create, +1 on every change (a delete counts)",
                    },
                    "updatedAt": {
                        "type": "string",
                        "format": "date-time",
                        "description": "Server-managed: when the last change was committed",
                    },
                },
                "additionalProperties": false,
            }),
        ),
        (
            "EtagCondition",
            json!({
                "type": "string",
                "description": "`*`, or a comma-separated list of entity tags (`\"3\"`, `W/\"3\"`; empty elements allowed: an empty list matches nothing)",
                "pattern": *validate::ETAG_CONDITION_PATTERN,
            }),
        ),
    ]
}

fn etag_header() -> Value {
    json!({
        "required": true,
        "description": "`\"<version>\"`",
        "schema": {"type": "string", "pattern": validate::ETAG_PATTERN},
    })
}

fn profile_body(description: &str, extra_headers: Map<String, Value>) -> Value {
    let mut headers = Map::new();
    headers.insert("ETag".to_owned(), etag_header());
    headers.extend(extra_headers);
    json!({
        "description": description,
        "headers": headers,
        "content": {"application/json": {"schema": schema_ref("Profile")}},
    })
}

fn x_cache_header() -> (String, Value) {
    use crate::metrics::CacheResult;
    // A negative cache entry answers 404, never with a profile.
    let served = [
        CacheResult::Hit,
        CacheResult::Miss,
        CacheResult::Stale,
        CacheResult::Bypass,
    ]
    .map(CacheResult::as_str);
    (
        "x-cache".to_owned(),
        json!({
            "required": true,
            "description": "Where the answer came from",
            "schema": {"type": "string", "enum": served},
        }),
    )
}

/// Links for the stateful phase of a fuzzer: what a client does next with a profile it got.
fn links(from: Op) -> Value {
    let id = "$request.path.id";
    let mut links = Map::new();
    if from != Op::Delete {
        links.insert(
            "GetProfile".into(),
            json!({"operationId": Op::Get.operation_id(), "parameters": {"path.id": id}}),
        );
        links.insert(
            "GetProfileIfNoneMatch".into(),
            json!({"operationId": Op::Get.operation_id(),
                   "parameters": {"path.id": id, "header.If-None-Match": "$response.header.ETag"}}),
        );
        for op in [Op::Put, Op::Patch, Op::Delete] {
            let name = match op {
                Op::Put => "ReplaceProfile",
                Op::Patch => "PatchProfile",
                _ => "DeleteProfile",
            };
            links.insert(
                name.into(),
                json!({"operationId": op.operation_id(),
                       "parameters": {"path.id": id, "header.If-Match": "$response.header.ETag"}}),
            );
        }
    } else {
        links.insert(
            "GetDeletedProfile".into(),
            json!({"operationId": Op::Get.operation_id(), "parameters": {"path.id": id}}),
        );
        links.insert(
            "RecreateProfile".into(),
            json!({"operationId": Op::Put.operation_id(), "parameters": {"path.id": id}}),
        );
    }
    Value::Object(links)
}

fn operation(op: Op, settings: &AuthSettings) -> Value {
    let id_param = json!({
        "name": "id", "in": "path", "required": true,
        "description": "User id", "schema": schema_ref("ProfileId"),
    });
    const IF_MATCH: &str =
        "The version(s) the change is based on (strong comparison: a weak tag never matches)";
    const IF_MATCH_DELETE: &str =
        "The version(s) the delete is based on (strong comparison: a weak tag never matches)";
    let condition = |name: &str, description: &str| {
        json!({"name": name, "in": "header", "required": false,
               "description": description, "schema": schema_ref("EtagCondition")})
    };
    let (summary, parameters, mut responses) = match op {
        Op::Get => {
            let mut ok = profile_body("The profile", Map::new());
            let (name, header) = x_cache_header();
            ok["headers"][&name] = header.clone();
            (
                "Get a profile",
                vec![
                    id_param,
                    condition(
                        "If-None-Match",
                        "ETag(s) the client holds: 304 when one is current (weak comparison: `W/\"3\"` names version 3 too)",
                    ),
                ],
                json!({
                    "200": ok,
                    "304": {"description": "Not modified", "headers": {"ETag": etag_header(), name: header}},
                }),
            )
        }
        Op::Put => {
            let mut location = Map::new();
            location.insert(
                "Location".to_owned(),
                json!({"required": true, "description": "`/v1/profiles/{id}`",
                       "schema": {"type": "string"}}),
            );
            (
                "Create or replace a profile",
                vec![id_param, condition("If-Match", IF_MATCH)],
                json!({
                    "200": profile_body("Replaced", Map::new()),
                    "201": profile_body("Created", location),
                }),
            )
        }
        Op::Patch => (
            "Change some fields with a JSON merge patch (RFC 7396)",
            vec![id_param, condition("If-Match", IF_MATCH)],
            json!({"200": profile_body("Patched", Map::new())}),
        ),
        Op::Delete => (
            "Delete a profile (its version keeps counting if it is created again)",
            vec![id_param, condition("If-Match", IF_MATCH_DELETE)],
            json!({"204": {"description": "Deleted"}}),
        ),
    };
    if let Some(map) = responses.as_object_mut() {
        for (status, response) in map.iter_mut() {
            if status.starts_with('2') {
                response["links"] = links(op);
            }
        }
        for error in error_responses(op, settings) {
            map.insert(
                error.error.status().as_u16().to_string(),
                problem_response(&error),
            );
        }
    }
    let mut operation = json!({
        "tags": ["profiles"],
        "operationId": op.operation_id(),
        "summary": summary,
        "parameters": parameters,
        "responses": responses,
    });
    match op {
        Op::Put => {
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": schema_ref("ProfileInput")}},
            });
        }
        Op::Patch => {
            let schema = json!({"schema": schema_ref("ProfilePatch")});
            operation["requestBody"] = json!({
                "required": true,
                "content": {
                    (routes::MERGE_PATCH): schema,
                    (routes::JSON): schema,
                },
            });
        }
        Op::Get | Op::Delete => {}
    }
    if !settings.disabled {
        let mut security = vec![json!({BEARER: []})];
        if op == Op::Get && settings.public_reads {
            security.push(json!({}));
        }
        operation["security"] = Value::Array(security);
    }
    operation
}

/// The document `/openapi.json` serves under these settings.
pub fn document(settings: &AuthSettings) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let mut item = Map::new();
    for op in Op::ALL {
        item.insert(op.method().to_owned(), operation(op, settings));
    }
    if let Some(paths) = doc["paths"].as_object_mut() {
        paths.insert(routes::PROFILE_ROUTE.to_owned(), Value::Object(item));
    }
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        for (name, schema) in profile_schemas() {
            schemas.insert(name.to_owned(), schema);
        }
    }
    if !settings.disabled {
        doc["components"]["securitySchemes"] = json!({
            BEARER: {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": format!(
                    "A JWT whose `sub` is the profile id, or with the `{ADMIN_SCOPE}` scope, for \
                     writes{}",
                    if settings.public_reads { "" } else { " and reads" }
                ),
            },
        });
    }
    doc
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
