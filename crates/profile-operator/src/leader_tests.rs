//! Leader election against kube-rs's mocked API server (`tower_test::mock::pair`), on paused time:
//! a [`LeaseStore`] answers GET/POST/PUT of the Lease like the API server (a `resourceVersion`
//! precondition that does not match is a 409), shared by several replicas, each of which can be
//! cut off (its requests hang, or fail with a 500).
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::*;

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases/leader";
const LEASES_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

/// How a replica's requests are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    /// Requests reach nothing and never get an answer.
    Hang,
    /// Every request fails with a 500.
    Failing,
}

/// One request a replica made: who, when (since the start), what, and the answer's status.
#[derive(Debug, Clone)]
struct Logged {
    replica: &'static str,
    at: Duration,
    method: Method,
    /// `resourceVersion` of the body (the precondition of a PUT).
    precondition: Option<String>,
    holder: Option<String>,
    status: u16,
}

/// The API server's copy of the Lease.
struct LeaseStore {
    start: Instant,
    lease: Option<Lease>,
    version: u64,
    links: std::collections::HashMap<&'static str, Link>,
    log: Vec<Logged>,
}

type Shared = Arc<Mutex<LeaseStore>>;

fn response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn status(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": reason, "reason": reason, "code": code,
    })
}

impl LeaseStore {
    fn new() -> Shared {
        Arc::new(Mutex::new(Self {
            start: Instant::now(),
            lease: None,
            version: 0,
            links: Default::default(),
            log: vec![],
        }))
    }

    /// Stores `lease` as another writer would, with a new resourceVersion.
    fn put(&mut self, mut lease: Lease) -> Lease {
        self.version += 1;
        lease.metadata.name = Some("leader".into());
        lease.metadata.namespace = Some("default".into());
        lease.metadata.resource_version = Some(self.version.to_string());
        self.lease = Some(lease.clone());
        lease
    }

    /// Another replica (or `kubectl`) writes the Lease held by `holder`.
    fn write_holder(&mut self, holder: Option<&str>) {
        let mut lease = self.lease.clone().unwrap_or_default();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = holder.map(Into::into);
        spec.lease_duration_seconds = Some(15);
        // Long ago by the wall clock: the electors must not trust it.
        spec.renew_time = Some(MicroTime(Timestamp::from_second(1_000_000_000).unwrap()));
        self.put(lease);
    }

    fn holder(&self) -> Option<String> {
        self.lease.as_ref()?.spec.as_ref()?.holder_identity.clone()
    }

    fn answer(
        &mut self,
        replica: &'static str,
        method: Method,
        path: &str,
        body: &[u8],
    ) -> Response<Body> {
        let sent: Option<Lease> = serde_json::from_slice(body).ok();
        let precondition = sent
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone());
        let holder = sent
            .as_ref()
            .and_then(|l| l.spec.as_ref()?.holder_identity.clone());
        let (code, response) = match (&method, path) {
            (&Method::GET, LEASE_PATH) => match &self.lease {
                Some(lease) => (200, response(StatusCode::OK, lease)),
                None => (
                    404,
                    response(StatusCode::NOT_FOUND, &status(404, "NotFound")),
                ),
            },
            (&Method::POST, LEASES_PATH) => match &self.lease {
                Some(_) => (
                    409,
                    response(StatusCode::CONFLICT, &status(409, "AlreadyExists")),
                ),
                None => {
                    let created = self.put(sent.clone().unwrap());
                    (201, response(StatusCode::CREATED, &created))
                }
            },
            (&Method::PUT, LEASE_PATH) => {
                let current = self
                    .lease
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone());
                match current {
                    None => (
                        404,
                        response(StatusCode::NOT_FOUND, &status(404, "NotFound")),
                    ),
                    Some(v) if precondition.as_ref() != Some(&v) => (
                        409,
                        response(StatusCode::CONFLICT, &status(409, "Conflict")),
                    ),
                    Some(_) => {
                        let written = self.put(sent.clone().unwrap());
                        (200, response(StatusCode::OK, &written))
                    }
                }
            }
            _ => panic!("unexpected request {method} {path}"),
        };
        self.log.push(Logged {
            replica,
            at: self.start.elapsed(),
            method,
            precondition,
            holder,
            status: code,
        });
        response
    }
}

/// A replica's client, answered from `store` as its link allows.
fn replica(store: &Shared, name: &'static str) -> Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    store.lock().unwrap().links.insert(name, Link::Up);
    let store = store.clone();
    tokio::spawn(async move {
        let mut hanging = vec![];
        while let Some((request, send)) = handle.next_request().await {
            let link = store.lock().unwrap().links[name];
            match link {
                Link::Hang => {
                    hanging.push(send);
                    continue;
                }
                Link::Failing => {
                    send.send_response(response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &status(500, "InternalError"),
                    ));
                    continue;
                }
                Link::Up => {}
            }
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let body = request.into_body().collect_bytes().await.unwrap();
            let answer = store.lock().unwrap().answer(name, method, &path, &body);
            send.send_response(answer);
        }
    });
    Client::new(service, "default")
}

fn elector(store: &Shared, name: &'static str) -> Elector {
    Elector::new(replica(store, name), "default", "leader", name)
}

fn set_link(store: &Shared, name: &'static str, link: Link) {
    store.lock().unwrap().links.insert(name, link);
}

fn log(store: &Shared) -> Vec<Logged> {
    store.lock().unwrap().log.clone()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

async fn acquire_within(elector: &Elector, limit: Duration) -> bool {
    tokio::time::timeout(limit, elector.acquire()).await.is_ok()
}

// ---- pure timing decisions ----

#[test]
fn the_operators_timing_is_fenced() {
    assert!(TIMING.is_fenced());
    assert!(TIMING.retry_period * 2 <= TIMING.renew_deadline);
    assert!(TIMING.renew_deadline < TIMING.lease_duration);
    // A deadline as long as the lease, or renewals as slow as the deadline, are refused.
    let overlapping = Timing {
        renew_deadline: TIMING.lease_duration,
        ..TIMING
    };
    assert!(!overlapping.is_fenced());
    let one_chance = Timing {
        retry_period: TIMING.renew_deadline,
        ..TIMING
    };
    assert!(!one_chance.is_fenced());
}

#[tokio::test(start_paused = true)]
async fn the_leader_renews_every_retry_period_and_never_past_its_deadline() {
    let t0 = Instant::now();
    assert_eq!(TIMING.deadline(t0), t0 + secs(10));
    // On schedule: a retry period after the last attempt.
    assert_eq!(TIMING.next_renewal(t0, t0), t0 + secs(2));
    assert_eq!(
        TIMING.next_renewal(t0 + secs(4), t0 + secs(4)),
        t0 + secs(6)
    );
    // After failed attempts since the last success, still never past the deadline.
    assert_eq!(TIMING.next_renewal(t0 + secs(9), t0), t0 + secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_follower_takes_over_only_a_lease_duration_after_it_last_saw_a_change() {
    let seen = Instant::now();
    let take = |current: Option<&str>, seconds: Option<i32>, after: u64| {
        TIMING.may_take_over("me", current, seconds, seen, seen + secs(after))
    };
    // Free, or ours (a restarted container of the same pod): at once.
    assert!(take(None, Some(15), 0));
    assert!(take(Some(""), Some(15), 0));
    assert!(take(Some("me"), Some(15), 0));
    // Held by another: after a whole lease duration without a change, on our clock.
    assert!(!take(Some("other"), Some(15), 14));
    assert!(take(Some("other"), Some(15), 15));
    // A holder announcing a longer lease is waited out for its duration.
    assert!(!take(Some("other"), Some(40), 39));
    assert!(take(Some("other"), Some(40), 40));
    // A shorter (or missing, or negative) one does not shorten ours.
    assert!(!take(Some("other"), Some(1), 14));
    assert!(!take(Some("other"), None, 14));
    assert!(!take(Some("other"), Some(-5), 14));
}

// ---- against the mocked API server ----

#[tokio::test(start_paused = true)]
async fn creates_a_missing_lease_then_renews_it_every_retry_period() {
    let store = LeaseStore::new();
    let a = elector(&store, "a");
    assert!(acquire_within(&a, secs(1)).await);
    let lease = store.lock().unwrap().lease.clone().unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(spec.lease_transitions, Some(0));
    let acquired = spec.acquire_time.clone().unwrap();

    // Renewals every 2 s, each conditional on the version the previous one wrote.
    let held = tokio::time::timeout(secs(7), a.hold()).await;
    assert!(held.is_err(), "leadership ended: {held:?}");
    let requests: Vec<_> = log(&store)
        .into_iter()
        .map(|l| (l.at.as_secs(), l.method, l.precondition, l.status))
        .collect();
    assert_eq!(
        requests,
        vec![
            (0, Method::GET, None, 404),
            (0, Method::POST, None, 201),
            (2, Method::PUT, Some("1".into()), 200),
            (4, Method::PUT, Some("2".into()), 200),
            (6, Method::PUT, Some("3".into()), 200),
        ]
    );
    let spec = store.lock().unwrap().lease.clone().unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(
        spec.acquire_time,
        Some(acquired),
        "a renewal is no new acquisition"
    );
    assert_eq!(spec.lease_transitions, Some(0));
}

#[tokio::test(start_paused = true)]
async fn a_held_lease_is_taken_a_lease_duration_after_it_stopped_changing_not_by_its_renew_time() {
    let store = LeaseStore::new();
    // Held by "old", renewTime years ago by the wall clock: a skewed clock must not matter.
    store.lock().unwrap().write_holder(Some("old"));
    let b = elector(&store, "b");
    let start = Instant::now();
    assert!(acquire_within(&b, secs(30)).await);
    let took = start.elapsed();
    assert!(
        took >= secs(15) && took <= secs(17),
        "took over after {took:?}"
    );
    let log = log(&store);
    let put = log.iter().find(|l| l.method == Method::PUT).unwrap();
    assert_eq!(put.precondition.as_deref(), Some("1"), "{log:?}");
    assert_eq!(put.holder.as_deref(), Some("b"));
    assert!(
        log.iter()
            .all(|l| l.method == Method::GET || l.at >= secs(15))
    );
    let spec = store.lock().unwrap().lease.clone().unwrap().spec.unwrap();
    assert_eq!(spec.lease_transitions, Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_lease_renewed_by_its_holder_is_never_taken() {
    let store = LeaseStore::new();
    store.lock().unwrap().write_holder(Some("old"));
    let b = elector(&store, "b");
    let renewer = {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(secs(5)).await;
                store.lock().unwrap().write_holder(Some("old"));
            }
        })
    };
    assert!(!acquire_within(&b, secs(60)).await);
    renewer.abort();
    assert!(log(&store).iter().all(|l| l.method == Method::GET));
    assert_eq!(store.lock().unwrap().holder().as_deref(), Some("old"));
}

#[tokio::test(start_paused = true)]
async fn a_free_lease_is_taken_at_once_and_a_racing_writer_gets_a_conflict() {
    let store = LeaseStore::new();
    store.lock().unwrap().write_holder(None);
    let a = elector(&store, "a");
    assert!(acquire_within(&a, secs(1)).await);
    assert_eq!(store.lock().unwrap().holder().as_deref(), Some("a"));
    // A second replica that read the free Lease before `a` wrote it: its PUT is refused.
    let stale = {
        let mut lease = store.lock().unwrap().lease.clone().unwrap();
        lease.metadata.resource_version = Some("1".into());
        lease.spec.as_mut().unwrap().holder_identity = Some("b".into());
        lease
    };
    let b_client = replica(&store, "b");
    let api: Api<Lease> = Api::namespaced(b_client, "default");
    let error = api
        .replace("leader", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(matches!(error, kube::Error::Api(s) if s.is_conflict()));
    assert_eq!(store.lock().unwrap().holder().as_deref(), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn losing_the_lease_on_a_conflict_stops_the_leader_at_once() {
    let store = LeaseStore::new();
    let a = elector(&store, "a");
    assert!(acquire_within(&a, secs(1)).await);
    let intruder = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(secs(5)).await;
            store.lock().unwrap().write_holder(Some("intruder"));
        })
    };
    let start = Instant::now();
    let reason = a.hold().await;
    intruder.await.unwrap();
    // The renewal at 6 s conflicts; the re-read names the intruder; nothing waits for a deadline.
    assert_eq!(start.elapsed(), secs(6));
    assert!(reason.to_string().contains("intruder"), "{reason}");
    let tail: Vec<_> = log(&store)
        .into_iter()
        .rev()
        .take(2)
        .map(|l| (l.method, l.status))
        .collect();
    assert_eq!(tail, vec![(Method::GET, 200), (Method::PUT, 409)]);
    // Not the leader any more: stepping down writes nothing.
    let requests = log(&store).len();
    a.step_down().await.unwrap();
    assert_eq!(log(&store).len(), requests);
    assert_eq!(store.lock().unwrap().holder().as_deref(), Some("intruder"));
}

#[tokio::test(start_paused = true)]
async fn a_conflict_from_an_edit_that_keeps_the_holder_is_retried_on_the_new_version() {
    let store = LeaseStore::new();
    let a = elector(&store, "a");
    assert!(acquire_within(&a, secs(1)).await);
    {
        let mut store = store.lock().unwrap();
        let mut lease = store.lease.clone().unwrap();
        lease.metadata.labels = Some([("edited".to_owned(), "yes".to_owned())].into());
        store.put(lease);
    }
    let held = tokio::time::timeout(secs(9), a.hold()).await;
    assert!(held.is_err(), "leadership ended: {held:?}");
    let puts: Vec<_> = log(&store)
        .into_iter()
        .filter(|l| l.method == Method::PUT)
        .map(|l| (l.at.as_secs(), l.status))
        .collect();
    assert_eq!(puts, vec![(2, 409), (4, 200), (6, 200), (8, 200)]);
    assert_eq!(store.lock().unwrap().holder().as_deref(), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn a_hanging_read_does_not_block_the_election() {
    let store = LeaseStore::new();
    let a = elector(&store, "a");
    set_link(&store, "a", Link::Hang);
    let healer = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(secs(5)).await;
            set_link(&store, "a", Link::Up);
        })
    };
    // The GET at 0 s never returns; it is given up at 10 s and the next read, at 12 s, works.
    let start = Instant::now();
    assert!(acquire_within(&a, secs(30)).await);
    healer.await.unwrap();
    assert_eq!(start.elapsed(), TIMING.renew_deadline + TIMING.retry_period);
    assert_eq!(store.lock().unwrap().holder().as_deref(), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn hanging_renewals_stop_the_leader_at_the_renew_deadline() {
    let store = LeaseStore::new();
    let a = elector(&store, "a");
    assert!(acquire_within(&a, secs(1)).await);
    let start = Instant::now();
    set_link(&store, "a", Link::Hang);
    let reason = a.hold().await;
    // The acquisition was sent at 0 s: authority ends at 10 s although no request ever returned.
    assert_eq!(start.elapsed(), TIMING.renew_deadline);
    assert!(reason.to_string().contains("stopped acting"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn failing_renewals_are_retried_until_the_deadline_of_the_last_success() {
    let store = LeaseStore::new();
    let a = elector(&store, "a");
    assert!(acquire_within(&a, secs(1)).await);
    let start = Instant::now();
    let breaker = {
        let store = store.clone();
        tokio::spawn(async move {
            // The renewal at 4 s succeeds, those from 6 s on fail with a 500.
            tokio::time::sleep(secs(5)).await;
            set_link(&store, "a", Link::Failing);
        })
    };
    let reason = a.hold().await;
    breaker.await.unwrap();
    assert_eq!(start.elapsed(), secs(4) + TIMING.renew_deadline);
    assert!(reason.to_string().contains("stopped acting"), "{reason}");
}

/// Two replicas, the leader cut off from the API server: its work is dropped at its deadline, and
/// the other takes over no sooner than `lease_duration - renew_deadline` later. At no instant do
/// both lead.
#[tokio::test(start_paused = true)]
async fn a_cut_off_leader_stops_acting_before_another_replica_can_lead() {
    let store = LeaseStore::new();
    let start = Instant::now();
    let a = Arc::new(elector(&store, "a"));
    let b = Arc::new(elector(&store, "b"));
    assert!(acquire_within(&a, secs(1)).await);
    let b_task = {
        let b = b.clone();
        tokio::spawn(async move {
            b.acquire().await;
            start.elapsed()
        })
    };
    let cut = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(secs(21)).await;
            set_link(&store, "a", Link::Hang);
        })
    };
    // a's work: an action every 500 ms for as long as it runs.
    let actions = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let work = {
        let actions = actions.clone();
        async move {
            loop {
                actions.lock().unwrap().push(start.elapsed());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let lost = a.lead(work).await;
    let a_stopped = start.elapsed();
    assert!(lost.is_err());
    cut.await.unwrap();
    let b_leads = tokio::time::timeout(secs(60), b_task)
        .await
        .unwrap()
        .unwrap();
    let last_renewal = log(&store)
        .iter()
        .filter(|l| l.replica == "a" && l.status == 200 && l.method == Method::PUT)
        .map(|l| l.at)
        .max()
        .unwrap();
    assert_eq!(last_renewal, secs(20));
    assert_eq!(
        a_stopped,
        secs(30),
        "a must stop 10 s after its last renewal"
    );
    assert!(
        b_leads >= a_stopped + (TIMING.lease_duration - TIMING.renew_deadline),
        "b took over at {b_leads:?}, a stopped at {a_stopped:?}"
    );
    assert!(b_leads <= last_renewal + TIMING.lease_duration + 2 * TIMING.retry_period);
    // a acted until its deadline and never after: its work was dropped when leadership ended.
    let actions = actions.lock().unwrap().clone();
    assert_eq!(actions.first(), Some(&Duration::ZERO));
    let last_action = *actions.last().unwrap();
    assert!(
        last_action < a_stopped && last_action + Duration::from_millis(500) >= a_stopped,
        "last action at {last_action:?}, stopped at {a_stopped:?}"
    );
    assert_eq!(store.lock().unwrap().holder().as_deref(), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn stepping_down_lets_a_follower_take_over_at_its_next_read() {
    let store = LeaseStore::new();
    let a = elector(&store, "a");
    let b = Arc::new(elector(&store, "b"));
    assert!(acquire_within(&a, secs(1)).await);
    let b_task = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire().await })
    };
    tokio::time::sleep(secs(5)).await;
    assert_eq!(store.lock().unwrap().holder().as_deref(), Some("a"));
    let stepped = Instant::now();
    a.step_down().await.unwrap();
    assert_eq!(store.lock().unwrap().holder(), None);
    tokio::time::timeout(TIMING.retry_period + secs(1), b_task)
        .await
        .expect("b did not take the released lease")
        .unwrap();
    assert!(stepped.elapsed() <= TIMING.retry_period);
    let spec = store.lock().unwrap().lease.clone().unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
}

#[test]
fn lease_objects_round_trip_with_the_fields_the_elector_writes() {
    // A guard on the k8s-openapi types: the Lease the elector sends names its holder in spec.
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("leader".into()),
            resource_version: Some("7".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }),
    };
    let value = serde_json::to_value(&lease).unwrap();
    assert_eq!(value["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(value["kind"], "Lease");
    assert_eq!(value["metadata"]["resourceVersion"], "7");
    assert_eq!(value["spec"]["holderIdentity"], "a");
    assert_eq!(value["spec"]["leaseDurationSeconds"], 15);
}
