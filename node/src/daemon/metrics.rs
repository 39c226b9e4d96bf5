//! `/metrics` in the Prometheus text format (prometheus-client), and the request counter.

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use ccm_schema::TaskState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::AppState;
use crate::store::{Store, StoreError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: String,
}

pub struct Metrics {
    registry: Registry,
    http_requests: Family<RequestLabels, Counter>,
    pub tasks_created: Counter,
    task_events: Family<EventLabel, Counter>,
    hook_events: Family<EventLabel, Counter>,
    /// Filled from the database at each scrape.
    tasks: Family<StateLabel, Gauge>,
    outbox_pending: Gauge,
    sync_backlog: Family<LaneLabel, Gauge>,
    sync_last_success: Family<LaneLabel, Gauge>,
    sync_paused: Family<LaneLabel, Gauge>,
    sync_dropped: Family<LaneLabel, Gauge>,
    sync_requests: Counter,
    sync_failures: Counter,
    sync_batches_acked: Counter,
    sync_items_rejected: Counter,
    loop_progress: Family<LoopLabel, Gauge>,
    loop_stalled: Family<LoopLabel, Gauge>,
    db_bytes: Gauge,
    db_free_bytes: Gauge,
    db_wal_bytes: Gauge,
    db_rows: Family<TableLabel, Gauge>,
    retention_last_pass: Gauge,
    retention_last_removed: Family<KindLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoopLabel {
    r#loop: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabel {
    lane: String,
}

impl Metrics {
    pub fn new(started_at_secs: i64) -> Metrics {
        let mut registry = Registry::with_prefix("ccm");
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            http_requests.clone(),
        );
        let tasks_created = Counter::default();
        registry.register("tasks_created", "Tasks created through the API", tasks_created.clone());
        let task_events = Family::<EventLabel, Counter>::default();
        registry.register(
            "task_events",
            "Task events applied through the API, by event",
            task_events.clone(),
        );
        let hook_events = Family::<EventLabel, Counter>::default();
        registry.register(
            "hook_events",
            "Hook events received through the API, by normalized kind",
            hook_events.clone(),
        );
        let tasks = Family::<StateLabel, Gauge>::default();
        registry.register("tasks", "Tasks in the store, by state", tasks.clone());
        let outbox_pending = Gauge::default();
        registry.register("outbox_pending", "Outbox rows waiting for sync", outbox_pending.clone());
        let sync_backlog = Family::<LaneLabel, Gauge>::default();
        registry.register(
            "sync_backlog",
            "Outbox rows not yet acknowledged, by sync lane",
            sync_backlog.clone(),
        );
        let sync_last_success = Family::<LaneLabel, Gauge>::default();
        registry.register(
            "sync_last_success_seconds",
            "Last acknowledged batch, in Unix seconds (0: never), by sync lane",
            sync_last_success.clone(),
        );
        let sync_paused = Family::<LaneLabel, Gauge>::default();
        registry.register("sync_paused", "1 while the sync lane is paused", sync_paused.clone());
        let sync_dropped = Family::<LaneLabel, Gauge>::default();
        registry.register(
            "sync_dropped_total",
            "Rows dropped to keep the sync backlog bounded (only health snapshots), by lane",
            sync_dropped.clone(),
        );
        let sync_requests = Counter::default();
        registry.register(
            "sync_requests",
            "Batches sent to the central API",
            sync_requests.clone(),
        );
        let sync_failures = Counter::default();
        registry.register(
            "sync_failures",
            "Batches the central API did not acknowledge",
            sync_failures.clone(),
        );
        let sync_batches_acked = Counter::default();
        registry.register("sync_batches_acked", "Batches acknowledged", sync_batches_acked.clone());
        let sync_items_rejected = Counter::default();
        registry.register(
            "sync_items_rejected",
            "Outbox rows the central side rejected",
            sync_items_rejected.clone(),
        );
        let loop_progress = Family::<LoopLabel, Gauge>::default();
        registry.register(
            "loop_last_progress_seconds",
            "When the daemon's loop began its current step or ended its last, in Unix seconds",
            loop_progress.clone(),
        );
        let loop_stalled = Family::<LoopLabel, Gauge>::default();
        registry.register(
            "loop_stalled",
            "1 while the loop has been inside one step longer than daemon.stall_secs",
            loop_stalled.clone(),
        );
        let start_time = Gauge::<i64>::default();
        start_time.set(started_at_secs);
        registry.register(
            "start_time_seconds",
            "When the daemon started, in Unix seconds",
            start_time,
        );
        let db_bytes = Gauge::default();
        registry.register("db_bytes", "The database file's pages, in bytes", db_bytes.clone());
        let db_free_bytes = Gauge::default();
        registry.register(
            "db_free_bytes",
            "Free pages of the database, in bytes (given back by the retention pass)",
            db_free_bytes.clone(),
        );
        let db_wal_bytes = Gauge::default();
        registry.register("db_wal_bytes", "The write-ahead log, in bytes", db_wal_bytes.clone());
        let db_rows = Family::<TableLabel, Gauge>::default();
        registry.register("db_rows", "Rows in the database, by table", db_rows.clone());
        let retention_last_pass = Gauge::default();
        registry.register(
            "retention_last_pass_seconds",
            "When the last retention pass finished, in Unix seconds (0: never)",
            retention_last_pass.clone(),
        );
        let retention_last_removed = Family::<KindLabel, Gauge>::default();
        registry.register(
            "retention_last_removed",
            "Rows (or agents' files) the last retention pass removed, by kind",
            retention_last_removed.clone(),
        );
        Metrics {
            db_bytes,
            db_free_bytes,
            db_wal_bytes,
            db_rows,
            retention_last_pass,
            retention_last_removed,
            registry,
            http_requests,
            tasks_created,
            task_events,
            hook_events,
            tasks,
            outbox_pending,
            sync_backlog,
            sync_last_success,
            sync_paused,
            sync_dropped,
            sync_requests,
            sync_failures,
            sync_batches_acked,
            sync_items_rejected,
            loop_progress,
            loop_stalled,
        }
    }

    pub fn count_event(&self, event: &str) {
        self.task_events.get_or_create(&EventLabel { event: event.to_string() }).inc();
    }

    pub fn count_hook(&self, kind: &str) {
        self.hook_events.get_or_create(&EventLabel { event: kind.to_string() }).inc();
    }

    /// Refreshes the gauges from the store and the loops, and encodes everything.
    pub async fn render(
        &self,
        store: &Store,
        loops: &[crate::watchdog::LoopStatus],
    ) -> Result<String, StoreError> {
        for l in loops {
            let label = LoopLabel { r#loop: l.name.clone() };
            let secs = l.last_progress.map_or(0, |t| t.millis() / 1000);
            self.loop_progress.get_or_create(&label).set(secs);
            self.loop_stalled.get_or_create(&label).set(l.stalled.into());
        }
        let counts = store.state_counts().await?;
        for state in TaskState::ALL {
            let n = counts.get(&state).copied().unwrap_or(0);
            self.tasks.get_or_create(&StateLabel { state: state.to_string() }).set(n);
        }
        self.outbox_pending.set(store.outbox_counts().await?.pending);
        for (lane, status) in store.sync_status().await? {
            let label = LaneLabel { lane: lane.to_string() };
            self.sync_backlog.get_or_create(&label).set(status.backlog);
            let ok = status.last_ok_at.map_or(0, |t| t.millis() / 1000);
            self.sync_last_success.get_or_create(&label).set(ok);
            self.sync_paused.get_or_create(&label).set(status.paused_reason.is_some().into());
            self.sync_dropped.get_or_create(&label).set(status.dropped_total);
        }
        let storage = store.storage_stats().await?;
        let bytes = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.db_bytes.set(bytes(storage.db_bytes));
        self.db_free_bytes.set(bytes(storage.free_bytes));
        self.db_wal_bytes.set(bytes(storage.wal_bytes));
        for (table, n) in &storage.rows {
            self.db_rows.get_or_create(&TableLabel { table: table.clone() }).set(*n);
        }
        if let Some(pass) = &storage.last_pass {
            self.retention_last_pass.set(pass.finished_at.millis() / 1000);
            for (kind, n) in pass.removed.iter() {
                let label = KindLabel { kind: kind.clone() };
                self.retention_last_removed.get_or_create(&label).set(bytes(*n));
            }
        }
        let signals = store.sync_signals();
        for (counter, total) in [
            (&self.sync_requests, &signals.requests_total),
            (&self.sync_failures, &signals.failures_total),
            (&self.sync_batches_acked, &signals.batches_acked_total),
            (&self.sync_items_rejected, &signals.items_rejected_total),
        ] {
            let total = total.load(std::sync::atomic::Ordering::Relaxed);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(|e| StoreError::Invalid { field: "metrics", message: e.to_string() })?;
        Ok(text)
    }
}

/// Counts every answered request by method, matched route and status. Only standard methods
/// and the router's own routes become labels (`other`, `unmatched` for the rest), so requests
/// with made-up methods or paths cannot grow the number of series.
pub async fn count_request(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route =
        request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let response = next.run(request).await;
    let labels =
        RequestLabels { method: method.to_string(), route, status: response.status().as_u16() };
    state.metrics.http_requests.get_or_create(&labels).inc();
    response
}
