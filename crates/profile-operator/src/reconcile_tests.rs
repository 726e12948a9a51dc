//! Reconcile tests against kube-rs's mocked API server (`tower_test::mock::pair`): a [`Scenario`]
//! says which requests the reconciler must make, in order; the verifier checks each request's
//! method, URI and headers, answers it, and hands the bodies back for the test to inspect.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::events::Reporter;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::*;
use crate::crd::{Autoscaling, ProfileConsumer, ProfileConsumerSpec, ProfileConsumerStatus};
use crate::deployment::tests::{list_map_duplicates, resource, settings, spec};
use crate::lag::{GroupLag, LagReader};

type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const NOW_SECONDS: i64 = 1_800_000_000;

fn now() -> Timestamp {
    Timestamp::from_second(NOW_SECONDS).unwrap()
}

fn seconds_ago(s: i64) -> Time {
    Time(Timestamp::from_second(NOW_SECONDS - s).unwrap())
}

/// A lag reader returning a fixed answer.
struct StubLag(Result<GroupLag, String>);

impl LagReader for StubLag {
    fn read_lag(&self, _group_id: &str, _topics: &[String]) -> crate::Result<GroupLag> {
        self.0.clone().map_err(Error::Kafka)
    }
}

fn lag(lag: u64, partitions: u32) -> StubLag {
    StubLag(Ok(GroupLag {
        lag,
        partitions,
        end_offsets: lag,
        committed: 0,
    }))
}

/// The requests one reconcile must make, in order.
enum Scenario {
    /// List the namespace's resources (answered with `siblings`), apply the Deployment (answered
    /// with `ready` ready replicas), publish the Events named in `events`, patch the status.
    Apply {
        siblings: Vec<ProfileConsumer>,
        ready: i32,
        events: Vec<&'static str>,
    },
    /// List (answered with `siblings`), publish a `GroupConflict` Event, patch the status; no
    /// Deployment request at all.
    GroupConflict { siblings: Vec<ProfileConsumer> },
    /// Publish an `InvalidSpec` Event and patch the status; nothing else.
    InvalidSpec,
    /// List, then the Deployment apply fails with a 500 saying `message`, then a
    /// `ReconcileFailed` Event.
    ApplyFails { message: String },
}

/// What the reconciler sent.
#[derive(Default, Debug)]
struct Sent {
    deployment: Option<Deployment>,
    status: Option<ProfileConsumerStatus>,
    events: Vec<Value>,
}

struct ApiServerVerifier(ApiServerHandle);

impl ApiServerVerifier {
    fn run(self, pc: ProfileConsumer, scenario: Scenario) -> tokio::task::JoinHandle<Sent> {
        tokio::spawn(async move {
            let mut v = self;
            let mut sent = Sent::default();
            match scenario {
                Scenario::Apply {
                    siblings,
                    ready,
                    events,
                } => {
                    v.list(siblings).await;
                    sent.deployment = Some(v.apply_deployment(&pc, Ok(ready)).await);
                    for reason in events {
                        sent.events.push(v.event(reason).await);
                    }
                    sent.status = Some(v.status(&pc).await);
                }
                Scenario::GroupConflict { siblings } => {
                    v.list(siblings).await;
                    sent.events.push(v.event("GroupConflict").await);
                    sent.status = Some(v.status(&pc).await);
                }
                Scenario::InvalidSpec => {
                    sent.events.push(v.event("InvalidSpec").await);
                    sent.status = Some(v.status(&pc).await);
                }
                Scenario::ApplyFails { message } => {
                    v.list(vec![]).await;
                    v.apply_deployment(&pc, Err(message)).await;
                    sent.events.push(v.event("ReconcileFailed").await);
                }
            }
            sent
        })
    }

    async fn next(
        &mut self,
    ) -> (
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .expect("timed out waiting for a request")
            .expect("service not called")
    }

    async fn list(&mut self, items: Vec<ProfileConsumer>) {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::GET);
        assert_eq!(
            request.uri().path(),
            "/apis/statecast.dev/v1alpha1/namespaces/default/profileconsumers"
        );
        let list = json!({
            "apiVersion": "statecast.dev/v1alpha1",
            "kind": "ProfileConsumerList",
            "metadata": {"resourceVersion": "1"},
            "items": items,
        });
        send.send_response(json_response(StatusCode::OK, &list));
    }

    fn assert_apply(request: &Request<Body>) {
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(
            request.headers()["content-type"],
            "application/apply-patch+yaml"
        );
        let query = request.uri().query().unwrap_or_default();
        assert!(query.contains("fieldManager=profile-operator"), "{query}");
        assert!(query.contains("force=true"), "{query}");
    }

    /// Answers with the applied Deployment plus `ready` ready replicas, or a 500 with the message.
    async fn apply_deployment(
        &mut self,
        pc: &ProfileConsumer,
        ready: Result<i32, String>,
    ) -> Deployment {
        let (request, send) = self.next().await;
        Self::assert_apply(&request);
        assert_eq!(
            request.uri().path(),
            format!(
                "/apis/apps/v1/namespaces/default/deployments/profile-consumer-{}",
                pc.name_any()
            )
        );
        let body = request.into_body().collect_bytes().await.unwrap();
        let mut deployment: Deployment = serde_json::from_slice(&body).unwrap();
        match ready {
            Ok(ready) => {
                let mut answer = deployment.clone();
                answer.status = Some(DeploymentStatus {
                    replicas: Some(ready),
                    ready_replicas: Some(ready),
                    updated_replicas: Some(ready),
                    ..DeploymentStatus::default()
                });
                send.send_response(json_response(StatusCode::OK, &answer));
            }
            Err(message) => send.send_response(json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &status_body(500, "InternalError", &message),
            )),
        }
        deployment.status = None;
        deployment
    }

    async fn event(&mut self, reason: &str) -> Value {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::POST);
        assert_eq!(
            request.uri().path(),
            "/apis/events.k8s.io/v1/namespaces/default/events"
        );
        let body = request.into_body().collect_bytes().await.unwrap();
        let event: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(event["reason"], reason, "{event}");
        assert_eq!(event["regarding"]["kind"], "ProfileConsumer");
        send.send_response(json_response(StatusCode::CREATED, &event));
        event
    }

    async fn status(&mut self, pc: &ProfileConsumer) -> ProfileConsumerStatus {
        let (request, send) = self.next().await;
        Self::assert_apply(&request);
        assert_eq!(
            request.uri().path(),
            format!(
                "/apis/statecast.dev/v1alpha1/namespaces/default/profileconsumers/{}/status",
                pc.name_any()
            )
        );
        let body = request.into_body().collect_bytes().await.unwrap();
        let patch: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(patch["apiVersion"], "statecast.dev/v1alpha1");
        assert_eq!(patch["kind"], "ProfileConsumer");
        let status: ProfileConsumerStatus =
            serde_json::from_value(patch["status"].clone()).unwrap();
        let mut answer = pc.clone();
        answer.status = Some(status.clone());
        send.send_response(json_response(StatusCode::OK, &answer));
        status
    }
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    })
}

fn context(reader: StubLag) -> (Arc<Context>, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut ctx = Context::new(
        client,
        settings(),
        Arc::new(reader),
        Reporter {
            controller: "profile-operator".into(),
            instance: Some("test".into()),
        },
        Metrics::default(),
    );
    ctx.now = now;
    (Arc::new(ctx), ApiServerVerifier(handle))
}

async fn reconcile_with(
    pc: ProfileConsumer,
    reader: StubLag,
    scenario: Scenario,
) -> (Result<Action>, Sent, Arc<Context>) {
    let (ctx, verifier) = context(reader);
    let server = verifier.run(pc.clone(), scenario);
    let result = reconcile(Arc::new(pc), ctx.clone()).await;
    let sent = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("scenario not completed")
        .unwrap();
    (result, sent, ctx)
}

fn env_of(d: &Deployment, name: &str) -> Option<String> {
    d.spec.template.spec.as_ref().unwrap().containers[0]
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

fn replicas_of(d: &Deployment) -> Option<i32> {
    d.spec.replicas
}

fn condition_of<'a>(s: &'a ProfileConsumerStatus, type_: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

/// Asserts the condition's status and reason, and returns it for further checks.
fn assert_condition<'a>(
    s: &'a ProfileConsumerStatus,
    type_: &str,
    status: &str,
    reason: &str,
) -> &'a Condition {
    let condition = condition_of(s, type_);
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        (status, reason),
        "{type_}: {}",
        condition.message
    );
    condition
}

/// A resource on consumer group `group` reading `topic`, created `age` seconds ago.
fn in_group(name: &str, group: &str, topic: &str, age: i64) -> ProfileConsumer {
    let mut s = spec();
    s.group_id = Some(group.into());
    s.topics = vec![topic.into()];
    created_at(resource(name, s), age)
}

fn autoscaling_spec(min: i32, max: i32, threshold: i64) -> ProfileConsumerSpec {
    ProfileConsumerSpec {
        handler: crate::crd::Handler::Analytics,
        replicas: None,
        autoscaling: Some(Autoscaling {
            min_replicas: min,
            max_replicas: max,
            lag_threshold: threshold,
            scale_down_delay_seconds: 300,
            target_drain_seconds: None,
        }),
        ..spec()
    }
}

/// A resource as the API server returns it after a reconcile decided `desired` replicas.
fn reconciled(mut pc: ProfileConsumer, desired: i32, last_scale: Time) -> ProfileConsumer {
    pc.status = Some(ProfileConsumerStatus {
        observed_generation: Some(1),
        group_id: Some(pc.effective_group_id().unwrap()),
        replicas: desired,
        ready_replicas: desired,
        desired_replicas: desired,
        last_scale_time: Some(last_scale),
        ..ProfileConsumerStatus::default()
    });
    pc
}

fn created_at(mut pc: ProfileConsumer, seconds_ago_: i64) -> ProfileConsumer {
    pc.metadata.creation_timestamp = Some(seconds_ago(seconds_ago_));
    pc
}

#[tokio::test]
async fn new_resource_gets_a_deployment_and_a_ready_status() {
    let pc = resource("audit", spec());
    let (result, sent, _) = reconcile_with(
        pc.clone(),
        lag(7, 3),
        Scenario::Apply {
            siblings: vec![pc.clone()],
            ready: 2,
            events: vec![],
        },
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));

    let d = sent.deployment.unwrap();
    assert_eq!(
        d,
        deployment::build(&pc, &settings(), "default.audit", 2).unwrap()
    );
    assert_eq!(replicas_of(&d), Some(2));
    // Every object the reconciler sends is free of duplicate list-map keys (SSA refuses them).
    assert_eq!(
        list_map_duplicates(&serde_json::to_value(&d).unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        list_map_duplicates(&serde_json::to_value(sent.status.as_ref().unwrap()).unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(env_of(&d, "KAFKA_GROUP_ID").unwrap(), "default.audit");

    let status = sent.status.unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.group_id.as_deref(), Some("default.audit"));
    // What an HPA reads through the scale subresource: exactly the Deployment's selector.
    assert_eq!(
        status.selector.as_deref(),
        Some("app.kubernetes.io/instance=audit,app.kubernetes.io/name=profile-consumer")
    );
    assert_eq!(
        (
            status.desired_replicas,
            status.replicas,
            status.ready_replicas
        ),
        (2, 2, 2)
    );
    assert_eq!((status.lag, status.partitions), (Some(7), Some(3)));
    assert_eq!(status.last_scale_time, Some(Time(now())));
    assert_condition(&status, "Ready", "True", "ReplicasReady");
    assert_eq!(condition_of(&status, "Progressing").status, "False");
    assert_condition(&status, "Degraded", "False", "AsExpected");
}

#[tokio::test]
async fn deployment_is_left_to_garbage_collection_through_its_owner_reference() {
    // Deleting a ProfileConsumer needs no finalizer: its Deployment names it as controlling owner.
    let pc = resource("audit", spec());
    let (_, sent, _) = reconcile_with(
        pc.clone(),
        lag(0, 1),
        Scenario::Apply {
            siblings: vec![],
            ready: 2,
            events: vec![],
        },
    )
    .await;
    let d = sent.deployment.unwrap();
    let owners = d.metadata.owner_references.unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].uid, "uid-audit");
    assert_eq!(owners[0].kind, "ProfileConsumer");
    assert_eq!(owners[0].controller, Some(true));
    // No blockOwnerDeletion: it would need `update` on profileconsumers/finalizers.
    assert_eq!(owners[0].block_owner_deletion, None);
}

#[tokio::test]
async fn resource_being_deleted_is_left_to_garbage_collection() {
    let mut pc = resource("audit", spec());
    pc.metadata.deletion_timestamp = Some(seconds_ago(1));
    // The API server stays up but never answers: any request would hit the timeout.
    let (ctx, _api_server) = context(lag(0, 1));
    let result = tokio::time::timeout(Duration::from_secs(1), reconcile(Arc::new(pc), ctx))
        .await
        .expect("reconcile made a request");
    assert_eq!(result.unwrap(), Action::await_change());
}

#[tokio::test]
async fn unchanged_resource_is_applied_again_identically_without_events() {
    // Server-side apply is idempotent: the same body is sent on every resync, which also puts
    // back a hand edit of a managed field.
    let pc = reconciled(resource("audit", spec()), 2, seconds_ago(3600));
    let (result, sent, _) = reconcile_with(
        pc.clone(),
        lag(0, 3),
        Scenario::Apply {
            siblings: vec![pc.clone()],
            ready: 2,
            events: vec![],
        },
    )
    .await;
    result.unwrap();
    assert_eq!(
        sent.deployment.unwrap(),
        deployment::build(&pc, &settings(), "default.audit", 2).unwrap()
    );
    let status = sent.status.unwrap();
    assert_eq!(status.desired_replicas, 2);
    assert_eq!(
        status.last_scale_time,
        Some(seconds_ago(3600)),
        "no scale change"
    );
    assert!(sent.events.is_empty());
}

#[tokio::test]
async fn changed_spec_is_applied_to_the_deployment() {
    let mut pc = reconciled(resource("audit", spec()), 2, seconds_ago(3600));
    pc.spec.topics = vec!["user-events".into(), "admin-events".into()];
    pc.spec.replicas = Some(3);
    pc.metadata.generation = Some(2);
    let (_, sent, _) = reconcile_with(
        pc,
        lag(0, 3),
        Scenario::Apply {
            siblings: vec![],
            ready: 3,
            events: vec!["Scaled"],
        },
    )
    .await;
    let d = sent.deployment.unwrap();
    assert_eq!(
        env_of(&d, "KAFKA_TOPICS").unwrap(),
        "user-events,admin-events"
    );
    assert_eq!(replicas_of(&d), Some(3));
    let status = sent.status.unwrap();
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(status.last_scale_time, Some(Time(now())));
    assert_eq!(
        sent.events[0]["note"],
        "scaled from 2 to 3 replicas (lag 0)"
    );
}

#[tokio::test]
async fn lag_scales_up_at_once_capped_by_partitions_and_records_an_event() {
    let pc = reconciled(
        resource("analytics", autoscaling_spec(1, 10, 100)),
        1,
        seconds_ago(10),
    );
    let (_, sent, _) = reconcile_with(
        pc,
        lag(1000, 4),
        Scenario::Apply {
            siblings: vec![],
            ready: 1,
            events: vec!["Scaled"],
        },
    )
    .await;
    assert_eq!(replicas_of(&sent.deployment.unwrap()), Some(4));
    let status = sent.status.unwrap();
    assert_eq!(status.desired_replicas, 4);
    assert_eq!((status.lag, status.partitions), (Some(1000), Some(4)));
    assert_eq!(status.last_scale_time, Some(Time(now())));
    assert_eq!(status.ready_replicas, 1);
    assert_condition(&status, "Ready", "False", "ReplicasNotReady");
    assert_eq!(condition_of(&status, "Progressing").status, "True");
    assert_eq!(sent.events[0]["type"], "Normal");
    assert_eq!(
        sent.events[0]["note"],
        "scaled from 1 to 4 replicas (lag 1000)"
    );
}

#[tokio::test]
async fn scale_down_waits_for_the_delay() {
    let pc = reconciled(
        resource("analytics", autoscaling_spec(1, 10, 100)),
        4,
        seconds_ago(60),
    );
    let (_, sent, _) = reconcile_with(
        pc,
        lag(0, 4),
        Scenario::Apply {
            siblings: vec![],
            ready: 4,
            events: vec![],
        },
    )
    .await;
    assert_eq!(replicas_of(&sent.deployment.unwrap()), Some(4));
    assert_eq!(sent.status.unwrap().last_scale_time, Some(seconds_ago(60)));
}

#[tokio::test]
async fn paused_resource_runs_no_pods() {
    let mut s = spec();
    s.paused = true;
    let pc = reconciled(resource("email", s), 0, seconds_ago(100));
    let (_, sent, _) = reconcile_with(
        pc,
        lag(5, 1),
        Scenario::Apply {
            siblings: vec![],
            ready: 0,
            events: vec![],
        },
    )
    .await;
    assert_eq!(replicas_of(&sent.deployment.unwrap()), Some(0));
    let status = sent.status.unwrap();
    assert_eq!(condition_of(&status, "Ready").reason, "Paused");
}

#[tokio::test]
async fn unreadable_lag_holds_the_replicas_and_degrades() {
    let pc = reconciled(
        resource("analytics", autoscaling_spec(1, 10, 100)),
        3,
        seconds_ago(10),
    );
    let (result, sent, _) = reconcile_with(
        pc,
        StubLag(Err("broker unreachable".into())),
        Scenario::Apply {
            siblings: vec![],
            ready: 3,
            events: vec!["LagUnavailable"],
        },
    )
    .await;
    result.unwrap();
    assert_eq!(replicas_of(&sent.deployment.unwrap()), Some(3));
    let status = sent.status.unwrap();
    assert_eq!(status.lag, None);
    assert_condition(&status, "Degraded", "True", "LagUnavailable");
    assert_eq!(sent.events[0]["type"], "Warning");
}

#[tokio::test]
async fn later_resource_on_the_same_group_with_other_topics_is_degraded_without_deployment() {
    let first = in_group("first", "shared", "user-events", 600);
    let later = in_group("later", "shared", "admin-events", 60);
    let (result, sent, _) = reconcile_with(
        later.clone(),
        lag(0, 1),
        Scenario::GroupConflict {
            siblings: vec![first, later],
        },
    )
    .await;
    result.unwrap();
    assert!(sent.deployment.is_none());
    let status = sent.status.unwrap();
    let degraded = assert_condition(&status, "Degraded", "True", "GroupConflict");
    assert!(
        degraded.message.contains("\"first\""),
        "{}",
        degraded.message
    );
    assert_eq!(condition_of(&status, "Ready").status, "False");
    assert_eq!(sent.events[0]["type"], "Warning");
}

#[tokio::test]
async fn resource_losing_its_group_keeps_its_deployment_untouched_and_is_refused() {
    // It ran before the rival appeared (status: 2 replicas); the operator neither deletes nor
    // changes its Deployment, it only reports the conflict.
    let first = in_group("first", "shared", "user-events", 600);
    let mut later = reconciled(
        in_group("later", "shared", "admin-events", 60),
        2,
        seconds_ago(60),
    );
    later.metadata.generation = Some(2);
    let (result, sent, _) = reconcile_with(
        later.clone(),
        lag(0, 1),
        Scenario::GroupConflict {
            siblings: vec![first, later],
        },
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
    assert!(sent.deployment.is_none());
    let status = sent.status.unwrap();
    assert_condition(&status, "Degraded", "True", "GroupConflict");
    assert_condition(&status, "Ready", "False", "GroupConflict");
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(sent.events[0]["reason"], "GroupConflict");
}

#[tokio::test]
async fn long_event_notes_are_cut_to_the_api_servers_limit_on_a_char_boundary() {
    // The API server refuses an Event whose note exceeds 1 kB (and the Event is lost).
    let message = format!("admission webhook refused: {}", "é".repeat(1500));
    let (_, sent, _) = reconcile_with(
        resource("audit", spec()),
        lag(0, 1),
        Scenario::ApplyFails {
            message: message.clone(),
        },
    )
    .await;
    let note = sent.events[0]["note"].as_str().unwrap();
    assert!(note.len() <= 1024, "note of {} bytes", note.len());
    assert!(
        note.len() > 1000,
        "cut far more than needed: {} bytes",
        note.len()
    );
    assert!(note.contains("admission webhook refused"), "{note}");
}

#[tokio::test]
async fn earlier_resource_keeps_its_group() {
    let first = in_group("first", "shared", "user-events", 600);
    let later = in_group("later", "shared", "admin-events", 60);
    let (_, sent, _) = reconcile_with(
        first.clone(),
        lag(0, 1),
        Scenario::Apply {
            siblings: vec![first, later],
            ready: 2,
            events: vec![],
        },
    )
    .await;
    assert!(sent.deployment.is_some());
    assert_eq!(
        condition_of(&sent.status.unwrap(), "Degraded").status,
        "False"
    );
}

#[test]
fn same_creation_time_is_broken_by_name_and_same_topics_share_a_group() {
    let a = in_group("a", "g", "t1", 5);
    let b = in_group("b", "g", "t2", 5);
    let c = in_group("c", "g", "t1", 5);
    let all = vec![a.clone(), b.clone(), c.clone()];
    assert!(group_conflict(&a, &all).unwrap().is_none());
    assert_eq!(group_conflict(&b, &all).unwrap().unwrap().name_any(), "a");
    // c reads the winner's topics: it shares the group with a, and b (refused) does not count.
    assert!(group_conflict(&c, &all).unwrap().is_none());
}

#[tokio::test]
async fn invalid_spec_is_degraded_and_nothing_else_is_touched() {
    let mut s = autoscaling_spec(5, 2, 100);
    s.topics = vec!["user-events".into()];
    let pc = resource("bad", s);
    let (result, sent, _) = reconcile_with(pc, lag(0, 1), Scenario::InvalidSpec).await;
    result.unwrap();
    let status = sent.status.unwrap();
    let degraded = assert_condition(&status, "Degraded", "True", "InvalidSpec");
    assert_eq!(
        degraded.message,
        "minReplicas must not be greater than maxReplicas"
    );
}

#[tokio::test]
async fn failed_apply_is_reported_counted_and_retried_with_backoff() {
    let pc = resource("audit", spec());
    let (result, sent, ctx) = reconcile_with(
        pc.clone(),
        lag(0, 1),
        Scenario::ApplyFails {
            message: "etcd is down".into(),
        },
    )
    .await;
    let error = result.unwrap_err();
    assert_eq!(error.metric_label(), "kube");
    assert_eq!(sent.events[0]["type"], "Warning");
    let pc = Arc::new(pc);
    assert_eq!(
        error_policy(pc.clone(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(pc, &error, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    let failures = ctx
        .metrics
        .failures
        .get_or_create(&crate::metrics::ErrorLabels {
            error: "kube".into(),
        })
        .get();
    assert_eq!(failures, 2);
}

#[test]
fn event_notes_fit_the_limit_and_are_cut_on_a_char_boundary() {
    assert_eq!(truncate_note("short".into()), "short");
    let exact = "x".repeat(MAX_NOTE_BYTES);
    assert_eq!(truncate_note(exact.clone()), exact);
    for filler in ["é", "€", "𝄞", "x"] {
        let long = format!("a{}", filler.repeat(2000));
        let cut = truncate_note(long.clone());
        assert!(cut.len() <= MAX_NOTE_BYTES, "{filler}: {} bytes", cut.len());
        assert!(
            cut.len() > MAX_NOTE_BYTES - 8,
            "{filler}: {} bytes",
            cut.len()
        );
        assert!(cut.ends_with('…'));
        assert!(long.starts_with(cut.trim_end_matches('…')));
    }
}

/// The predicate as a pure function over a sequence of watch events.
#[test]
fn only_new_resources_spec_changes_and_deletions_pass_the_trigger_filter() {
    use kube::runtime::watcher::Event;
    let mut changes = SpecChanges::default();
    let pc = resource("audit", spec());
    let with = |generation: i64, lag: Option<i64>| {
        let mut pc = pc.clone();
        pc.metadata.generation = Some(generation);
        pc.status = Some(ProfileConsumerStatus {
            lag,
            ..ProfileConsumerStatus::default()
        });
        pc
    };
    let passed = |changes: &mut SpecChanges, event| changes.admit(event).is_some();
    assert!(!passed(&mut changes, Event::Init));
    assert!(
        passed(&mut changes, Event::InitApply(with(1, None))),
        "first sight"
    );
    assert!(!passed(&mut changes, Event::InitDone));
    for lag in 0..10 {
        assert!(
            !passed(&mut changes, Event::Apply(with(1, Some(lag)))),
            "status patch (lag {lag}) passed"
        );
    }
    assert!(
        passed(&mut changes, Event::Apply(with(2, Some(9)))),
        "spec change"
    );
    assert!(!passed(&mut changes, Event::Apply(with(2, Some(3)))));
    let mut deleting = with(2, Some(3));
    deleting.metadata.deletion_timestamp = Some(seconds_ago(0));
    assert!(
        passed(&mut changes, Event::Apply(deleting.clone())),
        "deletion started"
    );
    assert!(passed(&mut changes, Event::Delete(deleting)), "deleted");
    // Recreated under the same name: generation 1 again, a new uid.
    let mut recreated = with(1, None);
    recreated.metadata.uid = Some("uid-new".into());
    assert!(passed(&mut changes, Event::Apply(recreated.clone())));
    assert!(!passed(&mut changes, Event::Apply(recreated.clone())));
    // After a relist everything is reconciled once more.
    assert!(!passed(&mut changes, Event::Init));
    assert!(passed(&mut changes, Event::InitApply(recreated)));
}

#[test]
fn backoff_doubles_up_to_five_minutes() {
    assert_eq!(backoff(1), Duration::from_secs(5));
    assert_eq!(backoff(2), Duration::from_secs(10));
    assert_eq!(backoff(4), Duration::from_secs(40));
    assert_eq!(backoff(10), Duration::from_secs(300));
    assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
}

#[tokio::test]
async fn missing_crd_stops_start_up_with_install_instructions() {
    let (ctx, mut verifier) = context(lag(0, 1));
    let server = tokio::spawn(async move {
        let (request, send) = verifier.next().await;
        assert_eq!(request.method(), Method::GET);
        assert_eq!(
            request.uri().path(),
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/profileconsumers.statecast.dev"
        );
        send.send_response(json_response(
            StatusCode::NOT_FOUND,
            &status_body(404, "NotFound", "not found"),
        ));
    });
    let error = check_crd_installed(&ctx.client).await.unwrap_err();
    server.await.unwrap();
    assert!(matches!(error, Error::CrdNotInstalled));
    assert!(
        error
            .to_string()
            .contains("kubectl apply -f manifests/crd/")
    );
}

/// Response body of the fake API server: whole, or a watch stream that stays open.
type FakeBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, std::convert::Infallible>;

fn whole(status: StatusCode, body: &impl serde::Serialize) -> Response<FakeBody> {
    use http_body_util::BodyExt;
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            http_body_util::Full::new(bytes::Bytes::from(serde_json::to_vec(body).unwrap()))
                .boxed_unsync(),
        )
        .unwrap()
}

/// An API server holding one ProfileConsumer, for the whole controller: it answers lists and
/// watches, and like the real one bumps the resourceVersion on each status patch and sends the
/// object back on the open watches as a MODIFIED event (same generation: the spec did not change).
struct FakeApiServer {
    pc: ProfileConsumer,
    resource_version: u64,
    consumer_watches: Vec<http_body_util::channel::Sender<bytes::Bytes>>,
    deployment_watches: Vec<http_body_util::channel::Sender<bytes::Bytes>>,
    /// When each reconcile ended (its status patch), since the start.
    status_patches: Vec<Duration>,
    /// When each Deployment apply came, and its replicas.
    applies: Vec<(Duration, Option<i32>)>,
}

impl FakeApiServer {
    fn new(pc: ProfileConsumer) -> Self {
        Self {
            pc,
            resource_version: 1,
            consumer_watches: vec![],
            deployment_watches: vec![],
            status_patches: vec![],
            applies: vec![],
        }
    }

    fn bump(&mut self) {
        self.resource_version += 1;
        self.pc.metadata.resource_version = Some(self.resource_version.to_string());
    }

    async fn broadcast(
        watches: &mut Vec<http_body_util::channel::Sender<bytes::Bytes>>,
        event: Value,
    ) {
        let mut line = serde_json::to_vec(&event).unwrap();
        line.push(b'\n');
        let mut open = vec![];
        for mut watch in watches.drain(..) {
            if watch
                .send_data(bytes::Bytes::from(line.clone()))
                .await
                .is_ok()
            {
                open.push(watch);
            }
        }
        *watches = open;
    }

    /// A user edits the spec: a new generation, sent on the watches.
    async fn change_spec(&mut self, replicas: i32) {
        self.pc.spec.replicas = Some(replicas);
        self.pc.metadata.generation = self.pc.metadata.generation.map(|g| g + 1);
        self.bump();
        let event = json!({"type": "MODIFIED", "object": self.pc});
        Self::broadcast(&mut self.consumer_watches, event).await;
    }

    /// The owned Deployment changes (e.g. a pod became ready): a MODIFIED metadata event.
    async fn change_deployment(&mut self) {
        self.resource_version += 1;
        let owner = self.pc.controller_owner_ref(&()).unwrap();
        let event = json!({"type": "MODIFIED", "object": {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": self.pc.deployment_name(), "namespace": "default", "uid": "uid-deployment",
                "resourceVersion": self.resource_version.to_string(), "generation": 1,
                "labels": {"app.kubernetes.io/managed-by": "profile-operator"},
                "ownerReferences": [owner],
            },
        }});
        Self::broadcast(&mut self.deployment_watches, event).await;
    }

    fn watch() -> (
        http_body_util::channel::Sender<bytes::Bytes>,
        Response<FakeBody>,
    ) {
        use http_body_util::BodyExt;
        let (sender, body) = http_body_util::Channel::<bytes::Bytes>::new(64);
        let response = Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(body.boxed_unsync())
            .unwrap();
        (sender, response)
    }

    async fn answer(&mut self, request: Request<Body>, elapsed: Duration) -> Response<FakeBody> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let watching = query.contains("watch=true");
        let consumers = "/apis/statecast.dev/v1alpha1/namespaces/default/profileconsumers";
        let deployments = "/apis/apps/v1/namespaces/default/deployments";
        let list_meta = json!({"resourceVersion": self.resource_version.to_string()});
        match (method, path.as_str()) {
            (Method::GET, p) if p == consumers && watching => {
                let (sender, response) = Self::watch();
                self.consumer_watches.push(sender);
                response
            }
            (Method::GET, p) if p == consumers => whole(
                StatusCode::OK,
                &json!({
                    "apiVersion": "statecast.dev/v1alpha1", "kind": "ProfileConsumerList",
                    "metadata": list_meta, "items": [self.pc],
                }),
            ),
            (Method::GET, p) if p == deployments && watching => {
                let (sender, response) = Self::watch();
                self.deployment_watches.push(sender);
                response
            }
            (Method::GET, p) if p == deployments => whole(
                StatusCode::OK,
                &json!({
                    "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                    "metadata": list_meta, "items": [],
                }),
            ),
            (Method::PATCH, p) if p.starts_with(deployments) => {
                let body = request.into_body().collect_bytes().await.unwrap();
                let mut deployment: Deployment = serde_json::from_slice(&body).unwrap();
                let replicas = deployment.spec.replicas;
                self.applies.push((elapsed, replicas));
                deployment.status = Some(DeploymentStatus {
                    replicas,
                    ready_replicas: replicas,
                    updated_replicas: replicas,
                    ..DeploymentStatus::default()
                });
                whole(StatusCode::OK, &deployment)
            }
            (Method::PATCH, p) if p == format!("{consumers}/{}/status", self.pc.name_any()) => {
                let body = request.into_body().collect_bytes().await.unwrap();
                let patch: Value = serde_json::from_slice(&body).unwrap();
                self.pc.status = Some(serde_json::from_value(patch["status"].clone()).unwrap());
                self.bump();
                self.status_patches.push(elapsed);
                let event = json!({"type": "MODIFIED", "object": self.pc});
                Self::broadcast(&mut self.consumer_watches, event).await;
                whole(StatusCode::OK, &self.pc)
            }
            (Method::POST | Method::PATCH, p) if p.starts_with("/apis/events.k8s.io/") => {
                let body = request.into_body().collect_bytes().await.unwrap();
                let event: Value = serde_json::from_slice(&body).unwrap_or_default();
                whole(StatusCode::CREATED, &event)
            }
            (method, _) => panic!("unexpected request {method} {path}?{query}"),
        }
    }
}

/// The whole controller (watches, predicate, scheduler) against [`FakeApiServer`], on paused
/// time: reconciles over 95 s are bounded by the resync (0, 30, 60, 90 s) plus one per real
/// change, however many status patches come back as watch events.
#[tokio::test(start_paused = true)]
async fn status_patches_echoed_by_the_watch_do_not_retrigger_reconciles() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<FakeBody>>();
    let mut ctx = Context::new(
        Client::new(service, "default"),
        settings(),
        Arc::new(lag(0, 3)),
        Reporter {
            controller: "profile-operator".into(),
            instance: Some("test".into()),
        },
        Metrics::default(),
    );
    ctx.now = now;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(run(Arc::new(ctx), Some("default"), async move {
        let _ = stopped.await;
    }));

    let mut server = FakeApiServer::new(resource("audit", spec()));
    let start = tokio::time::Instant::now();
    let window = Duration::from_secs(95);
    let spec_change_at = Duration::from_secs(40);
    let deployment_change_at = Duration::from_secs(80);
    let mut pending = vec![deployment_change_at, spec_change_at];
    loop {
        let deadline = start + pending.last().copied().unwrap_or(window);
        match tokio::time::timeout_at(deadline, handle.next_request()).await {
            Ok(Some((request, send))) => {
                let response = server.answer(request, start.elapsed()).await;
                send.send_response(response);
            }
            Ok(None) => panic!("the controller stopped"),
            Err(_) => match pending.pop() {
                Some(at) if at == spec_change_at => server.change_spec(3).await,
                Some(_) => server.change_deployment().await,
                None => break,
            },
        }
        assert!(
            server.status_patches.len() <= 20,
            "reconciling in a loop: {} reconciles by {:?}",
            server.status_patches.len(),
            start.elapsed()
        );
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), controller).await;

    let reconciles = &server.status_patches;
    let resyncs = 1 + (window.as_secs() / RESYNC.as_secs()) as usize;
    assert!(
        reconciles.len() <= resyncs + 2,
        "{} reconciles in {window:?}: {reconciles:?}",
        reconciles.len()
    );
    assert!(reconciles.len() >= 3, "resync stopped: {reconciles:?}");
    // The spec change (replicas 3) was applied at once, not only at the next resync.
    let applied_new_spec = server
        .applies
        .iter()
        .find(|(_, replicas)| *replicas == Some(3))
        .map(|(at, _)| *at);
    assert!(
        applied_new_spec
            .is_some_and(|at| at >= spec_change_at && at < spec_change_at + Duration::from_secs(1)),
        "spec change applied at {applied_new_spec:?}: {:?}",
        server.applies
    );
    // A change of the owned Deployment triggers a reconcile too.
    assert!(
        reconciles
            .iter()
            .any(|at| *at >= deployment_change_at
                && *at < deployment_change_at + Duration::from_secs(1)),
        "no reconcile after the Deployment changed: {reconciles:?}"
    );
}

fn drain_spec(scale_down_delay_seconds: i64) -> ProfileConsumerSpec {
    let mut s = autoscaling_spec(1, 10, 1000);
    let a = s.autoscaling.as_mut().unwrap();
    a.target_drain_seconds = Some(120);
    a.scale_down_delay_seconds = scale_down_delay_seconds;
    s
}

#[tokio::test]
async fn drain_mode_starts_on_the_lag_rule_and_keeps_a_sample_window() {
    let pc = resource("drain", drain_spec(300));
    let (result, sent, ctx) = reconcile_with(
        pc.clone(),
        lag(4500, 6),
        Scenario::Apply {
            siblings: vec![pc.clone()],
            ready: 5,
            events: vec![],
        },
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
    let status = sent.status.unwrap();
    // One sample, no rate yet: ceil(4500 / 1000) = 5.
    assert_eq!(status.desired_replicas, 5);
    assert_eq!(replicas_of(&sent.deployment.unwrap()), Some(5));
    let c = assert_condition(&status, SCALING_ACTIVE, "False", "RateUnknown");
    assert!(c.message.starts_with("5 replicas: "), "{}", c.message);
    assert!(c.message.contains("lag 4500"), "{}", c.message);
    assert_condition(&status, "Degraded", "False", "AsExpected");
    assert_eq!(ctx.drain_windows.len(&drain::operator::key(&pc)), 1);
}

#[tokio::test]
async fn lag_mode_has_no_scaling_active_condition() {
    let pc = resource("lagmode", autoscaling_spec(1, 10, 1000));
    let (_, sent, ctx) = reconcile_with(
        pc.clone(),
        lag(4500, 6),
        Scenario::Apply {
            siblings: vec![pc.clone()],
            ready: 5,
            events: vec![],
        },
    )
    .await;
    let status = sent.status.unwrap();
    assert!(status.conditions.iter().all(|c| c.type_ != SCALING_ACTIVE));
    assert_eq!(ctx.drain_windows.len(&drain::operator::key(&pc)), 0);
}

#[tokio::test]
async fn drain_target_with_a_short_scale_down_delay_is_refused() {
    let pc = resource("drain-short", drain_spec(30));
    let (_, sent, _) = reconcile_with(pc.clone(), lag(0, 6), Scenario::InvalidSpec).await;
    let status = sent.status.unwrap();
    let c = assert_condition(&status, "Degraded", "True", "InvalidSpec");
    assert_eq!(c.message, crate::crd::DRAIN_DELAY_MESSAGE);
}
