//! The client address behind `TRUSTED_PROXIES`, through the real router (in process, the TCP
//! peer given as `ConnectInfo`): it keys the rate limit of anonymous requests and is in the
//! request log, and a forwarding header from anyone but a trusted proxy changes nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use tower::ServiceExt as _;

/// A replica with auth off (every request anonymous, as with `AUTH_DISABLED=true`), one request
/// per second per client with no burst, and 10.0.0.0/8 as trusted proxies.
async fn app() -> profile_api::App {
    let mut config = common::fresh_config("proxy").await;
    config.rate_limit_per_second = 1;
    config.rate_limit_burst = 1;
    config.trusted_proxies = "10.0.0.0/8".parse().unwrap();
    profile_api::build(config).await.unwrap()
}

/// The status of a GET from TCP peer `peer`, with `X-Forwarded-For: xff` when given.
async fn get(app: &profile_api::App, peer: &str, xff: Option<&str>) -> StatusCode {
    let mut request = Request::get("/v1/profiles/nobody");
    if let Some(xff) = xff {
        request = request.header("x-forwarded-for", xff);
    }
    let mut request = request.body(Body::empty()).unwrap();
    let peer: SocketAddr = peer.parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    app.router().oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let app = app().await;
    let proxy = "10.0.0.5:40000";
    // The client put 198.51.100.1 in the header itself; the proxy appended what it saw.
    let alice = Some("198.51.100.1, 203.0.113.7");
    assert_eq!(get(&app, proxy, alice).await, StatusCode::NOT_FOUND);
    assert_eq!(get(&app, proxy, alice).await, StatusCode::TOO_MANY_REQUESTS);
    // Another client behind the same proxy is not limited by the first one's requests...
    assert_eq!(
        get(&app, proxy, Some("203.0.113.8")).await,
        StatusCode::NOT_FOUND
    );
    // ...and forging the left part of the header does not get a fresh bucket.
    assert_eq!(
        get(&app, proxy, Some("198.51.100.99, 203.0.113.7")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn from_an_untrusted_peer_the_forwarding_header_is_ignored() {
    let app = app().await;
    let peer = "192.0.2.9:40000";
    assert_eq!(
        get(&app, peer, Some("203.0.113.50")).await,
        StatusCode::NOT_FOUND
    );
    // A different header value is no way around the peer's bucket.
    assert_eq!(
        get(&app, peer, Some("203.0.113.51")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Captured {
    type Writer = Self;
    fn make_writer(&'w self) -> Self {
        self.clone()
    }
}

#[tokio::test]
async fn the_request_log_names_the_forwarded_client_behind_a_trusted_proxy() {
    let app = app().await;
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(out.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    get(&app, "10.0.0.5:40000", Some("203.0.113.7, 10.1.1.1")).await;
    get(&app, "192.0.2.9:40000", Some("203.0.113.8")).await;
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let completed: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "request completed")
        .collect();
    let clients: Vec<&str> = completed
        .iter()
        .filter_map(|l| l["client_address"].as_str())
        .collect();
    assert_eq!(clients, ["203.0.113.7", "192.0.2.9"], "{text}");
}
