//! Streaming standbys and failover pairs beside a throwaway cluster's primary.
//!
//! Every server here is a `pg_basebackup` of a running server of the cluster, so it has
//! the same roles, passwords, pg_hba.conf and `aiopg_test` database, and uses the
//! cluster's TLS files; only `aiopg.conf` (port, socket folder, `cluster_name`) is
//! rewritten. They live in the cluster's base folder and run as the same user as the
//! primary (`postgres` when xtask runs as root):
//!
//! - `standby/{data,sock}`: the primary's hot standby ([`start_standby`]), streaming
//!   through the physical slot [`STANDBY_SLOT`]. Shared by every test process of a run,
//!   so tests only read from it (`target_session_attrs`, `pg_is_in_recovery()`, replay):
//!   they must never promote or stop it, nor the primary.
//! - `failover-<label>/{primary,standby}/{data,sock}` and `pair.state`: a
//!   [`FailoverPair`], a primary of its own (a copy of the cluster's primary started as
//!   a new primary) with a streaming standby of it. Tests may stop, promote and restart
//!   these servers as they like: `test-all-runtimes` makes a fresh pair for each
//!   runtime's test process (all three in the background while the unit tests and the
//!   build run) and deletes it after that process, so each runtime starts from a
//!   primary and a streaming standby; a test process that fails over more than once
//!   rebuilds it with `"$AIOPG_TEST_XTASK" pg failover-reset "$AIOPG_TEST_FAILOVER_DIR"`
//!   (same ports, about 2 s). The pair is one per process: its failover tests take
//!   turns (a process-wide lock), each starting from a reset pair or leaving it reset.
//!
//! Stopping the cluster stops every server found in its base folder, promoted,
//! restarted or stopped ([`stop_all_under`]), before the folder is deleted.
//!
//! What tests get (besides the primary's `AIOPG_TEST_DSN`/`HOST`/`PORT`/`SOCKET_DIR`):
//!
//! | variable | meaning |
//! | --- | --- |
//! | `AIOPG_TEST_STANDBY_PORT`, `_SOCKET_DIR`, `_DATADIR` | the shared hot standby (read only) |
//! | `AIOPG_TEST_PRIMARY_DATADIR` | the shared primary's data folder (do not stop it) |
//! | `AIOPG_TEST_FAILOVER_PRIMARY_PORT`, `_DATADIR` | this process's pair: its primary |
//! | `AIOPG_TEST_FAILOVER_STANDBY_PORT`, `_DATADIR` | this process's pair: its standby |
//! | `AIOPG_TEST_FAILOVER_DIR` | the pair's folder, for `pg failover-reset` |
//! | `AIOPG_TEST_XTASK` | this xtask binary |
//! | `AIOPG_TEST_PG_CTL` | the absolute path of `pg_ctl` |
//! | `AIOPG_TEST_PG_RUNAS` | `postgres` when the servers run as that user, else empty |
//!
//! Every server listens on 127.0.0.1 and its socket folder, and lets the superuser
//! `postgres` in without a password. Tests drive the pair with `pg_ctl`
//! ([`pg_ctl_hint`] prints the command lines): with `AIOPG_TEST_PG_RUNAS` set a test
//! runs `runuser -u postgres -- "$AIOPG_TEST_PG_CTL" …` (xtask runs as root), else
//! `"$AIOPG_TEST_PG_CTL" …`, from a folder that user can enter (`/`):
//!
//! - promote: `pg_ctl promote -w -D "$AIOPG_TEST_FAILOVER_STANDBY_DATADIR"`;
//! - stop: `pg_ctl stop -m fast -w -D "$AIOPG_TEST_FAILOVER_PRIMARY_DATADIR"`;
//! - start again: `pg_ctl start -w -D <datadir> -l <datadir>/postgres.log`.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::pg::{
    self, create_owned_dir, postmaster_pid, psql_query, server_conf, server_user, start_server,
    stop_server, wait_ready, write_owned, Cluster, PgRunner, Profile, SUPERUSER,
};
use crate::sys;
use crate::Result;

/// The physical replication slot on the primary that keeps WAL for its standby.
pub const STANDBY_SLOT: &str = "aiopg_standby";

/// The folder of the cluster's standby, in its base folder.
const STANDBY_DIR: &str = "standby";

/// A failover pair's description, in its folder (read by `pg failover-reset`).
const PAIR_STATE: &str = "pair.state";

/// How long a new standby gets to report `pg_is_in_recovery()` and stream.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);

/// One server of a cluster other than its primary: `<dir>/data` and `<dir>/sock`.
#[derive(Debug, Clone)]
pub struct Server {
    /// The data folder (`pg_ctl -D`); its log is `postgres.log` in it.
    pub datadir: PathBuf,
    /// The Unix socket folder.
    pub socket_dir: PathBuf,
    /// The TCP port on 127.0.0.1 (0 until started).
    pub port: u16,
    /// The postmaster's pid when xtask started it (0 until then).
    pub pid: u32,
}

impl Server {
    /// The server kept in `dir` (not started).
    pub fn at(dir: &Path, port: u16, pid: u32) -> Server {
        Server {
            datadir: dir.join("data"),
            socket_dir: dir.join("sock"),
            port,
            pid,
        }
    }

    /// `host=127.0.0.1 port=<P> user=postgres dbname=postgres`.
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} dbname=postgres",
            self.port
        )
    }

    /// The server's log file.
    pub fn log_file(&self) -> PathBuf {
        self.datadir.join(pg::LOG_NAME)
    }

    /// Whether a postmaster runs in the data folder now (whoever started it).
    pub fn is_running(&self) -> bool {
        postmaster_pid(&self.datadir).is_some_and(sys::alive)
    }
}

/// The running server a copy is made from, and the cluster settings copies get.
struct Source<'a> {
    bindir: &'a Path,
    profile: Profile,
    tls_dir: &'a Path,
    socket_dir: &'a Path,
    port: u16,
}

/// What a copy becomes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A hot standby streaming from the source through this replication slot.
    Standby { slot: &'static str },
    /// A primary of its own (the copy is started without standby.signal).
    Primary,
}

/// The cluster's hot standby (`<base>/standby`), as recorded in its state.
pub fn standby_of(base: &Path, port: u16, pid: u32) -> Server {
    Server::at(&base.join(STANDBY_DIR), port, pid)
}

/// Makes and starts the hot standby of the cluster's primary, in `<base>/standby` on
/// a free port; returns once it accepts connections, reports `pg_is_in_recovery()`
/// and streams from the primary.
pub fn start_standby(cluster: &Cluster) -> Result<Server> {
    let source = Source {
        bindir: &cluster.bindir,
        profile: cluster.profile,
        tls_dir: &cluster.tls_dir(),
        socket_dir: &cluster.socket_dir,
        port: cluster.port,
    };
    copy_and_start(
        &source,
        &cluster.base.join(STANDBY_DIR),
        Kind::Standby { slot: STANDBY_SLOT },
        "standby",
        None,
    )
    .map_err(|e| {
        format!(
            "starting the standby of the primary on port {}: {e}",
            cluster.port
        )
        .into()
    })
}

/// `pg_basebackup` of `source` into `<dir>/data`, then started as `kind` on a free
/// port (or `fixed`) with its socket in `<dir>/sock`. Whatever `dir` holds is
/// replaced (a server still running there, left by a failed start, is stopped).
fn copy_and_start(
    source: &Source,
    dir: &Path,
    kind: Kind,
    name: &str,
    fixed: Option<u16>,
) -> Result<Server> {
    let user = server_user()?;
    let runner = PgRunner { user };
    let mut server = Server::at(dir, 0, 0);
    stop_all_under(&runner, source.bindir, dir, Path::new(""));
    remove_dir(dir)?;
    create_owned_dir(dir, user)?;
    create_owned_dir(&server.socket_dir, user)?;

    let mut args: Vec<&OsStr> = vec![
        OsStr::new("-D"),
        server.datadir.as_os_str(),
        OsStr::new("-X"),
        OsStr::new("stream"),
        OsStr::new("-h"),
        source.socket_dir.as_os_str(),
        OsStr::new("-U"),
        OsStr::new(SUPERUSER),
        // An immediate checkpoint (the default spreads it over minutes), no fsync and
        // no manifest: the copy is as throwaway as its source.
        OsStr::new("--checkpoint=fast"),
        OsStr::new("--no-sync"),
        OsStr::new("--no-manifest"),
    ];
    let port_arg = source.port.to_string();
    args.extend([OsStr::new("-p"), OsStr::new(&port_arg)]);
    if let Kind::Standby { slot } = kind {
        // A leftover slot of an earlier standby (e.g. one deleted by hand) would make
        // `-C` fail; an active one belongs to a live standby and is an error.
        psql_query(
            source.bindir,
            source.socket_dir,
            source.port,
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = '{slot}' AND NOT active"
            ),
        )?;
        // -R: standby.signal and primary_conninfo (over the source's socket);
        // -C -S: a physical slot, so that the primary keeps WAL the standby lacks.
        args.extend([
            OsStr::new("-R"),
            OsStr::new("-C"),
            OsStr::new("-S"),
            OsStr::new(slot),
        ]);
    }
    runner.run("pg_basebackup", &source.bindir.join("pg_basebackup"), args)?;
    // The source's log came along with its data folder.
    let _ = std::fs::remove_file(server.log_file());

    let conf = server.datadir.join("aiopg.conf");
    let (port, pid) = start_server(&runner, source.bindir, &server.datadir, fixed, |port| {
        write_owned(
            &conf,
            &server_conf(
                source.profile,
                port,
                &server.socket_dir,
                source.tls_dir,
                name,
            ),
            user,
        )
    })?;
    server.port = port;
    server.pid = pid;
    wait_ready(
        source.bindir,
        &server.socket_dir,
        port,
        pid,
        &server.log_file(),
    )?;
    match kind {
        Kind::Standby { .. } => wait_until(&server, "streaming", || {
            let sql = "SELECT pg_is_in_recovery() AND EXISTS (SELECT 1 FROM \
                       pg_stat_wal_receiver WHERE status = 'streaming')";
            Ok(psql_query(source.bindir, &server.socket_dir, port, sql)? == "t")
        })?,
        Kind::Primary => {
            let sql = "SELECT pg_is_in_recovery()";
            wait_until(&server, "out of recovery", || {
                Ok(psql_query(source.bindir, &server.socket_dir, port, sql)? == "f")
            })?
        }
    }
    Ok(server)
}

/// Polls `check` until it holds (bounded by [`REPLICATION_TIMEOUT`]).
fn wait_until(server: &Server, what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + REPLICATION_TIMEOUT;
    loop {
        let last = match check() {
            Ok(true) => return Ok(()),
            Ok(false) => String::from("not yet"),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline || !sys::alive(server.pid) {
            return Err(format!(
                "the server on port {} was not {what} within {}s ({last})\n--- {} ---\n{}",
                server.port,
                REPLICATION_TIMEOUT.as_secs(),
                server.log_file().display(),
                pg::log_tail(&server.log_file(), 20)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deletes `dir` if it exists.
fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("deleting {}: {e}", dir.display()).into()),
    }
}

/// Stops every server running in a data folder under `base` (three levels deep at
/// most) but `primary`'s: the standby and failover pairs, promoted, restarted or
/// stopped by tests.
pub fn stop_all_under(runner: &PgRunner, bindir: &Path, base: &Path, primary: &Path) {
    let mut found = Vec::new();
    find_datadirs(base, 3, &mut found);
    for datadir in found.iter().filter(|d| d.as_path() != primary) {
        if datadir.join("postmaster.pid").exists() {
            stop_server(runner, bindir, datadir, 0);
        }
    }
}

/// Data folders (holding `PG_VERSION`) at most `depth` levels below `dir`.
fn find_datadirs(dir: &Path, depth: u32, found: &mut Vec<PathBuf>) {
    if dir.join("PG_VERSION").is_file() {
        found.push(dir.to_path_buf());
        return;
    }
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        // Not following symlinks: everything here was made by xtask.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            find_datadirs(&entry.path(), depth - 1, found);
        }
    }
}

/// A primary with a streaming standby of its own, for tests that stop, promote and
/// restart servers: `<dir>/primary`, `<dir>/standby` and `<dir>/pair.state`.
#[derive(Debug, Clone)]
pub struct FailoverPair {
    /// The pair's folder (`<cluster base>/failover-<label>`).
    pub dir: PathBuf,
    /// The pair's primary (a copy of the cluster's primary).
    pub primary: Server,
    /// Its hot standby, streaming through the slot [`STANDBY_SLOT`].
    pub standby: Server,
}

impl FailoverPair {
    /// Makes a fresh pair in `<cluster base>/failover-<label>` (replacing any pair
    /// stopped there) from the cluster's running primary, on free ports.
    pub fn create(cluster: &Cluster, label: &str) -> Result<FailoverPair> {
        let dir = cluster.base.join(format!("failover-{label}"));
        let state = PairState {
            bindir: cluster.bindir.clone(),
            profile: cluster.profile,
            tls_dir: cluster.tls_dir(),
            source_socket_dir: cluster.socket_dir.clone(),
            source_port: cluster.port,
            primary_port: None,
            standby_port: None,
        };
        FailoverPair::build(&dir, state)
            .map_err(|e| format!("making the failover pair in {}: {e}", dir.display()).into())
    }

    /// Stops the pair in `dir` whatever tests did to it, and makes it anew from the
    /// cluster's primary on the same ports (`cargo xtask pg failover-reset <dir>`).
    pub fn reset(dir: &Path) -> Result<FailoverPair> {
        let state = PairState::load(dir)?;
        FailoverPair::build(dir, state)
            .map_err(|e| format!("resetting the failover pair in {}: {e}", dir.display()).into())
    }

    fn build(dir: &Path, mut state: PairState) -> Result<FailoverPair> {
        let user = server_user()?;
        let runner = PgRunner { user };
        // Whatever ran there before (a reset, or a pair of an interrupted run).
        stop_all_under(&runner, &state.bindir, dir, Path::new(""));
        remove_dir(dir)?;
        create_owned_dir(dir, user)?;
        let from_cluster = Source {
            bindir: &state.bindir,
            profile: state.profile,
            tls_dir: &state.tls_dir,
            socket_dir: &state.source_socket_dir,
            port: state.source_port,
        };
        let primary = copy_and_start(
            &from_cluster,
            &dir.join("primary"),
            Kind::Primary,
            "failover-primary",
            state.primary_port,
        )?;
        state.primary_port = Some(primary.port);
        state.save(dir)?;
        let from_primary = Source {
            socket_dir: &primary.socket_dir,
            port: primary.port,
            ..from_cluster
        };
        let standby = copy_and_start(
            &from_primary,
            &dir.join("standby"),
            Kind::Standby { slot: STANDBY_SLOT },
            "failover-standby",
            state.standby_port,
        )?;
        state.standby_port = Some(standby.port);
        state.save(dir)?;
        Ok(FailoverPair {
            dir: dir.to_path_buf(),
            primary,
            standby,
        })
    }

    /// Stops both servers (whatever state tests left them in) and deletes the folder.
    pub fn destroy(&self, bindir: &Path) -> Result<()> {
        let runner = PgRunner {
            user: server_user()?,
        };
        stop_all_under(&runner, bindir, &self.dir, Path::new(""));
        remove_dir(&self.dir)
    }

    /// The `AIOPG_TEST_FAILOVER_*` variables for tests.
    pub fn env(&self) -> Vec<(String, String)> {
        let path = |p: &Path| p.display().to_string();
        vec![
            ("AIOPG_TEST_FAILOVER_DIR".into(), path(&self.dir)),
            (
                "AIOPG_TEST_FAILOVER_PRIMARY_PORT".into(),
                self.primary.port.to_string(),
            ),
            (
                "AIOPG_TEST_FAILOVER_PRIMARY_DATADIR".into(),
                path(&self.primary.datadir),
            ),
            (
                "AIOPG_TEST_FAILOVER_STANDBY_PORT".into(),
                self.standby.port.to_string(),
            ),
            (
                "AIOPG_TEST_FAILOVER_STANDBY_DATADIR".into(),
                path(&self.standby.datadir),
            ),
        ]
    }
}

/// What `pg failover-reset` needs to make a pair again.
struct PairState {
    bindir: PathBuf,
    profile: Profile,
    tls_dir: PathBuf,
    /// The cluster's primary, which the pair's primary is copied from.
    source_socket_dir: PathBuf,
    source_port: u16,
    primary_port: Option<u16>,
    standby_port: Option<u16>,
}

impl PairState {
    fn save(&self, dir: &Path) -> Result<()> {
        let mut text = String::from("# written by cargo xtask: a failover pair\n");
        let _ = writeln!(text, "bindir={}", self.bindir.display());
        let _ = writeln!(text, "profile={}", self.profile.name());
        let _ = writeln!(text, "tls_dir={}", self.tls_dir.display());
        let _ = writeln!(
            text,
            "source_socket_dir={}",
            self.source_socket_dir.display()
        );
        let _ = writeln!(text, "source_port={}", self.source_port);
        if let Some(port) = self.primary_port {
            let _ = writeln!(text, "primary_port={port}");
        }
        if let Some(port) = self.standby_port {
            let _ = writeln!(text, "standby_port={port}");
        }
        let path = dir.join(PAIR_STATE);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()).into())
    }

    fn load(dir: &Path) -> Result<PairState> {
        let path = dir.join(PAIR_STATE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "reading {}: {e} (not a failover pair made by cargo xtask, or its \
                 cluster was stopped)",
                path.display()
            )
        })?;
        let get = |key: &str| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
        };
        let need =
            |key: &str| get(key).ok_or_else(|| format!("{}: no `{key}=` line", path.display()));
        let port = |key: &str| -> Result<Option<u16>> {
            match get(key) {
                None => Ok(None),
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{}: bad {key}={v}", path.display()).into()),
            }
        };
        let profile = need("profile")?;
        Ok(PairState {
            bindir: PathBuf::from(need("bindir")?),
            profile: Profile::parse(&profile)
                .ok_or_else(|| format!("{}: bad profile={profile}", path.display()))?,
            tls_dir: PathBuf::from(need("tls_dir")?),
            source_socket_dir: PathBuf::from(need("source_socket_dir")?),
            source_port: port("source_port")?
                .ok_or_else(|| format!("{}: no `source_port=` line", path.display()))?,
            primary_port: port("primary_port")?,
            standby_port: port("standby_port")?,
        })
    }
}

/// The `pg_ctl` command lines tests use on the servers, for `pg start`'s output and
/// the docs: `runas` is `AIOPG_TEST_PG_RUNAS`.
pub fn pg_ctl_hint(pg_ctl: &Path, runas: &str) -> String {
    let prefix = if runas.is_empty() {
        String::new()
    } else {
        format!("runuser -u {runas} -- ")
    };
    let pg_ctl = pg_ctl.display();
    format!(
        "{prefix}{pg_ctl} promote -w -D <standby datadir>\n\
         {prefix}{pg_ctl} stop -m fast -w -D <primary datadir>\n\
         {prefix}{pg_ctl} start -w -D <datadir> -l <datadir>/{}",
        pg::LOG_NAME
    )
}

#[cfg(test)]
mod tests {
    use super::{find_datadirs, pg_ctl_hint, PairState};
    use crate::pg::Profile;
    use std::path::{Path, PathBuf};

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("aiopg-xtask-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn pair_state_round_trips() {
        let dir = scratch("pair-state");
        let state = PairState {
            bindir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            profile: Profile::Test,
            tls_dir: PathBuf::from("/tmp/b/tls"),
            source_socket_dir: PathBuf::from("/tmp/b/sock"),
            source_port: 5544,
            primary_port: Some(6001),
            standby_port: None,
        };
        state.save(&dir).unwrap();
        let back = PairState::load(&dir).unwrap();
        assert_eq!(back.bindir, state.bindir);
        assert_eq!(back.profile, Profile::Test);
        assert_eq!(back.tls_dir, state.tls_dir);
        assert_eq!(back.source_socket_dir, state.source_socket_dir);
        assert_eq!(back.source_port, 5544);
        assert_eq!(back.primary_port, Some(6001));
        assert_eq!(back.standby_port, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_pair_state_says_what_it_is() {
        let dir = scratch("no-pair");
        let err = PairState::load(&dir).err().unwrap().to_string();
        assert!(err.contains("pair.state"), "{err}");
        assert!(err.contains("not a failover pair"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn data_folders_are_found_three_levels_down() {
        let base = scratch("datadirs");
        let dirs = [
            "data",
            "standby/data",
            "failover-tokio/primary/data",
            "failover-tokio/standby/data",
        ];
        for d in dirs {
            std::fs::create_dir_all(base.join(d)).unwrap();
            std::fs::write(base.join(d).join("PG_VERSION"), "15\n").unwrap();
        }
        // Not a data folder, and one too deep to be ours.
        std::fs::create_dir_all(base.join("tls/openssl-work")).unwrap();
        std::fs::create_dir_all(base.join("a/b/c/data")).unwrap();
        std::fs::write(base.join("a/b/c/data/PG_VERSION"), "15\n").unwrap();
        let mut found = Vec::new();
        find_datadirs(&base, 3, &mut found);
        found.sort();
        let mut want: Vec<PathBuf> = dirs.iter().map(|d| base.join(d)).collect();
        want.sort();
        assert_eq!(found, want);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn pg_ctl_lines_run_as_the_servers_user() {
        let pg_ctl = Path::new("/usr/lib/postgresql/15/bin/pg_ctl");
        let as_postgres = pg_ctl_hint(pg_ctl, "postgres");
        assert!(as_postgres
            .lines()
            .all(|l| l.starts_with("runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl ")));
        assert!(as_postgres.contains(" promote -w -D <standby datadir>"));
        let direct = pg_ctl_hint(pg_ctl, "");
        assert!(direct
            .lines()
            .all(|l| l.starts_with("/usr/lib/postgresql/15/bin/pg_ctl ")));
    }
}
