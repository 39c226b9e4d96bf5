//! The driver: one loop per lane that seals, sends, retries and acknowledges, and one for the
//! system's presence.
//!
//! - Urgent: woken by the commit of an urgent row ([`Signals::urgent_committed`]), it waits a
//!   short coalescing window and sends the lane's rows in small batches of their own, so it
//!   never waits behind the normal lane's catch-up.
//! - Normal: sealed when the per-system timer fires (its phase and each period jittered so a
//!   fleet does not flush in lock-step), when a threshold of hook events or task completions is
//!   crossed, on `ccm sync now`, and at start; while a sealed batch was cut by the batch policy
//!   (a backlog), the next one is sealed at once (catch-up).
//!
//! - Presence: `api.heartbeat` every `heartbeat` (default 15 s), listing the routed leases the
//!   node holds and handing the answer (renewed, revoked, offers) back to it, and
//!   `api.register_contexts` (the whole set, with its generation) whenever the node's contexts
//!   changed.
//!
//! A batch leaves the outbox only on a final outcome: acknowledged (2xx echoing its id), split
//! (its children carry its rows), or its lone item rejected. Transient failures resend the same
//! bytes after a full-jitter backoff ([`Backoff`]); identity and configuration failures pause
//! both lanes with a reason and a local alert, and rows keep queueing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::client::{Class, Failure};
use crate::seal::{self, BatchPolicy};
use crate::wire::{
    HeartbeatAnswerV1, HeartbeatParamsV1, HeartbeatV1, IngestAnswerV1, RegisterAnswerV1,
    RegisterContextsV1, RouteAnswerV1, RoutedTaskV1,
};
use crate::{CallOutcome, Client, Lane, OpenBatch, Outbox, Rejection};

/// How often an idle urgent lane looks for rows written by other processes.
const URGENT_POLL: Duration = Duration::from_secs(1);
/// How often an idle calls lane looks for calls queued by another process (the CLI).
const CALLS_POLL: Duration = Duration::from_secs(1);
/// How long the calls lane waits after an identity or configuration failure (the lanes pause
/// and alert; the calls wait for the resume).
const CALLS_PAUSED: Duration = Duration::from_secs(2);
/// How often a paused lane looks whether it was resumed.
const PAUSED_POLL: Duration = Duration::from_secs(2);
/// First retry delay ceiling.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// How often a catch-up looks whether the urgent lane is done, and how long it waits at most.
const URGENT_FIRST_POLL: Duration = Duration::from_millis(5);
const URGENT_FIRST_MAX: Duration = Duration::from_secs(1);

/// When the normal lane seals, and how the urgent lane coalesces.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The per-system timer of the normal lane.
    pub interval: Duration,
    /// Seal the normal lane after this many hook events...
    pub hook_events: u64,
    /// ...or this many task completions, whichever comes first.
    pub completions: u64,
    /// How long an urgent commit waits for others to share its batch.
    pub urgent_window: Duration,
    /// Seeds the timer's phase and the jitter, so systems spread out (from the system id).
    pub seed: u64,
    /// How often the node calls `api.heartbeat` (± 10 %).
    pub heartbeat: Duration,
    /// The node's agent slots, sent with each heartbeat.
    pub slots: i64,
}

/// How the node tells the driver that something happened; cheap, never blocks.
#[derive(Debug, Default)]
pub struct Signals {
    urgent: Notify,
    normal: Notify,
    /// `ccm sync now` or resume: cuts a backoff or a pause short.
    kick: [Notify; 2],
    /// A heartbeat was answered: the central is reachable, so a lane waiting out the backoff
    /// of a transient failure (one without a `Retry-After`) tries again now.
    answered: Notify,
    now_requested: AtomicBool,
    /// The urgent lane was woken by a commit and has not finished sending yet.
    urgent_busy: AtomicBool,
    hook_events: AtomicU64,
    completions: AtomicU64,
    hook_threshold: AtomicU64,
    completion_threshold: AtomicU64,
    /// Work may be waiting centrally (a heartbeat's offers, a freed slot): claim now.
    pub offers: Notify,
    /// A call to the central routing functions was queued.
    pub route_calls: Notify,
    /// The central answered a queued call `stale_lease`: a lease was lost (the node's runtime
    /// stops its agent).
    pub lease_lost: Notify,
    /// Counters for `/metrics`.
    pub requests_total: AtomicU64,
    pub failures_total: AtomicU64,
    pub batches_acked_total: AtomicU64,
    pub items_rejected_total: AtomicU64,
    /// Liveness of each lane's loop (by `Lane as usize`), of the presence loop and of the
    /// calls lane, for the daemon's watchdog.
    pub lane_beats: [crate::Beat; 2],
    pub presence_beat: crate::Beat,
    pub calls_beat: crate::Beat,
}

impl Signals {
    pub fn new() -> Arc<Signals> {
        let signals = Signals::default();
        signals.hook_threshold.store(u64::MAX, Ordering::Relaxed);
        signals.completion_threshold.store(u64::MAX, Ordering::Relaxed);
        Arc::new(signals)
    }

    /// An urgent outbox row was committed.
    pub fn urgent_committed(&self) {
        self.urgent.notify_one();
    }

    /// `n` hook events were stored.
    pub fn hook_events(&self, n: u64) {
        Self::count(&self.hook_events, &self.hook_threshold, n, &self.normal);
    }

    /// `n` tasks completed.
    pub fn completions(&self, n: u64) {
        Self::count(&self.completions, &self.completion_threshold, n, &self.normal);
    }

    fn count(counter: &AtomicU64, threshold: &AtomicU64, n: u64, wake: &Notify) {
        let before = counter.fetch_add(n, Ordering::Relaxed);
        let threshold = threshold.load(Ordering::Relaxed);
        if before < threshold && before.saturating_add(n) >= threshold {
            wake.notify_one();
        }
    }

    /// The central answered a heartbeat: ends the backoff of lanes whose last failure said
    /// nothing about when to come back (an outage, not a rate limit).
    pub fn central_answered(&self) {
        self.answered.notify_waiters();
    }

    /// The central offers work to this system.
    pub fn offered(&self) {
        self.offers.notify_one();
    }

    /// Seal and send now, retrying at once what waits for a backoff or a pause.
    pub fn sync_now(&self) {
        self.now_requested.store(true, Ordering::Relaxed);
        self.normal.notify_one();
        self.urgent.notify_one();
        for kick in &self.kick {
            kick.notify_one();
        }
    }

    fn kick(&self, lane: Lane) -> &Notify {
        &self.kick[lane as usize]
    }

    fn thresholds_crossed(&self) -> bool {
        self.hook_events.load(Ordering::Relaxed) >= self.hook_threshold.load(Ordering::Relaxed)
            || self.completions.load(Ordering::Relaxed)
                >= self.completion_threshold.load(Ordering::Relaxed)
    }

    fn reset_counts(&self) {
        self.hook_events.store(0, Ordering::Relaxed);
        self.completions.store(0, Ordering::Relaxed);
    }
}

/// Capped exponential backoff with full jitter (S-10): each delay is uniform in
/// `[0, min(cap, 1 s · 2ⁿ)]`; the ceilings come from backon.
#[derive(Debug)]
pub struct Backoff {
    cap: Duration,
    ceilings: backon::ExponentialBackoff,
    rng: fastrand::Rng,
}

impl Backoff {
    /// The urgent lane's cap is 30 s, the normal lane's 5 min.
    pub fn for_lane(lane: Lane, seed: u64) -> Backoff {
        let cap = match lane {
            Lane::Urgent => Duration::from_secs(30),
            Lane::Normal => Duration::from_secs(300),
        };
        Backoff { cap, ceilings: Self::ceilings(cap), rng: fastrand::Rng::with_seed(seed) }
    }

    fn ceilings(cap: Duration) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(BACKOFF_BASE)
            .with_max_delay(cap)
            .with_factor(2.0)
            .without_max_times()
            .build()
    }

    /// The next delay; `retry_after` (the server's word) wins when given.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceilings.next().unwrap_or(self.cap).min(self.cap);
        match retry_after {
            Some(wait) => wait,
            None => ceiling.mul_f64(self.rng.f64()),
        }
    }

    /// After a success the next failure starts again from the base.
    pub fn reset(&mut self) {
        self.ceilings = Self::ceilings(self.cap);
    }
}

/// A lane's batch size after a batch was too big for the server (S-9): a 413 or a statement
/// timeout halves `max_items` (below the failed batch's size, floor 1) until 10 successes in a
/// row restore the policy's.
#[derive(Debug)]
pub struct Budget {
    policy: BatchPolicy,
    max_items: usize,
    successes: u32,
}

/// Successes in a row that restore a halved budget.
const RESTORE_AFTER: u32 = 10;

impl Budget {
    pub fn new(policy: BatchPolicy) -> Budget {
        Budget { policy, max_items: policy.max_items, successes: 0 }
    }

    /// The policy to seal the next batch with.
    pub fn policy(&self) -> BatchPolicy {
        BatchPolicy { max_items: self.max_items, ..self.policy }
    }

    /// A batch of `items` was too big: the next ones carry at most half of it.
    pub fn too_large(&mut self, items: usize) {
        self.max_items = (self.max_items.min(items) / 2).max(1);
        self.successes = 0;
    }

    /// A batch was not acknowledged for another reason: the run of successes starts again.
    pub fn failed(&mut self) {
        self.successes = 0;
    }

    /// A batch was acknowledged; the tenth in a row restores the policy's size.
    pub fn succeeded(&mut self) {
        if self.max_items == self.policy.max_items {
            return;
        }
        self.successes += 1;
        if self.successes >= RESTORE_AFTER {
            self.max_items = self.policy.max_items;
            self.successes = 0;
        }
    }
}

/// What a lane does after a step.
#[derive(Debug, PartialEq)]
enum Next {
    /// Something moved: go on at once.
    Continue,
    /// Nothing to send.
    Idle,
    /// Try the same batch again after `delay`, or as soon as a heartbeat is answered when
    /// `until_answered` (a transient failure with no `Retry-After`: most likely an outage).
    Retry { delay: Duration, until_answered: bool },
    /// Paused until resumed.
    Paused,
}

/// The long-lived sync task of the daemon.
pub struct Driver<O: Outbox> {
    /// Where the rows are, and where every write goes (the node's writer).
    pub outbox: O,
    /// The central REST API.
    pub client: Client,
    /// Wake-ups and counters shared with the node.
    pub signals: Arc<Signals>,
    pub settings: Settings,
    /// Cancelled when the daemon stops; a request in flight is dropped (its batch stays sealed).
    pub shutdown: CancellationToken,
}

impl<O: Outbox> Driver<O> {
    /// Runs both lanes until shutdown.
    pub async fn run(self) {
        self.signals.hook_threshold.store(self.settings.hook_events, Ordering::Relaxed);
        self.signals.completion_threshold.store(self.settings.completions, Ordering::Relaxed);
        let this = Arc::new(self);
        let urgent = tokio::spawn(this.clone().lane(Lane::Urgent));
        let normal = tokio::spawn(this.clone().lane(Lane::Normal));
        let presence = tokio::spawn(this.clone().presence());
        let calls = tokio::spawn(this.clone().calls());
        for task in [urgent, normal, presence, calls] {
            if let Err(e) = task.await {
                warn!(error = %e, "sync lane ended abnormally");
            }
        }
    }

    async fn lane(self: Arc<Self>, lane: Lane) {
        let span = info_span!("sync_lane", lane = %lane);
        async move {
            let mut backoff = Backoff::for_lane(lane, self.settings.seed ^ lane as u64);
            let mut budget = Budget::new(BatchPolicy::of(lane));
            let mut timer = Timer::new(&self.settings);
            loop {
                let step = self.signals.lane_beats[lane as usize].step().await;
                if lane == Lane::Normal && timer.catch_up {
                    self.urgent_first().await;
                }
                let next = match self.step(lane, &mut backoff, &mut budget, &mut timer).await {
                    Ok(next) => next,
                    Err(error) => {
                        warn!(error = %error, "sync step failed; retrying");
                        Next::Retry { delay: backoff.next_delay(None), until_answered: false }
                    }
                };
                drop(step);
                if lane == Lane::Urgent && next != Next::Continue {
                    self.signals.urgent_busy.store(false, Ordering::Release);
                }
                debug!(next = ?next, "sync step");
                let kick = self.signals.kick(lane);
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    () = wait(&self.signals, &self.settings, lane, &next, &timer) => {}
                    () = kick.notified(), if next != Next::Continue && next != Next::Idle => {}
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Every `settings.heartbeat` (± 10 %): `api.heartbeat`, then `api.register_contexts` when
    /// the node's set of contexts changed since the central last took it. Skipped while the
    /// driver paused sync; while the operator paused it, the heartbeat says `sync_paused` (so
    /// other systems see why) and lists no lease; a failure waits for the next beat (the lanes
    /// classify and pause).
    async fn presence(self: Arc<Self>) {
        let span = info_span!("sync_presence");
        async move {
            let mut registered = None;
            let mut rng = fastrand::Rng::with_seed(self.settings.seed);
            loop {
                let step = self.signals.presence_beat.step().await;
                if let Err(error) = self.beat(&mut registered).await {
                    self.signals.failures_total.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %error, "heartbeat failed");
                }
                drop(step);
                let wait = self.settings.heartbeat.mul_f64(0.9 + 0.2 * rng.f64());
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn beat(&self, registered: &mut Option<i64>) -> Result<(), StepError> {
        let outbox = |e: O::Error| StepError(format!("outbox: {e}"));
        let call = |e: Failure| StepError(e.message);
        if !self.client.has_token() {
            return Ok(());
        }
        let paused = self.outbox.paused(Lane::Urgent).await.map_err(outbox)?.is_some();
        let by_operator = paused && self.outbox.paused_by_operator().await.map_err(outbox)?;
        if paused && !by_operator {
            return Ok(());
        }
        let status = HeartbeatV1 {
            running: self.outbox.running().await.map_err(outbox)?,
            slots: self.settings.slots,
            draining: false,
            sync_paused: by_operator,
            leases: if by_operator {
                Vec::new() // a paused system renews no lease: its tasks go elsewhere
            } else {
                self.outbox.leases().await.map_err(outbox)?
            },
        };
        self.signals.requests_total.fetch_add(1, Ordering::Relaxed);
        let answer: HeartbeatAnswerV1 = self
            .client
            .call("heartbeat", &HeartbeatParamsV1 { p_status: status })
            .await
            .map_err(call)?;
        self.signals.central_answered();
        self.outbox.heartbeat_answered(&answer).await.map_err(outbox)?;
        if by_operator {
            return Ok(()); // nothing else is sent while paused
        }
        if answer.offers > 0 {
            self.signals.offered();
        }
        let (generation, contexts) = self.outbox.contexts().await.map_err(outbox)?;
        if *registered == Some(generation) {
            return Ok(());
        }
        let params = RegisterContextsV1 { p_generation: generation, p_contexts: contexts };
        let params = serde_json::to_value(params).map_err(|e| StepError(e.to_string()))?;
        self.signals.requests_total.fetch_add(1, Ordering::Relaxed);
        let answer: RegisterAnswerV1 =
            self.client.call("register_contexts", &params).await.map_err(call)?;
        debug!(generation, status = %answer.status, "contexts registered");
        self.outbox.contexts_registered(generation).await.map_err(outbox)?;
        *registered = Some(generation);
        Ok(())
    }

    /// The calls lane: the node's queued calls to the routing functions, oldest first, one at
    /// a time (a call waits for the one before it: a submission before its cancel). A call
    /// leaves the queue only on a final outcome; a transient failure resends the same
    /// parameters (the same idempotency key or fencing token) after the urgent lane's backoff
    /// or the server's `Retry-After`, and an identity failure waits for the lanes' pause to
    /// lift. Woken at once when a call is queued ([`Signals::route_calls`]).
    async fn calls(self: Arc<Self>) {
        let span = info_span!("sync_calls");
        async move {
            let mut backoff = Backoff::for_lane(Lane::Urgent, self.settings.seed ^ 0x5eed);
            loop {
                let step = self.signals.calls_beat.step().await;
                let wait = match self.call_step().await {
                    Ok(true) if !self.shutdown.is_cancelled() => {
                        backoff.reset();
                        continue;
                    }
                    Ok(_) => CALLS_POLL,
                    Err(wait) => wait.unwrap_or_else(|| backoff.next_delay(None)),
                };
                drop(step);
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    () = self.signals.route_calls.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Sends the oldest queued call: `Ok(true)` when it reached a final outcome, `Ok(false)`
    /// when none can be sent now (none queued, not enrolled, paused), `Err(wait)` after a
    /// failure (`Some`: how long the server or the pause says to wait).
    async fn call_step(&self) -> Result<bool, Option<Duration>> {
        if !self.client.has_token() || !matches!(self.outbox.paused(Lane::Urgent).await, Ok(None)) {
            return Ok(false);
        }
        let queued = match self.outbox.next_call().await {
            Ok(Some(queued)) => queued,
            Ok(None) => return Ok(false),
            Err(error) => {
                warn!(%error, "cannot read the queued routing calls");
                return Err(None);
            }
        };
        let function = queued.call.function();
        let task = queued.call.task_id();
        let outcome = match self.client.call::<serde_json::Value>(function, &queued.call).await {
            Ok(answer) => CallOutcome::Answered {
                task: queued
                    .call
                    .is_control()
                    .then(|| {
                        serde_json::from_value::<RoutedTaskV1>(answer.clone()).ok().map(Box::new)
                    })
                    .flatten(),
                answer: serde_json::from_value::<RouteAnswerV1>(answer).unwrap_or_default(),
            },
            Err(failure) => match failure.class {
                Class::Transient { retry_after } => {
                    warn!(function, %task, error = %failure.message, "routing call failed; retrying");
                    let _ = self.outbox.call_failed(&queued, &failure.message).await;
                    return Err(retry_after);
                }
                Class::BadRequest | Class::TooLarge => {
                    warn!(function, %task, error = %failure.message, "the central refused a routing call");
                    CallOutcome::Refused { reason: failure.message }
                }
                _ => {
                    // Identity or configuration: the sync lanes pause and alert; wait for it.
                    let _ = self.outbox.call_failed(&queued, &failure.message).await;
                    return Err(Some(CALLS_PAUSED));
                }
            },
        };
        let stale = match &outcome {
            CallOutcome::Answered { answer, .. } => {
                debug!(function, %task, status = %answer.status, "routing call answered");
                if answer.status == "stale_lease" {
                    let to = answer.holder.as_deref().unwrap_or("another system");
                    warn!(function, %task, holder = to, "the central refused a late write: the lease was lost to {to}");
                }
                answer.status == "stale_lease"
            }
            CallOutcome::Refused { .. } => false,
        };
        if let Err(error) = self.outbox.call_answered(&queued, &outcome).await {
            warn!(%error, "cannot record a routing call's answer");
            return Err(None);
        }
        if matches!(function, "complete" | "release") {
            self.signals.offered(); // a slot is free again
        } else if stale {
            self.signals.lease_lost.notify_one();
        }
        Ok(true)
    }

    /// Urgent first (S-12): a catch-up starts its next step (a seal, a request, their writes)
    /// only once the urgent lane has sent what a commit woke it for, so an urgent batch does
    /// not wait for the writer or the central behind work that began after it was committed.
    /// A catch-up batch already in flight goes on; the wait is at most [`URGENT_FIRST_MAX`].
    async fn urgent_first(&self) {
        let started = Instant::now();
        while self.signals.urgent_busy.load(Ordering::Acquire)
            && started.elapsed() < URGENT_FIRST_MAX
        {
            tokio::time::sleep(URGENT_FIRST_POLL).await;
        }
    }

    /// One step: resend the lane's open batch, or seal the next one when it is due.
    async fn step(
        &self,
        lane: Lane,
        backoff: &mut Backoff,
        budget: &mut Budget,
        timer: &mut Timer,
    ) -> Result<Next, StepError> {
        let outbox = |e: O::Error| StepError(format!("outbox: {e}"));
        if self.outbox.paused(lane).await.map_err(outbox)?.is_some() {
            return Ok(Next::Paused);
        }
        if !self.client.has_token() {
            let reason = "not_enrolled: no access token; run `ccm sync enroll`";
            for lane in Lane::ALL {
                self.outbox.set_paused(lane, Some(reason)).await.map_err(outbox)?;
            }
            return Ok(Next::Paused);
        }
        let batch = match self.outbox.open_batch(lane).await.map_err(outbox)? {
            Some(batch) => batch,
            None => {
                if lane == Lane::Normal && !timer.due(&self.signals) {
                    return Ok(Next::Idle);
                }
                let sealed = seal::seal_next(&self.outbox, lane, budget.policy())
                    .await
                    .map_err(|e| StepError(e.to_string()))?;
                let full = sealed.as_ref().is_some_and(|(_, full)| *full);
                if lane == Lane::Normal {
                    timer.sealed(full, &self.signals, &self.settings);
                }
                match sealed {
                    Some((batch, _)) => OpenBatch {
                        id: batch.id,
                        lane,
                        ord: batch.ord,
                        body: batch.body.into(),
                        items: batch.items.len() as i64,
                        attempts: 0,
                    },
                    None => return Ok(Next::Idle),
                }
            }
        };
        // Catch-up: the next batch is sealed while this one is in flight, so the central's
        // time and the node's overlap. Its rows are pending ones (this batch's are sealed) and
        // its `ord` (its first seq) sorts after this batch and any of its split children, so the
        // send order is the same as sealing after the acknowledgement. Only on a first attempt:
        // a lane that keeps failing holds at most one batch ahead.
        if lane == Lane::Normal && timer.catch_up && batch.attempts == 0 {
            let policy = budget.policy();
            let (next, ahead) = tokio::join!(
                self.send(batch, backoff, budget),
                seal::seal_next(&self.outbox, lane, policy)
            );
            match ahead {
                Ok(sealed) => timer.sealed(
                    sealed.is_some_and(|(_, full)| full),
                    &self.signals,
                    &self.settings,
                ),
                Err(error) => warn!(error = %error, "sealing the next batch failed; retrying"),
            }
            return next;
        }
        self.send(batch, backoff, budget).await
    }

    async fn send(
        &self,
        batch: OpenBatch,
        backoff: &mut Backoff,
        budget: &mut Budget,
    ) -> Result<Next, StepError> {
        let outbox = |e: O::Error| StepError(format!("outbox: {e}"));
        let span = info_span!("sync_batch", batch_id = %batch.id, items = batch.items, attempt = batch.attempts + 1);
        self.signals.requests_total.fetch_add(1, Ordering::Relaxed);
        let reply = self.client.rpc("ingest_batch", batch.body.clone()).instrument(span).await;
        let failure = match reply.map(|bytes| self.acknowledgement(&batch, &bytes)) {
            Ok(Ok(answer)) => {
                let rejected = self.rejections(&batch, &answer).await.map_err(outbox)?;
                self.outbox.acknowledge(batch.id, &rejected).await.map_err(outbox)?;
                self.signals.batches_acked_total.fetch_add(1, Ordering::Relaxed);
                self.signals
                    .items_rejected_total
                    .fetch_add(rejected.len() as u64, Ordering::Relaxed);
                backoff.reset();
                budget.succeeded();
                info!(batch_id = %batch.id, status = %answer.status, rejected = rejected.len(), "batch acknowledged");
                return Ok(Next::Continue);
            }
            Ok(Err(failure)) | Err(failure) => failure,
        };
        self.signals.failures_total.fetch_add(1, Ordering::Relaxed);
        let Failure { class, code, message } = failure;
        match class {
            Class::TooLarge => budget.too_large(usize::try_from(batch.items).unwrap_or(1)),
            _ => budget.failed(),
        }
        warn!(batch_id = %batch.id, class = class.reason(), error = %message, "batch not delivered");
        self.outbox.record_failure(batch.id, batch.lane, &message).await.map_err(outbox)?;
        match class {
            Class::Transient { retry_after } => Ok(Next::Retry {
                delay: backoff.next_delay(retry_after),
                until_answered: retry_after.is_none(),
            }),
            Class::TooLarge | Class::BadRequest => {
                let rows = self.outbox.batch_rows(batch.id).await.map_err(outbox)?;
                match seal::halves(&batch, rows).map_err(|e| StepError(e.to_string()))? {
                    Some(children) => {
                        info!(batch_id = %batch.id, "splitting the batch to isolate the failure");
                        self.outbox.split(batch.id, &children).await.map_err(outbox)?;
                    }
                    None => {
                        self.outbox
                            .reject_batch(batch.id, code.as_deref(), &message)
                            .await
                            .map_err(outbox)?;
                        self.signals
                            .items_rejected_total
                            .fetch_add(batch.items as u64, Ordering::Relaxed);
                    }
                }
                Ok(Next::Continue)
            }
            Class::Unauthorized | Class::Forbidden | Class::Misconfigured => {
                let reason = pause_reason(class, &message);
                for lane in Lane::ALL {
                    self.outbox.set_paused(lane, Some(&reason)).await.map_err(outbox)?;
                }
                let text = format!("sync paused ({reason}); changes keep queueing");
                self.outbox.raise_alert("sync_paused", &text).await.map_err(outbox)?;
                Ok(Next::Paused)
            }
        }
    }

    /// A 2xx is an acknowledgement only when it echoes the batch id with `applied` or
    /// `duplicate`; anything else is an unknown outcome.
    fn acknowledgement(&self, batch: &OpenBatch, bytes: &[u8]) -> Result<IngestAnswerV1, Failure> {
        let unknown = |message: String| Failure {
            class: Class::Transient { retry_after: None },
            code: None,
            message,
        };
        let answer: IngestAnswerV1 = serde_json::from_slice(bytes)
            .map_err(|e| unknown(format!("answer does not parse: {e}")))?;
        if answer.batch_id != batch.id.to_string() {
            return Err(unknown(format!("answer echoes batch {} instead", answer.batch_id)));
        }
        if !matches!(answer.status.as_str(), "applied" | "duplicate") {
            return Err(unknown(format!("answer status `{}`", answer.status)));
        }
        Ok(answer)
    }

    async fn rejections(
        &self,
        batch: &OpenBatch,
        answer: &IngestAnswerV1,
    ) -> Result<Vec<Rejection>, O::Error> {
        if answer.rejected.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.outbox.batch_rows(batch.id).await?;
        let mut rejected = Vec::new();
        for item in &answer.rejected {
            let key = item.entity_key();
            match rows.iter().find(|r| r.stream == item.stream && r.entity_key == key) {
                Some(row) => rejected.push(Rejection {
                    seq: row.seq,
                    code: item.code.clone(),
                    reason: item.reason(),
                }),
                None => {
                    warn!(stream = %item.stream, key = %key, "central side rejected an item this batch does not carry")
                }
            }
        }
        Ok(rejected)
    }
}

/// What a lane waits for between two steps.
async fn wait(signals: &Signals, settings: &Settings, lane: Lane, next: &Next, timer: &Timer) {
    match (next, lane) {
        (Next::Continue, _) => {}
        (Next::Retry { delay, until_answered: false }, _) => tokio::time::sleep(*delay).await,
        (Next::Retry { delay, until_answered: true }, _) => {
            tokio::select! {
                () = tokio::time::sleep(*delay) => {}
                () = signals.answered.notified() => debug!("heartbeat answered; backoff ended"),
            }
        }
        (Next::Paused, _) => tokio::time::sleep(PAUSED_POLL).await,
        (Next::Idle, Lane::Urgent) => {
            tokio::select! {
                () = signals.urgent.notified() => {
                    signals.urgent_busy.store(true, Ordering::Release);
                    tokio::time::sleep(settings.urgent_window).await;
                }
                () = tokio::time::sleep(URGENT_POLL) => {}
            }
        }
        (Next::Idle, Lane::Normal) => {
            tokio::select! {
                () = signals.normal.notified() => {}
                () = tokio::time::sleep_until(timer.next) => {}
            }
        }
    }
}

/// The reason a pause is recorded (and alerted) with: the class, what the central said, and
/// what the operator does about it. A revoked system is told apart from one never enrolled
/// by the central's message (`private.caller_system`).
pub fn pause_reason(class: Class, message: &str) -> String {
    let (name, hint) = match class {
        Class::Forbidden if message.contains("system revoked") => (
            "revoked",
            "the operator revoked this system centrally; once it is reinstated, run `ccm sync resume`",
        ),
        Class::Forbidden if message.contains("not enrolled") => {
            ("not_enrolled", "this identity is not an enrolled system: run `ccm sync enroll`")
        }
        Class::Forbidden => {
            ("forbidden", "the central refused this system; once allowed, run `ccm sync resume`")
        }
        Class::Unauthorized => (
            "unauthorized",
            "the token was refused (expired, or not for this project): run `ccm sync enroll` with a fresh one",
        ),
        Class::Misconfigured => (
            "misconfigured",
            "check sync.url (or sync.rest_url) and sync.publishable_key, then restart the daemon",
        ),
        other => (other.reason(), "run `ccm sync resume` once the cause is fixed"),
    };
    format!("{name}: {message}; {hint}")
}

/// A step failed locally (the database); retried after a backoff.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct StepError(String);

/// The normal lane's timer: the first tick comes at once (start), then every `interval`
/// ±10 %, the first period shortened by a per-system phase.
#[derive(Debug)]
struct Timer {
    next: Instant,
    rng: fastrand::Rng,
    catch_up: bool,
    first: bool,
}

impl Timer {
    fn new(settings: &Settings) -> Timer {
        Timer {
            next: Instant::now(),
            rng: fastrand::Rng::with_seed(settings.seed),
            catch_up: false,
            first: true,
        }
    }

    fn due(&self, signals: &Signals) -> bool {
        self.catch_up
            || Instant::now() >= self.next
            || signals.thresholds_crossed()
            || signals.now_requested.swap(false, Ordering::Relaxed)
    }

    fn sealed(&mut self, full: bool, signals: &Signals, settings: &Settings) {
        self.catch_up = full;
        if full {
            return;
        }
        signals.reset_counts();
        self.next = Instant::now() + self.period(settings.interval);
    }

    /// The next period: the first one is a per-system fraction of the interval (the phase),
    /// the others the interval ±10 %.
    fn period(&mut self, interval: Duration) -> Duration {
        if std::mem::take(&mut self.first) {
            interval.mul_f64(self.rng.f64().max(0.05))
        } else {
            interval.mul_f64(0.9 + 0.2 * self.rng.f64())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_under_a_doubling_ceiling_capped_per_lane() {
        let mut backoff = Backoff::for_lane(Lane::Urgent, 7);
        let ceilings = [1, 2, 4, 8, 16, 30, 30, 30];
        let mut spread = 0.0f64;
        for ceiling in ceilings {
            let delay = backoff.next_delay(None);
            assert!(delay <= Duration::from_secs(ceiling), "{delay:?} > {ceiling}s");
            spread += delay.as_secs_f64() / ceiling as f64;
        }
        // full jitter: the delays are spread over [0, ceiling], not pinned to it
        assert!(spread > 0.5 && spread < 7.5, "spread {spread}");
        let mut normal = Backoff::for_lane(Lane::Normal, 7);
        let worst = (0..30).map(|_| normal.next_delay(None)).max().unwrap();
        assert!(worst <= Duration::from_secs(300));
        assert!(worst > Duration::from_secs(30));
    }

    #[test]
    fn retry_after_wins_and_a_success_resets_the_ceiling() {
        let mut backoff = Backoff::for_lane(Lane::Normal, 1);
        assert_eq!(backoff.next_delay(Some(Duration::from_secs(42))), Duration::from_secs(42));
        for _ in 0..10 {
            backoff.next_delay(None);
        }
        backoff.reset();
        assert!(backoff.next_delay(None) <= Duration::from_secs(1));
    }

    #[test]
    fn a_batch_too_large_halves_the_lanes_batches_until_ten_successes_restore_them() {
        let mut budget = Budget::new(crate::seal::NORMAL);
        assert_eq!(budget.policy(), crate::seal::NORMAL);
        budget.too_large(40);
        assert_eq!(budget.policy().max_items, 20, "half of the batch that failed");
        assert_eq!(budget.policy().max_bytes, crate::seal::NORMAL.max_bytes);
        budget.too_large(20);
        assert_eq!(budget.policy().max_items, 10);
        for _ in 0..9 {
            budget.succeeded();
        }
        budget.failed();
        for _ in 0..9 {
            budget.succeeded();
        }
        assert_eq!(budget.policy().max_items, 10, "nine in a row after a failure do not restore");
        budget.succeeded();
        assert_eq!(budget.policy().max_items, 2000, "the tenth in a row does");
        for _ in 0..12 {
            budget.too_large(1);
        }
        assert_eq!(budget.policy().max_items, 1, "never below one item");
        let mut urgent = Budget::new(crate::seal::URGENT);
        urgent.too_large(5000);
        assert_eq!(urgent.policy().max_items, 50, "never above half of the lane's own size");
    }

    #[tokio::test(start_paused = true)]
    async fn the_normal_timer_fires_at_start_then_within_its_jittered_period() {
        let settings = Settings {
            interval: Duration::from_secs(900),
            hook_events: 50,
            completions: 5,
            urgent_window: Duration::from_millis(50),
            seed: 3,
            heartbeat: Duration::from_secs(15),
            slots: 2,
        };
        let signals = Signals::new();
        signals.hook_threshold.store(50, Ordering::Relaxed);
        signals.completion_threshold.store(5, Ordering::Relaxed);
        let mut timer = Timer::new(&settings);
        assert!(timer.due(&signals), "due at start");
        timer.sealed(false, &signals, &settings);
        assert!(!timer.due(&signals));
        let phase = timer.next - Instant::now();
        assert!(phase <= Duration::from_secs(900) && phase >= Duration::from_secs(45));
        tokio::time::advance(phase).await;
        assert!(timer.due(&signals));
        for _ in 0..20 {
            timer.sealed(false, &signals, &settings);
            let period = timer.next - Instant::now();
            assert!(period >= Duration::from_secs(810) && period <= Duration::from_secs(990));
        }
        // a backlog: the next batch is due at once
        timer.sealed(true, &signals, &settings);
        assert!(timer.due(&signals));
        timer.sealed(false, &signals, &settings);
        signals.hook_events(49);
        assert!(!timer.due(&signals));
        signals.hook_events(1);
        assert!(timer.due(&signals));
        timer.sealed(false, &signals, &settings);
        signals.completions(5);
        assert!(timer.due(&signals));
        timer.sealed(false, &signals, &settings);
        signals.sync_now();
        assert!(timer.due(&signals));
        assert!(!timer.due(&signals), "a request for now is used once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_crossed_threshold_wakes_the_normal_lane_once() {
        let signals = Signals::new();
        signals.hook_threshold.store(3, Ordering::Relaxed);
        signals.hook_events(2);
        let woken = tokio::time::timeout(Duration::from_millis(10), signals.normal.notified());
        assert!(woken.await.is_err(), "not woken below the threshold");
        signals.hook_events(2);
        let woken = tokio::time::timeout(Duration::from_millis(10), signals.normal.notified());
        assert!(woken.await.is_ok());
    }

    fn settings() -> Settings {
        Settings {
            interval: Duration::from_secs(900),
            hook_events: 50,
            completions: 5,
            urgent_window: Duration::from_millis(50),
            seed: 3,
            heartbeat: Duration::from_secs(15),
            slots: 2,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_heartbeat_ends_an_outages_backoff_but_not_a_retry_after() {
        let signals = Signals::new();
        let settings = settings();
        let timer = Timer::new(&settings);
        let outage = Next::Retry { delay: Duration::from_secs(300), until_answered: true };
        let waiting = wait(&signals, &settings, Lane::Normal, &outage, &timer);
        tokio::pin!(waiting);
        let early = tokio::time::timeout(Duration::from_secs(20), &mut waiting).await;
        assert!(early.is_err(), "the backoff holds while no heartbeat is answered");
        let started = Instant::now();
        signals.central_answered();
        tokio::time::timeout(Duration::from_millis(1), &mut waiting)
            .await
            .expect("the heartbeat's answer ends the backoff at once");
        assert!(started.elapsed() < Duration::from_millis(1));

        // the server said when to come back (429, 503 with Retry-After): that stands
        let told = Next::Retry { delay: Duration::from_secs(60), until_answered: false };
        let waiting = wait(&signals, &settings, Lane::Urgent, &told, &timer);
        tokio::pin!(waiting);
        assert!(tokio::time::timeout(Duration::from_secs(1), &mut waiting).await.is_err());
        signals.central_answered();
        let ended = tokio::time::timeout(Duration::from_secs(58), &mut waiting).await;
        assert!(ended.is_err(), "a Retry-After is waited out");
        tokio::time::timeout(Duration::from_secs(2), &mut waiting).await.expect("then it ends");
    }

    #[test]
    fn a_pause_says_whether_the_system_was_revoked_or_never_enrolled_and_what_to_do() {
        let revoked = pause_reason(Class::Forbidden, "HTTP 403 42501: system revoked");
        assert!(revoked.starts_with("revoked: HTTP 403 42501: system revoked; "), "{revoked}");
        assert!(revoked.contains("reinstated") && revoked.contains("`ccm sync resume`"));
        assert!(!revoked.contains("enroll"), "{revoked}");
        let never = pause_reason(Class::Forbidden, "HTTP 403 42501: system not enrolled");
        assert!(never.starts_with("not_enrolled: ") && never.ends_with("`ccm sync enroll`"));
        let expired = pause_reason(Class::Unauthorized, "HTTP 401 PGRST301: JWT expired");
        assert!(expired.starts_with("unauthorized: HTTP 401 PGRST301: JWT expired; "));
        let url = pause_reason(Class::Misconfigured, "HTTP 404: not found");
        assert!(url.contains("sync.url") && url.contains("restart the daemon"), "{url}");
    }
}
