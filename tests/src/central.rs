//! A real central for the tests: PostgreSQL 15 with the `supabase/` schema, and the
//! PostgREST-compatible `postrust` in front of it, both started by the tests themselves.
//!
//! - [`Postgres`]: a database of a private cluster in a temp dir (run as an unprivileged OS user
//!   when the tests run as root, since PostgreSQL refuses root), reached over a socket in that
//!   dir and a free TCP port on 127.0.0.1; `psql` and `pg_prove` against it. Either a cluster of
//!   its own (`Postgres::start`), or a fresh database with the schema applied in a cluster
//!   shared by the test process (`Postgres::with_schema`, copied from a template).
//! - [`Central`]: such a database, and postrust serving schema `api` at its root (compat mode),
//!   with helpers that sign Supabase JWTs and call the REST API as a system, an operator or
//!   `anon`.
//!
//! Binaries: `PG_BIN` (else `/usr/lib/postgresql/15/bin`, else `pg_config --bindir`), `pg_prove`
//! on `PATH`, `POSTRUST_BIN` (else `postrust` on `PATH`, else `~/.cargo/bin/postrust`).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// The directory of this repository's central schema.
pub fn supabase_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../supabase")
}

/// The migrations in the order they apply (their file names start with a timestamp).
pub fn migrations() -> Vec<PathBuf> {
    sorted_sql_files(&supabase_dir().join("migrations"))
}

/// The pgTAP test files, in the order `supabase test db` runs them.
pub fn pgtap_files() -> Vec<PathBuf> {
    sorted_sql_files(&supabase_dir().join("tests"))
}

fn sorted_sql_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    files.sort();
    files
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it right away).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn pg_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("PG_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
        if debian.exists() {
            return debian;
        }
        let out = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .expect("PostgreSQL 15 is installed (postgresql-15; see .ci/run)");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    });
    dir.join(name)
}

fn postrust_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("POSTRUST_BIN") {
        return PathBuf::from(bin);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("postrust"))
        .find(|bin| bin.exists());
    on_path.unwrap_or_else(|| {
        let cargo_home = std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cargo")
        });
        cargo_home.join("bin/postrust")
    })
}

/// The OS user the cluster runs as: `None` when the tests are not root, else `nobody`.
fn cluster_user() -> Option<(String, u32, u32)> {
    let id = |args: &[&str]| -> u32 {
        let out = Command::new("id").args(args).output().expect("id runs");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("id prints a number")
    };
    if id(&["-u"]) != 0 {
        return None;
    }
    Some(("nobody".to_string(), id(&["-u", "nobody"]), id(&["-g", "nobody"])))
}

/// A PostgreSQL cluster in a temp dir, run by [`cluster_user`].
struct Cluster {
    dir: PathBuf,
    user: Option<(String, u32, u32)>,
    port: u16,
    /// The temp dir, removed on drop; `None` for the shared cluster, which lives as long as the
    /// test process (its watchdog stops it and removes the dir after the process is gone).
    owned: Option<tempfile::TempDir>,
}

impl Cluster {
    /// `initdb` (trust authentication, superuser `postgres`) and start, waiting until it accepts
    /// connections. Durability is off (`fsync=off`): the tests never crash PostgreSQL itself.
    fn start() -> Cluster {
        let tmp = tempfile::Builder::new().prefix("ccm-central-").tempdir().expect("temp dir");
        let user = cluster_user();
        if let Some((_, uid, gid)) = &user {
            std::os::unix::fs::chown(tmp.path(), Some(*uid), Some(*gid)).expect("chown temp dir");
        }
        let cluster =
            Cluster { dir: tmp.path().to_path_buf(), user, port: free_port(), owned: Some(tmp) };
        let data = cluster.dir.join("data");
        let mut initdb = cluster.as_owner(&pg_bin("initdb"));
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        cluster.check(initdb.args(["--no-sync", "--no-instructions"]));
        let options = format!(
            "-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c shared_buffers=16MB -c max_connections=100",
            cluster.dir.display(),
            cluster.port
        );
        let mut pg_ctl = cluster.as_owner(&pg_bin("pg_ctl"));
        pg_ctl.arg("-D").arg(&data).arg("-l").arg(cluster.dir.join("postgres.log"));
        cluster.check(pg_ctl.args(["-w", "-t", "30", "-o", &options, "start"]));
        cluster
    }

    /// The process-wide cluster, started on first use; a watchdog stops it and removes its
    /// directory once the test process is gone, however it ended. It holds the database
    /// `ccm_schema` (bootstrap and migrations applied), the template of [`Postgres::with_schema`].
    fn shared() -> Arc<Cluster> {
        static SHARED: OnceLock<Arc<Cluster>> = OnceLock::new();
        let cluster = SHARED.get_or_init(|| {
            let mut cluster = Cluster::start();
            let dir = cluster.owned.take().expect("a new cluster owns its dir").keep();
            let script = r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done
                            "${@:4}" "$3" -D "$2/data" -m immediate -w stop >/dev/null 2>&1
                            rm -rf "$2""#;
            let mut watchdog = Command::new("setsid");
            watchdog.args([
                "-f",
                "bash",
                "-c",
                script,
                "watchdog",
                &std::process::id().to_string(),
            ]);
            watchdog.arg(&dir).arg(pg_bin("pg_ctl"));
            if let Some((name, _, _)) = &cluster.user {
                watchdog.args(["runuser", "-u", name, "--"]);
            }
            watchdog.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            // `setsid -f` forks the watchdog into its own session (out of reach of a Ctrl-C to the
            // tests) and returns at once.
            let started = watchdog.status().expect("setsid runs");
            assert!(started.success(), "the watchdog of the shared cluster did not start");
            let template = Postgres { cluster: Arc::new(cluster), database: "postgres".into() };
            template.query("create database ccm_schema");
            let template = Postgres { database: "ccm_schema".into(), ..template };
            template.apply_schema();
            template.cluster
        });
        Arc::clone(cluster)
    }

    /// `program` run as the cluster's OS user, in its directory.
    fn as_owner(&self, program: &Path) -> Command {
        let mut command = match &self.user {
            Some((name, _, _)) => {
                let mut c = Command::new("runuser");
                c.args(["-u", name, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        command.current_dir(&self.dir).stdin(Stdio::null());
        command
    }

    /// Runs `command`, panicking with its output and the server log unless it succeeds.
    fn check(&self, command: &mut Command) {
        let out = command.output().unwrap_or_else(|e| panic!("{command:?} runs: {e}"));
        assert!(
            out.status.success(),
            "{command:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned.is_some() {
            let mut pg_ctl = self.as_owner(&pg_bin("pg_ctl"));
            pg_ctl.arg("-D").arg(self.dir.join("data")).args(["-m", "immediate", "-w", "stop"]);
            let _ = pg_ctl.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

/// One database of a running cluster, reached as superuser `postgres`.
pub struct Postgres {
    cluster: Arc<Cluster>,
    /// The database's name.
    pub database: String,
}

impl Postgres {
    /// A cluster of its own (stopped and removed when dropped), with nothing applied: its
    /// database `postgres` is what a fresh PostgreSQL has.
    pub fn start() -> Postgres {
        Postgres { cluster: Arc::new(Cluster::start()), database: "postgres".into() }
    }

    /// A new database with the bootstrap and the migrations applied, in the test process's
    /// shared cluster (a copy of a template, so it costs a fraction of a second).
    pub fn with_schema() -> Postgres {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let database = format!("ccm_test_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let admin = Postgres { cluster: Cluster::shared(), database: "postgres".into() };
        admin.query(&format!("create database {database} template ccm_schema"));
        // A database's settings are not copied from its template: the bootstrap's search path
        // again (not the whole bootstrap, whose role changes would race between tests).
        admin.query(&format!(
            "alter database {database} set search_path = \"$user\", public, extensions"
        ));
        Postgres { database, ..admin }
    }

    /// The TCP port on 127.0.0.1 (the socket in [`Postgres::socket_dir`] has the same number).
    pub fn port(&self) -> u16 {
        self.cluster.port
    }

    /// The directory of the cluster's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.cluster.dir
    }

    /// The cluster's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.cluster.dir.join("postgres.log")).unwrap_or_default()
    }

    /// A connection URL over TCP for `user` to this database.
    pub fn url(&self, user: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{}", self.port(), self.database)
    }

    fn connection_args(&self, command: &mut Command) {
        command.arg("-h").arg(self.socket_dir());
        command.args(["-p", &self.port().to_string(), "-U", "postgres", "-d", &self.database]);
    }

    /// `psql` as superuser `postgres`, quiet, stopping at the first error, with `args`.
    pub fn psql(&self, args: &[&str]) -> Output {
        let mut psql = Command::new(pg_bin("psql"));
        self.connection_args(&mut psql);
        psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]).args(args);
        psql.stdin(Stdio::null()).output().expect("psql runs")
    }

    /// `psql` as [`Postgres::psql`], with `input` on its standard input (`COPY ... FROM STDIN`).
    pub fn psql_input(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write as _;
        let mut psql = Command::new(pg_bin("psql"));
        self.connection_args(&mut psql);
        psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]).args(args);
        psql.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = psql.spawn().expect("psql runs");
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(input).expect("psql reads its input");
        drop(stdin);
        child.wait_with_output().expect("psql ends")
    }

    /// Applies one SQL file, panicking with psql's errors unless it applies cleanly.
    pub fn apply(&self, file: &Path) {
        let out = self.psql(&["-f", &file.to_string_lossy()]);
        assert!(
            out.status.success(),
            "{} did not apply: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The bootstrap, then every migration in order.
    pub fn apply_schema(&self) {
        self.apply(&supabase_dir().join("bootstrap.sql"));
        for migration in migrations() {
            self.apply(&migration);
        }
    }

    /// The result of `sql` (unaligned, tuples only), panicking on an error.
    pub fn query(&self, sql: &str) -> String {
        let out = self.psql(&["-At", "-c", sql]);
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8").trim_end().to_string()
    }

    /// The rows of `sql` as a JSON array of objects, read as superuser (no RLS).
    pub fn rows(&self, sql: &str) -> Value {
        let text = self.query(&format!("select coalesce(json_agg(r), '[]') from ({sql}) r"));
        serde_json::from_str(&text).expect("json_agg is JSON")
    }

    /// `pg_prove` over `files`; whether every test passed, and its output.
    pub fn prove(&self, files: &[PathBuf]) -> (bool, String) {
        let mut pg_prove = Command::new("pg_prove");
        self.connection_args(&mut pg_prove);
        let out = pg_prove
            .args(files)
            .stdin(Stdio::null())
            .output()
            .expect("pg_prove runs (libtap-parser-sourcehandler-pgtap-perl; see .ci/run)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

/// The secret postrust checks JWTs with (Supabase's legacy shared JWT secret).
pub const JWT_SECRET: &str = "ccm-tests-jwt-secret-at-least-32-characters-long";

/// A central: PostgreSQL with the schema applied, and postrust in front of it.
pub struct Central {
    pub pg: Postgres,
    rest: Option<Child>,
    /// The port postrust listens on (kept across [`Central::stop_rest`] / `start_rest`).
    pub rest_port: u16,
    /// postrust's log file.
    pub rest_log: PathBuf,
    pub http: reqwest::Client,
}

impl Central {
    /// A fresh database with the bootstrap and the migrations applied, and postrust in front of
    /// it, ready to answer; postrust is killed when dropped.
    pub fn start() -> Central {
        let pg = Postgres::with_schema();
        let rest_log = pg.socket_dir().join(format!("postrust-{}.log", pg.database));
        let http = reqwest::Client::builder().no_proxy().build().expect("http client");
        let mut central = Central { pg, rest: None, rest_port: free_port(), rest_log, http };
        central.start_rest();
        central
    }

    /// The REST URL the node is configured with (compat mode serves schema `api` at the root).
    pub fn rest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rest_port)
    }

    /// Starts postrust on [`Central::rest_port`] and waits until it answers HTTP.
    pub fn start_rest(&mut self) {
        assert!(self.rest.is_none(), "postrust already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.rest_log)
            .expect("postrust log");
        let bin = postrust_bin();
        let child = Command::new(&bin)
            .env("DATABASE_URL", self.pg.url("authenticator"))
            .env("PGRST_DB_ANON_ROLE", "anon")
            .env("PGRST_JWT_SECRET", JWT_SECRET)
            .env("PGRST_DB_SCHEMAS", "api")
            .env("PGRST_SERVER_HOST", "127.0.0.1")
            .env("PGRST_SERVER_PORT", self.rest_port.to_string())
            .env("PGRST_COMPAT_MODE", "true")
            .env("PGRST_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{} runs (cargo install postrust-server; see .ci/run): {e}", bin.display())
            });
        self.rest = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http_answers(self.rest_port) {
            if let Some(status) = self.rest.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("postrust exited with {status}: {}", self.rest_log_text());
            }
            assert!(Instant::now() < deadline, "postrust did not start: {}", self.rest_log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops postrust (SIGKILL): the central is down until [`Central::start_rest`].
    pub fn stop_rest(&mut self) {
        if let Some(mut child) = self.rest.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn rest_log_text(&self) -> String {
        std::fs::read_to_string(&self.rest_log).unwrap_or_default()
    }

    /// The publishable (anon) key: a JWT with role `anon`, as Supabase's legacy anon key.
    pub fn anon_key(&self) -> String {
        sign(&json!({ "iss": "supabase", "role": "anon", "exp": now_s() + 3600 }))
    }

    /// The access token Supabase Auth issues to the system user `sub` of operator `owner`.
    pub fn system_token(&self, sub: &str, owner: &str) -> String {
        sign(&supabase_claims(sub, json!({ "role": "system", "owner": owner })))
    }

    /// The access token of operator `sub`.
    pub fn operator_token(&self, sub: &str) -> String {
        sign(&supabase_claims(sub, json!({ "role": "operator" })))
    }

    /// `POST /rpc/<function>` with `body`, as `token` (or the anon key alone when `None`), the
    /// way the node calls it; returns the status and the JSON body (`Null` when not JSON).
    pub async fn rpc(&self, token: Option<&str>, function: &str, body: Value) -> (u16, Value) {
        let request = self
            .http
            .post(format!("{}/rpc/{function}", self.rest_url()))
            .header("Content-Profile", "api")
            .json(&body);
        self.send(token, request).await
    }

    /// `GET /<path>` (a view of schema `api`, with a PostgREST query) as `token`.
    pub async fn get(&self, token: Option<&str>, path: &str) -> (u16, Value) {
        let request = self.http.get(format!("{}/{path}", self.rest_url()));
        self.send(token, request).await
    }

    /// Sends `request` with the Supabase headers: `apikey`, `Authorization: Bearer` (the token,
    /// else the anon key) and `Accept-Profile: api`.
    pub async fn send(
        &self,
        token: Option<&str>,
        request: reqwest::RequestBuilder,
    ) -> (u16, Value) {
        let anon = self.anon_key();
        let response = request
            .header("apikey", &anon)
            .header("Accept-Profile", "api")
            .bearer_auth(token.unwrap_or(&anon))
            .send()
            .await
            .unwrap_or_else(|e| panic!("postrust answers: {e}\n{}", self.rest_log_text()));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        self.stop_rest();
    }
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// The claims of a Supabase Auth access token for user `sub`, valid for an hour.
pub fn supabase_claims(sub: &str, app_metadata: Value) -> Value {
    let now = now_s();
    json!({
        "iss": "http://127.0.0.1/auth/v1",
        "sub": sub,
        "aud": "authenticated",
        "role": "authenticated",
        "iat": now,
        "exp": now + 3600,
        "email": format!("{sub}@ccm.test"),
        "app_metadata": app_metadata,
        "user_metadata": {},
        "aal": "aal1",
        "session_id": sub,
        "is_anonymous": false
    })
}

/// `claims` signed with HS256 and [`JWT_SECRET`].
pub fn sign(claims: &Value) -> String {
    sign_with(claims, JWT_SECRET)
}

/// `claims` signed with HS256 and `secret` (another secret makes a tampered token).
pub fn sign_with(claims: &Value, secret: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).expect("claims encode")
}

/// Whether an HTTP server answers on 127.0.0.1:`port` (any status).
fn http_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}
