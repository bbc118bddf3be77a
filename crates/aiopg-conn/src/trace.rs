//! Tracing: a span per statement, transaction and connect, with OpenTelemetry's database
//! attributes; statement logging (Python aiopg's `echo=True`) and slow-statement logging.
//!
//! Spans are `INFO` and named `aiopg.statement` (a statement, a `PREPARE`, a pipeline's
//! `BATCH` or a COPY), `aiopg.transaction` and `aiopg.connect`;
//! `otel.name` carries the name OpenTelemetry wants (the operation, such as `SELECT`). The
//! attributes: `db.system.name = "postgresql"`, `db.namespace` (the database),
//! `server.address`, `server.port`, `db.operation.name` (the statement's first keyword;
//! `BATCH SELECT` or `BATCH` for a pipeline, with `db.operation.batch.size`),
//! and on error `db.response.status_code` (the SQLSTATE), `error.type` (the error kind) and
//! `otel.status_code = "ERROR"`. `db.query.text` is recorded only when
//! [`ConnectOptions::trace_query_text`](crate::ConnectOptions::trace_query_text) asks for it;
//! parameter values never are. With no subscriber listening, a span costs a check of the
//! global level filter and nothing else: no field is computed, nothing is allocated.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aiopg_core::config::Host;
use aiopg_core::{Error, Result};
use tracing::field::Empty;
use tracing::{Instrument, Level, Span};

use crate::connection::Shared;

/// What a connection records besides its spans; set from [`ConnectOptions`].
///
/// [`ConnectOptions`]: crate::ConnectOptions
#[derive(Debug, Default)]
pub(crate) struct Settings {
    /// Record `db.query.text` on statement spans.
    pub(crate) query_text: AtomicBool,
    /// Log every statement's text at `INFO` (target `aiopg::statement`).
    pub(crate) echo: AtomicBool,
    /// Log statements slower than this many microseconds at `WARN` (target
    /// `aiopg::slow_statement`); 0 is off.
    pub(crate) slow_micros: AtomicU64,
    /// The span of the open [`Transaction`](crate::Transaction), parent of its statements.
    pub(crate) transaction: Mutex<Option<Span>>,
}

impl Settings {
    pub(crate) fn set(&self, query_text: bool, echo: bool, slow: Option<Duration>) {
        self.query_text.store(query_text, Ordering::Relaxed);
        self.echo.store(echo, Ordering::Relaxed);
        let micros = slow.map_or(0, |d| {
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
        });
        self.slow_micros.store(micros, Ordering::Relaxed);
    }

    fn transaction_span(&self) -> Option<Span> {
        self.transaction
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The statement's operation: its first keyword, upper-cased (`SELECT`, `INSERT`, ...),
/// after white space and comments; `None` for an empty or odd statement.
pub(crate) fn operation(sql: &str) -> Option<String> {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, r)| r);
        } else {
            break;
        }
    }
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .take(32)
        .collect();
    (!word.is_empty()).then(|| word.to_ascii_uppercase())
}

/// Records the server's address, port and database on `span`.
pub(crate) fn record_server(span: &Span, shared: &Shared) {
    let id = &shared.identity;
    record_host(span, &id.host, id.port);
    if let Some(db) = id.config.get_dbname().or(id.config.get_user()) {
        span.record("db.namespace", db);
    }
}

/// Records `server.address` and `server.port` on `span`.
fn record_host(span: &Span, host: &Host, port: u16) {
    match host {
        Host::Tcp(name) => span.record("server.address", name.as_str()),
        Host::Unix(path) => span.record("server.address", path.display().to_string()),
    };
    span.record("server.port", port);
}

/// Records a failure on `span`.
pub(crate) fn record_error(span: &Span, e: &Error) {
    if span.is_disabled() {
        return;
    }
    span.record("otel.status_code", "ERROR");
    span.record("error.type", format!("{:?}", e.kind()));
    if let Some(code) = e.code() {
        span.record("db.response.status_code", code.code());
    }
}

/// The span of one statement, or of a batch (a pipeline) of several.
///
/// `parent`: the span to open it in; otherwise the connection's open transaction, or the
/// caller's current span. `op` and `text` are computed only when the span is enabled.
fn statement_span<'a>(
    shared: &Shared,
    parent: Option<&Span>,
    op: impl FnOnce() -> Option<String>,
    batch: Option<usize>,
    text: impl FnOnce() -> Cow<'a, str>,
) -> Span {
    if !tracing::level_enabled!(Level::INFO) {
        return Span::none();
    }
    let make = || {
        tracing::info_span!(
            "aiopg.statement",
            otel.name = Empty,
            otel.kind = "client",
            otel.status_code = Empty,
            db.system.name = "postgresql",
            db.namespace = Empty,
            db.operation.name = Empty,
            db.operation.batch.size = Empty,
            db.query.text = Empty,
            db.response.status_code = Empty,
            error.type = Empty,
            server.address = Empty,
            server.port = Empty,
        )
    };
    let span = match (parent, shared.trace.transaction_span()) {
        (Some(p), _) => p.in_scope(make),
        (None, Some(tx)) => tx.in_scope(make),
        (None, None) => make(),
    };
    if !span.is_disabled() {
        let op = op();
        span.record("otel.name", op.as_deref().unwrap_or("postgresql"));
        if let Some(op) = &op {
            span.record("db.operation.name", op.as_str());
        }
        // OpenTelemetry: the batch size is not recorded for a batch of one.
        if let Some(n) = batch.filter(|n| *n >= 2) {
            span.record("db.operation.batch.size", n);
        }
        if shared.trace.query_text.load(Ordering::Relaxed) {
            span.record("db.query.text", text().as_ref());
        }
        record_server(&span, shared);
    }
    span
}

/// A batch's operation, as OpenTelemetry names it: `BATCH SELECT` when every statement has
/// the same operation, `BATCH` otherwise.
fn batch_operation<'a>(mut sqls: impl Iterator<Item = &'a str>) -> String {
    let first = sqls.next().and_then(operation);
    match first {
        Some(op) if sqls.all(|s| operation(s).as_deref() == Some(op.as_str())) => {
            format!("BATCH {op}")
        }
        _ => "BATCH".to_owned(),
    }
}

/// Runs the statement `sql` (`fut`) in its span, logging it when asked to (echo, slow). A
/// plain function, not an `async` one: the span opens when it is called, and the future it
/// returns is [`traced`]'s, one state machine fewer around every statement.
pub(crate) fn statement<T>(
    shared: &Shared,
    sql: &str,
    fut: impl Future<Output = Result<T>>,
) -> impl Future<Output = Result<T>> {
    traced(StatementTrace::start(shared, sql), fut)
}

/// Runs `fut` in `trace`'s span, and ends the trace with its result.
pub(crate) async fn traced<T>(
    mut trace: StatementTrace,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    // As `in_span`, written out: one future fewer on the hot path.
    let res = if trace.span.is_disabled() {
        fut.await
    } else {
        fut.instrument(trace.span.clone()).await
    };
    trace.finish(res.as_ref().err());
    res
}

/// Runs `fut` in `span` (for nothing when the span is disabled).
pub(crate) async fn in_span<F: Future>(span: &Span, fut: F) -> F::Output {
    if span.is_disabled() {
        fut.await
    } else {
        fut.instrument(span.clone()).await
    }
}

/// Ends a transaction `span` with `outcome` (and the error that ended it).
pub(crate) fn end_transaction(span: &Span, outcome: &'static str, error: Option<&Error>) {
    if span.is_disabled() {
        return;
    }
    span.record("db.transaction.outcome", outcome);
    if let Some(e) = error {
        record_error(span, e);
    }
}

/// One statement's span and logging, for a statement whose end is not one future's end (a
/// [`RowStream`](crate::RowStream) ends when its last row is read, a COPY when its writer is
/// finished): opened by [`start`](Self::start), which echoes the statement, closed by
/// [`finish`](Self::finish), which records an error and logs a slow statement. Dropped
/// unfinished, the span closes without an outcome and nothing is logged. Costs a disabled
/// span and no clock read when nobody listens and no slow threshold is set.
pub(crate) struct StatementTrace {
    pub(crate) span: Span,
    /// With a slow-statement threshold: what the slow log needs (boxed, to keep a row
    /// stream small when there is none).
    started: Option<Box<Timed>>,
}

/// A statement timed for the slow-statement log.
struct Timed {
    /// When it began.
    at: Instant,
    /// The threshold, in µs.
    slow: u64,
    /// The server process.
    pid: i32,
    /// The text to log.
    text: Box<str>,
}

impl StatementTrace {
    /// A statement run: `sql` is echoed.
    pub(crate) fn start(shared: &Shared, sql: &str) -> StatementTrace {
        let span = statement_span(shared, None, || operation(sql), None, || sql.into());
        if shared.trace.echo.load(Ordering::Relaxed) {
            tracing::info!(target: "aiopg::statement", pid = shared.identity.backend_pid, "{sql}");
        }
        StatementTrace::timed(shared, span, || sql.into())
    }

    /// A statement prepared (Parse and Describe, nothing run): operation `PREPARE`, the
    /// statement's text as its query text; not echoed, as echo logs what runs.
    pub(crate) fn prepare(shared: &Shared, sql: &str) -> StatementTrace {
        let span = statement_span(
            shared,
            None,
            || Some("PREPARE".to_owned()),
            None,
            || sql.into(),
        );
        StatementTrace::timed(shared, span, || format!("PREPARE {sql}").into())
    }

    /// A batch of statements sent as one request (a pipeline), in `parent` when given:
    /// operation `BATCH` (`BATCH SELECT` when all are `SELECT`s), `db.operation.batch.size`,
    /// the statements joined by `; ` as its query text; each statement echoed.
    pub(crate) fn batch<'a, I>(shared: &Shared, parent: Option<&Span>, sqls: I) -> StatementTrace
    where
        I: Iterator<Item = &'a str> + Clone,
    {
        let joined = || Cow::Owned(sqls.clone().collect::<Vec<_>>().join("; "));
        let span = statement_span(
            shared,
            parent,
            || Some(batch_operation(sqls.clone())),
            Some(sqls.clone().count()),
            joined,
        );
        if shared.trace.echo.load(Ordering::Relaxed) {
            let pid = shared.identity.backend_pid;
            for (i, sql) in sqls.clone().enumerate() {
                tracing::info!(target: "aiopg::statement", pid, batch_index = i, "{sql}");
            }
        }
        StatementTrace::timed(shared, span, || joined().into_owned().into())
    }

    fn timed(shared: &Shared, span: Span, text: impl FnOnce() -> Box<str>) -> StatementTrace {
        let slow = shared.trace.slow_micros.load(Ordering::Relaxed);
        StatementTrace {
            span,
            started: (slow > 0).then(|| {
                Box::new(Timed {
                    at: Instant::now(),
                    slow,
                    pid: shared.identity.backend_pid,
                    text: text(),
                })
            }),
        }
    }

    /// No span and no logging: for a statement inside another one's trace.
    pub(crate) fn none() -> StatementTrace {
        StatementTrace {
            span: Span::none(),
            started: None,
        }
    }

    /// Ends the statement (`error`: how it failed); a second call does nothing.
    pub(crate) fn finish(&mut self, error: Option<&Error>) {
        if let Some(e) = error {
            record_error(&self.span, e);
        }
        if let Some(t) = self.started.take() {
            let took = t.at.elapsed();
            if took.as_micros() >= u128::from(t.slow) {
                tracing::warn!(
                    target: "aiopg::slow_statement",
                    pid = t.pid,
                    elapsed_ms = took.as_secs_f64() * 1e3,
                    ok = error.is_none(),
                    "slow statement: {}",
                    t.text
                );
            }
        }
        self.span = Span::none();
    }
}

/// The span of a transaction, from BEGIN to its end; its statements are its children.
pub(crate) fn transaction_span(shared: &Shared, isolation: Option<&str>) -> Span {
    if !tracing::level_enabled!(Level::INFO) {
        return Span::none();
    }
    let span = tracing::info_span!(
        "aiopg.transaction",
        otel.name = "transaction",
        otel.kind = "client",
        otel.status_code = Empty,
        db.system.name = "postgresql",
        db.namespace = Empty,
        db.transaction.isolation_level = isolation,
        db.transaction.outcome = Empty,
        db.response.status_code = Empty,
        error.type = Empty,
        server.address = Empty,
        server.port = Empty,
    );
    if !span.is_disabled() {
        record_server(&span, shared);
    }
    span
}

/// The span of a connection attempt (all hosts of the DSN).
pub(crate) fn connect_span(config: &aiopg_core::Config) -> Span {
    if !tracing::level_enabled!(Level::INFO) {
        return Span::none();
    }
    let span = tracing::info_span!(
        "aiopg.connect",
        otel.name = "connect",
        otel.kind = "client",
        otel.status_code = Empty,
        db.system.name = "postgresql",
        db.namespace = config.get_dbname().or(config.get_user()),
        db.response.status_code = Empty,
        error.type = Empty,
        server.address = Empty,
        server.port = Empty,
    );
    if !span.is_disabled() {
        // The first host of the list, until the connection knows the one it reached.
        if let Some(host) = config.get_hosts().first() {
            record_host(
                &span,
                host,
                config.get_ports().first().copied().unwrap_or(5432),
            );
        }
    }
    span
}

#[cfg(test)]
mod tests {
    use super::operation;

    #[test]
    fn operation_is_the_first_keyword_after_comments() {
        assert_eq!(operation("select 1").as_deref(), Some("SELECT"));
        assert_eq!(
            operation("  -- hi\n /* x */ insert into t values (1)").as_deref(),
            Some("INSERT")
        );
        assert_eq!(
            operation("WITH a AS (SELECT 1) SELECT * FROM a").as_deref(),
            Some("WITH")
        );
        assert_eq!(operation("").as_deref(), None);
        assert_eq!(operation("/* unterminated").as_deref(), None);
        assert_eq!(operation("(SELECT 1)").as_deref(), None);
    }
}
