//! `connect`: open a connection, run one query, close it (new connections per second).
//! `connect-tls` does the same over TLS, each client checking the cluster's CA.

use crate::child::{drive, Job};

pub fn run(job: &Job) -> (u64, f64) {
    let rt = job.runtime.clone();
    match job.contender.as_str() {
        "aiopg" => crate::run!(&rt, job, aiopg),
        "tokio-postgres" => crate::run!(&rt, job, tokio_postgres),
        "sqlx" => crate::run!(&rt, job, sqlx),
        other => panic!("connect: unknown contender {other}"),
    }
}

async fn aiopg(job: &Job) -> (u64, f64) {
    drive(job.amount, |_| async move {
        let conn = crate::aiopg_connect(job).await;
        let rows = conn.query_unprepared("SELECT 1", &[]).await.expect("query");
        assert_eq!(rows.rows[0].get::<i32>(0), 1);
        conn.close().await;
        1
    })
    .await
}

async fn tokio_postgres(job: &Job) -> (u64, f64) {
    drive(job.amount, |_| async move {
        let client = crate::tokio_postgres_connect(job).await;
        let rows = client.simple_query("SELECT 1").await.expect("query");
        assert!(!rows.is_empty());
        drop(client);
        1
    })
    .await
}

async fn sqlx(job: &Job) -> (u64, f64) {
    use sqlx::Connection as _;
    drive(job.amount, |_| async move {
        let mut conn = sqlx::PgConnection::connect(&job.url)
            .await
            .expect("sqlx connect");
        let v: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut conn)
            .await
            .expect("query");
        assert_eq!(v, 1);
        conn.close().await.expect("close");
        1
    })
    .await
}
