//! Simple and extended queries, types, server errors, session state.

use aiopg::{ErrorKind, ErrorPosition, SimpleQueryMessage, SqlState, TransactionStatus};

use crate::support::{connect, options, rt_test};

rt_test! {
    async fn extended_query_binds_and_decodes_scalar_types() {
        let conn = connect().await;
        let rows = conn
            .query(
                "SELECT $1::int2, $2::int4, $3::int8, $4::float4, $5::float8, $6::bool, $7::text, $8::varchar, $9::bytea",
                &[&-7i16, &123_456i32, &-9_000_000_000i64, &1.5f32, &-2.25e300f64, &true, &"héllo 'q'", &"vc", &&b"\x00\x01\xff"[..]],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.get::<i16>(0), -7);
        assert_eq!(r.get::<i32>(1), 123_456);
        assert_eq!(r.get::<i64>(2), -9_000_000_000);
        assert_eq!(r.get::<f32>(3), 1.5);
        assert_eq!(r.get::<f64>(4), -2.25e300);
        assert!(r.get::<bool>(5));
        assert_eq!(r.get::<&str>(6), "héllo 'q'");
        assert_eq!(r.get::<String>(7), "vc");
        assert_eq!(r.get::<Vec<u8>>(8), vec![0u8, 1, 255]);
        assert_eq!(r.columns()[1].type_(), &aiopg::types::Type::INT4);
    }
}

rt_test! {
    async fn nulls_round_trip_as_none() {
        let conn = connect().await;
        let none: Option<i32> = None;
        let rows = conn
            .query("SELECT $1::int4, NULL::text, $2::text", &[&none, &Some("x")])
            .await
            .unwrap();
        assert_eq!(rows[0].get::<Option<i32>>(0), None);
        assert_eq!(rows[0].get::<Option<String>>(1), None);
        assert_eq!(rows[0].get::<Option<&str>>(2), Some("x"));
        let err = rows[0].try_get::<i32>(0).expect_err("NULL into i32");
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert!(err.to_string().contains("NULL"), "{err}");
    }
}

rt_test! {
    async fn decode_errors_name_column_and_types() {
        let conn = connect().await;
        let rows = conn.query("SELECT 1::int4 AS answer", &[]).await.unwrap();
        let err = rows[0].try_get::<String>("answer").expect_err("int4 is not a String");
        let text = err.to_string();
        assert!(text.contains("answer") && text.contains("int4") && text.contains("String"), "{text}");
        let err = rows[0].try_get::<i32>("missing").expect_err("no such column");
        assert!(err.to_string().contains("answer"), "lists the known columns: {err}");
        assert_eq!(rows[0].get::<i32>("ANSWER"), 1);
    }
}

rt_test! {
    async fn wrong_parameter_type_or_count_is_an_error_and_the_connection_goes_on() {
        let conn = connect().await;
        let err = conn.query("SELECT $1::int4", &[&"text"]).await.expect_err("text for int4");
        assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
        assert!(err.to_string().contains("$1"), "{err}");
        let err = conn.query("SELECT $1::int4, $2::int4", &[&1i32]).await.expect_err("one missing");
        assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
        let rows = conn.query("SELECT $1::int4", &[&5i32]).await.unwrap();
        assert_eq!(rows[0].get::<i32>(0), 5);
    }
}

rt_test! {
    async fn simple_query_runs_several_statements() {
        let conn = connect().await;
        let msgs = conn
            .simple_query(
                "CREATE TEMP TABLE t (a int, b text); INSERT INTO t VALUES (1, 'x'), (2, NULL); SELECT a, b FROM t ORDER BY a",
            )
            .await
            .unwrap();
        let tags: Vec<&str> = msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::CommandComplete { tag, .. } => Some(tag.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(tags, ["CREATE TABLE", "INSERT 0 2", "SELECT 2"]);
        let rows: Vec<(Option<String>, Option<String>)> = msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some((r.get(0).map(String::from), r.get("b").map(String::from))),
                _ => None,
            })
            .collect();
        assert_eq!(rows, [(Some("1".into()), Some("x".into())), (Some("2".into()), None)]);
        assert_eq!(conn.execute("UPDATE t SET b = 'y'", &[]).await.unwrap(), 2);
        assert_eq!(conn.execute("DELETE FROM t WHERE a = $1", &[&1i32]).await.unwrap(), 1);
    }
}

rt_test! {
    async fn sql_error_carries_sqlstate_message_and_position_and_the_connection_recovers() {
        let conn = connect().await;
        let err = conn.query("SELECT * FROM aiopg_no_such_table", &[]).await.expect_err("no table");
        assert_eq!(err.kind(), ErrorKind::Db);
        assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
        let db = err.as_db_error().unwrap();
        assert!(db.message().contains("aiopg_no_such_table"), "{}", db.message());
        assert_eq!(db.position(), Some(&ErrorPosition::Original(15)));
        assert_eq!(db.severity(), "ERROR");

        let err = conn.query("SELECT 1/$1::int4", &[&0i32]).await.expect_err("division by zero");
        assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));

        let err = conn.simple_query("SELECT 1; SELEKT 2").await.expect_err("syntax error");
        assert_eq!(err.code(), Some(&SqlState::SYNTAX_ERROR));

        let rows = conn.query("SELECT 42::int4", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i32>(0), 42);
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
    }
}

rt_test! {
    async fn transaction_status_follows_plain_sql() {
        let conn = connect().await;
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
        conn.batch_execute("BEGIN").await.unwrap();
        assert_eq!(conn.transaction_status(), TransactionStatus::InTransaction);
        assert!(conn.query("SELECT 1/0", &[]).await.is_err());
        assert_eq!(conn.transaction_status(), TransactionStatus::InError);
        let err = conn.query("SELECT 1", &[]).await.expect_err("failed transaction");
        assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
        conn.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
    }
}

rt_test! {
    async fn parameter_status_follows_set() {
        let conn = connect().await;
        conn.batch_execute("SET application_name = 'aiopg-test'").await.unwrap();
        assert_eq!(conn.parameter_status("application_name").as_deref(), Some("aiopg-test"));
    }
}

rt_test! {
    async fn notices_are_collected_not_mixed_with_results() {
        let conn = connect().await;
        let mut notices = conn.notices();
        conn.batch_execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$").await.unwrap();
        let notice = notices.next_buffered().expect("a notice").unwrap();
        assert_eq!(notice.message(), "hello 42");
        assert!(notices.next_buffered().is_none());
    }
}

rt_test! {
    async fn statement_cache_size_zero_creates_no_named_statements() {
        let conn = options(&crate::support::dsn()).statement_cache_size(0).connect().await.unwrap();
        for i in 0..3i32 {
            let rows = conn.query("SELECT $1::int4 + 1", &[&i]).await.unwrap();
            assert_eq!(rows[0].get::<i32>(0), i + 1);
        }
        let rows = conn.query("SELECT count(*) FROM pg_prepared_statements", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i64>(0), 0);
        assert_eq!(conn.cached_statements(), 0);
    }
}

rt_test! {
    async fn statement_cache_reuses_and_evicts() {
        let conn = options(&crate::support::dsn()).statement_cache_size(2).connect().await.unwrap();
        for sql in ["SELECT 1", "SELECT 2", "SELECT 1", "SELECT 3", "SELECT 4"] {
            conn.query(sql, &[]).await.unwrap();
        }
        assert_eq!(conn.cached_statements(), 2);
        // Evicted statements are closed on the server with the next request.
        conn.query("SELECT 4", &[]).await.unwrap();
        let rows = conn
            .query("SELECT count(*) FROM pg_prepared_statements", &[])
            .await
            .unwrap();
        // Two cached plus the one just prepared for this count query (which evicted another,
        // closed with the next request).
        assert!(rows[0].get::<i64>(0) <= 3, "statements leak: {}", rows[0].get::<i64>(0));
    }
}

rt_test! {
    async fn copy_from_stdin_through_query_is_refused_cleanly() {
        let conn = connect().await;
        conn.batch_execute("CREATE TEMP TABLE c (a int)").await.unwrap();
        let err = conn.execute("COPY c FROM STDIN", &[]).await.expect_err("no COPY API here");
        assert!(err.to_string().contains("COPY"), "{err}");
        let err = conn.simple_query("COPY c FROM STDIN").await.expect_err("no COPY API here");
        assert!(err.to_string().contains("COPY"), "{err}");
        let rows = conn.query("SELECT 7::int4", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i32>(0), 7);
    }
}

rt_test! {
    async fn unknown_types_are_looked_up_in_the_catalog() {
        use aiopg::types::Kind;
        let conn = connect().await;
        let pid = conn.backend_pid();
        let mood = format!("aiopg_mood_{pid}");
        let pair = format!("aiopg_pair_{pid}");
        conn.batch_execute(&format!(
            "CREATE TYPE {mood} AS ENUM ('sad', 'ok', 'happy'); \
             CREATE TYPE {pair} AS (m {mood}, n int4)"
        ))
        .await
        .unwrap();
        let rows = conn
            .query(&format!("SELECT 'ok'::{mood}, ARRAY['sad'::{mood}], ROW('happy', 3)::{pair}"), &[])
            .await
            .unwrap();
        let cols = rows[0].columns();
        assert_eq!(cols[0].type_().name(), mood);
        assert_eq!(cols[0].type_().kind(), &Kind::Enum(vec!["sad".into(), "ok".into(), "happy".into()]));
        match cols[1].type_().kind() {
            Kind::Array(elem) => assert_eq!(elem.name(), mood),
            other => panic!("expected an array, got {other:?}"),
        }
        match cols[2].type_().kind() {
            Kind::Composite(fields) => {
                let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
                assert_eq!(names, ["m", "n"]);
                assert_eq!(fields[0].type_().name(), mood);
                assert_eq!(fields[1].type_(), &aiopg::types::Type::INT4);
            }
            other => panic!("expected a composite, got {other:?}"),
        }
        // An enum parameter is described with its real type too.
        let stmt = conn.prepare(&format!("SELECT $1::{mood}")).await.unwrap();
        assert_eq!(stmt.params()[0].name(), mood);
        conn.batch_execute(&format!("DROP TYPE {pair}; DROP TYPE {mood}")).await.unwrap();
    }
}

rt_test! {
    async fn last_usage_moves_with_every_request_whatever_its_outcome() {
        let before_connect = std::time::Instant::now();
        let conn = connect().await;
        let opened = conn.last_usage();
        assert!(opened >= before_connect, "set when the connection opens");
        // Reading it is not a use.
        assert_eq!(conn.last_usage(), opened);

        let before = std::time::Instant::now();
        conn.query("SELECT 1", &[]).await.unwrap();
        let after_query = conn.last_usage();
        assert!(after_query >= before && after_query > opened, "a query is a use");

        let before = std::time::Instant::now();
        conn.simple_query("SELECT 1 / 0").await.unwrap_err();
        let after_error = conn.last_usage();
        assert!(after_error >= before, "a failed statement is a use too");

        let before = std::time::Instant::now();
        let mut tx = conn.begin().await.unwrap();
        tx.commit().await.unwrap();
        assert!(conn.last_usage() >= before, "a transaction's BEGIN and COMMIT are uses");
        assert!(conn.last_usage() <= std::time::Instant::now());
        conn.close().await;
    }
}
