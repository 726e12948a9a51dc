//! The HTTP contract: CRUD, ETags, validation and problem+json, operational endpoints.
#![allow(clippy::unwrap_used)]

mod common;

use common::{body, start, user, version_of};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PROBLEM: &str = "application/problem+json";

async fn problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, PROBLEM);
    let value: Value = response.json().await.unwrap();
    assert_eq!(value["status"], status.as_u16());
    for member in ["type", "title", "detail", "instance"] {
        assert!(value[member].is_string(), "problem lacks {member}: {value}");
    }
    value
}

fn error_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn crud_round_trip_keeps_versions_increasing_across_delete_and_recreate() {
    let t = start(common::fresh_config("crud").await, false).await;
    let id = user("crud");

    let created = t.put(&id, &body("Alice")).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.headers()["etag"], "\"1\"");
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["id"], id.as_str());
    assert_eq!(created["version"], 1);
    assert!(created["updatedAt"].is_string());

    let got = t.get(&id).await;
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.headers()["etag"], "\"1\"");
    let got: Value = got.json().await.unwrap();
    assert_eq!(got, created);

    let replaced = t.put(&id, &body("Alicia")).await;
    assert_eq!(replaced.status(), StatusCode::OK);
    assert_eq!(version_of(&replaced.json().await.unwrap()), 2);

    let patched = t
        .http
        .patch(t.url(&format!("/v1/profiles/{id}")))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"country":"ES"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(
        (patched["country"].as_str(), patched["name"].as_str()),
        (Some("ES"), Some("Alicia"))
    );
    assert_eq!(patched["version"], 3);

    let deleted = t
        .http
        .delete(t.url(&format!("/v1/profiles/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    problem(t.get(&id).await, StatusCode::NOT_FOUND).await;
    let again = t
        .http
        .delete(t.url(&format!("/v1/profiles/{id}")))
        .send()
        .await
        .unwrap();
    problem(again, StatusCode::NOT_FOUND).await;

    let recreated = t.put(&id, &body("Alice")).await;
    assert_eq!(recreated.status(), StatusCode::CREATED);
    assert_eq!(
        version_of(&recreated.json().await.unwrap()),
        5,
        "delete was version 4"
    );

    // The outbox holds one event per change, typed and versioned.
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_type, (payload->>'profileversion')::bigint FROM outbox WHERE user_id = $1 ORDER BY id",
    )
    .bind(&id)
    .fetch_all(t.app.pool())
    .await
    .unwrap();
    let expected: Vec<(String, i64)> = [
        ("UserCreated", 1),
        ("UserUpdated", 2),
        ("UserUpdated", 3),
        ("UserDeleted", 4),
        ("UserCreated", 5),
    ]
    .into_iter()
    .map(|(t, v)| (t.to_owned(), v))
    .collect();
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn etags_give_304_and_if_match_gives_412() {
    let t = start(common::fresh_config("etag").await, false).await;
    let id = user("etag");
    let url = t.url(&format!("/v1/profiles/{id}"));

    // If-Match on a missing profile.
    let missing = t
        .http
        .put(&url)
        .header("if-match", "\"1\"")
        .json(&body("A"))
        .send()
        .await
        .unwrap();
    problem(missing, StatusCode::PRECONDITION_FAILED).await;
    assert_eq!(t.put(&id, &body("A")).await.status(), StatusCode::CREATED);

    let not_modified = t
        .http
        .get(&url)
        .header("if-none-match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers()["etag"], "\"1\"");
    let modified = t
        .http
        .get(&url)
        .header("if-none-match", "\"7\"")
        .send()
        .await
        .unwrap();
    assert_eq!(modified.status(), StatusCode::OK);

    let stale = t
        .http
        .put(&url)
        .header("if-match", "\"9\"")
        .json(&body("B"))
        .send()
        .await
        .unwrap();
    let p = problem(stale, StatusCode::PRECONDITION_FAILED).await;
    assert!(p["detail"].as_str().unwrap().contains('1'), "{p}");
    let ok = t
        .http
        .put(&url)
        .header("if-match", "\"1\"")
        .json(&body("B"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["etag"], "\"2\"");

    let patch = t
        .http
        .patch(&url)
        .header("content-type", "application/json")
        .header("if-match", "\"1\"")
        .body(r#"{"name":"C"}"#)
        .send()
        .await
        .unwrap();
    problem(patch, StatusCode::PRECONDITION_FAILED).await;
    let delete = t
        .http
        .delete(&url)
        .header("if-match", "\"1\"")
        .send()
        .await
        .unwrap();
    problem(delete, StatusCode::PRECONDITION_FAILED).await;
    let delete = t
        .http
        .delete(&url)
        .header("if-match", "\"2\"")
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn bad_requests_are_problems_naming_what_was_wrong() {
    let t = start(common::fresh_config("bad").await, false).await;
    let id = user("bad");
    let url = t.url(&format!("/v1/profiles/{id}"));

    let malformed = t
        .http
        .put(&url)
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    let p = problem(malformed, StatusCode::BAD_REQUEST).await;
    assert_eq!(p["instance"], format!("/v1/profiles/{id}"));

    let text = t
        .http
        .put(&url)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(text, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;

    let big = json!({"name": "x".repeat(70 * 1024), "email": "a@b.c", "country": "PT"});
    problem(t.put(&id, &big).await, StatusCode::PAYLOAD_TOO_LARGE).await;

    let unknown = json!({"name": "A", "email": "a@example.com", "country": "PT", "nick": "x"});
    let p = problem(t.put(&id, &unknown).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(error_fields(&p), ["nick"]);
    assert!(p["errors"][0]["message"].is_string());

    let invalid = json!({"name": "", "email": "not-an-email", "country": "ZZ"});
    let p = problem(t.put(&id, &invalid).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(error_fields(&p), ["name", "email", "country"]);

    let mistyped = json!({"name": 42, "email": "a@example.com", "country": "PT"});
    let p = problem(
        t.put(&id, &mistyped).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(error_fields(&p), ["name"]);

    let bad_id = t.put("no.dots", &body("A")).await;
    let p = problem(bad_id, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(error_fields(&p), ["id"]);

    assert_eq!(t.put(&id, &body("A")).await.status(), StatusCode::CREATED);
    for server_field in [
        r#"{"version":9}"#,
        r#"{"id":"x"}"#,
        r#"{"updatedAt":"2020-01-01T00:00:00Z"}"#,
    ] {
        let patch = t
            .http
            .patch(&url)
            .header("content-type", "application/merge-patch+json")
            .body(server_field)
            .send()
            .await
            .unwrap();
        let p = problem(patch, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&p).len(), 1, "{p}");
    }
    let removes_required = t
        .http
        .patch(&url)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"email":null}"#)
        .send()
        .await
        .unwrap();
    let p = problem(removes_required, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(error_fields(&p), ["email"]);
    let patch_text = t
        .http
        .patch(&url)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(patch_text, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;

    // None of the refused requests changed anything.
    assert_eq!(version_of(&t.get(&id).await.json().await.unwrap()), 1);

    let nowhere = t.http.get(t.url("/v2/nowhere")).send().await.unwrap();
    let p = problem(nowhere, StatusCode::NOT_FOUND).await;
    assert_eq!(p["instance"], "/v2/nowhere");
    let wrong_method = t.http.post(&url).json(&body("A")).send().await.unwrap();
    problem(wrong_method, StatusCode::METHOD_NOT_ALLOWED).await;
    problem(t.get(&user("nobody")).await, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn operational_endpoints_answer() {
    let t = start(common::fresh_config("ops").await, false).await;
    let health = t.http.get(t.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = t.http.get(t.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["postgres"], "up");
    assert_eq!(ready["redis"], "up");

    let id = user("ops");
    t.put(&id, &body("A")).await;
    t.get(&id).await;
    let metrics = t.get_text("/metrics").await;
    for name in [
        "profile_cache_lookups_total",
        "profile_db_loads_total",
        "http_requests_total",
        "http_request_duration_seconds",
        "outbox_pending",
        "outbox_published_total",
        "outbox_publish_errors_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(metrics.contains("route=\"/v1/profiles/{id}\""), "{metrics}");

    let doc: Value = t.get_json("/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/profiles/{id}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} missing from OpenAPI");
    }
    let profile_ops = paths["/v1/profiles/{id}"].as_object().unwrap();
    for method in ["get", "put", "patch", "delete"] {
        assert!(profile_ops.contains_key(method), "{method} missing");
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in ["Profile", "ProfileInput", "Problem", "FieldError"] {
        assert!(schemas.contains_key(schema), "{schema} missing");
    }
}

#[tokio::test]
async fn router_works_without_a_server() {
    use tower::ServiceExt as _;
    let config = common::fresh_config("oneshot").await;
    let app = profile_api::build(config).await.unwrap();
    let response = app
        .router()
        .oneshot(
            axum::http::Request::get("/healthz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_request_over_the_time_limit_is_a_503_problem() {
    let mut config = common::fresh_config("timeout").await;
    // Zero: any request that has to wait for I/O at all is over the limit.
    config.request_timeout_ms = 0;
    let t = start(config, false).await;
    let response = t.get(&user("slow")).await;
    let p = problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        p["type"].as_str().unwrap().ends_with("request-timeout"),
        "{p}"
    );
}

// Regression tests for what the contract fuzzer (`scripts/contract-fuzz`) found: each was a
// request the OpenAPI document and the API judged differently, or a 5xx.

async fn send_patch(
    t: &common::TestApp,
    id: &str,
    if_match: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut request = t
        .http
        .patch(t.url(&format!("/v1/profiles/{id}")))
        .header("content-type", "application/merge-patch+json")
        .body(body.to_owned());
    if let Some(tag) = if_match {
        request = request.header("if-match", tag);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn control_characters_in_a_name_are_refused_with_422_not_a_500() {
    let t = start(common::fresh_config("ctl").await, false).await;
    let id = user("ctl");
    // PostgreSQL cannot store NUL in text: this used to be a 500 from the database.
    for name in [
        "A\u{0}",
        "Line\nbreak",
        "\u{7f}",
        "\u{85}x",
        "\u{a0}\u{3000}",
    ] {
        let p = problem(
            t.put(
                &id,
                &json!({"name": name, "email": "a@example.com", "country": "PT"}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(error_fields(&p), ["name"], "{name:?}");
    }
    problem(t.get(&id).await, StatusCode::NOT_FOUND).await;
    // At the limit accepted, one over refused.
    let at_limit = json!({"name": "é".repeat(200), "email": "a@example.com", "country": "PT"});
    assert_eq!(t.put(&id, &at_limit).await.status(), StatusCode::CREATED);
    let over = json!({"name": "é".repeat(201), "email": "a@example.com", "country": "PT"});
    problem(t.put(&id, &over).await, StatusCode::UNPROCESSABLE_ENTITY).await;
}

#[tokio::test]
async fn emails_outside_the_documented_syntax_are_refused() {
    let t = start(common::fresh_config("mail").await, false).await;
    let id = user("mail");
    // `email_address` accepted these; the document's `format: email` + pattern does not.
    for email in [
        "Alice <alice@example.com>",
        "\"a b\"@example.com",
        "a@[127.0.0.1]",
        "ä@example.com",
        "a@ab--c.example",
    ] {
        let p = problem(
            t.put(&id, &json!({"name": "A", "email": email, "country": "PT"}))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(error_fields(&p), ["email"], "{email}");
    }
    let local = "a".repeat(64);
    let ok = json!({"name": "A", "email": format!("{local}@example.com"), "country": "PT"});
    assert_eq!(t.put(&id, &ok).await.status(), StatusCode::CREATED);
    let over = json!({"name": "A", "email": format!("{local}a@example.com"), "country": "PT"});
    problem(t.put(&id, &over).await, StatusCode::UNPROCESSABLE_ENTITY).await;
}

#[tokio::test]
async fn malformed_conditional_headers_are_400_and_an_empty_list_matches_nothing() {
    let t = start(common::fresh_config("cond").await, false).await;
    let id = user("cond");
    let url = t.url(&format!("/v1/profiles/{id}"));
    assert_eq!(t.put(&id, &body("A")).await.status(), StatusCode::CREATED);
    // These used to be read as "matches nothing": 412 on a write, ignored on a read.
    for tag in ["1", "junk", "\"1\" \"2\"", "W/1", "*, \"1\""] {
        let put = t
            .http
            .put(&url)
            .header("if-match", tag)
            .json(&body("B"))
            .send()
            .await
            .unwrap();
        let p = problem(put, StatusCode::BAD_REQUEST).await;
        assert!(p["detail"].as_str().unwrap().contains("if-match"), "{p}");
        let get = t
            .http
            .get(&url)
            .header("if-none-match", tag)
            .send()
            .await
            .unwrap();
        problem(get, StatusCode::BAD_REQUEST).await;
        let delete = t
            .http
            .delete(&url)
            .header("if-match", tag)
            .send()
            .await
            .unwrap();
        problem(delete, StatusCode::BAD_REQUEST).await;
    }
    // RFC 9110 lists may have empty elements; an empty list matches no version.
    let empty = t
        .http
        .put(&url)
        .header("if-match", "")
        .json(&body("B"))
        .send()
        .await
        .unwrap();
    problem(empty, StatusCode::PRECONDITION_FAILED).await;
    let listed = t
        .http
        .put(&url)
        .header("if-match", ", W/\"9\",, \"1\" ,")
        .json(&body("B"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    let fresh = t
        .http
        .get(&url)
        .header("if-none-match", "")
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    // "02" is another entity tag than "2".
    let other_tag = t
        .http
        .get(&url)
        .header("if-none-match", "\"02\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other_tag.status(), StatusCode::OK);
    // If-Match compares strongly (RFC 9110, 13.1.1): the current version's weak tag does not
    // match and nothing is written; If-None-Match compares weakly, so the same tag is a 304.
    let weak_write = t
        .http
        .put(&url)
        .header("if-match", "W/\"2\"")
        .json(&body("C"))
        .send()
        .await
        .unwrap();
    problem(weak_write, StatusCode::PRECONDITION_FAILED).await;
    let weak_read = t
        .http
        .get(&url)
        .header("if-none-match", "W/\"2\"")
        .send()
        .await
        .unwrap();
    assert_eq!(weak_read.status(), StatusCode::NOT_MODIFIED);
    let current = t.http.get(&url).send().await.unwrap();
    assert_eq!(current.headers()["etag"], "\"2\"");
}

#[tokio::test]
async fn an_invalid_patch_is_422_whatever_the_state_of_the_profile() {
    let t = start(common::fresh_config("patch422").await, false).await;
    let id = user("patch422");
    // Absent profile: used to be 404 (the state was read before the patch was judged).
    let p = problem(
        send_patch(&t, &id, None, r#"{"name":null}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(error_fields(&p), ["name"]);
    assert_eq!(t.put(&id, &body("A")).await.status(), StatusCode::CREATED);
    // A stale If-Match: used to be 412.
    let p = problem(
        send_patch(&t, &id, Some("\"9\""), r#"{"email":5,"country":"pt"}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let mut fields = error_fields(&p);
    fields.sort();
    assert_eq!(fields, ["country", "email"]);
    // An unknown member set to null removed nothing and was accepted as a change (version 2).
    let p = problem(
        send_patch(&t, &id, None, r#"{"nickname":null}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(error_fields(&p), ["nickname"]);
    assert_eq!(version_of(&t.get(&id).await.json().await.unwrap()), 1);
    // A valid patch with a stale If-Match is still 412, with a current one 200.
    problem(
        send_patch(&t, &id, Some("\"9\""), r#"{"country":"ES"}"#).await,
        StatusCode::PRECONDITION_FAILED,
    )
    .await;
    let ok = send_patch(&t, &id, Some("\"1\""), r#"{"country":"ES"}"#).await;
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn delete_of_an_invalid_id_is_the_documented_422() {
    let t = start(common::fresh_config("del422").await, false).await;
    let delete = t
        .http
        .delete(t.url("/v1/profiles/no.dots"))
        .send()
        .await
        .unwrap();
    let p = problem(delete, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(error_fields(&p), ["id"]);
    let doc: Value = t.get_json("/openapi.json").await;
    let delete = &doc["paths"]["/v1/profiles/{id}"]["delete"]["responses"];
    assert_eq!(
        delete["422"]["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    let id_schema = &doc["components"]["schemas"]["ProfileId"];
    assert_eq!(id_schema["pattern"], "^[A-Za-z0-9_-]{1,64}$");
    assert_eq!(id_schema["maxLength"], 64);
    let too_long = t
        .http
        .delete(t.url(&format!("/v1/profiles/{}", "a".repeat(65))))
        .send()
        .await
        .unwrap();
    problem(too_long, StatusCode::UNPROCESSABLE_ENTITY).await;
    let at_limit = t
        .http
        .delete(t.url(&format!("/v1/profiles/{}", "a".repeat(64))))
        .send()
        .await
        .unwrap();
    problem(at_limit, StatusCode::NOT_FOUND).await;
}
