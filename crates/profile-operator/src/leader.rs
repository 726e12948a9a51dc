//! Leader election on a `coordination.k8s.io` Lease (kube-leader-election's `LeaseLock`), so two
//! operator replicas are safe: only the holder of the Lease runs the controller.
//!
//! The leader renews every third of the Lease's lifetime. When it cannot renew for a whole
//! lifetime (another replica may have taken over), [`Elector::hold`] returns and the operator
//! stops its controller and exits, to be restarted as a follower.

use std::time::{Duration, Instant};

use kube::Client;
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};

use crate::{Error, Result};

/// Lifetime of the Lease: how long a crashed leader blocks the others.
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// Tries to become and stay the leader.
pub struct Elector {
    lock: LeaseLock,
    holder: String,
    ttl: Duration,
}

impl Elector {
    /// An elector for the Lease `lease_name` in `namespace`, identified as `holder`.
    pub fn new(client: Client, namespace: &str, lease_name: &str, holder: &str) -> Self {
        let lock = LeaseLock::new(
            client,
            namespace,
            LeaseLockParams {
                lease_name: lease_name.into(),
                holder_id: holder.into(),
                lease_ttl: LEASE_TTL,
            },
        );
        Self {
            lock,
            holder: holder.into(),
            ttl: LEASE_TTL,
        }
    }

    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.lock.try_acquire_or_renew().await {
                Ok(LeaseLockResult::Acquired(_)) => {
                    tracing::info!(holder = %self.holder, "became the leader");
                    return;
                }
                Ok(LeaseLockResult::NotAcquired(_)) => {
                    tracing::debug!("another replica is the leader; waiting");
                }
                Err(e) => tracing::warn!(error = %e, "leader election failed; retrying"),
            }
            tokio::time::sleep(self.renew_every()).await;
        }
    }

    /// Renews the Lease until that fails for a whole Lease lifetime, then returns the reason.
    pub async fn hold(&self) -> Error {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.renew_every()).await;
            match self.lock.try_acquire_or_renew().await {
                Ok(LeaseLockResult::Acquired(_)) => last_renewed = Instant::now(),
                Ok(LeaseLockResult::NotAcquired(_)) => {
                    return Error::Leader("another replica took the lease".into());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the lease failed");
                    if last_renewed.elapsed() >= self.ttl {
                        return Error::Leader(format!("lease not renewed in time: {e}"));
                    }
                }
            }
        }
    }

    /// Gives the Lease up (on shutdown), so a follower takes over without waiting for it to expire.
    pub async fn step_down(&self) -> Result<()> {
        self.lock
            .step_down()
            .await
            .map_err(|e| Error::Leader(e.to_string()))
    }
}
