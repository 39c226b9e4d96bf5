//! A local stand-in of GitHub's REST API for the endpoints `land.mode: pr` uses, answering with
//! the JSON GitHub documents (docs.github.com, REST "Pulls", "Check runs", "Pull request
//! reviews"), backed by a REAL bare git repository: the pull requests' heads are the bare
//! repository's branches, `mergeable` is what `git merge-tree` says, and a merge really moves
//! the base branch there (a merge commit, or a squash).
//!
//! - `POST /repos/{o}/{r}/pulls`: 201 with the pull request; 422 `Validation Failed` with
//!   "A pull request already exists for o:branch." when one is open for the head, "No commits
//!   between" when the head has nothing new, `invalid` `head` for a branch the remote lacks.
//! - `GET /repos/{o}/{r}/pulls?head=o:branch&state=open|closed|all`, `GET .../pulls/{n}`.
//! - `GET /repos/{o}/{r}/commits/{ref}/check-runs`: what the test's checks say for that commit
//!   ([`GitHub::set_checks`]; by default one `ci` run, `success`).
//! - `GET /repos/{o}/{r}/pulls/{n}/reviews`: the reviews the test gave ([`GitHub::review`]).
//! - `PUT /repos/{o}/{r}/pulls/{n}/merge`: 200 `{sha, merged, message}`; 405 "Pull Request is
//!   not mergeable" (a conflict, or already merged); 409 "Head branch was modified. Review and
//!   try the merge again." when `sha` is not the head.
//!
//! Every call needs `Authorization: Bearer <token>` (or `token <token>`), else 401
//! `Bad credentials`.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::Server;

/// A check run the stand-in's CI reports for a commit.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    /// `None` while it runs (`in_progress`); else `success`, `failure`, ...
    pub conclusion: Option<String>,
    pub title: String,
    pub summary: String,
    pub text: String,
}

impl Check {
    pub fn new(
        name: &str,
        conclusion: Option<&str>,
        title: &str,
        summary: &str,
        text: &str,
    ) -> Check {
        Check {
            name: name.into(),
            conclusion: conclusion.map(str::to_string),
            title: title.into(),
            summary: summary.into(),
            text: text.into(),
        }
    }
}

/// What the CI says for a commit: `(bare repository, sha) -> runs`.
pub type Checks = Arc<dyn Fn(&FsPath, &str) -> Vec<Check> + Send + Sync>;

/// A request the stand-in received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub body: Value,
    pub status: u16,
}

#[derive(Debug, Clone)]
struct PullRec {
    number: i64,
    title: String,
    body: String,
    head: String,
    base: String,
    /// The head's commit when last seen (kept once the branch is deleted).
    head_sha: String,
    state: &'static str,
    merged: bool,
    merge_commit_sha: Option<String>,
    created_at: String,
    merged_at: Option<String>,
}

struct Hub {
    bare: PathBuf,
    owner: String,
    repo: String,
    token: String,
    pulls: Vec<PullRec>,
    reviews: HashMap<i64, Vec<Value>>,
    calls: Vec<Call>,
    checks: Checks,
    next_id: i64,
}

type Shared = Arc<Mutex<Hub>>;

/// The running stand-in.
pub struct GitHub {
    server: Server,
    hub: Shared,
}

impl GitHub {
    /// Serves repository `owner/repo`, whose git data is the bare repository `bare`, to
    /// callers with `token`.
    pub fn start(bare: &FsPath, owner: &str, repo: &str, token: &str) -> GitHub {
        let hub = Arc::new(Mutex::new(Hub {
            bare: bare.to_path_buf(),
            owner: owner.into(),
            repo: repo.into(),
            token: token.into(),
            pulls: Vec::new(),
            reviews: HashMap::new(),
            calls: Vec::new(),
            checks: Arc::new(|_: &FsPath, _: &str| {
                vec![Check::new("ci", Some("success"), "All tests passed", "12 passed", "")]
            }),
            next_id: 1,
        }));
        let router = Router::new()
            .route("/repos/{owner}/{repo}/pulls", get(list_pulls).post(create_pull))
            .route("/repos/{owner}/{repo}/pulls/{number}", get(get_pull))
            .route("/repos/{owner}/{repo}/pulls/{number}/reviews", get(list_reviews))
            .route("/repos/{owner}/{repo}/pulls/{number}/merge", put(merge_pull))
            .route("/repos/{owner}/{repo}/commits/{reference}/check-runs", get(check_runs))
            .fallback(|| async {
                (StatusCode::NOT_FOUND, Json(json!({ "message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404" })))
            })
            .with_state(hub.clone());
        GitHub { server: Server::start(router), hub }
    }

    /// The API base URL (`land.api_url`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// From now on the CI answers with `checks`.
    pub fn set_checks(&self, checks: impl Fn(&FsPath, &str) -> Vec<Check> + Send + Sync + 'static) {
        self.hub.lock().unwrap().checks = Arc::new(checks);
    }

    /// Every pull request, as `GET /pulls/{n}` shows it (with its `body`).
    pub fn pulls(&self) -> Vec<Value> {
        let hub = self.hub.lock().unwrap();
        let numbers: Vec<i64> = hub.pulls.iter().map(|p| p.number).collect();
        drop(hub);
        numbers.into_iter().map(|n| self.pull(n)).collect()
    }

    /// Pull request `number` as `GET /pulls/{n}` shows it.
    pub fn pull(&self, number: i64) -> Value {
        let mut hub = self.hub.lock().unwrap();
        refresh(&mut hub);
        let pull = hub.pulls.iter().find(|p| p.number == number).cloned().expect("a pull request");
        full_json(&hub, &pull)
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.hub.lock().unwrap().calls.clone()
    }

    /// A person opens a pull request of `head` onto `base` (as `POST /pulls` would).
    pub fn open_pull(&self, head: &str, base: &str, title: &str, body: &str) -> i64 {
        let mut hub = self.hub.lock().unwrap();
        let (status, answer) =
            create(&mut hub, &json!({ "title": title, "head": head, "base": base, "body": body }));
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        answer["number"].as_i64().unwrap()
    }

    /// A person presses "Merge pull request" on `number` (as `PUT /pulls/{n}/merge` would).
    pub fn merge_by_hand(&self, number: i64) -> Value {
        let mut hub = self.hub.lock().unwrap();
        refresh(&mut hub);
        let (status, answer) = merge(&mut hub, number, &json!({}));
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer
    }

    /// `login` reviews pull request `number` at its current head: `APPROVED`,
    /// `CHANGES_REQUESTED` or `COMMENTED`.
    pub fn review(&self, number: i64, login: &str, state: &str, body: &str) {
        let mut hub = self.hub.lock().unwrap();
        refresh(&mut hub);
        let head =
            hub.pulls.iter().find(|p| p.number == number).expect("a pull request").head_sha.clone();
        let id = hub.next_id;
        hub.next_id += 1;
        let (owner, repo) = (hub.owner.clone(), hub.repo.clone());
        hub.reviews.entry(number).or_default().push(json!({
            "id": 80_000 + id,
            "node_id": format!("PRR_kw{id}"),
            "user": { "login": login, "id": 5000 + id, "type": "User" },
            "body": body,
            "state": state,
            "html_url": format!("https://github.com/{owner}/{repo}/pull/{number}#pullrequestreview-{}", 80_000 + id),
            "pull_request_url": format!("https://api.github.com/repos/{owner}/{repo}/pulls/{number}"),
            "submitted_at": now(),
            "commit_id": head,
            "author_association": "COLLABORATOR"
        }));
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn git(bare: &FsPath, args: &[&str]) -> (bool, String) {
    let out = Command::new("git")
        .arg("-C")
        .arg(bare)
        .args(args)
        .env("GIT_AUTHOR_NAME", "GitHub")
        .env("GIT_AUTHOR_EMAIL", "noreply@github.com")
        .env("GIT_COMMITTER_NAME", "GitHub")
        .env("GIT_COMMITTER_EMAIL", "noreply@github.com")
        .output()
        .expect("git runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), text.trim().to_string())
}

fn rev(bare: &FsPath, reference: &str) -> Option<String> {
    let (ok, sha) =
        git(bare, &["rev-parse", "--verify", "--quiet", &format!("{reference}^{{commit}}")]);
    ok.then_some(sha)
}

/// Open pull requests follow their branches' heads.
fn refresh(hub: &mut Hub) {
    let bare = hub.bare.clone();
    for pull in hub.pulls.iter_mut().filter(|p| p.state == "open") {
        if let Some(sha) = rev(&bare, &format!("refs/heads/{}", pull.head)) {
            pull.head_sha = sha;
        }
    }
}

/// `git merge-tree` of the base and the head: the merged tree, or `None` on a conflict.
fn merged_tree(bare: &FsPath, base: &str, head: &str) -> Option<String> {
    let (ok, out) = git(bare, &["merge-tree", "--write-tree", base, head]);
    ok.then(|| out.lines().next().unwrap_or_default().to_string())
}

fn api(hub: &Hub) -> String {
    format!("https://api.github.com/repos/{}/{}", hub.owner, hub.repo)
}

fn branch_json(hub: &Hub, branch: &str, sha: &str) -> Value {
    json!({
        "label": format!("{}:{branch}", hub.owner),
        "ref": branch,
        "sha": sha,
        "user": { "login": hub.owner, "id": 1, "type": "Organization" },
        "repo": {
            "id": 1296269,
            "name": hub.repo,
            "full_name": format!("{}/{}", hub.owner, hub.repo),
            "private": false,
            "html_url": format!("https://github.com/{}/{}", hub.owner, hub.repo)
        }
    })
}

/// A pull request as the list shows it (no `merged`, `mergeable`).
fn list_json(hub: &Hub, pull: &PullRec) -> Value {
    let base_sha = rev(&hub.bare, &format!("refs/heads/{}", pull.base)).unwrap_or_default();
    json!({
        "url": format!("{}/pulls/{}", api(hub), pull.number),
        "id": 1_000_000 + pull.number,
        "node_id": format!("PR_kwDOA{}", pull.number),
        "html_url": format!("https://github.com/{}/{}/pull/{}", hub.owner, hub.repo, pull.number),
        "diff_url": format!("https://github.com/{}/{}/pull/{}.diff", hub.owner, hub.repo, pull.number),
        "number": pull.number,
        "state": pull.state,
        "locked": false,
        "title": pull.title,
        "user": { "login": "ccm-bot", "id": 7, "type": "User" },
        "body": pull.body,
        "created_at": pull.created_at,
        "updated_at": pull.merged_at.clone().unwrap_or_else(|| pull.created_at.clone()),
        "closed_at": pull.merged_at,
        "merged_at": pull.merged_at,
        "merge_commit_sha": pull.merge_commit_sha,
        "draft": false,
        "head": branch_json(hub, &pull.head, &pull.head_sha),
        "base": branch_json(hub, &pull.base, &base_sha),
        "author_association": "COLLABORATOR"
    })
}

/// A pull request as `GET /pulls/{n}` shows it: with `merged`, `mergeable`,
/// `mergeable_state`.
fn full_json(hub: &Hub, pull: &PullRec) -> Value {
    let mut value = list_json(hub, pull);
    let (mergeable, state) = if pull.merged {
        (Value::Null, "unknown")
    } else {
        let base = format!("refs/heads/{}", pull.base);
        match merged_tree(&hub.bare, &base, &pull.head_sha) {
            Some(_) => (Value::Bool(true), "clean"),
            None => (Value::Bool(false), "dirty"),
        }
    };
    value["merged"] = json!(pull.merged);
    value["mergeable"] = mergeable;
    value["mergeable_state"] = json!(state);
    value["merged_by"] =
        if pull.merged { json!({ "login": "ccm-bot", "id": 7 }) } else { Value::Null };
    value["comments"] = json!(0);
    value["review_comments"] = json!(0);
    value
}

fn error(
    status: StatusCode,
    message: &str,
    errors: Option<Value>,
    doc: &str,
) -> (StatusCode, Value) {
    let mut body = json!({
        "message": message,
        "documentation_url": format!("https://docs.github.com/rest/{doc}"),
        "status": status.as_u16().to_string()
    });
    if let Some(errors) = errors {
        body["errors"] = errors;
    }
    (status, body)
}

fn create(hub: &mut Hub, body: &Value) -> (StatusCode, Value) {
    const DOC: &str = "pulls/pulls#create-a-pull-request";
    let field = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_string);
    for name in ["title", "head", "base"] {
        if field(name).is_none() {
            let errors =
                json!([{ "resource": "PullRequest", "field": name, "code": "missing_field" }]);
            return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed", Some(errors), DOC);
        }
    }
    let (title, base) = (field("title").unwrap_or_default(), field("base").unwrap_or_default());
    let head = field("head").unwrap_or_default();
    let head = head.split_once(':').map_or(head.clone(), |(_, branch)| branch.to_string());
    let Some(head_sha) = rev(&hub.bare, &format!("refs/heads/{head}")) else {
        let errors = json!([{ "resource": "PullRequest", "field": "head", "code": "invalid" }]);
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed", Some(errors), DOC);
    };
    if rev(&hub.bare, &format!("refs/heads/{base}")).is_none() {
        let errors = json!([{ "resource": "PullRequest", "field": "base", "code": "invalid" }]);
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed", Some(errors), DOC);
    }
    if hub.pulls.iter().any(|p| p.state == "open" && p.head == head && p.base == base) {
        let message = format!("A pull request already exists for {}:{head}.", hub.owner);
        let errors = json!([{ "resource": "PullRequest", "code": "custom", "message": message }]);
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed", Some(errors), DOC);
    }
    let (_, count) =
        git(&hub.bare, &["rev-list", "--count", &format!("refs/heads/{base}..{head_sha}")]);
    if count == "0" {
        let message = format!("No commits between {base} and {head}");
        let errors = json!([{ "resource": "PullRequest", "code": "custom", "message": message }]);
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed", Some(errors), DOC);
    }
    let number = hub.pulls.len() as i64 + 1;
    let pull = PullRec {
        number,
        title,
        body: field("body").unwrap_or_default(),
        head,
        base,
        head_sha,
        state: "open",
        merged: false,
        merge_commit_sha: None,
        created_at: now(),
        merged_at: None,
    };
    let answer = full_json(hub, &pull);
    hub.pulls.push(pull);
    (StatusCode::CREATED, answer)
}

fn authorized(hub: &Hub, headers: &HeaderMap) -> bool {
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let token = given.strip_prefix("Bearer ").or_else(|| given.strip_prefix("token "));
    token == Some(hub.token.as_str())
}

/// Checks the token and the repository, records the call, and answers.
fn answer(
    hub: &Shared,
    method: &Method,
    path: String,
    headers: &HeaderMap,
    owner_repo: (&str, &str),
    body: Value,
    handle: impl FnOnce(&mut Hub) -> (StatusCode, Value),
) -> Response {
    let mut hub = hub.lock().unwrap();
    let (status, value) = if !authorized(&hub, headers) {
        error(StatusCode::UNAUTHORIZED, "Bad credentials", None, "")
    } else if owner_repo != (hub.owner.as_str(), hub.repo.as_str()) {
        error(StatusCode::NOT_FOUND, "Not Found", None, "")
    } else {
        refresh(&mut hub);
        handle(&mut hub)
    };
    hub.calls.push(Call { method: method.to_string(), path, body, status: status.as_u16() });
    (status, Json(value)).into_response()
}

async fn create_pull(
    State(hub): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/pulls");
    answer(&hub, &Method::POST, path, &headers, (&owner, &repo), body.clone(), |hub| {
        create(hub, &body)
    })
}

async fn list_pulls(
    State(hub): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut pairs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    let path = format!("/repos/{owner}/{repo}/pulls?{}", pairs.join("&"));
    answer(&hub, &Method::GET, path, &headers, (&owner, &repo), Value::Null, |hub| {
        let state = query.get("state").map_or("open", String::as_str);
        let head = query.get("head").map(|h| {
            let (owner, branch) = h.split_once(':').unwrap_or(("", h));
            (owner.to_string(), branch.to_string())
        });
        let items: Vec<Value> = hub
            .pulls
            .iter()
            .filter(|p| state == "all" || p.state == state)
            .filter(|p| head.as_ref().is_none_or(|(o, b)| *o == hub.owner && *b == p.head))
            .filter(|p| query.get("base").is_none_or(|b| *b == p.base))
            .rev()
            .map(|p| list_json(hub, p))
            .collect();
        (StatusCode::OK, Value::Array(items))
    })
}

async fn get_pull(
    State(hub): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, i64)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/pulls/{number}");
    answer(&hub, &Method::GET, path, &headers, (&owner, &repo), Value::Null, |hub| {
        match hub.pulls.iter().find(|p| p.number == number) {
            Some(pull) => (StatusCode::OK, full_json(hub, pull)),
            None => {
                error(StatusCode::NOT_FOUND, "Not Found", None, "pulls/pulls#get-a-pull-request")
            }
        }
    })
}

async fn list_reviews(
    State(hub): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, i64)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/pulls/{number}/reviews");
    answer(&hub, &Method::GET, path, &headers, (&owner, &repo), Value::Null, |hub| {
        if !hub.pulls.iter().any(|p| p.number == number) {
            return error(StatusCode::NOT_FOUND, "Not Found", None, "pulls/reviews");
        }
        (StatusCode::OK, Value::Array(hub.reviews.get(&number).cloned().unwrap_or_default()))
    })
}

async fn check_runs(
    State(hub): State<Shared>,
    Path((owner, repo, reference)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/commits/{reference}/check-runs");
    answer(&hub, &Method::GET, path, &headers, (&owner, &repo), Value::Null, |hub| {
        let Some(sha) = rev(&hub.bare, &reference) else {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("No commit found for SHA: {reference}"),
                None,
                "checks/runs#list-check-runs-for-a-git-reference",
            );
        };
        let checks = (hub.checks)(&hub.bare, &sha);
        let runs: Vec<Value> = checks
            .iter()
            .enumerate()
            .map(|(i, check)| {
                let id = 4_000_000 + i as i64;
                let status = if check.conclusion.is_some() { "completed" } else { "in_progress" };
                json!({
                    "id": id,
                    "head_sha": sha,
                    "node_id": format!("CR_kw{id}"),
                    "external_id": "",
                    "url": format!("{}/check-runs/{id}", api(hub)),
                    "html_url": format!("https://github.com/{}/{}/runs/{id}", hub.owner, hub.repo),
                    "details_url": format!("https://ci.example.com/runs/{id}"),
                    "status": status,
                    "conclusion": check.conclusion,
                    "started_at": now(),
                    "completed_at": check.conclusion.as_ref().map(|_| now()),
                    "output": {
                        "title": check.title,
                        "summary": check.summary,
                        "text": check.text,
                        "annotations_count": 0,
                        "annotations_url": format!("{}/check-runs/{id}/annotations", api(hub))
                    },
                    "name": check.name,
                    "check_suite": { "id": 5_000_000 },
                    "app": { "id": 1, "slug": "ci", "name": "CI" },
                    "pull_requests": []
                })
            })
            .collect();
        (StatusCode::OK, json!({ "total_count": runs.len(), "check_runs": runs }))
    })
}

async fn merge_pull(
    State(hub): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, i64)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = format!("/repos/{owner}/{repo}/pulls/{number}/merge");
    answer(&hub, &Method::PUT, path, &headers, (&owner, &repo), body.clone(), |hub| {
        merge(hub, number, &body)
    })
}

/// `PUT /pulls/{n}/merge`: a real merge (or squash) in the bare repository, the base moved by
/// a compare-and-swap.
fn merge(hub: &mut Hub, number: i64, body: &Value) -> (StatusCode, Value) {
    const DOC: &str = "pulls/pulls#merge-a-pull-request";
    let Some(index) = hub.pulls.iter().position(|p| p.number == number) else {
        return error(StatusCode::NOT_FOUND, "Not Found", None, DOC);
    };
    let pull = hub.pulls[index].clone();
    if pull.merged || pull.state != "open" {
        return error(StatusCode::METHOD_NOT_ALLOWED, "Pull Request is not mergeable", None, DOC);
    }
    if let Some(sha) = body.get("sha").and_then(Value::as_str) {
        if sha != pull.head_sha {
            return error(
                StatusCode::CONFLICT,
                "Head branch was modified. Review and try the merge again.",
                None,
                DOC,
            );
        }
    }
    let base_ref = format!("refs/heads/{}", pull.base);
    let Some(base) = rev(&hub.bare, &base_ref) else {
        return error(StatusCode::METHOD_NOT_ALLOWED, "Base branch was deleted", None, DOC);
    };
    let Some(tree) = merged_tree(&hub.bare, &base, &pull.head_sha) else {
        return error(StatusCode::METHOD_NOT_ALLOWED, "Pull Request is not mergeable", None, DOC);
    };
    let method = body.get("merge_method").and_then(Value::as_str).unwrap_or("merge");
    let title = body.get("commit_title").and_then(Value::as_str).map_or_else(
        || format!("Merge pull request #{number} from {}/{}", hub.owner, pull.head),
        str::to_string,
    );
    let message = body.get("commit_message").and_then(Value::as_str).unwrap_or(&pull.title);
    let text = format!("{title}\n\n{message}");
    let (ok, commit) = match method {
        "merge" => {
            git(&hub.bare, &["commit-tree", &tree, "-p", &base, "-p", &pull.head_sha, "-m", &text])
        }
        "squash" => git(&hub.bare, &["commit-tree", &tree, "-p", &base, "-m", &text]),
        other => {
            let message = format!("Merge method {other} is not allowed on this repository");
            return error(StatusCode::METHOD_NOT_ALLOWED, &message, None, DOC);
        }
    };
    assert!(ok, "git commit-tree: {commit}");
    let (moved, out) = git(&hub.bare, &["update-ref", &base_ref, &commit, &base]);
    if !moved {
        return error(StatusCode::CONFLICT, &format!("Base branch was modified: {out}"), None, DOC);
    }
    let pull = &mut hub.pulls[index];
    pull.merged = true;
    pull.state = "closed";
    pull.merge_commit_sha = Some(commit.clone());
    pull.merged_at = Some(now());
    (
        StatusCode::OK,
        json!({ "sha": commit, "merged": true, "message": "Pull Request successfully merged" }),
    )
}
