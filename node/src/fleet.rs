//! Coordination across the fleet through the central, when sync is on (issue 24): `fleet`
//! named locks and the allocators of named sequences. Every call goes through the sync crate's
//! `Client` with the typed parameters of `ccm_sync::wire` (`AcquireLockV1`, `AllocateV1`, ...).
//!
//! A `fleet` lock is held by one agent of one system at a time: this node's store picks its
//! holder among the local agents (as for a `node` lock), then the central's named lease
//! `lock:<name>` (`api.acquire_lock`) picks the system; the grant carries the central's fencing
//! token, which grows with every new holder across the fleet. [`FleetLocks`] renews the lease
//! every third of its time while the holding agent runs and gives it back once the agent or
//! its task ended; a killed node's lease runs out by itself. A waiter asks the central again
//! every 250 ms (the agent API's poll, sooner on a local commit), so a lease given back by
//! `unlock` is taken over within that, plus one round trip.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccm_schema::Timestamp;
use ccm_sync::wire::{
    AcquireLockV1, AllocateV1, AllocationV1, FleetLockV1, ListAllocationsV1, LockReleasedV1,
    ReleaseAllocationV1, ReleaseLockV1,
};
use tokio_util::sync::CancellationToken;
use tracing::{info_span, warn, Instrument};
use uuid::Uuid;

use crate::store::{LockGrant, LockHolder, LockScope, Store, StoreError};

/// One step with the central's lock leases at a time in this daemon (an acquisition, an
/// unlock, the loop's renewals and releases), so that a lease given back for an ended holder
/// is never the one a new local holder just renewed.
static CENTRAL_STEP: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How often [`FleetLocks`] looks at the leases this system holds.
const LOOP_EVERY: Duration = Duration::from_millis(500);
/// The central keeps a lease at most this long (`api.acquire_lock`'s limit).
const MAX_LEASE_SECS: u64 = 3600;

/// Errors of fleet coordination.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The central could not be reached, or failed; its words.
    #[error("the central: {0}")]
    Central(String),
    /// The central refused the call for what it asked (`22023`: a bad name, sequence or
    /// value; `42501`: another task's value; `P0002`: a value not held); its words.
    #[error("{0}")]
    Refused(String),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn central(failure: ccm_sync::client::Failure) -> FleetError {
    match failure.code.as_deref() {
        Some("22023" | "42501" | "P0002") => FleetError::Refused(failure.message),
        _ => FleetError::Central(failure.message),
    }
}

fn lease_secs(ttl_secs: u64) -> u32 {
    u32::try_from(ttl_secs.clamp(1, MAX_LEASE_SECS)).unwrap_or(60)
}

/// Takes (or renews) the `fleet` lock `name` for `holder`: `None` while another agent of this
/// node or another system holds it (the local grant is given back then, and the system that
/// holds it is recorded for `ccm claims`).
pub async fn try_lock(
    store: &Store,
    client: &ccm_sync::Client,
    name: &str,
    holder: &LockHolder,
    ttl_secs: u64,
) -> Result<Option<LockGrant>, FleetError> {
    let _one = CENTRAL_STEP.lock().await;
    let Some(acquired) = store.acquire_lock(name, holder, ttl_secs, LockScope::Fleet).await? else {
        return Ok(None);
    };
    if acquired.hand_over_central {
        // The previous local holder's lease: given back first, so this holder gets a new token.
        release_central(store, client, name).await?;
    }
    let params = AcquireLockV1 { p_name: name.to_string(), p_ttl_s: lease_secs(ttl_secs) };
    match client.call::<FleetLockV1>("acquire_lock", &params).await {
        Ok(lease) if lease.held => {
            if !store.fleet_lock_granted(name, &holder.holder, lease.fence).await? {
                return Ok(None);
            }
            let mut grant = acquired.grant;
            grant.fence = lease.fence;
            grant.scope = LockScope::Fleet;
            Ok(Some(grant))
        }
        Ok(lease) => {
            store.fleet_lock_refused(name, &holder.holder, lease.holder.as_deref()).await?;
            Ok(None)
        }
        Err(failure) => {
            store.fleet_lock_refused(name, &holder.holder, None).await?;
            Err(central(failure))
        }
    }
}

/// Releases the `fleet` lock `name` when `holder` holds it, and gives its lease back to the
/// central at once (so a waiter elsewhere takes it on its next poll); says whether it did.
pub async fn unlock(
    store: &Store,
    client: &ccm_sync::Client,
    name: &str,
    holder: &str,
) -> Result<bool, FleetError> {
    let _one = CENTRAL_STEP.lock().await;
    if !store.release_lock(name, holder).await? {
        return Ok(false);
    }
    if store.fleet_leases().await?.iter().any(|l| l.name == name) {
        if let Err(error) = release_central(store, client, name).await {
            // The loop tries again; the lease runs out by itself at worst.
            warn!(%error, lock = name, "cannot give a fleet lock's lease back yet");
        }
    }
    Ok(true)
}

async fn release_central(
    store: &Store,
    client: &ccm_sync::Client,
    name: &str,
) -> Result<(), FleetError> {
    let params = ReleaseLockV1 { p_name: name.to_string() };
    client.call::<LockReleasedV1>("release_lock", &params).await.map_err(central)?;
    store.fleet_lease_gone(name).await?;
    Ok(())
}

/// The daemon's loop over the central leases of `fleet` locks this system holds: renews them
/// while their agent runs, gives them back once it ended (or its task did, or a `ccm lock`
/// grant ran out).
#[derive(Clone)]
pub struct FleetLocks {
    pub store: Store,
    pub client: ccm_sync::Client,
    pub shutdown: CancellationToken,
    pub beat: Arc<ccm_sync::Beat>,
}

impl FleetLocks {
    pub async fn run(self) {
        async move {
            // When each lease was last renewed here (a lease not in it is renewed at once).
            let mut renewed: HashMap<String, Instant> = HashMap::new();
            loop {
                let step = self.beat.step().await;
                if let Err(error) = self.pass(&mut renewed).await {
                    warn!(%error, "fleet lock pass failed; retrying");
                }
                drop(step);
                tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    () = tokio::time::sleep(LOOP_EVERY) => {}
                }
            }
        }
        .instrument(info_span!("fleet_locks"))
        .await
    }

    async fn pass(&self, renewed: &mut HashMap<String, Instant>) -> Result<(), FleetError> {
        let leases = self.store.fleet_leases().await?;
        if leases.is_empty() {
            renewed.clear();
            return Ok(());
        }
        let _one = CENTRAL_STEP.lock().await;
        // Read again under the lock: an acquisition may have changed them meanwhile.
        let leases = self.store.fleet_leases().await?;
        renewed.retain(|name, _| leases.iter().any(|l| &l.name == name));
        let now = Timestamp::now();
        for lease in leases {
            let ended = match &lease.holder {
                None => true,
                Some(_) if lease.agent_held => !lease.agent_live,
                Some(_) => lease.expires_at.is_none_or(|t| t <= now),
            };
            if ended {
                if let Some(holder) = &lease.holder {
                    self.store.fleet_lock_drop(&lease.name, holder).await?;
                }
                renewed.remove(&lease.name);
                release_central(&self.store, &self.client, &lease.name).await?;
                continue;
            }
            // A `ccm lock` holder renews its own grant (and so the lease) by asking again.
            let (Some(holder), true) = (&lease.holder, lease.agent_held) else {
                continue;
            };
            let ttl = u64::try_from(lease.ttl_secs.unwrap_or(60)).unwrap_or(60).max(1);
            let due = Duration::from_secs(u64::from(lease_secs(ttl))) / 3;
            if renewed.get(&lease.name).is_some_and(|at| at.elapsed() < due) {
                continue;
            }
            let params = AcquireLockV1 { p_name: lease.name.clone(), p_ttl_s: lease_secs(ttl) };
            let answer =
                self.client.call::<FleetLockV1>("acquire_lock", &params).await.map_err(central)?;
            if answer.held {
                self.store.fleet_lock_renewed(&lease.name, holder, ttl).await?;
                renewed.insert(lease.name.clone(), Instant::now());
            } else {
                warn!(lock = %lease.name, by = ?answer.holder, "a fleet lock's lease was lost");
                self.store
                    .fleet_lock_refused(&lease.name, holder, answer.holder.as_deref())
                    .await?;
                renewed.remove(&lease.name);
            }
        }
        Ok(())
    }
}

/// The central's allocator: the next value of `sequence` of `repo` (a remote URL) for `task`,
/// recorded here with the task and its rendering.
pub async fn allocate(
    store: &Store,
    client: &ccm_sync::Client,
    repo: &str,
    sequence: &str,
    task: Option<Uuid>,
    start: i64,
    format: impl Fn(i64) -> String,
) -> Result<crate::store::Allocation, FleetError> {
    let params = AllocateV1 {
        p_repo: repo.to_string(),
        p_sequence: sequence.to_string(),
        p_task: task,
        p_start: start,
    };
    let answer: AllocationV1 = client.call("allocate", &params).await.map_err(central)?;
    Ok(store
        .record_allocation(repo, sequence, answer.value, &format(answer.value), task, "held")
        .await?)
}

/// Gives a value back to the central's allocator (only `task`'s own when a task is given);
/// recorded here as released.
pub async fn release_allocation(
    store: &Store,
    client: &ccm_sync::Client,
    repo: &str,
    sequence: &str,
    value: i64,
    task: Option<Uuid>,
    format: impl Fn(i64) -> String,
) -> Result<crate::store::Allocation, FleetError> {
    let params = ReleaseAllocationV1 {
        p_repo: repo.to_string(),
        p_sequence: sequence.to_string(),
        p_value: value,
        p_task: task,
    };
    let answer: AllocationV1 = client.call("release_allocation", &params).await.map_err(central)?;
    Ok(store
        .record_allocation(repo, sequence, answer.value, &format(value), task, "released")
        .await?)
}

/// The central's allocations of the owner's systems (of `repo` when given), held ones first.
pub async fn allocations(
    client: &ccm_sync::Client,
    repo: Option<&str>,
) -> Result<Vec<AllocationV1>, FleetError> {
    let params = ListAllocationsV1 { p_repo: repo.map(str::to_string) };
    client.call("list_allocations", &params).await.map_err(central)
}

/// The central's client of a CLI process (no daemon needed), when sync is configured.
pub fn cli_client(
    home: &crate::home::Home,
    config: &crate::config::Config,
) -> Option<ccm_sync::Client> {
    let endpoint = config.sync.endpoint().ok()??;
    let credential = crate::sync::credential(home, &endpoint, None);
    ccm_sync::Client::new(endpoint, credential).ok().filter(ccm_sync::Client::has_token)
}
