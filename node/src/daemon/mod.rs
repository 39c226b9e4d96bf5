//! The daemon (`ccm up`): the local HTTP API and the long-lived tasks, with one shutdown token.
//!
//! - `api`: routes and handlers.
//! - `security`: `Host`/`Origin` checks and the bearer token.
//! - `error`: [`ApiError`], the JSON error body.
//! - `scheduler`: admits tasks as dependencies complete and slots free up.
//! - `batch`: group commit of task creations and hook events (one transaction per group).
//! - `metrics`: `/metrics` in the Prometheus text format.
//! - `serve`: the accept loop, with timeouts and a connection cap.
//! - `state`: [`AppState`], the handles every request shares.
//! - the sync task (`crate::sync::start`) and routing (`crate::routing::Router`), when `sync:`
//!   is configured.
//!
//! [`run`] is the start-up order, one named step each: lock the home (one daemon per home),
//! install the signal handlers, load the token, open and migrate the store, bind, reconcile the
//! agents (first runtime pass: adopt live agents, record dead ones), start the long-lived
//! tasks, write the port file and serve, shut down. SIGTERM or SIGINT stops serving
//! gracefully, stops the tasks, closes the store and removes the port file.

mod agent_api;
mod api;
mod batch;
mod error;
mod metrics;
mod scheduler;
pub(crate) mod security;
mod serve;
mod state;

use std::fs::TryLockError;
use std::sync::Arc;
use std::time::Duration;

use ccm_schema::Timestamp;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use agent_api::{SplitAnswer, SplitPart, SplitRequest};
pub use api::{router, ClaimsView, DigestAnswer, RepoConflicts};
pub use batch::Batcher;
pub use error::ApiError;
pub use metrics::Metrics;
pub use scheduler::Scheduler;
pub use security::Allowed;
pub use state::{AppState, Shared};

use crate::config::{Config, LiveConfig};
use crate::home::{DaemonInfo, Home};
use crate::runtime::{Passes, Runtime};
use crate::store::{HookJob, Ingested, NewTask, RetryPolicy, Store, StoreError};

/// Why the daemon did not start; each names what was wrong and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("another ccm daemon is already running for {home}{running}")]
    AlreadyRunning { home: String, running: String },
    #[error("cannot {what} {}", path.display())]
    Lock {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the SIGTERM and SIGINT handlers")]
    Signals(#[source] std::io::Error),
    #[error("cannot listen on {addr}; is another program using the port? set daemon.port in {config} or CCM_DAEMON__PORT")]
    Listen {
        addr: String,
        config: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database {path} failed its integrity check: {problems}")]
    Integrity { path: String, problems: String },
    #[error("reconciling agents at start-up")]
    Reconcile(#[source] crate::runtime::RuntimeError),
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Sync(#[from] crate::sync::StartError),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(home: Home, live: LiveConfig) -> Result<(), StartError> {
    make_files_private();
    let config = live.current();
    let _lock = lock_home(&home)?;
    // Installed before anything can see this daemon (the port file), so that a SIGTERM sent as
    // soon as it is up stops it gracefully instead of killing it.
    let signals = Signals::install()?;
    let token = home.ensure_auth()?.token;
    let shutdown = CancellationToken::new();
    let store = open_store(&home, &config, &shutdown).await?;
    let listeners = bind(&home, &config).await?;
    let first = first_pass(&store, &live, &home, &listeners.daemon, &shutdown).await?;
    note_previous_run(&home, &store).await;
    let running = start_tasks(&store, &live, &home, &listeners, token, first, &shutdown).await?;
    tokio::spawn(signals.stop(shutdown.clone()));
    let running = serve(&home, &store, &live, listeners, running, &shutdown).await?;
    shut_down(running, &store, &home).await;
    Ok(())
}

/// What the daemon, git and the agents it starts create is private whatever the umask it was
/// started with: the agents' directories and logs, the worktrees (ARCHITECTURE.md, Boundaries).
fn make_files_private() {
    // SAFETY: umask(2) only sets the process's file mode creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Takes the home's lock (one daemon per home), held as long as the returned file is open.
fn lock_home(home: &Home) -> Result<std::fs::File, StartError> {
    home.ensure()?;
    let lock_path = home.lock_file();
    let lock = crate::home::private_file(&lock_path).map_err(|source| StartError::Lock {
        what: "create",
        path: lock_path.clone(),
        source,
    })?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => {
            let running = home
                .read_daemon_info()
                .map(|d| format!(" (pid {}, {})", d.pid, d.addr))
                .unwrap_or_default();
            Err(StartError::AlreadyRunning { home: home.root().display().to_string(), running })
        }
        Err(TryLockError::Error(source)) => {
            Err(StartError::Lock { what: "lock", path: lock_path, source })
        }
    }
}

/// Opens and migrates the store, refuses a damaged one, and starts its background checkpoints.
async fn open_store(
    home: &Home,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Store, StartError> {
    let name = config
        .node
        .name
        .clone()
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    let store = Store::open(&home.db_file(), &name).await?;
    check_integrity(&store).await?;
    store.checkpoint_in_background(shutdown.clone()).await?;
    Ok(store)
}

/// The API's listeners, and what the port file will say of them.
struct Listeners {
    tcp: tokio::net::TcpListener,
    bound: std::net::SocketAddr,
    socket: Option<tokio::net::UnixListener>,
    daemon: DaemonInfo,
}

/// Binds the TCP listener (`daemon.host`, `daemon.port`) and the Unix socket.
async fn bind(home: &Home, config: &Config) -> Result<Listeners, StartError> {
    let addr = format!("{}:{}", config.daemon.host, config.daemon.port);
    let listen = |source| StartError::Listen {
        addr: addr.clone(),
        config: home.config_file().display().to_string(),
        source,
    };
    // The host is an IP address (checked with the configuration): bound without a name lookup,
    // which tokio would hand to a blocking thread that then stays idle for ten seconds.
    let ip = config.daemon.host.parse::<std::net::IpAddr>();
    let tcp = match ip {
        Ok(ip) => tokio::net::TcpListener::bind((ip, config.daemon.port)).await,
        Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)),
    }
    .map_err(listen)?;
    let bound = tcp.local_addr().map_err(listen)?;
    let socket = bind_socket(home);
    let daemon = DaemonInfo {
        pid: std::process::id(),
        addr: bound.to_string(),
        socket: socket.as_ref().map(|_| home.socket_file()),
        started_at: Timestamp::now(),
        gate_wait_secs: gate_wait_secs(config),
    };
    Ok(Listeners { tcp, bound, socket, daemon })
}

/// The runtime after its first pass, before serving.
struct FirstPass {
    runtime: Runtime,
    passes: Passes,
    scheduler_wake: Arc<Notify>,
}

/// Reconciles before serving: adopts the agents still running, records the ones that died.
async fn first_pass(
    store: &Store,
    live: &LiveConfig,
    home: &Home,
    daemon: &DaemonInfo,
    shutdown: &CancellationToken,
) -> Result<FirstPass, StartError> {
    let scheduler_wake = Arc::new(Notify::new());
    let runtime = Runtime::new(
        store.clone(),
        live.clone(),
        home.clone(),
        daemon.addr.clone(),
        scheduler_wake.clone(),
        shutdown.clone(),
    );
    let mut passes = Passes::default();
    runtime.pass(&mut passes).await.map_err(StartError::Reconcile)?;
    Ok(FirstPass { runtime, passes, scheduler_wake })
}

/// Raises an alert when the previous daemon did not stop cleanly (notified once the notifiers
/// run).
async fn note_previous_run(home: &Home, store: &Store) {
    // A restart the watchdog caused is said by `daemon_restarted`, naming the loop.
    match crate::watchdog::note_restart(home, store).await {
        Ok(true) => return,
        Ok(false) => {}
        Err(error) => warn!(%error, "cannot check whether a stalled loop restarted the daemon"),
    }
    if let Err(error) = crate::notify::health::check_previous_run(home, store).await {
        warn!(error = %format!("{error:#}"), "cannot check how the previous daemon ended");
    }
}

/// The long-lived tasks, and the state the server hands every request.
struct Running {
    state: AppState,
    /// Awaited at shutdown, by name; `None` for one not started (sync and routing without
    /// `sync:`).
    tasks: Vec<(&'static str, Option<tokio::task::JoinHandle<()>>)>,
    notifiers: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts sync and routing (with `sync:`), the scheduler, the runtime, the spool's ingestion
/// and the notifiers.
async fn start_tasks(
    store: &Store,
    live: &LiveConfig,
    home: &Home,
    listeners: &Listeners,
    token: String,
    first: FirstPass,
    shutdown: &CancellationToken,
) -> Result<Running, StartError> {
    let config = live.current();
    let FirstPass { runtime, passes, scheduler_wake } = first;
    let daemon = &listeners.daemon;
    let system = store.system().await?;
    let loops = Arc::new(crate::watchdog::Loops::default());
    let sync = crate::sync::start(store, &config, home, system.id, shutdown.clone())?;
    let (sync_client, sync_task) = sync.unzip();
    if sync_task.is_none() {
        // Without `sync:` nothing would ever send the outbox: it is not kept pending.
        match store.outbox_off().await {
            Ok(0) => {}
            Ok(pending) => info!(pending, "no sync configured: pending outbox rows dropped"),
            Err(error) => warn!(%error, "cannot stop keeping the outbox"),
        }
    } else {
        loops.with_sync(Arc::clone(store.sync_signals()));
    }
    let routing = sync_client.clone().map(|client| {
        let (high, low) = system.id.as_u64_pair();
        crate::routing::Router {
            store: store.clone(),
            config: config.clone(),
            client,
            signals: Arc::clone(store.sync_signals()),
            scheduler_wake: scheduler_wake.clone(),
            runtime_wake: runtime.wake.clone(),
            shutdown: shutdown.clone(),
            seed: high ^ low ^ 0x5eed,
            beats: ["route_localize", "route_claims", "route_fence", "route_origin"]
                .map(|name| loops.add(name)),
        }
        .start()
    });
    let lander = crate::land::Lander::new(
        store.clone(),
        live.clone(),
        home.clone(),
        runtime.wake.clone(),
        scheduler_wake.clone(),
        shutdown.clone(),
        sync_client.clone(),
    );
    let bound = listeners.bound;
    let state = AppState::new(Shared {
        store: store.clone(),
        config: live.clone(),
        token: token.into(),
        allowed: Arc::new(Allowed::for_host_and_port(bound.ip(), bound.port())),
        daemon: daemon.clone(),
        metrics: Arc::new(Metrics::new(daemon.started_at.millis() / 1000)),
        scheduler_wake: scheduler_wake.clone(),
        runtime_wake: runtime.wake.clone(),
        land_wake: lander.wake.clone(),
        decisions: Arc::new(Notify::new()),
        home: home.root().to_path_buf(),
        hooks: hook_batcher(store.clone(), live.clone()),
        creations: creation_batcher(store.clone(), live.clone()),
        sync: sync_client.clone(),
        loops: loops.clone(),
        shutdown: shutdown.clone(),
    });
    let scheduler = Scheduler {
        store: store.clone(),
        config: live.clone(),
        tick: Duration::from_millis(config.scheduler.tick_ms),
        wake: scheduler_wake,
        runtime_wake: runtime.wake.clone(),
        shutdown: shutdown.clone(),
        beat: loops.add("scheduler"),
    };
    loops.watch("runtime", runtime.beat.clone());
    let scheduler =
        tokio::spawn(supervise("scheduler", shutdown.clone(), move || scheduler.clone().run()));
    let passes = Arc::new(tokio::sync::Mutex::new(Some(passes)));
    let runtime_task = tokio::spawn(supervise("runtime", shutdown.clone(), move || {
        let (runtime, passes) = (runtime.clone(), passes.clone());
        async move {
            // After a panic the memory is rebuilt from the database and the agents' files.
            let memory = passes.lock().await.take().unwrap_or_default();
            runtime.run(memory).await
        }
    }));
    let accounts = sync_client.clone().map(|central| {
        let accounts = crate::accounts::Accounts {
            store: store.clone(),
            central,
            every: Duration::from_secs(config.sync.heartbeat_secs),
            beat: loops.add("accounts"),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(supervise("accounts", shutdown.clone(), move || accounts.clone().run()))
    });
    let predictor = crate::conflicts::Predictor {
        store: store.clone(),
        central: sync_client.clone(),
        shutdown: shutdown.clone(),
    };
    let predictor =
        tokio::spawn(supervise("conflicts", shutdown.clone(), move || predictor.clone().run()));
    let land_task =
        tokio::spawn(supervise("lander", shutdown.clone(), move || lander.clone().run()));
    if let Some(client) = sync_client.clone() {
        let locks = crate::fleet::FleetLocks {
            store: store.clone(),
            client,
            shutdown: shutdown.clone(),
            beat: loops.add("fleet_locks"),
        };
        tokio::spawn(supervise("fleet_locks", shutdown.clone(), move || locks.clone().run()));
    }
    let spooler =
        tokio::spawn(spool_loop(home.clone(), store.clone(), live.clone(), shutdown.clone()));
    let supervisors = crate::supervisors::Supervisors {
        store: store.clone(),
        live: live.clone(),
        home: home.clone(),
        api_addr: daemon.addr.clone(),
        started: daemon.started_at,
        beat: loops.add("supervisors"),
        shutdown: shutdown.clone(),
        central: sync_client.clone(),
        leases: Arc::default(),
    };
    let supervisors = tokio::spawn(supervisors.run());
    let notifiers = crate::notify::start(
        crate::notify::Context {
            store: store.clone(),
            config: config.clone(),
            home: home.clone(),
            answered: {
                let state = state.clone();
                Arc::new(move || {
                    state.wake();
                    state.decisions.notify_waiters();
                })
            },
            central: sync_client,
            shutdown: shutdown.clone(),
        },
        &loops,
    );
    start_watchdog(&config, home, store, loops);
    Ok(Running {
        state,
        tasks: vec![
            ("scheduler", Some(scheduler)),
            ("runtime", Some(runtime_task)),
            ("lander", Some(land_task)),
            ("spooler", Some(spooler)),
            ("conflicts", Some(predictor)),
            ("accounts", accounts),
            ("supervisors", Some(supervisors)),
            ("sync", sync_task),
            ("routing", routing),
            (
                "retention",
                Some(crate::retention::start(
                    store.clone(),
                    live.clone(),
                    home.clone(),
                    shutdown.clone(),
                )),
            ),
        ],
        notifiers,
    })
}

/// Starts the thread that watches the loops and feeds the service manager's watchdog.
fn start_watchdog(config: &Config, home: &Home, store: &Store, loops: Arc<crate::watchdog::Loops>) {
    let watchdog = crate::watchdog::Watchdog {
        loops,
        limit: Duration::from_secs(config.daemon.stall_secs),
        exit: config.daemon.watchdog_exit,
        home: home.clone(),
        store: store.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    if let Err(error) = watchdog.start() {
        warn!(%error, "cannot start the watchdog thread; stalled loops go unnoticed");
    }
}

/// Writes the port file (the daemon is now visible), watches the configuration, and serves
/// until shutdown.
async fn serve(
    home: &Home,
    store: &Store,
    live: &LiveConfig,
    listeners: Listeners,
    mut running: Running,
    shutdown: &CancellationToken,
) -> Result<Running, StartError> {
    let Listeners { tcp, socket, daemon, .. } = listeners;
    home.write_daemon_info(&daemon)?;
    let watcher = tokio::spawn(watch_config(
        live.clone(),
        store.clone(),
        home.clone(),
        daemon.clone(),
        shutdown.clone(),
    ));
    running.tasks.push(("config", Some(watcher)));
    crate::watchdog::notify(&[sd_notify::NotifyState::Ready]);
    info!(addr = %daemon.addr, pid = daemon.pid, home = %home.root().display(), "ccm daemon listening");
    // On a worker thread rather than this one (the runtime's `block_on`): a connection is then
    // accepted, and its task started, on the thread the I/O driver woke, with no hand-off to
    // another thread for each new connection.
    let config = live.current().daemon.clone();
    let server = serve::serve(tcp, socket, router(running.state.clone()), config, shutdown.clone());
    if let Err(e) = tokio::spawn(server).await {
        warn!(task = "server", error = %e, "ended abnormally");
    }
    Ok(running)
}

/// Stops every task, waits for them, closes the store and removes the port file and the socket.
async fn shut_down(running: Running, store: &Store, home: &Home) {
    crate::watchdog::notify(&[sd_notify::NotifyState::Stopping]);
    running.state.shutdown.cancel();
    let Running { state, tasks, notifiers } = running;
    drop(state);
    for (name, task) in tasks.into_iter().filter_map(|(name, task)| task.map(|t| (name, t))) {
        if let Err(e) = task.await {
            warn!(task = name, error = %e, "ended abnormally");
        }
    }
    for task in notifiers {
        if let Err(e) = task.await {
            warn!(task = "notify", error = %e, "ended abnormally");
        }
    }
    store.close().await;
    let _ = std::fs::remove_file(home.daemon_file());
    let _ = std::fs::remove_file(home.socket_file());
    info!("ccm daemon stopped");
}

/// Binds the API's Unix socket in the home directory (mode 0600, in a 0700 directory), for the
/// hooks: a connection without TCP's handshake. A socket file left by a daemon that crashed is
/// replaced (this daemon holds the home's lock). Without it (a path too long for a socket
/// address, say) the daemon serves TCP alone, and the hooks use that.
fn bind_socket(home: &Home) -> Option<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = home.socket_file();
    let _ = std::fs::remove_file(&path);
    let bound = tokio::net::UnixListener::bind(&path).and_then(|listener| {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(listener)
    });
    match bound {
        Ok(listener) => Some(listener),
        Err(error) => {
            warn!(%error, path = %path.display(), "cannot create the API's Unix socket; the hooks use TCP");
            None
        }
    }
}

/// Stores hook events received through the API in groups; a request hands in its events
/// together (one for a single event, many for a batch) and gets their results in order.
fn hook_batcher(store: Store, config: LiveConfig) -> Batcher<Vec<HookJob>, Vec<Ingested>> {
    let (one, one_config) = (store.clone(), config.clone());
    Batcher::start(
        tracing::info_span!("hook_batcher"),
        move |requests: Vec<Vec<HookJob>>| {
            let store = store.clone();
            let policy = RetryPolicy::from(&*config.current());
            async move {
                let result =
                    store.ingest_hooks(requests.iter().flatten(), policy).await.map(|done| {
                        let mut done = done.into_iter();
                        requests.iter().map(|r| done.by_ref().take(r.len()).collect()).collect()
                    });
                (requests, result)
            }
        },
        move |jobs: Vec<HookJob>| {
            let store = one.clone();
            let policy = RetryPolicy::from(&*one_config.current());
            async move { store.ingest_hooks(&jobs, policy).await }
        },
    )
}

/// Creates tasks received through the API in groups.
fn creation_batcher(
    store: Store,
    config: LiveConfig,
) -> Batcher<(NewTask, String), ccm_schema::Task> {
    let (one, one_config) = (store.clone(), config.clone());
    Batcher::start(
        tracing::info_span!("creation_batcher"),
        move |batch: Vec<(NewTask, String)>| {
            let (store, config) = (store.clone(), config.current());
            async move {
                // On failure the batch is needed again for the one-by-one retry.
                let result = store.create_tasks(batch.clone(), &config).await;
                (batch, result)
            }
        },
        move |(new, actor): (NewTask, String)| {
            let (store, config) = (one.clone(), one_config.current());
            async move { store.create_task(new, &config, &actor).await }
        },
    )
}

/// Ingests the hook events `ccm hook` spooled while the database was busy.
async fn spool_loop(home: Home, store: Store, config: LiveConfig, shutdown: CancellationToken) {
    loop {
        let policy = RetryPolicy::from(&*config.current());
        match crate::hooks::spool::ingest(home.root(), &store, policy).await {
            Ok(0) => {}
            Ok(n) => info!(events = n, "ingested spooled hook events"),
            Err(error) => warn!(error = %format!("{error:#}"), "cannot ingest the spool; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Reads the configuration's files again every second (requests also do, as they come), and
/// keeps an alert open while they say what the daemon does not use: a file that does not load
/// (`config_invalid`; the last good configuration stays in use), or keys whose new value waits
/// for a restart (`config_restart_needed`). An alert is resolved once its cause is gone.
///
/// The port file's `gate_wait_secs` (how long a hook waits for the daemon's answer to a tool
/// call) follows the approval rules in use.
async fn watch_config(
    live: LiveConfig,
    store: Store,
    home: Home,
    mut daemon: DaemonInfo,
    shutdown: CancellationToken,
) {
    let file = live.file();
    let messages = |status: &crate::config::ConfigStatus| {
        let invalid = status.invalid.as_ref().map(|error| {
            format!(
                "the configuration does not load: {error}; the daemon keeps using the last good \
                 configuration until it is fixed"
            )
        });
        let restart = (!status.restart_needed.is_empty()).then(|| {
            format!(
                "{} changed {}, which take effect only when the daemon restarts (`ccm stop`, then \
                 `ccm up`); everything else in it applies already",
                file.display(),
                status.restart_needed.join(", ")
            )
        });
        [("config_invalid", invalid), ("config_restart_needed", restart)]
    };
    let mut shown = crate::config::ConfigStatus::default();
    loop {
        let wait = gate_wait_secs(&live.current());
        if wait != daemon.gate_wait_secs {
            daemon.gate_wait_secs = wait;
            if let Err(error) = home.write_daemon_info(&daemon) {
                warn!(error = %error, "cannot update the port file's approval wait");
            }
        }
        let status = live.status();
        if status != shown {
            let mut done = true;
            for ((reason, was), (_, now)) in messages(&shown).into_iter().zip(messages(&status)) {
                if was == now {
                    continue;
                }
                let result = async {
                    if let Some(was) = &was {
                        store.resolve_alert(reason, was).await?;
                    }
                    if let Some(now) = &now {
                        store.alert_once(None, ccm_schema::Severity::Warning, reason, now).await?;
                    }
                    Ok::<(), StoreError>(())
                };
                if let Err(error) = result.await {
                    warn!(%error, reason, "cannot raise or resolve the configuration's alert");
                    done = false;
                }
            }
            if done {
                shown = status;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// How long a hook waits for the daemon's answer to a tool call (the port file says it): the
/// approval timeout plus a margin when there are approval rules.
fn gate_wait_secs(config: &Config) -> Option<u64> {
    (!config.approvals.rules.is_empty())
        .then(|| config.approvals.timeout_secs.saturating_add(crate::hooks::GATE_MARGIN_SECS))
}

/// Refuses to start on a damaged database.
async fn check_integrity(store: &Store) -> Result<(), StartError> {
    let integrity = store.integrity_check().await?;
    if integrity != "ok" {
        return Err(StartError::Integrity {
            path: store.path().display().to_string(),
            problems: integrity,
        });
    }
    info!(tasks = ?store.state_counts().await?, "store opened");
    Ok(())
}

/// Runs a long-lived task, restarting it when it panics, until shutdown.
async fn supervise<F, Fut>(name: &'static str, shutdown: CancellationToken, task: F)
where
    F: Fn() -> Fut,
    F: Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(task()).await {
            Ok(()) => return,
            Err(e) if shutdown.is_cancelled() => {
                return warn!(task = name, error = %e, "task ended during shutdown")
            }
            Err(e) => {
                error!(task = name, error = %e, "task panicked; restarting in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, StartError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(StartError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(StartError::Signals)?,
        })
    }

    /// Cancels `shutdown` at the first signal.
    async fn stop(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM: shutting down"),
            _ = self.int.recv() => info!("SIGINT: shutting down"),
            () = shutdown.cancelled() => {}
        }
        shutdown.cancel();
    }
}
