//! `aiopg::sa`: the engine, sea-query statements bound as parameters, and result proxies,
//! against the real server, on every runtime.

use std::time::Duration;

use aiopg::sa::sea_query::{Alias, ColumnDef, Expr, ExprTrait, Order, Query, Table, Value};
use aiopg::sa::{Engine, ResultProxy, SqlValue};
use aiopg::ErrorKind;
use futures_util::TryStreamExt;
use rand::{Rng, SeedableRng};

use crate::support::{dsn, options, poll_then_drop, rt_test, runtime, spawn, Join};

async fn engine(max: usize) -> Engine {
    Engine::builder(options(&dsn()))
        .runtime(runtime())
        .min_size(0)
        .max_size(max)
        .timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap()
}

/// A table of its own for each test and runtime: `(id serial primary key, val text)`.
fn table(test: &str) -> String {
    format!(
        "sa_{test}_{}_{}",
        crate::support::runtime_name().replace('-', "_"),
        std::process::id()
    )
}

async fn create(conn: &aiopg::sa::SAConnection, name: &str) {
    let drop = Table::drop().table(Alias::new(name)).if_exists().to_owned();
    conn.execute(&drop).await.unwrap();
    let create = Table::create()
        .table(Alias::new(name))
        .col(
            ColumnDef::new(Alias::new("id"))
                .integer()
                .not_null()
                .auto_increment()
                .primary_key(),
        )
        .col(ColumnDef::new(Alias::new("val")).text().not_null())
        .to_owned();
    let res = conn.execute(&create).await.unwrap();
    assert!(!res.returns_rows() && res.is_closed());
}

async fn drop_table(conn: &aiopg::sa::SAConnection, name: &str) {
    conn.execute(&Table::drop().table(Alias::new(name)).to_owned())
        .await
        .unwrap();
}

rt_test! {
    async fn the_engine_hands_out_pooled_connections() {
        let engine = engine(3).await;
        assert_eq!(engine.dialect(), "postgresql");
        assert_eq!((engine.min_size(), engine.max_size()), (0, 3));
        // The engine connected once to learn the server's version, and gave that back.
        assert_eq!(engine.free_size(), 1);
        let a = engine.acquire().await.unwrap();
        let b = engine.acquire().await.unwrap();
        assert_eq!(engine.size(), 2);
        assert_eq!(engine.free_size(), 0);
        assert_eq!(a.scalar::<i32>("SELECT 1").await.unwrap(), Some(1));
        let num: Option<String> = a.scalar("SHOW server_version_num").await.unwrap();
        assert_eq!(engine.server_version().to_string(), num.unwrap());
        engine.release(a).await;
        assert_eq!(engine.free_size(), 1);
        b.close().await;
        assert_eq!(engine.free_size(), 2);
        engine.close();
        engine.wait_closed().await.unwrap();
        assert!(engine.acquire().await.is_err());
    }
}

rt_test! {
    async fn the_engine_reports_its_dsn_timeout_name_and_state() {
        // The test cluster's trust role ignores the password; the DSN must not show it.
        let secret = "sa-engine-secret-pw";
        let engine = Engine::builder(options(&format!("{} password={secret}", dsn())))
            .runtime(runtime())
            .min_size(0)
            .max_size(2)
            .timeout(Duration::from_millis(2500))
            .name("orders-engine")
            .build()
            .await
            .unwrap();
        assert_eq!(engine.name(), "orders-engine");
        assert_eq!(engine.timeout(), Some(Duration::from_millis(2500)));
        let shown = engine.dsn();
        assert!(!shown.contains(secret), "the password is hidden: {shown}");
        assert!(shown.contains("********"), "{shown}");
        let port = crate::support::cluster().expect("the xtask cluster").port;
        assert!(shown.contains(&port.to_string()), "{shown}");
        assert!(!engine.is_closed());
        engine.close();
        assert!(engine.is_closed());
        engine.wait_closed().await.unwrap();
    }
}

rt_test! {
    async fn an_engine_for_a_server_that_is_not_there_fails_at_creation() {
        // A closed loopback port.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let err = Engine::builder(options(&format!("host=127.0.0.1 port={port} user=nobody")))
            .runtime(runtime())
            .min_size(0)
            .build()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    }
}

rt_test! {
    async fn builder_values_are_bound_and_read_back_verbatim() {
        let engine = engine(2).await;
        let conn = engine.acquire().await.unwrap();
        let t = table("verbatim");
        create(&conn, &t).await;
        let nasty = [
            "'); DROP TABLE x; --",
            "back\\slash \\' and \\\\",
            "quote ' double \" dollar $$ $1",
            "unicode: ünïcødé 日本語 🦀",
            "",
        ];
        for v in nasty {
            let insert = Query::insert()
                .into_table(Alias::new(&t))
                .columns([Alias::new("val")])
                .values_panic([v.into()])
                .to_owned();
            let res = conn.execute(&insert).await.unwrap();
            assert_eq!(res.rowcount(), 1);
            assert!(res.is_closed(), "a statement without rows closes its result");
        }
        let select = Query::select()
            .columns([Alias::new("id"), Alias::new("val")])
            .from(Alias::new(&t))
            .order_by(Alias::new("id"), Order::Asc)
            .to_owned();
        let mut res = conn.execute(&select).await.unwrap();
        assert!(res.returns_rows());
        assert_eq!(res.keys(), ["id", "val"]);
        let rows = res.fetchall().await.unwrap();
        let got: Vec<&str> = rows.iter().map(|r| r.get::<&str>("val")).collect();
        assert_eq!(got, nasty);
        assert!(res.is_closed());
        assert_eq!(res.rowcount(), nasty.len() as i64);
        // A WHERE with a bound value finds the injection attempt as plain text.
        let find = Query::select()
            .column(Alias::new("id"))
            .from(Alias::new(&t))
            .and_where(Expr::col(Alias::new("val")).eq(nasty[0]))
            .to_owned();
        assert_eq!(conn.scalar::<i32>(&find).await.unwrap(), Some(1));
        // Update and delete through the builder report their row counts.
        let update = Query::update()
            .table(Alias::new(&t))
            .value(Alias::new("val"), "changed")
            .and_where(Expr::col(Alias::new("id")).gt(3))
            .to_owned();
        assert_eq!(conn.execute(&update).await.unwrap().rowcount(), 2);
        let delete = Query::delete()
            .from_table(Alias::new(&t))
            .and_where(Expr::col(Alias::new("val")).eq("changed"))
            .to_owned();
        assert_eq!(conn.execute(&delete).await.unwrap().rowcount(), 2);
        drop_table(&conn, &t).await;
    }
}

rt_test! {
    async fn a_result_fetches_as_aiopg_sa_does_and_closes_itself() {
        let engine = engine(1).await;
        let conn = engine.acquire().await.unwrap();
        let sql = "SELECT g AS n, 'row ' || g AS label FROM generate_series(1, 10) g";
        let mut res: ResultProxy = conn.execute(sql).await.unwrap();
        let one = res.fetchone().await.unwrap().unwrap();
        assert_eq!((one.get::<i32>("n"), one.get::<&str>(1)), (1, "row 1"));
        assert_eq!(one.keys(), ["n", "label"]);
        let err = one.try_get::<i32>("nope").unwrap_err();
        assert!(err.to_string().contains("label"), "lists the known columns: {err}");
        let three = res.fetchmany(3).await.unwrap();
        assert_eq!(three.iter().map(|r| r.get::<i32>(0)).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(res.rowcount(), -1, "unknown until exhausted");
        let rest = res.fetchall().await.unwrap();
        assert_eq!(rest.len(), 6);
        assert!(res.is_closed());
        assert_eq!(res.rowcount(), 10);
        assert_eq!(res.fetchone().await.unwrap_err().kind(), ErrorKind::Usage);
        // first() closes the result; the connection stays in step.
        let mut res = conn.execute(sql).await.unwrap();
        assert_eq!(res.first().await.unwrap().unwrap().get::<i32>(0), 1);
        assert!(res.is_closed());
        assert_eq!(res.fetchall().await.unwrap_err().kind(), ErrorKind::Usage);
        // scalar(), raw SQL with parameters, NULL, and no rows.
        let p: &[aiopg::Param<'_>] = &[&41i32];
        assert_eq!(conn.scalar::<i32>(("SELECT $1::int4 + 1", p)).await.unwrap(), Some(42));
        assert_eq!(conn.scalar::<i32>("SELECT NULL::int4").await.unwrap(), None);
        assert_eq!(conn.scalar::<i32>("SELECT 1 WHERE false").await.unwrap(), None);
        // As a stream, and into typed rows.
        let res = conn.execute(sql).await.unwrap();
        let rows: Vec<(i32, String)> = res
            .map_ok(|r| r.to::<(i32, String)>().unwrap())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(rows.len(), 10);
        assert_eq!(rows[9], (10, "row 10".to_owned()));
        // SQL errors are errors, and the connection goes on.
        let err = conn.execute("SELECT nope").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Db);
        assert_eq!(conn.scalar::<i32>("SELECT 7").await.unwrap(), Some(7));
        assert!(!conn.in_transaction());
    }
}

rt_test! {
    async fn a_million_rows_stream_through_a_result() {
        let engine = engine(1).await;
        let conn = engine.acquire().await.unwrap();
        let mut res = conn
            .execute("SELECT g::int8, repeat('x', 20) FROM generate_series(1, 1000000) g")
            .await
            .unwrap();
        let (mut n, mut sum) = (0i64, 0i64);
        while let Some(row) = res.fetchone().await.unwrap() {
            n += 1;
            sum += row.get::<i64>(0);
        }
        assert_eq!(n, 1_000_000);
        assert_eq!(sum, 1_000_000 * 1_000_001 / 2);
        assert_eq!(res.rowcount(), 1_000_000);
    }
}

/// Rows of the test table, seen from another connection (committed work only).
async fn committed(engine: &Engine, t: &str) -> i64 {
    let other = engine.acquire().await.unwrap();
    other
        .scalar::<i64>(format!("SELECT count(*) FROM {t}"))
        .await
        .unwrap()
        .unwrap()
}

/// Rows of the test table as this connection sees them.
async fn count(conn: &aiopg::sa::SAConnection, t: &str) -> i64 {
    conn.scalar::<i64>(format!("SELECT count(*) FROM {t}"))
        .await
        .unwrap()
        .unwrap()
}

async fn insert(conn: &aiopg::sa::SAConnection, t: &str, v: &str) {
    let q = Query::insert()
        .into_table(Alias::new(t))
        .columns([Alias::new("val")])
        .values_panic([v.into()])
        .to_owned();
    conn.execute(&q).await.unwrap();
}

rt_test! {
    async fn transactions_commit_roll_back_and_nest_as_aiopg_sa_does() {
        let engine = engine(3).await;
        let conn = engine.acquire().await.unwrap();
        let t = table("tx");
        create(&conn, &t).await;

        // Commit and rollback of the outermost transaction; misuse.
        let tx = conn.begin().await.unwrap();
        assert!(tx.is_active() && conn.in_transaction());
        insert(&conn, &t, "a").await;
        tx.commit().await.unwrap();
        assert!(!conn.in_transaction());
        assert_eq!(committed(&engine, &t).await, 1);
        let tx = conn.begin().await.unwrap();
        insert(&conn, &t, "b").await;
        tx.rollback().await.unwrap();
        assert_eq!(count(&conn, &t).await, 1);

        // An inner begin() joins: its commit is a no-op until the outer commits; its rollback
        // rolls everything back and leaves the outer inactive.
        let outer = conn.begin().await.unwrap();
        let inner = conn.begin().await.unwrap();
        insert(&conn, &t, "c").await;
        inner.commit().await.unwrap();
        assert_eq!(committed(&engine, &t).await, 1, "nothing committed yet");
        outer.commit().await.unwrap();
        assert_eq!(committed(&engine, &t).await, 2);
        let outer = conn.begin().await.unwrap();
        let inner = conn.begin().await.unwrap();
        insert(&conn, &t, "d").await;
        inner.rollback().await.unwrap();
        assert!(!outer.is_active());
        assert!(!conn.in_transaction());
        let err = outer.commit().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
        assert!(err.to_string().contains("inactive"), "{err}");
        assert_eq!(count(&conn, &t).await, 2);

        // Savepoints three deep: rolling back the innermost keeps the outer work.
        let outer = conn.begin().await.unwrap();
        insert(&conn, &t, "depth 1").await;
        let sp1 = conn.begin_nested().await.unwrap();
        insert(&conn, &t, "depth 2").await;
        let sp2 = conn.begin_nested().await.unwrap();
        insert(&conn, &t, "depth 3").await;
        let sp3 = conn.begin_nested().await.unwrap();
        insert(&conn, &t, "depth 4, rolled back").await;
        sp3.rollback().await.unwrap();
        sp2.commit().await.unwrap();
        sp1.commit().await.unwrap();
        outer.commit().await.unwrap();
        let vals: Vec<String> = conn
            .execute(format!("SELECT val FROM {t} WHERE val LIKE 'depth%' ORDER BY id"))
            .await
            .unwrap()
            .fetchall()
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String>(0))
            .collect();
        assert_eq!(vals, ["depth 1", "depth 2", "depth 3"]);

        // Double rollback is a no-op; a dropped transaction rolls back; options.
        let tx = conn.begin_nested().await.unwrap();
        insert(&conn, &t, "dropped").await;
        drop(tx);
        assert_eq!(count(&conn, &t).await, 5);
        assert!(!conn.in_transaction());
        let tx = conn
            .begin_with(aiopg::TransactionOptions {
                isolation_level: aiopg::IsolationLevel::Serializable,
                read_only: true,
                deferrable: false,
            })
            .await
            .unwrap();
        let level: Option<String> = conn.scalar("SHOW transaction_isolation").await.unwrap();
        assert_eq!(level.as_deref(), Some("serializable"));
        let err = conn.execute(format!("DELETE FROM {t}")).await.unwrap_err();
        assert_eq!(err.code(), Some(&aiopg::SqlState::READ_ONLY_SQL_TRANSACTION));
        let err = conn.begin_with(aiopg::TransactionOptions::default()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Usage);
        tx.rollback().await.unwrap();
        // close() with an open transaction rolls it back; the transaction's handle is then
        // stale and cannot touch the connection's next user.
        let open = conn.begin().await.unwrap();
        insert(&conn, &t, "never committed").await;
        conn.close().await;
        let again = engine.acquire().await.unwrap();
        assert!(!again.in_transaction());
        assert_eq!(again.scalar::<i64>(format!("SELECT count(*) FROM {t}")).await.unwrap(), Some(5));
        assert_eq!(open.commit().await.unwrap_err().kind(), ErrorKind::Usage);
        assert_eq!(count(&again, &t).await, 5);
        drop_table(&again, &t).await;
    }
}

/// A transaction identifier of this test and runtime.
fn xid(name: &str) -> String {
    format!("{}_{name}", table("xid"))
}

rt_test! {
    async fn two_phase_transactions_prepare_recover_and_finish() {
        let engine = engine(3).await;
        let conn = engine.acquire().await.unwrap();
        let t = table("twophase");
        create(&conn, &t).await;

        // prepare, recover (from another connection), commit_prepared.
        let x1 = xid("commit");
        let mut tx = conn.begin_twophase(Some(&x1)).await.unwrap();
        assert_eq!(tx.xid(), Some(x1.as_str()));
        insert(&conn, &t, "two-phase committed").await;
        tx.prepare().await.unwrap();
        assert!(tx.is_active() && !conn.in_transaction());
        assert_eq!(committed(&engine, &t).await, 0, "prepared is not committed");
        let other = engine.acquire().await.unwrap();
        assert!(other.recover_twophase().await.unwrap().contains(&x1));
        other.commit_prepared(&x1).await.unwrap();
        assert!(!other.recover_twophase().await.unwrap().contains(&x1));
        assert_eq!(committed(&engine, &t).await, 1);
        drop(tx);

        // prepare, rollback_prepared; a generated identifier with a quote and a backslash in
        // a chosen one.
        let mut tx = conn.begin_twophase(None).await.unwrap();
        let generated = tx.xid().unwrap().to_owned();
        insert(&conn, &t, "two-phase rolled back").await;
        tx.prepare().await.unwrap();
        // While prepared, the session is free for other work.
        assert_eq!(conn.scalar::<i32>("SELECT 5").await.unwrap(), Some(5));
        assert!(other.recover_twophase().await.unwrap().contains(&generated));
        other.rollback_prepared(&generated).await.unwrap();
        assert_eq!(committed(&engine, &t).await, 1);
        drop(tx);
        let odd = xid("it's a \\ back'slash");
        let mut tx = conn.begin_twophase(Some(&odd)).await.unwrap();
        insert(&conn, &t, "odd xid").await;
        tx.prepare().await.unwrap();
        assert!(other.recover_twophase().await.unwrap().contains(&odd));
        // The transaction's own commit() is COMMIT PREPARED once prepared.
        tx.commit().await.unwrap();
        assert_eq!(committed(&engine, &t).await, 2);
        assert!(!other.recover_twophase().await.unwrap().contains(&odd));

        // Its own rollback() after prepare is ROLLBACK PREPARED; before prepare, ROLLBACK.
        let mut tx = conn.begin_twophase(Some(&xid("own rollback"))).await.unwrap();
        insert(&conn, &t, "rolled back").await;
        tx.prepare().await.unwrap();
        tx.rollback().await.unwrap();
        let tx = conn.begin_twophase(None).await.unwrap();
        insert(&conn, &t, "never prepared").await;
        tx.rollback().await.unwrap();
        assert_eq!(committed(&engine, &t).await, 2);
        assert!(!conn.in_transaction());

        // A dropped prepared transaction stays prepared for the coordinator to finish.
        let kept = xid("kept");
        let mut tx = conn.begin_twophase(Some(&kept)).await.unwrap();
        insert(&conn, &t, "kept").await;
        tx.prepare().await.unwrap();
        drop(tx);
        assert!(other.recover_twophase().await.unwrap().contains(&kept));
        other.commit_prepared(&kept).await.unwrap();
        assert_eq!(committed(&engine, &t).await, 3);

        // Misuse: prepare twice, prepare of another kind, begin_twophase inside a transaction,
        // bad identifiers, commit of an inactive one.
        let mut tx = conn.begin_twophase(Some(&xid("twice"))).await.unwrap();
        tx.prepare().await.unwrap();
        let err = tx.prepare().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Usage);
        assert!(err.to_string().contains("already prepared"), "{err}");
        tx.rollback().await.unwrap();
        let mut plain = conn.begin().await.unwrap();
        let err = plain.prepare().await.unwrap_err();
        assert!(err.to_string().contains("two-phase"), "{err}");
        let err = conn.begin_twophase(None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Usage);
        assert!(err.to_string().contains("inside a transaction"), "{err}");
        plain.rollback().await.unwrap();
        for bad in [String::new(), "x".repeat(200), "nul\0byte".to_owned()] {
            let err = conn.begin_twophase(Some(&bad)).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
            assert_eq!(conn.commit_prepared(&bad).await.unwrap_err().kind(), ErrorKind::Usage);
        }
        assert!(!conn.in_transaction(), "a refused begin_twophase began nothing");
        let outer = conn.begin().await.unwrap();
        let mut joined_2pc = conn.begin_twophase(Some(&xid("inactive"))).await;
        assert!(joined_2pc.is_err());
        outer.rollback().await.unwrap();
        let mut tx = conn.begin_twophase(Some(&xid("after rollback"))).await.unwrap();
        let inner = conn.begin().await.unwrap();
        inner.rollback().await.unwrap();
        let err = tx.prepare().await.unwrap_err();
        assert!(err.to_string().contains("inactive"), "{err}");
        if let Ok(tx) = joined_2pc.as_mut() {
            tx.prepare().await.unwrap();
        }
        // Unknown identifiers are the server's error; everything is still in step.
        let err = conn.commit_prepared(&xid("never prepared")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Db, "{err}");
        assert!(other.recover_twophase().await.unwrap().iter().all(|x| !x.starts_with(&table("xid"))));
        assert_eq!(committed(&engine, &t).await, 3);
        drop_table(&conn, &t).await;
    }
}

rt_test! {
    async fn mogrify_renders_builder_values_from_their_types() {
        let engine = engine(1).await;
        let conn = engine.acquire().await.unwrap();
        let nasty = "'); DROP TABLE x; -- back\\slash ünï 🦀";
        // Outside a context that types them, the server takes parameters as text: the
        // others are cast (the binder refuses an int4 where the server wants text).
        let cast = |v: Value, ty: &str| Expr::val(v).cast_as(Alias::new(ty));
        let select = Query::select()
            .expr(Expr::val(nasty))
            .expr(cast(7i32.into(), "int4"))
            .expr(cast((-9_000_000_000i64).into(), "int8"))
            .expr(cast(1.5f64.into(), "float8"))
            .expr(cast(true.into(), "bool"))
            .expr(Expr::val(Value::String(None)))
            .expr(cast(vec![0u8, 255, 39].into(), "bytea"))
            .to_owned();
        let err = conn.execute(&Query::select().expr(Expr::val(7i32)).to_owned()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
        let text = conn.mogrify(&select).unwrap();
        assert!(text.contains("7::int4") && text.contains("(-9000000000)::int8"), "{text}");
        assert!(text.contains("NULL::text") && !text.contains('$'), "{text}");
        // Run as one string, it means what the bound statement means.
        let bound = conn.execute(&select).await.unwrap().first().await.unwrap().unwrap();
        let literal = conn.execute(text.as_str()).await.unwrap().first().await.unwrap().unwrap();
        for row in [&bound, &literal] {
            assert_eq!(row.get::<&str>(0), nasty);
            assert_eq!(row.get::<i32>(1), 7);
            assert_eq!(row.get::<i64>(2), -9_000_000_000);
            assert_eq!(row.get::<f64>(3), 1.5);
            assert!(row.get::<bool>(4));
            assert_eq!(row.get::<Option<&str>>(5), None);
            assert_eq!(row.get::<&[u8]>(6), [0u8, 255, 39]);
        }
        // Raw SQL is rendered as the cursor's mogrify does; DDL as it is.
        let p: &[aiopg::Param<'_>] = &[&"it's"];
        assert_eq!(conn.mogrify(("SELECT $1", p)).unwrap(), "SELECT 'it''s'::text");
        let nul = Query::select().expr(Expr::val("a\0b")).to_owned();
        assert_eq!(conn.mogrify(&nul).unwrap_err().kind(), ErrorKind::Encode);
    }
}

rt_test! {
    async fn builder_values_are_checked_against_the_parameter_types() {
        let engine = engine(1).await;
        let conn = engine.acquire().await.unwrap();
        let t = table("typed");
        conn.execute(format!("DROP TABLE IF EXISTS {t}")).await.unwrap();
        conn.execute(format!(
            "CREATE TABLE {t} (i2 int2, i4 int4, i8 int8, n numeric, r real, d float8, s text)"
        ))
        .await
        .unwrap();
        let insert = |col: &str, v: Value| {
            Query::insert()
                .into_table(Alias::new(&t))
                .columns([Alias::new(col)])
                .values_panic([v.into()])
                .to_owned()
        };
        // Text where an integer goes is an error, never four bytes read as a number.
        let err = conn.execute(&insert("i4", "abcd".into())).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
        // Exact widenings are taken; what does not fit is an error naming the type.
        conn.execute(&insert("i8", 5i32.into())).await.unwrap();
        conn.execute(&insert("i2", 7i64.into())).await.unwrap();
        conn.execute(&insert("n", u64::MAX.into())).await.unwrap();
        conn.execute(&insert("n", (-100_000_001i64).into())).await.unwrap();
        conn.execute(&insert("d", 3i32.into())).await.unwrap();
        conn.execute(&insert("r", 1.5f64.into())).await.unwrap();
        conn.execute(&insert("d", 0.25f32.into())).await.unwrap();
        for (col, v) in [("i2", Value::from(70_000i32)), ("r", Value::from(1.1f64))] {
            let err = conn.execute(&insert(col, v)).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
            let chain = format!("{err} {:?}", std::error::Error::source(&err));
            assert!(chain.contains("does not fit"), "{chain}");
        }
        // NULL of any Rust type fits any column.
        conn.execute(&insert("i4", Value::String(None))).await.unwrap();
        let sums: (i64, String, f64) = conn
            .execute(format!(
                "SELECT (coalesce(sum(i8), 0) + coalesce(sum(i2), 0))::int8, \
                 string_agg(n::text, ',' ORDER BY n), coalesce(sum(r), 0) + coalesce(sum(d), 0) \
                 FROM {t}"
            ))
            .await
            .unwrap()
            .first()
            .await
            .unwrap()
            .unwrap()
            .to()
            .unwrap();
        assert_eq!(sums, (12, format!("-100000001,{}", u64::MAX), 4.75));
        conn.execute(format!("DROP TABLE {t}")).await.unwrap();
    }
}

rt_test! {
    async fn rows_index_by_name_and_position() {
        let engine = engine(1).await;
        let conn = engine.acquire().await.unwrap();
        let row = conn
            .execute(
                "SELECT 1 AS n, 'one' AS label, NULL::int4 AS nothing, 2.50::numeric AS price, \
                 '2024-01-31'::date AS day, true AS yes, '\\x00ff'::bytea AS bin, 0.5::float8 AS half",
            )
            .await
            .unwrap()
            .first()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row["n"], 1);
        assert_eq!(row[0], SqlValue::Int(1));
        assert_eq!(row["label"], "one");
        assert!(row["nothing"].is_null());
        assert_eq!(row["price"].to_string(), "2.50");
        assert_eq!(row["day"].to_string(), "2024-01-31");
        assert_eq!(row["yes"], true);
        assert_eq!(row["bin"], SqlValue::Bytes(vec![0, 255]));
        assert_eq!(row["half"], 0.5);
        assert_eq!(row.get::<i32>("n"), 1);
        // aiopg.sa's row.values() and row.items().
        assert_eq!(row.values().len(), 8);
        assert_eq!(row.values()[1], "one");
        let items = row.items();
        assert_eq!(items.len(), 8);
        assert_eq!(items[0], ("n", &SqlValue::Int(1)));
        assert_eq!(items[2].0, "nothing");
        assert!(items[2].1.is_null());
        let err = row.value("missing").unwrap_err();
        assert!(err.to_string().contains("label"), "lists the known columns: {err}");
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| row["missing"].is_null()))
            .unwrap_err();
        let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("price"), "the panic names the known columns: {msg}");
    }
}

/// Committed rows of `t` whose `val` is `v`, seen from `other`.
async fn visible(other: &aiopg::sa::SAConnection, t: &str, v: &str) -> i64 {
    other
        .scalar::<i64>(format!("SELECT count(*) FROM {t} WHERE val = '{v}'"))
        .await
        .unwrap()
        .unwrap()
}

type Boxed<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = aiopg::Result<T>> + Send + 'a>>;

/// One round of [`dropped_transaction_calls_leave_the_connection_idle_and_begin_begins`]:
/// a transaction call dropped after a random number of polls, perhaps with a statement of
/// another caller in flight ahead of it; then what a user would check.
async fn dropped_transaction_round(
    rng: &mut impl Rng,
    c: &aiopg::sa::SAConnection,
    other: &aiopg::sa::SAConnection,
    t: &str,
    xid: &str,
    round: usize,
) -> Result<(), String> {
    let v = format!("round_{round}");
    let neighbour: Option<Join<aiopg::Result<()>>> = rng.random_bool(0.5).then(|| {
        let n = c.connection().clone();
        spawn(async move { n.batch_execute("SELECT pg_sleep(0.001)").await })
    });
    let polls = rng.random_range(1..=6);
    let op = rng.random_range(0..6);
    let what;
    match op {
        0..=2 => {
            let fut: Boxed<'_, aiopg::sa::SATransaction> = match op {
                0 => Box::pin(c.begin()),
                1 => Box::pin(c.begin_with(aiopg::TransactionOptions {
                    isolation_level: aiopg::IsolationLevel::RepeatableRead,
                    ..Default::default()
                })),
                _ => Box::pin(c.begin_twophase(Some(xid))),
            };
            what = format!("begin (kind {op}) dropped after {polls} polls");
            if let Some(res) = poll_then_drop(fut, polls).await {
                let tx = res.map_err(|e| format!("{what}: it failed: {e}"))?;
                insert(c, t, &v).await;
                tx.rollback()
                    .await
                    .map_err(|e| format!("{what}: rollback: {e}"))?;
                if visible(other, t, &v).await != 0 {
                    return Err(format!("{what}: its rolled back work is committed"));
                }
            }
        }
        3 | 4 => {
            let commit = op == 3;
            what = format!(
                "{} dropped after {polls} polls",
                if commit { "commit" } else { "rollback" }
            );
            let tx = c.begin().await.map_err(|e| format!("{what}: begin: {e}"))?;
            insert(c, t, &v).await;
            let fut: Boxed<'_, ()> = if commit {
                Box::pin(tx.commit())
            } else {
                Box::pin(tx.rollback())
            };
            match poll_then_drop(fut, polls).await {
                Some(Ok(())) => {
                    let seen = visible(other, t, &v).await;
                    if seen != i64::from(commit) {
                        return Err(format!(
                            "{what}: it completed, and {seen} rows are committed"
                        ));
                    }
                }
                Some(Err(e)) => return Err(format!("{what}: it failed: {e}")),
                // Dropped: whether a commit ran is unknown to the caller.
                None => {}
            }
        }
        _ => {
            what = format!("prepare dropped after {polls} polls");
            let mut tx = c
                .begin_twophase(Some(xid))
                .await
                .map_err(|e| format!("{what}: begin_twophase: {e}"))?;
            insert(c, t, &v).await;
            let prepared = poll_then_drop(tx.prepare(), polls).await;
            if let Some(Err(e)) = &prepared {
                return Err(format!("{what}: it failed: {e}"));
            }
            // Whatever the drop left, the handle ends it, and tells the truth about it.
            let commit = rng.random_bool(0.5);
            let res = if commit {
                tx.commit().await
            } else {
                tx.rollback().await
            };
            let seen = visible(other, t, &v).await;
            let consistent = match (commit, &res) {
                (true, Ok(())) => seen == 1,
                // Only a prepare that may not have run can leave nothing to commit.
                (true, Err(_)) => seen == 0 && prepared.is_none(),
                (false, Ok(())) => seen == 0,
                (false, Err(_)) => false,
            };
            let end = if commit { "commit" } else { "rollback" };
            if !consistent {
                return Err(format!(
                    "{what}, then {end}: {res:?}, and {seen} rows are committed"
                ));
            }
            let left = other.recover_twophase().await.map_err(|e| e.to_string())?;
            if left.iter().any(|x| x == xid) {
                return Err(format!("{what}, then {end}: {xid} is still prepared"));
            }
        }
    }
    if let Some(n) = neighbour {
        n.await
            .map_err(|e| format!("{what}: the neighbour failed: {e}"))?;
    }
    // The transaction's handle is gone: nothing is open on the connection.
    c.scalar::<i32>("SELECT 1")
        .await
        .map_err(|e| format!("{what}: SELECT 1: {e}"))?;
    if c.in_transaction() {
        return Err(format!(
            "{what}: the connection is left inside a transaction"
        ));
    }
    // And the next begin() begins: its rollback undoes, its commit commits.
    let probe = format!("{v}_probe");
    let tx = c
        .begin()
        .await
        .map_err(|e| format!("{what}: next begin: {e}"))?;
    insert(c, t, &probe).await;
    if !c.in_transaction() {
        return Err(format!("{what}: the next begin() began no transaction"));
    }
    tx.rollback()
        .await
        .map_err(|e| format!("{what}: next rollback: {e}"))?;
    if visible(other, t, &probe).await != 0 {
        return Err(format!("{what}: the next begin()'s rollback undid nothing"));
    }
    let tx = c
        .begin()
        .await
        .map_err(|e| format!("{what}: next begin: {e}"))?;
    insert(c, t, &probe).await;
    tx.commit()
        .await
        .map_err(|e| format!("{what}: next commit: {e}"))?;
    if visible(other, t, &probe).await != 1 {
        return Err(format!(
            "{what}: the next begin()'s commit committed nothing"
        ));
    }
    Ok(())
}

rt_test! {
    async fn dropped_transaction_calls_leave_the_connection_idle_and_begin_begins() {
        let seed = crate::support::seed();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let engine = engine(3).await;
        let c = engine.acquire().await.unwrap();
        let other = engine.acquire().await.unwrap();
        let t = table("dropped_tx");
        create(&c, &t).await;
        let prefix = table("dropped_xid");
        let mut outcome = Ok(());
        for round in 0..120 {
            let xid = format!("{prefix}_{round}");
            if let Err(e) = dropped_transaction_round(&mut rng, &c, &other, &t, &xid, round).await {
                outcome = Err(format!(
                    "seed {seed} (AIOPG_TEST_SEED={seed} replays it), round {round}: {e}"
                ));
                break;
            }
        }
        // Whatever happened, leave no prepared transaction (they hold their locks) and no
        // table behind.
        drop(c);
        for x in other.recover_twophase().await.unwrap() {
            if x.starts_with(&prefix) {
                other.rollback_prepared(&x).await.unwrap();
            }
        }
        drop_table(&other, &t).await;
        if let Err(e) = outcome {
            panic!("{e}");
        }
    }
}
