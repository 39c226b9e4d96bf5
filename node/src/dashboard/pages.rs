//! The pages (askama templates under `templates/`) and the forms they post.

use std::collections::BTreeSet;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use ccm_schema::types::short_id;
use ccm_schema::{TaskEvent, TaskState, Timestamp};
use serde::Deserialize;

use super::{charts, SignedIn};
use crate::daemon::{ApiError, AppState};
use crate::placement::Added;
use crate::store::{BoardFilter, NewTask, RetryPolicy};

/// Who the dashboard acts as in task logs and decisions.
const ACTOR: &str = "dashboard";
/// How much of an agent's output the task page reads, and the lines it shows of it (raw, and
/// as rendered).
const TAIL_BYTES: u64 = 64 * 1024;
const TAIL_LINES: usize = 60;
const READABLE_LINES: usize = 200;
/// The state changes the task page lists (the latest).
const HISTORY_ROWS: usize = 200;

/// What every page shows around its content.
pub struct Layout {
    pub title: String,
    pub active: &'static str,
    pub csrf: String,
    pub decisions: i64,
    pub alerts: i64,
    /// Agents starting or running (read with the badges' counts).
    pub live_agents: i64,
    pub system: String,
    /// What the page reloads on: `change` (outbox changes) or `activity` (anything).
    pub live: &'static str,
    /// The kinds of change the page shows (`*`: all); the header's badges need `decision` and
    /// `alert` on every page.
    pub kinds: &'static str,
    /// The task whose changes the page shows (its own page).
    pub task: String,
    /// The page marks its own parts to refresh (`data-refresh` and an id on each); otherwise
    /// `<main>` is one part.
    pub parts: bool,
}

async fn layout(
    state: &AppState,
    signed_in: &SignedIn,
    title: impl Into<String>,
    active: &'static str,
) -> Result<Layout, Response> {
    let (counts, system) =
        tokio::try_join!(state.store.dashboard_counts(), state.store.system()).map_err(failure)?;
    Ok(Layout {
        title: title.into(),
        active,
        csrf: signed_in.session.csrf.clone(),
        decisions: counts.pending_decisions,
        alerts: counts.open_alerts,
        live_agents: counts.live_agents,
        system: system.name,
        live: "change",
        kinds: match active {
            "tasks" => "task context decision alert fleet",
            "decisions" | "alerts" => "decision alert",
            _ => "*",
        },
        task: String::new(),
        parts: false,
    })
}

pub(super) fn failure(error: impl Into<ApiError>) -> Response {
    let error: ApiError = error.into();
    if let ApiError::Internal(detail) = &error {
        tracing::error!(error = %detail, "dashboard request failed");
    }
    message(error.status_code(), "Something went wrong", &error.to_string())
}

fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot render the page: {e}"))
            .into_response(),
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct Message<'a> {
    heading: &'a str,
    text: &'a str,
    refresh: Option<&'a str>,
}

/// A page with one message (sign-in problems, refusals, errors).
pub fn message(status: StatusCode, heading: &str, text: &str) -> Response {
    (status, render(&Message { heading, text, refresh: None })).into_response()
}

/// A page that moves on to `to` at once.
pub fn redirect_page(to: &str) -> Response {
    render(&Message { heading: "Signed in", text: "Opening the dashboard…", refresh: Some(to) })
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// A cost, or "unknown" when a CLI reported none (never shown as zero).
fn cost(usd: Option<f64>) -> String {
    usd.map_or_else(|| "unknown".to_string(), dollars)
}

fn dollars(usd: f64) -> String {
    // `+ 0.0` turns the -0.0 of an empty sum into 0.0.
    format!("${:.2}", usd + 0.0)
}

// ----- overview -----

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    layout: Layout,
    states: Vec<(String, i64)>,
    live_agents: i64,
    cost_today: String,
    cost_chart: String,
    repo_chart: String,
    queue_chart: String,
    outbox_pending: i64,
    /// The fleet, with sync configured.
    fleet: Option<FleetSection>,
}

/// The overview's fleet: systems with presence and tasks per state, open alerts, cost per
/// system per day; and where it comes from (live, or the last known state and its age).
pub struct FleetSection {
    pub status: String,
    pub unreachable: bool,
    pub systems: Vec<FleetSystemRow>,
    pub alerts: Vec<FleetAlertRow>,
    /// `(day, system, cost)`, newest day first.
    pub costs: Vec<(String, String, String)>,
}

pub struct FleetSystemRow {
    pub name: String,
    pub presence: String,
    pub reason: String,
    pub slots: String,
    /// `state count` of each state it has tasks in.
    pub states: Vec<(String, i64)>,
    pub cost_today: String,
}

pub struct FleetAlertRow {
    pub system: String,
    pub severity: String,
    pub kind: String,
    pub message: String,
}

/// What the dashboard knows of the fleet now, with sync configured.
fn fleet_known(signed_in: &SignedIn) -> Option<super::fleet::Known> {
    signed_in.dashboard.fleet.as_ref().map(|view| view.known())
}

fn presence_reason(s: &ccm_sync::wire::FleetSystemV1) -> String {
    match (&s.reason, s.presence.as_str()) {
        (Some(reason), _) => reason.clone(),
        (None, "online") => "heartbeat on time".into(),
        (None, other) => other.to_string(),
    }
}

fn fleet_section(known: &super::fleet::Known, now: Timestamp) -> FleetSection {
    let overview = known.overview.as_deref().cloned().unwrap_or_default();
    let systems = overview
        .systems
        .iter()
        .map(|s| FleetSystemRow {
            name: s.name.clone(),
            presence: s.presence.clone(),
            reason: presence_reason(s),
            slots: format!("{} of {} in use", s.slots_used, s.slots),
            states: overview
                .tasks_by_state
                .iter()
                .filter(|c| c.system_name == s.name)
                .map(|c| (c.state.clone(), c.tasks))
                .collect(),
            cost_today: dollars(s.cost_today),
        })
        .collect();
    let mut costs: Vec<(String, String, String)> = overview
        .daily_cost
        .iter()
        .map(|c| (c.day.clone(), c.system_name.clone(), dollars(c.cost_usd)))
        .collect();
    costs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    FleetSection {
        status: known.status(now),
        unreachable: known.unreachable.is_some(),
        systems,
        alerts: overview
            .open_alerts
            .iter()
            .map(|a| FleetAlertRow {
                system: a.system_name.clone(),
                severity: a.severity.clone(),
                kind: a.kind.clone(),
                message: a.message.clone(),
            })
            .collect(),
        costs,
    }
}

pub async fn overview(signed_in: SignedIn, State(state): State<AppState>) -> Response {
    let page = async {
        let store = &state.store;
        let now = Timestamp::now();
        let today = Timestamp(now.0 - now.0 % 86_400_000);
        let week = Timestamp(today.0 - 13 * 86_400_000);
        let hours = 12;
        // Independent reads, each on a reader of its own when one is free.
        let (layout, read) =
            tokio::join!(layout(&state, &signed_in, "Overview", "overview"), async {
                tokio::try_join!(
                    store.state_counts(),
                    store.cost_per_day(week),
                    store.cost_per_repo(),
                    store.waiting_changes(now, hours),
                    store.outbox_pending(),
                )
            });
        let layout = layout?;
        let (counts, per_day, per_repo, changes, outbox_pending) = read.map_err(failure)?;
        let live = layout.live_agents;
        let cost_today =
            per_day.iter().filter(|d| d.day == today.0 / 86_400_000).map(|d| d.cost_usd).sum();
        let days: Vec<(String, f64, String)> = (0..14)
            .map(|i| {
                let day = week.0 / 86_400_000 + i;
                let cost = per_day.iter().find(|d| d.day == day).map_or(0.0, |d| d.cost_usd);
                let date = Timestamp(day * 86_400_000).to_string();
                (date[8..10].to_string(), cost, format!("{}: {}", &date[..10], dollars(cost)))
            })
            .collect();
        let repos: Vec<(String, f64, String)> = per_repo
            .into_iter()
            .map(|(repo, cost)| {
                let name = repo.unwrap_or_else(|| "(none)".into());
                let short = name.rsplit('/').next().unwrap_or(&name).chars().take(10).collect();
                (short, cost, format!("{name}: {}", dollars(cost)))
            })
            .collect();
        let waiting = counts.get(&TaskState::Created).copied().unwrap_or(0)
            + counts.get(&TaskState::Queued).copied().unwrap_or(0);
        let queue = charts::queue_depth(waiting, &changes, hours);
        Ok::<_, Response>(render(&Overview {
            layout,
            states: TaskState::ALL
                .iter()
                .map(|s| (s.to_string(), counts.get(s).copied().unwrap_or(0)))
                .collect(),
            live_agents: live,
            cost_today: dollars(cost_today),
            cost_chart: charts::bars("cost per day, last 14 days", &days, dollars),
            repo_chart: if repos.is_empty() {
                String::new()
            } else {
                charts::bars("cost per repository", &repos, dollars)
            },
            queue_chart: charts::bars("tasks waiting, last 12 hours", &queue, |n| {
                format!("{n:.0}")
            }),
            outbox_pending,
            fleet: fleet_known(&signed_in).map(|known| fleet_section(&known, now)),
        }))
    };
    page.await.unwrap_or_else(|r| r)
}

// ----- board -----

pub struct Card {
    pub id: String,
    pub short: String,
    pub title: String,
    pub repo: String,
    pub profile: String,
    pub priority: i64,
    pub attempts: u32,
    pub changed: String,
    /// The land state's label (`landed`, `landing`, ...), empty when the task is in no queue.
    pub land: String,
    /// Its page: `/tasks/{id}` here, `/routed/{id}` for a task routed from here, none for
    /// another system's task.
    pub href: String,
    /// Where it runs, when not here (a routed task's system, or the fleet task's), and how it
    /// is known: `routed` (sent from here) or `fleet` (the operator's view).
    pub system: String,
    pub origin: &'static str,
}

pub struct Column {
    pub state: String,
    pub count: i64,
    pub cards: Vec<Card>,
    /// Tasks of the column after this page, and the address of the next and previous pages.
    pub after: i64,
    pub next: String,
    pub previous: String,
}

#[derive(Template)]
#[template(path = "board.html")]
struct Board {
    layout: Layout,
    filter: BoardQuery,
    columns: Vec<Column>,
    states: Vec<String>,
    repos: Vec<String>,
    profiles: Vec<String>,
    /// The systems the filter offers: this one, then the fleet's.
    systems: Vec<String>,
    shown: usize,
    /// Where the fleet's cards come from, with sync configured.
    fleet: String,
}

/// The board's column for a state the central names (`leased`, `waiting_sync`, `done`, ...).
fn column_of(state: &str) -> &'static str {
    match state {
        "waiting_sync" | "leased" | "queued" => "queued",
        "running" | "executing" => "executing",
        "done" | "complete" => "complete",
        "refused" | "failed" => "failed",
        other => {
            TaskState::ALL.iter().find(|s| s.as_str() == other).map_or("queued", |s| s.as_str())
        }
    }
}

/// Whether a card of another system passes the board's filters.
fn remote_matches(query: &BoardQuery, state: &str, title: &str, id: &str, repo: &str) -> bool {
    let q = query.q.trim().to_lowercase();
    (query.state.is_empty() || query.state == state)
        && (query.repo.is_empty()
            || ccm_schema::repo_url::normalize(&query.repo)
                == ccm_schema::repo_url::normalize(repo))
        && (q.is_empty() || title.to_lowercase().contains(&q) || id.starts_with(&q))
}

/// The tasks of other systems the board shows: those routed from here (with the system that
/// runs them), then, with an operator signed in, the fleet's other tasks.
async fn remote_cards(
    state: &AppState,
    known: Option<&super::fleet::Known>,
    query: &BoardQuery,
    here: &str,
    now: Timestamp,
) -> Result<Vec<(String, Card)>, Response> {
    let mut cards = Vec::new();
    if query.page > 0 || !query.profile.is_empty() || query.system == here {
        return Ok(cards);
    }
    let routed = state.store.routed_tasks().await.map_err(failure)?;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for task in routed.iter().rev().take(200) {
        let id = task.id.to_string();
        seen.insert(id.clone());
        let column = column_of(&task.state());
        let system = task.system().unwrap_or_default().to_string();
        let repo = task.repo.clone().unwrap_or_default();
        if !remote_matches(query, column, &task.title, &id, &repo)
            || (!query.system.is_empty() && query.system != system)
        {
            continue;
        }
        let changed = task
            .central
            .as_ref()
            .and_then(|c| c.updated_at.as_deref())
            .map_or_else(|| task.created_at.ago(now), |at| central_age(Some(at), now));
        cards.push((
            column.to_string(),
            Card {
                short: short_id(&task.id),
                id: id.clone(),
                title: task.title.clone(),
                repo,
                profile: task.profile.clone().unwrap_or_default(),
                priority: task.priority,
                attempts: task.central.as_ref().map_or(0, |c| c.attempt.max(0) as u32),
                changed,
                land: String::new(),
                href: format!("/routed/{id}"),
                system,
                origin: "routed",
            },
        ));
    }
    for task in known.and_then(|k| k.tasks.as_deref()).into_iter().flatten() {
        let id = task.task_id.to_string();
        if task.system_name == here || seen.contains(&id) {
            continue;
        }
        let column = column_of(&task.state);
        let repo = task.repo_url.clone().unwrap_or_default();
        if !remote_matches(query, column, &task.title, &id, &repo)
            || (!query.system.is_empty() && query.system != task.system_name)
        {
            continue;
        }
        cards.push((
            column.to_string(),
            Card {
                short: short_id(&task.task_id),
                id,
                title: task.title.clone(),
                repo,
                profile: task.profile.clone().unwrap_or_default(),
                priority: 0,
                attempts: task.attempts.max(0) as u32,
                changed: central_age(task.updated_at.as_deref(), now),
                land: String::new(),
                href: String::new(),
                system: task.system_name.clone(),
                origin: "fleet",
            },
        ));
    }
    Ok(cards)
}

/// The board's filters, as the form sends them.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct BoardQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    repo: String,
    #[serde(default)]
    profile: String,
    /// `` (all), this system's name (its own tasks), or another system's (the tasks it runs:
    /// routed from here, or the operator's view of the fleet).
    #[serde(default)]
    system: String,
    #[serde(default)]
    q: String,
    /// Which page of one state's column (with `state`), from 0.
    #[serde(default)]
    page: i64,
}

impl BoardQuery {
    /// The board's address for `state`'s column at `page`, with the other filters kept.
    fn column_page(&self, state: &str, page: i64) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("state", state);
        for (name, value) in [("repo", &self.repo), ("profile", &self.profile), ("q", &self.q)] {
            if !value.is_empty() {
                query.append_pair(name, value);
            }
        }
        if !self.system.is_empty() {
            query.append_pair("system", &self.system);
        }
        if page > 0 {
            query.append_pair("page", &page.to_string());
        }
        format!("/tasks?{}", query.finish())
    }
}

pub async fn board(
    signed_in: SignedIn,
    State(state): State<AppState>,
    Query(query): Query<BoardQuery>,
) -> Response {
    let page = async {
        let mut layout = layout(&state, &signed_in, "Tasks", "tasks").await?;
        // A change of a few columns refreshes only them (`board.html`).
        layout.parts = true;
        let filter = BoardFilter {
            state: Some(query.state.clone()),
            repo: Some(query.repo.clone()),
            profile: Some(query.profile.clone()),
            q: Some(query.q.clone()),
        };
        let local = query.system.is_empty() || query.system == layout.system;
        let (cards, counts) = if local {
            state.store.board(&filter, query.page).await.map_err(failure)?
        } else {
            Default::default()
        };
        let now = Timestamp::now();
        // Every state has its column, an empty one collapsed: the board does not reflow as
        // tasks move.
        let mut columns: Vec<Column> = TaskState::ALL
            .iter()
            .map(|s| {
                let count = counts.iter().find(|(c, _)| c == s).map_or(0, |(_, n)| *n);
                Column {
                    state: s.to_string(),
                    count,
                    cards: Vec::new(),
                    after: 0,
                    next: query.column_page(s.as_str(), query.page + 1),
                    previous: if query.page > 0 {
                        query.column_page(s.as_str(), query.page - 1)
                    } else {
                        String::new()
                    },
                }
            })
            .collect();
        let shown = cards.len();
        let before = query.page.max(0) * crate::store::BOARD_COLUMN_LIMIT;
        for task in cards {
            if let Some(column) = columns.iter_mut().find(|c| c.state == task.state.to_string()) {
                column.cards.push(Card {
                    short: task.id.chars().take(8).collect(),
                    title: task.title,
                    repo: task.repo.unwrap_or_default(),
                    profile: task.profile,
                    priority: task.priority,
                    attempts: task.attempts,
                    changed: task.updated_at.ago(now),
                    land: task.land_state.map(|l| l.label().to_string()).unwrap_or_default(),
                    href: format!("/tasks/{}", task.id),
                    id: task.id,
                    system: String::new(),
                    origin: "",
                });
            }
        }
        for column in &mut columns {
            column.after = (column.count - before - column.cards.len() as i64).max(0);
        }
        let known = fleet_known(&signed_in);
        let remote = remote_cards(&state, known.as_ref(), &query, &layout.system, now).await?;
        let shown = shown + remote.len();
        for (state, card) in remote {
            if let Some(column) = columns.iter_mut().find(|c| c.state == state) {
                column.count += 1;
                column.cards.push(card);
            }
        }
        let contexts = state.store.contexts().await.map_err(failure)?;
        let mut repos: BTreeSet<String> = contexts.into_iter().filter_map(|c| c.repo_url).collect();
        let mut systems = vec![layout.system.clone()];
        if let Some(overview) = known.as_ref().and_then(|k| k.overview.as_deref()) {
            for system in &overview.systems {
                repos.extend(system.repos.iter().cloned());
                if system.name != layout.system {
                    systems.push(system.name.clone());
                }
            }
        }
        let fleet = match &known {
            Some(k) if k.tasks.is_some() => format!(
                "Fleet: {}; with the operator's session: every task of the fleet.",
                k.status(now)
            ),
            Some(k) => format!(
                "Fleet: {}; tasks routed from here show where they run (`ccm sync operator` on this node shows every task of the fleet).",
                k.status(now)
            ),
            None => String::new(),
        };
        Ok::<_, Response>(render(&Board {
            layout,
            filter: query,
            columns,
            states: TaskState::ALL.iter().map(ToString::to_string).collect(),
            repos: repos.into_iter().collect(),
            profiles: state.config.current().profiles.keys().cloned().collect(),
            systems,
            shown,
            fleet,
        }))
    };
    page.await.unwrap_or_else(|r| r)
}

// ----- new task -----

#[derive(Template)]
#[template(path = "new_task.html")]
struct NewTaskPage {
    layout: Layout,
    /// `(value, label)`: repository URL (or path) of each known context.
    repos: Vec<(String, String)>,
    profiles: Vec<String>,
    default_profile: String,
    error: Option<String>,
}

pub async fn new_task(signed_in: SignedIn, State(state): State<AppState>) -> Response {
    new_task_page(&state, &signed_in, None).await
}

async fn new_task_page(state: &AppState, signed_in: &SignedIn, error: Option<String>) -> Response {
    let page = async {
        let mut layout = layout(state, signed_in, "New task", "new").await?;
        layout.live = "";
        let contexts = state.store.contexts().await.map_err(failure)?;
        let mut repos: Vec<(String, String)> = contexts
            .iter()
            .map(|c| {
                let value = c.repo_url.clone().unwrap_or_else(|| c.path.clone());
                let label = format!(
                    "{} (checkout here: {})",
                    c.repo_url.as_deref().unwrap_or("no remote"),
                    c.path
                );
                (value, label)
            })
            .collect();
        // Every repository of the fleet, with the systems that hold it: the form places the
        // task as `ccm task add` does (`placement`), routing it where its repository is.
        let here: BTreeSet<String> = contexts.iter().filter_map(|c| c.repo_url.clone()).collect();
        if let Some(overview) = fleet_known(signed_in).and_then(|k| k.overview) {
            let mut holders: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
            for system in &overview.systems {
                if system.name == layout.system {
                    continue;
                }
                for repo in &system.repos {
                    holders.entry(repo).or_default().push(&system.name);
                }
            }
            for (repo, systems) in holders {
                if !here.contains(repo) {
                    repos.push((repo.to_string(), format!("{repo} (on {})", systems.join(", "))));
                }
            }
        }
        let status = if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
        Ok::<_, Response>(
            (
                status,
                render(&NewTaskPage {
                    layout,
                    repos,
                    profiles: state.config.current().profiles.keys().cloned().collect(),
                    default_profile: state.config.current().tasks.profile.clone(),
                    error,
                }),
            )
                .into_response(),
        )
    };
    page.await.unwrap_or_else(|r| r)
}

#[derive(Deserialize)]
pub struct NewTaskForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    repo: String,
    #[serde(default)]
    profile: String,
    #[serde(default)]
    verify: String,
    #[serde(default)]
    priority: String,
    /// Ids or id prefixes, separated by commas or spaces.
    #[serde(default)]
    depends_on: String,
}

fn given(text: String) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

pub async fn create_task(
    signed_in: SignedIn,
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<NewTaskForm>,
) -> Response {
    if let Err(refused) = signed_in.check_form(&headers, &form.csrf) {
        return refused;
    }
    let priority = match form.priority.trim() {
        "" => 0,
        p => match p.parse() {
            Ok(p) => p,
            Err(_) => {
                let error = format!("priority: must be a whole number, got `{p}`");
                return new_task_page(&state, &signed_in, Some(error)).await;
            }
        },
    };
    let new = NewTask {
        title: form.title,
        prompt: given(form.prompt),
        repo: given(form.repo),
        profile: given(form.profile),
        verify: given(form.verify),
        priority,
        depends_on: form
            .depends_on
            .split([',', ' ', '\n'])
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect(),
        ..NewTask::default()
    };
    match state.add_task(new, None, ACTOR.to_string()).await {
        Ok(Added::Here(task)) => see_other(&format!("/tasks/{}", task.id)),
        // Its page says why it left this system and where it will run, then follows it.
        Ok(Added::Routed(routed)) => see_other(&format!(
            "/routed/{}?because={}",
            routed.task.id,
            form_urlencoded::byte_serialize(routed.routed_because.as_bytes()).collect::<String>()
        )),
        Err(e) => {
            let error: ApiError = e.into();
            new_task_page(&state, &signed_in, Some(error.to_string())).await
        }
    }
}

// ----- task detail -----

pub struct LogRow {
    pub at: String,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub actor: String,
}

pub struct RunRow {
    pub number: u32,
    pub agent: String,
    pub started: String,
    pub ended: String,
    pub outcome: String,
    pub verify_output: String,
    pub last_message: String,
}

pub struct HookRow {
    pub at: String,
    pub event: String,
    pub tool: String,
    pub detail: String,
}

pub struct ReportRow {
    pub attempt: u32,
    pub diff_stat: String,
    pub commits: Vec<String>,
    pub verdict: String,
    pub review: String,
    pub last_message: String,
}

#[derive(Template)]
#[template(path = "task.html")]
struct TaskPage {
    layout: Layout,
    id: String,
    title: String,
    prompt: String,
    state: String,
    repo: String,
    profile: String,
    workflow: String,
    verify: String,
    priority: i64,
    attempts: u32,
    max_attempts: u32,
    created: String,
    strip: String,
    /// Says when the strip leaves out older changes.
    strip_note: String,
    history: Vec<LogRow>,
    runs: Vec<RunRow>,
    /// The output's last lines as raw JSON, and as `ccm task logs` renders them.
    tail: String,
    readable: String,
    tail_agent: String,
    hooks: Vec<HookRow>,
    reports: Vec<ReportRow>,
    cost: String,
    tokens_in: i64,
    tokens_out: i64,
    /// How full the latest agent's context is (`ctx 62%`), `-` when unknown.
    context: String,
    depends_on: Vec<(String, String)>,
    claims: Vec<String>,
    /// Change requests the task made or got: `(line, state)`.
    change_requests: Vec<(String, String)>,
    touched: Vec<String>,
    /// Predicted conflicts: `(other task's id or empty for the target, line)`.
    conflicts: Vec<(String, String)>,
    actions: Vec<(&'static str, &'static str, &'static str)>,
    /// The branch's diff with its comment forms and buttons (`review.rs`).
    review: Option<super::review::ReviewSection>,
}

/// The events the operator may send a task in `state`, as `(event, button label, class)`.
fn actions(state: TaskState) -> Vec<(&'static str, &'static str, &'static str)> {
    use TaskState::*;
    let mut actions = Vec::new();
    if matches!(state, Blocked | Failed | Alert | Cancelled) {
        actions.push(("retry", "Retry", "primary"));
    }
    if state == Alert {
        actions.push(("accept", "Accept", "primary"));
    }
    if !matches!(state, Complete | Failed | Cancelled) {
        actions.push(("cancel", "Cancel", "danger"));
    }
    actions
}

/// The last whole lines of an agent's output log (at most [`TAIL_BYTES`]).
async fn tail(path: std::path::PathBuf) -> Vec<String> {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let Ok(mut file) = tokio::fs::File::open(&path).await else { return Vec::new() };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_BYTES);
    if file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).await.is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    text.lines().skip(usize::from(start > 0)).map(str::to_string).collect()
}

/// The last `count` of `lines`, joined.
fn last_lines(lines: &[String], count: usize) -> String {
    lines[lines.len().saturating_sub(count)..].join("\n")
}

pub async fn task(
    signed_in: SignedIn,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    let page = async {
        let store = &state.store;
        let detail = store.task(&id).await.map_err(failure)?;
        let task = &detail.task;
        let mut layout =
            layout(&state, &signed_in, format!("Task {}", task.short_id()), "tasks").await?;
        layout.live = "activity";
        layout.kinds = "decision alert";
        layout.task = task.id.to_string();
        let now = Timestamp::now();
        let agents = store.task_agents(task.id).await.map_err(failure)?;
        let latest = agents.iter().max_by_key(|a| a.started_at);
        let tail_text = match latest {
            Some(agent) => tail(std::path::Path::new(&agent.dir).join("output.log")).await,
            None => Vec::new(),
        };
        let hooks = store.task_hook_events(&task.id.to_string()).await.map_err(failure)?;
        let claims = store.claims().await.map_err(failure)?;
        let id_text = task.id.to_string();
        let change_requests: Vec<(String, String)> = store
            .change_requests()
            .await
            .map_err(failure)?
            .into_iter()
            .filter(|r| {
                r.requester_task == id_text
                    || r.owner == id_text
                    || r.forwarded_to.as_deref() == Some(id_text.as_str())
            })
            .map(|r| {
                let role = if r.requester_task == id_text {
                    format!("asked of {}", short_owner(&r.owner))
                } else {
                    format!("asked by {}", &r.requester_task[..8])
                };
                let reason = r.resolution.as_deref().map(|w| format!(": {w}")).unwrap_or_default();
                (format!("{} {} ({role}){reason}", &r.id[..8], r.path), r.state.to_string())
            })
            .collect();
        let reports = detail
            .reports
            .iter()
            .map(|r| {
                let work = &r.summary.0["work"];
                ReportRow {
                    attempt: r.attempt,
                    diff_stat: work["diff_stat"].as_str().unwrap_or_default().to_string(),
                    commits: work["commits"]
                        .as_array()
                        .map(|c| {
                            c.iter()
                                .map(|c| {
                                    let sha = c["sha"].as_str().unwrap_or_default();
                                    format!(
                                        "{} {}",
                                        &sha[..sha.len().min(8)],
                                        c["subject"].as_str().unwrap_or_default()
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    verdict: r.verdict.clone().unwrap_or_default(),
                    review: r.review.clone().unwrap_or_default(),
                    last_message: r.summary.0["last_message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                }
            })
            .collect();
        Ok::<_, Response>(render(&TaskPage {
            layout,
            id: id_text.clone(),
            title: task.title.clone(),
            prompt: task.prompt.clone(),
            state: task.shown_state().to_string(),
            repo: task.repo.clone().unwrap_or_default(),
            profile: task.profile.clone(),
            workflow: task.workflow.clone().unwrap_or_default(),
            verify: task.verify.clone().unwrap_or_default(),
            priority: task.priority,
            attempts: task.attempts,
            max_attempts: task.max_attempts,
            created: task.created_at.to_string(),
            strip: charts::state_strip(&detail.log, now),
            strip_note: if detail.log.len() > charts::STRIP_CHANGES {
                format!(" (the last {} of {} changes)", charts::STRIP_CHANGES, detail.log.len())
            } else {
                String::new()
            },
            history: detail
                .log
                .iter()
                .skip(detail.log.len().saturating_sub(HISTORY_ROWS))
                .map(|e| LogRow {
                    at: e.at.to_string(),
                    from: e.from_state.map(|s| s.to_string()).unwrap_or_default(),
                    to: e.to_state.to_string(),
                    reason: e.reason.clone(),
                    actor: e.actor.clone(),
                })
                .collect(),
            runs: detail
                .runs
                .iter()
                .map(|r| RunRow {
                    number: r.number,
                    agent: short_id(&r.agent_id),
                    started: r.started_at.to_string(),
                    ended: r.ended_at.map(|t| t.to_string()).unwrap_or_else(|| "running".into()),
                    outcome: r.outcome.clone().unwrap_or_default(),
                    verify_output: r.verify_output.clone().unwrap_or_default(),
                    last_message: r.last_message.clone().unwrap_or_default(),
                })
                .collect(),
            readable: last_lines(
                &tail_text
                    .iter()
                    .flat_map(|line| crate::agents::render::render(line))
                    .collect::<Vec<_>>(),
                READABLE_LINES,
            ),
            tail: last_lines(&tail_text, TAIL_LINES),
            tail_agent: latest.map(|a| a.short_id()).unwrap_or_default(),
            hooks: hooks
                .iter()
                .rev()
                .take(200)
                .map(|h| HookRow {
                    at: h.at.to_string(),
                    event: h.event.clone(),
                    tool: h.tool.clone().unwrap_or_default(),
                    detail: h.problem.clone().unwrap_or_default(),
                })
                .collect(),
            reports,
            cost: cost(agents.iter().map(|a| a.cost_usd).sum()),
            tokens_in: agents.iter().map(|a| a.input_tokens).sum(),
            tokens_out: agents.iter().map(|a| a.output_tokens).sum(),
            context: latest.map(|a| a.context_label()).unwrap_or_else(|| "-".into()),
            depends_on: task.depends_on.iter().map(|d| (d.to_string(), short_id(d))).collect(),
            claims: claims
                .iter()
                .filter(|c| c.task_id == id_text)
                .map(|c| format!("{} {}", c.repo, c.path))
                .collect(),
            change_requests,
            touched: detail.touched_files.clone(),
            conflicts: detail
                .conflicts
                .iter()
                .map(|c| {
                    let other = match &c.other {
                        Some(o) if o.task_id == id_text => &c.task,
                        Some(o) => o,
                        None => return (String::new(), c.describe_from(&id_text)),
                    };
                    let link =
                        if other.system.is_none() { other.task_id.clone() } else { String::new() };
                    (link, c.describe_from(&id_text))
                })
                .collect(),
            actions: actions(task.state),
            review: super::review::section(&state, &detail).await,
        }))
    };
    page.await.unwrap_or_else(|r| r)
}

#[derive(Deserialize)]
pub struct EventForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    event: String,
}

pub async fn task_event(
    signed_in: SignedIn,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<EventForm>,
) -> Response {
    if let Err(refused) = signed_in.check_form(&headers, &form.csrf) {
        return refused;
    }
    let event = match form.event.as_str() {
        "cancel" => TaskEvent::Cancel,
        "retry" => TaskEvent::Retry,
        "accept" => TaskEvent::Accept,
        other => {
            return message(
                StatusCode::BAD_REQUEST,
                "Refused",
                &format!("event: must be cancel, retry or accept, got `{other}`"),
            )
        }
    };
    let reason = format!("{} from the dashboard", event.name());
    let policy = RetryPolicy::from(&*state.config.current());
    match state.store.apply_event(&id, event, &reason, ACTOR, policy).await {
        Ok(task) => {
            state.metrics.count_event(event.name());
            state.wake();
            see_other(&format!("/tasks/{}", task.id))
        }
        Err(e) => failure(e),
    }
}

// ----- decisions -----

pub struct DecisionRow {
    pub id: String,
    /// A tool call waiting for approval (listed first).
    pub approval: bool,
    /// When an approval is answered by default, and with what (empty for other decisions).
    pub deadline: String,
    pub task: Option<(String, String)>,
    pub question: String,
    pub options: Vec<String>,
    pub answer: String,
    pub by: String,
    pub asked: String,
}

#[derive(Template)]
#[template(path = "decisions.html")]
struct Decisions {
    layout: Layout,
    pending: Vec<DecisionRow>,
    answered: Vec<DecisionRow>,
}

pub async fn decisions(signed_in: SignedIn, State(state): State<AppState>) -> Response {
    let page = async {
        let layout = layout(&state, &signed_in, "Decisions", "decisions").await?;
        let now = Timestamp::now();
        let approvals = state.config.current().approvals.clone();
        let mut decisions = state.store.decisions().await.map_err(failure)?;
        // Pending approvals first, the nearest deadline first: a tool call waits on each.
        decisions.sort_by_key(|d| {
            (
                d.answered_at.is_some(),
                d.kind != ccm_schema::DecisionKind::ApproveTool,
                d.created_at.0,
            )
        });
        let rows: Vec<DecisionRow> = decisions
            .into_iter()
            .take(100)
            .map(|d| DecisionRow {
                id: d.id.to_string(),
                approval: d.kind == ccm_schema::DecisionKind::ApproveTool,
                deadline: if d.kind == ccm_schema::DecisionKind::ApproveTool {
                    let at = Timestamp(d.created_at.0 + approvals.timeout_secs as i64 * 1000);
                    let left = (at.0 - now.0).max(0) / 1000;
                    format!(
                        "answered `{}` by default at {} (in {}m {:02}s)",
                        serde_json::to_value(approvals.default)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        at,
                        left / 60,
                        left % 60
                    )
                } else {
                    String::new()
                },
                task: d.task_id.map(|t| (t.clone(), t.chars().take(8).collect())),
                question: d.question,
                options: d.options.0,
                answer: d.answer.unwrap_or_default(),
                by: d.answered_by.unwrap_or_default(),
                asked: d.created_at.ago(now),
            })
            .collect();
        let (pending, answered) = rows.into_iter().partition(|d| d.answer.is_empty());
        Ok::<_, Response>(render(&Decisions { layout, pending, answered }))
    };
    page.await.unwrap_or_else(|r| r)
}

#[derive(Deserialize)]
pub struct AnswerForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    answer: String,
}

pub async fn answer_decision(
    signed_in: SignedIn,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<AnswerForm>,
) -> Response {
    if let Err(refused) = signed_in.check_form(&headers, &form.csrf) {
        return refused;
    }
    let policy = RetryPolicy::from(&*state.config.current());
    match state.store.answer_decision(&id, &form.answer, ACTOR, policy).await {
        Ok(_) => {
            state.decisions.notify_waiters();
            state.wake();
            see_other("/decisions")
        }
        Err(e) => failure(e),
    }
}

// ----- agents -----

pub struct AgentRow {
    pub short: String,
    pub task: String,
    pub task_short: String,
    pub kind: String,
    pub profile: String,
    pub status: String,
    pub heartbeat: String,
    pub cost: String,
    pub tokens: String,
    /// How full its context is (`ctx 62%`), `-` when unknown.
    pub context: String,
    /// Whether its window is there to attach to.
    pub live: bool,
}

/// Agents no longer running that the agents page lists, the most recently started.
const AGENTS_ENDED: i64 = 200;

#[derive(Template)]
#[template(path = "agents.html")]
struct Agents {
    layout: Layout,
    agents: Vec<AgentRow>,
}

pub async fn agents(signed_in: SignedIn, State(state): State<AppState>) -> Response {
    let page = async {
        let mut layout = layout(&state, &signed_in, "Agents", "agents").await?;
        layout.live = "activity";
        let now = Timestamp::now();
        let agents = state
            .store
            .agents(Some(AGENTS_ENDED))
            .await
            .map_err(failure)?
            .into_iter()
            .map(|a| AgentRow {
                context: a.context_label(),
                short: a.short_id(),
                task: a.task_id.to_string(),
                task_short: short_id(&a.task_id),
                kind: format!("{:?}", a.kind).to_lowercase(),
                profile: a.profile,
                status: format!("{:?}", a.status).to_lowercase(),
                heartbeat: a.last_heartbeat.ago(now),
                cost: cost(a.cost_usd),
                tokens: format!("{} in / {} out", a.input_tokens, a.output_tokens),
                live: a.status.is_live(),
            })
            .collect();
        Ok::<_, Response>(render(&Agents { layout, agents }))
    };
    page.await.unwrap_or_else(|r| r)
}

// ----- alerts -----

pub struct AlertRow {
    pub id: String,
    pub severity: String,
    pub task: Option<(String, String)>,
    pub reason: String,
    pub message: String,
    pub raised: String,
}

#[derive(Template)]
#[template(path = "alerts.html")]
struct Alerts {
    layout: Layout,
    alerts: Vec<AlertRow>,
}

pub async fn alerts(signed_in: SignedIn, State(state): State<AppState>) -> Response {
    let page = async {
        let layout = layout(&state, &signed_in, "Alerts", "alerts").await?;
        let now = Timestamp::now();
        let alerts = state
            .store
            .open_alerts()
            .await
            .map_err(failure)?
            .into_iter()
            .take(200)
            .map(|a| AlertRow {
                id: a.id.to_string(),
                severity: a.severity.to_string(),
                task: a.task_id.map(|t| (t.clone(), t.chars().take(8).collect())),
                reason: a.reason,
                message: a.message,
                raised: a.created_at.ago(now),
            })
            .collect();
        Ok::<_, Response>(render(&Alerts { layout, alerts }))
    };
    page.await.unwrap_or_else(|r| r)
}

/// One supervisor run on the supervisors page.
pub struct SupervisorRunRow {
    pub short: String,
    pub supervisor: String,
    pub status: String,
    pub reason: String,
    pub alerts: i64,
    pub cost: String,
    pub started: String,
    pub report: String,
    pub digest: String,
}

#[derive(Template)]
#[template(path = "supervisors.html")]
struct Supervisors {
    layout: Layout,
    configured: Vec<String>,
    runs: Vec<SupervisorRunRow>,
}

/// The scheduled supervisors' runs, newest first (the last 100), with their reports.
pub async fn supervisors(signed_in: SignedIn, State(state): State<AppState>) -> Response {
    let page = async {
        let layout = layout(&state, &signed_in, "Supervisors", "supervisors").await?;
        let now = Timestamp::now();
        let configured = state.config.current().supervisors.keys().cloned().collect();
        let runs = state
            .store
            .supervisor_runs(None)
            .await
            .map_err(failure)?
            .into_iter()
            .take(100)
            .map(|r| SupervisorRunRow {
                short: r.id.chars().take(8).collect(),
                supervisor: r.supervisor,
                status: r.status,
                reason: r.reason,
                alerts: r.alerts,
                cost: format!("{:.4}", r.cost_usd),
                started: r.started_at.ago(now),
                report: r.report.unwrap_or_else(|| "(running)".into()),
                digest: r.digest,
            })
            .collect();
        Ok::<_, Response>(render(&Supervisors { layout, configured, runs }))
    };
    page.await.unwrap_or_else(|r| r)
}

pub async fn acknowledge_alert(
    signed_in: SignedIn,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<super::CsrfForm>,
) -> Response {
    if let Err(refused) = signed_in.check_form(&headers, &form.csrf) {
        return refused;
    }
    match state.store.acknowledge_alert(&id).await {
        Ok(_) => see_other("/alerts"),
        Err(e) => failure(e),
    }
}

// ----- systems -----

/// One system of the fleet as the systems page shows it.
pub struct SystemRow {
    pub name: String,
    pub presence: String,
    pub reason: String,
    pub slots: String,
    pub repos: Vec<String>,
    pub heartbeat: String,
    pub disk: String,
    pub load: String,
    pub backlog: String,
}

#[derive(Template)]
#[template(path = "systems.html")]
struct Systems {
    layout: Layout,
    systems: Vec<SystemRow>,
    /// Where the list comes from: the central (live, or its last known state and age), or
    /// this system alone without sync.
    sync: String,
    unreachable: bool,
}

/// A system of the fleet as the central last described it.
fn fleet_system_row(s: &ccm_sync::wire::FleetSystemV1, now: Timestamp) -> SystemRow {
    let health = s.health.clone().unwrap_or_default();
    SystemRow {
        name: s.name.clone(),
        presence: s.presence.clone(),
        reason: presence_reason(s),
        slots: format!("{} of {} in use", s.slots_used, s.slots),
        repos: s.repos.clone(),
        heartbeat: central_age(s.last_heartbeat_at.as_deref(), now),
        disk: health.disk_free_home_bytes.map_or_else(
            || "unknown (no health snapshot yet)".into(),
            |b| format!("{:.1} GiB free", b as f64 / 1_073_741_824.0),
        ),
        load: health.load1.map_or_else(|| "unknown".into(), |l| format!("{l:.2}")),
        backlog: health.backlog.map_or_else(|| "unknown".into(), |b| format!("{b} changes")),
    }
}

/// A central `timestamptz` (UTC) as its age; `never` for none.
fn central_age(at: Option<&str>, now: Timestamp) -> String {
    let Some(at) = at else { return "never".into() };
    match at.get(..19).map(humantime::parse_rfc3339_weak) {
        Some(Ok(time)) => Timestamp::from(time).ago(now),
        _ => at.to_string(),
    }
}

/// Free space of the file system holding `path`, as `df` reports it.
async fn disk_free(path: &std::path::Path) -> String {
    let output = tokio::process::Command::new("df").arg("-Pk").arg(path).output().await;
    output
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let fields: Vec<&str> = text.lines().nth(1)?.split_whitespace().collect();
            let free_kib: f64 = fields.get(3)?.parse().ok()?;
            Some(format!("{:.1} GiB free ({} used)", free_kib / 1_048_576.0, fields.get(4)?))
        })
        .unwrap_or_else(|| "unknown".into())
}

pub async fn systems(signed_in: SignedIn, State(state): State<AppState>) -> Response {
    let page = async {
        let layout = layout(&state, &signed_in, "Systems", "systems").await?;
        if let Some(known) = fleet_known(&signed_in) {
            let now = Timestamp::now();
            let systems = known
                .overview
                .as_deref()
                .map(|o| o.systems.iter().map(|s| fleet_system_row(s, now)).collect())
                .unwrap_or_default();
            return Ok(render(&Systems {
                layout,
                systems,
                sync: format!("Fleet: {}", known.status(now)),
                unreachable: known.unreachable.is_some(),
            }));
        }
        let store = &state.store;
        // A slot is held by a live agent; waiting tasks hold none (counting them once said
        // "10014 of 4 in use").
        let counts = store.state_counts().await.map_err(failure)?;
        let live = store.dashboard_counts().await.map_err(failure)?.live_agents;
        let waiting = counts.get(&TaskState::Created).copied().unwrap_or(0)
            + counts.get(&TaskState::Queued).copied().unwrap_or(0);
        let contexts = store.contexts().await.map_err(failure)?;
        let outbox = store.outbox_counts().await.map_err(failure)?;
        // This system only until sync lands; remote systems will be added to this list from
        // the central presence table.
        let this = SystemRow {
            name: layout.system.clone(),
            presence: "online".into(),
            reason: format!(
                "this system; daemon pid {} since {}",
                state.daemon.pid, state.daemon.started_at
            ),
            slots: format!(
                "{live} of {} in use, {waiting} tasks waiting",
                state.config.current().scheduler.slots
            ),
            repos: contexts
                .iter()
                .map(|c| c.repo_url.clone().unwrap_or_else(|| c.path.clone()))
                .collect(),
            heartbeat: "now".into(),
            disk: disk_free(&state.home).await,
            load: "unknown".into(),
            backlog: format!("{} changes", outbox.pending),
        };
        Ok::<_, Response>(render(&Systems {
            layout,
            systems: vec![this],
            sync: "Only this system is shown: sync not configured.".into(),
            unreachable: false,
        }))
    };
    page.await.unwrap_or_else(|r| r)
}

// ----- routed task -----

/// One attempt at a routed task, as the central recorded it.
pub struct RoutedAttemptRow {
    pub attempt: i64,
    pub system: String,
    pub claimed: String,
    pub ended: String,
    pub outcome: String,
}

#[derive(Template)]
#[template(path = "routed.html")]
struct RoutedPage {
    layout: Layout,
    id: String,
    title: String,
    prompt: String,
    repo: String,
    state: String,
    /// Where it runs or ran; empty while no system holds it.
    system: String,
    /// Where it will run, said before the central places it.
    target: String,
    /// Why it left this system (the placement's words), right after the form created it.
    because: String,
    reason: String,
    requested: String,
    attempts: Vec<RoutedAttemptRow>,
    max_attempts: i64,
    cost: String,
    verdict: String,
    diff_stat: String,
    commits: Vec<String>,
    last_message: String,
    history: Vec<LogRow>,
    fleet: String,
}

#[derive(Deserialize)]
pub struct RoutedQuery {
    #[serde(default)]
    because: String,
}

/// A task routed from here, as the central last said (`api.routed_status`): where it runs, its
/// state, attempts, report and cost.
pub async fn routed(
    signed_in: SignedIn,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<RoutedQuery>,
) -> Response {
    let page = async {
        let Some(task) = state.store.routed_task(&id).await.map_err(failure)? else {
            return Err(message(
                StatusCode::NOT_FOUND,
                "No such routed task",
                &format!("no task routed from this system has the id `{id}`"),
            ));
        };
        let short = short_id(&task.id);
        let mut layout =
            layout(&state, &signed_in, format!("Routed task {short}"), "tasks").await?;
        layout.kinds = "fleet";
        let now = Timestamp::now();
        let known = fleet_known(&signed_in);
        let central = task.central.clone().unwrap_or_default();
        let overview = known.as_ref().and_then(|k| k.overview.clone());
        let systems: Vec<crate::placement::FleetSystem> = overview
            .as_deref()
            .map(|o| {
                o.systems
                    .iter()
                    .map(|s| crate::placement::FleetSystem {
                        name: &s.name,
                        repos: &s.repos,
                        online: s.presence == "online",
                    })
                    .collect()
            })
            .unwrap_or_default();
        let targets = crate::placement::fleet_target(
            task.repo.as_deref(),
            task.pin.as_deref(),
            &layout.system,
            &systems,
        );
        let result = central.result.clone().unwrap_or_default();
        let report = &result["report"];
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let verdict = text(if result["verdict"].is_string() {
            &result["verdict"]
        } else {
            &report["verdict"]
        });
        Ok(render(&RoutedPage {
            id: task.id.to_string(),
            title: task.title.clone(),
            prompt: task.prompt.clone(),
            repo: task.repo.clone().unwrap_or_default(),
            state: task.state(),
            system: task.system().unwrap_or_default().to_string(),
            target: crate::placement::describe_target(task.repo.as_deref(), &targets),
            because: query.because,
            reason: task.reason().unwrap_or_default().to_string(),
            requested: task.requested.map(|r| r.to_string()).unwrap_or_default(),
            attempts: central
                .attempts
                .iter()
                .map(|a| RoutedAttemptRow {
                    attempt: a["attempt"].as_i64().unwrap_or_default(),
                    system: text(&a["system_name"]),
                    claimed: central_age(a["claimed_at"].as_str(), now),
                    ended: a["ended_at"]
                        .as_str()
                        .map_or_else(|| "running".into(), |t| central_age(Some(t), now)),
                    outcome: text(&a["outcome"]),
                })
                .collect(),
            max_attempts: central.max_attempts.max(task.max_attempts),
            cost: cost(result["cost_usd"].as_f64()),
            verdict,
            diff_stat: text(&report["work"]["diff_stat"]),
            commits: report["work"]["commits"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let sha = c["sha"].as_str().unwrap_or_default();
                    format!("{} {}", &sha[..sha.len().min(8)], text(&c["subject"]))
                })
                .collect(),
            last_message: text(&report["last_message"]),
            history: task
                .log
                .iter()
                .map(|e| LogRow {
                    at: e.at.to_string(),
                    from: e.from.clone().unwrap_or_default(),
                    to: e.to.clone(),
                    reason: e.reason.clone().unwrap_or_default(),
                    actor: e.system.clone().unwrap_or_default(),
                })
                .collect(),
            fleet: known.map(|k| format!("Fleet: {}", k.status(now))).unwrap_or_default(),
            layout,
        }))
    };
    page.await.unwrap_or_else(|r| r)
}

/// A change request's owner as shown: a task's short id, or the pre-assigned name.
fn short_owner(owner: &str) -> String {
    if uuid::Uuid::parse_str(owner).is_ok() {
        format!("task {}", &owner[..8])
    } else {
        format!("`{owner}`")
    }
}
