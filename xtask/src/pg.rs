//! Finding PostgreSQL's binaries and running a throwaway cluster.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::pgbouncer;
use crate::pki;
use crate::replica;
use crate::sys;
use crate::Result;

/// The folder holding PostgreSQL's server binaries (`initdb`, `postgres`, `pg_ctl`).
pub fn bindir() -> Result<PathBuf> {
    if let Some(dir) = which_dir("initdb") {
        // Follow a symlink (e.g. /usr/local/bin/initdb) to the real bindir, which also
        // holds pg_isready, psql and friends.
        let real = dir
            .join("initdb")
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .filter(|d| d.join("pg_ctl").is_file() && d.join("postgres").is_file());
        return Ok(real.unwrap_or(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").is_file() {
                return Ok(dir);
            }
        }
    }
    // Debian installs each major version under /usr/lib/postgresql/<major>/bin.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "no PostgreSQL server binaries found (initdb): install them with \
         `apt-get install postgresql` (Debian's server package)"
            .into()
    })
}

/// The folder holding PostgreSQL's shared data (`errcodes.txt`).
pub fn sharedir() -> Result<PathBuf> {
    let bin = bindir()?;
    let pg_config = bin.join("pg_config");
    let cmd = if pg_config.is_file() {
        pg_config
    } else {
        PathBuf::from("pg_config")
    };
    let out = Command::new(&cmd)
        .arg("--sharedir")
        .output()
        .map_err(|e| format!("running {}: {e}", cmd.display()))?;
    if !out.status.success() {
        return Err(format!("{} --sharedir failed", cmd.display()).into());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

pub(crate) fn which_dir(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| dir.join(program).is_file())
}

// ---------------------------------------------------------------------------
// Throwaway clusters.
//
// A cluster lives in a fresh temporary folder (`$TMPDIR/aiopg-pg-…`, holding `data/`,
// the Unix socket folder `sock/` and the throwaway PKI `tls/`) and is described by a
// `state` file (key=value lines) in a folder under `target/aiopg-pg/`:
//
// - `target/aiopg-pg/state`: the one `cargo xtask pg start|stop|status` manages;
// - `target/aiopg-pg/run-<pid>/state`: a private one of a `test-all-runtimes`/`demo` run;
// - `target/aiopg-pg/bench/state`: the benchmark-tuned one of `cargo xtask bench`.
//
// The last two record their owner's pid: one whose owner died is stale, and is cleaned
// up by the next start in that folder or by `cargo xtask pg stop`.

/// How long the server gets to accept connections, and to stop.
const TIMEOUT: Duration = Duration::from_secs(30);
const TIMEOUT_ARG: &str = "30";

/// Each server's log, in its data folder.
pub(crate) const LOG_NAME: &str = "postgres.log";

/// The superuser (`initdb -U postgres --auth=trust`).
pub const SUPERUSER: &str = "postgres";

/// Which connections a role's pg_hba.conf lines let in (the rest are rejected, rather
/// than falling through to the catch-all `trust` lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The Unix socket and TCP, with or without TLS (`local` and `host` lines).
    Any,
    /// TCP with TLS only (`hostssl`).
    TlsOnly,
    /// The Unix socket and TCP without TLS (`local` and `hostnossl`).
    PlainOnly,
}

/// A login role and how pg_hba.conf lets it in.
pub struct Role {
    pub name: &'static str,
    pub password: Option<&'static str>,
    /// The pg_hba.conf method; `md5` roles get an MD5-hashed password, others SCRAM.
    pub method: &'static str,
    pub transport: Transport,
}

const fn role(
    name: &'static str,
    password: Option<&'static str>,
    method: &'static str,
    transport: Transport,
) -> Role {
    Role {
        name,
        password,
        method,
        transport,
    }
}

/// Login roles: one per authentication method, and the TLS ones (a client that must
/// use TLS, one that must not, MD5 and cleartext passwords over TLS, and certificate
/// login as the CN of the client certificates of [`pki`]).
pub const ROLES: &[Role] = &[
    role("aiopg_trust", None, "trust", Transport::Any),
    role(
        "aiopg_password",
        Some("aiopg-pw-password"),
        "password",
        Transport::Any,
    ),
    role("aiopg_md5", Some("aiopg-pw-md5"), "md5", Transport::Any),
    role(
        "aiopg_scram",
        Some("aiopg-pw-scram"),
        "scram-sha-256",
        Transport::Any,
    ),
    role(
        "aiopg_tls",
        Some("aiopg-pw-tls"),
        "scram-sha-256",
        Transport::TlsOnly,
    ),
    role(
        "aiopg_plain",
        Some("aiopg-pw-plain"),
        "scram-sha-256",
        Transport::PlainOnly,
    ),
    role(
        "aiopg_tls_md5",
        Some("aiopg-pw-tls-md5"),
        "md5",
        Transport::TlsOnly,
    ),
    role(
        "aiopg_tls_password",
        Some("aiopg-pw-tls-password"),
        "password",
        Transport::TlsOnly,
    ),
    role(pki::CLIENT_CN, None, "cert", Transport::TlsOnly),
];

/// The folder of the cluster `cargo xtask pg` manages; others live in subfolders.
pub fn state_root(root: &Path) -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    };
    target.join("aiopg-pg")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Many connections, no durability: for the test suites.
    Test,
    /// Like `Test`, with more memory, minimal WAL and no JIT: for benchmarks.
    Bench,
}

impl Profile {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Profile::Test => "test",
            Profile::Bench => "bench",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Profile> {
        match s {
            "test" => Some(Profile::Test),
            "bench" => Some(Profile::Bench),
            _ => None,
        }
    }

    /// postgresql.conf lines (later lines win).
    fn settings(self) -> &'static str {
        match self {
            Profile::Test => TEST_SETTINGS,
            Profile::Bench => BENCH_SETTINGS,
        }
    }
}

macro_rules! test_settings {
    () => {
        "max_connections = 300
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
log_line_prefix = '%m [%p] %q%u@%d '
# streaming standbys (xtask/src/replica.rs): base backups and WAL senders
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
# two-phase commit (aiopg-sa's begin_twophase)
max_prepared_transactions = 20
"
    };
}

const TEST_SETTINGS: &str = test_settings!();

const BENCH_SETTINGS: &str = concat!(
    test_settings!(),
    "shared_buffers = 256MB
wal_level = minimal
max_wal_senders = 0
max_wal_size = 4GB
checkpoint_timeout = 30min
jit = off
"
);

/// A throwaway cluster, as recorded in its state file.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Where the `state` file lives.
    pub state_dir: PathBuf,
    /// The temporary folder holding `data/`, `sock/` and `tls/`; deleted on stop.
    pub base: PathBuf,
    pub datadir: PathBuf,
    pub socket_dir: PathBuf,
    pub bindir: PathBuf,
    pub port: u16,
    /// The postmaster's pid (0 until started).
    pub pid: u32,
    /// The xtask process the cluster belongs to; `None` for `cargo xtask pg start`.
    pub owner: Option<u32>,
    pub profile: Profile,
    /// The primary's hot standby, when started ([`Cluster::add_standby`]).
    pub standby: Option<replica::Server>,
    /// The PgBouncer in front of the primary, when started ([`Cluster::add_pgbouncer`]).
    pub pgbouncer: Option<pgbouncer::Bouncer>,
}

impl Cluster {
    /// `host=127.0.0.1 port=<P> user=postgres dbname=postgres`.
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} dbname=postgres",
            self.port
        )
    }

    /// The same over the Unix socket.
    pub fn socket_dsn(&self) -> String {
        format!(
            "host={} port={} user={SUPERUSER} dbname=postgres",
            self.socket_dir.display(),
            self.port
        )
    }

    pub fn log_file(&self) -> PathBuf {
        self.datadir.join(LOG_NAME)
    }

    /// The folder of the cluster's certificates and keys (see [`pki`]).
    pub fn tls_dir(&self) -> PathBuf {
        self.base.join(pki::DIR_NAME)
    }

    fn state_file(state_dir: &Path) -> PathBuf {
        state_dir.join("state")
    }

    /// Reads the state file in `state_dir`, if there is one.
    pub fn load(state_dir: &Path) -> Result<Option<Cluster>> {
        let path = Cluster::state_file(state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", path.display()).into()),
        };
        let get = |key: &str| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
                .ok_or_else(|| format!("{}: no `{key}=` line", path.display()))
        };
        let number = |key: &str| -> Result<u32> {
            let v = get(key)?;
            v.parse::<u32>()
                .map_err(|_| format!("{}: bad {key}={v}", path.display()).into())
        };
        let owner = get("owner").ok().and_then(|v| v.parse().ok());
        let profile = get("profile")
            .ok()
            .and_then(|p| Profile::parse(&p))
            .unwrap_or(Profile::Test);
        let base = PathBuf::from(get("base")?);
        let port_of = |key: &str| get(key).ok().and_then(|v| v.parse::<u16>().ok());
        let standby = port_of("standby_port").map(|port| {
            let pid = get("standby_pid")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            replica::standby_of(&base, port, pid)
        });
        let pgbouncer = port_of("pgbouncer_port").map(|port| pgbouncer::Bouncer::of(&base, port));
        Ok(Some(Cluster {
            state_dir: state_dir.to_path_buf(),
            base,
            datadir: PathBuf::from(get("datadir")?),
            socket_dir: PathBuf::from(get("socket_dir")?),
            bindir: PathBuf::from(get("bindir")?),
            port: u16::try_from(number("port")?).map_err(|_| "bad port")?,
            pid: number("pid")?,
            owner,
            profile,
            standby,
            pgbouncer,
        }))
    }

    fn save(&self) -> Result<()> {
        let mut text = String::new();
        let _ = writeln!(text, "datadir={}", self.datadir.display());
        let _ = writeln!(text, "port={}", self.port);
        let _ = writeln!(text, "socket_dir={}", self.socket_dir.display());
        let _ = writeln!(text, "bindir={}", self.bindir.display());
        let _ = writeln!(text, "pid={}", self.pid);
        let _ = writeln!(text, "base={}", self.base.display());
        let _ = writeln!(text, "log={}", self.log_file().display());
        let _ = writeln!(text, "tls_dir={}", self.tls_dir().display());
        if let Some(owner) = self.owner {
            let _ = writeln!(text, "owner={owner}");
        }
        let _ = writeln!(text, "profile={}", self.profile.name());
        let _ = writeln!(text, "dsn={}", self.dsn());
        if let Some(standby) = &self.standby {
            let _ = writeln!(text, "standby_port={}", standby.port);
            let _ = writeln!(text, "standby_pid={}", standby.pid);
            let _ = writeln!(text, "standby_datadir={}", standby.datadir.display());
            let _ = writeln!(text, "standby_dsn={}", standby.dsn());
        }
        if let Some(bouncer) = &self.pgbouncer {
            let _ = writeln!(text, "pgbouncer_port={}", bouncer.port);
            let _ = writeln!(text, "pgbouncer_dsn={}", bouncer.dsn());
        }
        std::fs::create_dir_all(&self.state_dir)
            .map_err(|e| format!("creating {}: {e}", self.state_dir.display()))?;
        let path = Cluster::state_file(&self.state_dir);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(())
    }

    /// Whether the recorded postmaster is alive and still owns the data folder.
    pub fn is_running(&self) -> bool {
        self.pid != 0 && postmaster_pid(&self.datadir) == Some(self.pid) && sys::alive(self.pid)
    }

    /// Whether the process this cluster belongs to is gone (never for `pg start`'s).
    pub fn is_orphaned(&self) -> bool {
        match self.owner {
            None => false,
            Some(owner) => owner == std::process::id() || !sys::alive(owner),
        }
    }

    /// Starts a cluster described by `state_dir`, or reuses the one running there.
    /// Returns the cluster and whether it was started by this call.
    pub fn start(
        state_dir: &Path,
        profile: Profile,
        owner: Option<u32>,
    ) -> Result<(Cluster, bool)> {
        match Cluster::load(state_dir) {
            Ok(Some(existing)) if existing.is_running() && !existing.is_orphaned() => {
                return Ok((existing, false));
            }
            Ok(Some(stale)) => {
                errln!(
                    "xtask: cleaning up a stale cluster ({})",
                    stale.base.display()
                );
                stale.stop()?;
            }
            Ok(None) => {}
            Err(e) => {
                errln!("xtask: ignoring unreadable cluster state: {e}");
                let _ = std::fs::remove_file(Cluster::state_file(state_dir));
            }
        }
        // Installs the server binaries and openssl when missing (root with apt-get).
        crate::install::ensure(crate::install::Needs { pgbouncer: false })?;
        let bindir = bindir()?;
        let user = if sys::is_root() {
            Some(postgres_ids()?)
        } else {
            None
        };
        let label = match state_dir.file_name().and_then(OsStr::to_str) {
            Some("aiopg-pg") | None => "dev",
            Some(name) if name.starts_with("run-") => "run",
            Some(name) => name,
        };
        let base = fresh_temp_dir(label)?;
        let mut cluster = Cluster {
            state_dir: state_dir.to_path_buf(),
            datadir: base.join("data"),
            socket_dir: base.join("sock"),
            base,
            bindir,
            port: 0,
            pid: 0,
            owner,
            profile,
            standby: None,
            pgbouncer: None,
        };
        // Recorded before anything runs, so that an interrupted start can be cleaned up.
        cluster.save()?;
        if let Err(e) = cluster.boot(user) {
            if let Err(stop_err) = cluster.stop() {
                errln!("xtask: cleaning up after the failed start: {stop_err}");
            }
            return Err(e);
        }
        Ok((cluster, true))
    }

    fn boot(&mut self, user: Option<(u32, u32)>) -> Result<()> {
        let runner = PgRunner { user };
        std::fs::create_dir(&self.socket_dir)
            .map_err(|e| format!("creating {}: {e}", self.socket_dir.display()))?;
        if let Some((uid, gid)) = user {
            for dir in [&self.base, &self.socket_dir] {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                    .map_err(|e| format!("chown postgres {}: {e}", dir.display()))?;
            }
        }
        // Before initdb: a missing openssl fails the start early.
        pki::generate(&self.tls_dir(), user)?;

        let initdb = self.bindir.join("initdb");
        runner.run(
            "initdb",
            &initdb,
            [
                OsStr::new("-D"),
                self.datadir.as_os_str(),
                OsStr::new("-U"),
                OsStr::new(SUPERUSER),
                OsStr::new("--auth=trust"),
                OsStr::new("--encoding=UTF8"),
                OsStr::new("--locale=C"),
                OsStr::new("--no-sync"),
            ],
        )?;

        let conf = self.datadir.join("postgresql.conf");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut f| f.write_all(b"\n# added by cargo xtask\ninclude 'aiopg.conf'\n"))
            .map_err(|e| format!("writing {}: {e}", conf.display()))?;
        self.write_file("pg_hba.conf", &hba_conf(), user)?;

        let (bindir, datadir) = (self.bindir.clone(), self.datadir.clone());
        let (port, pid) = start_server(&runner, &bindir, &datadir, None, |port| {
            self.port = port;
            self.write_file("aiopg.conf", &self.settings(), user)?;
            self.save()
        })?;
        self.port = port;
        self.pid = pid;
        self.save()?;
        self.wait_ready()?;
        self.create_roles()
    }

    /// aiopg.conf: the port, where to listen, TLS, then the profile's settings.
    fn settings(&self) -> String {
        server_conf(
            self.profile,
            self.port,
            &self.socket_dir,
            &self.tls_dir(),
            "primary",
        )
    }

    fn write_file(&self, name: &str, text: &str, user: Option<(u32, u32)>) -> Result<()> {
        write_owned(&self.datadir.join(name), text, user)
    }

    /// Polls until the server answers on its socket and its TCP port (bounded).
    fn wait_ready(&self) -> Result<()> {
        wait_ready(
            &self.bindir,
            &self.socket_dir,
            self.port,
            self.pid,
            &self.log_file(),
        )
    }

    /// Creates the login roles and the `aiopg_test` database.
    fn create_roles(&self) -> Result<()> {
        let mut sql = String::from("\\set ON_ERROR_STOP 1\n");
        let names: Vec<&str> = ROLES.iter().map(|r| r.name).collect();
        let all = names.join(", ");
        for Role {
            name,
            password,
            method,
            ..
        } in ROLES
        {
            // The stored hash decides what the server can check: an md5 role needs an
            // MD5-hashed password, or the server silently upgrades md5 auth to SCRAM.
            let encryption = if *method == "md5" {
                "md5"
            } else {
                "scram-sha-256"
            };
            let _ = writeln!(sql, "SET password_encryption = '{encryption}';");
            match password {
                Some(pw) => {
                    let _ = writeln!(
                        sql,
                        "CREATE ROLE {name} LOGIN CREATEDB PASSWORD '{}';",
                        pw.replace('\'', "''")
                    );
                }
                None => {
                    let _ = writeln!(sql, "CREATE ROLE {name} LOGIN CREATEDB;");
                }
            }
        }
        sql.push_str("RESET password_encryption;\n");
        // Each md5 and scram-sha-256 role's password must be stored the way its method
        // checks it.
        sql.push_str("DO $$ BEGIN\n");
        for Role { name, method, .. } in ROLES {
            let (pattern, what) = match *method {
                "md5" => ("md5%", "MD5"),
                "scram-sha-256" => ("SCRAM-SHA-256$%", "SCRAM"),
                _ => continue,
            };
            let _ = writeln!(
                sql,
                "  IF (SELECT rolpassword IS NULL OR rolpassword NOT LIKE '{pattern}' \
                 FROM pg_authid WHERE rolname = '{name}') THEN
    RAISE EXCEPTION '{name} password is not {what}-hashed';
  END IF;"
            );
        }
        sql.push_str("END $$;\n");
        let _ = writeln!(
            sql,
            "GRANT CONNECT, TEMPORARY ON DATABASE postgres TO {all};"
        );
        let _ = writeln!(sql, "GRANT CREATE ON SCHEMA public TO {all};");
        let _ = writeln!(sql, "CREATE DATABASE aiopg_test OWNER {SUPERUSER};");
        let _ = writeln!(
            sql,
            "GRANT CONNECT, TEMPORARY, CREATE ON DATABASE aiopg_test TO {all};"
        );
        sql.push_str("\\connect aiopg_test\n");
        let _ = writeln!(sql, "GRANT CREATE ON SCHEMA public TO {all};");

        let psql = self.psql()?;
        let mut child = pg_command(&psql)
            .args(["-X", "-q", "-U", SUPERUSER, "-d", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running {}: {e}", psql.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(sql.as_bytes())
                .map_err(|e| format!("writing to psql: {e}"))?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(format!("creating the test roles failed:\n{}", output_text(&out)).into());
        }
        Ok(())
    }

    /// Starts the primary's hot standby unless it has one (see [`replica`]); records it.
    pub fn add_standby(&mut self) -> Result<()> {
        if self
            .standby
            .as_ref()
            .is_some_and(replica::Server::is_running)
        {
            return Ok(());
        }
        if self.profile != Profile::Test {
            return Err(format!(
                "the {} profile keeps no WAL for a standby (wal_level = minimal)",
                self.profile.name()
            )
            .into());
        }
        self.standby = None;
        let standby = replica::start_standby(self)?;
        self.standby = Some(standby);
        self.save()
    }

    /// Starts a PgBouncer in front of the primary unless it has one (see
    /// [`pgbouncer`]); records it. Fails when no pgbouncer binary is found.
    pub fn add_pgbouncer(&mut self) -> Result<()> {
        if self
            .pgbouncer
            .as_ref()
            .is_some_and(pgbouncer::Bouncer::is_running)
        {
            return Ok(());
        }
        crate::install::ensure(crate::install::Needs { pgbouncer: true })?;
        let program = pgbouncer::find().ok_or_else(pgbouncer::missing)?;
        self.pgbouncer = Some(pgbouncer::start(self, &program)?);
        self.save()
    }

    /// The `AIOPG_TEST_*` variables describing the cluster to tests: the primary, its
    /// TLS files and server binaries, and the standby and PgBouncer when running.
    pub fn test_env(&self) -> Vec<(String, String)> {
        let path = |p: &Path| p.display().to_string();
        let mut env: Vec<(String, String)> = vec![
            ("AIOPG_TEST_DSN".into(), self.dsn()),
            ("AIOPG_TEST_HOST".into(), "127.0.0.1".into()),
            ("AIOPG_TEST_PORT".into(), self.port.to_string()),
            ("AIOPG_TEST_SOCKET_DIR".into(), path(&self.socket_dir)),
            // For tests that run a private cluster of their own
            // (tests/integration/pool_faults.rs).
            ("AIOPG_TEST_PG_BINDIR".into(), path(&self.bindir)),
            // For tests that promote, stop and start servers (see [`replica`]).
            (
                "AIOPG_TEST_PG_CTL".into(),
                path(&self.bindir.join("pg_ctl")),
            ),
            ("AIOPG_TEST_PG_RUNAS".into(), runas().into()),
            ("AIOPG_TEST_PRIMARY_DATADIR".into(), path(&self.datadir)),
        ];
        // The cluster's CA, server and client certificates and keys, for the TLS tests
        // (xtask/src/pki.rs lists the files).
        let tls = self.tls_dir();
        if tls.is_dir() {
            env.push(("AIOPG_TEST_TLS_DIR".into(), path(&tls)));
        }
        if let Some(standby) = &self.standby {
            env.push(("AIOPG_TEST_STANDBY_PORT".into(), standby.port.to_string()));
            env.push((
                "AIOPG_TEST_STANDBY_SOCKET_DIR".into(),
                path(&standby.socket_dir),
            ));
            env.push(("AIOPG_TEST_STANDBY_DATADIR".into(), path(&standby.datadir)));
        }
        if let Some(bouncer) = &self.pgbouncer {
            env.push(("AIOPG_TEST_PGBOUNCER_PORT".into(), bouncer.port.to_string()));
        }
        env
    }

    /// `psql` from the server's bindir, else from PATH.
    pub fn psql(&self) -> Result<PathBuf> {
        psql_in(&self.bindir)
    }

    /// Stops the server (immediate shutdown), deletes its folder and its state file.
    /// Works on half-started clusters too.
    pub fn stop(&self) -> Result<()> {
        let user = if sys::is_root() {
            postgres_ids().ok()
        } else {
            None
        };
        let runner = PgRunner { user };
        // First what runs beside the primary in its folder (PgBouncer, the standby,
        // failover pairs), whatever state tests left them in.
        pgbouncer::stop_under(&self.base);
        replica::stop_all_under(&runner, &self.bindir, &self.base, &self.datadir);
        stop_server(&runner, &self.bindir, &self.datadir, self.pid);
        // Refuse to delete anything xtask did not create.
        let ours = self
            .base
            .file_name()
            .and_then(OsStr::to_str)
            .is_some_and(|n| n.starts_with("aiopg-pg-"));
        if ours {
            match std::fs::remove_dir_all(&self.base) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("deleting {}: {e}", self.base.display()).into()),
            }
        } else {
            errln!(
                "xtask: not deleting {} (not an xtask folder)",
                self.base.display()
            );
        }
        let _ = std::fs::remove_file(Cluster::state_file(&self.state_dir));
        // Only succeeds when empty (a per-run folder); the top folder keeps its subfolders.
        let _ = std::fs::remove_dir(&self.state_dir);
        Ok(())
    }
}

/// Stops a cluster when dropped (also on panic), unless it was reused from elsewhere.
pub struct Guard {
    cluster: Option<Cluster>,
}

impl Guard {
    /// Takes charge of stopping `cluster` when `started` (it was started by us).
    pub fn new(cluster: &Cluster, started: bool) -> Guard {
        Guard {
            cluster: started.then(|| cluster.clone()),
        }
    }

    /// Stops the cluster now, reporting errors.
    pub fn stop(&mut self) {
        if let Some(cluster) = &self.cluster {
            errln!(
                "xtask: stopping the PostgreSQL cluster (port {})",
                cluster.port
            );
            if let Err(e) = cluster.stop() {
                errln!("xtask: stopping the cluster: {e}");
            }
        }
        // Cleared only once stopped: if anything above panicked, `drop` tries again.
        self.cluster = None;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs commands as the `postgres` user when xtask runs as root (the server refuses
/// to run as root), as the current user otherwise.
pub(crate) struct PgRunner {
    pub(crate) user: Option<(u32, u32)>,
}

impl PgRunner {
    pub(crate) fn command<I, S>(&self, program: &Path, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = if self.user.is_none() {
            let mut cmd = pg_command(program);
            cmd.args(args);
            cmd
        } else if let Some(runuser) = find_runuser() {
            let mut cmd = pg_command(&runuser);
            cmd.args(["-u", "postgres", "--"]).arg(program).args(args);
            cmd
        } else {
            let mut line = String::from("exec");
            for word in std::iter::once(program.as_os_str().to_os_string())
                .chain(args.into_iter().map(|a| a.as_ref().to_os_string()))
            {
                line.push(' ');
                line.push_str(&shell_quote(&word.to_string_lossy()));
            }
            let mut cmd = pg_command(Path::new("su"));
            cmd.args(["postgres", "-s", "/bin/sh", "-c", &line]);
            cmd
        };
        // The postgres user may not be able to enter the current folder.
        cmd.current_dir("/").stdin(Stdio::null());
        cmd
    }

    pub(crate) fn run<I, S>(&self, what: &str, program: &Path, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self
            .command(program, args)
            .output()
            .map_err(|e| format!("{what}: running {}: {e}", program.display()))?;
        if !out.status.success() {
            return Err(format!("{what} failed ({}):\n{}", out.status, output_text(&out)).into());
        }
        Ok(out)
    }
}

/// Starts the server in `datadir` with `pg_ctl start -w`, logging to its
/// `postgres.log`: `write_conf(port)` writes its configuration for the port to try
/// (a fresh free one each attempt, or `fixed`, tried once). Returns the port and the
/// postmaster's pid.
pub(crate) fn start_server(
    runner: &PgRunner,
    bindir: &Path,
    datadir: &Path,
    fixed: Option<u16>,
    mut write_conf: impl FnMut(u16) -> Result<()>,
) -> Result<(u16, u32)> {
    let pg_ctl = bindir.join("pg_ctl");
    let log = datadir.join(LOG_NAME);
    let attempts = if fixed.is_some() { 1 } else { 5 };
    let mut port = 0;
    for attempt in 1..=attempts {
        port = match fixed {
            Some(port) => port,
            None => free_port()?,
        };
        write_conf(port)?;
        let started = runner.run(
            "pg_ctl start",
            &pg_ctl,
            [
                OsStr::new("start"),
                OsStr::new("-D"),
                datadir.as_os_str(),
                OsStr::new("-l"),
                log.as_os_str(),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new(TIMEOUT_ARG),
                OsStr::new("-s"),
            ],
        );
        match started {
            Ok(_) => break,
            Err(e) => {
                let tail = log_tail(&log, 20);
                let port_taken = tail.contains("could not bind") || tail.contains("already in use");
                if port_taken && attempt < attempts {
                    errln!("xtask: port {port} was taken, trying another");
                    continue;
                }
                let hint = if port_taken && fixed.is_some() {
                    format!("\nport {port} is taken by another program: stop it and retry")
                } else {
                    String::new()
                };
                return Err(format!("{e}\n--- {} ---\n{tail}{hint}", log.display()).into());
            }
        }
    }
    let pid = postmaster_pid(datadir).ok_or_else(|| {
        format!(
            "the server started but left no postmaster.pid ({})",
            log.display()
        )
    })?;
    Ok((port, pid))
}

/// Polls until the server answers on its socket and its TCP port (bounded).
pub(crate) fn wait_ready(
    bindir: &Path,
    socket_dir: &Path,
    port: u16,
    pid: u32,
    log: &Path,
) -> Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    let pg_isready = bindir.join("pg_isready");
    let port_arg = port.to_string();
    loop {
        let socket_ok = if pg_isready.is_file() {
            pg_command(&pg_isready)
                .args([
                    "-q", "-t", "2", "-U", SUPERUSER, "-d", "postgres", "-p", &port_arg, "-h",
                ])
                .arg(socket_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        } else {
            socket_dir.join(format!(".s.PGSQL.{port}")).exists()
        };
        let tcp_ok = socket_ok
            && TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))
                .is_ok();
        if tcp_ok {
            return Ok(());
        }
        if !sys::alive(pid) || Instant::now() > deadline {
            return Err(format!(
                "the server on port {port} did not become ready within {}s\n--- {} ---\n{}",
                TIMEOUT.as_secs(),
                log.display(),
                log_tail(log, 20)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the server in `datadir` (immediate shutdown), killing its postmaster when
/// pg_ctl fails; `recorded_pid` (0: none) stands in for a missing postmaster.pid.
/// Reports problems rather than failing: what follows deletes the folder anyway.
pub(crate) fn stop_server(runner: &PgRunner, bindir: &Path, datadir: &Path, recorded_pid: u32) {
    let pid = postmaster_pid(datadir).or((recorded_pid != 0).then_some(recorded_pid));
    let mut stopped = true;
    if datadir.join("postmaster.pid").exists() {
        stopped = runner
            .run(
                "pg_ctl stop",
                &bindir.join("pg_ctl"),
                [
                    OsStr::new("stop"),
                    OsStr::new("-D"),
                    datadir.as_os_str(),
                    OsStr::new("-m"),
                    OsStr::new("immediate"),
                    OsStr::new("-w"),
                    OsStr::new("-t"),
                    OsStr::new(TIMEOUT_ARG),
                    OsStr::new("-s"),
                ],
            )
            .is_ok();
    }
    if let Some(pid) = pid {
        if !stopped && postmaster_pid(datadir) == Some(pid) && sys::alive(pid) {
            errln!("xtask: pg_ctl stop failed, killing postmaster {pid}");
            sys::send(pid as i32, sys::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while sys::alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Runs one SQL text with psql as the superuser over the server's socket; returns its
/// unaligned, tuples-only output, trimmed.
pub(crate) fn psql_query(bindir: &Path, socket_dir: &Path, port: u16, sql: &str) -> Result<String> {
    let psql = psql_in(bindir)?;
    let out = pg_command(&psql)
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            SUPERUSER,
        ])
        .args(["-d", "postgres", "-p"])
        .arg(port.to_string())
        .arg("-h")
        .arg(socket_dir)
        .arg("-c")
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", psql.display()))?;
    if !out.status.success() {
        return Err(format!(
            "psql on port {port} `{sql}` failed ({}):\n{}",
            out.status,
            output_text(&out)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `psql` from `bindir`, else from PATH.
pub(crate) fn psql_in(bindir: &Path) -> Result<PathBuf> {
    let local = bindir.join("psql");
    if local.is_file() {
        return Ok(local);
    }
    which_dir("psql")
        .map(|d| d.join("psql"))
        .ok_or_else(|| "psql not found: install the postgresql-client package".into())
}

/// Writes `text` to `path`, owned by `user` when given (root runs the servers as it).
pub(crate) fn write_owned(path: &Path, text: &str, user: Option<(u32, u32)>) -> Result<()> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    chown(path, user)
}

/// Creates the folder `path` (and its parents), owned by `user` when given.
pub(crate) fn create_owned_dir(path: &Path, user: Option<(u32, u32)>) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    chown(path, user)
}

fn chown(path: &Path, user: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| format!("chown postgres {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The uid and gid the servers run as: the `postgres` user's when xtask runs as root,
/// none (the current user) otherwise.
pub(crate) fn server_user() -> Result<Option<(u32, u32)>> {
    if sys::is_root() {
        postgres_ids().map(Some)
    } else {
        Ok(None)
    }
}

/// A command for a PostgreSQL tool, shielded from the caller's libpq settings.
pub(crate) fn pg_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for var in [
        "PGDATA",
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGSSLMODE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

pub(crate) fn find_runuser() -> Option<PathBuf> {
    which_dir("runuser").map(|d| d.join("runuser")).or_else(|| {
        ["/usr/sbin/runuser", "/sbin/runuser"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    })
}

/// The uid and gid of the `postgres` user.
fn postgres_ids() -> Result<(u32, u32)> {
    let from_passwd = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("postgres:"))
                .map(str::to_string)
        });
    let line = from_passwd.or_else(|| {
        let out = Command::new("getent")
            .args(["passwd", "postgres"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    let line = line.ok_or(
        "running as root needs a `postgres` user to run the server \
         (the `postgresql` package creates it)",
    )?;
    let fields: Vec<&str> = line.split(':').collect();
    match (
        fields.get(2).and_then(|v| v.parse().ok()),
        fields.get(3).and_then(|v| v.parse().ok()),
    ) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(format!("cannot parse the postgres user: {line}").into()),
    }
}

/// One role's lines, then catch-all `trust` lines for everyone else (the superuser).
/// The first matching line decides, so each role's lines end with `reject` lines for the
/// connections its [`Transport`] refuses: without them those would reach `trust`.
fn hba_conf() -> String {
    let mut text = String::from(
        "# written by cargo xtask: one role per authentication method, catch-all trust last\n\
         # TYPE  DATABASE  USER  ADDRESS  METHOD\n",
    );
    const TCP: [&str; 2] = ["127.0.0.1/32", "::1/128"];
    for Role {
        name,
        method,
        transport,
        ..
    } in ROLES
    {
        // (Unix socket method, TCP line type, TCP line type to reject). The socket
        // never carries TLS.
        let (local, tcp, refused) = match transport {
            Transport::Any => (*method, "host", None),
            Transport::TlsOnly => ("reject", "hostssl", Some("hostnossl")),
            Transport::PlainOnly => (*method, "hostnossl", Some("hostssl")),
        };
        let _ = writeln!(text, "local all {name} {local}");
        for addr in TCP {
            let _ = writeln!(text, "{tcp} all {name} {addr} {method}");
        }
        if let Some(refused) = refused {
            for addr in TCP {
                let _ = writeln!(text, "{refused} all {name} {addr} reject");
            }
        }
    }
    text.push_str(
        "local all all trust\n\
         host all all 127.0.0.1/32 trust\n\
         host all all ::1/128 trust\n\
         local replication all trust\n\
         host replication all 127.0.0.1/32 trust\n\
         host replication all ::1/128 trust\n",
    );
    text
}

/// aiopg.conf for one server of a cluster: its port and socket folder, where to listen,
/// TLS with the cluster's PKI in `tls`, then the profile's settings. `name` becomes
/// `cluster_name` (`aiopg-<name>`, shown in `ps`).
pub(crate) fn server_conf(
    profile: Profile,
    port: u16,
    socket_dir: &Path,
    tls: &Path,
    name: &str,
) -> String {
    format!(
        "# written by cargo xtask ({} profile)\n\
         port = {}\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = {}\n\
         cluster_name = 'aiopg-{name}'\n\
         # TLS with the throwaway PKI in {}; client certificates are checked\n\
         # against the CA and its CRL (`cert` logins).\n\
         ssl = on\n\
         ssl_cert_file = {}\n\
         ssl_key_file = {}\n\
         ssl_ca_file = {}\n\
         ssl_crl_file = {}\n\
         {}",
        profile.name(),
        port,
        conf_quote(socket_dir),
        tls.display(),
        conf_quote(&tls.join(pki::SERVER_CERT)),
        conf_quote(&tls.join(pki::SERVER_KEY)),
        conf_quote(&tls.join(pki::CA_CERT)),
        conf_quote(&tls.join(pki::CA_CRL)),
        profile.settings()
    )
}

/// A new, empty folder in the temporary directory (short paths keep the Unix socket
/// path under its 107-byte limit).
fn fresh_temp_dir(label: &str) -> Result<PathBuf> {
    let tmp = std::env::temp_dir();
    for attempt in 0..100u32 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = tmp.join(format!(
            "aiopg-pg-{label}-{}-{:x}",
            std::process::id(),
            nanos.wrapping_add(attempt)
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("creating {}: {e}", dir.display()).into()),
        }
    }
    Err(format!("could not create a fresh folder in {}", tmp.display()).into())
}

/// A TCP port that was free a moment ago (the server may still lose a race for it:
/// the caller retries).
pub(crate) fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("finding a free port: {e}"))?;
    Ok(listener.local_addr()?.port())
}

/// The pid on the first line of `postmaster.pid`.
pub(crate) fn postmaster_pid(datadir: &Path) -> Option<u32> {
    std::fs::read_to_string(datadir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn conf_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "''"))
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

// ---------------------------------------------------------------------------
// `cargo xtask pg start|stop|status`.

pub fn command(root: &Path, args: &[String]) -> Result<i32> {
    let dir = state_root(root);
    match args.first().map(String::as_str) {
        Some("start") => {
            let flags = StartFlags::parse(&args[1..])?;
            let (mut cluster, started) = Cluster::start(&dir, Profile::Test, None)?;
            if started {
                errln!("xtask: started a PostgreSQL cluster");
            } else {
                errln!("xtask: a cluster is already running; reusing it");
            }
            let pair = match flags.start_extras(&mut cluster) {
                Ok(pair) => pair,
                Err(e) => {
                    if started {
                        errln!("xtask: stopping the cluster just started");
                        if let Err(stop_err) = cluster.stop() {
                            errln!("xtask: stopping the cluster: {stop_err}");
                        }
                    }
                    return Err(e);
                }
            };
            describe(&cluster);
            if let Some(pair) = &pair {
                describe_pair(pair);
            }
            outln!("{}", cluster.dsn());
            Ok(0)
        }
        Some("failover-reset") => {
            let Some(pair_dir) = args.get(1) else {
                return Err("usage: cargo xtask pg failover-reset <dir> \
                            (the pair's AIOPG_TEST_FAILOVER_DIR)"
                    .into());
            };
            let started = Instant::now();
            let pair = replica::FailoverPair::reset(Path::new(pair_dir))?;
            errln!(
                "xtask: failover pair reset in {:.1}s: primary port {}, standby port {}",
                started.elapsed().as_secs_f64(),
                pair.primary.port,
                pair.standby.port
            );
            Ok(0)
        }
        Some("stop") => {
            match Cluster::load(&dir)? {
                Some(cluster) => {
                    let was_running = cluster.is_running();
                    cluster.stop()?;
                    if was_running {
                        errln!(
                            "xtask: stopped the cluster and deleted {}",
                            cluster.base.display()
                        );
                    } else {
                        errln!(
                            "xtask: the cluster was not running; deleted {}",
                            cluster.base.display()
                        );
                    }
                }
                None => errln!("xtask: no cluster to stop"),
            }
            for other in others(&dir) {
                if other.is_orphaned() {
                    errln!("xtask: cleaning up stale {}", other.state_dir.display());
                    other.stop()?;
                }
            }
            Ok(0)
        }
        Some("status") => {
            for other in others(&dir) {
                let what = if other.is_orphaned() {
                    "stale (its xtask is gone; `cargo xtask pg stop` cleans it up)"
                } else if other.is_running() {
                    "running"
                } else {
                    "starting or stopping"
                };
                errln!(
                    "xtask: {} cluster in {}: {what}, {}",
                    other.profile.name(),
                    other.state_dir.display(),
                    other.dsn()
                );
            }
            match Cluster::load(&dir)? {
                Some(cluster) if cluster.is_running() => {
                    errln!("xtask: running");
                    describe(&cluster);
                    outln!("{}", cluster.dsn());
                    Ok(0)
                }
                Some(_) => {
                    outln!("not running (stale state: `cargo xtask pg stop` cleans it up)");
                    Ok(3)
                }
                None => {
                    outln!("not running");
                    Ok(3)
                }
            }
        }
        _ => Err(
            "usage: cargo xtask pg start [--standby] [--pgbouncer] [--failover] | stop | \
                  status | failover-reset <dir>"
                .into(),
        ),
    }
}

fn describe(c: &Cluster) {
    errln!("  pid:        {}", c.pid);
    errln!("  data:       {}", c.datadir.display());
    errln!("  log:        {}", c.log_file().display());
    errln!("  bindir:     {}", c.bindir.display());
    errln!(
        "  state:      {}",
        Cluster::state_file(&c.state_dir).display()
    );
    errln!("  TCP:        {}", c.dsn());
    errln!("  socket:     {}", c.socket_dsn());
    errln!("  roles:      superuser {SUPERUSER} (trust), database aiopg_test");
    for Role {
        name,
        password,
        method,
        transport,
    } in ROLES
    {
        let only = match transport {
            Transport::Any => "",
            Transport::TlsOnly => ", TLS only",
            Transport::PlainOnly => ", without TLS only",
        };
        match password {
            Some(pw) => errln!("              {name} / {pw} ({method}{only})"),
            None => errln!("              {name} ({method}{only})"),
        }
    }
    let tls = c.tls_dir();
    if tls.is_dir() {
        errln!(
            "  TLS:        {} (verify-full needs host=localhost: the server certificate \
             names no IP)",
            tls.display()
        );
    } else {
        errln!(
            "  TLS:        none ({} is missing: the cluster predates TLS support; \
             `cargo xtask pg stop` and start again)",
            tls.display()
        );
    }
    if let Some(standby) = &c.standby {
        let state = if standby.is_running() {
            "running"
        } else {
            "not running"
        };
        errln!("  standby:    {} ({state})", standby.dsn());
        errln!("              socket {}", standby.socket_dir.display());
        errln!("              data {}", standby.datadir.display());
    }
    if let Some(bouncer) = &c.pgbouncer {
        let state = if bouncer.is_running() {
            "running"
        } else {
            "not running"
        };
        errln!(
            "  pgbouncer:  {} ({state}, transaction pooling)",
            bouncer.dsn()
        );
        errln!(
            "              admin console: psql -h 127.0.0.1 -p {} -U {SUPERUSER} pgbouncer",
            bouncer.port
        );
        errln!("              log {}", bouncer.log_file().display());
    }
    let mut first = true;
    for (var, value) in c.test_env() {
        let label = if first {
            "  for tests:"
        } else {
            "            "
        };
        first = false;
        errln!("{label}  export {var}='{value}'");
    }
    if c.standby.is_some() {
        errln!("  pg_ctl:     (tests: promote, stop or start a server; never the shared ones)");
        for line in replica::pg_ctl_hint(&c.bindir.join("pg_ctl"), runas()).lines() {
            errln!("              {line}");
        }
    }
}

/// `pg start --failover`'s pair.
fn describe_pair(pair: &replica::FailoverPair) {
    errln!(
        "  failover:   primary {} (data {})",
        pair.primary.dsn(),
        pair.primary.datadir.display()
    );
    errln!(
        "              standby {} (data {})",
        pair.standby.dsn(),
        pair.standby.datadir.display()
    );
    for (var, value) in pair.env() {
        errln!("              export {var}='{value}'");
    }
    if let Some(xtask) = xtask_exe() {
        errln!(
            "              export AIOPG_TEST_XTASK='{}'",
            xtask.display()
        );
        errln!(
            "              reset: {} pg failover-reset {}",
            xtask.display(),
            pair.dir.display()
        );
    }
}

/// This xtask binary, which tests run for `pg failover-reset` (`AIOPG_TEST_XTASK`).
pub fn xtask_exe() -> Option<PathBuf> {
    std::env::current_exe().ok()
}

/// `AIOPG_TEST_PG_RUNAS`: the user the servers run as when that is not the current
/// user (xtask runs as root), else empty.
pub fn runas() -> &'static str {
    if sys::is_root() {
        SUPERUSER
    } else {
        ""
    }
}

/// `pg start`'s options: what to start beside the primary.
#[derive(Debug, Default, PartialEq, Eq)]
struct StartFlags {
    standby: bool,
    pgbouncer: bool,
    failover: bool,
}

impl StartFlags {
    fn parse(args: &[String]) -> Result<StartFlags> {
        let mut flags = StartFlags::default();
        for arg in args {
            match arg.as_str() {
                "--standby" => flags.standby = true,
                "--pgbouncer" => flags.pgbouncer = true,
                "--failover" => flags.failover = true,
                "--all" => {
                    flags = StartFlags {
                        standby: true,
                        pgbouncer: true,
                        failover: true,
                    }
                }
                other => {
                    return Err(format!(
                        "pg start: unknown option `{other}` (options: --standby, \
                         --pgbouncer, --failover, --all)"
                    )
                    .into())
                }
            }
        }
        Ok(flags)
    }

    /// Starts what the flags ask for (reusing what runs); returns the failover pair.
    fn start_extras(&self, cluster: &mut Cluster) -> Result<Option<replica::FailoverPair>> {
        if self.standby {
            cluster.add_standby()?;
        }
        if self.pgbouncer {
            cluster.add_pgbouncer()?;
        }
        if self.failover {
            return replica::FailoverPair::create(cluster, "dev").map(Some);
        }
        Ok(None)
    }
}

/// Clusters recorded in subfolders (bench, per-run).
fn others(dir: &Path) -> Vec<Cluster> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<Cluster> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| Cluster::load(&e.path()).ok().flatten())
        .collect();
    found.sort_by(|a, b| a.state_dir.cmp(&b.state_dir));
    found
}

#[cfg(test)]
mod tests {
    use super::{hba_conf, server_conf, Profile, StartFlags, ROLES};
    use std::path::Path;

    #[test]
    fn start_flags() {
        let parse = |args: &[&str]| {
            StartFlags::parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(parse(&[]).unwrap(), StartFlags::default());
        let both = parse(&["--standby", "--pgbouncer"]).unwrap();
        assert!(both.standby && both.pgbouncer && !both.failover);
        let all = parse(&["--all"]).unwrap();
        assert!(all.standby && all.pgbouncer && all.failover);
        let err = parse(&["--stanby"]).unwrap_err().to_string();
        assert!(
            err.contains("--stanby") && err.contains("--standby"),
            "{err}"
        );
    }

    #[test]
    fn test_servers_can_stream_to_standbys() {
        let conf = server_conf(
            Profile::Test,
            5544,
            Path::new("/tmp/b/standby/sock"),
            Path::new("/tmp/b/tls"),
            "standby",
        );
        // Later lines win: the last setting of each name counts.
        let last = |name: &str| {
            conf.lines()
                .filter_map(|l| l.split_once('='))
                .filter(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().to_string())
                .next_back()
        };
        assert_eq!(last("port").as_deref(), Some("5544"));
        assert_eq!(
            last("unix_socket_directories").as_deref(),
            Some("'/tmp/b/standby/sock'")
        );
        assert_eq!(last("cluster_name").as_deref(), Some("'aiopg-standby'"));
        assert_eq!(last("wal_level").as_deref(), Some("replica"));
        assert_eq!(last("hot_standby").as_deref(), Some("on"));
        let senders: u32 = last("max_wal_senders").unwrap().parse().unwrap();
        assert!(senders >= 5, "{conf}");
    }

    #[derive(Clone, Copy, Debug)]
    enum Via {
        Socket,
        Tls,
        Plain,
    }

    /// The method of the first pg_hba.conf line that a connection from 127.0.0.1 (or
    /// the socket) as `user` to database postgres matches, as the server picks it.
    fn method_for(hba: &str, user: &str, via: Via) -> String {
        for line in hba.lines().filter(|l| !l.starts_with('#')) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (kind, db, who) = (fields[0], fields[1], fields[2]);
            let kind_matches = match via {
                Via::Socket => kind == "local",
                Via::Tls => kind == "host" || kind == "hostssl",
                Via::Plain => kind == "host" || kind == "hostnossl",
            };
            let addr_matches = kind == "local" || fields[3] == "127.0.0.1/32";
            if kind_matches && addr_matches && db == "all" && (who == "all" || who == user) {
                return fields.last().unwrap_or(&"").to_string();
            }
        }
        "no line (refused)".into()
    }

    #[test]
    fn each_role_gets_in_only_the_way_it_should() {
        let hba = hba_conf();
        let cases = [
            ("aiopg_trust", ["trust", "trust", "trust"]),
            ("aiopg_password", ["password", "password", "password"]),
            ("aiopg_md5", ["md5", "md5", "md5"]),
            (
                "aiopg_scram",
                ["scram-sha-256", "scram-sha-256", "scram-sha-256"],
            ),
            ("aiopg_tls", ["reject", "scram-sha-256", "reject"]),
            ("aiopg_plain", ["scram-sha-256", "reject", "scram-sha-256"]),
            ("aiopg_tls_md5", ["reject", "md5", "reject"]),
            ("aiopg_tls_password", ["reject", "password", "reject"]),
            ("aiopg_cert", ["reject", "cert", "reject"]),
            ("postgres", ["trust", "trust", "trust"]),
        ];
        for (user, [socket, tls, plain]) in cases {
            for (via, want) in [(Via::Socket, socket), (Via::Tls, tls), (Via::Plain, plain)] {
                assert_eq!(
                    method_for(&hba, user, via),
                    want,
                    "{user} via {via:?}\n{hba}"
                );
            }
        }
        // Every role is covered above.
        for role in ROLES {
            assert!(
                cases.iter().any(|(user, _)| *user == role.name),
                "{}",
                role.name
            );
        }
    }

    #[test]
    fn roles_from_before_tls_keep_their_lines() {
        let hba = hba_conf();
        for (name, method) in [
            ("aiopg_trust", "trust"),
            ("aiopg_password", "password"),
            ("aiopg_md5", "md5"),
            ("aiopg_scram", "scram-sha-256"),
        ] {
            let lines: Vec<&str> = hba
                .lines()
                .filter(|l| l.split_whitespace().nth(2) == Some(name))
                .collect();
            assert_eq!(
                lines,
                [
                    format!("local all {name} {method}"),
                    format!("host all {name} 127.0.0.1/32 {method}"),
                    format!("host all {name} ::1/128 {method}"),
                ]
            );
        }
    }
}
