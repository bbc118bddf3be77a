//! The `tracing` spans and logs of statements, transactions, acquires and connects, seen by a
//! subscriber as a user's OpenTelemetry layer sees them: names, attributes (OpenTelemetry's
//! database conventions), parents, and that no parameter value or password reaches any field.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aiopg::Pool;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::support::{dsn, options, rt_test, runtime};

/// A span as the subscriber saw it.
#[derive(Debug, Clone)]
struct Seen {
    name: &'static str,
    fields: HashMap<String, String>,
    parent: Option<u64>,
    id: u64,
}

/// An event (a log line).
#[derive(Debug, Clone)]
struct Logged {
    target: String,
    level: tracing::Level,
    fields: HashMap<String, String>,
}

#[derive(Default)]
struct Capture {
    spans: Mutex<Vec<Seen>>,
    events: Mutex<Vec<Logged>>,
}

impl Capture {
    fn spans(&self, name: &str) -> Vec<Seen> {
        let spans = self.spans.lock().unwrap();
        spans.iter().filter(|s| s.name == name).cloned().collect()
    }

    /// Every field value of every span and event, for the no-secret check.
    fn all_values(&self) -> Vec<String> {
        let spans = self.spans.lock().unwrap();
        let events = self.events.lock().unwrap();
        spans
            .iter()
            .flat_map(|s| s.fields.values().cloned())
            .chain(events.iter().flat_map(|e| e.fields.values().cloned()))
            .collect()
    }
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

thread_local! {
    /// The capture of the test running on this thread, if it asked for one.
    static CAPTURE: std::cell::RefCell<Option<Arc<Capture>>> = const { std::cell::RefCell::new(None) };
}

fn current() -> Option<Arc<Capture>> {
    CAPTURE.with(|c| c.borrow().clone())
}

/// Routes what the test threads that asked for it see into their [`Capture`].
struct CaptureLayer;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for CaptureLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(cap) = current() else { return };
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.id().into_u64());
        cap.spans.lock().unwrap().push(Seen {
            name: attrs.metadata().name(),
            fields,
            parent,
            id: id.into_u64(),
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let Some(cap) = current() else { return };
        let mut spans = cap.spans.lock().unwrap();
        if let Some(s) = spans.iter_mut().rev().find(|s| s.id == id.into_u64()) {
            values.record(&mut Fields(&mut s.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(cap) = current() else { return };
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        cap.events.lock().unwrap().push(Logged {
            target: event.metadata().target().to_owned(),
            level: *event.metadata().level(),
            fields,
        });
    }
}

/// Ends the capture of the current thread when dropped.
struct Capturing;

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

/// Captures what the current thread (the test's own, which polls the test's futures)
/// records until the guard drops. The subscriber is the process's global one, installed
/// once: a thread-scoped one (`set_default`) can miss spans whose callsite another thread
/// registers at the same moment (tracing caches a callsite's interest when it is first
/// seen), which made this test flaky when the suite runs tests in parallel.
fn capture() -> (Arc<Capture>, Capturing) {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(CaptureLayer);
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global tracing subscriber in the test binary");
    });
    let cap = Arc::new(Capture::default());
    CAPTURE.with(|c| *c.borrow_mut() = Some(cap.clone()));
    (cap, Capturing)
}

fn field<'a>(s: &'a Seen, name: &str) -> Option<&'a str> {
    s.fields.get(name).map(String::as_str)
}

/// The statement spans whose query text contains `marker`.
fn with_text(stmts: &[Seen], marker: &str) -> Vec<Seen> {
    stmts
        .iter()
        .filter(|s| field(s, "db.query.text").is_some_and(|t| t.contains(marker)))
        .cloned()
        .collect()
}

/// How many echo lines contain `marker`.
fn echoed(events: &[Logged], marker: &str) -> usize {
    events
        .iter()
        .filter(|e| {
            e.target == "aiopg::statement"
                && e.fields.get("message").is_some_and(|m| m.contains(marker))
        })
        .count()
}

/// The DSN with a password (the test cluster trusts the connection, so it is never asked
/// for, but it is in the settings every span is made from).
const PASSWORD: &str = "tr4ce-pw-never-shown";
const SECRET_PARAM: &str = "tr4ce-param-never-shown";

fn dsn_with_password() -> String {
    format!("{} password={PASSWORD}", dsn())
}

rt_test! {
    async fn statement_spans_follow_the_database_conventions() {
        let (cap, _guard) = capture();
        let conn = options(&dsn_with_password()).connect().await.unwrap();
        let rows = conn
            .query("SELECT $1::text AS v", &[&SECRET_PARAM])
            .await
            .unwrap();
        assert_eq!(rows[0].get::<&str>(0), SECRET_PARAM);
        let err = conn.query("SELECT 1 / 0", &[]).await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("22012"));

        let connects = cap.spans("aiopg.connect");
        assert_eq!(connects.len(), 1, "{connects:?}");
        let c = &connects[0];
        assert_eq!(field(c, "db.system.name"), Some("postgresql"));
        assert!(field(c, "otel.status_code").is_none());

        let stmts = cap.spans("aiopg.statement");
        let ok = stmts
            .iter()
            .find(|s| field(s, "db.operation.name") == Some("SELECT") && field(s, "error.type").is_none())
            .unwrap_or_else(|| panic!("no successful SELECT span in {stmts:?}"));
        assert_eq!(field(ok, "db.system.name"), Some("postgresql"));
        assert_eq!(field(ok, "otel.name"), Some("SELECT"));
        assert_eq!(field(ok, "otel.kind"), Some("client"));
        assert_eq!(field(ok, "db.namespace"), Some("postgres"));
        let server = crate::support::cluster().expect("the xtask cluster");
        assert_eq!(field(ok, "server.port"), Some(server.port.to_string().as_str()));
        assert_eq!(field(ok, "server.address"), Some("127.0.0.1"));
        // Opt-in only.
        assert!(field(ok, "db.query.text").is_none(), "{ok:?}");

        let failed: Vec<&Seen> = stmts.iter().filter(|s| field(s, "error.type").is_some()).collect();
        assert_eq!(failed.len(), 1, "{stmts:?}");
        assert_eq!(field(failed[0], "db.response.status_code"), Some("22012"));
        assert_eq!(field(failed[0], "otel.status_code"), Some("ERROR"));
        assert_eq!(field(failed[0], "error.type"), Some("Db"));

        for v in cap.all_values() {
            assert!(!v.contains(SECRET_PARAM) && !v.contains(PASSWORD), "a secret in a field: {v}");
        }
        conn.close().await;
    }
}

rt_test! {
    async fn query_text_is_recorded_only_when_asked_for() {
        let (cap, _guard) = capture();
        let conn = options(&dsn()).trace_query_text(true).connect().await.unwrap();
        conn.query("SELECT $1::text /* traced */", &[&SECRET_PARAM]).await.unwrap();
        let stmts = cap.spans("aiopg.statement");
        let s = stmts
            .iter()
            .find(|s| field(s, "db.query.text").is_some_and(|t| t.contains("/* traced */")))
            .unwrap_or_else(|| panic!("no span with the query text in {stmts:?}"));
        assert_eq!(field(s, "db.query.text"), Some("SELECT $1::text /* traced */"));
        for v in cap.all_values() {
            assert!(!v.contains(SECRET_PARAM), "a parameter value in a field: {v}");
        }
        conn.close().await;
    }
}

rt_test! {
    async fn a_transaction_span_holds_its_statements() {
        let (cap, _guard) = capture();
        let conn = options(&dsn()).connect().await.unwrap();
        let mut tx = conn
            .begin_with(aiopg::TransactionOptions {
                isolation_level: aiopg::IsolationLevel::RepeatableRead,
                ..Default::default()
            })
            .await
            .unwrap();
        conn.query("SELECT 1 /* in tx */", &[]).await.unwrap();
        tx.commit().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        tx.rollback().await.unwrap();
        drop(conn.begin().await.unwrap());
        conn.query("SELECT 2 /* after */", &[]).await.unwrap();

        let txs = cap.spans("aiopg.transaction");
        assert_eq!(txs.len(), 3, "{txs:?}");
        assert_eq!(field(&txs[0], "db.transaction.outcome"), Some("committed"));
        assert_eq!(field(&txs[0], "db.transaction.isolation_level"), Some("REPEATABLE READ"));
        assert_eq!(field(&txs[0], "db.system.name"), Some("postgresql"));
        assert_eq!(field(&txs[1], "db.transaction.outcome"), Some("rolled_back"));
        assert_eq!(field(&txs[2], "db.transaction.outcome"), Some("dropped"));
        let stmts = cap.spans("aiopg.statement");
        let ops_in = |tx: &Seen| -> Vec<String> {
            stmts
                .iter()
                .filter(|s| s.parent == Some(tx.id))
                .filter_map(|s| field(s, "db.operation.name").map(str::to_owned))
                .collect()
        };
        assert_eq!(ops_in(&txs[0]), ["BEGIN", "SELECT", "COMMIT"]);
        assert_eq!(ops_in(&txs[1]), ["BEGIN", "ROLLBACK"]);
        // After the transaction, statements are no longer its children.
        let last = stmts.last().unwrap();
        assert_eq!(field(last, "db.operation.name"), Some("SELECT"));
        assert!(txs.iter().all(|t| last.parent != Some(t.id)), "{last:?}");
        conn.close().await;
    }
}

rt_test! {
    async fn acquire_has_a_span_and_its_failure_a_status() {
        let (cap, _guard) = capture();
        let pool = Pool::builder(options(&dsn()))
            .runtime(runtime())
            .min_size(0)
            .max_size(1)
            .timeout(Duration::from_millis(300))
            .build()
            .await
            .unwrap();
        let held = pool.acquire().await.unwrap();
        let err = pool.acquire().await.unwrap_err();
        assert!(err.is_pool_timeout(), "{err}");
        drop(held);
        let acquires = cap.spans("aiopg.acquire");
        assert_eq!(acquires.len(), 2, "{acquires:?}");
        assert_eq!(field(&acquires[0], "db.system.name"), Some("postgresql"));
        assert_eq!(field(&acquires[0], "db.client.connection.pool.max"), Some("1"));
        assert!(field(&acquires[0], "otel.status_code").is_none());
        assert_eq!(field(&acquires[1], "otel.status_code"), Some("ERROR"));
        assert_eq!(field(&acquires[1], "error.type"), Some("PoolTimeout"));
        pool.close();
        pool.wait_closed().await.unwrap();
    }
}

rt_test! {
    async fn echo_and_slow_statement_logs() {
        let (cap, _guard) = capture();
        let conn = options(&dsn())
            .echo(true)
            .log_slow_statements(Some(Duration::from_millis(20)))
            .connect()
            .await
            .unwrap();
        conn.query("SELECT $1::text /* echoed */", &[&SECRET_PARAM]).await.unwrap();
        conn.query("SELECT pg_sleep(0.05) /* slow */", &[]).await.unwrap();
        let quiet = options(&dsn())
            .log_slow_statements(Some(Duration::from_secs(3600)))
            .connect()
            .await
            .unwrap();
        quiet.query("SELECT pg_sleep(0.05) /* not slow enough */", &[]).await.unwrap();

        let events = cap.events.lock().unwrap().clone();
        let echoed: Vec<&Logged> = events.iter().filter(|e| e.target == "aiopg::statement").collect();
        assert!(
            echoed.iter().any(|e| e.level == tracing::Level::INFO
                && e.fields.get("message").is_some_and(|m| m.contains("/* echoed */"))),
            "{echoed:?}"
        );
        let slow: Vec<&Logged> = events.iter().filter(|e| e.target == "aiopg::slow_statement").collect();
        assert_eq!(slow.len(), 1, "{slow:?}");
        assert_eq!(slow[0].level, tracing::Level::WARN);
        assert!(slow[0].fields["message"].contains("/* slow */"), "{slow:?}");
        let ms: f64 = slow[0].fields["elapsed_ms"].parse().unwrap();
        assert!(ms >= 50.0, "{ms}");
        for v in cap.all_values() {
            assert!(!v.contains(SECRET_PARAM), "a parameter value in a log: {v}");
        }
        conn.close().await;
        quiet.close().await;
    }
}

rt_test! {
    async fn row_streams_and_typed_queries_have_statement_spans() {
        use futures_util::StreamExt;
        let (cap, _guard) = capture();
        let conn = options(&dsn())
            .trace_query_text(true)
            .echo(true)
            .log_slow_statements(Some(Duration::from_millis(20)))
            .connect()
            .await
            .unwrap();
        // A stream's span lasts until its last row: the slow log counts the whole read.
        let mut rows = conn
            .query_stream("SELECT g, pg_sleep(0.03) FROM generate_series(1, 2) g /* streamed */", &[])
            .await
            .unwrap();
        let mut n = 0;
        while let Some(row) = rows.next().await {
            row.unwrap();
            n += 1;
        }
        assert_eq!(n, 2);
        // A stream that fails mid-way records the error on its span.
        let mut rows = conn
            .query_stream("SELECT 1 / (g - 2) FROM generate_series(1, 3) g /* fails */", &[])
            .await
            .unwrap();
        let mut failed = None;
        while let Some(row) = rows.next().await {
            if let Err(e) = row {
                failed = Some(e);
            }
        }
        assert_eq!(failed.expect("division by zero").code().map(|c| c.code()), Some("22012"));
        let typed: Vec<(i32,)> = conn.query_as("SELECT 7 /* typed */", &[]).await.unwrap();
        assert_eq!(typed, [(7,)]);

        let stmts = cap.spans("aiopg.statement");
        let with_text = |marker: &str| with_text(&stmts, marker);
        let streamed = with_text("/* streamed */");
        assert_eq!(streamed.len(), 1, "one span for the stream: {stmts:?}");
        assert_eq!(field(&streamed[0], "db.operation.name"), Some("SELECT"));
        assert!(field(&streamed[0], "error.type").is_none(), "{streamed:?}");
        let fails = with_text("/* fails */");
        assert_eq!(fails.len(), 1, "{stmts:?}");
        assert_eq!(field(&fails[0], "db.response.status_code"), Some("22012"));
        assert_eq!(field(&fails[0], "otel.status_code"), Some("ERROR"));
        let typed = with_text("/* typed */");
        assert_eq!(typed.len(), 1, "query_as: one span, not one per layer: {stmts:?}");

        let events = cap.events.lock().unwrap().clone();
        let echoed = |marker: &str| echoed(&events, marker);
        assert_eq!(echoed("/* streamed */"), 1);
        assert_eq!(echoed("/* typed */"), 1, "query_as echoes once");
        let slow: Vec<&Logged> = events
            .iter()
            .filter(|e| e.target == "aiopg::slow_statement")
            .collect();
        assert!(
            slow.iter().any(|e| e.fields["message"].contains("/* streamed */")),
            "the stream read for 60 ms: {slow:?}"
        );
        conn.close().await;
    }
}

rt_test! {
    async fn the_connect_span_names_the_server_it_reached() {
        let Some(cluster) = crate::support::require_cluster("spans") else { return };
        let (cap, _guard) = capture();
        let dead = crate::hosts::closed_port();
        let conn = options(&format!(
            "host=127.0.0.1,127.0.0.1 port={dead},{} user=aiopg_trust dbname=postgres \
             sslmode=disable",
            cluster.port
        ))
        .connect()
        .await
        .expect("the second host is up");
        let connects = cap.spans("aiopg.connect");
        assert_eq!(connects.len(), 1, "{connects:?}");
        // Not the first host of the list, which refused the connection.
        assert_eq!(field(&connects[0], "server.port"), Some(cluster.port.to_string().as_str()));
        assert_eq!(field(&connects[0], "server.address"), Some("127.0.0.1"));
        assert!(field(&connects[0], "otel.status_code").is_none(), "{connects:?}");
        conn.close().await;
    }
}

rt_test! {
    async fn prepare_pipelines_and_copy_have_statement_spans() {
        use futures_util::TryStreamExt;
        let (cap, _guard) = capture();
        let conn = options(&dsn())
            .trace_query_text(true)
            .echo(true)
            .connect()
            .await
            .unwrap();
        // prepare: a PREPARE span when the server prepares it, none from the cache.
        let stmt = conn.prepare("SELECT $1::int4 /* prepared */").await.unwrap();
        conn.prepare("SELECT $1::int4 /* prepared */").await.unwrap();
        let err = conn.prepare("SELECT nope /* unpreparable */").await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("42703"));
        conn.query_prepared(&stmt, &[&5i32]).await.unwrap();

        // A pipeline: one BATCH span; the failing statement's status on it.
        let mut p = conn.pipeline();
        p.query("SELECT $1::text /* batch a */", &[&SECRET_PARAM]);
        p.query("SELECT 2 /* batch b */", &[]);
        let results = p.run().await.unwrap();
        assert!(results.iter().all(Result::is_ok));
        let mut p = conn.pipeline();
        p.query("SELECT 1 /* mixed a */", &[]);
        p.query("SELECT 1 / 0 /* mixed b */", &[]);
        p.query("SELECT 3 /* mixed c */", &[]);
        let results = p.run().await.unwrap();
        assert!(results[1].is_err());

        // A pipelined transaction: a transaction span holding its batch.
        conn.simple_query("CREATE TEMP TABLE traced (id int4 PRIMARY KEY, name text)")
            .await
            .unwrap();
        let mut p = conn.pipeline();
        p.query("INSERT INTO traced VALUES (1, 'a') /* tx a */", &[]);
        p.query("INSERT INTO traced VALUES (2, 'b') /* tx b */", &[]);
        assert!(p.transaction(Default::default()).await.unwrap().is_committed());
        let mut p = conn.pipeline();
        p.query("INSERT INTO traced VALUES (1, 'dup') /* tx dup */", &[]);
        assert!(!p.transaction(Default::default()).await.unwrap().is_committed());

        // COPY in and out: each span lasts until the writer or reader ends.
        let mut w = conn.copy_in("COPY traced FROM STDIN (FORMAT csv) /* copy in */").await.unwrap();
        w.write(b"3,c\n4,d\n").await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 2);
        let mut w = conn.copy_in("COPY traced FROM STDIN (FORMAT csv) /* copy bad */").await.unwrap();
        w.write(b"5,e\n1,dup\n").await.unwrap();
        let err = w.finish().await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("23505"));
        let out: Vec<_> = conn
            .copy_out("COPY (SELECT id FROM traced ORDER BY id) TO STDOUT /* copy out */")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(out.concat(), b"1\n2\n3\n4\n");

        let stmts = cap.spans("aiopg.statement");
        let with_text = |marker: &str| with_text(&stmts, marker);
        let prepared = with_text("/* prepared */");
        assert_eq!(prepared.len(), 2, "a PREPARE and the run, no span for the cache: {prepared:?}");
        assert_eq!(field(&prepared[0], "db.operation.name"), Some("PREPARE"));
        assert_eq!(field(&prepared[0], "otel.name"), Some("PREPARE"));
        assert_eq!(field(&prepared[1], "db.operation.name"), Some("SELECT"));
        let bad = with_text("/* unpreparable */");
        assert_eq!(bad.len(), 1, "{stmts:?}");
        assert_eq!(field(&bad[0], "db.response.status_code"), Some("42703"));

        let batch = with_text("/* batch a */");
        assert_eq!(batch.len(), 1, "one span for the pipeline: {stmts:?}");
        assert_eq!(field(&batch[0], "db.operation.name"), Some("BATCH SELECT"));
        assert_eq!(field(&batch[0], "db.operation.batch.size"), Some("2"));
        assert_eq!(
            field(&batch[0], "db.query.text"),
            Some("SELECT $1::text /* batch a */; SELECT 2 /* batch b */")
        );
        assert!(field(&batch[0], "error.type").is_none(), "{batch:?}");
        let mixed = with_text("/* mixed a */");
        assert_eq!(mixed.len(), 1, "{stmts:?}");
        assert_eq!(field(&mixed[0], "db.operation.batch.size"), Some("3"));
        assert_eq!(field(&mixed[0], "db.response.status_code"), Some("22012"));

        let txs = cap.spans("aiopg.transaction");
        assert_eq!(txs.len(), 2, "{txs:?}");
        assert_eq!(field(&txs[0], "db.transaction.outcome"), Some("committed"));
        assert_eq!(field(&txs[1], "db.transaction.outcome"), Some("rolled_back"));
        assert_eq!(field(&txs[1], "db.response.status_code"), Some("23505"));
        let tx_batch = with_text("/* tx a */");
        assert_eq!(tx_batch.len(), 1, "{stmts:?}");
        assert_eq!(tx_batch[0].parent, Some(txs[0].id), "the batch is the transaction's child");
        assert_eq!(field(&tx_batch[0], "db.operation.name"), Some("BATCH INSERT"));
        let dup = with_text("/* tx dup */");
        assert_eq!(dup[0].parent, Some(txs[1].id));
        // One statement: OpenTelemetry records no batch size of 1.
        assert!(field(&dup[0], "db.operation.batch.size").is_none(), "{dup:?}");
        assert_eq!(field(&dup[0], "db.response.status_code"), Some("23505"));

        for (marker, code) in [("/* copy in */", None), ("/* copy bad */", Some("23505")), ("/* copy out */", None)] {
            let copy = with_text(marker);
            assert_eq!(copy.len(), 1, "{marker}: {stmts:?}");
            assert_eq!(field(&copy[0], "db.operation.name"), Some("COPY"));
            assert_eq!(field(&copy[0], "db.response.status_code"), code, "{marker}: {copy:?}");
        }

        // Echo: what runs, each pipelined statement once; not a PREPARE.
        let events = cap.events.lock().unwrap().clone();
        let echoed = |marker: &str| echoed(&events, marker);
        assert_eq!(echoed("/* prepared */"), 1, "the run, not the PREPARE");
        assert_eq!(echoed("/* batch a */"), 1);
        assert_eq!(echoed("/* batch b */"), 1);
        assert_eq!(echoed("/* copy in */"), 1);
        for v in cap.all_values() {
            assert!(!v.contains(SECRET_PARAM), "a parameter value in a field: {v}");
        }
        conn.close().await;
    }
}
