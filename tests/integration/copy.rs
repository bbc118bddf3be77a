//! COPY FROM STDIN and TO STDOUT in text, CSV and binary, against the real server, on every
//! runtime.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aiopg::types::{ToSql, Type};
use aiopg::{BinaryCopyInWriter, BinaryCopyOutStream, Connection, ErrorKind, SqlState};
use bytes::Bytes;
use futures_util::{SinkExt, TryStreamExt};
use rand::{Rng, SeedableRng};

use crate::support::{cluster, connect, options, poll_then_drop, rt_test, runtime_name, spawn};

const ROWS: i64 = 1_000_000;

/// SQL NULL for a column of any type.
#[derive(Debug)]
struct Null;

impl ToSql for Null {
    fn to_sql(
        &self,
        _: &Type,
        _: &mut bytes::BytesMut,
    ) -> Result<aiopg::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(aiopg::types::IsNull::Yes)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres_types::to_sql_checked!();
}

/// A fresh temporary table `copy_t (id int8, name text, score float8)`.
async fn table(conn: &Connection) {
    conn.batch_execute(
        "CREATE TEMP TABLE copy_t (id int8 PRIMARY KEY, name text NOT NULL, score float8)",
    )
    .await
    .unwrap();
}

/// What the server says of `copy_t`: rows, and a digest of every value in order.
async fn digest(conn: &Connection) -> (i64, String) {
    let rows = conn
        .query(
            "SELECT count(*), coalesce(md5(string_agg(id || '|' || name || '|' || \
             coalesce(score::text, 'null'), ',' ORDER BY id)), '') FROM copy_t",
            &[],
        )
        .await
        .unwrap();
    (rows[0].get(0), rows[0].get::<String>(1))
}

/// The same digest for the rows the tests generate, computed by the server from scratch.
async fn expected_digest(conn: &Connection, n: i64) -> (i64, String) {
    let rows = conn
        .query(
            "SELECT count(*), md5(string_agg(g || '|' || 'name, \"' || g || '\"' || '|' || \
             (g + 0.5)::float8::text, ',' ORDER BY g)) FROM generate_series(1, $1::int8) g",
            &[&n],
        )
        .await
        .unwrap();
    (rows[0].get(0), rows[0].get::<String>(1))
}

fn text_row(i: i64) -> String {
    format!("{i}\tname, \"{i}\"\t{}.5\n", i)
}

fn csv_row(i: i64) -> String {
    format!("{i},\"name, \"\"{i}\"\"\",{}.5\n", i)
}

/// Sends `ROWS` rows in chunks of ~1000 through `write`.
async fn send_rows(w: &mut aiopg::CopyInWriter, row: fn(i64) -> String) {
    let mut chunk = String::new();
    for i in 1..=ROWS {
        chunk.push_str(&row(i));
        if i % 1000 == 0 {
            w.write(chunk.as_bytes()).await.unwrap();
            chunk.clear();
        }
    }
    w.write(chunk.as_bytes()).await.unwrap();
}

rt_test! {
    async fn a_million_rows_in_and_out_as_text_csv_and_binary() {
        let conn = connect().await;
        table(&conn).await;
        let want = expected_digest(&conn, ROWS).await;

        // Text in, through `write`.
        let mut w = conn.copy_in("COPY copy_t FROM STDIN").await.unwrap();
        assert!(!w.is_binary());
        assert_eq!(w.column_count(), 3);
        send_rows(&mut w, text_row).await;
        assert_eq!(w.finish().await.unwrap(), ROWS as u64);
        assert_eq!(digest(&conn).await, want);

        // Text out, as a stream: one row per chunk, in order.
        let mut out = conn.copy_out("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT").await.unwrap();
        let mut n = 0i64;
        while let Some(chunk) = out.try_next().await.unwrap() {
            n += 1;
            assert_eq!(chunk, text_row(n).as_bytes(), "row {n}");
        }
        assert_eq!(n, ROWS);
        assert_eq!(out.rows(), Some(ROWS as u64));

        // CSV in, through the Sink.
        conn.batch_execute("TRUNCATE copy_t").await.unwrap();
        let mut w = conn.copy_in("COPY copy_t FROM STDIN (FORMAT csv)").await.unwrap();
        let mut chunk = String::new();
        for i in 1..=ROWS {
            chunk.push_str(&csv_row(i));
            if i % 1000 == 0 {
                w.send(Bytes::from(std::mem::take(&mut chunk))).await.unwrap();
            }
        }
        w.send(Bytes::from(chunk)).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), ROWS as u64);
        assert_eq!(digest(&conn).await, want);

        // CSV out, through AsyncRead.
        let mut out = conn
            .copy_out("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT (FORMAT csv)")
            .await
            .unwrap();
        let mut all = Vec::new();
        futures_util::io::AsyncReadExt::read_to_end(&mut out, &mut all).await.unwrap();
        let mut expected = String::new();
        for i in 1..=ROWS {
            expected.push_str(&csv_row(i));
        }
        assert!(all == expected.as_bytes(), "the CSV read back differs");

        // Binary in, typed.
        conn.batch_execute("TRUNCATE copy_t").await.unwrap();
        let w = conn.copy_in("COPY copy_t FROM STDIN (FORMAT binary)").await.unwrap();
        assert!(w.is_binary());
        let mut w = BinaryCopyInWriter::new(w, &[Type::INT8, Type::TEXT, Type::FLOAT8]);
        for i in 1..=ROWS {
            let name = format!("name, \"{i}\"");
            w.write(&[&i, &name, &(i as f64 + 0.5)]).await.unwrap();
        }
        assert_eq!(w.finish().await.unwrap(), ROWS as u64);
        assert_eq!(digest(&conn).await, want);

        // Binary out, typed.
        let out = conn
            .copy_out("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT (FORMAT binary)")
            .await
            .unwrap();
        let mut rows = BinaryCopyOutStream::new(out, &[Type::INT8, Type::TEXT, Type::FLOAT8]);
        let mut n = 0i64;
        while let Some(row) = rows.try_next().await.unwrap() {
            n += 1;
            assert_eq!(row.get::<i64>(0), n);
            assert_eq!(row.get::<&str>(1), format!("name, \"{n}\""));
            assert_eq!(row.get::<f64>(2), n as f64 + 0.5);
        }
        assert_eq!(n, ROWS);
        assert_eq!(rows.rows(), Some(ROWS as u64));
        // The connection is in step afterwards.
        assert_eq!(conn.query_scalar::<i32>("SELECT 7", &[]).await.unwrap(), 7);
    }
}

rt_test! {
    async fn the_typed_binary_writer_and_reader_round_trip_every_supported_type() {
        use chrono::{NaiveDate, TimeZone, Utc};
        let conn = connect().await;
        conn.batch_execute(
            "CREATE TEMP TABLE copy_types (b bool, i2 int2, i4 int4, i8 int8, f4 float4, \
             f8 float8, n numeric, t text, vc varchar(20), ba bytea, d date, ts timestamp, \
             tz timestamptz, u uuid, j jsonb, ip inet, a4 int4[], at text[], c char(1), o oid)",
        )
        .await
        .unwrap();
        let types = [
            Type::BOOL, Type::INT2, Type::INT4, Type::INT8, Type::FLOAT4, Type::FLOAT8,
            Type::NUMERIC, Type::TEXT, Type::VARCHAR, Type::BYTEA, Type::DATE, Type::TIMESTAMP,
            Type::TIMESTAMPTZ, Type::UUID, Type::JSONB, Type::INET, Type::INT4_ARRAY,
            Type::TEXT_ARRAY, Type::BPCHAR, Type::OID,
        ];
        // The types can also come from the table, through a prepared SELECT.
        let stmt = conn.prepare("SELECT * FROM copy_types").await.unwrap();
        let from_table: Vec<Type> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
        assert_eq!(from_table, types);

        let date = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
        let ts = date.and_hms_micro_opt(23, 59, 58, 123_456).unwrap();
        let tz = Utc.from_utc_datetime(&ts);
        let uuid = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
        let json = serde_json::json!({"k": [1, "two", null]});
        let ip: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        let dec = rust_decimal::Decimal::new(-1234567, 3);
        let bytes: &[u8] = b"\x00\xffbytes";
        let arr = vec![Some(1i32), None, Some(3)];
        let texts = vec!["a", "b c"];
        let w = conn.copy_in("COPY copy_types FROM STDIN (FORMAT binary)").await.unwrap();
        let mut w = BinaryCopyInWriter::new(w, &from_table);
        let full: Vec<&(dyn ToSql + Sync)> = vec![
            &true, &-2i16, &i32::MIN, &i64::MAX, &1.5f32, &f64::MIN_POSITIVE, &dec,
            &"tëxt\u{1F600}", &"varchar", &bytes, &date, &ts, &tz, &uuid,
            &json, &ip, &arr, &texts, &"x", &42u32,
        ];
        w.write(&full).await.unwrap();
        let null_refs: Vec<&(dyn ToSql + Sync)> = vec![&Null; types.len()];
        w.write(&null_refs).await.unwrap();
        // A value of the wrong type is refused before anything of its row is sent.
        let mut wrong = full.clone();
        wrong[1] = &"not an int2";
        assert_eq!(w.write(&wrong).await.unwrap_err().kind(), ErrorKind::Encode);
        assert_eq!(w.write(&full[..3]).await.unwrap_err().kind(), ErrorKind::Usage);
        assert_eq!(w.finish().await.unwrap(), 2);

        let out = conn
            .copy_out("COPY copy_types TO STDOUT (FORMAT binary)")
            .await
            .unwrap();
        let rows: Vec<_> = BinaryCopyOutStream::new(out, &from_table).try_collect().await.unwrap();
        assert_eq!(rows.len(), 2);
        let r = &rows[0];
        assert!(r.get::<bool>(0));
        assert_eq!(r.get::<i16>(1), -2);
        assert_eq!(r.get::<i32>(2), i32::MIN);
        assert_eq!(r.get::<i64>(3), i64::MAX);
        assert_eq!(r.get::<f32>(4), 1.5);
        assert_eq!(r.get::<f64>(5), f64::MIN_POSITIVE);
        assert_eq!(r.get::<rust_decimal::Decimal>(6), dec);
        assert_eq!(r.get::<&str>(7), "tëxt\u{1F600}");
        assert_eq!(r.get::<&str>(8), "varchar");
        assert_eq!(r.get::<&[u8]>(9), b"\x00\xffbytes");
        assert_eq!(r.get::<NaiveDate>(10), date);
        assert_eq!(r.get::<chrono::NaiveDateTime>(11), ts);
        assert_eq!(r.get::<chrono::DateTime<Utc>>(12), tz);
        assert_eq!(r.get::<uuid::Uuid>(13), uuid);
        assert_eq!(r.get::<serde_json::Value>(14), json);
        assert_eq!(r.get::<std::net::IpAddr>(15), ip);
        assert_eq!(r.get::<Vec<Option<i32>>>(16), vec![Some(1), None, Some(3)]);
        assert_eq!(r.get::<Vec<String>>(17), vec!["a", "b c"]);
        assert_eq!(r.get::<&str>(18), "x");
        assert_eq!(r.get::<u32>(19), 42);
        for i in 0..types.len() {
            assert!(rows[1].is_null(i), "column {i} is NULL");
            assert!(!rows[0].is_null(i), "column {i} is not NULL");
        }
        assert_eq!(rows[1].get::<Option<i64>>(3), None);
        assert_eq!(r.try_get::<i32>(0).unwrap_err().kind(), ErrorKind::Decode);
        assert_eq!(r.try_get::<i32>(99).unwrap_err().kind(), ErrorKind::Usage);
        // The server read the same values.
        let check: bool = conn
            .query_scalar(
                "SELECT b AND i2 = -2 AND t = 'tëxt\u{1F600}' AND j = '{\"k\": [1, \"two\", null]}' \
                 AND a4 = '{1,NULL,3}' FROM copy_types WHERE b IS NOT NULL",
                &[],
            )
            .await
            .unwrap();
        assert!(check);
    }
}

rt_test! {
    async fn a_dropped_writer_sends_copyfail_and_leaves_the_connection_usable() {
        let conn = connect().await;
        table(&conn).await;
        let mut w = conn.copy_in("COPY copy_t FROM STDIN").await.unwrap();
        w.write(text_row(1).as_bytes()).await.unwrap();
        w.write(b"2\tpartial").await.unwrap();
        drop(w);
        assert_eq!(conn.query_scalar::<i64>("SELECT count(*) FROM copy_t", &[]).await.unwrap(), 0);
        // So does an explicit abort.
        let mut w = conn.copy_in("COPY copy_t FROM STDIN").await.unwrap();
        w.write(text_row(1).as_bytes()).await.unwrap();
        w.abort("changed my mind").await.unwrap();
        assert_eq!(conn.query_scalar::<i64>("SELECT count(*) FROM copy_t", &[]).await.unwrap(), 0);
        // And a COPY whose start was dropped before the server answered.
        let started = crate::support::poll_then_drop(conn.copy_in("COPY copy_t FROM STDIN"), 1).await;
        drop(started);
        assert_eq!(conn.query_scalar::<i32>("SELECT 3", &[]).await.unwrap(), 3);
        assert_eq!(conn.transaction_status(), aiopg::TransactionStatus::Idle);
    }
}

rt_test! {
    async fn a_bad_row_mid_copy_is_a_db_error_with_its_line_and_the_connection_goes_on() {
        let conn = connect().await;
        table(&conn).await;
        let mut w = conn.copy_in("COPY copy_t FROM STDIN").await.unwrap();
        let mut data = String::new();
        for i in 1..=10 {
            data.push_str(&text_row(i));
        }
        data.push_str("11\tbad\tnot-a-number\n");
        w.write(data.as_bytes()).await.unwrap();
        // The error is noticed by a later write or by finish, whichever comes first.
        let mut err = None;
        for i in 12..200_000 {
            if let Err(e) = w.write(text_row(i).as_bytes()).await {
                err = Some(e);
                break;
            }
        }
        let err = match err {
            Some(e) => e,
            None => w.finish().await.expect_err("the bad row fails the COPY"),
        };
        assert_eq!(err.code(), Some(&SqlState::INVALID_TEXT_REPRESENTATION), "{err}");
        let db = err.as_db_error().unwrap();
        assert!(db.where_().unwrap_or("").contains("line 11"), "{:?}", db.where_());
        assert_eq!(conn.query_scalar::<i64>("SELECT count(*) FROM copy_t", &[]).await.unwrap(), 0);
        // A constraint violation too.
        let mut w = conn.copy_in("COPY copy_t FROM STDIN").await.unwrap();
        w.write(format!("{}{}", text_row(1), text_row(1)).as_bytes()).await.unwrap();
        let err = w.finish().await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION), "{err}");
        // A COPY the server refuses at once.
        let err = conn.copy_in("COPY no_such_table FROM STDIN").await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
        assert_eq!(conn.query_scalar::<i32>("SELECT 4", &[]).await.unwrap(), 4);
    }
}

rt_test! {
    async fn a_copy_after_a_timeout_and_a_dropped_reader_work() {
        let conn = connect().await;
        table(&conn).await;
        let err = conn
            .with_timeout(Some(Duration::from_millis(100)), conn.execute("SELECT pg_sleep(30)", &[]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        let mut w = conn.copy_in("COPY copy_t FROM STDIN").await.unwrap();
        for i in 1..=1000 {
            w.write(text_row(i).as_bytes()).await.unwrap();
        }
        assert_eq!(w.finish().await.unwrap(), 1000);
        // A reader dropped after a few rows of many.
        let mut out = conn
            .copy_out("COPY (SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g) TO STDOUT")
            .await
            .unwrap();
        for _ in 0..3 {
            out.try_next().await.unwrap().unwrap();
        }
        drop(out);
        assert_eq!(conn.query_scalar::<i64>("SELECT count(*) FROM copy_t", &[]).await.unwrap(), 1000);
        // A COPY that itself times out is cancelled on the server.
        let err = conn
            .with_timeout(Some(Duration::from_millis(100)), async {
                let mut w = conn.copy_in("COPY copy_t FROM STDIN").await?;
                w.write(text_row(5000).as_bytes()).await?;
                futures_util::future::pending::<()>().await;
                w.finish().await
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert_eq!(conn.query_scalar::<i64>("SELECT count(*) FROM copy_t", &[]).await.unwrap(), 1000);
    }
}

rt_test! {
    async fn queries_issued_during_a_copy_wait_and_then_run() {
        let conn = connect().await;
        table(&conn).await;
        // Cached now, the query is one request (not a prepare, then an execute).
        assert_eq!(conn.query_scalar::<i64>("SELECT count(*) FROM copy_t", &[]).await.unwrap(), 0);
        let mut w = conn.copy_in("COPY copy_t FROM STDIN").await.unwrap();
        w.write(text_row(1).as_bytes()).await.unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let (c, d) = (conn.clone(), done.clone());
        let mut query = Box::pin(async move {
            let n: i64 = c.query_scalar("SELECT count(*) FROM copy_t", &[]).await.unwrap();
            d.store(true, Ordering::SeqCst);
            n
        });
        // Its first poll issues it (queued behind the COPY); then a task finishes it.
        std::future::poll_fn(|cx| {
            assert!(query.as_mut().poll(cx).is_pending(), "answered during the COPY");
            std::task::Poll::Ready(())
        })
        .await;
        let query = spawn(query);
        // Another COPY waits for this one too.
        let c = conn.clone();
        let second = spawn(async move {
            let mut w = c.copy_in("COPY copy_t FROM STDIN").await.unwrap();
            w.write(text_row(3).as_bytes()).await.unwrap();
            w.finish().await.unwrap()
        });
        for i in 2..=2 {
            w.write(text_row(i).as_bytes()).await.unwrap();
        }
        w.flush().await.unwrap();
        assert!(!done.load(Ordering::SeqCst), "the query ran during the COPY");
        assert_eq!(w.finish().await.unwrap(), 2);
        // The query was queued first, so it sees this COPY's rows and not the second's.
        assert_eq!(query.await, 2);
        assert_eq!(second.await, 1);
        assert_eq!(conn.query_scalar::<i64>("SELECT count(*) FROM copy_t", &[]).await.unwrap(), 3);
    }
}

rt_test! {
    async fn the_wrong_direction_is_refused_and_the_connection_stays_usable() {
        let conn = connect().await;
        table(&conn).await;
        let err = conn.copy_out("COPY copy_t FROM STDIN").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
        let err = conn.copy_in("COPY copy_t TO STDOUT").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
        let err = conn.copy_in("SELECT 1").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
        assert_eq!(conn.query_scalar::<i32>("SELECT 5", &[]).await.unwrap(), 5);
        assert!(!conn.is_closed());
    }
}

rt_test! {
    async fn the_cursor_copy_methods_python_aiopg_refuses_work() {
        use aiopg::prelude::*;
        use aiopg::{CopyFile, CopyOptions};
        let conn = connect().await;
        table(&conn).await;
        let mut cur = conn.cursor().await.unwrap();
        // copy_from: another separator, NULLs, a subset of the columns.
        let data = futures_util::io::Cursor::new(b"1|a 'quoted' name|\\N\n2|two|2.5\n".to_vec());
        let options = CopyOptions {
            sep: "|".into(),
            columns: Some(vec!["id".into(), "name".into(), "score".into()]),
            ..CopyOptions::default()
        };
        assert_eq!(cur.copy_from(data, "copy_t", &options).await.unwrap(), 2);
        assert_eq!(cur.rowcount(), 2);
        let data = futures_util::io::Cursor::new(b"3,three\n".to_vec());
        let options = CopyOptions {
            sep: ",".into(),
            columns: Some(vec!["id".into(), "name".into()]),
            ..CopyOptions::default()
        };
        assert_eq!(cur.copy_from(data, "pg_temp.copy_t", &options).await.unwrap(), 1);
        // copy_to, with a NULL marker of its own.
        let mut out = futures_util::io::Cursor::new(Vec::new());
        let options = CopyOptions { null: "<null>".into(), ..CopyOptions::default() };
        assert_eq!(cur.copy_to(&mut out, "copy_t", &options).await.unwrap(), 3);
        let text = String::from_utf8(out.into_inner()).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        assert_eq!(lines, ["1\ta 'quoted' name\t<null>", "2\ttwo\t2.5", "3\tthree\t<null>"]);
        // copy_expert, both ways, in CSV.
        let mut csv = futures_util::io::Cursor::new(Vec::new());
        let n = cur
            .copy_expert("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT (FORMAT csv)", CopyFile::To(&mut csv))
            .await
            .unwrap();
        assert_eq!(n, 3);
        conn.batch_execute("TRUNCATE copy_t").await.unwrap();
        let mut back = futures_util::io::Cursor::new(csv.into_inner());
        let n = cur
            .copy_expert("COPY copy_t FROM STDIN (FORMAT csv)", CopyFile::From(&mut back))
            .await
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(conn.query_scalar::<i64>("SELECT count(*) FROM copy_t WHERE score IS NULL", &[]).await.unwrap(), 2);
        // Names are checked, never spliced.
        let data = futures_util::io::Cursor::new(Vec::new());
        let err = cur.copy_from(data, "copy_t; DROP TABLE copy_t", &CopyOptions::default()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Usage);
        let data = futures_util::io::Cursor::new(b"4\n".to_vec());
        let options = CopyOptions { columns: Some(vec!["id\"; DROP TABLE copy_t; --".into()]), ..CopyOptions::default() };
        let err = cur.copy_from(data, "copy_t", &options).await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::UNDEFINED_COLUMN), "{err}");
        assert_eq!(conn.query_scalar::<i64>("SELECT count(*) FROM copy_t", &[]).await.unwrap(), 3);
    }
}

/// A connection whose socket buffers fill soon: over the cluster's Unix socket when it is
/// known (a few hundred KiB of buffers, where loopback TCP has megabytes), else the DSN's.
async fn small_buffered_connection() -> Connection {
    match cluster() {
        Some(c) => options(&format!(
            "host={} port={} user=postgres dbname=postgres",
            c.socket_dir, c.port
        ))
        .connect()
        .await
        .expect("connect over the Unix socket"),
        None => connect().await,
    }
}

/// A table other sessions see (a temporary one would not do): `(id int8 PRIMARY KEY, name
/// text, score float8)`, fresh for this test and runtime.
async fn shared_table(conn: &Connection, test: &str) -> String {
    let t = format!(
        "copy_{test}_{}_{}",
        runtime_name().replace('-', "_"),
        std::process::id()
    );
    conn.batch_execute(&format!(
        "DROP TABLE IF EXISTS {t}; \
         CREATE TABLE {t} (id int8 PRIMARY KEY, name text NOT NULL, score float8)"
    ))
    .await
    .unwrap();
    t
}

/// Row `i` of the backpressure tests (names of varying length).
fn drop_row_name(i: i64) -> String {
    format!("{i}:{}", "x".repeat((i % 97) as usize))
}

/// What `t` holds, and what it should hold with rows `1..=n` exactly once each: (count,
/// distinct ids, digest of every value in order).
async fn drop_digests(
    conn: &Connection,
    t: &str,
    n: i64,
) -> ((i64, i64, String), (i64, i64, String)) {
    let got = conn
        .query(
            &format!(
                "SELECT count(*), count(DISTINCT id), coalesce(md5(string_agg(id || '|' || name \
                 || '|' || score::text, ',' ORDER BY id)), '') FROM {t}"
            ),
            &[],
        )
        .await
        .unwrap();
    let want = conn
        .query(
            "SELECT count(*), count(*), coalesce(md5(string_agg(g || '|' || (g || ':' || \
             repeat('x', (g % 97)::int4)) || '|' || (g + 0.5)::float8::text, ',' ORDER BY g)), '') \
             FROM generate_series(1, $1::int8) g",
            &[&n],
        )
        .await
        .unwrap();
    let three = |r: &aiopg::Row| (r.get::<i64>(0), r.get::<i64>(1), r.get::<String>(2));
    (three(&got[0]), three(&want[0]))
}

rt_test! {
    async fn binary_rows_are_copied_exactly_once_whatever_writes_are_dropped_under_backpressure() {
        let seed = crate::support::seed();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let conn = small_buffered_connection().await;
        let blocker = connect().await;
        let t = shared_table(&conn, "binary_drop").await;
        let types = [Type::INT8, Type::TEXT, Type::FLOAT8];
        for round in 0..12 {
            let fail = |what: String| -> String {
                format!("seed {seed} (AIOPG_TEST_SEED={seed} replays it), round {round}: {what}")
            };
            conn.batch_execute(&format!("TRUNCATE {t}")).await.unwrap();
            // Another session's uncommitted row with an id the COPY inserts early: the server
            // stops at it, stops reading, and the writer's data piles up until it must wait.
            let key: i64 = rng.random_range(1..=50);
            blocker
                .batch_execute(&format!("BEGIN; INSERT INTO {t} VALUES ({key}, 'blocker', 0)"))
                .await
                .unwrap();
            let w = conn
                .copy_in(&format!("COPY {t} (id, name, score) FROM STDIN (FORMAT binary)"))
                .await
                .unwrap();
            let mut w = BinaryCopyInWriter::new(w, &types);
            let (mut i, mut last, mut blocked, mut dropped) = (1i64, i64::MAX, false, 0u32);
            while i <= last {
                let name = drop_row_name(i);
                let score = i as f64 + 0.5;
                // One poll while the server is stuck (it wakes nobody); up to a few once it
                // reads again, so that drops land at random points of the waits.
                let polls = if blocked { rng.random_range(1..=3) } else { 1 };
                match poll_then_drop(w.write(&[&i, &name, &score]), polls).await {
                    Some(Ok(())) => i += 1,
                    Some(Err(e)) => panic!("{}", fail(format!("write of row {i}: {e}"))),
                    None if !blocked => {
                        // The first write that had to wait, dropped: let the server go on,
                        // and send a random number of rows more.
                        blocked = true;
                        dropped += 1;
                        blocker.batch_execute("ROLLBACK").await.unwrap();
                        last = i + rng.random_range(0..20_000);
                    }
                    // Dropped: the row was not written (write's cancel safety); again.
                    None => dropped += 1,
                }
                assert!(i < 3_000_000, "{}", fail("no write ever waited for room".into()));
            }
            let copied = w.finish().await;
            let copied = copied.unwrap_or_else(|e| panic!("{}", fail(format!("finish: {e}"))));
            assert_eq!(copied, last as u64, "{}", fail(format!("rows copied ({dropped} writes dropped)")));
            let (got, want) = drop_digests(&conn, &t, last).await;
            assert_eq!(got, want, "{}", fail(format!("the table's rows ({dropped} writes dropped)")));
        }
        conn.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}

rt_test! {
    async fn a_write_dropped_part_way_refuses_the_rest_of_the_copy_and_nothing_is_copied() {
        let conn = small_buffered_connection().await;
        let blocker = connect().await;
        let t = shared_table(&conn, "torn").await;
        blocker
            .batch_execute(&format!("BEGIN; INSERT INTO {t} VALUES (1, 'blocker', 0)"))
            .await
            .unwrap();
        let mut w = conn.copy_in(&format!("COPY {t} FROM STDIN")).await.unwrap();
        // Far more than the socket's buffers: the write takes a part, then waits, stuck.
        let mut data = String::new();
        let mut i = 0i64;
        while data.len() < 8 << 20 {
            i += 1;
            data.push_str(&format!("{i}\t{}\t{i}.5\n", drop_row_name(i)));
        }
        assert!(
            poll_then_drop(w.write(data.as_bytes()), 1).await.is_none(),
            "the write never waited for room"
        );
        blocker.batch_execute("ROLLBACK").await.unwrap();
        // What was taken ends mid-way; going on would copy a torn row, or the wrong rows.
        let err = w.write(b"999999999\tlast\t1\n").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
        let err = futures_util::AsyncWriteExt::write(&mut w, b"1").await.unwrap_err();
        assert!(err.to_string().contains("dropped"), "{err}");
        let err = w.finish().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
        assert_eq!(conn.query_scalar::<i64>(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap(), 0);
        assert_eq!(conn.transaction_status(), aiopg::TransactionStatus::Idle);
        conn.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}
