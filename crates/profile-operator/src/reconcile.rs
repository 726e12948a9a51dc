//! The controller: watches `ProfileConsumer`s and the Deployments they own, and for each resource
//! 1. refuses an invalid spec (`Degraded`/`InvalidSpec`, no Deployment change);
//! 2. refuses a consumer group already used by an earlier resource of the namespace on other
//!    topics (`Degraded`/`GroupConflict`): no Deployment is created, changed or deleted for it;
//! 3. decides the replicas (fixed, or from the group's lag with [`crate::scaling`]);
//! 4. applies the Deployment with server-side apply under [`FIELD_MANAGER`] with force, so a hand
//!    edit of a field the operator manages is put back;
//! 5. writes the status (replicas, lag, conditions) and records Events on scale changes and
//!    failures.
//!
//! A resource being deleted is left alone: its Deployment goes with it through the owner reference
//! (no finalizer). Every other resource is requeued after [`RESYNC`] (lag changes without any
//! watch event); failures are requeued with a per-resource exponential backoff.
//!
//! Watch events of a resource only start a reconcile when [`SpecChanges`] lets them through: a new
//! generation (spec change), a deletion, or a resource not seen before. The status patch at the
//! end of every reconcile is itself a MODIFIED event; without the filter each pass would trigger
//! the next one at once. Changes of the owned Deployments always trigger.

use std::collections::{BTreeSet, HashMap};
use std::future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{CRD_NAME, ProfileConsumer, ProfileConsumerStatus};
use crate::deployment::{self, MANAGED_BY, Settings};
use crate::drain;
use crate::lag::{GroupLag, LagReader};
use crate::metrics::Metrics;
use crate::scaling::{ScaleInput, desired_replicas};
use crate::{Error, Result};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "profile-operator";
/// Requeue interval of a healthy resource; refreshes the lag.
pub const RESYNC: Duration = Duration::from_secs(30);
/// First retry delay after a failure; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(5);
/// Longest retry delay after repeated failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What every reconcile needs.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Operator settings passed into the Deployments.
    pub settings: Settings,
    /// Source of the groups' lag.
    pub lag_reader: Arc<dyn LagReader>,
    /// Publishes Kubernetes Events on the resources.
    pub recorder: Recorder,
    /// Reconcile metrics.
    pub metrics: Metrics,
    /// The clock (fixed in tests).
    pub now: fn() -> Timestamp,
    /// Consecutive failures per resource, for the backoff.
    failures: Mutex<HashMap<ObjectRef<ProfileConsumer>, u32>>,
    /// Offset samples per resource in drain mode (in memory: a restart starts a fresh window).
    pub drain_windows: drain::Windows,
}

impl Context {
    /// A context publishing Events as `reporter`.
    pub fn new(
        client: Client,
        settings: Settings,
        lag_reader: Arc<dyn LagReader>,
        reporter: Reporter,
        metrics: Metrics,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            lag_reader,
            metrics,
            now: Timestamp::now,
            failures: Mutex::default(),
            drain_windows: drain::Windows::default(),
        }
    }

    fn record_outcome(&self, pc: &ProfileConsumer, failed: bool) -> u32 {
        let key = ObjectRef::from_obj(pc);
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failed {
            let n = failures.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        } else {
            failures.remove(&key);
            0
        }
    }

    async fn publish(&self, pc: &ProfileConsumer, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate_note(note)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &pc.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "publishing event failed");
        }
    }
}

/// Longest Event note the API server accepts, in bytes; a longer one makes it refuse the Event.
pub const MAX_NOTE_BYTES: usize = 1024;

/// `note` cut to [`MAX_NOTE_BYTES`] on a character boundary, ending in `…` when cut.
pub fn truncate_note(mut note: String) -> String {
    const ELLIPSIS: &str = "…";
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    let mut end = MAX_NOTE_BYTES - ELLIPSIS.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push_str(ELLIPSIS);
    note
}

/// Delay before retrying after the `n`th consecutive failure: 5 s, 10 s, 20 s, … up to 5 min.
pub fn backoff(n: u32) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1).min(16));
    MIN_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Reconciles one resource; on failure also records a Warning Event on it. Each pass is one
/// span (exported over OTLP when configured), with the Kubernetes API calls' logs inside it.
#[tracing::instrument(
    name = "reconcile ProfileConsumer",
    skip_all,
    fields(namespace = pc.namespace().unwrap_or_default(), name = %pc.name_any())
)]
pub async fn reconcile(pc: Arc<ProfileConsumer>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.count_and_measure();
    let result = reconcile_inner(&pc, &ctx).await;
    match &result {
        Ok(_) => {
            ctx.record_outcome(&pc, false);
        }
        Err(e) => {
            ctx.publish(&pc, EventType::Warning, "ReconcileFailed", e.to_string())
                .await;
        }
    }
    result
}

/// Logs and counts a failure, and requeues the resource with backoff.
pub fn error_policy(pc: Arc<ProfileConsumer>, error: &Error, ctx: Arc<Context>) -> Action {
    let n = ctx.record_outcome(&pc, true);
    let delay = backoff(n);
    tracing::warn!(
        name = %pc.name_any(), namespace = ?pc.namespace(), %error, attempt = n, ?delay,
        "reconcile failed"
    );
    ctx.metrics.reconcile_failure(error);
    Action::requeue(delay)
}

/// Condition types the operator sets.
const READY: &str = "Ready";
const PROGRESSING: &str = "Progressing";
const DEGRADED: &str = "Degraded";
/// Drain mode only: `True` when the replicas come from measured rates, `False` when the
/// `lagThreshold` fallback decided; the reason is [`drain::Reason::as_str`].
pub const SCALING_ACTIVE: &str = "ScalingActive";

/// A condition whose `lastTransitionTime` only moves when its status changes.
fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

fn degraded_reason(status: Option<&ProfileConsumerStatus>) -> Option<&str> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == DEGRADED && c.status == "True")
        .map(|c| c.reason.as_str())
}

fn topic_set(pc: &ProfileConsumer) -> BTreeSet<&str> {
    pc.spec.topics.iter().map(String::as_str).collect()
}

/// The resource `pc` loses its consumer group to, if any: among valid, not-deleted resources of
/// the namespace with the same effective group, oldest first (creationTimestamp, then name), each
/// is accepted unless an accepted one reads other topics.
pub fn group_conflict<'a>(
    pc: &'a ProfileConsumer,
    namespace_items: &'a [ProfileConsumer],
) -> Result<Option<&'a ProfileConsumer>> {
    let group = pc.effective_group_id()?;
    let mut same_group = vec![pc];
    for other in namespace_items {
        if other.name_any() == pc.name_any()
            || other.meta().deletion_timestamp.is_some()
            || other.spec.validate().is_err()
            || other.effective_group_id()? != group
        {
            continue;
        }
        same_group.push(other);
    }
    same_group.sort_by_key(|p| {
        (
            p.meta().creation_timestamp.clone().map(|t| t.0),
            p.name_any(),
        )
    });
    let mut accepted: Vec<&ProfileConsumer> = vec![];
    for candidate in same_group {
        let rival = accepted
            .iter()
            .copied()
            .find(|a| topic_set(a) != topic_set(candidate));
        if candidate.name_any() == pc.name_any() {
            return Ok(rival);
        }
        if rival.is_none() {
            accepted.push(candidate);
        }
    }
    Ok(None)
}

async fn read_lag(ctx: &Context, group: &str, topics: &[String]) -> Result<GroupLag> {
    let reader = ctx.lag_reader.clone();
    let group = group.to_owned();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || reader.read_lag(&group, &topics))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

async fn patch_status(
    api: &Api<ProfileConsumer>,
    name: &str,
    status: &ProfileConsumerStatus,
) -> Result<()> {
    let patch = json!({
        "apiVersion": "statecast.dev/v1alpha1",
        "kind": "ProfileConsumer",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Marks the resource `Degraded` for `reason` (keeping its replica counts) and records a Warning
/// Event when it was not already degraded for that reason.
async fn refuse(
    pc: &ProfileConsumer,
    ctx: &Context,
    api: &Api<ProfileConsumer>,
    group: String,
    reason: &str,
    message: String,
) -> Result<Action> {
    let previous = pc.status.clone().unwrap_or_default();
    let now = (ctx.now)();
    let generation = pc.meta().generation;
    // Not ready, not progressing, degraded: all three for the same reason.
    let conditions = [(READY, false), (PROGRESSING, false), (DEGRADED, true)]
        .into_iter()
        .map(|(type_, status)| {
            condition(
                &previous.conditions,
                type_,
                status,
                reason,
                message.clone(),
                generation,
                now,
            )
        })
        .collect();
    let status = ProfileConsumerStatus {
        observed_generation: generation,
        group_id: Some(group),
        conditions,
        ..previous
    };
    if degraded_reason(pc.status.as_ref()) != Some(reason) {
        ctx.publish(pc, EventType::Warning, reason, message).await;
    }
    patch_status(api, &pc.name_any(), &status).await?;
    Ok(Action::requeue(RESYNC))
}

async fn reconcile_inner(pc: &ProfileConsumer, ctx: &Context) -> Result<Action> {
    if pc.meta().deletion_timestamp.is_some() {
        // Being deleted: the garbage collector removes the Deployment through its owner
        // reference; applying it now would only recreate it.
        ctx.drain_windows.forget(&drain::operator::key(pc));
        return Ok(Action::await_change());
    }
    let namespace = pc.namespace_or_err()?;
    let name = pc.name_any();
    let consumers: Api<ProfileConsumer> = Api::namespaced(ctx.client.clone(), &namespace);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let group = pc.effective_group_id()?;
    let previous = pc.status.clone();
    let now = (ctx.now)();
    let generation = pc.meta().generation;

    if let Err(message) = pc.spec.validate() {
        return refuse(pc, ctx, &consumers, group, "InvalidSpec", message).await;
    }

    let siblings = consumers.list(&ListParams::default()).await?;
    if let Some(winner) = group_conflict(pc, &siblings.items)? {
        // The group is taken: refuse the resource, as an invalid spec is refused. Its Deployment
        // is neither created nor touched: deleting it (as this once did) would destroy a working
        // consumer because of a later edit of another resource.
        let message = format!(
            "consumer group {group:?} is already used by ProfileConsumer {:?} on topics {:?}",
            winner.name_any(),
            winner.spec.topics
        );
        return refuse(pc, ctx, &consumers, group, "GroupConflict", message).await;
    }

    // Lag: needed to scale, and shown in the status in every mode.
    let lag = read_lag(ctx, &group, &pc.spec.topics).await;
    let previous_desired = previous.as_ref().map(|s| s.desired_replicas);
    let last_scale = previous
        .as_ref()
        .and_then(|s| s.last_scale_time.as_ref())
        .map(|t| t.0);
    let mut lag_error = None;
    let drain_key = drain::operator::key(pc);
    let mut drain_decision = None;
    let drain_target = pc
        .spec
        .autoscaling
        .as_ref()
        .and_then(|a| a.target_drain_seconds);
    if drain_target.is_none() {
        ctx.drain_windows.forget(&drain_key);
    }
    let wanted = match (&pc.spec.autoscaling, &lag) {
        (None, _) => pc.spec.replicas.unwrap_or(crate::crd::DEFAULT_REPLICAS),
        (Some(policy), Ok(l)) if drain_target.is_some() => {
            let decision = ctx.drain_windows.record_and_decide(
                &drain_key,
                drain::operator::sample(l, previous.as_ref(), now),
                policy,
                previous_desired.filter(|_| !pc.spec.paused),
                last_scale.map(drain::operator::seconds),
            );
            ctx.metrics.scaling_decision(decision.reason.as_str());
            drain_decision = Some(decision);
            decision.replicas
        }
        (Some(policy), Ok(l)) => desired_replicas(&ScaleInput {
            policy,
            lag: l.lag,
            partitions: l.partitions,
            // Resuming from pause scales to the target at once.
            current: previous_desired.filter(|_| !pc.spec.paused),
            last_scale,
            now,
        }),
        (Some(policy), Err(e)) => {
            // Without lag, hold the last decision rather than guessing.
            lag_error = Some(e.to_string());
            previous_desired
                .filter(|d| *d > 0)
                .unwrap_or(policy.min_replicas)
        }
    };
    if let (None, Err(e)) = (&pc.spec.autoscaling, &lag) {
        tracing::debug!(%name, error = %e, "lag unavailable (fixed replicas, not needed)");
    }
    let desired = if pc.spec.paused { 0 } else { wanted };

    let deployment = deployment::build(pc, &ctx.settings, &group, desired)?;
    let applied = deployments
        .patch(
            &deployment.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&deployment),
        )
        .await?;

    let (lag_value, partitions) = match &lag {
        Ok(l) => (i64::try_from(l.lag).ok(), i32::try_from(l.partitions).ok()),
        Err(_) => (None, None),
    };
    let last_scale_time = match previous_desired {
        Some(before) if before != desired => {
            let note = match (lag_value, &drain_decision) {
                (Some(_), Some(d)) if !pc.spec.paused => format!(
                    "scaled from {before} to {}",
                    d.message(drain_target.unwrap_or_default())
                ),
                (Some(l), _) => format!("scaled from {before} to {desired} replicas (lag {l})"),
                (None, _) => format!("scaled from {before} to {desired} replicas"),
            };
            ctx.publish(pc, EventType::Normal, "Scaled", note).await;
            Some(Time(now))
        }
        Some(_) => previous
            .as_ref()
            .and_then(|s| s.last_scale_time.clone())
            .or(Some(Time(now))),
        None => Some(Time(now)),
    };
    if let Some(message) = &lag_error
        && degraded_reason(previous.as_ref()) != Some("LagUnavailable")
    {
        ctx.publish(pc, EventType::Warning, "LagUnavailable", message.clone())
            .await;
    }

    let deployment_status = applied.status.unwrap_or_default();
    let replicas = deployment_status.replicas.unwrap_or(0);
    let ready = deployment_status.ready_replicas.unwrap_or(0);
    let updated = deployment_status.updated_replicas.unwrap_or(0);
    let old_conditions = previous
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let settled = ready >= desired && replicas == desired && updated >= desired;
    let ready_condition = if pc.spec.paused {
        (true, "Paused", "paused: no consumer pods run".to_owned())
    } else if ready >= desired {
        (
            true,
            "ReplicasReady",
            format!("{ready}/{desired} replicas ready"),
        )
    } else {
        (
            false,
            "ReplicasNotReady",
            format!("{ready}/{desired} replicas ready"),
        )
    };
    let mut conditions = vec![
        condition(
            &old_conditions,
            READY,
            ready_condition.0,
            ready_condition.1,
            ready_condition.2,
            generation,
            now,
        ),
        if settled {
            condition(
                &old_conditions,
                PROGRESSING,
                false,
                "Stable",
                format!("{desired} replicas up to date"),
                generation,
                now,
            )
        } else {
            condition(
                &old_conditions,
                PROGRESSING,
                true,
                "RollingOut",
                format!(
                    "{replicas} replicas, {updated} up to date, {ready} ready, {desired} desired"
                ),
                generation,
                now,
            )
        },
        match &lag_error {
            Some(message) => condition(
                &old_conditions,
                DEGRADED,
                true,
                "LagUnavailable",
                format!("holding {desired} replicas: {message}"),
                generation,
                now,
            ),
            None => condition(
                &old_conditions,
                DEGRADED,
                false,
                "AsExpected",
                "consumers are managed as specified".into(),
                generation,
                now,
            ),
        },
    ];
    if let Some(target) = drain_target {
        let (active, reason, message) = match (&drain_decision, &lag_error) {
            (Some(d), _) => (
                !d.reason.is_fallback(),
                d.reason.as_str(),
                d.message(target),
            ),
            (None, Some(e)) => (
                false,
                "LagUnavailable",
                format!("holding {desired} replicas: {e}"),
            ),
            (None, None) => (false, "NoSamples", format!("{desired} replicas")),
        };
        conditions.push(condition(
            &old_conditions,
            SCALING_ACTIVE,
            active,
            reason,
            message,
            generation,
            now,
        ));
    }
    let status = ProfileConsumerStatus {
        observed_generation: generation,
        group_id: Some(group),
        selector: Some(deployment::selector_string(pc)),
        replicas,
        ready_replicas: ready,
        desired_replicas: desired,
        lag: lag_value,
        partitions,
        last_scale_time,
        conditions,
    };
    patch_status(&consumers, &name, &status).await?;
    Ok(Action::requeue(RESYNC))
}

/// Fails with [`Error::CrdNotInstalled`] when the CRD is missing from the cluster.
pub async fn check_crd_installed(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.get_opt(CRD_NAME).await? {
        Some(_) => Ok(()),
        None => Err(Error::CrdNotInstalled),
    }
}

/// What a watch event of a resource is compared on: `metadata.generation` (the API server bumps
/// it on spec changes, never on status patches), the uid (a resource recreated under the same
/// name) and whether deletion has started.
type SpecFingerprint = (Option<String>, Option<i64>, bool);

/// The predicate on ProfileConsumer watch events, as `kube::runtime::predicates::generation`
/// plus deletions: lets through an object that is new, has a new generation or uid, or started
/// or finished being deleted, and drops the rest (status patches, metadata-only edits).
#[derive(Debug, Default)]
pub struct SpecChanges {
    seen: HashMap<ObjectRef<ProfileConsumer>, SpecFingerprint>,
}

impl SpecChanges {
    /// The object to reconcile for `event`, if any.
    pub fn admit(&mut self, event: watcher::Event<ProfileConsumer>) -> Option<ProfileConsumer> {
        match event {
            // A relist (after a watch desync) reconciles everything once, like a fresh start.
            watcher::Event::Init => {
                self.seen.clear();
                None
            }
            watcher::Event::InitDone => None,
            watcher::Event::Delete(pc) => {
                self.seen.remove(&ObjectRef::from_obj(&pc));
                Some(pc)
            }
            watcher::Event::Apply(pc) | watcher::Event::InitApply(pc) => {
                let meta = pc.meta();
                let fingerprint = (
                    meta.uid.clone(),
                    meta.generation,
                    meta.deletion_timestamp.is_some(),
                );
                let previous = self
                    .seen
                    .insert(ObjectRef::from_obj(&pc), fingerprint.clone());
                (previous != Some(fingerprint)).then_some(pc)
            }
        }
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    watch_namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (consumers, deployments): (Api<ProfileConsumer>, Api<Deployment>) = match watch_namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    // The store sees every event (the reconciler reads the latest object from it); only the
    // trigger is filtered.
    let (store, writer) = reflector::store();
    let mut changes = SpecChanges::default();
    let triggers = watcher(consumers, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .try_filter_map(move |event| future::ready(Ok(changes.admit(event))));
    Controller::for_stream(triggers, store)
        .owns(deployments, owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
