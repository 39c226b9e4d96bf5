//! Group commit for hook events: requests hand their event to one ingester, which stores
//! everything that is waiting in one transaction (one fsync) and answers each request after
//! the commit, so the answer still means "stored durably".

use tokio::sync::{mpsc, oneshot};
use tracing::{info_span, warn, Instrument};

use crate::hooks::event::HookEvent;
use crate::store::{HookJob, Ingested, Origin, Receipt, RetryPolicy, Store, StoreError, Via};

/// Events waiting for the ingester at most; senders wait beyond that.
const QUEUE: usize = 4096;
/// Events stored in one transaction at most.
const BATCH: usize = 512;

/// One event waiting to be stored.
pub struct Job {
    pub event: HookEvent,
    pub key: String,
    pub origin: Origin,
    pub received_at: ccm_schema::Timestamp,
    pub ask_human: bool,
    pub reply: oneshot::Sender<Result<Ingested, StoreError>>,
}

/// The sending side, held by the API.
#[derive(Clone)]
pub struct Ingester {
    jobs: mpsc::Sender<Job>,
}

impl Ingester {
    /// Starts the ingester task; it ends when every sender is gone.
    pub fn start(store: Store, policy: RetryPolicy) -> Ingester {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, policy, queue).instrument(info_span!("hook_ingester")));
        Ingester { jobs }
    }

    /// Stores the event durably (with the events that arrived meanwhile) and returns it.
    pub async fn ingest(
        &self,
        job_of: impl FnOnce(oneshot::Sender<Result<Ingested, StoreError>>) -> Job,
    ) -> Result<Ingested, StoreError> {
        let (reply, answer) = oneshot::channel();
        let closed =
            || StoreError::Invalid { field: "hook", message: "the hook ingester stopped".into() };
        self.jobs.send(job_of(reply)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

async fn run(store: Store, policy: RetryPolicy, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let jobs: Vec<HookJob<'_>> = batch
            .iter()
            .map(|job| HookJob {
                event: &job.event,
                receipt: Receipt {
                    key: &job.key,
                    origin: &job.origin,
                    via: Via::Api,
                    received_at: job.received_at,
                },
                ask_human: job.ask_human,
            })
            .collect();
        match store.ingest_hooks(&jobs, policy).await {
            Ok(done) => {
                drop(jobs);
                for (job, ingested) in batch.drain(..).zip(done) {
                    let _ = job.reply.send(Ok(ingested));
                }
            }
            Err(error) => {
                // One bad event must not sink the others: store them one by one.
                warn!(%error, events = jobs.len(), "group commit failed; storing the events one by one");
                let mut results = Vec::with_capacity(jobs.len());
                for job in &jobs {
                    results.push(
                        store.ingest_hook(job.event, &job.receipt, policy, job.ask_human).await,
                    );
                }
                drop(jobs);
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(result);
                }
            }
        }
    }
}
