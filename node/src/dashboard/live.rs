//! Live updates: one task per daemon turns committed changes into notices, and each open page
//! receives them as server-sent events (`GET /events`).
//!
//! The store says when its writer was given back ([`Store::changes`]); the hub then reads the
//! outbox rows written since the last notice (one query for all pages, at most one every
//! [`COALESCE`]) and broadcasts a `change` event whose id is the last outbox id. A write with no
//! outbox row (an agent's output or heartbeat, a hook event) becomes an `activity` event.
//! A page that reconnects (after a restart of the daemon, say) sends the last id it saw
//! (`Last-Event-ID`, or `?last=` when the page opened a new stream itself) and gets one
//! `change` event at once when the outbox moved meanwhile.

use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use futures_util::StreamExt as _;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::store::Store;

/// The shortest time between two notices: changes that come together become one.
pub const COALESCE: Duration = Duration::from_millis(100);
/// The most tasks a `change` event names; past it, it names none and says `many` (every task
/// page refreshes). A burst of creations changed hundreds of tasks in one notice, and each open
/// page received and parsed all their ids, ten times a second.
const TASKS_NAMED: usize = 20;

/// What changed.
#[derive(Debug, Clone)]
pub enum Notice {
    /// Outbox rows up to `id` were written; `tasks` are the tasks among their entities, or
    /// empty with `many` when there were more than [`TASKS_NAMED`].
    Change { id: i64, kinds: Vec<String>, tasks: Vec<String>, many: bool },
    /// Something without an outbox row changed (output, heartbeats, hook events).
    Activity,
    /// The fleet's state from the central changed (`fleet::Refresher`): a `change` of kind
    /// `fleet`.
    Fleet,
}

#[derive(Serialize)]
struct ChangeData<'a> {
    kinds: &'a [String],
    tasks: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    many: bool,
}

/// Fans notices out to the open pages.
pub struct Hub {
    sender: broadcast::Sender<Notice>,
    /// The last outbox id announced.
    head: AtomicI64,
    /// How many `activity` notices were sent.
    activity: AtomicU64,
    /// How many `fleet` notices were sent.
    fleet: AtomicU64,
    /// Ends every stream when the daemon stops.
    shutdown: CancellationToken,
}

impl Hub {
    /// Starts the hub's task for `store`; it ends when the store's writer is gone. The streams
    /// end when `shutdown` is cancelled (a page then reconnects to the next daemon).
    pub fn start(store: Store, shutdown: CancellationToken) -> Arc<Hub> {
        let (sender, _) = broadcast::channel(64);
        let hub = Arc::new(Hub {
            sender,
            head: AtomicI64::new(-1),
            activity: AtomicU64::new(0),
            fleet: AtomicU64::new(0),
            shutdown,
        });
        let running = hub.clone();
        tokio::spawn(async move { running.run(store).await });
        hub
    }

    async fn run(&self, store: Store) {
        let mut changes = store.changes();
        match store.outbox_head().await {
            Ok(head) => self.head.store(head, Ordering::SeqCst),
            Err(error) => warn!(%error, "live updates: cannot read the outbox"),
        }
        loop {
            if changes.changed().await.is_err() {
                return;
            }
            changes.borrow_and_update();
            let head = self.head.load(Ordering::SeqCst).max(0);
            match store.changes_since(head).await {
                Ok((last, rows)) if !rows.is_empty() => {
                    self.head.store(last, Ordering::SeqCst);
                    let (mut kinds, mut tasks) = (Vec::new(), Vec::new());
                    for (kind, entity) in rows {
                        if kind == "task" && !tasks.contains(&entity) {
                            tasks.push(entity);
                        } else if !kinds.contains(&kind) {
                            kinds.push(kind);
                        }
                    }
                    if !tasks.is_empty() {
                        kinds.push("task".into());
                    }
                    let many = tasks.len() > TASKS_NAMED;
                    if many {
                        tasks.clear();
                    }
                    let _ = self.sender.send(Notice::Change { id: last, kinds, tasks, many });
                }
                Ok(_) => {
                    self.activity.fetch_add(1, Ordering::SeqCst);
                    let _ = self.sender.send(Notice::Activity);
                }
                Err(crate::store::StoreError::Closed) => return,
                Err(error) => warn!(%error, "live updates: cannot read the outbox"),
            }
            tokio::time::sleep(COALESCE).await;
        }
    }

    /// What the pages have been told so far (the last outbox id and the counts of activity
    /// and fleet notices): a page rendered at one version looks the same until the next.
    pub fn version(&self) -> (i64, u64, u64) {
        (
            self.head.load(Ordering::SeqCst),
            self.activity.load(Ordering::SeqCst),
            self.fleet.load(Ordering::SeqCst),
        )
    }

    /// How many pages (browsers' event streams) are open now.
    pub fn watchers(&self) -> usize {
        self.sender.receiver_count()
    }

    /// Tells the pages that the fleet's state changed.
    pub fn fleet_changed(&self) {
        self.fleet.fetch_add(1, Ordering::SeqCst);
        let _ = self.sender.send(Notice::Fleet);
    }

    /// The event stream of one page that last saw outbox id `last` (`None`: a first connect).
    pub fn stream(
        &self,
        last: Option<i64>,
    ) -> Sse<impl Stream<Item = Result<Event, Infallible>> + Send + 'static> {
        // Subscribed before the head is read: a notice in between arrives twice, never not.
        let receiver = self.sender.subscribe();
        let head = self.head.load(Ordering::SeqCst).max(0);
        let first = match last {
            Some(last) if last != head => change_event(head, &[], &[], false),
            _ => Event::default().event("hello").id(head.to_string()).data("{}"),
        }
        .retry(Duration::from_millis(500));
        let rest = stream::unfold((receiver, head), |(mut receiver, head)| async move {
            let event = match receiver.recv().await {
                Ok(Notice::Change { id, kinds, tasks, many }) => {
                    (change_event(id, &kinds, &tasks, many), id)
                }
                Ok(Notice::Activity) => (Event::default().event("activity").data("{}"), head),
                Ok(Notice::Fleet) => (change_event(head, &["fleet".to_string()], &[], false), head),
                // Some notices were missed: the page reloads its data anyway.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    (change_event(head, &[], &[], false), head)
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok(event.0), (receiver, event.1)))
        });
        let events = stream::once(async move { Ok(first) }).chain(rest);
        Sse::new(events.take_until(self.shutdown.clone().cancelled_owned()))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
    }
}

fn change_event(id: i64, kinds: &[String], tasks: &[String], many: bool) -> Event {
    let data =
        serde_json::to_string(&ChangeData { kinds, tasks, many }).unwrap_or_else(|_| "{}".into());
    Event::default().event("change").id(id.to_string()).data(data)
}
