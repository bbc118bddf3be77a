//! Transaction pooling (PgBouncer's `pool_mode = transaction`): what it cannot carry.
//!
//! Behind such a pooler each transaction may run on another server connection, so session
//! state set by one statement is gone (or, worse, left for another client) by the next.
//! With [`ConnectOptions::transaction_pooling`](crate::ConnectOptions::transaction_pooling)
//! the statement cache is off (every statement is parsed as the unnamed one, in the same
//! request as its execution), and statements that create session state are refused with a
//! `Usage` error before they are sent. Only the first statement of a string is looked at.

use aiopg_core::{Error, Result};

/// The first word of `sql` and the rest, skipping white space and comments.
fn words(sql: &str) -> impl Iterator<Item = String> + '_ {
    let mut rest = sql;
    std::iter::from_fn(move || loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
            continue;
        }
        if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        let word = rest[..end].to_ascii_uppercase();
        rest = &rest[end..];
        return Some(word);
    })
}

/// Refuses `sql` when it would leave session state that transaction pooling loses.
pub(crate) fn check(sql: &str) -> Result<()> {
    let mut w = words(sql);
    let refuse = |what: &str, instead: &str| {
        Err(Error::usage(format!(
            "{what} cannot work under transaction pooling (PgBouncer pool_mode=transaction, \
             ConnectOptions::transaction_pooling): the next transaction may run on another \
             server connection; {instead}"
        )))
    };
    match w.next().as_deref() {
        Some("LISTEN") | Some("UNLISTEN") => refuse(
            "LISTEN",
            "listen on a direct connection to the server (not through the pooler)",
        ),
        Some("SET") => match w.next().as_deref() {
            Some("LOCAL") | Some("TRANSACTION") => Ok(()),
            _ => refuse(
                "a session SET",
                "use SET LOCAL inside a transaction, or set it for every connection with \
                 options='-c name=value' in the DSN",
            ),
        },
        Some("PREPARE") => refuse(
            "a PREPARE'd statement",
            "use the connection's own statements (parsed per request under transaction pooling)",
        ),
        Some("DECLARE") => {
            let tokens: Vec<String> = w.take(16).collect();
            if tokens.windows(2).any(|p| p[0] == "WITH" && p[1] == "HOLD") {
                refuse(
                    "a WITH HOLD cursor",
                    "read the cursor inside one transaction, without WITH HOLD",
                )
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn session_state_is_refused_and_the_rest_passes() {
        for sql in [
            "LISTEN jobs",
            "  unlisten *",
            "SET search_path = app",
            "set session work_mem = '64MB'",
            "-- comment\nSET x = 1",
            "/* c */ PREPARE p AS SELECT 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "declare c no scroll cursor with hold for select 1",
        ] {
            let e = check(sql).expect_err(sql);
            assert!(e.to_string().contains("transaction pooling"), "{sql}: {e}");
        }
        for sql in [
            "SELECT 1",
            "SET LOCAL work_mem = '64MB'",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "DECLARE c CURSOR FOR SELECT 1",
            "NOTIFY jobs",
            "",
            "   ",
            "SELECT 'LISTEN'",
        ] {
            assert!(check(sql).is_ok(), "{sql}");
        }
    }
}
