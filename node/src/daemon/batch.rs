//! Group commit: requests hand their write to one batcher, which writes what is waiting (up to a
//! bounded weight) in one transaction (one fsync) and answers each request after the commit, so an answer still
//! means "stored durably". Used for task creation and hook events, the two writes that come in
//! streams.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::store::StoreError;

/// Writes waiting at most; senders wait beyond that.
const QUEUE: usize = 4096;

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
    /// Starts the batcher task. A group is what waits when the writer is free, up to a weight
    /// of `group` (each request weighs `weight(request)`; a request heavier than that is a group
    /// of its own): bounded, so that the next group gathers while one is written instead of
    /// everyone waiting on one large write. `write_all` writes a group in one transaction (all or
    /// nothing); when it fails, `write_one` writes each request of the group on its own, so one
    /// bad request does not sink the others. The task ends when every sender is gone.
    pub fn start<All, AllFut, One, OneFut>(
        span: tracing::Span,
        (group, weight): (usize, fn(&Req) -> usize),
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
            let mut waiting = Vec::new();
            while let Some(first) = queue.recv().await {
                let mut weighs = weight(&first.0);
                waiting.push(first);
                while weighs < group {
                    let Ok(next) = queue.try_recv() else { break };
                    weighs += weight(&next.0);
                    waiting.push(next);
                }
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::sync::Semaphore;

    use super::*;

    /// Requests are byte strings weighing their length; a group is written once the gate lets it.
    #[tokio::test]
    async fn a_group_closes_once_its_weight_is_reached_and_the_rest_waits_for_the_next() {
        let groups = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let (seen, open) = (groups.clone(), gate.clone());
        let batcher = Batcher::start(
            tracing::Span::none(),
            (4, Vec::len),
            move |group: Vec<Vec<u8>>| {
                let (seen, open) = (seen.clone(), open.clone());
                async move {
                    open.acquire().await.expect("gate").forget();
                    let sizes: Vec<usize> = group.iter().map(Vec::len).collect();
                    seen.lock().unwrap().push(sizes.clone());
                    (group, Ok(sizes))
                }
            },
            |request: Vec<u8>| async move { Ok(request.len()) },
        );
        // On this single-threaded runtime the requests are queued in this order before the
        // batcher takes any of them.
        let sizes = [1, 2, 1, 1, 6, 3];
        let answers: Vec<_> = sizes
            .iter()
            .map(|&size| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(vec![0; size]).await })
            })
            .collect();
        gate.add_permits(sizes.len());
        for (answer, size) in answers.into_iter().zip(sizes) {
            assert_eq!(answer.await.expect("submit task").expect("written"), size);
        }
        assert_eq!(*groups.lock().unwrap(), [vec![1, 2, 1], vec![1, 6], vec![3]]);
    }
}
