//! `aiopg::sa`: the engine, sea-query statements bound as parameters, and result proxies,
//! against the real server, on every runtime.

use aiopg::sa::sea_query::{Alias, ColumnDef, Expr, ExprTrait, Order, Query, Table};
use aiopg::sa::{Engine, ResultProxy};
use aiopg::{ErrorKind, Pool};
use futures_util::TryStreamExt;

use crate::support::{dsn, options, rt_test, runtime};

async fn engine(max: usize) -> Engine {
    let pool = Pool::builder(options(&dsn()))
        .runtime(runtime())
        .min_size(0)
        .max_size(max)
        .build()
        .await
        .unwrap();
    Engine::from_pool(pool)
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
        let a = engine.acquire().await.unwrap();
        let b = engine.acquire().await.unwrap();
        assert_eq!(engine.size(), 2);
        assert_eq!(engine.free_size(), 0);
        assert_eq!(a.scalar::<i32>("SELECT 1").await.unwrap(), Some(1));
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
        // close() with an open transaction rolls it back.
        let _open = conn.begin().await.unwrap();
        insert(&conn, &t, "never committed").await;
        drop(_open);
        let again = engine.acquire().await.unwrap();
        assert_eq!(again.scalar::<i64>(format!("SELECT count(*) FROM {t}")).await.unwrap(), Some(5));
        drop_table(&again, &t).await;
        conn.close().await;
    }
}
