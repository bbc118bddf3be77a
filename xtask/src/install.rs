//! The tools a throwaway cluster needs (PostgreSQL's server binaries, openssl for its
//! certificates, PgBouncer for the pooler tests): found, or installed when that is safe.
//!
//! As root on a machine with `apt-get` (a fresh Debian or Ubuntu machine, a container), the
//! missing packages are installed without creating or starting any system service: Debian's
//! `postgresql` package would otherwise create a `main` cluster on port 5432 and start it, and
//! `pgbouncer` would start its service on port 6432; xtask runs its own instances instead.
//! Otherwise the error names the one command to run.

use std::path::Path;
use std::process::Command;

use crate::{pg, pgbouncer, sys, Result};

/// What a task needs.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    pub pgbouncer: bool,
}

fn have_openssl() -> bool {
    pg::which_dir("openssl").is_some() || Path::new("/usr/bin/openssl").is_file()
}

/// The Debian packages missing for `needs`.
fn missing(needs: Needs) -> Vec<&'static str> {
    let mut v = Vec::new();
    if pg::bindir().is_err() {
        v.push("postgresql");
    }
    if !have_openssl() {
        v.push("openssl");
    }
    if needs.pgbouncer && pgbouncer::find().is_none() {
        v.push("pgbouncer");
    }
    v
}

/// Finds what `needs` names, installing what is missing when running as root with apt-get.
pub fn ensure(needs: Needs) -> Result<()> {
    let packages = missing(needs);
    if packages.is_empty() {
        return Ok(());
    }
    let apt = pg::which_dir("apt-get").is_some();
    if !(sys::is_root() && apt) {
        let command = if apt {
            format!("sudo apt-get install -y {}", packages.join(" "))
        } else {
            format!(
                "install {} with your system's package manager",
                packages.join(", ")
            )
        };
        return Err(format!(
            "missing: {} (xtask installs them itself only as root on a machine with apt-get); \
             run: {command}",
            packages.join(", ")
        )
        .into());
    }
    errln!(
        "xtask: not found: {}; installing with apt-get (no service is created or started)",
        packages.join(", ")
    );
    apt_get(&["update", "-q"])?;
    if packages.contains(&"postgresql") {
        // The server binaries only: no `main` cluster. postgresql-common reads this setting
        // when the server package's post-install script runs.
        apt_get(&["install", "-y", "-q", "postgresql-common"])?;
        let conf = Path::new("/etc/postgresql-common/createcluster.conf");
        let text = std::fs::read_to_string(conf)
            .map_err(|e| format!("reading {}: {e}", conf.display()))?;
        let mut out: Vec<String> = text
            .lines()
            .filter(|l| {
                !l.trim_start()
                    .trim_start_matches('#')
                    .trim_start()
                    .starts_with("create_main_cluster")
            })
            .map(str::to_owned)
            .collect();
        out.push("create_main_cluster = false".into());
        std::fs::write(conf, out.join("\n") + "\n")
            .map_err(|e| format!("writing {}: {e}", conf.display()))?;
    }
    let rest: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| *p != "pgbouncer")
        .collect();
    if !rest.is_empty() {
        let mut args = vec!["install", "-y", "-q"];
        args.extend(&rest);
        apt_get(&args)?;
    }
    if packages.contains(&"pgbouncer") {
        install_without_starting("pgbouncer")?;
    }
    let still = missing(needs);
    if !still.is_empty() {
        return Err(format!("still missing after apt-get install: {}", still.join(", ")).into());
    }
    errln!("xtask: installed {}", packages.join(", "));
    Ok(())
}

fn apt_get(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("running apt-get: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("apt-get {} failed ({status})", args.join(" ")).into())
    }
}

/// `apt-get install` of a package whose service must not run: while it installs, a
/// `policy-rc.d` answering 101 ("action forbidden") makes invoke-rc.d and
/// deb-systemd-invoke skip the start its scripts ask for (an existing policy, as Docker
/// images ship, is left alone); then the service is disabled for later boots too.
fn install_without_starting(package: &str) -> Result<()> {
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(
            policy,
            "#!/bin/sh\n# written by cargo xtask for one apt-get install: start no services\nexit 101\n",
        )
        .map_err(|e| format!("writing {}: {e}", policy.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", policy.display()))?;
    }
    let res = apt_get(&["install", "-y", "-q", package]);
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    res?;
    // Quietly: whichever of these exists on this machine applies.
    let quiet = |program: &str, args: &[&str]| {
        let _ = Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    };
    if Path::new("/run/systemd/system").is_dir() {
        quiet(
            "systemctl",
            &[
                "disable",
                "--now",
                &format!("{package}.service"),
                &format!("{package}.socket"),
            ],
        );
    } else {
        let init = format!("/etc/init.d/{package}");
        if Path::new(&init).is_file() {
            quiet(&init, &["stop"]);
            quiet("update-rc.d", &[package, "disable"]);
        }
        quiet(
            "deb-systemd-helper",
            &["disable", &format!("{package}.service")],
        );
    }
    Ok(())
}
