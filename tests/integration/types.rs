//! A round trip of every type aiopg binds and decodes: built-in ones, the `with-*` integrations,
//! hstore, and `#[derive(ToSql, FromSql)]` enums and composites.
//!
//! Each value is bound in binary as `$1::<type>` and must come back equal, and the server's
//! own text form of what it received (`$1::<type>::text`) must be the expected one: the binary
//! encoding means to the server what the Rust value means.
//!
//! Not covered: `interval` (postgres-types has no Rust type for it), 2-D arrays (postgres-types
//! decodes one dimension only: decoding a 2-D array is checked to fail cleanly).

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aiopg::types::{FromSqlOwned, Kind, ToSql};
use aiopg::{Connection, ErrorKind};
use postgres_types::Json;

use crate::support::{connect, rt_test};

/// `SELECT $1::<ty>, $1::<ty>::text`: the value comes back equal, and its text form is `text`
/// (`None`: SQL NULL).
async fn check_text<T>(conn: &Connection, ty: &str, value: T, text: Option<&str>)
where
    T: ToSql + Sync + FromSqlOwned + PartialEq + Debug,
{
    let sql = format!("SELECT $1::{ty}, $1::{ty}::text");
    let rows = conn
        .query(&sql, &[&value])
        .await
        .unwrap_or_else(|e| panic!("{sql} with {value:?}: {e}"));
    let back = rows[0]
        .try_get::<T>(0)
        .unwrap_or_else(|e| panic!("{sql}: decoding {ty}: {e}"));
    assert_eq!(back, value, "{ty}: round trip");
    assert_eq!(
        rows[0].get::<Option<&str>>(1),
        text,
        "{ty}: the server's text form of {value:?}"
    );
}

/// [`check_text`] for a value that is not NULL.
async fn check<T>(conn: &Connection, ty: &str, value: T, text: &str)
where
    T: ToSql + Sync + FromSqlOwned + PartialEq + Debug,
{
    check_text(conn, ty, value, Some(text)).await
}

rt_test! {
    async fn types_scalars_round_trip() {
        let conn = connect().await;
        check(&conn, "bool", true, "true").await;
        check(&conn, "bool", false, "false").await;
        check(&conn, "\"char\"", b'A' as i8, "A").await;
        check(&conn, "int2", i16::MIN, "-32768").await;
        check(&conn, "int2", i16::MAX, "32767").await;
        check(&conn, "int4", 42i32, "42").await;
        check(&conn, "int4", i32::MIN, "-2147483648").await;
        check(&conn, "int8", i64::MAX, "9223372036854775807").await;
        check(&conn, "int8", i64::MIN, "-9223372036854775808").await;
        check(&conn, "oid", 4_000_000_000u32, "4000000000").await;
        check(&conn, "float4", 1.5f32, "1.5").await;
        check(&conn, "float4", -0.1f32, "-0.1").await;
        check(&conn, "float4", f32::INFINITY, "Infinity").await;
        check(&conn, "float4", f32::NEG_INFINITY, "-Infinity").await;
        check(&conn, "float8", 0.1f64, "0.1").await;
        check(&conn, "float8", -2.5e300f64, "-2.5e+300").await;
        check(&conn, "float8", f64::MIN_POSITIVE, "2.2250738585072014e-308").await;
        check(&conn, "float8", f64::INFINITY, "Infinity").await;
        check(&conn, "float8", f64::NEG_INFINITY, "-Infinity").await;

        // NaN is not equal to itself: checked apart.
        let rows = conn
            .query(
                "SELECT $1::float4, $1::float4::text, $2::float8, $2::float8::text",
                &[&f32::NAN, &f64::NAN],
            )
            .await
            .unwrap();
        assert!(rows[0].get::<f32>(0).is_nan());
        assert_eq!(rows[0].get::<&str>(1), "NaN");
        assert!(rows[0].get::<f64>(2).is_nan());
        assert_eq!(rows[0].get::<&str>(3), "NaN");
    }
}

rt_test! {
    async fn types_strings_and_bytes_round_trip() {
        let conn = connect().await;
        let text = "héllo 'quoted' \"world\" \\ ✓";
        check(&conn, "text", text.to_string(), text).await;
        check(&conn, "text", String::new(), "").await;
        check(&conn, "varchar", "vc".to_string(), "vc").await;
        check(&conn, "varchar(5)", "five!".to_string(), "five!").await;
        check(&conn, "bpchar", "abc".to_string(), "abc").await;
        check(&conn, "name", "pg_class".to_string(), "pg_class").await;
        check(&conn, "bytea", vec![0u8, 1, 0x7f, 0xff], "\\x00017fff").await;
        check(&conn, "bytea", Vec::<u8>::new(), "\\x").await;

        // char(n) pads to n; its text form drops the padding.
        let rows = conn.query("SELECT $1::char(5), $1::char(5)::text", &[&"ab"]).await.unwrap();
        assert_eq!(rows[0].get::<&str>(0), "ab   ");
        assert_eq!(rows[0].get::<&str>(1), "ab");
        // Borrowed decoding: `&str` and `&[u8]` point into the row.
        let rows = conn.query("SELECT $1::text, $2::bytea", &[&"borrowed", &&b"\x01\x02"[..]]).await.unwrap();
        assert_eq!(rows[0].get::<&str>(0), "borrowed");
        assert_eq!(rows[0].get::<&[u8]>(1), b"\x01\x02");
    }
}

rt_test! {
    async fn types_nulls_round_trip() {
        let conn = connect().await;
        check_text(&conn, "int4", None::<i32>, None).await;
        check_text(&conn, "text", None::<String>, None).await;
        check_text(&conn, "bytea", None::<Vec<u8>>, None).await;
        check_text(&conn, "int4[]", None::<Vec<i32>>, None).await;
        check_text(&conn, "jsonb", None::<serde_json::Value>, None).await;
        check(&conn, "int8", Some(7i64), "7").await;
        let err = conn
            .query("SELECT NULL::int4", &[])
            .await
            .unwrap()[0]
            .try_get::<i32>(0)
            .expect_err("NULL into i32");
        assert_eq!(err.kind(), ErrorKind::Decode);
    }
}

rt_test! {
    async fn types_arrays_round_trip() {
        let conn = connect().await;
        check(&conn, "int4[]", vec![1i32, -2, 3], "{1,-2,3}").await;
        check(&conn, "int4[]", Vec::<i32>::new(), "{}").await;
        check(&conn, "int8[]", vec![Some(1i64), None, Some(i64::MAX)], "{1,NULL,9223372036854775807}").await;
        check(
            &conn,
            "text[]",
            vec![
                Some("a".to_string()),
                None,
                Some("b c".to_string()),
                Some("NULL".to_string()),
                Some(String::new()),
            ],
            r#"{a,NULL,"b c","NULL",""}"#,
        )
        .await;
        check(&conn, "bool[]", vec![true, false], "{t,f}").await;
        check(&conn, "float8[]", vec![0.5f64, f64::INFINITY], "{0.5,Infinity}").await;
        check(&conn, "bytea[]", vec![vec![0u8, 255], vec![]], r#"{"\\x00ff","\\x"}"#).await;

        // postgres-types decodes one dimension: a 2-D array is a decode error, not a panic.
        let rows = conn.query("SELECT '{{1,2},{3,4}}'::int4[]", &[]).await.unwrap();
        let err = rows[0].try_get::<Vec<i32>>(0).expect_err("2-D array into Vec<i32>");
        assert_eq!(err.kind(), ErrorKind::Decode);
        // A 1-D array with a lower bound other than 1 decodes (the bound is dropped).
        let rows = conn.query("SELECT '[0:2]={7,8,9}'::int4[]", &[]).await.unwrap();
        assert_eq!(rows[0].get::<Vec<i32>>(0), vec![7, 8, 9]);
    }
}

rt_test! {
    async fn types_json_and_jsonb_round_trip() {
        let conn = connect().await;
        let value = serde_json::json!({
            "a": [1, 2.5, null, true],
            "b": "x \"quoted\" ✓",
            "nested": {"empty": {}, "list": []},
        });
        for ty in ["json", "jsonb"] {
            let sql = format!("SELECT $1::{ty}, $1::{ty}::text");
            let rows = conn.query(&sql, &[&value]).await.unwrap();
            assert_eq!(rows[0].get::<serde_json::Value>(0), value, "{ty}");
            let text: serde_json::Value = serde_json::from_str(rows[0].get::<&str>(1)).unwrap();
            assert_eq!(text, value, "{ty}: the server's text form");
        }
        // A scalar document, and postgres-types' `Json<T>` for any serde type.
        check(&conn, "jsonb", serde_json::json!("just a string"), "\"just a string\"").await;
        check(&conn, "jsonb", Json(vec![1i64, 2, 3]), "[1, 2, 3]").await;
        let rows = conn
            .query("SELECT $1::jsonb ->> 'k'", &[&serde_json::json!({"k": "v"})])
            .await
            .unwrap();
        assert_eq!(rows[0].get::<&str>(0), "v");
    }
}

rt_test! {
    async fn types_uuid_round_trip() {
        let conn = connect().await;
        let id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
        check(&conn, "uuid", id, "01234567-89ab-cdef-fedc-ba9876543210").await;
        check(&conn, "uuid", uuid::Uuid::nil(), "00000000-0000-0000-0000-000000000000").await;
        check(&conn, "uuid[]", vec![id], "{01234567-89ab-cdef-fedc-ba9876543210}").await;
    }
}

rt_test! {
    async fn types_chrono_round_trip() {
        use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
        let conn = connect().await;
        conn.batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'").await.unwrap();

        let date = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
        check(&conn, "date", date, "2024-02-29").await;
        check(&conn, "date", NaiveDate::from_ymd_opt(1970, 1, 1).unwrap(), "1970-01-01").await;
        // Before PostgreSQL's epoch (2000-01-01) and before the common era.
        check(&conn, "date", NaiveDate::from_ymd_opt(1, 1, 1).unwrap(), "0001-01-01").await;
        check(&conn, "date", NaiveDate::from_ymd_opt(-43, 3, 15).unwrap(), "0044-03-15 BC").await;

        let time = NaiveTime::from_hms_micro_opt(13, 14, 15, 123_456).unwrap();
        check(&conn, "time", time, "13:14:15.123456").await;
        check(&conn, "time", NaiveTime::MIN, "00:00:00").await;

        let ts = date.and_time(time);
        check(&conn, "timestamp", ts, "2024-02-29 13:14:15.123456").await;
        let old = NaiveDate::from_ymd_opt(1900, 12, 31).unwrap().and_hms_opt(23, 59, 59).unwrap();
        check(&conn, "timestamp", old, "1900-12-31 23:59:59").await;

        let tstz: DateTime<Utc> = Utc.from_utc_datetime(&ts);
        check(&conn, "timestamptz", tstz, "2024-02-29 13:14:15.123456+00").await;
        check(&conn, "timestamptz", DateTime::<Utc>::UNIX_EPOCH, "1970-01-01 00:00:00+00").await;
        // An instant bound with an offset is the same instant.
        let paris = chrono::FixedOffset::east_opt(3600).unwrap().from_local_datetime(&ts).unwrap();
        let rows = conn.query("SELECT $1::timestamptz::text", &[&paris]).await.unwrap();
        assert_eq!(rows[0].get::<&str>(0), "2024-02-29 12:14:15.123456+00");
        check(&conn, "timestamptz[]", vec![tstz], "{\"2024-02-29 13:14:15.123456+00\"}").await;

        // `SystemTime` needs no feature.
        let st = UNIX_EPOCH + Duration::from_micros(1_709_212_455_123_456);
        check(&conn, "timestamptz", st, "2024-02-29 13:14:15.123456+00").await;
        let rows = conn.query("SELECT $1::timestamp", &[&SystemTime::UNIX_EPOCH]).await.unwrap();
        assert_eq!(rows[0].get::<SystemTime>(0), UNIX_EPOCH);
        // interval: postgres-types has no Rust type for it (not covered).
    }
}

rt_test! {
    async fn types_time_round_trip() {
        use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};
        let conn = connect().await;
        conn.batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'").await.unwrap();

        let date = Date::from_calendar_date(2024, Month::February, 29).unwrap();
        check(&conn, "date", date, "2024-02-29").await;
        check(&conn, "date", Date::from_calendar_date(1, Month::January, 1).unwrap(), "0001-01-01").await;
        let time = Time::from_hms_micro(13, 14, 15, 123_456).unwrap();
        check(&conn, "time", time, "13:14:15.123456").await;
        check(&conn, "time", Time::MIDNIGHT, "00:00:00").await;
        let ts = PrimitiveDateTime::new(date, time);
        check(&conn, "timestamp", ts, "2024-02-29 13:14:15.123456").await;
        let old = Date::from_calendar_date(1900, Month::December, 31).unwrap().midnight();
        check(&conn, "timestamp", old, "1900-12-31 00:00:00").await;
        check(&conn, "timestamptz", ts.assume_utc(), "2024-02-29 13:14:15.123456+00").await;
        check(&conn, "timestamptz", OffsetDateTime::UNIX_EPOCH, "1970-01-01 00:00:00+00").await;
        let rows = conn
            .query(
                "SELECT $1::timestamptz::text",
                &[&ts.assume_offset(time::UtcOffset::from_hms(-5, 0, 0).unwrap())],
            )
            .await
            .unwrap();
        assert_eq!(rows[0].get::<&str>(0), "2024-02-29 18:14:15.123456+00");
    }
}

rt_test! {
    async fn types_jiff_round_trip() {
        use jiff::civil::{date, time, Date, DateTime, Time};
        use jiff::Timestamp;
        let conn = connect().await;
        conn.batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'").await.unwrap();

        let d = date(2024, 2, 29);
        check(&conn, "date", d, "2024-02-29").await;
        check(&conn, "date", date(1, 1, 1), "0001-01-01").await;
        check(&conn, "date", Date::constant(1999, 12, 31), "1999-12-31").await;
        let t = time(13, 14, 15, 123_456_000);
        check(&conn, "time", t, "13:14:15.123456").await;
        check(&conn, "time", Time::midnight(), "00:00:00").await;
        let dt: DateTime = d.to_datetime(t);
        check(&conn, "timestamp", dt, "2024-02-29 13:14:15.123456").await;
        check(&conn, "timestamp", date(1900, 12, 31).at(23, 59, 59, 0), "1900-12-31 23:59:59").await;
        let ts = Timestamp::from_microsecond(1_709_212_455_123_456).unwrap();
        check(&conn, "timestamptz", ts, "2024-02-29 13:14:15.123456+00").await;
        check(&conn, "timestamptz", Timestamp::UNIX_EPOCH, "1970-01-01 00:00:00+00").await;
        check(&conn, "timestamptz[]", vec![ts], "{\"2024-02-29 13:14:15.123456+00\"}").await;
        // A value computed by the server decodes too.
        let rows = conn.query("SELECT '2001-02-03 04:05:06.5+02'::timestamptz", &[]).await.unwrap();
        assert_eq!(rows[0].get::<Timestamp>(0), Timestamp::from_millisecond(981_165_906_500).unwrap());
    }
}

rt_test! {
    async fn types_newer_crate_versions_round_trip() {
        let conn = connect().await;
        // bit-vec 0.8 (next to 0.6, which `types_bit_varying_round_trip` covers).
        let bits = "110010101".chars().map(|c| c == '1').collect::<bit_vec_08::BitVec>();
        check(&conn, "varbit", bits, "110010101").await;
        check(&conn, "varbit", bit_vec_08::BitVec::new(), "").await;
        // cidr 0.3 (next to 0.2).
        check(&conn, "inet", cidr_03::IpInet::from_str("10.1.2.3/8").unwrap(), "10.1.2.3/8").await;
        check(&conn, "cidr", cidr_03::IpCidr::from_str("2001:db8::/32").unwrap(), "2001:db8::/32").await;
        // smol_str 0.1: text and varchar.
        let short = smol_str::SmolStr::new("héllo");
        check(&conn, "text", short.clone(), "héllo").await;
        check(&conn, "varchar", smol_str::SmolStr::new("x".repeat(100)), &"x".repeat(100)).await;
        check(&conn, "text[]", vec![short], "{héllo}").await;
    }
}

rt_test! {
    async fn types_fixed_length_arrays_round_trip() {
        let conn = connect().await;
        check(&conn, "int4[]", [1i32, -2, 3], "{1,-2,3}").await;
        check(&conn, "text[]", [Some("a".to_string()), None], "{a,NULL}").await;
        check(&conn, "int8[]", [0i64; 0], "{}").await;
        // A length other than N is a decode error, not a panic or a truncation.
        let rows = conn.query("SELECT '{1,2,3,4}'::int4[]", &[]).await.unwrap();
        let err = rows[0].try_get::<[i32; 3]>(0).expect_err("4 elements into [i32; 3]");
        assert_eq!(err.kind(), ErrorKind::Decode);
        let err = rows[0].try_get::<[i32; 5]>(0).expect_err("4 elements into [i32; 5]");
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert_eq!(rows[0].get::<[i32; 4]>(0), [1, 2, 3, 4]);
    }
}

rt_test! {
    async fn types_numeric_rust_decimal_round_trip() {
        use rust_decimal::Decimal;
        let conn = connect().await;
        let dec = |s: &str| Decimal::from_str(s).unwrap();
        for text in [
            "0",
            "1",
            "123.45",
            "-123.45",
            "1.50",
            "10000",
            "0.0001",
            "-1234567890.0987654321",
            "0.0000000000000000000000000001",
            "-0.0000000000000000000000000001",
            "79228162514264337593543950335",
            "-79228162514264337593543950335",
            "7.9228162514264337593543950335",
        ] {
            check(&conn, "numeric", dec(text), text).await;
        }
        check(&conn, "numeric", Decimal::MAX, "79228162514264337593543950335").await;
        // A typmod rounds on the server: what comes back is the rounded value.
        let rows = conn
            .query("SELECT $1::numeric(10,2), $1::numeric(10,2)::text", &[&dec("3.14159")])
            .await
            .unwrap();
        assert_eq!(rows[0].get::<Decimal>(0), dec("3.14"));
        assert_eq!(rows[0].get::<&str>(1), "3.14");
        check(&conn, "numeric[]", vec![dec("1.1"), dec("-2")], "{1.1,-2}").await;
        // A value computed by the server, with a scale rust_decimal keeps.
        let rows = conn.query("SELECT 1::numeric / 3", &[]).await.unwrap();
        assert_eq!(rows[0].get::<Decimal>(0), dec("0.33333333333333333333"));
    }
}

rt_test! {
    async fn types_network_round_trip() {
        let conn = connect().await;
        // `inet::text` always writes the netmask (the output function omits a full one).
        check(&conn, "inet", IpAddr::from([192, 168, 0, 1]), "192.168.0.1/32").await;
        check(&conn, "inet", IpAddr::from_str("::1").unwrap(), "::1/128").await;
        let v6 = IpAddr::from_str("2001:db8::8a2e:370:7334").unwrap();
        check(&conn, "inet", v6, "2001:db8::8a2e:370:7334/128").await;
        check(&conn, "inet[]", vec![IpAddr::from([10, 0, 0, 1])], "{10.0.0.1}").await;

        // cidr 0.2: an address with its prefix (inet) and a network (cidr).
        check(&conn, "inet", cidr::IpInet::from_str("10.1.2.3/8").unwrap(), "10.1.2.3/8").await;
        check(&conn, "inet", cidr::IpInet::from_str("2001:db8::1/64").unwrap(), "2001:db8::1/64").await;
        check(&conn, "cidr", cidr::IpCidr::from_str("10.0.0.0/8").unwrap(), "10.0.0.0/8").await;
        check(&conn, "cidr", cidr::IpCidr::from_str("192.168.1.7/32").unwrap(), "192.168.1.7/32").await;
        check(&conn, "cidr", cidr::IpCidr::from_str("2001:db8::/32").unwrap(), "2001:db8::/32").await;

        // eui48 1: macaddr.
        let mac = eui48::MacAddress::new([0x08, 0x00, 0x2b, 0x01, 0x02, 0x03]);
        check(&conn, "macaddr", mac, "08:00:2b:01:02:03").await;
        check(&conn, "macaddr", eui48::MacAddress::new([0xff; 6]), "ff:ff:ff:ff:ff:ff").await;
    }
}

rt_test! {
    async fn types_bit_varying_round_trip() {
        use bit_vec::BitVec;
        let conn = connect().await;
        let bits = |s: &str| s.chars().map(|c| c == '1').collect::<BitVec>();
        check(&conn, "varbit", bits("1011"), "1011").await;
        check(&conn, "varbit", bits("1"), "1").await;
        check(&conn, "varbit", BitVec::new(), "").await;
        // Not a multiple of 8, and more than one byte.
        check(&conn, "varbit", bits("110010101"), "110010101").await;
        check(&conn, "bit(4)", bits("0110"), "0110").await;
    }
}

rt_test! {
    async fn types_geometry_round_trip() {
        use geo_types::{coord, LineString, Point, Rect};
        let conn = connect().await;
        check(&conn, "point", Point::new(1.5, -2.0), "(1.5,-2)").await;
        // The server keeps a box as (upper right),(lower left).
        let rect = Rect::new(coord! { x: 0.0, y: 3.0 }, coord! { x: 2.0, y: -1.0 });
        check(&conn, "box", rect, "(2,3),(0,-1)").await;
        // A LineString is sent as an open path.
        let path = LineString::from(vec![(0.0, 0.0), (1.0, 1.0), (2.5, 0.0)]);
        check(&conn, "path", path, "[(0,0),(1,1),(2.5,0)]").await;
    }
}

rt_test! {
    async fn types_hstore_round_trip() {
        let conn = connect().await;
        // hstore is a contrib extension (Debian ships it with the server); its OID differs per
        // database, so the connection must look the type up to bind and decode it.
        conn.batch_execute("CREATE EXTENSION IF NOT EXISTS hstore").await.unwrap();

        let one: HashMap<String, Option<String>> = HashMap::from([("a".to_string(), Some("1".to_string()))]);
        check(&conn, "hstore", one, r#""a"=>"1""#).await;
        check(&conn, "hstore", HashMap::<String, Option<String>>::new(), "").await;

        let map: HashMap<String, Option<String>> = HashMap::from([
            ("a".to_string(), Some("1".to_string())),
            ("null".to_string(), None),
            ("key with space".to_string(), Some("x\"y\\z => ✓".to_string())),
            (String::new(), Some(String::new())),
        ]);
        let rows = conn
            .query(
                r#"SELECT $1::hstore, $1::hstore =
                   '"a"=>"1", "null"=>NULL, "key with space"=>"x\"y\\z => ✓", ""=>""'::hstore"#,
                &[&map],
            )
            .await
            .unwrap();
        assert_eq!(rows[0].get::<HashMap<String, Option<String>>>(0), map);
        assert!(rows[0].get::<bool>(1), "the server's hstore equals the one written in SQL");
    }
}

/// The schema holding the test's own types: one per backend, dropped at the end. (The type's
/// name, which `#[postgres(name)]` must match, stays the same; the schema makes it unique.)
async fn type_schema(conn: &Connection, test: &str) -> String {
    let schema = format!("aiopg_{test}_{}", conn.backend_pid());
    conn.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    ))
    .await
    .unwrap();
    schema
}

#[derive(Debug, Clone, Copy, PartialEq, aiopg::types::ToSql, aiopg::types::FromSql)]
#[postgres(name = "mood")]
enum Mood {
    #[postgres(name = "sad")]
    Sad,
    #[postgres(name = "ok")]
    Ok,
    #[postgres(name = "very happy")]
    VeryHappy,
}

rt_test! {
    async fn enum_round_trip() {
        let conn = connect().await;
        let schema = type_schema(&conn, "enum").await;
        conn.batch_execute(&format!("CREATE TYPE {schema}.mood AS ENUM ('sad', 'ok', 'very happy')"))
            .await
            .unwrap();
        let ty = format!("{schema}.mood");
        for (mood, text) in [(Mood::Sad, "sad"), (Mood::Ok, "ok"), (Mood::VeryHappy, "very happy")] {
            check(&conn, &ty, mood, text).await;
        }
        check(&conn, &format!("{ty}[]"), vec![Mood::VeryHappy, Mood::Sad], r#"{"very happy",sad}"#).await;
        check_text(&conn, &ty, None::<Mood>, None).await;

        // The column's type is the resolved enum, with its name, schema and labels.
        let rows = conn.query(&format!("SELECT 'ok'::{ty}"), &[]).await.unwrap();
        let col = rows[0].columns()[0].type_();
        assert_eq!((col.name(), col.schema()), ("mood", schema.as_str()));
        assert_eq!(col.kind(), &Kind::Enum(vec!["sad".into(), "ok".into(), "very happy".into()]));
        assert_eq!(rows[0].get::<Mood>(0), Mood::Ok);
        // An enum of another name, even with the same labels, is not `Mood`.
        conn.batch_execute(&format!("CREATE TYPE {schema}.feeling AS ENUM ('sad', 'ok', 'very happy')"))
            .await
            .unwrap();
        let rows = conn.query(&format!("SELECT 'ok'::{schema}.feeling"), &[]).await.unwrap();
        let err = rows[0].try_get::<Mood>(0).expect_err("feeling is not mood");
        assert_eq!(err.kind(), ErrorKind::Decode);
        // Binding `Mood` where the server expects another type is an encode error, sent nowhere.
        let err = conn
            .query(&format!("SELECT $1::{schema}.feeling"), &[&Mood::Ok])
            .await
            .expect_err("Mood bound as feeling");
        assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
        assert_eq!(conn.query("SELECT 1", &[]).await.unwrap()[0].get::<i32>(0), 1);

        conn.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    }
}

#[derive(Debug, Clone, PartialEq, aiopg::types::ToSql, aiopg::types::FromSql)]
#[postgres(name = "inventory_item")]
struct InventoryItem {
    name: String,
    supplier_id: i32,
    price: Option<f64>,
    tags: Vec<String>,
    mood: Mood,
}

rt_test! {
    async fn composite_round_trip() {
        let conn = connect().await;
        let schema = type_schema(&conn, "composite").await;
        conn.batch_execute(&format!(
            "CREATE TYPE {schema}.mood AS ENUM ('sad', 'ok', 'very happy');
             CREATE TYPE {schema}.inventory_item AS (
                 name text, supplier_id int4, price float8, tags text[], mood {schema}.mood)"
        ))
        .await
        .unwrap();
        let ty = format!("{schema}.inventory_item");

        let item = InventoryItem {
            name: "fuzzy dice, \"red\"".into(),
            supplier_id: 42,
            price: Some(1.99),
            tags: vec!["car".into(), "gift".into()],
            mood: Mood::VeryHappy,
        };
        check(&conn, &ty, item.clone(), r#"("fuzzy dice, ""red""",42,1.99,"{car,gift}","very happy")"#).await;
        let bare = InventoryItem {
            name: String::new(),
            supplier_id: -1,
            price: None,
            tags: vec![],
            mood: Mood::Sad,
        };
        check(&conn, &ty, bare.clone(), r#"("",-1,,{},sad)"#).await;
        let array_text = concat!(
            r#"{"(\"fuzzy dice, \"\"red\"\"\",42,1.99,\"{car,gift}\",\"very happy\")","#,
            r#""(\"\",-1,,{},sad)"}"#,
        );
        check(&conn, &format!("{ty}[]"), vec![item.clone(), bare], array_text).await;

        // Built by the server, read field by field.
        let rows = conn
            .query(&format!("SELECT ROW('x', 7, NULL, ARRAY['t'], 'ok')::{ty}"), &[])
            .await
            .unwrap();
        let col = rows[0].columns()[0].type_();
        assert_eq!(col.name(), "inventory_item");
        match col.kind() {
            Kind::Composite(fields) => {
                let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
                assert_eq!(names, ["name", "supplier_id", "price", "tags", "mood"]);
                assert_eq!(fields[1].type_(), &aiopg::types::Type::INT4);
                assert_eq!(fields[4].type_().name(), "mood");
            }
            other => panic!("inventory_item resolved as {other:?}, not a composite"),
        }
        assert_eq!(
            rows[0].get::<InventoryItem>(0),
            InventoryItem {
                name: "x".into(),
                supplier_id: 7,
                price: None,
                tags: vec!["t".into()],
                mood: Mood::Ok,
            }
        );

        conn.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    }
}
