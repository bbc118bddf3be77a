//! `sa-select`, `sa-select-1k`, `sa-stream-1m`: aiopg.sa's layer beside the plain connection
//! running the same statement. The sa contender builds its `SELECT` with sea-query on every
//! operation (as a service does) and reads rows through `ResultProxy`; the plain one runs the
//! SQL text sea-query produces with `Connection::query` (`query_stream` for the 1 M rows);
//! `aiopg-sea-query` builds the same statement on every operation and runs it through
//! `Connection::query` with sea-query-postgres' binder, as that crate documents for a plain
//! client: the difference between it and `aiopg-sa` is the sa layer's own cost.

use aiopg::sa::sea_query::{Expr, ExprTrait, Order, Query, SelectStatement};

use crate::child::{drive, Amount, Job};

const TABLE: &str = "aiopg_bench_sa";
const TABLE_ROWS: i32 = 100_000;
const STREAM_ROWS: u64 = 1_000_000;
const STREAM_SQL: &str = "SELECT g::int8, repeat('x', 20) FROM generate_series(1, 1000000) g";

pub fn run(job: &Job) -> (u64, f64) {
    let rt = job.runtime.clone();
    match (job.workload.as_str(), job.contender.as_str()) {
        ("sa-stream-1m", "aiopg-sa") => crate::run!(&rt, job, sa_stream),
        ("sa-stream-1m", "aiopg") => crate::run!(&rt, job, plain_stream),
        (_, "aiopg-sa") => crate::run!(&rt, job, sa),
        (_, "aiopg") => crate::run!(&rt, job, plain),
        (_, "aiopg-sea-query") => crate::run!(&rt, job, plain_built),
        (w, other) => panic!("{w}: unknown contender {other}"),
    }
}

/// Rows per operation.
fn width(job: &Job) -> i32 {
    if job.workload == "sa-select-1k" {
        1000
    } else {
        1
    }
}

/// The statement, built the way a user builds it (with static names, as sea-query's own
/// examples do with their `Iden` enums).
fn select(first: i32, width: i32) -> SelectStatement {
    let mut q = Query::select();
    q.columns(["id", "name", "score"]).from(TABLE);
    if width == 1 {
        q.and_where(Expr::col("id").eq(first));
    } else {
        q.and_where(Expr::col("id").gte(first))
            .and_where(Expr::col("id").lt(first + width))
            .order_by("id", Order::Asc);
    }
    q
}

/// The first key of operation `n`.
fn key(n: u64, width: i32) -> i32 {
    (n % (TABLE_ROWS / width) as u64) as i32 * width + 1
}

/// Creates and fills the table once (the first child to run does it).
async fn setup(conn: &aiopg::Connection) {
    conn.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (id int4 PRIMARY KEY, name text NOT NULL, \
         score float8 NOT NULL)"
    ))
    .await
    .expect("create");
    let rows = conn
        .query(&format!("SELECT count(*) FROM {TABLE}"), &[])
        .await
        .expect("count");
    if rows[0].get::<i64>(0) != i64::from(TABLE_ROWS) {
        conn.batch_execute(&format!(
            "TRUNCATE {TABLE}; INSERT INTO {TABLE} SELECT g, 'name ' || g, g * 0.5 \
             FROM generate_series(1, {TABLE_ROWS}) g; ANALYZE {TABLE}"
        ))
        .await
        .expect("fill");
    }
}

/// What both contenders do with the rows of one operation: decode every column by name, and
/// check that the keys are the ones asked for.
fn check<'a>(first: i32, width: i32, rows: impl Iterator<Item = &'a aiopg::Row>) {
    let (mut got, mut sum) = (0i64, 0i64);
    for row in rows {
        let (id, name, score): (i32, &str, f64) =
            (row.get("id"), row.get("name"), row.get("score"));
        assert!(!name.is_empty() && score >= 0.0);
        sum += i64::from(id);
        got += 1;
    }
    let w = i64::from(width);
    assert_eq!(got, w);
    assert_eq!(sum, w * i64::from(first) + w * (w - 1) / 2);
}

async fn sa(job: &Job) -> (u64, f64) {
    let rt = aiopg::rt::runtime_by_name(&job.runtime).expect("runtime");
    let options = aiopg::ConnectOptions::new(&job.dsn)
        .expect("dsn")
        .runtime(rt);
    let engine = aiopg::sa::Engine::builder(options)
        .min_size(1)
        .max_size(1)
        .build()
        .await
        .expect("engine");
    let conn = engine.acquire().await.expect("acquire");
    setup(conn.connection()).await;
    let w = width(job);
    // The statement cache is warm before the clock starts, as for the plain contender.
    conn.execute(&select(1, w))
        .await
        .expect("warm")
        .fetchall()
        .await
        .expect("warm");
    let r = drive(job.amount, |n| {
        let conn = &conn;
        async move {
            let first = key(n, w);
            let mut result = conn.execute(&select(first, w)).await.expect("execute");
            let rows = result.fetchall().await.expect("fetch");
            check(first, w, rows.iter().map(|r| &**r));
            1
        }
    })
    .await;
    drop(conn);
    engine.close();
    r
}

async fn plain(job: &Job) -> (u64, f64) {
    let conn = crate::aiopg_connect(job).await;
    setup(&conn).await;
    let w = width(job);
    // The SQL text sea-query makes, with its $n placeholders.
    let sql = aiopg::sa::Executable::build(&select(1, w)).sql().to_owned();
    let warm: &[aiopg::Param<'_>] = if w == 1 { &[&1i32] } else { &[&1i32, &1001i32] };
    conn.query(&sql, warm).await.expect("warm");
    let r = drive(job.amount, |n| {
        let (conn, sql) = (&conn, &sql);
        async move {
            let first = key(n, w);
            let end = first + w;
            let params: &[aiopg::Param<'_>] = if w == 1 { &[&first] } else { &[&first, &end] };
            let rows = conn.query(sql, params).await.expect("query");
            check(first, w, rows.iter());
            1
        }
    })
    .await;
    conn.close().await;
    r
}

async fn plain_built(job: &Job) -> (u64, f64) {
    use sea_query_postgres::PostgresBinder;
    let conn = crate::aiopg_connect(job).await;
    setup(&conn).await;
    let w = width(job);
    let (sql, values) = select(1, w).build_postgres(aiopg::sa::sea_query::PostgresQueryBuilder);
    conn.query(&sql, &values.as_params()).await.expect("warm");
    let r = drive(job.amount, |n| {
        let conn = &conn;
        async move {
            let first = key(n, w);
            let (sql, values) =
                select(first, w).build_postgres(aiopg::sa::sea_query::PostgresQueryBuilder);
            let rows = conn.query(&sql, &values.as_params()).await.expect("query");
            check(first, w, rows.iter());
            1
        }
    })
    .await;
    conn.close().await;
    r
}

fn stream_rows(job: &Job) -> u64 {
    match job.amount {
        Amount::Count(c) => Ord::min(c, STREAM_ROWS),
        Amount::Seconds(_) => STREAM_ROWS,
    }
}

async fn sa_stream(job: &Job) -> (u64, f64) {
    let rt = aiopg::rt::runtime_by_name(&job.runtime).expect("runtime");
    let options = aiopg::ConnectOptions::new(&job.dsn)
        .expect("dsn")
        .runtime(rt);
    let engine = aiopg::sa::create_engine(options).await.expect("engine");
    let conn = engine.acquire().await.expect("acquire");
    crate::child::report_start_rss();
    let want = stream_rows(job);
    let start = std::time::Instant::now();
    let mut result = conn.execute(STREAM_SQL).await.expect("execute");
    let (mut n, mut sum) = (0u64, 0i64);
    while let Some(row) = result.fetchone().await.expect("fetch") {
        sum += row.get::<i64>(0);
        n += 1;
        if n == want {
            break;
        }
    }
    result.close();
    assert_eq!(n, want);
    assert_eq!(sum as u64, want * (want + 1) / 2);
    let r = (n, start.elapsed().as_secs_f64());
    drop(conn);
    engine.close();
    r
}

async fn plain_stream(job: &Job) -> (u64, f64) {
    use futures_util::StreamExt;
    let conn = crate::aiopg_connect(job).await;
    crate::child::report_start_rss();
    let want = stream_rows(job);
    let start = std::time::Instant::now();
    let mut rows = conn.query_stream(STREAM_SQL, &[]).await.expect("query");
    let (mut n, mut sum) = (0u64, 0i64);
    while let Some(row) = rows.next().await {
        sum += row.expect("row").get::<i64>(0);
        n += 1;
        if n == want {
            break;
        }
    }
    drop(rows);
    assert_eq!(n, want);
    assert_eq!(sum as u64, want * (want + 1) / 2);
    let r = (n, start.elapsed().as_secs_f64());
    conn.close().await;
    r
}
