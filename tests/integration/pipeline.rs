//! Many queries in flight on one connection, and callers that give up mid-flight.

use rand::{Rng, SeedableRng};

use crate::support::{connect, poll_then_drop, rt_test, spawn};

rt_test! {
    async fn a_thousand_concurrent_queries_each_get_their_own_answer() {
        let conn = connect().await;
        let mut tasks = Vec::new();
        for t in 0..50i32 {
            let conn = conn.clone();
            tasks.push(spawn(async move {
                for i in 0..20i32 {
                    let v = t * 1000 + i;
                    // Two statement texts, so prepares and executes interleave.
                    let sql = if i % 2 == 0 { "SELECT $1::int4" } else { "SELECT $1::int4 + 0" };
                    let rows = conn.query(sql, &[&v]).await.unwrap();
                    assert_eq!(rows[0].get::<i32>(0), v);
                }
                20
            }));
        }
        let mut done = 0;
        for t in tasks {
            done += t.await;
        }
        assert_eq!(done, 1000);
    }
}

rt_test! {
    async fn queries_issued_together_are_pipelined_in_order() {
        let conn = connect().await;
        conn.query("SELECT $1::int4", &[&0i32]).await.unwrap(); // prepare once
        let futs: Vec<_> = (0..200i32)
            .map(|i| {
                let conn = conn.clone();
                async move { conn.query("SELECT $1::int4", &[&i]).await.unwrap()[0].get::<i32>(0) }
            })
            .collect();
        let got = futures_util::future::join_all(futs).await;
        assert_eq!(got, (0..200).collect::<Vec<_>>());
    }
}

rt_test! {
    async fn dropped_query_futures_never_desynchronise_the_connection() {
        let conn = connect().await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let mut completed = 0;
        for i in 0..400i32 {
            let polls = rng.random_range(0..4usize);
            // New statement texts now and then, so drops also land mid-prepare.
            let sql = format!("SELECT $1::int4 + {}", i % 7);
            let kind = rng.random_range(0..3);
            let c = conn.clone();
            let out = match kind {
                0 => poll_then_drop(async move { c.query(&sql, &[&i]).await.map(|_| ()) }, polls).await,
                1 => poll_then_drop(async move { c.simple_query("SELECT pg_sleep(0.001), 1").await.map(|_| ()) }, polls).await,
                _ => poll_then_drop(async move { c.execute("SELECT generate_series(1, 500)", &[]).await.map(|_| ()) }, polls).await,
            };
            if let Some(r) = out {
                r.unwrap();
                completed += 1;
            }
            // The next query gets its own answer whatever was abandoned before it.
            let check = 1_000_000 + i;
            let rows = conn.query("SELECT $1::int4", &[&check]).await.unwrap();
            assert_eq!(rows[0].get::<i32>(0), check, "iteration {i}");
        }
        assert!(completed < 400, "every query finished: nothing was dropped mid-flight");
        assert!(!conn.is_closed());
    }
}

rt_test! {
    async fn concurrent_callers_survive_others_dropping_mid_flight() {
        let conn = connect().await;
        let mut tasks = Vec::new();
        for t in 0..8i32 {
            let conn = conn.clone();
            tasks.push(spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                for i in 0..100i32 {
                    let v = t * 10_000 + i;
                    if rng.random_bool(0.3) {
                        let c = conn.clone();
                        let polls = rng.random_range(0..3usize);
                        let _ = poll_then_drop(async move { c.query("SELECT $1::int4", &[&v]).await }, polls).await;
                    } else {
                        let rows = conn.query("SELECT $1::int4", &[&v]).await.unwrap();
                        assert_eq!(rows[0].get::<i32>(0), v);
                    }
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let rows = conn.query("SELECT 1::int4", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i32>(0), 1);
    }
}

rt_test! {
    async fn large_results_and_large_parameters_cross_the_socket() {
        let conn = connect().await;
        let big = "x".repeat(4 << 20);
        let rows = conn.query("SELECT length($1::text), $1::text", &[&big]).await.unwrap();
        assert_eq!(rows[0].get::<i32>(0), 4 << 20);
        assert_eq!(rows[0].get::<&str>(1).len(), 4 << 20);
        let rows = conn
            .query("SELECT g, repeat('y', 100) FROM generate_series(1, 100000) g", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 100_000);
        assert_eq!(rows[99_999].get::<i32>(0), 100_000);
    }
}
