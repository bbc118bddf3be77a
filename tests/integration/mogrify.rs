//! `mogrify` against a real server: the rendered statement must mean what the statement with
//! bound parameters means.
//!
//! Properties run with `proptest`'s `TestRunner` driven by hand: values are generated up front
//! (no shrinking; a failure prints the value and the SQL), then checked with `await`s. Each
//! property runs with `standard_conforming_strings` on (the default) and off.

use std::error::Error as StdError;
use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aiopg::types::{FromSqlOwned, IsNull, ToSql, Type, WrongType};
use aiopg::{Connection, ErrorKind, SimpleQueryMessage};
use aiopg_core::mogrify::{literal, mogrify};
use bytes::BytesMut;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

use crate::support::{connect, rt_test};

/// Cases per type and setting.
const CASES: usize = 64;
/// Cases per type for the types checked through their binary form (fewer: there are many).
const RAW_CASES: usize = 32;

type Param<'a> = &'a (dyn ToSql + Sync);

/// `n` values of `strategy`, generated before any `await` so that no runner or value tree is
/// held across one.
fn cases<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::new(Config::default());
    (0..n)
        .map(|_| {
            strategy
                .new_tree(&mut runner)
                .expect("generate a value")
                .current()
        })
        .collect()
}

/// The session's setting, switched off first when `scs` is false.
async fn set_scs(conn: &Connection, scs: bool) {
    if !scs {
        conn.batch_execute("SET standard_conforming_strings = off")
            .await
            .unwrap();
    }
    assert_eq!(
        conn.parameter_status("standard_conforming_strings")
            .as_deref(),
        Some(if scs { "on" } else { "off" }),
        "the server reports the setting"
    );
}

/// Equality that counts every NaN equal and tells -0.0 from 0.0.
trait Same {
    fn same(&self, other: &Self) -> bool;
}

macro_rules! same_by_eq {
    ($($t:ty),*) => {$(
        impl Same for $t {
            fn same(&self, other: &Self) -> bool {
                self == other
            }
        }
    )*};
}
same_by_eq!(bool, i8, u8, i16, i32, i64, u32, String, IpAddr, SystemTime);

impl Same for f32 {
    fn same(&self, other: &Self) -> bool {
        (self.is_nan() && other.is_nan()) || self.to_bits() == other.to_bits()
    }
}

impl Same for f64 {
    fn same(&self, other: &Self) -> bool {
        (self.is_nan() && other.is_nan()) || self.to_bits() == other.to_bits()
    }
}

impl<T: Same> Same for Option<T> {
    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Some(a), Some(b)) => a.same(b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl<T: Same> Same for Vec<T> {
    fn same(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a.same(b))
    }
}

/// `SELECT <mogrified $1>` returns the same type and value as `SELECT $1::<ty>` with `v` bound,
/// and that value is `v`.
async fn same_as_bound<T>(conn: &Connection, v: &T, ty: &str, scs: bool)
where
    T: ToSql + Sync + FromSqlOwned + Same + Debug,
{
    let sql = mogrify("SELECT $1", &[v], scs).unwrap_or_else(|e| panic!("mogrify {v:?}: {e}"));
    let rendered = conn
        .query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql:?} for {v:?}: {e}"));
    let bound = conn
        .query(&format!("SELECT $1::{ty}"), &[v])
        .await
        .unwrap_or_else(|e| panic!("binding {v:?} as {ty}: {e}"));
    assert_eq!(
        rendered[0].columns()[0].type_(),
        bound[0].columns()[0].type_(),
        "{sql:?}"
    );
    let got: T = rendered[0].get(0);
    let want: T = bound[0].get(0);
    assert!(
        got.same(&want) && got.same(v),
        "{sql:?}: got {got:?}, bound gives {want:?}, value {v:?}"
    );
}

/// Text with what string quoting gets wrong: quotes, backslashes, escape-string look-alikes,
/// placeholders and comment markers, array punctuation, and any Unicode (but no NUL).
fn tricky_text() -> impl Strategy<Value = String> + Clone {
    let pieces = prop::sample::select(vec![
        "'",
        "''",
        "\\",
        "\\'",
        "\\\\",
        "E'",
        "E'\\x41'",
        "\\x41",
        "\\n",
        "$1",
        "$$",
        "$a$",
        "--",
        "/*",
        "*/",
        "\"",
        "\n",
        "\r\n",
        "\t",
        " ",
        "é",
        "✓",
        "𝄞",
        "\u{feff}",
        "{",
        "}",
        ",",
        "NULL",
        "U&'\\0041'",
    ]);
    prop::collection::vec(
        prop_oneof![
            3 => any::<char>().prop_filter("no NUL", |c| *c != '\0').prop_map(String::from),
            2 => pieces.prop_map(String::from),
            1 => "[a-zA-Z0-9 ]{1,4}",
        ],
        0..16,
    )
    .prop_map(|parts| parts.concat())
}

fn f64s() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        any::<u64>().prop_map(f64::from_bits),
        // Subnormals.
        (1u64..1 << 52).prop_map(f64::from_bits),
        prop::sample::select(vec![
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::MIN,
            0.1,
        ]),
    ]
}

fn f32s() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<f32>(),
        any::<u32>().prop_map(f32::from_bits),
        (1u32..1 << 23).prop_map(f32::from_bits),
        prop::sample::select(vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            f32::MIN_POSITIVE,
            1e-45,
            f32::MAX,
            0.1,
        ]),
    ]
}

fn i64s() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        -1000i64..1000,
        prop::sample::select(vec![i64::MIN, i64::MAX, 0, -1]),
    ]
}

/// Timestamps within PostgreSQL's range (4714-11-24 BC to 294276 AD), in microseconds since
/// 2000-01-01, with the infinities.
fn timestamps() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => -211_813_488_000_000_000i64..9_223_371_331_200_000_000,
        4 => -4_000_000_000_000_000i64..4_000_000_000_000_000,
        1 => prop::sample::select(vec![i64::MAX, i64::MIN, 0, -1, -211_813_488_000_000_000, 9_223_371_331_199_999_999]),
    ]
}

/// Dates within PostgreSQL's range, in days since 2000-01-01, with the infinities.
fn dates() -> impl Strategy<Value = i32> {
    prop_oneof![
        8 => -2_451_545i32..2_145_031_949,
        4 => -1_000_000i32..1_000_000,
        1 => prop::sample::select(vec![i32::MAX, i32::MIN, 0, -2_451_545, 2_145_031_948, -730_120]),
    ]
}

rt_test! {
    async fn mogrify_matches_bound_scalars() {
        let conn = connect().await;
        let texts = cases(tricky_text(), CASES);
        let byteas = cases(prop::collection::vec(any::<u8>(), 0..40), CASES);
        let i16s = cases(any::<i16>(), CASES);
        let i32s = cases(any::<i32>(), CASES);
        let i64s = cases(i64s(), CASES);
        let f32s = cases(f32s(), CASES);
        let f64s = cases(f64s(), CASES);
        let bools = cases(any::<bool>(), 4);
        let opt_i32s = cases(prop::option::of(any::<i32>()), CASES / 4);
        let opt_texts = cases(prop::option::of(tricky_text()), CASES / 4);
        let chars = cases(any::<i8>(), CASES);
        let oids = cases(any::<u32>(), CASES / 4);
        let ips = cases(
            prop_oneof![
                any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
                any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
            ],
            CASES / 4,
        );
        let times = cases(
            (-62_135_596_800_000_000i64..253_402_300_799_999_999).prop_map(|us| {
                if us >= 0 {
                    UNIX_EPOCH + Duration::from_micros(us.unsigned_abs())
                } else {
                    UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
                }
            }),
            CASES / 4,
        );
        for scs in [true, false] {
            set_scs(&conn, scs).await;
            for v in &texts {
                same_as_bound(&conn, v, "text", scs).await;
            }
            for v in &byteas {
                same_as_bound(&conn, v, "bytea", scs).await;
            }
            for v in &i16s {
                same_as_bound(&conn, v, "int2", scs).await;
            }
            for v in &i32s {
                same_as_bound(&conn, v, "int4", scs).await;
            }
            for v in &i64s {
                same_as_bound(&conn, v, "int8", scs).await;
            }
            for v in &f32s {
                same_as_bound(&conn, v, "float4", scs).await;
            }
            for v in &f64s {
                same_as_bound(&conn, v, "float8", scs).await;
            }
            for v in &bools {
                same_as_bound(&conn, v, "bool", scs).await;
            }
            for v in &opt_i32s {
                same_as_bound(&conn, v, "int4", scs).await;
            }
            for v in &opt_texts {
                same_as_bound(&conn, v, "text", scs).await;
            }
            for v in &chars {
                same_as_bound(&conn, v, "\"char\"", scs).await;
            }
            for v in &oids {
                same_as_bound(&conn, v, "oid", scs).await;
            }
            for v in &ips {
                same_as_bound(&conn, v, "inet", scs).await;
            }
            for v in &times {
                same_as_bound(&conn, v, "timestamptz", scs).await;
            }
            same_as_bound(&conn, &None::<f64>, "float8", scs).await;
            same_as_bound(&conn, &None::<Vec<u8>>, "bytea", scs).await;
        }
    }
}

rt_test! {
    async fn mogrify_matches_bound_arrays() {
        let conn = connect().await;
        let int_arrays = cases(prop::collection::vec(any::<i32>(), 0..8), CASES);
        let text_arrays = cases(prop::collection::vec(tricky_text(), 0..5), CASES);
        let opt_arrays = cases(prop::collection::vec(prop::option::of(i64s()), 0..6), CASES);
        let float_arrays = cases(prop::collection::vec(f64s(), 0..6), CASES / 2);
        let opt_text_arrays = cases(prop::collection::vec(prop::option::of(tricky_text()), 0..4), CASES / 2);
        let bytea_arrays = cases(prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..4), CASES / 4);
        let char_arrays = cases(prop::collection::vec(any::<i8>(), 0..6), CASES / 4);
        for scs in [true, false] {
            set_scs(&conn, scs).await;
            for v in &int_arrays {
                same_as_bound(&conn, v, "int4[]", scs).await;
            }
            for v in &text_arrays {
                same_as_bound(&conn, v, "text[]", scs).await;
            }
            for v in &opt_arrays {
                same_as_bound(&conn, v, "int8[]", scs).await;
            }
            for v in &float_arrays {
                same_as_bound(&conn, v, "float8[]", scs).await;
            }
            for v in &opt_text_arrays {
                same_as_bound(&conn, v, "text[]", scs).await;
            }
            for v in &bytea_arrays {
                same_as_bound(&conn, v, "bytea[]", scs).await;
            }
            for v in &char_arrays {
                same_as_bound(&conn, v, "\"char\"[]", scs).await;
            }
            same_as_bound(&conn, &vec![true, false], "bool[]", scs).await;
            same_as_bound(&conn, &vec![1.5f32, f32::NAN, -0.0], "float4[]", scs).await;
            same_as_bound(&conn, &Vec::<String>::new(), "text[]", scs).await;
            same_as_bound(&conn, &None::<Vec<i32>>, "int4[]", scs).await;
            same_as_bound(&conn, &vec![None::<i16>], "int2[]", scs).await;
        }
    }
}

/// A parameter of any type given by its binary form (what a type integration would write).
#[derive(Debug)]
struct Raw {
    ty: Type,
    bytes: Vec<u8>,
}

impl Raw {
    fn new(ty: Type, bytes: impl Into<Vec<u8>>) -> Raw {
        Raw {
            ty,
            bytes: bytes.into(),
        }
    }
}

impl ToSql for Raw {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.extend_from_slice(&self.bytes);
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    // Per value, not per Rust type: only its own type.
    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        if *ty != self.ty {
            return Err(Box::new(WrongType::new::<Raw>(ty.clone())));
        }
        self.to_sql(ty, out)
    }
}

/// Runs `source` (one column), then checks that mogrify's literal for the value it returned
/// reads back as the same type and the same binary value.
async fn reproduces(conn: &Connection, source: &str, params: &[Param<'_>], scs: bool) {
    let rows = conn
        .query(source, params)
        .await
        .unwrap_or_else(|e| panic!("{source} with {params:?}: {e}"));
    let ty = rows[0].columns()[0].type_().clone();
    let bytes = rows[0].raw(0).expect("a value, not NULL").to_vec();
    let value = Raw::new(ty.clone(), bytes.clone());
    let sql = mogrify("SELECT $1", &[&value], scs).unwrap_or_else(|e| panic!("{value:?}: {e}"));
    let back = conn
        .query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql:?} (from {source} with {params:?}): {e}"));
    assert_eq!(back[0].columns()[0].type_(), &ty, "{sql:?}");
    assert_eq!(
        back[0].raw(0),
        Some(&bytes[..]),
        "{sql:?} (from {source} with {params:?})"
    );
}

rt_test! {
    async fn mogrify_reproduces_temporal_values() {
        let conn = connect().await;
        let dates = cases(dates(), RAW_CASES);
        let stamps = cases(timestamps(), RAW_CASES);
        let times = cases(0i64..=86_400_000_000, RAW_CASES);
        let zones = cases(-57_599i32..=57_599, RAW_CASES);
        let intervals = cases(
            prop_oneof![
                (any::<i64>(), any::<i32>(), any::<i32>()),
                (-100_000_000_000i64..100_000_000_000, -100i32..100, -100i32..100),
                Just((i64::MIN, 0, -1)),
                Just((i64::MAX, 1, 0)),
                Just((0, 0, 0)),
            ]
            .prop_filter("PostgreSQL 17's infinities", |&(us, d, m)| {
                (us, d, m) != (i64::MAX, i32::MAX, i32::MAX) && (us, d, m) != (i64::MIN, i32::MIN, i32::MIN)
            }),
            RAW_CASES,
        );
        for scs in [true, false] {
            set_scs(&conn, scs).await;
            // A session time zone far from UTC, with seconds in its historic offsets,
            // and date and interval styles that change how ambiguous input reads.
            conn.batch_execute("SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'sql_standard'").await.unwrap();
            for d in &dates {
                let v = Raw::new(Type::DATE, d.to_be_bytes());
                reproduces(&conn, "SELECT $1::date", &[&v], scs).await;
            }
            for (k, t) in stamps.iter().enumerate() {
                let v = Raw::new(Type::TIMESTAMP, t.to_be_bytes());
                reproduces(&conn, "SELECT $1::timestamp", &[&v], scs).await;
                let v = Raw::new(Type::TIMESTAMPTZ, t.to_be_bytes());
                reproduces(&conn, "SELECT $1::timestamptz", &[&v], scs).await;
                if k % 4 == 0 {
                    let vs = [Raw::new(Type::TIMESTAMPTZ, t.to_be_bytes()), Raw::new(Type::TIMESTAMPTZ, stamps[0].to_be_bytes())];
                    reproduces(&conn, "SELECT ARRAY[$1::timestamptz, NULL, $2]", &[&vs[0], &vs[1]], scs).await;
                }
            }
            for (t, z) in times.iter().zip(&zones) {
                let v = Raw::new(Type::TIME, t.to_be_bytes());
                reproduces(&conn, "SELECT $1::time", &[&v], scs).await;
                let mut tz = t.to_be_bytes().to_vec();
                tz.extend_from_slice(&z.to_be_bytes());
                let v = Raw::new(Type::TIMETZ, tz);
                reproduces(&conn, "SELECT $1::timetz", &[&v], scs).await;
            }
            for (us, d, m) in &intervals {
                let mut b = us.to_be_bytes().to_vec();
                b.extend_from_slice(&d.to_be_bytes());
                b.extend_from_slice(&m.to_be_bytes());
                let v = Raw::new(Type::INTERVAL, b);
                reproduces(&conn, "SELECT $1::interval", &[&v], scs).await;
            }
            let (lo, hi) = (Raw::new(Type::DATE, 0i32.to_be_bytes()), Raw::new(Type::DATE, 40i32.to_be_bytes()));
            reproduces(&conn, "SELECT daterange($1, $2, '(]')", &[&lo, &hi], scs).await;
            reproduces(&conn, "SELECT daterange($1, NULL)", &[&lo], scs).await;
            let (lo, hi) = (Raw::new(Type::TIMESTAMPTZ, (-5i64).to_be_bytes()), Raw::new(Type::TIMESTAMPTZ, i64::MAX.to_be_bytes()));
            reproduces(&conn, "SELECT tstzrange($1, $2)", &[&lo, &hi], scs).await;
            let (lo, hi) = (Raw::new(Type::TIMESTAMP, (-5i64).to_be_bytes()), Raw::new(Type::TIMESTAMP, 7i64.to_be_bytes()));
            reproduces(&conn, "SELECT tsrange($1, $2, '[]')", &[&lo, &hi], scs).await;
            reproduces(&conn, "SELECT ARRAY[tsrange($1, $2, '[]'), 'empty']", &[&lo, &hi], scs).await;
            reproduces(&conn, "SELECT '{}'::date[]", &[], scs).await;
            reproduces(&conn, "SELECT '{{2000-01-01,infinity},{NULL,4713-01-01 BC}}'::date[]", &[], scs).await;
        }
    }
}

/// A decimal string for `numeric`: sign, digits, point, digits, maybe an exponent.
fn decimals() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => ("-?", "[0-9]{0,25}", "[0-9]{0,25}", prop::option::of(-30i32..30)).prop_map(|(sign, int, frac, exp)| {
            let int = if int.is_empty() && frac.is_empty() { "0".to_string() } else { int };
            let mut s = format!("{sign}{int}");
            if !frac.is_empty() {
                s.push('.');
                s.push_str(&frac);
            }
            if let Some(e) = exp {
                s.push_str(&format!("e{e}"));
            }
            s
        }),
        1 => prop::sample::select(vec!["NaN", "Infinity", "-Infinity", "0", "-0", "0.000", "1e-100", "1e100"]).prop_map(String::from),
    ]
}

rt_test! {
    async fn mogrify_reproduces_other_types() {
        let conn = connect().await;
        let numerics = cases(decimals(), RAW_CASES);
        let uuids = cases(any::<[u8; 16]>(), RAW_CASES / 4);
        let texts = cases(tricky_text(), RAW_CASES);
        let macs = cases(any::<[u8; 8]>(), RAW_CASES / 4);
        let bits = cases("[01]{0,40}", RAW_CASES / 2);
        let lsns = cases(any::<u64>(), RAW_CASES / 4);
        let points = cases(
            // The server keeps a NaN's payload bits; the literal 'NaN' has the usual ones.
            prop::collection::vec((f64s(), f64s()), 1..4).prop_map(|pts| {
                let canonical = |v: f64| if v.is_nan() { f64::NAN } else { v };
                pts.into_iter().map(|(x, y)| (canonical(x), canonical(y))).collect::<Vec<_>>()
            }),
            RAW_CASES / 2,
        );
        let masks = cases((any::<u32>(), 0i32..=32, any::<u128>(), 0i32..=128), RAW_CASES / 2);
        let ranges = cases((prop::option::of(any::<i32>()), prop::option::of(any::<i32>()), prop::sample::select(vec!["[)", "(]", "[]", "()"])), RAW_CASES / 2);
        for scs in [true, false] {
            set_scs(&conn, scs).await;
            for n in &numerics {
                reproduces(&conn, "SELECT $1::text::numeric", &[n], scs).await;
            }
            reproduces(&conn, "SELECT ARRAY[$1::text::numeric, NULL, 'NaN']", &[&numerics[0]], scs).await;
            for u in &uuids {
                reproduces(&conn, "SELECT $1::uuid", &[&Raw::new(Type::UUID, *u)], scs).await;
            }
            for t in &texts {
                reproduces(&conn, "SELECT to_json($1::text)", &[t], scs).await;
                reproduces(&conn, "SELECT jsonb_build_object($1::text, json_build_array($1::text, NULL, 1.5))", &[t], scs).await;
                let name: String = t.chars().take(15).collect();
                reproduces(&conn, "SELECT $1::text::name", &[&name], scs).await;
                reproduces(&conn, "SELECT $1::varchar", &[t], scs).await;
                reproduces(&conn, "SELECT ($1::text || '  ')::bpchar", &[t], scs).await;
                reproduces(&conn, "SELECT ARRAY[$1::varchar, NULL]", &[t], scs).await;
            }
            for m in &macs {
                reproduces(&conn, "SELECT $1::macaddr", &[&Raw::new(Type::MACADDR, &m[..6])], scs).await;
                reproduces(&conn, "SELECT $1::macaddr8", &[&Raw::new(Type::MACADDR8, &m[..])], scs).await;
            }
            for b in &bits {
                reproduces(&conn, "SELECT $1::text::varbit", &[b], scs).await;
                reproduces(&conn, "SELECT $1::text::\"bit\"", &[b], scs).await;
            }
            reproduces(&conn, "SELECT ARRAY[$1::text::\"bit\", '1']", &[&bits[0]], scs).await;
            for l in &lsns {
                reproduces(&conn, "SELECT $1::pg_lsn", &[&Raw::new(Type::PG_LSN, l.to_be_bytes())], scs).await;
            }
            for pts in &points {
                let xy = |&(x, y): &(f64, f64)| [x.to_be_bytes(), y.to_be_bytes()].concat();
                reproduces(&conn, "SELECT $1::point", &[&Raw::new(Type::POINT, xy(&pts[0]))], scs).await;
                let corners = [xy(&pts[0]), xy(pts.last().unwrap_or(&pts[0]))].concat();
                reproduces(&conn, "SELECT $1::box", &[&Raw::new(Type::BOX, corners)], scs).await;
                for closed in [0u8, 1] {
                    let mut path = vec![closed];
                    path.extend_from_slice(&(pts.len() as i32).to_be_bytes());
                    pts.iter().for_each(|p| path.extend_from_slice(&xy(p)));
                    reproduces(&conn, "SELECT $1::path", &[&Raw::new(Type::PATH, path)], scs).await;
                }
            }
            reproduces(&conn, "SELECT '{\"(1,2),(0,0)\";\"(3,4),(1,1)\"}'::box[]", &[], scs).await;
            for &(v4, len4, v6, len6) in &masks {
                let (v4, v6) = (IpAddr::V4(Ipv4Addr::from(v4)), IpAddr::V6(Ipv6Addr::from(v6)));
                reproduces(&conn, "SELECT set_masklen($1, $2)", &[&v4, &len4], scs).await;
                reproduces(&conn, "SELECT set_masklen($1, $2)", &[&v6, &len6], scs).await;
                reproduces(&conn, "SELECT network(set_masklen($1, $2))::cidr", &[&v4, &len4], scs).await;
                reproduces(&conn, "SELECT ARRAY[network(set_masklen($1, $2))::cidr]", &[&v6, &len6], scs).await;
            }
            for (a, b, bounds) in &ranges {
                let (lo, hi) = match (a, b) {
                    (Some(a), Some(b)) => (Some(*a.min(b)), Some(*a.max(b))),
                    (a, b) => (*a, *b),
                };
                reproduces(&conn, "SELECT int4range($1, $2, $3)", &[&lo, &hi, bounds], scs).await;
                let (lo, hi) = (lo.map(|l| i64::from(l) * 1000), hi.map(|h| i64::from(h) * 1000));
                reproduces(&conn, "SELECT int8range($1, $2, $3)", &[&lo, &hi, bounds], scs).await;
                reproduces(&conn, "SELECT numrange($1::int8::numeric / 7, $2::int8::numeric / 7, $3)", &[&lo, &hi, bounds], scs).await;
            }
            reproduces(&conn, "SELECT ARRAY[65, 0, -5, 127, -128]::\"char\"[]", &[], scs).await;
            reproduces(&conn, "SELECT ARRAY[[1, 2, 3], [4, NULL, 6]]::int4[]", &[], scs).await;
            reproduces(&conn, "SELECT ARRAY[[['a\\b', 'it''s']], [[NULL, '']]]::text[]", &[], scs).await;
            reproduces(&conn, "SELECT ARRAY['{\"a\": [1]}'::jsonb, 'null']", &[], scs).await;
            reproduces(&conn, "SELECT ARRAY[ARRAY[4294967295, 0]]::oid[]", &[], scs).await;
        }
    }
}

/// A select list item: a parameter, a constant that holds placeholder look-alikes, maybe a
/// comment or a quoted alias.
fn select_item(scs: bool) -> impl Strategy<Value = String> {
    let param = (1usize..=3, 0usize..5).prop_map(|(k, form)| match form {
        0 => format!("${k}"),
        1 => format!("${k}::text"),
        2 => format!("(${k})"),
        3 => format!("${k}||${k}"),
        _ => format!("upper(${k})"),
    });
    let constant =
        (tricky_text(), 0usize..4, "[a-z_]{0,3}").prop_map(move |(s, form, tag)| match form {
            0 => {
                let s = s.replace('\'', "''");
                format!("'{}'", if scs { s } else { s.replace('\\', "\\\\") })
            }
            1 => format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
            2 => format!("${tag}${}${tag}$", s.replace('$', "¤")),
            // A string continued on the next line: one constant, with the first part's rules.
            _ => format!(
                "E'{}'\n  -- {}\n'{}'",
                s.replace('\\', "\\\\").replace('\'', "''"),
                s.replace(['\n', '\r'], " "),
                s.replace('\\', "\\\\").replace('\'', "\\'")
            ),
        });
    let comment = (tricky_text(), 0usize..4).prop_map(|(s, form)| match form {
        0 => format!(" -- {}\n", s.replace(['\n', '\r'], " ")),
        1 => {
            let s = s.replace("/*", "/ *").replace("*/", "* /");
            format!(" /* {s} /* {s} */ {s} */ ")
        }
        2 => format!(
            // Never empty: `""` is not an identifier.
            " AS \"_{}\"",
            s.chars().take(10).collect::<String>().replace('"', "\"\"")
        ),
        _ => String::new(),
    });
    (prop_oneof![param, constant], comment).prop_map(|(item, comment)| item + &comment)
}

rt_test! {
    async fn mogrify_finds_the_placeholders_the_server_finds() {
        let conn = connect().await;
        let on = cases((prop::collection::vec(select_item(true), 0..6), [tricky_text(), tricky_text(), tricky_text()]), CASES);
        let off = cases((prop::collection::vec(select_item(false), 0..6), [tricky_text(), tricky_text(), tricky_text()]), CASES);
        for (scs, statements) in [(true, on), (false, off)] {
            set_scs(&conn, scs).await;
            // No warnings about backslashes in plain strings while it is off.
            conn.batch_execute("SET escape_string_warning = off").await.unwrap();
            for (items, params) in &statements {
                // Every parameter used once more at the end, so that the server can type each.
                let sql = format!("SELECT {}{}$1, $2, $3", items.join(",\n"), if items.is_empty() { "" } else { ",\n" });
                let bound = conn
                    .query(&sql, &[&params[0], &params[1], &params[2]])
                    .await
                    .unwrap_or_else(|e| panic!("{sql:?} with {params:?}: {e}"));
                let rendered_sql = mogrify(&sql, &[&params[0], &params[1], &params[2]], scs).unwrap();
                let rendered = conn
                    .query(&rendered_sql, &[])
                    .await
                    .unwrap_or_else(|e| panic!("{rendered_sql:?}: {e}"));
                let texts = |row: &aiopg::Row| (0..row.len()).map(|i| row.get::<Option<String>>(i)).collect::<Vec<_>>();
                assert_eq!(texts(&rendered[0]), texts(&bound[0]), "{sql:?} became {rendered_sql:?}");
                // Through the simple protocol too, which has no parameters at all.
                let simple = conn.simple_query(&rendered_sql).await.unwrap();
                let Some(SimpleQueryMessage::Row(row)) = simple.iter().find(|m| matches!(m, SimpleQueryMessage::Row(_))) else {
                    panic!("{rendered_sql:?}: no row");
                };
                let simple_texts: Vec<Option<String>> = (0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect();
                assert_eq!(simple_texts, texts(&bound[0]), "{rendered_sql:?}");
            }
        }
    }
}

rt_test! {
    async fn mogrify_statements_run_as_scripts() {
        let conn = connect().await;
        conn.batch_execute("CREATE TEMP TABLE mogrify_notes (id int8, note text, tags text[], data bytea, score float8)")
            .await
            .unwrap();
        let note = "it's $1 -- not a comment \\ /* nor this */";
        let tags = vec!["a,b".to_string(), "{c}".into(), "\"d\"".into(), "NULL".into()];
        let data: Vec<u8> = vec![0, 39, 92, 255];
        let script = mogrify(
            "INSERT INTO mogrify_notes VALUES ($1, $2, $3, $4, $5); \
             UPDATE mogrify_notes SET score = score * 2 WHERE id = $1 AND note = $2",
            &[&7i64, &note, &tags, &data, &-0.1f64],
            true,
        )
        .unwrap();
        conn.batch_execute(&script).await.unwrap();
        let rows = conn
            .query("SELECT id, note, tags, data, score FROM mogrify_notes", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get::<i64>(0), 7);
        assert_eq!(rows[0].get::<String>(1), note);
        assert_eq!(rows[0].get::<Vec<String>>(2), tags);
        assert_eq!(rows[0].get::<Vec<u8>>(3), data);
        assert_eq!(rows[0].get::<f64>(4), -0.2);
    }
}

rt_test! {
    async fn mogrify_errors_are_clear_and_the_server_agrees() {
        let conn = connect().await;
        // NUL: no text value can hold one, bound or rendered.
        let err = mogrify("SELECT $1", &[&"a\0b"], true).expect_err("NUL in text");
        assert_eq!(err.kind(), ErrorKind::Encode);
        assert!(err.to_string().contains("NUL") && err.to_string().contains("$1"), "{err}");
        let err = mogrify("SELECT $1", &[&vec![Some("x"), Some("\0")]], false).expect_err("NUL in an array");
        assert!(err.to_string().contains("NUL"), "{err}");
        assert!(conn.query("SELECT $1::text", &[&"a\0b"]).await.is_err(), "the server rejects it too");
        // Placeholders beyond the parameters, and $0.
        let err = mogrify("SELECT $1, $3", &[&1i32, &2i32], true).expect_err("$3 of 2");
        assert_eq!(err.kind(), ErrorKind::Encode);
        assert!(err.to_string().contains("$3"), "{err}");
        let err = mogrify("SELECT $0", &[&1i32], true).expect_err("$0");
        assert_eq!(err.kind(), ErrorKind::Encode);
        // A type mogrify does not know names the parameter.
        let money = Raw::new(Type::MONEY, 100i64.to_be_bytes());
        let err = mogrify("SELECT $1, $2", &[&1i32, &money], true).expect_err("money");
        assert_eq!(err.kind(), ErrorKind::Encode);
        assert!(err.to_string().contains("$2") && err.to_string().contains("cannot render"), "{err}");
        // ...unless it is never used.
        let sql = mogrify("SELECT $1", &[&1i32, &money], true).unwrap();
        assert_eq!(conn.query(&sql, &[]).await.unwrap()[0].get::<i32>(0), 1);
        // The connection is fine after all this.
        assert_eq!(conn.query("SELECT $1::int4", &[&5i32]).await.unwrap()[0].get::<i32>(0), 5);
    }
}

rt_test! {
    async fn mogrify_renders_hstore() {
        let conn = connect().await;
        let available = conn
            .query("SELECT count(*) FROM pg_available_extensions WHERE name = 'hstore'", &[])
            .await
            .unwrap()[0]
            .get::<i64>(0);
        if available == 0 {
            eprintln!("mogrify_renders_hstore: the hstore extension is not installed on the server");
            return;
        }
        let maps = cases(
            prop::collection::hash_map(tricky_text(), prop::option::of(tricky_text()), 0..5),
            CASES / 2,
        );
        // In a transaction rolled back at the end: the extension never outlives the test.
        conn.batch_execute("BEGIN; CREATE EXTENSION IF NOT EXISTS hstore").await.unwrap();
        for scs in [true, false] {
            if !scs {
                conn.batch_execute("SET LOCAL standard_conforming_strings = off").await.unwrap();
            }
            for map in &maps {
                // The literal against the same map built by the server from its keys and values.
                let keys: Vec<&String> = map.keys().collect();
                let values: Vec<Option<&String>> = keys.iter().map(|k| map[*k].as_ref()).collect();
                let lit = literal(map, scs).unwrap();
                let same = conn
                    .query(&format!("SELECT {lit} = hstore($1::text[], $2::text[])"), &[&keys, &values])
                    .await
                    .unwrap_or_else(|e| panic!("{lit}: {e}"));
                assert!(same[0].get::<bool>(0), "{lit} for {map:?}");
            }
        }
        conn.batch_execute("ROLLBACK").await.unwrap();
    }
}

/// As [`same_as_bound`], for types compared with `==`.
async fn equal_as_bound<T>(conn: &Connection, v: T, ty: &str)
where
    T: ToSql + Sync + FromSqlOwned + PartialEq + Debug,
{
    for scs in [true, false] {
        let sql = mogrify("SELECT $1", &[&v], scs).unwrap_or_else(|e| panic!("mogrify {v:?}: {e}"));
        let rendered = conn
            .query(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql:?} for {v:?}: {e}"));
        let bound = conn
            .query(&format!("SELECT $1::{ty}"), &[&v])
            .await
            .unwrap_or_else(|e| panic!("binding {v:?} as {ty}: {e}"));
        assert_eq!(
            rendered[0].columns()[0].type_(),
            bound[0].columns()[0].type_(),
            "{sql:?}"
        );
        let got: T = rendered[0].get(0);
        assert_eq!(got, bound[0].get::<T>(0), "{sql:?}");
        assert_eq!(got, v, "{sql:?}");
    }
}

rt_test! {
    async fn mogrify_renders_the_type_integrations() {
        use std::str::FromStr;

        use chrono::{FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
        use geo_types::{coord, LineString, Point, Rect};
        use postgres_types::PgLsn;
        use rust_decimal::Decimal;

        let conn = connect().await;
        // One string-literal-heavy value under both settings of the session.
        let json = serde_json::json!({"a": [1, "it's \\ $1 -- /*", null, 1.5e300], "b": {"c": true}, "é": "✓"});
        equal_as_bound(&conn, json.clone(), "jsonb").await;
        equal_as_bound(&conn, vec![json, serde_json::Value::Null], "jsonb[]").await;
        equal_as_bound(&conn, postgres_types::Json(vec!["a'b".to_string()]), "jsonb").await;
        let uuid = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        equal_as_bound(&conn, uuid, "uuid").await;
        equal_as_bound(&conn, vec![Some(uuid), None], "uuid[]").await;
        equal_as_bound(&conn, None::<uuid::Uuid>, "uuid").await;
        let day = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
        equal_as_bound(&conn, day, "date").await;
        equal_as_bound(&conn, NaiveDate::from_ymd_opt(-43, 3, 15).unwrap(), "date").await;
        equal_as_bound(&conn, NaiveTime::from_hms_micro_opt(23, 59, 59, 999_999).unwrap(), "time").await;
        let ts: NaiveDateTime = day.and_hms_micro_opt(1, 2, 3, 4).unwrap();
        equal_as_bound(&conn, ts, "timestamp").await;
        equal_as_bound(&conn, Utc.from_utc_datetime(&ts), "timestamptz").await;
        let kolkata = FixedOffset::east_opt(19_800).unwrap().from_local_datetime(&ts).unwrap();
        equal_as_bound(&conn, kolkata, "timestamptz").await;
        equal_as_bound(&conn, vec![ts, ts], "timestamp[]").await;
        let t = time::PrimitiveDateTime::new(
            time::Date::from_calendar_date(1999, time::Month::December, 31).unwrap(),
            time::Time::from_hms_micro(23, 59, 59, 5).unwrap(),
        );
        equal_as_bound(&conn, t, "timestamp").await;
        equal_as_bound(&conn, t.date(), "date").await;
        equal_as_bound(&conn, t.time(), "time").await;
        equal_as_bound(&conn, t.assume_utc(), "timestamptz").await;
        for d in ["-12.3400", "0.0000000001", "79228162514264337593543950335", "0", "-0.5"] {
            let d = Decimal::from_str(d).unwrap();
            equal_as_bound(&conn, d, "numeric").await;
            // The scale survives too (1.50, not 1.5).
            let sql = mogrify("SELECT $1::text", &[&d], true).unwrap();
            assert_eq!(conn.query(&sql, &[]).await.unwrap()[0].get::<String>(0), d.to_string());
        }
        equal_as_bound(&conn, vec![Decimal::from_str("1.50").unwrap()], "numeric[]").await;
        equal_as_bound(&conn, cidr::IpInet::from_str("10.1.2.3/8").unwrap(), "inet").await;
        equal_as_bound(&conn, cidr::IpInet::from_str("2001:db8::1/64").unwrap(), "inet").await;
        equal_as_bound(&conn, cidr::IpCidr::from_str("10.0.0.0/8").unwrap(), "cidr").await;
        equal_as_bound(&conn, vec![cidr::IpCidr::from_str("2001:db8::/32").unwrap()], "cidr[]").await;
        equal_as_bound(&conn, eui48::MacAddress::new([0x08, 0x00, 0x2b, 0x01, 0x02, 0x03]), "macaddr").await;
        let bits = bit_vec::BitVec::from_bytes(&[0b1010_0000, 0xff]);
        equal_as_bound(&conn, bits.clone(), "varbit").await;
        equal_as_bound(&conn, vec![bits], "varbit[]").await;
        equal_as_bound(&conn, Point::new(1.5, -0.25), "point").await;
        equal_as_bound(&conn, Rect::new(coord! { x: 0., y: 0. }, coord! { x: 1., y: 2.5 }), "box").await;
        equal_as_bound(&conn, LineString::from(vec![(0., 0.), (1., 1e-300)]), "path").await;
        equal_as_bound(&conn, PgLsn::from(0x16_B374_D848), "pg_lsn").await;
        equal_as_bound(&conn, vec![PgLsn::from(0)], "pg_lsn[]").await;
    }
}
