//! `notify`: notifications per second end to end. One connection sends 100,000 notifications
//! (`pg_notify` over `generate_series`, 1,000 a statement), another one listens; the clock
//! stops when the listener has received the last. Each client listens through its own API:
//! aiopg's `notifies()` stream, tokio-postgres' `Connection::poll_message` forwarded to a
//! channel (its documented pattern), sqlx's `PgListener`.

use std::time::Instant;

use futures_util::StreamExt;

use crate::child::{Amount, Job};

pub const TOTAL: u64 = 100_000;
const BATCH: u64 = 1_000;

fn total(job: &Job) -> u64 {
    match job.amount {
        // Whole batches.
        Amount::Count(c) => c.div_ceil(BATCH).max(1) * BATCH,
        Amount::Seconds(_) => TOTAL,
    }
}

fn channel() -> String {
    format!("aiopg_bench_{}", std::process::id())
}

fn send_sql(channel: &str) -> String {
    format!("SELECT pg_notify('{channel}', g::text) FROM generate_series(1, {BATCH}) g")
}

pub fn run(job: &Job) -> (u64, f64) {
    let rt = job.runtime.clone();
    match job.contender.as_str() {
        "aiopg" => crate::run!(&rt, job, aiopg),
        "tokio-postgres" => crate::run!(&rt, job, tokio_postgres),
        "sqlx" => crate::run!(&rt, job, sqlx),
        other => panic!("notify: unknown contender {other}"),
    }
}

async fn aiopg(job: &Job) -> (u64, f64) {
    let n = total(job);
    let rt = aiopg::rt::runtime_by_name(&job.runtime).expect("runtime");
    // Room for the whole run: the listener is measured, not its buffer's bound.
    let listener = aiopg::ConnectOptions::new(&job.dsn)
        .expect("dsn")
        .runtime(rt)
        .event_capacity(n as usize)
        .connect()
        .await
        .expect("connect");
    let sender = crate::aiopg_connect(job).await;
    let chan = channel();
    let mut stream = listener.notifies();
    listener
        .batch_execute(&format!("LISTEN {chan}"))
        .await
        .expect("listen");
    let sql = send_sql(&chan);
    let start = Instant::now();
    let send = async {
        for _ in 0..n / BATCH {
            sender.execute(&sql, &[]).await.expect("notify");
        }
    };
    let receive = async {
        let mut got = 0u64;
        while got < n {
            stream.next().await.expect("open").expect("no lag");
            got += 1;
        }
    };
    futures_util::future::join(send, receive).await;
    (n, start.elapsed().as_secs_f64())
}

async fn tokio_postgres(job: &Job) -> (u64, f64) {
    let n = total(job);
    let (listener, mut connection) = tokio_postgres::connect(&job.tp_dsn, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = m {
                if tx.send(n).is_err() {
                    break;
                }
            }
        }
    });
    let sender = crate::tokio_postgres_connect(job).await;
    let chan = channel();
    listener
        .batch_execute(&format!("LISTEN {chan}"))
        .await
        .expect("listen");
    let sql = send_sql(&chan);
    let start = Instant::now();
    let send = async {
        for _ in 0..n / BATCH {
            sender.execute(sql.as_str(), &[]).await.expect("notify");
        }
    };
    let receive = async {
        let mut got = 0u64;
        while got < n {
            rx.recv().await.expect("open");
            got += 1;
        }
    };
    futures_util::future::join(send, receive).await;
    (n, start.elapsed().as_secs_f64())
}

async fn sqlx(job: &Job) -> (u64, f64) {
    use sqlx::Connection as _;
    let n = total(job);
    let mut listener = sqlx::postgres::PgListener::connect(&job.url)
        .await
        .expect("listener");
    let mut sender = sqlx::PgConnection::connect(&job.url)
        .await
        .expect("sqlx connect");
    let chan = channel();
    listener.listen(&chan).await.expect("listen");
    let sql = send_sql(&chan);
    let start = Instant::now();
    let send = async {
        for _ in 0..n / BATCH {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&mut sender)
                .await
                .expect("notify");
        }
    };
    let receive = async {
        let mut got = 0u64;
        while got < n {
            listener.recv().await.expect("recv");
            got += 1;
        }
    };
    futures_util::future::join(send, receive).await;
    (n, start.elapsed().as_secs_f64())
}
