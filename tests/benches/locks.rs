//! The hand-over of a `fleet`-scoped named lock (issue 24): two nodes against a real central
//! (PostgreSQL 15 with `supabase/` and postrust in front, `ccm_tests::fleet`), one holding agent
//! on each. The agent of one node holds `build`; the other node's agent asks for it and waits;
//! the holder gives it back (`DELETE /api/agent/locks/build`). The figure is the time from the
//! unlock's answer to the waiter's grant, in turns from both sides. Baseline, in the same run:
//! an uncontended `fleet` lock taken (`POST`, the central's `api.acquire_lock` behind it) and
//! given back. A waiter asks the central again every 250 ms and at every change of its node's
//! store (the agent API's poll), so the hand-over is at most that plus one acquisition.
//!
//! Run with `cargo bench -p ccm-tests --bench locks` (`CCM_BENCH_LOCKS_TURNS`, default 40).
//! Nothing here asserts on time.

use std::time::{Duration, Instant};

use ccm_tests::bench::{machine, ms, print_table, Row, Stats};
use ccm_tests::fleet::{Fleet, NodeOptions};
use ccm_tests::{Api, HOLDER_PROFILE};
use reqwest::Method;
use serde_json::json;

const PATH: &str = "/api/agent/locks/build";

#[tokio::main]
async fn main() {
    let machine = machine();
    let turns: usize = std::env::var("CCM_BENCH_LOCKS_TURNS").map_or(40, |v| v.parse().unwrap());
    let fleet = Fleet::start();
    let profiles = HOLDER_PROFILE.strip_prefix("profiles:\n").expect("a profiles section");
    let options = NodeOptions::new("commit");
    let nodes: Vec<_> = [(1, "alpha"), (2, "beta")]
        .into_iter()
        .map(|(n, name)| fleet.node_extra(n, name, true, &options, profiles, "").up())
        .collect();
    let mut agents: Vec<(Api, String)> = Vec::new();
    for node in &nodes {
        let (_, token) = node.holder().await;
        agents.push((node.daemon().api.clone(), token));
    }
    let lock = json!({ "ttl_secs": 60, "wait_secs": 30, "scope": "fleet" });

    // Baseline: the lock taken and given back with nobody else asking.
    let mut uncontended = Vec::new();
    for turn in 0..turns {
        let (api, token) = &agents[turn % 2];
        let started = Instant::now();
        let (status, grant) = api.as_agent(Method::POST, token, PATH, lock.clone()).await;
        uncontended.push(started.elapsed());
        assert_eq!(status, 200, "{grant}");
        let (status, answer) = api.as_agent(Method::DELETE, token, PATH, json!({})).await;
        assert_eq!(status, 200, "{answer}");
    }

    // Hand-over: the holder unlocks while the other node's agent waits.
    let mut handovers = Vec::new();
    let (first_api, first_token) = &agents[0];
    let (status, grant) = first_api.as_agent(Method::POST, first_token, PATH, lock.clone()).await;
    assert_eq!(status, 200, "{grant}");
    for turn in 0..turns {
        let (holder_api, holder_token) = agents[turn % 2].clone();
        let (waiter_api, waiter_token) = agents[(turn + 1) % 2].clone();
        let body = lock.clone();
        let waiter = tokio::spawn(async move {
            let answer = waiter_api.as_agent(Method::POST, &waiter_token, PATH, body).await;
            (answer, Instant::now())
        });
        // The waiter has asked and is waiting (at a random phase of its poll).
        tokio::time::sleep(Duration::from_millis(300 + (turn as u64 * 37) % 250)).await;
        assert!(!waiter.is_finished(), "turn {turn}: the waiter got a held lock");
        let (status, answer) =
            holder_api.as_agent(Method::DELETE, &holder_token, PATH, json!({})).await;
        let unlocked = Instant::now();
        assert_eq!(status, 200, "{answer}");
        let ((status, grant), granted) = waiter.await.unwrap();
        assert_eq!(status, 200, "turn {turn}: {grant}");
        handovers.push(granted.saturating_duration_since(unlocked));
    }

    let (handover, baseline) = (Stats::new(handovers), Stats::new(uncontended));
    println!("{machine}");
    println!("fleet lock `build`, two nodes, {turns} turns each");
    print_table(&[
        Row::new(
            "fleet lock hand-over after unlock, p50",
            ms(handover.p50),
            format!("{} (uncontended lock, p50)", ms(baseline.p50)),
            "≤ 1 s",
        )
        .ratio(handover.p50.as_secs_f64(), baseline.p50.as_secs_f64(), "—"),
        Row::new(
            "fleet lock hand-over after unlock, p99",
            ms(handover.p99),
            format!("{} (uncontended lock, p99)", ms(baseline.p99)),
            "—",
        ),
    ]);
}
