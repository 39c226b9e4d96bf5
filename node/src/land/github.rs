//! The forge of `land.mode: pr`: GitHub's REST API, for exactly what a landing needs (the one
//! place that knows its wire format; each request and answer is a typed struct here).
//!
//! | call | endpoint | answers handled |
//! |---|---|---|
//! | [`GitHub::open`] | `POST /repos/{o}/{r}/pulls` | 201; 422 "A pull request already exists" → [`GitHub::find_open`] |
//! | [`GitHub::find_open`] | `GET /repos/{o}/{r}/pulls?head=o:branch&state=open` | 200 |
//! | [`GitHub::pull`] | `GET /repos/{o}/{r}/pulls/{n}` | 200 (`merged`, `mergeable` null while GitHub computes it) |
//! | [`GitHub::check_runs`] | `GET /repos/{o}/{r}/commits/{sha}/check-runs` | 200 |
//! | [`GitHub::reviews`] | `GET /repos/{o}/{r}/pulls/{n}/reviews` | 200 |
//! | [`GitHub::merge`] | `PUT /repos/{o}/{r}/pulls/{n}/merge` | 200; 405 not mergeable; 409 head modified |
//!
//! Any other answer is a [`ForgeError::Status`] with GitHub's `message`; the landing waits and
//! asks again at its next look. **Invariant:** the token is sent only in the `Authorization`
//! header and never logged (`Debug` shows no token).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::LandConfig;

/// GitHub's API when neither `land.api_url` nor `GITHUB_API_URL` names another.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Why the forge could not be asked, or what it refused.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// Neither `auth.json` nor the environment holds a token.
    #[error("no GitHub token: put `github_token` in auth.json or set GITHUB_TOKEN for the daemon")]
    NoToken,
    /// The repository's `owner/name` is not in the config and not in the remote's URL.
    #[error("cannot tell the GitHub repository from remote `{remote}` ({url}); set land.repo: owner/name")]
    NoRepository { remote: String, url: String },
    /// The request did not get an answer (connection, timeout).
    #[error("{endpoint}: {source}")]
    Transport {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    /// GitHub answered with an error status.
    #[error("{endpoint} answered {status}: {message}")]
    Status { endpoint: String, status: u16, message: String },
    /// A 2xx answer that does not have GitHub's documented shape.
    #[error("{endpoint}: the answer does not parse: {message}")]
    Body { endpoint: String, message: String },
}

type Result<T, E = ForgeError> = std::result::Result<T, E>;

/// Body of `POST /repos/{o}/{r}/pulls`.
#[derive(Debug, Serialize)]
pub struct NewPullV1<'a> {
    pub title: &'a str,
    /// The branch with the work (`ccm/<short id>`).
    pub head: &'a str,
    /// The target branch.
    pub base: &'a str,
    pub body: &'a str,
}

/// A pull request, as `GET /pulls/{n}` (and the list) answers it; the fields a landing reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Pull {
    pub number: i64,
    pub html_url: String,
    /// `open` or `closed`.
    pub state: String,
    /// Absent from the list's items.
    #[serde(default)]
    pub merged: bool,
    /// `null` while GitHub computes it.
    #[serde(default)]
    pub mergeable: Option<bool>,
    #[serde(default)]
    pub mergeable_state: Option<String>,
    pub head: PullHead,
    #[serde(default)]
    pub merge_commit_sha: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PullHead {
    #[serde(rename = "ref")]
    pub branch: String,
    pub sha: String,
}

/// Answer of `GET /commits/{ref}/check-runs`.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckRuns {
    pub total_count: i64,
    pub check_runs: Vec<CheckRun>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CheckRun {
    pub id: i64,
    pub name: String,
    /// `queued`, `in_progress`, `completed` (and `waiting`, `requested`, `pending`).
    pub status: String,
    /// Once completed: `success`, `failure`, `neutral`, `cancelled`, `skipped`, `timed_out`,
    /// `action_required`, `stale`.
    #[serde(default)]
    pub conclusion: Option<String>,
    #[serde(default)]
    pub output: CheckOutput,
}

impl CheckRun {
    pub fn completed(&self) -> bool {
        self.status == "completed"
    }

    /// A completed run whose conclusion keeps the pull request from merging.
    pub fn failed(&self) -> bool {
        self.completed()
            && matches!(
                self.conclusion.as_deref(),
                Some("failure" | "cancelled" | "timed_out" | "action_required" | "stale")
            )
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CheckOutput {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
}

/// An item of `GET /pulls/{n}/reviews`.
#[derive(Debug, Clone, Deserialize)]
pub struct Review {
    pub id: i64,
    /// `APPROVED`, `CHANGES_REQUESTED`, `COMMENTED`, `DISMISSED`, `PENDING`.
    pub state: String,
    #[serde(default)]
    pub body: Option<String>,
    /// The head commit the review was given on.
    #[serde(default)]
    pub commit_id: Option<String>,
    #[serde(default)]
    pub user: Option<User>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub login: String,
}

/// Body of `PUT /pulls/{n}/merge`.
#[derive(Debug, Serialize)]
pub struct MergeV1<'a> {
    pub commit_title: &'a str,
    /// The head the checks passed on: GitHub refuses (409) when the branch moved since.
    pub sha: &'a str,
    pub merge_method: &'a str,
}

/// Answer of `PUT /pulls/{n}/merge` (200).
#[derive(Debug, Clone, Deserialize)]
pub struct MergedV1 {
    pub sha: String,
    pub merged: bool,
    #[serde(default)]
    pub message: String,
}

/// What [`GitHub::merge`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// The base moved to this commit.
    Merged { sha: String },
    /// 405: GitHub will not merge it now (a conflict, or a rule of the branch), with its words.
    NotMergeable(String),
    /// 409: the head moved since it was looked at.
    HeadModified(String),
}

/// GitHub's error body: `message`, and for 422 the `errors` list.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorItem {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

impl ErrorBody {
    fn text(&self) -> String {
        let details: Vec<&str> =
            self.errors.iter().filter_map(|e| e.message.as_deref().or(e.code.as_deref())).collect();
        if details.is_empty() {
            self.message.clone()
        } else {
            format!("{} ({})", self.message, details.join("; "))
        }
    }
}

/// A client of one repository on GitHub.
#[derive(Clone)]
pub struct GitHub {
    http: reqwest::Client,
    /// The API's base, without a trailing slash.
    api: String,
    pub owner: String,
    pub name: String,
    token: String,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub")
            .field("api", &self.api)
            .field("owner", &self.owner)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The API base: `land.api_url`, else `GITHUB_API_URL`, else GitHub's.
pub fn api_url(land: &LandConfig) -> String {
    land.api_url
        .clone()
        .or_else(|| std::env::var("GITHUB_API_URL").ok().filter(|u| !u.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_API_URL.into())
        .trim_end_matches('/')
        .to_string()
}

/// `owner/name` of a GitHub remote URL (`git@github.com:o/r.git`, `https://github.com/o/r`):
/// the last two segments of its path; `None` for a local path.
pub fn repo_of_url(url: &str) -> Option<(String, String)> {
    let normalized = ccm_schema::repo_url::normalize(url);
    let path = normalized.strip_prefix("https://")?.split_once('/')?.1;
    let mut segments = path.rsplit('/');
    let name = segments.next().filter(|s| !s.is_empty())?;
    let owner = segments.next().filter(|s| !s.is_empty())?;
    Some((owner.to_string(), name.to_string()))
}

impl GitHub {
    /// A client for the repository `owner/name` at `api`.
    pub fn new(api: &str, owner: &str, name: &str, token: &str) -> Result<GitHub> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("ccm/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ForgeError::Transport { endpoint: api.into(), source })?;
        Ok(GitHub {
            http,
            api: api.trim_end_matches('/').to_string(),
            owner: owner.into(),
            name: name.into(),
            token: token.into(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/repos/{}/{}{path}", self.api, self.owner, self.name)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .bearer_auth(&self.token)
    }

    /// Sends a request; the status and body of any answer.
    async fn send(
        &self,
        endpoint: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<u8>)> {
        let answer = request
            .send()
            .await
            .map_err(|source| ForgeError::Transport { endpoint: endpoint.into(), source })?;
        let status = answer.status().as_u16();
        let body = answer
            .bytes()
            .await
            .map_err(|source| ForgeError::Transport { endpoint: endpoint.into(), source })?;
        Ok((status, body.to_vec()))
    }

    fn parse<T: serde::de::DeserializeOwned>(endpoint: &str, body: &[u8]) -> Result<T> {
        serde_json::from_slice(body)
            .map_err(|e| ForgeError::Body { endpoint: endpoint.into(), message: e.to_string() })
    }

    fn refused(endpoint: &str, status: u16, body: &[u8]) -> ForgeError {
        let error: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
        let message = if error.message.is_empty() {
            crate::text::head(&String::from_utf8_lossy(body), 300)
        } else {
            error.text()
        };
        ForgeError::Status { endpoint: endpoint.into(), status, message }
    }

    /// Opens a pull request of `head` onto `base`; the one already open for `head` when GitHub
    /// answers 422 "A pull request already exists".
    pub async fn open(&self, new: &NewPullV1<'_>) -> Result<Pull> {
        let endpoint = format!("POST /repos/{}/{}/pulls", self.owner, self.name);
        let request = self.request(reqwest::Method::POST, "/pulls").json(new);
        let (status, body) = self.send(&endpoint, request).await?;
        match status {
            200..=299 => Self::parse(&endpoint, &body),
            422 => {
                let error = Self::refused(&endpoint, status, &body);
                if !error.to_string().contains("already exists") {
                    return Err(error);
                }
                self.find_open(new.head).await?.ok_or(error)
            }
            _ => Err(Self::refused(&endpoint, status, &body)),
        }
    }

    /// The open pull request of branch `head` of this repository, if any.
    pub async fn find_open(&self, head: &str) -> Result<Option<Pull>> {
        let endpoint =
            format!("GET /repos/{}/{}/pulls?head={}:{head}", self.owner, self.name, self.owner);
        let request = self
            .request(reqwest::Method::GET, "/pulls")
            .query(&[("head", format!("{}:{head}", self.owner).as_str()), ("state", "open")]);
        let (status, body) = self.send(&endpoint, request).await?;
        if !(200..300).contains(&status) {
            return Err(Self::refused(&endpoint, status, &body));
        }
        let pulls: Vec<Pull> = Self::parse(&endpoint, &body)?;
        Ok(pulls.into_iter().find(|p| p.head.branch == head))
    }

    /// Pull request `number`.
    pub async fn pull(&self, number: i64) -> Result<Pull> {
        let endpoint = format!("GET /repos/{}/{}/pulls/{number}", self.owner, self.name);
        let request = self.request(reqwest::Method::GET, &format!("/pulls/{number}"));
        let (status, body) = self.send(&endpoint, request).await?;
        if !(200..300).contains(&status) {
            return Err(Self::refused(&endpoint, status, &body));
        }
        Self::parse(&endpoint, &body)
    }

    /// The check runs of commit `sha` (the first 100).
    pub async fn check_runs(&self, sha: &str) -> Result<CheckRuns> {
        let endpoint = format!("GET /repos/{}/{}/commits/{sha}/check-runs", self.owner, self.name);
        let request = self
            .request(reqwest::Method::GET, &format!("/commits/{sha}/check-runs"))
            .query(&[("per_page", "100")]);
        let (status, body) = self.send(&endpoint, request).await?;
        if !(200..300).contains(&status) {
            return Err(Self::refused(&endpoint, status, &body));
        }
        Self::parse(&endpoint, &body)
    }

    /// The reviews of pull request `number` (the first 100), oldest first.
    pub async fn reviews(&self, number: i64) -> Result<Vec<Review>> {
        let endpoint = format!("GET /repos/{}/{}/pulls/{number}/reviews", self.owner, self.name);
        let request = self
            .request(reqwest::Method::GET, &format!("/pulls/{number}/reviews"))
            .query(&[("per_page", "100")]);
        let (status, body) = self.send(&endpoint, request).await?;
        if !(200..300).contains(&status) {
            return Err(Self::refused(&endpoint, status, &body));
        }
        Self::parse(&endpoint, &body)
    }

    /// Merges pull request `number` at head `sha` with a merge commit titled `title`.
    pub async fn merge(&self, number: i64, sha: &str, title: &str) -> Result<Merge> {
        let endpoint = format!("PUT /repos/{}/{}/pulls/{number}/merge", self.owner, self.name);
        let body = MergeV1 { commit_title: title, sha, merge_method: "merge" };
        let request =
            self.request(reqwest::Method::PUT, &format!("/pulls/{number}/merge")).json(&body);
        let (status, body) = self.send(&endpoint, request).await?;
        match status {
            200..=299 => {
                let merged: MergedV1 = Self::parse(&endpoint, &body)?;
                if merged.merged {
                    Ok(Merge::Merged { sha: merged.sha })
                } else {
                    Ok(Merge::NotMergeable(merged.message))
                }
            }
            405 => Ok(Merge::NotMergeable(Self::refused(&endpoint, status, &body).message())),
            409 => Ok(Merge::HeadModified(Self::refused(&endpoint, status, &body).message())),
            _ => Err(Self::refused(&endpoint, status, &body)),
        }
    }
}

impl ForgeError {
    /// GitHub's own words, for an error status.
    fn message(&self) -> String {
        match self {
            ForgeError::Status { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// The token of `land.mode: pr`: `github_token` in `auth.json`, else `GITHUB_TOKEN`.
pub fn token(auth: Option<&crate::home::Auth>) -> Result<String> {
    auth.and_then(|a| a.github_token.clone())
        .or_else(|| std::env::var("GITHUB_TOKEN").ok())
        .filter(|t| !t.trim().is_empty())
        .ok_or(ForgeError::NoToken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_is_read_from_each_spelling_of_a_github_remote() {
        for url in [
            "git@github.com:octo-org/app.git",
            "https://github.com/octo-org/app",
            "ssh://git@github.com/octo-org/app.git",
            "https://x-access-token:secret@github.com/octo-org/app.git",
        ] {
            assert_eq!(
                repo_of_url(url),
                Some(("octo-org".to_string(), "app".to_string())),
                "{url}"
            );
        }
        assert_eq!(repo_of_url("/srv/git/app.git"), None);
    }

    #[test]
    fn the_clients_debug_form_shows_no_token() {
        let client = GitHub::new("http://127.0.0.1:1", "o", "r", "ghp_secret123").unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("ghp_secret123"), "{shown}");
        assert!(shown.contains("owner"), "{shown}");
    }

    #[test]
    fn a_failed_check_run_is_one_completed_with_a_blocking_conclusion() {
        let run = |status: &str, conclusion: Option<&str>| CheckRun {
            id: 1,
            name: "ci".into(),
            status: status.into(),
            conclusion: conclusion.map(str::to_string),
            output: CheckOutput::default(),
        };
        assert!(run("completed", Some("failure")).failed());
        assert!(run("completed", Some("timed_out")).failed());
        assert!(!run("completed", Some("success")).failed());
        assert!(!run("completed", Some("skipped")).failed());
        assert!(!run("in_progress", None).failed());
    }
}
