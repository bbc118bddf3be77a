//! The password file (`~/.pgpass`), read the way libpq's `passwordFromFile` reads it.

use std::fs;
use std::path::Path;

use super::{Host, Password};

/// Reads the password file, or `None` when libpq would not use it: when it is missing,
/// unreadable or not a regular file, or (on Unix) when group or others have any access to it,
/// since a password file others can read is a leak libpq refuses to go along with.
pub(super) fn read_passfile(path: &Path) -> Option<Vec<u8>> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_file() || !is_private(&meta) {
        return None;
    }
    fs::read(path).ok()
}

#[cfg(unix)]
fn is_private(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o077 == 0
}

#[cfg(not(unix))]
fn is_private(_meta: &fs::Metadata) -> bool {
    // Windows keeps the file in the user's own profile folder; libpq checks nothing there.
    true
}

/// The password of the first line of `text` matching the connection, if any.
///
/// Lines read `hostname:port:database:username:password`. In the first four fields a field
/// that is exactly `*` matches anything; elsewhere `\` takes the next character literally, so
/// `\:` and `\\` write a colon and a backslash. Lines starting with `#` are comments, and lines
/// with fewer than five fields are skipped. A Unix socket matches `localhost` (as the libpq
/// documentation promises) as well as its own folder (as libpq does for folders other than its
/// compiled-in one). The first matching line wins, even if its password is empty, in which
/// case there is no password.
pub(super) fn lookup(
    text: &[u8],
    host: &Host,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<Password> {
    let port = port.to_string();
    let hosts: Vec<&[u8]> = match host {
        Host::Tcp(name) if name.is_empty() => vec![b"localhost"],
        Host::Tcp(name) => vec![name.as_bytes()],
        Host::Unix(dir) => vec![b"localhost", dir.as_os_str().as_encoded_bytes()],
    };
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let Some(([host_field, port_field, db_field, user_field], password)) = split_line(line)
        else {
            continue;
        };
        if hosts.iter().any(|h| host_field.matches(h))
            && port_field.matches(port.as_bytes())
            && db_field.matches(dbname.as_bytes())
            && user_field.matches(user.as_bytes())
        {
            return (!password.is_empty()).then(|| Password::new(password));
        }
    }
    None
}

/// One of the four matching fields of a line.
struct Field {
    /// The field is exactly `*`.
    wildcard: bool,
    /// The field with its escapes removed.
    text: Vec<u8>,
}

impl Field {
    fn matches(&self, value: &[u8]) -> bool {
        self.wildcard || self.text == value
    }
}

/// Splits a line into its four matching fields and the password, or `None` when it has fewer
/// than five fields. Anything after an unescaped `:` following the password is ignored, as in
/// libpq.
fn split_line(line: &[u8]) -> Option<([Field; 4], Vec<u8>)> {
    let mut rest = line;
    let mut field = || -> Option<Field> {
        let (text, used, ended_by_colon) = read_field(rest);
        if !ended_by_colon {
            return None;
        }
        let raw = &rest[..used - 1];
        rest = &rest[used..];
        Some(Field {
            wildcard: raw == b"*",
            text,
        })
    };
    let fields = [field()?, field()?, field()?, field()?];
    let (password, _, _) = read_field(rest);
    Some((fields, password))
}

/// Reads one field up to an unescaped `:` or the end, removing escapes. Returns the text, how
/// many bytes were used (including the `:`), and whether a `:` ended it.
fn read_field(s: &[u8]) -> (Vec<u8>, usize, bool) {
    let mut text = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b':' => return (text, i + 1, true),
            b'\\' if i + 1 < s.len() => {
                text.push(s[i + 1]);
                i += 2;
            }
            b => {
                text.push(b);
                i += 1;
            }
        }
    }
    (text, i, false)
}
