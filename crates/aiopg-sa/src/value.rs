//! [`SqlValue`]: a column's value whatever its type, for `row["name"]`.

use std::error::Error as StdError;
use std::fmt;

use aiopg_core::types::{FromSql, Kind, Type};
use postgres_protocol::types as wire;

/// A column's value decoded from whatever PostgreSQL type it has, as Python's aiopg.sa row
/// gives it: what `row["name"]` and `row[0]` return. For a known Rust type,
/// `row.get::<T>("name")` is the faster and stricter way.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SqlValue {
    /// SQL NULL.
    Null,
    /// `boolean`.
    Bool(bool),
    /// `smallint`, `integer`, `bigint`, `oid` and `"char"`.
    Int(i64),
    /// `real` and `double precision`.
    Float(f64),
    /// `text`, `varchar`, `char(n)`, `name` and enum labels.
    Text(String),
    /// `bytea`.
    Bytes(Vec<u8>),
    /// Any other type aiopg can print (numeric, dates and times, json, uuid, network types,
    /// ranges, arrays, ...): its text form as PostgreSQL writes it, arrays as an
    /// `ARRAY[...]::type[]` constructor.
    Other {
        /// The type's name (`numeric`, `date`, `int4[]`, ...).
        type_name: String,
        /// The value's text form.
        text: String,
    },
    /// A type aiopg cannot print (a composite, a domain's binary form, an extension type):
    /// the bytes the server sent, in the type's binary format.
    Unknown {
        /// The type's name.
        type_name: String,
        /// The binary value.
        raw: Vec<u8>,
    },
}

impl SqlValue {
    /// True for NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, SqlValue::Null)
    }

    /// The text of a `Text` value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            SqlValue::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The integer of an `Int` value.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            SqlValue::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The number of a `Float` value (or an `Int` one, converted).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            SqlValue::Float(f) => Some(*f),
            SqlValue::Int(n) => Some(*n as f64),
            _ => None,
        }
    }

    /// The boolean of a `Bool` value.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            SqlValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// Decodes one value; never fails: bytes that do not decode are kept as `Unknown`.
    pub(crate) fn decode(ty: &Type, raw: Option<&[u8]>) -> SqlValue {
        let Some(raw) = raw else {
            return SqlValue::Null;
        };
        Self::known(ty, raw).unwrap_or_else(|| SqlValue::Unknown {
            type_name: ty.name().to_owned(),
            raw: raw.to_vec(),
        })
    }

    fn known(ty: &Type, raw: &[u8]) -> Option<SqlValue> {
        Some(match *ty {
            Type::BOOL => SqlValue::Bool(wire::bool_from_sql(raw).ok()?),
            Type::INT2 => SqlValue::Int(wire::int2_from_sql(raw).ok()?.into()),
            Type::INT4 => SqlValue::Int(wire::int4_from_sql(raw).ok()?.into()),
            Type::INT8 => SqlValue::Int(wire::int8_from_sql(raw).ok()?),
            Type::OID => SqlValue::Int(wire::oid_from_sql(raw).ok()?.into()),
            Type::CHAR => SqlValue::Int(wire::char_from_sql(raw).ok()?.into()),
            Type::FLOAT4 => SqlValue::Float(wire::float4_from_sql(raw).ok()?.into()),
            Type::FLOAT8 => SqlValue::Float(wire::float8_from_sql(raw).ok()?),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                SqlValue::Text(wire::text_from_sql(raw).ok()?.to_owned())
            }
            Type::BYTEA => SqlValue::Bytes(wire::bytea_from_sql(raw).to_vec()),
            _ if matches!(ty.kind(), Kind::Enum(_)) => {
                SqlValue::Text(std::str::from_utf8(raw).ok()?.to_owned())
            }
            _ => SqlValue::Other {
                type_name: ty.name().to_owned(),
                text: aiopg_core::mogrify::text_form(ty, raw)?,
            },
        })
    }
}

impl fmt::Display for SqlValue {
    /// The value as PostgreSQL's text output would show it (`NULL` for NULL, bytea in hex).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlValue::Null => f.write_str("NULL"),
            SqlValue::Bool(b) => f.write_str(if *b { "t" } else { "f" }),
            SqlValue::Int(n) => write!(f, "{n}"),
            SqlValue::Float(x) => write!(f, "{x}"),
            SqlValue::Text(s) => f.write_str(s),
            SqlValue::Bytes(b) => {
                f.write_str("\\x")?;
                b.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
            }
            SqlValue::Other { text, .. } => f.write_str(text),
            SqlValue::Unknown { type_name, raw } => {
                write!(f, "<{} bytes of {type_name}>", raw.len())
            }
        }
    }
}

macro_rules! eq {
    ($($t:ty => |$s:ident, $o:ident| $e:expr;)*) => {$(
        impl PartialEq<$t> for SqlValue {
            fn eq(&self, other: &$t) -> bool {
                let ($s, $o) = (self, other);
                $e
            }
        }
    )*};
}

eq! {
    str => |s, o| s.as_str() == Some(o);
    &str => |s, o| s.as_str() == Some(*o);
    String => |s, o| s.as_str() == Some(o.as_str());
    i64 => |s, o| s.as_i64() == Some(*o);
    i32 => |s, o| s.as_i64() == Some(i64::from(*o));
    f64 => |s, o| matches!(s, SqlValue::Float(x) if x == o);
    bool => |s, o| s.as_bool() == Some(*o);
}

impl<'a> FromSql<'a> for SqlValue {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(SqlValue::decode(ty, Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(SqlValue::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}
