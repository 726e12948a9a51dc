//! Authentication, authorization and a per-subject rate limit: defence in depth behind the API
//! gateway, and the one business rule the gateway must not hold ("a user may only change their own
//! profile unless they are an admin").
//!
//! - Bearer JWTs are verified with an HS256 secret (`AUTH_HS256_SECRET`) or against a JWKS
//!   (`AUTH_JWKS_URL`, RS256/ES256, keys cached and refetched on an unknown `kid`); issuer and
//!   audience are checked when configured, `exp` always, with a bounded clock skew.
//! - A write to `/v1/profiles/{id}` needs `sub == id` or the scope `profiles:admin`; reads need a
//!   valid token unless `PUBLIC_READS=true`. Probes, metrics and the OpenAPI document are public.
//! - Each subject (or, for anonymous requests, each client address: the TCP peer, or the
//!   forwarded address behind a `TRUSTED_PROXIES` proxy) has a token bucket; an empty bucket
//!   answers 429 with `Retry-After`. With `AUTH_DISABLED=true` every request is anonymous, so the
//!   limit stays on, keyed by client address.
//!
//! Authentication is off only with an explicit `AUTH_DISABLED=true`, and then loudly logged.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts as _, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::RwLock;

use crate::problem::ApiError;

/// The scope that may change any profile.
pub const ADMIN_SCOPE: &str = "profiles:admin";

/// How long fetched JWKS keys are trusted before a refetch.
const JWKS_TTL: Duration = Duration::from_secs(300);
/// Never refetch the JWKS more often than this, whatever `kid`s clients invent.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);
/// The rate limiter keeps a bucket per subject it has seen; every this many checks it forgets the
/// buckets that have refilled (indistinguishable from new ones), so its size follows the subjects
/// active within one refill period instead of every subject ever seen.
const PRUNE_EVERY: u64 = 4096;

/// Authentication and rate-limit settings (from `Config`).
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// `AUTH_DISABLED`: no authentication at all.
    pub disabled: bool,
    /// `AUTH_HS256_SECRET`.
    pub hs256_secret: Option<String>,
    /// `AUTH_JWKS_URL`.
    pub jwks_url: Option<String>,
    /// `AUTH_ISSUER`: required `iss`, when set.
    pub issuer: Option<String>,
    /// `AUTH_AUDIENCE`: required `aud`, when set.
    pub audience: Option<String>,
    /// `PUBLIC_READS`: GETs need no token.
    pub public_reads: bool,
    /// `AUTH_LEEWAY_SECONDS`: tolerated clock skew for `exp`/`nbf`.
    pub leeway_seconds: u64,
    /// `RATE_LIMIT_PER_SECOND`: sustained requests per subject; 0 disables the limit.
    pub rate_limit_per_second: u32,
    /// `RATE_LIMIT_BURST`: bucket size per subject.
    pub rate_limit_burst: u32,
}

/// Why the settings cannot work.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// Neither a key source nor an explicit opt-out.
    #[error(
        "no authentication configured: set AUTH_HS256_SECRET or AUTH_JWKS_URL, \
         or AUTH_DISABLED=true to run without authentication"
    )]
    NoKeySource,
    /// Both key sources at once.
    #[error("set only one of AUTH_HS256_SECRET and AUTH_JWKS_URL")]
    TwoKeySources,
    /// The HTTP client for the JWKS could not be built.
    #[error("cannot build the JWKS client: {0}")]
    Client(String),
}

/// Why a request is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// 401: no bearer token where one is needed.
    #[error("a bearer token is required")]
    MissingToken,
    /// 401: the token is expired, forged, or for someone else's issuer or audience.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// 403: valid token, but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// 429: the subject's bucket is empty; retry after this many seconds.
    #[error("rate limit exceeded")]
    RateLimited(u64),
    /// 503: the JWKS could not be fetched, so no token can be checked.
    #[error("the key set is unavailable")]
    KeysUnavailable,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`.
    pub subject: String,
    /// Holds [`ADMIN_SCOPE`].
    pub admin: bool,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<Vec<String>>,
}

impl Claims {
    fn scopes(&self) -> HashSet<&str> {
        let mut scopes: HashSet<&str> = self
            .scope
            .as_deref()
            .map(|s| s.split_whitespace().collect())
            .unwrap_or_default();
        if let Some(list) = &self.scp {
            scopes.extend(list.iter().map(String::as_str));
        }
        scopes
    }
}

enum Keys {
    Disabled,
    Hs256(DecodingKey),
    Jwks {
        url: String,
        client: reqwest::Client,
        cache: RwLock<Option<(JwkSet, Instant)>>,
    },
}

/// Verifies tokens, authorizes requests and rate-limits subjects.
pub struct Auth {
    keys: Keys,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    public_reads: bool,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    /// Rate checks so far; every [`PRUNE_EVERY`]th one prunes the limiter.
    checks: AtomicU64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("disabled", &matches!(self.keys, Keys::Disabled))
            .field("public_reads", &self.public_reads)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Builds the verifier; refuses settings that would silently leave the API open.
    pub fn new(settings: &AuthSettings) -> Result<Self, AuthConfigError> {
        let keys = match (
            settings.disabled,
            settings.hs256_secret.as_deref().filter(|s| !s.is_empty()),
            settings.jwks_url.as_deref().filter(|s| !s.is_empty()),
        ) {
            (true, _, _) => {
                tracing::warn!(
                    "AUTH_DISABLED=true: the API accepts every request without authentication; \
                     never run it like this outside a trusted network"
                );
                Keys::Disabled
            }
            (false, Some(_), Some(_)) => return Err(AuthConfigError::TwoKeySources),
            (false, Some(secret), None) => Keys::Hs256(DecodingKey::from_secret(secret.as_bytes())),
            (false, None, Some(url)) => Keys::Jwks {
                url: url.to_owned(),
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|e| AuthConfigError::Client(e.to_string()))?,
                cache: RwLock::new(None),
            },
            (false, None, None) => return Err(AuthConfigError::NoKeySource),
        };
        let limiter = NonZeroU32::new(settings.rate_limit_per_second).map(|rate| {
            let burst = NonZeroU32::new(settings.rate_limit_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Ok(Self {
            keys,
            issuer: settings.issuer.clone().filter(|s| !s.is_empty()),
            audience: settings.audience.clone().filter(|s| !s.is_empty()),
            leeway: settings.leeway_seconds,
            public_reads: settings.public_reads,
            limiter,
            checks: AtomicU64::new(0),
        })
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        validation
    }

    /// Checks a bearer token and returns its principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let invalid = |e: jsonwebtoken::errors::Error| AuthError::InvalidToken(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let claims = match &self.keys {
            Keys::Disabled => {
                return Ok(Principal {
                    subject: "anonymous".into(),
                    admin: true,
                });
            }
            Keys::Hs256(key) => {
                jsonwebtoken::decode::<Claims>(token, key, &self.validation(Algorithm::HS256))
                    .map_err(invalid)?
                    .claims
            }
            Keys::Jwks { .. } => {
                if !matches!(
                    header.alg,
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::ES256
                        | Algorithm::ES384
                        | Algorithm::PS256
                        | Algorithm::EdDSA
                ) {
                    return Err(AuthError::InvalidToken(format!(
                        "algorithm {:?} is not accepted with a JWKS",
                        header.alg
                    )));
                }
                let kid = header.kid.clone().unwrap_or_default();
                let key = self.jwks_key(&kid).await?;
                jsonwebtoken::decode::<Claims>(token, &key, &self.validation(header.alg))
                    .map_err(invalid)?
                    .claims
            }
        };
        let admin = claims.scopes().contains(ADMIN_SCOPE);
        Ok(Principal {
            subject: claims.sub,
            admin,
        })
    }

    /// The JWKS key for `kid`, refetching the set when it is stale or lacks the key.
    async fn jwks_key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        let Keys::Jwks { url, client, cache } = &self.keys else {
            return Err(AuthError::KeysUnavailable);
        };
        let lookup = |set: &JwkSet| {
            let jwk = if kid.is_empty() && set.keys.len() == 1 {
                set.keys.first()
            } else {
                set.find(kid)
            };
            jwk.map(DecodingKey::from_jwk)
        };
        if let Some((set, fetched)) = cache.read().await.as_ref()
            && fetched.elapsed() < JWKS_TTL
            && let Some(key) = lookup(set)
        {
            return key.map_err(|e| AuthError::InvalidToken(e.to_string()));
        }
        let mut guard = cache.write().await;
        let recently = guard
            .as_ref()
            .is_some_and(|(_, fetched)| fetched.elapsed() < JWKS_MIN_REFRESH);
        if !recently {
            match fetch_jwks(client, url).await {
                Ok(set) => *guard = Some((set, Instant::now())),
                Err(e) => {
                    tracing::warn!(error = %e, %url, "cannot fetch the JWKS");
                    if guard.is_none() {
                        return Err(AuthError::KeysUnavailable);
                    }
                }
            }
        }
        let set = guard
            .as_ref()
            .map(|(set, _)| set)
            .ok_or(AuthError::KeysUnavailable)?;
        lookup(set)
            .ok_or_else(|| AuthError::InvalidToken(format!("unknown key id {kid:?}")))?
            .map_err(|e| AuthError::InvalidToken(e.to_string()))
    }

    /// Decides a request: `Ok(Some(principal))` for an authenticated caller, `Ok(None)` for an
    /// allowed anonymous read. `profile_id` is the `{id}` of a `/v1/profiles/{id}` request
    /// percent-decoded, exactly as the handler will see it (`None` for every other route):
    /// comparing the raw path segment instead would let a token for `%61lice` change `alice`.
    pub async fn authorize(
        &self,
        method: &Method,
        profile_id: Option<&str>,
        bearer: Option<&str>,
    ) -> Result<Option<Principal>, AuthError> {
        if matches!(self.keys, Keys::Disabled) {
            return Ok(None);
        }
        let Some(profile_id) = profile_id else {
            // Probes, metrics and the OpenAPI document are public; unknown routes 404 anyway.
            return Ok(None);
        };
        let read = matches!(*method, Method::GET | Method::HEAD);
        let principal = match bearer {
            Some(token) => Some(self.verify(token).await?),
            None if read && self.public_reads => None,
            None => return Err(AuthError::MissingToken),
        };
        if !read
            && let Some(principal) = &principal
            && !principal.admin
            && principal.subject != profile_id
        {
            return Err(AuthError::Forbidden(format!(
                "subject {:?} may not change profile {profile_id:?} (needs sub == id or the \
                 {ADMIN_SCOPE} scope)",
                principal.subject
            )));
        }
        Ok(principal)
    }

    /// How many subjects the rate limiter currently keeps a bucket for.
    pub fn rate_limited_subjects(&self) -> usize {
        self.limiter.as_ref().map_or(0, |limiter| limiter.len())
    }

    /// Takes one token from the bucket of `key`.
    pub fn check_rate(&self, key: &str) -> Result<(), AuthError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&key.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            AuthError::RateLimited(wait.as_secs().max(1))
        })
    }
}

async fn fetch_jwks(client: &reqwest::Client, url: &str) -> Result<JwkSet, reqwest::Error> {
    client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

/// The percent-decoded `{id}` of a request routed to `/v1/profiles/{id}`, by the same extractor
/// the handler uses; `None` for other routes. An id that does not decode (not UTF-8) is refused
/// here as the handler would refuse it.
/// A method the route does not serve is `None` too: the router answers it 405 with `Allow`,
/// whoever asks (authenticating first would answer 401 for a request no token makes valid).
async fn profile_id(parts: &mut Parts) -> Result<Option<String>, ApiError> {
    let on_profile_route = parts
        .extensions
        .get::<MatchedPath>()
        .is_some_and(|route| route.as_str() == crate::routes::PROFILE_ROUTE)
        && crate::routes::PROFILE_METHODS.contains(&parts.method);
    if !on_profile_route {
        return Ok(None);
    }
    match Path::<String>::from_request_parts(parts, &()).await {
        Ok(Path(id)) => Ok(Some(id)),
        Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
    }
}

/// The bearer token of a request, if any.
fn bearer(request: &Request) -> Result<Option<String>, AuthError> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::InvalidToken("Authorization header is not ASCII".into()))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() => {
            Ok(Some(token.trim().to_owned()))
        }
        _ => Err(AuthError::InvalidToken(
            "Authorization must be `Bearer <token>`".into(),
        )),
    }
}

/// Middleware: authenticate, authorize, rate-limit; errors become problem+json.
pub async fn layer(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    // Take what the decision needs first: a request body is not `Sync`, so no borrow of the
    // request may live across an await.
    let method = request.method().clone();
    let peer = request
        .extensions()
        .get::<crate::client::ClientAddr>()
        .map(|c| format!("ip:{}", c.0));
    let token = bearer(&request);
    let (mut parts, body) = request.into_parts();
    let profile_id = match profile_id(&mut parts).await {
        Ok(id) => id,
        Err(error) => return error.into_response(),
    };
    let request = Request::from_parts(parts, body);
    let decision = async {
        let principal = auth
            .authorize(&method, profile_id.as_deref(), token?.as_deref())
            .await?;
        if profile_id.is_some() {
            let key = match &principal {
                Some(p) => format!("sub:{}", p.subject),
                None => peer.unwrap_or_else(|| "anonymous".to_owned()),
            };
            auth.check_rate(&key)?;
        }
        Ok::<_, AuthError>(principal)
    }
    .await;
    match decision {
        Ok(principal) => {
            let mut request = request;
            if let Some(principal) = principal {
                request.extensions_mut().insert(principal);
            }
            next.run(request).await
        }
        Err(error) => ApiError::from(error).into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "test-secret-of-enough-length-0123456789";

    fn auth(public_reads: bool) -> Auth {
        Auth::new(&AuthSettings {
            hs256_secret: Some(SECRET.into()),
            issuer: Some("https://issuer.test".into()),
            audience: Some("statecast".into()),
            public_reads,
            leeway_seconds: 5,
            rate_limit_per_second: 2,
            rate_limit_burst: 3,
            ..AuthSettings::default()
        })
        .unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn good(sub: &str, scope: &str) -> String {
        token(
            json!({"sub": sub, "iss": "https://issuer.test", "aud": "statecast",
                   "exp": now() + 300, "scope": scope}),
            SECRET,
        )
    }

    async fn decide(
        auth: &Auth,
        method: Method,
        id: &str,
        token: Option<&str>,
    ) -> Result<(), AuthError> {
        auth.authorize(&method, Some(id), token).await.map(|_| ())
    }

    #[tokio::test]
    async fn no_token_is_refused_unless_reads_are_public() {
        assert_eq!(
            decide(&auth(false), Method::GET, "alice", None).await,
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            decide(&auth(true), Method::GET, "alice", None).await,
            Ok(())
        );
        assert_eq!(
            decide(&auth(true), Method::PUT, "alice", None).await,
            Err(AuthError::MissingToken)
        );
    }

    #[tokio::test]
    async fn expired_foreign_and_forged_tokens_are_invalid() {
        let a = auth(false);
        let cases = [
            token(
                json!({"sub": "alice", "iss": "https://issuer.test", "aud": "statecast", "exp": now() - 60}),
                SECRET,
            ),
            token(
                json!({"sub": "alice", "iss": "https://evil.test", "aud": "statecast", "exp": now() + 60}),
                SECRET,
            ),
            token(
                json!({"sub": "alice", "iss": "https://issuer.test", "aud": "other", "exp": now() + 60}),
                SECRET,
            ),
            token(
                json!({"sub": "alice", "iss": "https://issuer.test", "aud": "statecast", "exp": now() + 60}),
                "wrong-secret-wrong-secret-wrong",
            ),
            token(
                json!({"sub": "alice", "iss": "https://issuer.test", "aud": "statecast"}),
                SECRET,
            ),
            "not.a.jwt".to_owned(),
        ];
        for t in cases {
            assert!(
                matches!(
                    decide(&a, Method::GET, "alice", Some(&t)).await,
                    Err(AuthError::InvalidToken(_))
                ),
                "accepted {t}"
            );
        }
    }

    #[tokio::test]
    async fn clock_skew_within_the_leeway_is_tolerated() {
        let t = token(
            json!({"sub": "alice", "iss": "https://issuer.test", "aud": "statecast", "exp": now() - 2}),
            SECRET,
        );
        assert_eq!(
            decide(&auth(false), Method::GET, "alice", Some(&t)).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn writes_need_the_own_profile_or_the_admin_scope() {
        let a = auth(false);
        assert_eq!(
            decide(&a, Method::PUT, "alice", Some(&good("alice", ""))).await,
            Ok(())
        );
        assert!(matches!(
            decide(
                &a,
                Method::PATCH,
                "bob",
                Some(&good("alice", "profiles:read"))
            )
            .await,
            Err(AuthError::Forbidden(_))
        ));
        assert_eq!(
            decide(
                &a,
                Method::DELETE,
                "bob",
                Some(&good("root", "x profiles:admin"))
            )
            .await,
            Ok(())
        );
        // Reading someone else's profile is fine with any valid token.
        assert_eq!(
            decide(&a, Method::GET, "bob", Some(&good("alice", ""))).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn requests_outside_the_profile_route_need_no_token() {
        let a = auth(false);
        assert_eq!(a.authorize(&Method::GET, None, None).await, Ok(None));
    }

    #[test]
    fn rate_limit_empties_the_bucket_and_names_a_wait() {
        let a = auth(false);
        for _ in 0..3 {
            assert_eq!(a.check_rate("sub:alice"), Ok(()));
        }
        assert!(matches!(a.check_rate("sub:alice"), Err(AuthError::RateLimited(s)) if s >= 1));
        // Another subject has its own bucket.
        assert_eq!(a.check_rate("sub:bob"), Ok(()));
    }

    #[test]
    fn the_rate_limiter_forgets_refilled_subjects_so_its_size_stays_bounded() {
        // A used bucket refills within a microsecond, so every subject seen before a prune is
        // forgettable by it: what is left is at most the subjects since the last prune.
        let a = Auth::new(&AuthSettings {
            disabled: true,
            rate_limit_per_second: 1_000_000,
            rate_limit_burst: 1,
            ..AuthSettings::default()
        })
        .unwrap();
        let mut largest = 0;
        for i in 0..100_000 {
            assert_eq!(a.check_rate(&format!("sub:user-{i}")), Ok(()));
            largest = largest.max(a.rate_limited_subjects());
        }
        assert!(
            largest <= 2 * PRUNE_EVERY as usize,
            "the limiter kept {largest} subjects for 100000 distinct ones"
        );
    }

    #[test]
    fn pruning_keeps_the_buckets_that_still_limit() {
        let a = Auth::new(&AuthSettings {
            disabled: true,
            rate_limit_per_second: 1,
            rate_limit_burst: 1,
            ..AuthSettings::default()
        })
        .unwrap();
        assert_eq!(a.check_rate("sub:busy"), Ok(()));
        // Enough other subjects to prune at least once (within far less than the 1 s refill).
        for i in 0..PRUNE_EVERY {
            let _ = a.check_rate(&format!("sub:other-{i}"));
        }
        assert!(matches!(
            a.check_rate("sub:busy"),
            Err(AuthError::RateLimited(_))
        ));
    }

    #[test]
    fn settings_without_a_key_source_are_refused() {
        assert!(matches!(
            Auth::new(&AuthSettings::default()),
            Err(AuthConfigError::NoKeySource)
        ));
        assert!(matches!(
            Auth::new(&AuthSettings {
                hs256_secret: Some("a".into()),
                jwks_url: Some("http://x".into()),
                ..AuthSettings::default()
            }),
            Err(AuthConfigError::TwoKeySources)
        ));
        assert!(
            Auth::new(&AuthSettings {
                disabled: true,
                ..AuthSettings::default()
            })
            .is_ok()
        );
    }

    #[test]
    fn bearer_header_must_be_well_formed() {
        let request = |v: &str| {
            axum::http::Request::builder()
                .header(header::AUTHORIZATION, v)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(
            bearer(&request("Bearer abc")).unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(
            bearer(&request("bearer abc")).unwrap().as_deref(),
            Some("abc")
        );
        assert!(bearer(&request("Basic abc")).is_err());
        assert!(bearer(&request("Bearer")).is_err());
    }
}
