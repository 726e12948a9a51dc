//! Leader election on a `coordination.k8s.io/v1` Lease, with fencing: only the holder runs the
//! controller, and it stops acting before any other replica can take the Lease over.
//!
//! # The protocol
//! - **Acquire.** A replica reads the Lease every [`Timing::retry_period`]. It takes the Lease
//!   (create, or replace with the `resourceVersion` it read, so a concurrent writer gets a 409) when
//!   it has no holder, names this replica, or has not changed for a whole lease duration *as
//!   observed on this replica's own monotonic clock*. The `renewTime` written by the holder is
//!   never compared with the local clock, so clock skew between nodes cannot shorten a lease.
//! - **Renew.** The leader replaces the Lease every [`Timing::retry_period`], conditional on the
//!   `resourceVersion` it last wrote.
//! - **Fencing.** The leader is leader until [`Timing::renew_deadline`] after it *sent* its last
//!   successful renewal. A follower cannot see that write before it was sent, and waits a whole
//!   [`Timing::lease_duration`] after seeing it, so the leader's authority ends at least
//!   `lease_duration - renew_deadline` (5 s) before anyone else's can begin: the time it has to
//!   drop its controller. [`Elector::hold`] returns at that deadline even when a request hangs,
//!   and at once when the Lease was taken or deleted (a 409 whose re-read names another holder,
//!   or a 404).
//! - **Step down.** On shutdown, after the controller stopped, the leader clears the holder, so a
//!   follower takes over at its next read instead of after a lease duration.
//!
//! This replaces `kube-leader-election` 0.44, which renewed every third of the lifetime and kept
//! acting for a whole lifetime after the last renewal, so two replicas could reconcile at once for
//! up to a lease period. `kube-lease-manager` (0.13, kube 5) was considered: its `watch()` keeps
//! reporting leadership while renewals fail with API errors (it only backs off and retries), so it
//! gives no fencing either.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

use crate::{Error, Result};

/// The durations of the election (client-go's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a follower waits, after it last saw the Lease change, before taking it over; also
    /// written into the Lease as `leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// How long after sending its last successful renewal the leader may still act.
    pub renew_deadline: Duration,
    /// Interval of the renewals, and of a follower's reads.
    pub retry_period: Duration,
}

/// The timing the operator runs with: 15 s lease, 10 s renew deadline, renewals every 2 s.
pub const TIMING: Timing = Timing {
    lease_duration: Duration::from_secs(15),
    renew_deadline: Duration::from_secs(10),
    retry_period: Duration::from_secs(2),
};

impl Timing {
    /// Whether the timing is fenced: renewals fit well within the deadline, and the deadline ends
    /// before the lease can be taken over.
    pub fn is_fenced(&self) -> bool {
        self.retry_period * 2 <= self.renew_deadline && self.renew_deadline < self.lease_duration
    }

    /// The end of the leader's authority, given when it sent its last successful renewal.
    pub fn deadline(&self, renewal_sent: Instant) -> Instant {
        renewal_sent + self.renew_deadline
    }

    /// When the leader sends its next renewal: a retry period after the previous attempt, never
    /// after the deadline.
    pub fn next_renewal(&self, last_attempt: Instant, renewal_sent: Instant) -> Instant {
        (last_attempt + self.retry_period).min(self.deadline(renewal_sent))
    }

    /// Whether `holder` may take a Lease that last changed (on this replica's clock) at
    /// `observed_since` and is held by `current` for `lease_seconds`.
    pub fn may_take_over(
        &self,
        holder: &str,
        current: Option<&str>,
        lease_seconds: Option<i32>,
        observed_since: Instant,
        now: Instant,
    ) -> bool {
        match current {
            None | Some("") => true,
            Some(current) if current == holder => true,
            Some(_) => {
                // The longer of ours and the holder's, in case it runs another configuration.
                let written = Duration::from_secs(
                    lease_seconds
                        .and_then(|s| u64::try_from(s).ok())
                        .unwrap_or(0),
                );
                now >= observed_since + self.lease_duration.max(written)
            }
        }
    }
}

/// The Lease as this replica last saw it, and since when (monotonic) it has not changed.
struct Observation {
    resource_version: Option<String>,
    since: Instant,
}

/// Why a renewal did not succeed.
enum Renewal {
    /// Another replica holds the Lease, or it was deleted: stop at once.
    Lost(String),
    /// The API server could not be reached or refused for another reason: retry until the
    /// deadline.
    Failed(String),
}

/// Tries to become and stay the leader.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    holder: String,
    timing: Timing,
    /// The Lease as last written by this replica while it leads (its `resourceVersion` is the
    /// precondition of the next write).
    lease: Mutex<Option<Lease>>,
    /// When the last successful write of this replica (acquire or renew) was sent.
    renewal_sent: Mutex<Option<Instant>>,
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn lease_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

impl Elector {
    /// An elector for the Lease `lease_name` in `namespace`, identified as `holder`.
    pub fn new(client: Client, namespace: &str, lease_name: &str, holder: &str) -> Self {
        Self::with_timing(client, namespace, lease_name, holder, TIMING)
    }

    /// An elector with other durations (tests).
    pub fn with_timing(
        client: Client,
        namespace: &str,
        lease_name: &str,
        holder: &str,
        timing: Timing,
    ) -> Self {
        assert!(timing.is_fenced(), "unfenced lease timing {timing:?}");
        Self {
            api: Api::namespaced(client, namespace),
            name: lease_name.into(),
            holder: holder.into(),
            timing,
            lease: Mutex::new(None),
            renewal_sent: Mutex::new(None),
        }
    }

    fn set_leading(&self, lease: Option<Lease>, sent: Option<Instant>) {
        *self
            .lease
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = lease;
        *self
            .renewal_sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = sent;
    }

    fn leading(&self) -> Option<(Lease, Instant)> {
        let lease = self
            .lease
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()?;
        let sent = (*self
            .renewal_sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))?;
        Some((lease, sent))
    }

    /// A Lease naming this replica, written fresh (`taken`) or renewed.
    fn spec_for(&self, previous: Option<&LeaseSpec>, taken: bool) -> LeaseSpec {
        let now = micro_now();
        // A Lease that existed and was held (or last held) by another replica changes hands.
        let changed_hands = taken
            && previous.is_some_and(|p| p.holder_identity.as_deref() != Some(self.holder.as_str()));
        let previous = previous.cloned().unwrap_or_default();
        let transitions = previous.lease_transitions.unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(lease_seconds(self.timing.lease_duration)),
            acquire_time: if taken {
                Some(now.clone())
            } else {
                previous.acquire_time.clone()
            },
            renew_time: Some(now),
            lease_transitions: Some(if changed_hands {
                transitions.saturating_add(1)
            } else {
                transitions
            }),
            ..previous
        }
    }

    /// One attempt to take the Lease: `Ok(true)` when this replica now holds it.
    async fn try_acquire(&self, observation: &mut Option<Observation>) -> Result<bool> {
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec_for(None, true)),
            };
            let sent = Instant::now();
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.set_leading(Some(created), Some(sent));
                    Ok(true)
                }
                // Another replica created it first.
                Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let now = Instant::now();
        let version = current.metadata.resource_version.clone();
        let since = match observation {
            Some(o) if o.resource_version == version => o.since,
            _ => now,
        };
        *observation = Some(Observation {
            resource_version: version,
            since,
        });
        let spec = current.spec.as_ref();
        let holder = spec.and_then(|s| s.holder_identity.as_deref());
        let seconds = spec.and_then(|s| s.lease_duration_seconds);
        if !self
            .timing
            .may_take_over(&self.holder, holder, seconds, since, now)
        {
            tracing::debug!(holder = ?holder, "another replica is the leader; waiting");
            return Ok(false);
        }
        let mut lease = current.clone();
        lease.spec = Some(self.spec_for(current.spec.as_ref(), true));
        let sent = Instant::now();
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.set_leading(Some(written), Some(sent));
                Ok(true)
            }
            // Someone wrote it since we read it: read again next time.
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        let mut observation = None;
        loop {
            // The client has no read timeout of its own: a request that hangs is given up.
            let attempt = tokio::time::timeout(
                self.timing.renew_deadline,
                self.try_acquire(&mut observation),
            );
            match attempt.await {
                Ok(Ok(true)) => {
                    tracing::info!(holder = %self.holder, lease = %self.name, "became the leader");
                    return;
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election failed; retrying"),
                Err(_) => tracing::warn!("reading the lease timed out; retrying"),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// One renewal, sent at `sent`.
    async fn try_renew(&self, lease: Lease, sent: Instant) -> Result<(), Renewal> {
        let mut renewed = lease.clone();
        renewed.spec = Some(self.spec_for(lease.spec.as_ref(), false));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &renewed)
            .await
        {
            Ok(written) => {
                self.set_leading(Some(written), Some(sent));
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                Err(Renewal::Lost("the lease was deleted".into()))
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => {
                // Written by someone else: still ours (an edit of its labels, say) or taken?
                match self.api.get_opt(&self.name).await {
                    Ok(Some(current)) => {
                        let holder = current
                            .spec
                            .as_ref()
                            .and_then(|s| s.holder_identity.clone())
                            .unwrap_or_default();
                        if holder == self.holder {
                            // Retry on the new resourceVersion, same deadline.
                            *self
                                .lease
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(current);
                            Err(Renewal::Failed(
                                "conflict on renewal; lease still ours".into(),
                            ))
                        } else {
                            Err(Renewal::Lost(format!("replica {holder:?} took the lease")))
                        }
                    }
                    Ok(None) => Err(Renewal::Lost("the lease was deleted".into())),
                    Err(e) => Err(Renewal::Failed(format!(
                        "conflict, then reading failed: {e}"
                    ))),
                }
            }
            Err(e) => Err(Renewal::Failed(e.to_string())),
        }
    }

    /// Renews the Lease until leadership ends, and returns why: at once when the Lease was taken
    /// or deleted, else at the renew deadline after the last successful renewal was sent (however
    /// long a request hangs). The caller must stop acting when this returns.
    pub async fn hold(&self) -> Error {
        let Some((_, mut renewal_sent)) = self.leading() else {
            return Error::Leader("hold called without leadership".into());
        };
        let mut last_attempt = renewal_sent;
        loop {
            let deadline = self.timing.deadline(renewal_sent);
            tokio::time::sleep_until(self.timing.next_renewal(last_attempt, renewal_sent)).await;
            let Some((lease, _)) = self.leading() else {
                return Error::Leader("leadership given up".into());
            };
            let sent = Instant::now();
            last_attempt = sent;
            if sent >= deadline {
                self.set_leading(None, None);
                return Error::Leader(format!(
                    "lease not renewed within {:?}; stopped acting before it can be taken over",
                    self.timing.renew_deadline
                ));
            }
            tokio::select! {
                result = self.try_renew(lease, sent) => match result {
                    Ok(()) => renewal_sent = sent,
                    Err(Renewal::Lost(reason)) => {
                        self.set_leading(None, None);
                        return Error::Leader(reason);
                    }
                    Err(Renewal::Failed(reason)) => {
                        tracing::warn!(error = %reason, "renewing the lease failed; retrying");
                    }
                },
                () = tokio::time::sleep_until(deadline) => {
                    self.set_leading(None, None);
                    return Error::Leader(format!(
                        "lease renewal did not complete within {:?}; stopped acting before it \
                         can be taken over",
                        self.timing.renew_deadline
                    ));
                }
            }
        }
    }

    /// Runs `work` while this replica leads: its output when it finishes first, else the reason
    /// leadership ended, `work` being dropped at that moment (any request it has in flight is
    /// cancelled), before another replica can take the Lease over.
    pub async fn lead<T>(&self, work: impl Future<Output = T>) -> Result<T> {
        tokio::select! {
            // At the deadline instant, the end of leadership wins over more work.
            biased;
            lost = self.hold() => Err(lost),
            output = work => Ok(output),
        }
    }

    /// Gives the Lease up (on shutdown, after the controller stopped), so a follower takes over at
    /// its next read instead of after a lease duration. Does nothing when not the leader.
    pub async fn step_down(&self) -> Result<()> {
        let Some((mut lease, _)) = self.leading() else {
            return Ok(());
        };
        self.set_leading(None, None);
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(micro_now());
        }
        let params = PostParams::default();
        let release = self.api.replace(&self.name, &params, &lease);
        match tokio::time::timeout(self.timing.renew_deadline, release).await {
            Ok(Ok(_)) => Ok(()),
            // Already taken or gone: nothing to give up.
            Ok(Err(kube::Error::Api(s))) if s.is_conflict() || s.is_not_found() => Ok(()),
            Ok(Err(e)) => Err(Error::Leader(e.to_string())),
            Err(_) => Err(Error::Leader("releasing the lease timed out".into())),
        }
    }
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
