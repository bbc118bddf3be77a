//! How a sea-query value is bound: checked against the type the server gave its parameter.
//!
//! sea-query-postgres' `PostgresValue` accepts every parameter type and writes the value's own
//! binary form whatever the server asked for, so a `String` bound where the server expects an
//! `int4` is sent as four bytes of text that the server reads as a number: silently wrong
//! data. [`Bound`] checks instead. The value is encoded for the parameter's type when it fits
//! exactly (an integer into any wider integer type, `numeric` or a float that holds it; an
//! `f32` into `float8`; an `f64` into `float4` when no precision is lost; text into the text
//! types and enums) and is otherwise an error naming both types, which the connection reports
//! as an `Encode` error naming the parameter. NULL binds to any type.

use std::error::Error as StdError;
use std::fmt;

use aiopg_core::types::{IsNull, Kind, ToSql, Type, WrongType};
use bytes::{BufMut, BytesMut};
use sea_query::{OptionEnum, Value};
use sea_query_postgres::{PostgresValue, PostgresValues};

type BoxError = Box<dyn StdError + Sync + Send>;

/// One value of a built statement, bound as a parameter.
#[derive(Debug, Clone)]
pub(crate) struct Bound(PostgresValue);

/// The values of a built statement, in placeholder order, each bound checked against the
/// type the server gives its parameter: exactly when it fits (an integer into a wider integer
/// type, `numeric` or a float that holds it; `f32` into `float8`; `f64` into `float4`
/// without loss; text into the text types and enums), otherwise an `Encode` error naming the
/// parameter and both types. NULL fits every type.
#[derive(Debug, Clone, Default)]
pub struct Values(Vec<Bound>);

impl Values {
    pub(crate) fn new(values: PostgresValues) -> Values {
        Values(values.0.into_iter().map(Bound).collect())
    }

    /// The parameters to pass to a query.
    pub fn as_params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
    }

    /// Each value with the type it has in Rust (`Value::Int` is an `int4`, `Value::String` a
    /// `text`): what `mogrify` casts its literal to.
    pub fn as_typed(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.0
            .iter()
            .map(|v| (v as &(dyn ToSql + Sync), v.own_type()))
            .collect()
    }

    /// How many values there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True without values.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A value that does not fit the parameter's type.
#[derive(Debug)]
struct DoesNotFit {
    value: String,
    ty: Type,
}

impl fmt::Display for DoesNotFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the value {} does not fit the parameter's type {}",
            self.value,
            self.ty.name()
        )
    }
}

impl StdError for DoesNotFit {}

fn wrong<T>(ty: &Type) -> BoxError {
    Box::new(WrongType::new::<T>(ty.clone()))
}

/// Writes an integer as the integer, numeric or float type `ty`, if it holds it exactly.
fn integer<T>(v: i128, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    let fits = |ok: bool| -> Result<(), BoxError> {
        if ok {
            Ok(())
        } else {
            Err(Box::new(DoesNotFit {
                value: v.to_string(),
                ty: ty.clone(),
            }))
        }
    };
    match *ty {
        Type::INT2 => {
            fits(i16::try_from(v).is_ok())?;
            out.put_i16(v as i16);
        }
        Type::INT4 => {
            fits(i32::try_from(v).is_ok())?;
            out.put_i32(v as i32);
        }
        Type::INT8 => {
            fits(i64::try_from(v).is_ok())?;
            out.put_i64(v as i64);
        }
        Type::OID => {
            fits(u32::try_from(v).is_ok())?;
            out.put_u32(v as u32);
        }
        // Integers up to 2^24 (float4) and 2^53 (float8) are exact.
        Type::FLOAT4 => {
            fits(v.unsigned_abs() <= 1 << 24)?;
            out.put_f32(v as f32);
        }
        Type::FLOAT8 => {
            fits(v.unsigned_abs() <= 1 << 53)?;
            out.put_f64(v as f64);
        }
        Type::NUMERIC => numeric(v, out),
        _ => return Err(wrong::<T>(ty)),
    }
    Ok(IsNull::No)
}

/// An integer in `numeric`'s binary form: base-10000 digits, most significant first.
fn numeric(v: i128, out: &mut BytesMut) {
    let mut digits = Vec::new();
    let mut n = v.unsigned_abs();
    while n > 0 {
        digits.push((n % 10_000) as i16);
        n /= 10_000;
    }
    // The weight is the power of 10000 of the first digit; trailing zero digits may go.
    let weight = digits.len().saturating_sub(1) as i16;
    digits.reverse();
    while digits.last() == Some(&0) {
        digits.pop();
    }
    out.put_i16(digits.len() as i16);
    out.put_i16(weight);
    out.put_u16(if v < 0 { 0x4000 } else { 0 });
    out.put_u16(0);
    for d in digits {
        out.put_i16(d);
    }
}

fn text(s: &str, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    // An enum's binary form is its label.
    if matches!(ty.kind(), Kind::Enum(_)) {
        out.put_slice(s.as_bytes());
        return Ok(IsNull::No);
    }
    s.to_sql_checked(ty, out)
}

impl Bound {
    /// The type of the value in Rust terms, for `mogrify`.
    fn own_type(&self) -> Type {
        match &self.0 .0 {
            Value::Bool(_) => Type::BOOL,
            Value::TinyInt(_) | Value::SmallInt(_) | Value::TinyUnsigned(_) => Type::INT2,
            Value::Int(_) | Value::SmallUnsigned(_) => Type::INT4,
            Value::BigInt(_) | Value::Unsigned(_) => Type::INT8,
            Value::BigUnsigned(_) => Type::NUMERIC,
            Value::Float(_) => Type::FLOAT4,
            Value::Double(_) => Type::FLOAT8,
            Value::String(_) | Value::Enum(_) | Value::Char(_) => Type::TEXT,
            Value::Bytes(_) => Type::BYTEA,
            #[allow(unreachable_patterns)]
            _ => PostgresValues(vec![self.0.clone()]).as_types()[0].clone(),
        }
    }
}

/// Writes `Some(v)` with `write`, `None` as NULL (which fits every type).
fn opt<T>(
    v: &Option<T>,
    write: impl FnOnce(&T) -> Result<IsNull, BoxError>,
) -> Result<IsNull, BoxError> {
    match v {
        Some(v) => write(v),
        None => Ok(IsNull::Yes),
    }
}

impl ToSql for Bound {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match &self.0 .0 {
            Value::Bool(v) => opt(v, |v| v.to_sql_checked(ty, out)),
            Value::TinyInt(v) => opt(v, |&v| {
                if *ty == Type::CHAR {
                    v.to_sql_checked(ty, out)
                } else {
                    integer::<i8>(v.into(), ty, out)
                }
            }),
            Value::SmallInt(v) => opt(v, |&v| integer::<i16>(v.into(), ty, out)),
            Value::Int(v) => opt(v, |&v| integer::<i32>(v.into(), ty, out)),
            Value::BigInt(v) => opt(v, |&v| integer::<i64>(v.into(), ty, out)),
            Value::TinyUnsigned(v) => opt(v, |&v| integer::<u8>(v.into(), ty, out)),
            Value::SmallUnsigned(v) => opt(v, |&v| integer::<u16>(v.into(), ty, out)),
            Value::Unsigned(v) => opt(v, |&v| integer::<u32>(v.into(), ty, out)),
            Value::BigUnsigned(v) => opt(v, |&v| integer::<u64>(v.into(), ty, out)),
            Value::Float(v) => opt(v, |&v| match *ty {
                Type::FLOAT8 => f64::from(v).to_sql(ty, out),
                _ => v.to_sql_checked(ty, out),
            }),
            Value::Double(v) => opt(v, |&v| match *ty {
                // Only when nothing is lost (NaN and the infinities included).
                Type::FLOAT4 if v.is_nan() || f64::from(v as f32) == v => {
                    (v as f32).to_sql(ty, out)
                }
                Type::FLOAT4 => Err(Box::new(DoesNotFit {
                    value: v.to_string(),
                    ty: ty.clone(),
                })),
                _ => v.to_sql_checked(ty, out),
            }),
            Value::String(v) => opt(v, |v| text(v, ty, out)),
            Value::Char(v) => opt(v, |v| text(v.encode_utf8(&mut [0; 4]), ty, out)),
            Value::Enum(OptionEnum::Some(e)) => text(&e.value, ty, out),
            Value::Enum(OptionEnum::None(_)) => Ok(IsNull::Yes),
            Value::Bytes(v) => opt(v, |v| v.as_slice().to_sql_checked(ty, out)),
            #[cfg(feature = "with-json")]
            Value::Json(v) => opt(v, |v| (**v).to_sql_checked(ty, out)),
            #[cfg(feature = "with-chrono")]
            Value::ChronoDate(v) => opt(v, |v| v.to_sql_checked(ty, out)),
            #[cfg(feature = "with-chrono")]
            Value::ChronoTime(v) => opt(v, |v| v.to_sql_checked(ty, out)),
            #[cfg(feature = "with-chrono")]
            Value::ChronoDateTime(v) => opt(v, |v| v.to_sql_checked(ty, out)),
            #[cfg(feature = "with-chrono")]
            Value::ChronoDateTimeUtc(v) => opt(v, |v| v.to_sql_checked(ty, out)),
            #[cfg(feature = "with-chrono")]
            Value::ChronoDateTimeLocal(v) => opt(v, |v| v.to_sql_checked(ty, out)),
            #[cfg(feature = "with-chrono")]
            Value::ChronoDateTimeWithTimeZone(v) => opt(v, |v| v.to_sql_checked(ty, out)),
            #[cfg(feature = "with-time")]
            Value::TimeDate(v) => opt(v, |v| v.to_sql_checked(ty, out)),
            #[cfg(feature = "with-time")]
            Value::TimeTime(v) => opt(v, |v| v.to_sql_checked(ty, out)),
            #[cfg(feature = "with-time")]
            Value::TimeDateTime(v) => opt(v, |v| v.to_sql_checked(ty, out)),
            #[cfg(feature = "with-time")]
            Value::TimeDateTimeWithTimeZone(v) => opt(v, |v| v.to_sql_checked(ty, out)),
            #[cfg(feature = "with-uuid")]
            Value::Uuid(v) => opt(v, |v| v.to_sql_checked(ty, out)),
            #[cfg(feature = "with-rust_decimal")]
            Value::Decimal(v) => opt(v, |v| v.to_sql_checked(ty, out)),
            // Types behind sea-query features this crate does not forward (arrays, ranges,
            // network types, ...): encoded by sea-query-postgres as it does, unchecked.
            #[allow(unreachable_patterns)]
            _ => self.0.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Which types fit depends on the value, so `to_sql` checks.
        true
    }

    aiopg_core::types::to_sql_checked!();
}
