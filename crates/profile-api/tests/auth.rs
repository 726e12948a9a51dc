//! Edge security in the API itself (issue 9): bearer JWTs, the own-profile rule, the admin
//! scope and the per-subject rate limit, over real HTTP against the real services.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &str = "integration-secret-0123456789abcdef";
const ISSUER: &str = "https://issuer.statecast.test";
const AUDIENCE: &str = "statecast-api";

fn token(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(sub: &str, scope: &str, exp_in: i64) -> Value {
    json!({"sub": sub, "scope": scope, "iss": ISSUER, "aud": AUDIENCE,
           "exp": chrono::Utc::now().timestamp() + exp_in})
}

async fn secured(rate: u32, burst: u32) -> common::TestApp {
    let mut config = common::fresh_config("auth").await;
    config.auth_disabled = false;
    config.auth_hs256_secret = Some(SECRET.into());
    config.auth_issuer = Some(ISSUER.into());
    config.auth_audience = Some(AUDIENCE.into());
    config.auth_leeway_seconds = 5;
    config.rate_limit_per_second = rate;
    config.rate_limit_burst = burst;
    common::start(config, false).await
}

async fn put(app: &common::TestApp, id: &str, bearer: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .put(app.url(&format!("/v1/profiles/{id}")))
        .json(&common::body("Auth"));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn get(app: &common::TestApp, id: &str, bearer: &str) -> reqwest::Response {
    app.http
        .get(app.url(&format!("/v1/profiles/{id}")))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    body
}

#[tokio::test]
async fn missing_expired_foreign_and_forged_tokens_are_401_problems() {
    let app = secured(0, 0).await;
    let id = common::user("auth");
    let response = put(&app, &id, None).await;
    assert!(response.headers().contains_key("www-authenticate"));
    assert_problem(response, 401).await;
    let bad = [
        token(claims(&id, "", -120), SECRET),
        token(
            json!({"sub": id, "iss": "https://evil.test", "aud": AUDIENCE,
                     "exp": chrono::Utc::now().timestamp() + 60}),
            SECRET,
        ),
        token(
            json!({"sub": id, "iss": ISSUER, "aud": "someone-else",
                     "exp": chrono::Utc::now().timestamp() + 60}),
            SECRET,
        ),
        token(claims(&id, "", 60), "a-different-secret-of-some-length"),
    ];
    for token in bad {
        assert_problem(put(&app, &id, Some(&token)).await, 401).await;
        let read = get(&app, &id, &token).await;
        assert_problem(read, 401).await;
    }
    // Probes stay public.
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test]
async fn a_user_may_write_their_own_profile_and_an_admin_anyone_s() {
    let app = secured(0, 0).await;
    let alice = common::user("alice");
    let bob = common::user("bob");
    let alice_token = token(claims(&alice, "", 300), SECRET);
    assert_eq!(
        put(&app, &alice, Some(&alice_token))
            .await
            .status()
            .as_u16(),
        201
    );
    let body = assert_problem(put(&app, &bob, Some(&alice_token)).await, 403).await;
    assert!(body["detail"].as_str().unwrap().contains("profiles:admin"));
    let admin = token(claims("ops", "profiles:read profiles:admin", 300), SECRET);
    assert_eq!(put(&app, &bob, Some(&admin)).await.status().as_u16(), 201);
    // Reading another user's profile needs a valid token, not ownership.
    let read = get(&app, &bob, &alice_token).await;
    assert_eq!(read.status().as_u16(), 200);
}

#[tokio::test]
async fn a_percent_encoded_id_is_authorized_as_the_id_the_handler_writes() {
    let app = secured(0, 0).await;
    // `%61` is `a`: the handler writes `a<rest>` for the path `%61<rest>`.
    let victim = common::user("alice");
    let encoded = format!("%61{}", &victim[1..]);
    let victim_token = token(claims(&victim, "", 300), SECRET);
    assert_eq!(
        put(&app, &victim, Some(&victim_token))
            .await
            .status()
            .as_u16(),
        201
    );
    // A token whose subject is the raw segment may not change the decoded id's profile.
    let sneaky = token(claims(&encoded, "", 300), SECRET);
    assert_problem(put(&app, &encoded, Some(&sneaky)).await, 403).await;
    let delete = app
        .http
        .delete(app.url(&format!("/v1/profiles/{encoded}")))
        .bearer_auth(&sneaky)
        .send()
        .await
        .unwrap();
    assert_problem(delete, 403).await;
    let current: Value = get(&app, &victim, &victim_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(current["version"], 1, "the profile was not changed");
    // The owner reaches their profile under either spelling.
    let own = put(&app, &encoded, Some(&victim_token)).await;
    assert_eq!(own.status().as_u16(), 200);
    let own: Value = own.json().await.unwrap();
    assert_eq!(
        (own["id"].as_str(), own["version"].as_i64()),
        (Some(victim.as_str()), Some(2))
    );
}

#[tokio::test]
async fn undeclared_methods_are_405_with_allow_before_any_authentication() {
    let app = secured(100, 200).await;
    let url = app.url(&format!("/v1/profiles/{}", common::user("m")));
    // These used to be 401: the auth layer ran for every method of the route.
    for method in ["POST", "TRACE", "OPTIONS"] {
        let response = app
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                &url,
            )
            .send()
            .await
            .unwrap();
        let allow = response.headers()["allow"].to_str().unwrap().to_owned();
        for served in ["GET", "PUT", "PATCH", "DELETE"] {
            assert!(allow.contains(served), "{method}: Allow: {allow}");
        }
        assert_problem(response, 405).await;
    }
    // Served methods still need a token.
    assert_problem(put(&app, &common::user("m"), None).await, 401).await;
}

#[tokio::test]
async fn the_served_document_states_the_security_the_api_enforces() {
    let app = secured(100, 200).await;
    let doc: Value = app.get_json("/openapi.json").await;
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let ops = &doc["paths"]["/v1/profiles/{id}"];
    for method in ["get", "put", "patch", "delete"] {
        assert_eq!(ops[method]["security"], json!([{"bearer": []}]), "{method}");
    }
    assert!(ops["put"]["responses"]["403"].is_object());
    let open = common::start(common::fresh_config("open").await, false).await;
    let doc: Value = open.get_json("/openapi.json").await;
    assert!(doc["components"]["securitySchemes"].is_null());
    assert!(doc["paths"]["/v1/profiles/{id}"]["put"]["security"].is_null());
    assert!(doc["paths"]["/v1/profiles/{id}"]["put"]["responses"]["403"].is_null());
}

#[tokio::test]
async fn public_reads_need_no_token_but_writes_still_do() {
    let mut config = common::fresh_config("public").await;
    config.auth_disabled = false;
    config.auth_hs256_secret = Some(SECRET.into());
    config.public_reads = true;
    let app = common::start(config, false).await;
    let id = common::user("pub");
    assert_eq!(app.get(&id).await.status().as_u16(), 404);
    assert_problem(put(&app, &id, None).await, 401).await;
}

#[tokio::test]
async fn exceeding_the_rate_limit_gives_429_with_retry_after_and_recovers() {
    let app = secured(2, 3).await;
    let id = common::user("rate");
    let t = token(claims(&id, "", 300), SECRET);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = get(&app, &id, &t).await;
        if r.status().as_u16() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            assert_problem(r, 429).await;
            statuses.push(429);
        } else {
            statuses.push(r.status().as_u16());
        }
    }
    assert_eq!(&statuses[..3], &[404, 404, 404], "the burst is allowed");
    assert!(statuses.contains(&429), "the limit never hit: {statuses:?}");
    // Another subject is unaffected.
    let other = token(claims("someone-else", "", 300), SECRET);
    let r = get(&app, &id, &other).await;
    assert_eq!(r.status().as_u16(), 404);
    // The bucket refills at 2/s.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = get(&app, &id, &t).await;
    assert_eq!(r.status().as_u16(), 404);
}

/// What the README says `AUTH_DISABLED=true` does: no token is needed or checked and anyone may
/// write any profile, but the rate limit stays on, keyed by client address (every caller is
/// anonymous), and a malformed `Authorization` header is still a 401.
#[tokio::test]
async fn auth_disabled_lets_anyone_write_but_keeps_the_per_address_rate_limit() {
    let mut config = common::fresh_config("noauth").await;
    assert!(config.auth_disabled);
    config.rate_limit_per_second = 1;
    config.rate_limit_burst = 2;
    let app = common::start(config, false).await;
    assert_eq!(put(&app, &common::user("a"), None).await.status(), 201);
    // A token is not even verified, and someone else's id is writable.
    assert_eq!(
        put(&app, &common::user("b"), Some("not-a-jwt"))
            .await
            .status(),
        201
    );
    let malformed = app
        .http
        .get(app.url("/v1/profiles/nobody"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_problem(malformed, 401).await;
    // Two requests from 127.0.0.1 emptied its bucket, whatever the subjects or ids.
    let limited = app.get(&common::user("c")).await;
    assert!(limited.headers().contains_key("retry-after"));
    assert_problem(limited, 429).await;
}

#[tokio::test]
async fn auth_without_a_key_source_refuses_to_start() {
    let mut config = common::fresh_config("nokey").await;
    config.auth_disabled = false;
    let error = profile_api::build(config).await.err().unwrap();
    assert!(error.to_string().contains("AUTH_DISABLED=true"), "{error}");
}

/// An ES256 key pair built from fixed bytes: the private half as PKCS#8 DER for signing, the
/// public half as a JWK.
fn ec_key(seed: u8, kid: &str) -> (jsonwebtoken::EncodingKey, Value) {
    use base64::Engine as _;
    use p256::pkcs8::EncodePrivateKey as _;
    let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
    let der = secret.to_pkcs8_der().unwrap();
    let point =
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                     "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())});
    (EncodingKey::from_ec_der(der.as_bytes()), jwk)
}

fn es256(key: &jsonwebtoken::EncodingKey, kid: &str, claims: &Value) -> String {
    signed(Algorithm::ES256, key, kid, claims)
}

/// A fresh RS256 key pair: the private half for signing, the public half as a JWK.
fn rsa_key(kid: &str) -> (jsonwebtoken::EncodingKey, Value) {
    use base64::Engine as _;
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::traits::PublicKeyParts as _;
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let der = private.to_pkcs1_der().unwrap();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwk = json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                     "n": b64(&private.n().to_bytes_be()), "e": b64(&private.e().to_bytes_be())});
    (EncodingKey::from_rsa_der(der.as_bytes()), jwk)
}

fn signed(
    algorithm: Algorithm,
    key: &jsonwebtoken::EncodingKey,
    kid: &str,
    claims: &Value,
) -> String {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// Serves `keys` as a JWKS and starts the API against it; returns the API and a count of the
/// JWKS fetches.
async fn behind_jwks(
    keys: Vec<Value>,
) -> (
    common::TestApp,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let jwks = json!({ "keys": keys });
    let server = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = jwks.clone();
            async move { axum::Json(body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, server).await });

    let mut config = common::fresh_config("jwks").await;
    config.auth_disabled = false;
    config.auth_jwks_url = Some(jwks_url);
    config.auth_issuer = Some(ISSUER.into());
    config.auth_audience = Some(AUDIENCE.into());
    (common::start(config, false).await, fetches)
}

#[tokio::test]
async fn rs256_tokens_verify_against_the_jwks_and_a_foreign_key_does_not() {
    let (signing, jwk) = rsa_key("r1");
    let (forger, _) = rsa_key("r1");
    let (app, _) = behind_jwks(vec![jwk]).await;
    let id = common::user("rs256");
    let good = signed(Algorithm::RS256, &signing, "r1", &claims(&id, "", 300));
    assert_eq!(put(&app, &id, Some(&good)).await.status().as_u16(), 201);
    assert_eq!(get(&app, &id, &good).await.status().as_u16(), 200);
    let forged = signed(Algorithm::RS256, &forger, "r1", &claims(&id, "", 300));
    assert_problem(put(&app, &id, Some(&forged)).await, 401).await;
    // The right key but someone else's profile: authenticated, not authorised.
    let other = signed(
        Algorithm::RS256,
        &signing,
        "r1",
        &claims("someone-else", "", 300),
    );
    assert_problem(put(&app, &id, Some(&other)).await, 403).await;
}

#[tokio::test]
async fn tokens_are_verified_against_a_jwks_fetched_once_and_cached() {
    use std::sync::atomic::Ordering;
    let (signing, jwk) = ec_key(7, "k1");
    let (forger, _) = ec_key(9, "k1");
    let (app, fetches) = behind_jwks(vec![jwk]).await;
    let id = common::user("jwks");

    let good = es256(&signing, "k1", &claims(&id, "", 300));
    assert_eq!(put(&app, &id, Some(&good)).await.status().as_u16(), 201);
    assert_eq!(get(&app, &id, &good).await.status().as_u16(), 200);
    // Same kid, another key: the signature does not verify.
    let forged = es256(&forger, "k1", &claims(&id, "", 300));
    assert_problem(put(&app, &id, Some(&forged)).await, 401).await;
    // An HS256 token is not accepted where a JWKS is configured.
    assert_problem(
        put(&app, &id, Some(&token(claims(&id, "", 300), SECRET))).await,
        401,
    )
    .await;
    // An unknown kid triggers at most one refetch, then 401.
    let unknown = es256(&signing, "k2", &claims(&id, "", 300));
    assert_problem(put(&app, &id, Some(&unknown)).await, 401).await;
    assert_problem(put(&app, &id, Some(&unknown)).await, 401).await;
    assert!(
        fetches.load(Ordering::SeqCst) <= 2,
        "the JWKS was fetched {} times",
        fetches.load(Ordering::SeqCst)
    );
}
