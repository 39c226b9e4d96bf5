//! Enrolment through Supabase Auth: the real daemon and CLI sign in to a stand-in of Supabase
//! Auth (`ccm_tests::standin::supabase_auth`: GoTrue's endpoints and JSON, rotating refresh
//! tokens, access tokens signed with postrust's secret and expiring in seconds) and sync to a
//! real central (PostgreSQL with `supabase/`, postrust in front) with that session.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use ccm_tests::central::Central;
use ccm_tests::faultproxy::FaultProxy;
use ccm_tests::standin::supabase_auth::SupabaseAuth;
use ccm_tests::{open_db, wait_until, Daemon, TestHome};
use serde_json::{json, Value};

const OWNER: &str = "00000000-0000-4000-8000-0000000000f1";
const EMAIL: &str = "build-1@systems.example";
const PASSWORD: &str = "correct horse battery staple";

/// A node syncing to `central` through a proxy, with Supabase Auth at `auth`; not enrolled.
struct Node {
    home: TestHome,
    daemon: Option<Daemon>,
    _proxy: FaultProxy,
}

impl Node {
    fn start(name: &str, central: &Central, auth: &SupabaseAuth) -> Node {
        let home = TestHome::new(name);
        let proxy = FaultProxy::start(&central.rest_url(), "rpc/ingest_batch");
        home.write_config(&format!(
            "node:\n  name: {name}\nsync:\n  rest_url: {}\n  auth_url: {}\n  publishable_key: {}\n  interval_secs: 3600\n  heartbeat_secs: 1\n",
            proxy.url(),
            auth.url(),
            auth.apikey()
        ));
        let daemon = home.start();
        Node { home, daemon: Some(daemon), _proxy: proxy }
    }

    /// `ccm sync enroll --email EMAIL --password-stdin` with `password` on stdin.
    fn enroll(&self, password: &str) -> Output {
        let mut child = self
            .home
            .ccm()
            .args(["sync", "enroll", "--email", EMAIL, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ccm runs");
        writeln!(child.stdin.take().expect("stdin"), "{password}").expect("password written");
        child.wait_with_output().expect("ccm ends")
    }

    fn enroll_ok(&self) {
        let out = self.enroll(PASSWORD);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("enrolled as"), "{text}");
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the daemon runs")
    }

    fn restart(&mut self) {
        self.daemon = None;
        self.daemon = Some(self.home.start());
    }

    fn lanes(&self) -> Value {
        self.home.run_json(&["sync", "status"])
    }

    fn auth_file(&self) -> Value {
        let text = std::fs::read_to_string(self.home.home().join("auth.json")).expect("auth.json");
        serde_json::from_str(&text).expect("auth.json is JSON")
    }

    fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log_text).unwrap_or_default()
    }

    /// Creates a task and waits until the central holds it.
    async fn shipped(&self, central: &Central, title: &str) -> String {
        let (status, task) =
            self.daemon().post("/api/tasks", json!({ "title": title, "prompt": "p" })).await;
        assert_eq!(status, 201, "{task}");
        let id = task["id"].as_str().expect("id").to_string();
        let mut asked = Instant::now();
        let arrived = wait_until(Duration::from_secs(20), || {
            if asked.elapsed() > Duration::from_secs(1) {
                self.home.run_ok(&["sync", "now"]);
                asked = Instant::now();
            }
            let sql = format!("select count(*) from private.task_summaries where task_id = '{id}'");
            let n = central.pg.query(&sql);
            async move { n.trim() == "1" }
        })
        .await;
        assert!(arrived, "task {id} did not reach the central: {}\n{}", self.lanes(), self.log());
        id
    }
}

fn system_user(auth: &SupabaseAuth) -> String {
    auth.add_user(EMAIL, PASSWORD, json!({ "role": "system", "owner": OWNER }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolling_by_email_and_password_keeps_the_session_privately_and_sync_ships_with_it() {
    let central = Central::start();
    let auth = SupabaseAuth::start(&central.anon_key());
    let user = system_user(&auth);
    let node = Node::start("auth-password", &central, &auth);

    let refused = node.enroll("wrong password");
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(error.contains("Invalid login credentials"), "{error}");
    assert!(error.contains(EMAIL), "{error}");
    assert!(!error.contains("wrong password"), "the password is never shown: {error}");

    node.enroll_ok();
    let file = node.auth_file();
    let mode = std::fs::metadata(node.home.home().join("auth.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        vec![file["sync"]["refresh_token"].as_str().unwrap().to_string()],
        auth.active_refresh_tokens(&user),
        "auth.json keeps the session's refresh token"
    );
    assert!(file["sync"]["expires_at"].as_i64().is_some());
    assert!(!file.to_string().contains(PASSWORD));
    let system = central.pg.query(&format!(
        "select owner || ' ' || name from private.systems where auth_uid = '{user}'"
    ));
    assert!(system.starts_with(OWNER), "the central system is the Auth user's: {system}");

    node.shipped(&central, "shipped with a session").await;
    let log = node.log();
    let refresh = file["sync"]["refresh_token"].as_str().unwrap();
    assert!(!log.contains(refresh) && !log.contains(PASSWORD), "no secret in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_is_refreshed_before_expiry_and_sync_survives_rotation_and_a_restart() {
    let central = Central::start();
    let auth = SupabaseAuth::start(&central.anon_key());
    let user = system_user(&auth);
    // Refreshed 2 s (a fifth) before expiry; a heartbeat every second gives it the chance.
    auth.set_expires_in(10);
    let mut node = Node::start("auth-refresh", &central, &auth);
    node.enroll_ok();

    let rotated =
        wait_until(Duration::from_secs(40), || async { auth.refreshes().len() >= 2 }).await;
    assert!(rotated, "no refreshes: {:?}\n{}", auth.refreshes(), node.log());
    node.shipped(&central, "after two rotations").await;

    node.restart();
    let before = auth.refreshes().len();
    let again =
        wait_until(Duration::from_secs(20), || async { auth.refreshes().len() > before }).await;
    assert!(again, "no refresh after the restart: {:?}\n{}", auth.refreshes(), node.log());
    node.shipped(&central, "after a restart").await;

    let refreshes = auth.refreshes();
    for refresh in &refreshes {
        assert_eq!(refresh.status, 200, "every refresh is accepted: {refreshes:?}");
        let age = refresh.age_ms.expect("a token the stand-in issued");
        assert!(age < 10_000, "refreshed before its access token expired: {refreshes:?}");
    }
    let mut sent: Vec<&str> = refreshes.iter().map(|r| r.sent.as_str()).collect();
    sent.dedup();
    assert_eq!(sent.len(), refreshes.len(), "each refresh token is used once: {refreshes:?}");
    assert_eq!(
        vec![node.auth_file()["sync"]["refresh_token"].as_str().unwrap().to_string()],
        auth.active_refresh_tokens(&user),
        "auth.json holds the rotated refresh token"
    );
    assert_eq!(node.lanes()["normal"]["paused_reason"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_refresh_carries_on_with_the_session_auth_already_rotated() {
    let central = Central::start();
    let auth = SupabaseAuth::start(&central.anon_key());
    let user = system_user(&auth);
    auth.set_expires_in(5);
    let mut node = Node::start("auth-kill", &central, &auth);
    node.enroll_ok();
    node.shipped(&central, "before the kill").await;

    // Auth rotates the refresh token, then the answer waits; the daemon dies meanwhile.
    auth.hold_refreshes(Some(Duration::from_secs(3)));
    let held = wait_until(Duration::from_secs(15), || async { auth.held() == 1 }).await;
    assert!(held, "no refresh was held: {:?}", auth.refreshes());
    let spent = auth.refreshes().last().unwrap().sent.clone();
    node.daemon.as_mut().unwrap().kill9();
    auth.hold_refreshes(None);
    // Past GoTrue's reuse interval: only the parent-of-the-active-token rule can save it.
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(
        node.auth_file()["sync"]["refresh_token"].as_str().unwrap(),
        spent,
        "the kill came before the save"
    );

    node.restart();
    node.shipped(&central, "after the kill").await;
    let refreshes = auth.refreshes();
    let after: Vec<_> = refreshes.iter().skip_while(|r| r.sent != spent).skip(1).collect();
    assert!(!after.is_empty(), "the restarted daemon refreshed: {refreshes:?}");
    assert_eq!(after[0].sent, spent, "it sent the spent token again: {refreshes:?}");
    assert!(after.iter().all(|r| r.status == 200), "{refreshes:?}");
    assert_eq!(
        vec![node.auth_file()["sync"]["refresh_token"].as_str().unwrap().to_string()],
        auth.active_refresh_tokens(&user)
    );
    assert_eq!(node.lanes()["normal"]["paused_reason"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_pauses_sync_with_a_clear_reason_and_signing_in_again_resumes() {
    let central = Central::start();
    let auth = SupabaseAuth::start(&central.anon_key());
    let user = system_user(&auth);
    auth.set_expires_in(5);
    let node = Node::start("auth-revoked", &central, &auth);
    node.enroll_ok();
    node.shipped(&central, "before the revocation").await;

    auth.revoke_sessions(&user);
    let (status, task) =
        node.daemon().post("/api/tasks", json!({ "title": "while revoked", "prompt": "p" })).await;
    assert_eq!(status, 201);
    // No lane needs to send anything: the refused refresh itself pauses sync.
    let paused = wait_until(Duration::from_secs(20), || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lanes = node.lanes();
        lanes["urgent"]["paused_reason"].is_string() && lanes["normal"]["paused_reason"].is_string()
    })
    .await;
    assert!(paused, "sync did not pause: {}\n{}", node.lanes(), node.log());
    let reason = node.lanes()["normal"]["paused_reason"].as_str().unwrap().to_string();
    for words in ["session was revoked", "refresh_token_not_found", "ccm sync enroll"] {
        assert!(reason.contains(words), "{reason}");
    }
    let mut db = open_db(&node.home.db_file()).await;
    let alerts: Vec<(String, String)> =
        sqlx::query_as("SELECT severity, message FROM alerts WHERE reason = 'sync_paused'")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert!(
        alerts
            .iter()
            .any(|(severity, m)| severity == "critical" && m.contains("session was revoked")),
        "{alerts:?}"
    );

    node.enroll_ok();
    let id = task["id"].as_str().unwrap();
    let arrived = wait_until(Duration::from_secs(20), || {
        let n = central
            .pg
            .query(&format!("select count(*) from private.task_summaries where task_id = '{id}'"));
        async move { n.trim() == "1" }
    })
    .await;
    assert!(arrived, "{}", node.lanes());
    assert_eq!(node.lanes()["normal"]["paused_reason"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_code_enrols_a_system_without_a_password_once_and_only_once() {
    let central = Central::start();
    let auth = SupabaseAuth::start(&central.anon_key());
    system_user(&auth);
    let alpha = Node::start("auth-invite-alpha", &central, &auth);
    let refused = alpha.home.run(&["sync", "invite"]);
    assert!(!refused.status.success(), "an unenrolled system cannot invite");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not enrolled"));
    alpha.enroll_ok();
    let out = alpha.home.run_ok(&["sync", "invite", "--hours", "1"]);
    let code = out
        .lines()
        .find_map(|l| l.strip_prefix("on the new system: ccm sync enroll --code "))
        .unwrap_or_else(|| panic!("no code in: {out}"))
        .to_string();

    let beta = Node::start("auth-invite-beta", &central, &auth);
    let enrolled = beta.home.run_ok(&["sync", "enroll", "--code", &code]);
    assert!(enrolled.contains("enrolled as auth-invite-beta"), "{enrolled}");
    let file = beta.auth_file();
    assert!(file["sync"]["refresh_token"].is_string(), "beta keeps a session it can refresh");
    assert!(!file.to_string().contains(&code), "the code is not kept");
    let owner = central.pg.query(&format!(
        "select owner from private.systems where name = 'auth-invite-beta' and auth_uid = '{}'",
        file["sync"]["user_id"].as_str().unwrap()
    ));
    assert_eq!(owner.trim(), OWNER, "beta is a system of alpha's owner, as its own Auth user");
    beta.shipped(&central, "shipped by an invited system").await;

    let gamma = Node::start("auth-invite-gamma", &central, &auth);
    let again = gamma.home.run(&["sync", "enroll", "--code", &code]);
    assert!(!again.status.success(), "a code works once");
    let error = String::from_utf8_lossy(&again.stderr);
    assert!(error.contains("invite code unknown, already used or expired"), "{error}");
    assert_eq!(central.pg.query("select count(*) from private.systems").trim(), "2");
}

/// `ccm sync operator`: an operator signs in on an enrolled node through Supabase Auth; the
/// session is kept in `auth.json` apart from the system's (its own refresh token, the system's
/// untouched), checked against the central first; a wrong password is refused without showing
/// it; `--off` signs the operator out and leaves the system enrolled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_on_a_node_apart_from_the_systems_session() {
    const OPERATOR_EMAIL: &str = "me@operators.example";
    let central = Central::start();
    let auth = SupabaseAuth::start(&central.anon_key());
    let operator = auth.add_user(OPERATOR_EMAIL, PASSWORD, json!({ "role": "operator" }));
    auth.add_user(EMAIL, PASSWORD, json!({ "role": "system", "owner": operator }));
    let node = Node::start("auth-operator", &central, &auth);
    node.enroll_ok();
    let system = node.auth_file()["sync"].clone();

    let sign_in = |password: &str| {
        let mut child = node
            .home
            .ccm()
            .args(["sync", "operator", "--email", OPERATOR_EMAIL, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ccm runs");
        writeln!(child.stdin.take().expect("stdin"), "{password}").expect("password written");
        child.wait_with_output().expect("ccm ends")
    };
    let refused = sign_in("wrong password");
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.contains("Invalid login credentials") && error.contains(OPERATOR_EMAIL),
        "{error}"
    );
    assert!(!error.contains("wrong password"), "the password is never shown: {error}");
    assert!(node.auth_file().get("operator").is_none());

    let out = sign_in(PASSWORD);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("operator signed in"));
    let file = node.auth_file();
    assert_eq!(
        vec![file["operator"]["refresh_token"].as_str().unwrap().to_string()],
        auth.active_refresh_tokens(&operator),
        "auth.json keeps the operator's own session"
    );
    assert_eq!(file["sync"], system, "the system's identity is untouched");
    assert!(!file.to_string().contains(PASSWORD));

    let out = node.home.run_ok(&["sync", "operator", "--off"]);
    assert!(out.contains("signed out"), "{out}");
    let file = node.auth_file();
    assert!(file.get("operator").is_none(), "{file}");
    assert_eq!(file["sync"], system, "still enrolled");
    let bad = node.home.run(&["sync", "operator", "--jwt", "not-a-jwt"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--jwt: not a JWT"));
}
