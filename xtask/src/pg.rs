//! Finding PostgreSQL's binaries and running a throwaway cluster.

use std::path::PathBuf;
use std::process::Command;

use crate::Result;

/// The folder holding PostgreSQL's server binaries (`initdb`, `postgres`, `pg_ctl`).
pub fn bindir() -> Result<PathBuf> {
    if let Some(dir) = which_dir("initdb") {
        return Ok(dir);
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

fn which_dir(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| dir.join(program).is_file())
}
