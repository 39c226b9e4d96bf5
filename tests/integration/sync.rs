//! The sync engine's answers to the central API's faults, through the real daemon and CLI.
//!
//! The central side here is a scripted HTTP server on loopback that answers the way PostgREST
//! (or postrust) answers each fault: it exists for the fault and classification cases only.
//! End-to-end tests against real PostgreSQL and postrust live with the central harness.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use ccm_tests::{open_db, wait_until, Daemon, TestHome};
use serde_json::{json, Value};

const KEY: &str = "sb_publishable_test";
/// An operator-minted JWT (the scripted server does not verify it).
const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJl";

/// One request the central side received.
#[derive(Debug, Clone)]
struct Received {
    function: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn batch(&self) -> Value {
        let body: Value = serde_json::from_slice(&self.body).expect("JSON body");
        body["p_batch"].clone()
    }

    fn task_ids(&self) -> Vec<String> {
        self.batch()["streams"]["task_summary"]
            .as_array()
            .map(|items| items.iter().map(|i| i["task_id"].as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }
}

/// A failure answer: status, headers, JSON body.
type Failure = (u16, Vec<(&'static str, &'static str)>, Value);

/// How the central side answers one `ingest_batch`: `None` applies it (echoing its id).
type Rule = dyn Fn(&Received) -> Option<Failure> + Send + Sync;

#[derive(Clone)]
struct Central {
    received: Arc<Mutex<Vec<Received>>>,
    /// Answers used once each, in order, before `rule`.
    script: Arc<Mutex<VecDeque<Failure>>>,
    rule: Arc<Mutex<Box<Rule>>>,
}

impl Central {
    async fn start() -> (Central, String) {
        let central = Central {
            received: Arc::default(),
            script: Arc::default(),
            rule: Arc::new(Mutex::new(Box::new(|_| None))),
        };
        let app = Router::new().route("/rpc/{function}", post(answer)).with_state(central.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (central, url)
    }

    fn batches(&self) -> Vec<Received> {
        let received = self.received.lock().unwrap();
        received.iter().filter(|r| r.function == "ingest_batch").cloned().collect()
    }

    fn script(&self, status: u16, headers: Vec<(&'static str, &'static str)>, body: Value) {
        self.script.lock().unwrap().push_back((status, headers, body));
    }

    fn set_rule(&self, rule: Box<Rule>) {
        *self.rule.lock().unwrap() = rule;
    }
}

async fn answer(
    State(central): State<Central>,
    Path(function): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = Received { function: function.clone(), headers, body };
    central.received.lock().unwrap().push(received.clone());
    if function == "enroll" {
        let id = "0193a000-0000-7000-8000-00000000e001";
        return axum::Json(json!({"system_id": id, "name": "node", "owner": id})).into_response();
    }
    let scripted = central.script.lock().unwrap().pop_front();
    let failure = scripted.or_else(|| (central.rule.lock().unwrap())(&received));
    match failure {
        Some((status, headers, body)) => {
            let mut response =
                (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
        None => {
            let id = received.batch()["batch_id"].clone();
            axum::Json(json!({"batch_id": id, "status": "applied", "accepted": 1, "rejected": []}))
                .into_response()
        }
    }
}

/// A node configured to sync to `url`, enrolled, with a normal-lane timer that never fires
/// during a test.
fn node(name: &str, url: &str) -> (TestHome, Daemon) {
    let home = TestHome::new(name);
    home.write_config(&format!(
        "scheduler:\n  slots: 20\nsync:\n  rest_url: {url}\n  publishable_key: {KEY}\n  interval_secs: 3600\n"
    ));
    let daemon = home.start();
    let out = home.run_ok(&["sync", "enroll", "--jwt", JWT]);
    assert!(out.contains("enrolled as node"), "{out}");
    (home, daemon)
}

/// Creates a task and waits until the scheduler queued it (so no later row of it is pending).
async fn create(daemon: &Daemon, title: &str) -> String {
    let (status, task) = daemon.post("/api/tasks", json!({ "title": title, "prompt": "p" })).await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            daemon.get(&format!("/api/tasks/{id}")).await.1["state"] == "queued"
        })
        .await
    );
    id
}

fn lanes(home: &TestHome) -> Value {
    home.run_json(&["sync", "status"])
}

async fn outbox_states(home: &TestHome) -> Vec<(String, String, String, Option<String>)> {
    let mut db = open_db(&home.db_file()).await;
    sqlx::query_as("SELECT stream, entity_key, state, error FROM outbox ORDER BY seq")
        .fetch_all(&mut db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_change_goes_at_once_and_is_resent_with_the_same_id_and_bytes_after_a_503() {
    let (central, url) = Central::start().await;
    let (home, daemon) = node("sync-urgent", &url);
    central.script(503, vec![("retry-after", "1")], json!({"code": "PGRST003", "message": "pool"}));
    let id = create(&daemon, "doomed").await;
    daemon.post(&format!("/api/tasks/{id}/events"), json!({ "event": "start" })).await;
    let (status, body) = daemon
        .post(&format!("/api/tasks/{id}/events"), json!({ "event": "failed", "class": "fatal" }))
        .await;
    assert_eq!(status, 200, "{body}");

    assert!(
        wait_until(Duration::from_secs(10), || async { central.batches().len() >= 2 }).await,
        "the urgent batch was not resent: {}",
        daemon.log_text()
    );
    let batches = central.batches();
    assert_eq!(batches[0].body, batches[1].body, "a retry sends the same bytes");
    let batch = batches[0].batch();
    assert_eq!(batch["lane"], "urgent");
    assert_eq!(batch["streams"]["alert"][0]["kind"], "fatal_error");
    assert_eq!(batch["streams"]["alert"][0]["severity"], "critical");
    assert_eq!(batch["streams"]["task_summary"][0]["task_id"], id.as_str());
    assert_eq!(batch["streams"]["task_summary"][0]["state"], "failed");
    let headers = &batches[0].headers;
    assert_eq!(headers["apikey"], KEY);
    assert_eq!(headers["authorization"], format!("Bearer {JWT}").as_str());
    assert_eq!(headers["content-profile"], "api");

    assert!(
        wait_until(Duration::from_secs(5), || async { lanes(&home)["urgent"]["backlog"] == 0 })
            .await
    );
    let lanes = lanes(&home);
    assert!(lanes["urgent"]["last_ok_at"].is_string(), "{lanes}");
    assert_eq!(lanes["urgent"]["last_error"], Value::Null, "a success clears the error");
    // the task's creation waits in the normal lane for its timer
    assert!(lanes["normal"]["backlog"].as_i64().unwrap() >= 1, "{lanes}");
    assert!(batches.iter().all(|b| b.batch()["lane"] == "urgent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_identity_pauses_both_lanes_with_an_alert_and_resume_sends_what_queued() {
    let (central, url) = Central::start().await;
    let (home, daemon) = node("sync-auth", &url);
    // postrust's answer to an RLS refusal
    central.script(401, vec![], json!({"code": "PGRST504", "message": "permission denied"}));
    let task = create(&daemon, "queued while paused").await;
    home.run_ok(&["sync", "now"]);

    assert!(
        wait_until(Duration::from_secs(10), || async {
            lanes(&home)["normal"]["paused_reason"].is_string()
        })
        .await
    );
    let status = lanes(&home);
    for lane in ["urgent", "normal"] {
        let reason = status[lane]["paused_reason"].as_str().unwrap();
        assert!(reason.starts_with("unauthorized: HTTP 401 PGRST504"), "{lane}: {reason}");
    }
    assert!(status["normal"]["backlog"].as_i64().unwrap() >= 1, "nothing dropped: {status}");
    let (_, alerts) = daemon.get("/api/status").await;
    assert!(alerts["open_alerts"].as_u64().unwrap() >= 1, "{alerts}");
    let shown = home.run_ok(&["status"]);
    assert!(shown.contains("paused: unauthorized"), "{shown}");
    let metrics = reqwest::get(daemon.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ccm_sync_paused{lane=\"normal\"} 1"), "{metrics}");

    home.run_ok(&["sync", "resume"]);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            let lanes = lanes(&home);
            lanes["normal"]["backlog"] == 0 && lanes["urgent"]["backlog"] == 0
        })
        .await
    );
    assert!(central.batches().iter().skip(1).any(|b| b.task_ids().contains(&task)));
    assert_eq!(lanes(&home)["normal"]["paused_reason"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_item_is_isolated_by_bisection_rejected_with_its_reason_and_the_rest_acked() {
    let (central, url) = Central::start().await;
    let (home, daemon) = node("sync-poison", &url);
    let mut tasks = Vec::new();
    for i in 0..9 {
        tasks.push(create(&daemon, &format!("task {i}")).await);
    }
    let poison = tasks[5].clone();
    let rule_poison = poison.clone();
    central.set_rule(Box::new(move |received| {
        received
            .task_ids()
            .contains(&rule_poison)
            .then(|| (400, vec![], json!({"code": "22P02", "message": "invalid input syntax"})))
    }));
    home.run_ok(&["sync", "now"]);

    assert!(
        wait_until(Duration::from_secs(15), || async { lanes(&home)["normal"]["backlog"] == 0 })
            .await,
        "{}",
        daemon.log_text()
    );
    let rows = outbox_states(&home).await;
    let rejected: Vec<_> = rows.iter().filter(|r| r.2 == "rejected").collect();
    assert_eq!(rejected.len(), 1, "{rows:?}");
    assert_eq!(rejected[0].1, poison);
    assert!(rejected[0].3.as_deref().unwrap().contains("22P02"), "{rejected:?}");
    assert!(rows.iter().filter(|r| r.0 == "task_summary" && r.1 != poison).all(|r| r.2 == "acked"));
    let batches = central.batches();
    let applied: Vec<String> = batches
        .iter()
        .filter(|b| !b.task_ids().contains(&poison))
        .flat_map(|b| b.task_ids())
        .collect();
    for task in tasks.iter().filter(|t| **t != poison) {
        assert!(applied.contains(task), "{task} not applied");
    }
    // 9 items: one whole batch, then at most 2·⌈log₂ 9⌉ more
    assert!(batches.len() <= 1 + 8, "{} requests", batches.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_too_large_for_the_server_is_split_until_every_item_is_delivered() {
    let (central, url) = Central::start().await;
    let (home, daemon) = node("sync-split", &url);
    let mut tasks = Vec::new();
    for i in 0..7 {
        tasks.push(create(&daemon, &format!("task {i}")).await);
    }
    central.set_rule(Box::new(|received| {
        (received.task_ids().len() > 2)
            .then(|| (413, vec![], json!({"message": "request entity too large"})))
    }));
    home.run_ok(&["sync", "now"]);
    assert!(
        wait_until(Duration::from_secs(15), || async { lanes(&home)["normal"]["backlog"] == 0 })
            .await,
        "{}",
        daemon.log_text()
    );
    let delivered: Vec<String> = central
        .batches()
        .iter()
        .filter(|b| b.task_ids().len() <= 2)
        .flat_map(|b| b.task_ids())
        .collect();
    let mut sorted = delivered.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), tasks.len(), "every task delivered once: {delivered:?}");
    let rows = outbox_states(&home).await;
    assert!(rows.iter().filter(|r| r.0 == "task_summary").all(|r| r.2 == "acked"), "{rows:?}");
}
