//! The central schema (`supabase/`) on a real PostgreSQL 15, through a real PostgREST-compatible
//! server (postrust) with real Supabase JWTs.

use ccm_tests::central::{self, Central, Postgres};
use serde_json::{json, Value};

const OPERATOR_1: &str = "00000000-0000-4000-8000-0000000000f1";
const OPERATOR_2: &str = "00000000-0000-4000-8000-0000000000f2";
const SYSTEM_A: &str = "00000000-0000-4000-8000-0000000000a1";
const SYSTEM_B: &str = "00000000-0000-4000-8000-0000000000b1";
const SYSTEM_C: &str = "00000000-0000-4000-8000-0000000000c1";

/// A task summary item of the wire contract.
fn task(task_id: &str, version: u64, state: &str) -> Value {
    json!({
        "seq": version, "task_id": task_id, "version": version, "state": state,
        "title": format!("task {task_id}"), "repo_url": "https://github.com/org/app",
        "profile": "claude", "priority": 0, "attempts": 1, "max_attempts": 3,
        "cost_usd": 0.25, "input_tokens": 100, "output_tokens": 20,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:05:00Z"
    })
}

fn batch(batch_id: &str, tasks: Vec<Value>) -> Value {
    json!({ "p_batch": { "batch_id": batch_id, "lane": "normal",
                         "streams": { "task_summary": tasks } } })
}

/// Enrolls a system through the API and returns its token.
async fn enroll(central: &Central, sub: &str, owner: &str, name: &str) -> String {
    let token = central.system_token(sub, owner);
    let body = json!({ "p_name": name, "p_slots": 2, "p_version": "0.1.0" });
    let (status, answer) = central.rpc(Some(&token), "enroll", body).await;
    assert_eq!(status, 200, "enroll {name}: {answer}");
    assert_eq!(answer["name"], name);
    token
}

/// An RLS or privilege refusal: PostgREST answers 401/403 with `42501`; postrust may answer 401
/// with `PGRST504`.
fn assert_refused(status: u16, body: &Value, what: &str) {
    assert!(
        matches!(status, 401 | 403)
            && matches!(body["code"].as_str(), Some("42501") | Some("PGRST504")),
        "{what}: expected a refusal, got {status} {body}"
    );
}

#[test]
fn migrations_apply_on_an_empty_postgres_and_the_pgtap_suite_passes() {
    let pg = Postgres::start();
    assert_eq!(pg.query("select count(*) from pg_namespace where nspname = 'private'"), "0");
    pg.apply_schema();
    let without_rls =
        pg.query("select string_agg(tablename, ', ') from pg_tables where schemaname = 'private' and not rowsecurity");
    assert_eq!(without_rls, "", "every private table has row-level security");
    let tables = pg.query("select count(*) from pg_tables where schemaname = 'private'");
    assert!(tables.parse::<u32>().unwrap() >= 13, "private tables: {tables}");
    // The bootstrap is safe to run again (a CI database that already has it).
    pg.apply(&central::supabase_dir().join("bootstrap.sql"));

    let files = central::pgtap_files();
    assert!(files.len() >= 4, "pgTAP files: {files:?}");
    let (passed, output) = pg.prove(&files);
    assert!(passed && output.contains("All tests successful"), "pg_prove:\n{output}");
}

#[tokio::test]
async fn a_system_reads_and_writes_only_its_own_rows() {
    let central = Central::start();
    let a = enroll(&central, SYSTEM_A, OPERATOR_1, "alpha").await;
    let b = enroll(&central, SYSTEM_B, OPERATOR_1, "beta").await;
    let task_a = "0193a000-0000-7000-8000-0000000000a1";
    let task_b = "0193a000-0000-7000-8000-0000000000b1";
    for (token, id, batch_id) in [
        (&a, task_a, "0193a000-0000-7000-8000-00000000000a"),
        (&b, task_b, "0193a000-0000-7000-8000-00000000000b"),
    ] {
        let (status, answer) = central
            .rpc(Some(token), "ingest_batch", batch(batch_id, vec![task(id, 1, "queued")]))
            .await;
        assert_eq!((status, &answer["accepted"]), (200, &json!(1)), "{answer}");
    }

    // Reads: A sees its own system and task, nothing of B.
    let (status, systems) = central.get(Some(&a), "fleet_systems?select=name").await;
    assert_eq!((status, systems), (200, json!([{ "name": "alpha" }])));
    let (status, tasks) = central.get(Some(&a), "fleet_tasks?select=task_id").await;
    assert_eq!((status, tasks), (200, json!([{ "task_id": task_a }])));
    let (_, filtered) = central.get(Some(&a), &format!("fleet_tasks?task_id=eq.{task_b}")).await;
    assert_eq!(filtered, json!([]), "filtering on B's task finds nothing");

    // Writes: B's task through the ingest RPC is rejected by key, and B's row is untouched.
    let forged = batch("0193a000-0000-7000-8000-0000000000aa", vec![task(task_b, 9, "cancelled")]);
    let (status, answer) = central.rpc(Some(&a), "ingest_batch", forged).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 0);
    assert_eq!(answer["rejected"][0]["key"], task_b);
    assert_eq!(answer["rejected"][0]["code"], "42501");
    // Writes through the views are refused too (they grant select only).
    let insert = central
        .http
        .post(format!("{}/fleet_systems", central.rest_url()))
        .json(&json!({ "name": "forged", "owner": OPERATOR_1 }));
    let (status, body) = central.send(Some(&a), insert.header("Content-Profile", "api")).await;
    assert_refused(status, &body, "insert through a view");
    let update = central
        .http
        .patch(format!("{}/fleet_systems?name=eq.beta", central.rest_url()))
        .json(&json!({ "name": "hijacked" }));
    let (status, body) = central.send(Some(&a), update.header("Content-Profile", "api")).await;
    assert_refused(status, &body, "update through a view");
    assert_eq!(
        central.pg.query("select string_agg(name, ',' order by name) from private.systems"),
        "alpha,beta"
    );

    let stored = central.pg.rows(&format!(
        "select system_id = (select system_id from private.systems where name = 'beta') as own, \
         version, state, title from private.task_summaries where task_id = '{task_b}'"
    ));
    assert_eq!(
        stored,
        json!([{ "own": true, "version": 1, "state": "queued", "title": format!("task {task_b}") }])
    );
}

#[tokio::test]
async fn anon_can_do_nothing() {
    let central = Central::start();
    let a = enroll(&central, SYSTEM_A, OPERATOR_1, "alpha").await;
    let (status, _) = central
        .rpc(
            Some(&a),
            "ingest_batch",
            batch(
                "0193a000-0000-7000-8000-000000000001",
                vec![task("0193a000-0000-7000-8000-0000000000a1", 1, "queued")],
            ),
        )
        .await;
    assert_eq!(status, 200);

    for (function, body) in [
        ("enroll", json!({ "p_name": "anon", "p_slots": 1, "p_version": "0" })),
        ("heartbeat", json!({ "p_status": {} })),
        ("register_contexts", json!({ "p_generation": 1, "p_contexts": [] })),
        ("ingest_batch", batch("0193a000-0000-7000-8000-000000000002", vec![])),
    ] {
        let (status, answer) = central.rpc(None, function, body).await;
        assert_refused(status, &answer, function);
    }
    for view in ["fleet_systems", "fleet_tasks", "tasks_by_state", "open_alerts", "daily_cost"] {
        let (status, answer) = central.get(None, view).await;
        assert_refused(status, &answer, view);
    }
    // A token signed with another secret or expired is no better than none.
    let mut claims = central::supabase_claims(SYSTEM_A, json!({ "role": "system" }));
    let tampered = central::sign_with(&claims, "another-secret-of-at-least-32-characters");
    claims["exp"] = json!(1_000_000_000);
    let expired = central::sign(&claims);
    for token in [tampered, expired] {
        let (status, answer) = central.get(Some(&token), "fleet_tasks").await;
        assert_eq!(status, 401, "{answer}");
    }
    assert_eq!(
        central.pg.query("select count(*) from private.ingest_ledger"),
        "1",
        "nothing anon sent was applied"
    );
}

#[tokio::test]
async fn an_operator_sees_all_their_systems_and_none_of_another_operators() {
    let central = Central::start();
    for (sub, owner, name, n) in [
        (SYSTEM_A, OPERATOR_1, "alpha", 1),
        (SYSTEM_B, OPERATOR_1, "beta", 2),
        (SYSTEM_C, OPERATOR_2, "gamma", 3),
    ] {
        let task_id = format!("0193a000-0000-7000-8000-00000000000{n}");
        let token = enroll(&central, sub, owner, name).await;
        let (status, _) = central.rpc(Some(&token), "heartbeat", json!({ "p_status": {} })).await;
        assert_eq!(status, 200);
        let body = batch(
            &format!("0193a000-0000-7000-8000-0000000000b{n}"),
            vec![task(&task_id, 1, "executing")],
        );
        assert_eq!(central.rpc(Some(&token), "ingest_batch", body).await.0, 200);
    }

    let op1 = central.operator_token(OPERATOR_1);
    let (status, systems) =
        central.get(Some(&op1), "fleet_systems?select=name,presence_reason&order=name").await;
    assert_eq!(status, 200);
    assert_eq!(
        systems,
        json!([{ "name": "alpha", "presence_reason": "online" },
               { "name": "beta", "presence_reason": "online" }])
    );
    let (_, tasks) = central
        .get(Some(&op1), "tasks_by_state?select=system_name,state,tasks&order=system_name")
        .await;
    assert_eq!(
        tasks,
        json!([{ "system_name": "alpha", "state": "executing", "tasks": 1 },
               { "system_name": "beta", "state": "executing", "tasks": 1 }])
    );
    let op2 = central.operator_token(OPERATOR_2);
    let (_, systems) = central.get(Some(&op2), "fleet_systems?select=name").await;
    assert_eq!(systems, json!([{ "name": "gamma" }]));
    let (_, costs) = central.get(Some(&op2), "daily_cost?select=system_name,day,cost_usd").await;
    assert_eq!(costs, json!([{ "system_name": "gamma", "day": "2026-01-01", "cost_usd": 0.25 }]));
    // An operator is no system: the system functions refuse them.
    let (status, answer) = central.rpc(Some(&op1), "heartbeat", json!({ "p_status": {} })).await;
    assert_refused(status, &answer, "operator heartbeat");
}

#[tokio::test]
async fn a_replayed_batch_is_a_duplicate_and_applies_nothing() {
    let central = Central::start();
    let a = enroll(&central, SYSTEM_A, OPERATOR_1, "alpha").await;
    let id = "0193a000-0000-7000-8000-0000000000a1";
    let first = batch("0193a000-0000-7000-8000-000000000001", vec![task(id, 2, "executing")]);
    let (status, answer) = central.rpc(Some(&a), "ingest_batch", first).await;
    assert_eq!(status, 200);
    assert_eq!(answer["status"], "applied");
    // The same batch id again, even with other content (a node never does that), changes nothing.
    let replay = batch("0193a000-0000-7000-8000-000000000001", vec![task(id, 5, "complete")]);
    let (status, answer) = central.rpc(Some(&a), "ingest_batch", replay).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        json!({ "batch_id": "0193a000-0000-7000-8000-000000000001", "status": "duplicate",
                "accepted": 1, "rejected": [] }),
        "a replay answers the outcome of the first application"
    );
    assert_eq!(
        central.pg.rows("select version, state from private.task_summaries"),
        json!([{ "version": 2, "state": "executing" }])
    );
    assert_eq!(central.pg.query("select count(*) from private.ingest_ledger"), "1");
}

#[tokio::test]
async fn a_newer_version_wins_and_an_older_one_is_ignored() {
    let central = Central::start();
    let a = enroll(&central, SYSTEM_A, OPERATOR_1, "alpha").await;
    let id = "0193a000-0000-7000-8000-0000000000a1";
    let versions = [(3, "executing"), (5, "complete"), (4, "report_generation")];
    for (n, (version, state)) in versions.into_iter().enumerate() {
        let body = batch(
            &format!("0193a000-0000-7000-8000-00000000000{n}"),
            vec![task(id, version, state)],
        );
        let (status, answer) = central.rpc(Some(&a), "ingest_batch", body).await;
        assert_eq!((status, &answer["accepted"]), (200, &json!(1)), "{answer}");
        let (_, rows) = central.get(Some(&a), "fleet_tasks?select=version,state").await;
        let expected = if version == 4 {
            json!([{ "version": 5, "state": "complete" }])
        } else {
            json!([{ "version": version, "state": state }])
        };
        assert_eq!(rows, expected, "after version {version}");
    }
}

#[tokio::test]
async fn one_bad_item_is_rejected_with_its_key_and_reason_while_the_rest_apply() {
    let central = Central::start();
    let a = enroll(&central, SYSTEM_A, OPERATOR_1, "alpha").await;
    let mut items: Vec<Value> =
        (0..500).map(|i| task(&format!("0193a000-0000-7000-8000-{i:012}"), 1, "queued")).collect();
    let poison = "0193a000-0000-7000-8000-000000000250";
    items[250]["state"] = json!("exploded");
    let (status, answer) = central
        .rpc(Some(&a), "ingest_batch", batch("0193a000-0000-7000-8000-0000000000ff", items))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "applied");
    assert_eq!(answer["accepted"], 499);
    assert_eq!(
        answer["rejected"],
        json!([{ "stream": "task_summary", "index": 250, "key": poison, "code": "23514",
                 "message": "state: unknown task state 'exploded'" }])
    );
    assert_eq!(central.pg.query("select count(*) from private.task_summaries"), "499");
    assert_eq!(
        central.pg.query(&format!(
            "select count(*) from private.task_summaries where task_id = '{poison}'"
        )),
        "0"
    );
}

#[tokio::test]
async fn a_central_that_was_down_answers_again_with_its_data() {
    let mut central = Central::start();
    let a = enroll(&central, SYSTEM_A, OPERATOR_1, "alpha").await;
    central.stop_rest();
    let refused = central.http.get(central.rest_url()).send().await;
    assert!(refused.is_err(), "postrust still answers: {refused:?}");
    central.start_rest();
    let (status, systems) = central.get(Some(&a), "fleet_systems?select=name").await;
    assert_eq!((status, systems), (200, json!([{ "name": "alpha" }])));
}
