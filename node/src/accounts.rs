//! Usage limits across systems (issue 25): the daemon's loop that, with sync, reports the
//! limits agents of this system hit to the central (`api.report_account_limit`) and records
//! the ones other systems sharing an account reported (`api.fleet_account_limits`), every
//! `sync.heartbeat_secs`. The rows and the rules (a later reset wins, the waiting tasks follow
//! their account's reset) are `store/accounts.rs`; the runtime's start path reads them.

use std::sync::Arc;
use std::time::Duration;

use ccm_schema::Timestamp;
use ccm_sync::wire::{AccountLimitV1, FleetAccountLimitsV1, ReportAccountLimitV1};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::store::{FleetLimit, Store};

/// The loop; started by the daemon only with sync.
#[derive(Clone)]
pub struct Accounts {
    /// Where the limits are kept.
    pub store: Store,
    /// The central the limits are reported to and read from.
    pub central: ccm_sync::Client,
    /// How often a round runs (the heartbeat's period).
    pub every: Duration,
    /// The loop's liveness, for the watchdog (a step is a round).
    pub beat: Arc<ccm_sync::Beat>,
    pub shutdown: CancellationToken,
}

impl Accounts {
    /// Runs rounds until shutdown.
    pub async fn run(self) {
        async move {
            loop {
                let step = self.beat.step().await;
                self.round().await;
                drop(step);
                tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.every) => {}
                }
            }
        }
        .instrument(info_span!("accounts"))
        .await
    }

    /// Reports what the central has not acknowledged, then records what other systems reported.
    /// A failure waits for the next round (the rows stay unacknowledged).
    async fn round(&self) {
        match self.store.limits_to_report().await {
            Ok(limits) => {
                for limit in limits {
                    let params =
                        ReportAccountLimitV1::new(&limit.account, limit.reset_at, &limit.message);
                    match self.central.call::<AccountLimitV1>("report_account_limit", &params).await
                    {
                        Ok(_) => {
                            if let Err(error) =
                                self.store.limit_reported(&limit.account, limit.reset_at).await
                            {
                                warn!(%error, "cannot record a reported usage limit");
                            }
                        }
                        Err(failure) => {
                            debug!(account = %limit.account, error = %failure.message, "cannot report a usage limit to the central");
                        }
                    }
                }
            }
            Err(error) => warn!(%error, "cannot read the usage limits to report"),
        }
        let answer = self
            .central
            .call::<Vec<AccountLimitV1>>("fleet_account_limits", &FleetAccountLimitsV1 {})
            .await;
        match answer {
            Ok(limits) => {
                let limits: Vec<FleetLimit> = limits
                    .into_iter()
                    .map(|l| FleetLimit {
                        account: l.account,
                        reset_at: Timestamp(l.reset_at_ms),
                        system: l.system_name,
                        message: l.message,
                    })
                    .collect();
                match self.store.fleet_limits(&limits).await {
                    Ok(0) => {}
                    Ok(changed) => info!(changed, "usage limits reported by other systems"),
                    Err(error) => warn!(%error, "cannot record the fleet's usage limits"),
                }
            }
            Err(failure) => {
                debug!(error = %failure.message, "cannot read the fleet's usage limits");
            }
        }
    }
}
