//! `FromRow`: tuples by position, `#[derive(FromRow)]` structs by column name, and the errors
//! both give.

use aiopg::{ErrorKind, FromRow, Row};

use crate::support::{connect, rt_test};

/// The single row `sql` returns.
async fn one_row(sql: &str) -> Row {
    let conn = connect().await;
    let mut rows = conn.query(sql, &[]).await.expect("query");
    assert_eq!(rows.len(), 1, "{sql}");
    rows.pop().expect("one row")
}

const USER: &str = "SELECT 7::int4 AS id, 'ann'::text AS full_name, NULL::text AS note";

rt_test! {
    async fn from_row_tuples_read_by_position() {
        let row = one_row(USER).await;
        let (id, name, note) = <(i32, String, Option<String>)>::from_row(&row).unwrap();
        assert_eq!((id, name.as_str(), note), (7, "ann", None));
        let (id, name, note) = <(i32, Option<String>, Option<String>)>::from_row(&row).unwrap();
        assert_eq!((id, name.as_deref(), note), (7, Some("ann"), None));

        let row = one_row("SELECT true").await;
        assert_eq!(<(bool,)>::from_row(&row).unwrap(), (true,));

        let row = one_row(
            "SELECT 0::int2, 1::int2, 2::int2, 3::int2, 4::int2, 5::int2, 6::int2, 7::int2, \
             8::int2, 9::int2, 10::int2, 11::int2, 12::int2, 13::int2, 14::int2, 15::int2",
        )
        .await;
        type Sixteen = (
            i16, i16, i16, i16, i16, i16, i16, i16, i16, i16, i16, i16, i16, i16, i16, i16,
        );
        let t = Sixteen::from_row(&row).unwrap();
        assert_eq!((t.0, t.7, t.15), (0, 7, 15));
    }
}

rt_test! {
    async fn from_row_tuple_of_wrong_arity_is_a_decode_error() {
        let row = one_row(USER).await;
        let err = <(i32, String)>::from_row(&row).expect_err("2 elements, 3 columns");
        assert_eq!(err.kind(), ErrorKind::Decode);
        let text = err.to_string();
        assert!(text.contains("reads 2 columns"), "expected count: {text}");
        assert!(
            text.contains("has 3 columns: id, full_name, note"),
            "actual count and names: {text}"
        );
        let err = <(i32, String, Option<String>, bool)>::from_row(&row).expect_err("4 elements");
        assert!(err.to_string().contains("reads 4 columns"), "{err}");
    }
}

rt_test! {
    async fn from_row_tuple_errors_name_column_and_types() {
        let row = one_row(USER).await;
        let err = <(i32, i32, Option<String>)>::from_row(&row).expect_err("text is not i32");
        assert_eq!(err.kind(), ErrorKind::Decode);
        let text = err.to_string();
        assert!(
            text.contains("full_name") && text.contains("text") && text.contains("i32"),
            "{text}"
        );

        let err = <(i32, String, String)>::from_row(&row).expect_err("NULL into String");
        assert_eq!(err.kind(), ErrorKind::Decode);
        let text = err.to_string();
        assert!(text.contains("`note` is NULL") && text.contains("Option"), "{text}");
    }
}

#[derive(Debug, PartialEq, FromRow)]
struct Geo {
    lat: f64,
    #[aiopg(rename = "longitude")]
    lon: f64,
}

#[derive(Debug, PartialEq, FromRow)]
struct Address {
    city: String,
    #[aiopg(rename = "zip_code")]
    zip: Option<String>,
    #[aiopg(flatten)]
    geo: Geo,
}

#[derive(Debug, PartialEq, FromRow)]
struct User {
    id: i32,
    #[aiopg(rename = "full_name")]
    name: String,
    note: Option<String>,
    #[aiopg(default)]
    tags: Vec<String>,
    #[aiopg(default, rename = "visits")]
    visit_count: i64,
    #[aiopg(flatten)]
    address: Address,
    #[aiopg(skip)]
    cache: Option<String>,
}

const FULL_USER: &str = "SELECT 7::int4 AS id, 'ann'::text AS full_name, NULL::text AS note, \
     'Lyon'::text AS city, NULL::text AS zip_code, 45.75::float8 AS lat, 4.85::float8 AS longitude";

fn ann(tags: Vec<String>, visit_count: i64) -> User {
    User {
        id: 7,
        name: "ann".into(),
        note: None,
        tags,
        visit_count,
        address: Address {
            city: "Lyon".into(),
            zip: None,
            geo: Geo {
                lat: 45.75,
                lon: 4.85,
            },
        },
        cache: None,
    }
}

rt_test! {
    async fn from_row_derive_reads_fields_by_name_with_rename_default_and_nested_flatten() {
        let row = one_row(FULL_USER).await;
        assert_eq!(User::from_row(&row).unwrap(), ann(vec![], 0));

        // Present columns are read, in any order, and extra columns are ignored.
        let row = one_row(
            "SELECT 4.85::float8 AS longitude, 45.75::float8 AS lat, NULL::text AS zip_code, \
             'Lyon'::text AS city, 3::int8 AS visits, ARRAY['a', 'b']::text[] AS tags, \
             NULL::text AS note, 'ann'::text AS full_name, 7::int4 AS id, 1 AS extra",
        )
        .await;
        assert_eq!(User::from_row(&row).unwrap(), ann(vec!["a".into(), "b".into()], 3));

        // Names match as `try_get` matches them: exactly, else ignoring ASCII case.
        let row = one_row("SELECT 1.5::float8 AS \"LAT\", 2.5::float8 AS \"Longitude\"").await;
        assert_eq!(Geo::from_row(&row).unwrap(), Geo { lat: 1.5, lon: 2.5 });
    }
}

rt_test! {
    async fn from_row_derive_default_applies_to_absent_columns_not_nulls() {
        let sql = format!("{FULL_USER}, NULL::int8 AS visits");
        let row = one_row(&sql).await;
        let err = User::from_row(&row).expect_err("NULL into i64");
        assert_eq!(err.kind(), ErrorKind::Decode);
        let text = err.to_string();
        assert!(
            text.contains("field `visit_count` of `User`") && text.contains("`visits` is NULL"),
            "{text}"
        );
    }
}

rt_test! {
    async fn from_row_derive_missing_column_lists_the_known_ones() {
        let row = one_row("SELECT 7::int4 AS id, 'ann'::text AS full_name").await;
        let err = User::from_row(&row).expect_err("no `note` column");
        let text = err.to_string();
        assert!(text.contains("field `note` of `User`"), "names the field: {text}");
        assert!(text.contains("no column note"), "names the column: {text}");
        assert!(text.contains("2 columns: id, full_name"), "lists the known ones: {text}");

        // A flattened struct's error says which field of which struct it was reading.
        let row = one_row("SELECT 'Lyon'::text AS city, NULL::text AS zip_code, 1.0::float8 AS lat")
            .await;
        let err = Address::from_row(&row).expect_err("no `longitude` column");
        let text = err.to_string();
        assert!(
            text.contains("field `geo` of `Address`")
                && text.contains("field `lon` of `Geo`")
                && text.contains("no column longitude")
                && text.contains("city, zip_code, lat"),
            "{text}"
        );
    }
}

rt_test! {
    async fn from_row_derive_type_mismatch_names_field_column_and_types() {
        let row = one_row("SELECT 'x'::text AS lat, 1.0::float8 AS longitude").await;
        let err = Geo::from_row(&row).expect_err("text is not f64");
        assert_eq!(err.kind(), ErrorKind::Decode);
        let text = err.to_string();
        assert!(
            text.contains("field `lat` of `Geo`")
                && text.contains("`lat`")
                && text.contains("text")
                && text.contains("f64"),
            "{text}"
        );
    }
}

#[derive(Debug, PartialEq, FromRow)]
struct Pair(i32, Option<String>);

rt_test! {
    async fn from_row_derive_tuple_structs_read_by_position() {
        let row = one_row("SELECT 3::int4 AS a, NULL::text AS b").await;
        assert_eq!(Pair::from_row(&row).unwrap(), Pair(3, None));

        let row = one_row("SELECT 3::int4 AS a").await;
        let err = Pair::from_row(&row).expect_err("one column for two fields");
        assert_eq!(err.kind(), ErrorKind::Decode);
        let text = err.to_string();
        assert!(
            text.contains("Pair reads 2 columns") && text.contains("has 1 column: a"),
            "{text}"
        );

        let row = one_row("SELECT 'x'::text AS a, 'y'::text AS b").await;
        let err = Pair::from_row(&row).expect_err("text is not i32");
        let text = err.to_string();
        assert!(text.contains("field `0` of `Pair`") && text.contains("i32"), "{text}");
    }
}

/// Type parameters get the bounds their fields need.
#[derive(Debug, PartialEq, FromRow)]
struct Tagged<T, M> {
    value: Option<T>,
    #[aiopg(flatten)]
    meta: M,
}

/// The crate reached through another path, as a crate re-exporting aiopg would.
mod reexport {
    pub use ::aiopg as db;
}

#[derive(Debug, PartialEq, FromRow)]
#[aiopg(crate = "crate::from_row::reexport::db")]
struct Renamed {
    r#type: String,
}

rt_test! {
    async fn from_row_derive_generics_raw_names_and_crate_path() {
        let row = one_row("SELECT 5::int8 AS value, 1.0::float8 AS lat, 2.0::float8 AS longitude")
            .await;
        let t = Tagged::<i64, Geo>::from_row(&row).unwrap();
        assert_eq!(t, Tagged { value: Some(5), meta: Geo { lat: 1.0, lon: 2.0 } });

        let row = one_row("SELECT 'kind'::text AS type").await;
        assert_eq!(Renamed::from_row(&row).unwrap(), Renamed { r#type: "kind".into() });
    }
}

rt_test! {
    async fn from_row_collects_many_rows() {
        let conn = connect().await;
        let rows = conn
            .query("SELECT i, i::text AS s FROM generate_series(1, 3) AS i", &[])
            .await
            .unwrap();
        let pairs = rows.iter().map(Pair::from_row).collect::<aiopg::Result<Vec<_>>>().unwrap();
        assert_eq!(
            pairs,
            vec![Pair(1, Some("1".into())), Pair(2, Some("2".into())), Pair(3, Some("3".into()))]
        );
        let tuples = rows
            .iter()
            .map(<(i32, String)>::from_row)
            .collect::<aiopg::Result<Vec<_>>>()
            .unwrap();
        assert_eq!(tuples[2], (3, "3".to_owned()));
    }
}

/// Columns named the way a JSON-minded schema names them, read into snake_case fields.
#[derive(Debug, PartialEq, FromRow)]
#[aiopg(rename_all = "camelCase")]
struct Account {
    account_id: i32,
    created_by: String,
    /// An explicit rename wins over `rename_all`.
    #[aiopg(rename = "KIND")]
    kind: String,
    /// Stored as bigint, used as u32: out-of-range values are errors, not wraps.
    #[aiopg(try_from = "i64")]
    quota: u32,
    /// Absent in some queries, converted when present.
    #[aiopg(try_from = "i32", default)]
    level: u8,
}

rt_test! {
    async fn from_row_rename_all_and_try_from() {
        let row = one_row(
            r#"SELECT 1::int4 AS "accountId", 'ann'::text AS "createdBy", 'x'::text AS "KIND",
                      4000000000::int8 AS quota, 3::int4 AS level"#,
        )
        .await;
        let a = Account::from_row(&row).unwrap();
        assert_eq!(
            a,
            Account {
                account_id: 1,
                created_by: "ann".into(),
                kind: "x".into(),
                quota: 4_000_000_000,
                level: 3,
            }
        );
        // `default` with `try_from`: the column is absent.
        let row = one_row(
            r#"SELECT 1::int4 AS "accountId", 'ann'::text AS "createdBy", 'x'::text AS "KIND",
                      5::int8 AS quota"#,
        )
        .await;
        assert_eq!(Account::from_row(&row).unwrap().level, 0);

        // A value the target type cannot hold is a decode error naming the field and both
        // types, and never quoting the value.
        let row = one_row(
            r#"SELECT 1::int4 AS "accountId", 'ann'::text AS "createdBy", 'x'::text AS "KIND",
                      -98765::int8 AS quota"#,
        )
        .await;
        let err = Account::from_row(&row).expect_err("-98765 into u32");
        assert_eq!(err.kind(), ErrorKind::Decode);
        let text = err.to_string();
        assert!(text.contains("quota") && text.contains("i64") && text.contains("u32"), "{text}");
        assert!(!text.contains("98765"), "the value is not quoted: {text}");
        // The column in the wrong case is missing (names match exactly, then ignoring ASCII
        // case: "created_by" is neither).
        let row = one_row(
            r#"SELECT 1::int4 AS "accountId", 'ann'::text AS created_by, 'x'::text AS "KIND",
                      5::int8 AS quota"#,
        )
        .await;
        let err = Account::from_row(&row).expect_err("createdBy is missing");
        assert!(err.to_string().contains("created_by"), "{err}");
    }
}
