//! Where a new task runs: here, or routed to the fleet (SPEC section 9). One decision,
//! [`decide`], and one way to act on it, [`add`], for every entry point: `ccm task add`,
//! `POST /api/tasks` and the dashboard's new-task form.
//!
//! A task goes to the fleet when it is pinned to another system, when no checkout of its
//! repository is registered here, or when its checkout is here but no agent slot is free; it
//! runs here otherwise, and always without sync. A stacked task (`--after A --stack`) always
//! runs here, where its base's branch is (pinned elsewhere, it is refused).

use std::path::Path;

use ccm_schema::{Context, Task};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::store::{NewTask, RoutedTask, Store, StoreError};

/// This system's name and free slots: what [`decide`] weighs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutingStatus {
    /// Routing works only with sync configured.
    pub enabled: bool,
    pub system: String,
    pub free_slots: i64,
}

impl RoutingStatus {
    pub async fn gather(store: &Store, config: &Config) -> crate::store::Result<RoutingStatus> {
        Ok(RoutingStatus {
            enabled: config.sync.enabled(),
            system: store.system().await?.name,
            free_slots: store.free_for_claims(config.scheduler.slots).await?,
        })
    }
}

/// Why a task cannot be placed.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// `--repo` (or the API's `repo`) names nothing usable; the message says what.
    #[error("{0}")]
    Repo(String),
    #[error(
        "system: routing to other systems needs sync; set sync.url (or sync.rest_url) and sync.publishable_key"
    )]
    PinWithoutSync,
    /// A stacked task pinned to another system: it starts from its base's branch, which is
    /// here.
    #[error(
        "stack: a stacked task runs on this system, where its base's branch is; it cannot be {0}"
    )]
    StackedElsewhere(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a new task works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A registered checkout on this system (`given`: named, not found around the caller).
    Checkout {
        repo: String,
        path: String,
        given: bool,
    },
    /// A repository no checkout on this system is registered for.
    Elsewhere(String),
    /// A directory of this system that is not a registered checkout (only the API can name
    /// one): it means nothing elsewhere, so the task stays here.
    Directory(String),
    Scratch,
}

impl Place {
    /// As the CLI names it: `--repo` as given (a URL, a path, a context id), else the
    /// registered checkout around `cwd`, else a scratch directory. A path or a context id must
    /// name a registered checkout.
    pub fn resolve(
        repo: Option<&str>,
        contexts: &[Context],
        cwd: &Path,
    ) -> Result<Place, PlacementError> {
        let Some(repo) = repo.map(str::trim) else {
            let cwd = std::fs::canonicalize(cwd).unwrap_or_else(|_| cwd.to_path_buf());
            return Ok(around(contexts, &cwd).map_or(Place::Scratch, |c| checkout(c, false)));
        };
        let refuse = |why: String| Err(PlacementError::Repo(why));
        if repo.is_empty() {
            return refuse("--repo is empty; give a URL, a path or a context id".into());
        }
        let path_like = repo.starts_with(['.', '/', '~']) || Path::new(repo).exists();
        if path_like {
            let dir = cwd.join(repo);
            let Ok(dir) = std::fs::canonicalize(&dir) else {
                return refuse(format!("--repo `{repo}`: {} is not a directory", dir.display()));
            };
            return match around(contexts, &dir) {
                Some(context) => Ok(checkout(context, true)),
                None => refuse(format!(
                    "--repo `{repo}`: {} is not in a registered checkout; run `ccm init` (or `ccm context add PATH`) in it first",
                    dir.display()
                )),
            };
        }
        let by_id: Vec<&Context> = contexts
            .iter()
            .filter(|c| c.id.hyphenated().to_string().starts_with(&repo.to_ascii_lowercase()))
            .collect();
        if let [context] = by_id[..] {
            return Ok(checkout(context, true));
        }
        let url = ccm_schema::repo_url::normalize(repo);
        match contexts.iter().find(|c| c.repo_url.as_deref() == Some(url.as_str())) {
            Some(context) => Ok(checkout(context, true)),
            None if url.contains("://") => Ok(Place::Elsewhere(url)),
            None => refuse(format!(
                "--repo `{repo}` is neither a repository URL, a directory nor a registered context (`ccm context list`)"
            )),
        }
    }

    /// As the API and the dashboard name it: a task's `repo` (a URL or an absolute path),
    /// or none for a scratch directory.
    pub fn of_repo(repo: Option<&str>, contexts: &[Context]) -> Place {
        let Some(repo) = repo.map(str::trim).filter(|r| !r.is_empty()) else {
            return Place::Scratch;
        };
        let url = ccm_schema::repo_url::normalize(repo);
        if let Some(context) = contexts.iter().find(|c| c.repo_url.as_deref() == Some(&url)) {
            return checkout(context, true);
        }
        if url.contains("://") {
            return Place::Elsewhere(url);
        }
        match around(contexts, Path::new(&url)) {
            Some(context) => checkout(context, true),
            None => Place::Directory(url),
        }
    }

    /// The task's `repo`.
    pub fn repo(&self) -> Option<String> {
        match self {
            Place::Checkout { repo, .. } | Place::Elsewhere(repo) | Place::Directory(repo) => {
                Some(repo.clone())
            }
            Place::Scratch => None,
        }
    }
}

/// The innermost registered checkout holding `dir`.
fn around<'c>(contexts: &'c [Context], dir: &Path) -> Option<&'c Context> {
    contexts.iter().filter(|c| dir.starts_with(&c.path)).max_by_key(|c| c.path.len())
}

fn checkout(c: &Context, given: bool) -> Place {
    Place::Checkout {
        // The remote names the repository across systems; a checkout without one, its path.
        repo: c.repo_url.clone().unwrap_or_else(|| c.path.clone()),
        path: c.path.clone(),
        given,
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Checkout { repo, path, given: false } => write!(
                f,
                "repository {repo}: the checkout around you ({path}); --no-repo for a scratch directory"
            ),
            Place::Checkout { repo, path, given: true } => {
                write!(f, "repository {repo} (checkout {path})")
            }
            Place::Elsewhere(repo) => write!(
                f,
                "repository {repo}: no checkout of it is registered on this system; `ccm context add PATH` registers a clone"
            ),
            Place::Directory(path) => write!(f, "directory {path} (not a registered checkout)"),
            Place::Scratch => write!(
                f,
                "no repository: the agent works in a scratch directory (--repo URL|PATH to work in one)"
            ),
        }
    }
}

/// Where a task runs, as [`decide`] chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Here,
    /// Routed to the fleet, with why.
    Fleet(String),
}

/// Where a task working at `place`, pinned to `pin` if given, runs: routed to the fleet when
/// pinned to another system, when its repository has no checkout here, or when it has one but
/// no slot is free; here otherwise. A pin needs sync.
pub fn decide(
    place: &Place,
    pin: Option<&str>,
    here: &RoutingStatus,
) -> Result<Placement, PlacementError> {
    if !here.enabled {
        return match pin {
            Some(_) => Err(PlacementError::PinWithoutSync),
            None => Ok(Placement::Here),
        };
    }
    Ok(match (place, pin) {
        (_, Some(pin)) if pin == here.system => Placement::Here,
        (_, Some(pin)) => Placement::Fleet(format!("pinned to system {pin}")),
        (Place::Elsewhere(repo), None) => Placement::Fleet(format!("no checkout of {repo} here")),
        (Place::Checkout { repo, .. }, None) if here.free_slots <= 0 => {
            Placement::Fleet(format!("{repo} is checked out here but no agent slot is free"))
        }
        _ => Placement::Here,
    })
}

/// A task routed to the fleet, with why (`POST /api/tasks` answers it with 202).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Routed {
    #[serde(flatten)]
    pub task: RoutedTask,
    pub routed_because: String,
}

/// A task [`add`] created: here, or routed to the fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Added {
    Routed(Box<Routed>),
    Here(Box<Task>),
}

/// Creates `new`, working at `place`, where [`decide`] says: here through `create_here` (the
/// daemon's batcher, or the store), or routed to the fleet (its submission waits in the
/// database until sync sends it).
pub async fn add(
    store: &Store,
    config: &Config,
    new: NewTask,
    place: &Place,
    pin: Option<&str>,
    create_here: impl AsyncFnOnce(NewTask) -> Result<Task, StoreError>,
) -> Result<Added, PlacementError> {
    // Without sync every task runs here: nothing to read for it (the API's hot path).
    let here = if config.sync.enabled() {
        RoutingStatus::gather(store, config).await?
    } else {
        RoutingStatus { enabled: false, system: String::new(), free_slots: 0 }
    };
    let placement = match decide(place, pin, &here)? {
        // A stacked task starts from its base's branch, which only this system has.
        Placement::Fleet(why) if new.stack && pin.is_some() => {
            return Err(PlacementError::StackedElsewhere(why))
        }
        Placement::Fleet(_) if new.stack => Placement::Here,
        placement => placement,
    };
    match placement {
        Placement::Here => Ok(Added::Here(Box::new(create_here(new).await?))),
        Placement::Fleet(reason) => {
            let task = store.route_task(new, pin, config).await?;
            Ok(Added::Routed(Box::new(Routed { task, routed_because: reason })))
        }
    }
}

/// One system of the fleet as the central last described it, for [`fleet_target`].
#[derive(Debug, Clone, Copy)]
pub struct FleetSystem<'a> {
    pub name: &'a str,
    /// Normalized repository URLs of its checkouts.
    pub repos: &'a [String],
    pub online: bool,
}

/// Where in the fleet a task routed from `here` will run, said before the central places it:
/// its pin; else the online systems other than `here` holding its repository (any of them
/// without one). The dashboard's form and routed-task page say it with [`describe_target`].
pub fn fleet_target(
    repo: Option<&str>,
    pin: Option<&str>,
    here: &str,
    systems: &[FleetSystem<'_>],
) -> Vec<String> {
    if let Some(pin) = pin {
        return vec![pin.to_string()];
    }
    let url = repo.map(ccm_schema::repo_url::normalize);
    systems
        .iter()
        .filter(|s| s.online && s.name != here)
        .filter(|s| url.as_ref().is_none_or(|u| s.repos.iter().any(|r| r == u)))
        .map(|s| s.name.to_string())
        .collect()
}

/// [`fleet_target`]'s answer in words.
pub fn describe_target(repo: Option<&str>, targets: &[String]) -> String {
    match (targets, repo) {
        ([], Some(repo)) => format!(
            "no online system of the fleet has a checkout of {repo}: it waits until one does"
        ),
        ([], None) => "no other system of the fleet is online: it waits until one is".into(),
        ([one], _) => format!("it will run on {one}"),
        (many, _) => format!(
            "it will run on one of {} (the central picks the one with the most free slots)",
            many.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here(enabled: bool, free_slots: i64) -> RoutingStatus {
        RoutingStatus { enabled, system: "alpha".into(), free_slots }
    }

    fn checkout() -> Place {
        Place::Checkout { repo: "https://h/o/r".into(), path: "/w/r".into(), given: true }
    }

    #[test]
    fn a_task_runs_here_unless_pinned_elsewhere_missing_its_checkout_or_a_slot() {
        let elsewhere = Place::Elsewhere("https://h/o/far".into());
        assert_eq!(decide(&checkout(), None, &here(true, 1)).unwrap(), Placement::Here);
        assert_eq!(decide(&Place::Scratch, None, &here(true, 0)).unwrap(), Placement::Here);
        assert_eq!(decide(&elsewhere, Some("alpha"), &here(true, 1)).unwrap(), Placement::Here);
        let fleet = |p: &Place, pin, h| match decide(p, pin, &h).unwrap() {
            Placement::Fleet(why) => why,
            Placement::Here => panic!("{p:?} {pin:?} ran here"),
        };
        assert_eq!(fleet(&elsewhere, None, here(true, 1)), "no checkout of https://h/o/far here");
        assert_eq!(fleet(&checkout(), Some("beta"), here(true, 1)), "pinned to system beta");
        assert!(fleet(&checkout(), None, here(true, 0)).contains("no agent slot is free"));
        // Without sync everything runs here, and a pin is refused.
        assert_eq!(decide(&elsewhere, None, &here(false, 0)).unwrap(), Placement::Here);
        assert!(matches!(
            decide(&checkout(), Some("beta"), &here(false, 1)),
            Err(PlacementError::PinWithoutSync)
        ));
    }

    #[test]
    fn a_routed_task_is_said_to_run_on_its_pin_or_an_online_holder_of_its_repository() {
        let app = vec!["https://h/o/app".to_string()];
        let none: Vec<String> = Vec::new();
        let systems = [
            FleetSystem { name: "alpha", repos: &app, online: true },
            FleetSystem { name: "beta", repos: &app, online: true },
            FleetSystem { name: "gamma", repos: &none, online: true },
            FleetSystem { name: "delta", repos: &app, online: false },
        ];
        let repo = Some("https://h/o/app.git");
        assert_eq!(fleet_target(repo, None, "alpha", &systems), ["beta"]);
        assert_eq!(describe_target(repo, &["beta".into()]), "it will run on beta");
        assert_eq!(fleet_target(repo, Some("delta"), "alpha", &systems), ["delta"]);
        assert_eq!(fleet_target(None, None, "alpha", &systems), ["beta", "gamma"]);
        let far = Some("https://h/o/far");
        assert!(fleet_target(far, None, "alpha", &systems).is_empty());
        assert!(describe_target(far, &[]).contains("no online system"));
    }

    #[test]
    fn the_apis_repo_is_placed_by_its_registered_checkout() {
        let context: Context = serde_json::from_value(serde_json::json!({
            "id": "0190a1b2-0000-7000-8000-000000000001",
            "path": "/w/r",
            "repo_url": "https://h/o/r",
            "default_branch": null,
            "created_at": "2026-12-07T00:00:00Z",
            "updated_at": "2026-12-07T00:00:00Z",
        }))
        .unwrap();
        let contexts = [context];
        assert_eq!(Place::of_repo(Some("https://h/o/r"), &contexts), checkout());
        assert_eq!(Place::of_repo(Some("/w/r/sub"), &contexts), checkout());
        assert_eq!(
            Place::of_repo(Some("https://h/o/far"), &contexts),
            Place::Elsewhere("https://h/o/far".into())
        );
        assert_eq!(Place::of_repo(Some("/tmp/x"), &contexts), Place::Directory("/tmp/x".into()));
        assert_eq!(Place::of_repo(Some(" "), &contexts), Place::Scratch);
        assert_eq!(Place::of_repo(None, &contexts), Place::Scratch);
    }
}
