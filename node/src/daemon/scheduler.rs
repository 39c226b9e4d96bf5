//! The scheduler: moves tasks along by database state (SPEC section 4, "the database is the
//! scheduler"). Each pass is [`Store::schedule`]; a pass runs when something changed (the API
//! wakes it) and at least every `scheduler.tick_ms`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};

use crate::config::LiveConfig;
use crate::store::{RetryPolicy, Store};

/// Shortest time between two passes.
const MIN_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct Scheduler {
    /// Where task state lives.
    pub store: Store,
    /// Read at every pass: the agent slots of this system, the profiles no runtime runs
    /// (`external`: their tasks hold no slot), the retry policy.
    pub config: LiveConfig,
    /// Longest wait between passes.
    pub tick: Duration,
    /// Woken by the API after every change that may let a task move.
    pub wake: Arc<Notify>,
    /// Woken after a pass that moved tasks (a queued task needs an agent).
    pub runtime_wake: Arc<Notify>,
    pub shutdown: CancellationToken,
    /// The loop's liveness (a step is a pass), for the watchdog.
    pub beat: Arc<ccm_sync::Beat>,
}

impl Scheduler {
    pub async fn run(self) {
        async move {
            loop {
                let step = self.beat.step().await;
                let config = self.config.current();
                let (slots, external) = (config.scheduler.slots, config.external_profiles());
                let policy = RetryPolicy::from(&*config);
                match self.store.schedule(slots, &external, policy).await {
                    Ok(0) => {}
                    Ok(changed) => {
                        debug!(changed, "scheduler pass");
                        self.runtime_wake.notify_one();
                    }
                    Err(error) => warn!(%error, "scheduler pass failed; retrying at the next tick"),
                }
                drop(step);
                tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(self.tick) => {}
                }
                // Under a stream of changes, wake-ups come faster than they matter: one pass
                // per interval sees them all.
                tokio::time::sleep(MIN_INTERVAL).await;
            }
        }
        .instrument(info_span!("scheduler"))
        .await
    }
}
