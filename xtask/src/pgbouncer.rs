//! A PgBouncer in transaction pooling mode in front of a throwaway cluster's primary.
//!
//! It lives in `<cluster base>/pgbouncer/` (`pgbouncer.ini`, the `userlist.txt` auth
//! file, its log, pid file and Unix socket), listens on 127.0.0.1 on a free port and
//! runs as the servers' user (PgBouncer refuses to run as root). Clients log in with
//! `auth_type = trust` as any role listed in the auth file: the superuser and the test
//! roles PgBouncer can log in to the server as (the auth file holds their passwords),
//! i.e. all but the TLS-only and certificate ones, since PgBouncer talks to the server
//! without TLS. Databases `postgres` and `aiopg_test` lead to the primary over TCP;
//! the admin console is database `pgbouncer` as user `postgres`.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::pg::{
    self, create_owned_dir, log_tail, psql_in, server_user, write_owned, Cluster, PgRunner,
    Transport, ROLES, SUPERUSER,
};
use crate::sys;
use crate::Result;

/// The folder's name in the cluster's base folder.
const DIR_NAME: &str = "pgbouncer";
const INI: &str = "pgbouncer.ini";
const AUTH_FILE: &str = "userlist.txt";
const PID_FILE: &str = "pgbouncer.pid";
const LOG_FILE: &str = "pgbouncer.log";

/// How long PgBouncer gets to listen, and to exit.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Where PgBouncer is looked for besides PATH (Debian's package puts it in /usr/sbin,
/// which a non-root PATH may lack).
const SBIN: [&str; 2] = ["/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer"];

/// The `pgbouncer` binary: on PATH, else in an sbin folder.
pub fn find() -> Option<PathBuf> {
    pg::which_dir("pgbouncer")
        .map(|d| d.join("pgbouncer"))
        .or_else(|| SBIN.iter().map(PathBuf::from).find(|p| p.is_file()))
}

/// The error for a missing binary.
pub fn missing() -> String {
    "pgbouncer not found (looked on PATH and in /usr/sbin, /usr/local/sbin): install the \
     `pgbouncer` package (`apt-get install pgbouncer`; xtask installs it as root), or set \
     AIOPG_TEST_DSN to test against a server of your own"
        .into()
}

/// A running PgBouncer.
#[derive(Debug, Clone)]
pub struct Bouncer {
    /// Its folder (`<cluster base>/pgbouncer`).
    pub dir: PathBuf,
    /// The TCP port on 127.0.0.1 (its Unix socket, in `dir`, has the same number).
    pub port: u16,
}

impl Bouncer {
    /// The bouncer of the cluster whose base folder is `base`, as recorded.
    pub fn of(base: &Path, port: u16) -> Bouncer {
        Bouncer {
            dir: base.join(DIR_NAME),
            port,
        }
    }

    /// `host=127.0.0.1 port=<P> user=aiopg_trust dbname=postgres`.
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=aiopg_trust dbname=postgres",
            self.port
        )
    }

    /// Its log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Whether the process of its pid file is alive.
    pub fn is_running(&self) -> bool {
        pid(&self.dir).is_some()
    }
}

/// Starts a PgBouncer (the binary `program`) in front of the cluster's primary, on a
/// free port; returns once it answers a query through to the server.
pub fn start(cluster: &Cluster, program: &Path) -> Result<Bouncer> {
    let user = server_user()?;
    let runner = PgRunner { user };
    let dir = cluster.base.join(DIR_NAME);
    stop(&dir);
    create_owned_dir(&dir, user)?;
    let auth_file = dir.join(AUTH_FILE);
    write_owned(&auth_file, &auth_file_text(), user)?;
    // Passwords: for the servers' user only.
    std::fs::set_permissions(&auth_file, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod 600 {}: {e}", auth_file.display()))?;
    let ini = dir.join(INI);
    let log = dir.join(LOG_FILE);
    let attempts = 5;
    for attempt in 1..=attempts {
        let port = pg::free_port()?;
        write_owned(&ini, &ini_text(&dir, port, cluster.port), user)?;
        // This attempt's log only: its lines tell whether the port was taken.
        write_owned(&log, "", user)?;
        // -d: daemonize once the configuration is loaded (it writes the pid file).
        let started = runner.run("pgbouncer", program, [OsStr::new("-d"), ini.as_os_str()]);
        let ready = started.and_then(|_| wait_listening(&dir, port));
        match ready {
            Ok(()) => {
                let bouncer = Bouncer { dir, port };
                check_query(cluster, &bouncer)?;
                return Ok(bouncer);
            }
            Err(e) => {
                let tail = log_tail(&log, 20);
                stop(&dir);
                let taken = tail.contains("in use") || e.to_string().contains("in use");
                if taken && attempt < attempts {
                    errln!("xtask: port {port} was taken, trying another for pgbouncer");
                    continue;
                }
                return Err(format!(
                    "starting pgbouncer ({}): {e}\n--- {} ---\n{tail}",
                    program.display(),
                    log.display()
                )
                .into());
            }
        }
    }
    Err("pgbouncer found no free port".into())
}

/// Polls until PgBouncer has logged the end of its start-up (`process up`), listening
/// on the TCP port: it keeps running on its Unix socket alone when the port is taken,
/// and another program may then answer on the port.
fn wait_listening(dir: &Path, port: u16) -> Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    let log = dir.join(LOG_FILE);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("cannot listen on 127.0.0.1") {
            return Err(format!("port {port}: address already in use").into());
        }
        let alive = pid(dir).is_some();
        if alive && text.contains("process up") {
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))
                .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not up on 127.0.0.1:{port} after {}s", TIMEOUT.as_secs()).into());
        }
        if !alive && dir.join(PID_FILE).exists() {
            return Err("it exited".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `SELECT 1` through the bouncer to the primary, as `aiopg_trust`.
fn check_query(cluster: &Cluster, bouncer: &Bouncer) -> Result<()> {
    let psql = psql_in(&cluster.bindir)?;
    let out = pg::pg_command(&psql)
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-U",
            "aiopg_trust",
        ])
        .args(["-d", "postgres", "-c", "SELECT 1", "-p"])
        .arg(bouncer.port.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", psql.display()))?;
    if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "1" {
        return Ok(());
    }
    stop(&bouncer.dir);
    Err(format!(
        "pgbouncer on port {} listens but `SELECT 1` through it failed ({}):\n{}\n--- {} ---\n{}",
        bouncer.port,
        out.status,
        pg::output_text(&out),
        bouncer.log_file().display(),
        log_tail(&bouncer.log_file(), 20)
    )
    .into())
}

/// The live PgBouncer process of the pid file in `dir`, if any.
fn pid(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // A stale pid file may name an unrelated process by now, or an exited one not
    // reaped yet (state Z after the command name in /proc/<pid>/stat).
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    (comm.trim() == "pgbouncer" && !zombie && sys::alive(pid)).then_some(pid)
}

/// Stops the PgBouncer whose folder is `dir`, if it runs (SIGTERM: immediate
/// shutdown; SIGKILL after [`TIMEOUT`]).
pub fn stop(dir: &Path) {
    let Some(pid) = pid(dir) else {
        return;
    };
    sys::send(pid as i32, sys::SIGTERM);
    let deadline = Instant::now() + TIMEOUT;
    while sys::alive(pid) {
        if Instant::now() > deadline {
            errln!("xtask: pgbouncer {pid} ignored SIGTERM, killing it");
            sys::send(pid as i32, sys::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the bouncer of the cluster whose base folder is `base`, if any.
pub fn stop_under(base: &Path) {
    stop(&base.join(DIR_NAME));
}

/// `"name" "password"` lines: the superuser and the roles PgBouncer can log in as
/// without TLS (see the module docs).
fn auth_file_text() -> String {
    let mut text = String::new();
    let _ = writeln!(text, "\"{SUPERUSER}\" \"\"");
    for role in ROLES {
        if role.transport == Transport::TlsOnly || role.method == "cert" {
            continue;
        }
        let pw = role.password.unwrap_or("").replace('"', "\"\"");
        let _ = writeln!(text, "\"{}\" \"{pw}\"", role.name);
    }
    text
}

/// pgbouncer.ini: transaction pooling in front of the primary's 127.0.0.1 port.
fn ini_text(dir: &Path, port: u16, primary_port: u16) -> String {
    format!(
        "; written by cargo xtask: transaction pooling in front of the test cluster\n\
         [databases]\n\
         postgres = host=127.0.0.1 port={primary_port} dbname=postgres\n\
         aiopg_test = host=127.0.0.1 port={primary_port} dbname=aiopg_test\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir = {dir}\n\
         logfile = {dir}/{LOG_FILE}\n\
         pidfile = {dir}/{PID_FILE}\n\
         auth_type = trust\n\
         auth_file = {dir}/{AUTH_FILE}\n\
         admin_users = {SUPERUSER}\n\
         stats_users = {SUPERUSER}\n\
         pool_mode = transaction\n\
         max_client_conn = 500\n\
         default_pool_size = 20\n\
         ; parameters PgBouncer does not track that clients (aiopg, libpq, JDBC) send\n\
         ignore_startup_parameters = extra_float_digits,options\n\
         ; only used by session pooling (server_reset_query_always is off)\n\
         server_reset_query = DISCARD ALL\n\
         ; to the server over plain TCP\n\
         server_tls_sslmode = disable\n",
        dir = dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::{auth_file_text, ini_text, wait_listening, LOG_FILE};
    use std::path::Path;

    #[test]
    fn a_taken_port_is_told_from_the_log() {
        // PgBouncer keeps running on its Unix socket when the TCP port is taken.
        let dir =
            std::env::temp_dir().join(format!("aiopg-xtask-test-bouncer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(LOG_FILE),
            "LOG kernel file descriptor limit: 1024\n\
             WARNING cannot listen on 127.0.0.1:6543: bind(): Address already in use\n\
             LOG process up: PgBouncer 1.18.0\n",
        )
        .unwrap();
        let err = wait_listening(&dir, 6543).unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn auth_file_lists_the_roles_pgbouncer_can_log_in_as() {
        let text = auth_file_text();
        assert!(text.contains("\"postgres\" \"\"\n"), "{text}");
        assert!(text.contains("\"aiopg_trust\" \"\"\n"), "{text}");
        assert!(
            text.contains("\"aiopg_scram\" \"aiopg-pw-scram\"\n"),
            "{text}"
        );
        assert!(
            text.contains("\"aiopg_plain\" \"aiopg-pw-plain\"\n"),
            "{text}"
        );
        for absent in ["aiopg_tls", "aiopg_cert"] {
            assert!(!text.contains(&format!("\"{absent}")), "{text}");
        }
    }

    #[test]
    fn ini_pools_transactions_in_front_of_the_primary() {
        let text = ini_text(Path::new("/tmp/x/pgbouncer"), 6543, 5544);
        for line in [
            "postgres = host=127.0.0.1 port=5544 dbname=postgres",
            "aiopg_test = host=127.0.0.1 port=5544 dbname=aiopg_test",
            "listen_addr = 127.0.0.1",
            "listen_port = 6543",
            "pool_mode = transaction",
            "auth_type = trust",
            "auth_file = /tmp/x/pgbouncer/userlist.txt",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }
}
