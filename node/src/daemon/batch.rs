//! Group commit: requests hand their write to one batcher, which writes everything waiting in
//! one transaction (one fsync) and answers each request after the commit, so an answer still
//! means "stored durably". Used for task creation and hook events, the two writes that come in
//! streams.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::store::StoreError;

/// Writes waiting at most; senders wait beyond that.
const QUEUE: usize = 4096;
/// Writes in one transaction at most.
const BATCH: usize = 512;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// The sending side; cheap to clone.
pub struct Batcher<Req, Resp> {
    requests: mpsc::Sender<(Req, Reply<Resp>)>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Batcher { requests: self.requests.clone() }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the batcher task. `write_all` writes a group in one transaction (all or nothing);
    /// when it fails, `write_one` writes each request of the group on its own, so one bad request
    /// does not sink the others. The task ends when every sender is gone.
    pub fn start<All, AllFut, One, OneFut>(
        span: tracing::Span,
        write_all: All,
        write_one: One,
    ) -> Self
    where
        All: Fn(Vec<Req>) -> AllFut + Send + 'static,
        AllFut: Future<Output = (Vec<Req>, Result<Vec<Resp>, StoreError>)> + Send,
        One: Fn(Req) -> OneFut + Send + 'static,
        OneFut: Future<Output = Result<Resp, StoreError>> + Send,
    {
        let (requests, mut queue) = mpsc::channel::<(Req, Reply<Resp>)>(QUEUE);
        let run = async move {
            let mut waiting = Vec::with_capacity(BATCH);
            while queue.recv_many(&mut waiting, BATCH).await > 0 {
                let (group, replies): (Vec<Req>, Vec<Reply<Resp>>) = waiting.drain(..).unzip();
                match write_all(group).await {
                    (_, Ok(done)) => {
                        for (reply, resp) in replies.into_iter().zip(done) {
                            let _ = reply.send(Ok(resp));
                        }
                    }
                    (group, Err(error)) => {
                        tracing::warn!(%error, writes = group.len(), "group commit failed; writing one by one");
                        for (reply, req) in replies.into_iter().zip(group) {
                            let _ = reply.send(write_one(req).await);
                        }
                    }
                }
            }
        };
        tokio::spawn(run.instrument(span));
        Batcher { requests }
    }

    /// Writes the request (with the others waiting) and returns its result once committed.
    pub async fn submit(&self, request: Req) -> Result<Resp, StoreError> {
        let (reply, answer) = oneshot::channel();
        let closed = || StoreError::Invalid {
            field: "request",
            message: "the daemon is shutting down".into(),
        };
        self.requests.send((request, reply)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}
