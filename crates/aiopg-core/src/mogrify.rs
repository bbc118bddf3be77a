//! `mogrify`: a statement with its parameters rendered as SQL literals.
//!
//! Python's psycopg2/aiopg `cursor.mogrify(sql, params)` returns the text that would be run,
//! with every parameter written out as a literal, synchronously and without a round trip. aiopg
//! sends parameters separately from the statement (extended protocol, binary format), so this
//! text is never what goes over the wire; it exists for logs, debugging, and the rare statement
//! that must be sent as one string (a simple-protocol batch, a `DO` block, a script).
//!
//! # How a value becomes a literal
//!
//! A parameter is only a `&dyn ToSql`: something that can write PostgreSQL's *binary* form of
//! itself for a type it accepts. Nothing says which type that is, and `dyn ToSql` cannot be
//! asked (`accepts` is not object-safe). So [`mogrify`] tries a fixed list of candidate types
//! in order (`bool`, `int2`, `int4`, `int8`, `float4`, `float8`, `text`, `varchar`, `bpchar`,
//! `name`, `bytea`, `"char"`, `oid`, `jsonb`, `json`, `uuid`, `date`, `time`, `timetz`,
//! `timestamptz`, `timestamp`, `interval`, `numeric`, `inet`, `cidr`, `macaddr`, `macaddr8`,
//! `varbit`, `bit`, `point`, `box`, `path`, `pg_lsn`, the built-in range types, then arrays of
//! all of these, then `hstore`) and takes the first one the value encodes into. It decodes the
//! binary bytes back and writes the value's text form (a value whose `ToSql` sends text, as
//! `encode_format` says, is that text already).
//!
//! Every literal carries an explicit cast (`5::int4`, `'x'::text`, `NULL::int8`,
//! `ARRAY[1, 2]::int4[]`), so that `SELECT <literal>` has the same type and value as
//! `SELECT $1` with the value bound: an untyped `'x'` or `5` would be inferred by the server
//! from its context instead, and a bare `-0.0` or `NaN` would not even be a float. Values that
//! have no exact decimal spelling are quoted text fed to the type's own input function (floats
//! are written with the shortest digits that round-trip, `'-0.0'::float8`, `'NaN'::float8`).
//!
//! When a Rust type accepts several candidates, the first wins: `SystemTime` becomes a
//! `timestamptz` (an instant, written in UTC so that the session's `TimeZone` cannot shift it),
//! `&str` becomes `text`, a JSON value `jsonb`, a bit vector `varbit`.
//!
//! # `standard_conforming_strings`
//!
//! The scanner and the quoting depend on the session's `standard_conforming_strings` (read it
//! with `Connection::parameter_status("standard_conforming_strings")`: `on` is the default
//! since PostgreSQL 9.1). When it is on, backslashes in `'...'` are ordinary characters; when
//! off, they escape the next character. Strings without a backslash are written `'...'` in both
//! cases; with `standard_conforming_strings = false`, a string with a backslash is written as
//! an escape string `E'...'`, which means the same under either setting, so text rendered with
//! `false` is correct on any server.
//!
//! # Limits
//!
//! - Types outside the candidate list (enums, composites, domains, user types, `money`,
//!   multiranges, ...) are an [`ErrorKind::Encode`](crate::ErrorKind::Encode) error naming the
//!   parameter.
//! - Arrays whose lower bound is not 1 (which `postgres-types` never produces) are an error.
//! - A text value holding a NUL byte is an error: PostgreSQL text cannot hold one, and the
//!   server would reject the bound value too.
//! - `float4` literals round-trip exactly on PostgreSQL 12 and later (older servers parse them
//!   through `double`); an `interval` at the largest or smallest value of all three fields is
//!   written `'infinity'`/`'-infinity'`, which only PostgreSQL 17 and later accept.

use std::fmt::Write as _;
use std::ops::Range;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::types as wire;
use postgres_types::{Format, IsNull, Kind, ToSql, Type, WrongType};

use crate::error::BoxError;
use crate::{Error, Result};

/// Returns `sql` with each `$n` placeholder replaced by `params[n - 1]` written as a SQL
/// literal, as psycopg2's `cursor.mogrify()` does.
///
/// Only real placeholders are replaced: a `$1` inside a string (`'...'`, `E'...'`), a quoted
/// identifier (`"..."`), a dollar-quoted string (`$$...$$`, `$tag$...$tag$`), a `--` comment or
/// a (nested) `/* */` comment is left alone, as is one inside a name (`a$1`).
/// `standard_conforming_strings` must be the session's setting (see the
/// [module documentation](self)): it decides whether a backslash escapes a quote in a `'...'`
/// string, and how backslashes in the rendered strings are written.
///
/// Each literal carries a cast, so that the statement means the same as with the values bound
/// (see the [module documentation](self) for the types it knows). A literal followed by a
/// subscript or a field selection (`$1[1]`, `$1.f`) is parenthesised, since
/// `'{1}'::int4[][1]` would read the subscript as part of the type name, and one that would
/// run into what precedes it (`1$1`, `u&$1`) is set off by a space. Parameters the statement
/// does not use are ignored, even if they could not be rendered.
///
/// # Errors
///
/// [`ErrorKind::Encode`](crate::ErrorKind::Encode) for a placeholder `$0`, a placeholder beyond
/// the parameters given, a placeholder that runs into a name (`$1abc`), a text value with a NUL
/// byte, a parameter whose encoding fails, and a parameter of a type mogrify cannot render. The
/// message names the parameter (`$2`) and never contains its value.
///
/// # Example
///
/// ```
/// use aiopg_core::mogrify::mogrify;
///
/// let sql = mogrify(
///     "SELECT $1, $2, $3 -- costs $1",
///     &[&5i32, &"it's", &Some(vec![1.5f64, f64::NAN])],
///     true,
/// )?;
/// assert_eq!(
///     sql,
///     "SELECT 5::int4, 'it''s'::text, ARRAY['1.5', 'NaN']::float8[] -- costs $1"
/// );
///
/// // With standard_conforming_strings off, backslashes are written in an escape string.
/// assert_eq!(mogrify("SELECT $1", &[&r"C:\dir"], false)?, r"SELECT E'C:\\dir'::text");
///
/// let err = mogrify("SELECT $2", &[&1i32], true).unwrap_err();
/// assert_eq!(err.kind(), aiopg_core::ErrorKind::Encode);
/// # Ok::<(), aiopg_core::Error>(())
/// ```
pub fn mogrify(
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    standard_conforming_strings: bool,
) -> Result<String> {
    substitute(
        sql,
        params.len(),
        standard_conforming_strings,
        |i, label| render(params[i], standard_conforming_strings, label),
    )
}

/// As [`mogrify`], but each parameter comes with its type, so nothing is guessed: the value is
/// encoded for that type and written as a literal cast to it. For callers that know their
/// values' types (a query builder's typed values, a prepared statement's parameter types).
///
/// # Errors
///
/// As [`mogrify`]'s; a value that cannot be encoded as its type is an
/// [`ErrorKind::Encode`](crate::ErrorKind::Encode) error naming the parameter and the type.
///
/// ```
/// use aiopg_core::mogrify::mogrify_typed;
/// use aiopg_core::types::Type;
///
/// let sql = mogrify_typed("SELECT $1, $2", &[(&7i64, Type::INT8), (&"a'b", Type::VARCHAR)], true)?;
/// assert_eq!(sql, "SELECT 7::int8, 'a''b'::varchar");
/// # Ok::<(), aiopg_core::Error>(())
/// ```
pub fn mogrify_typed(
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
    standard_conforming_strings: bool,
) -> Result<String> {
    substitute(
        sql,
        params.len(),
        standard_conforming_strings,
        |i, label| {
            let (value, ty) = &params[i];
            render_as(*value, ty, standard_conforming_strings, label)
        },
    )
}

/// Replaces each placeholder of `sql` with `literal(index, label)` (each parameter rendered
/// once, an unused one never).
fn substitute(
    sql: &str,
    count: usize,
    scs: bool,
    mut literal: impl FnMut(usize, &str) -> Result<String>,
) -> Result<String> {
    let found = placeholders(sql, scs)?;
    // A parameter used several times is rendered once; one never used is never rendered.
    let mut rendered: Vec<Option<String>> = vec![None; count];
    let mut out = String::with_capacity(sql.len() + 16 * found.len());
    let mut copied = 0;
    for p in found {
        let i = param_index(p.number, count)?;
        if rendered[i].is_none() {
            let label = format!("${}", i + 1);
            rendered[i] = Some(literal(i, &label)?);
        }
        let lit = rendered[i].as_deref().unwrap_or_default();
        out.push_str(&sql[copied..p.span.start]);
        if needs_space_before(sql.as_bytes()[..p.span.start].last().copied()) {
            out.push(' ');
        }
        if needs_parentheses(&sql.as_bytes()[p.span.end..]) {
            out.push('(');
            out.push_str(lit);
            out.push(')');
        } else {
            out.push_str(lit);
        }
        copied = p.span.end;
    }
    out.push_str(&sql[copied..]);
    Ok(out)
}

/// Returns one value written as a SQL literal with a cast (`5::int4`, `'x'::text`,
/// `NULL::int8`), as [`mogrify`] writes each parameter.
///
/// # Errors
///
/// As [`mogrify`]'s for one parameter: [`ErrorKind::Encode`](crate::ErrorKind::Encode) for a
/// text value with a NUL byte, a failed encoding, or a type mogrify cannot render.
///
/// ```
/// use aiopg_core::mogrify::literal;
///
/// assert_eq!(literal(&-7i16, true)?, "(-7)::int2");
/// assert_eq!(literal(&None::<i64>, true)?, "NULL::int8");
/// assert_eq!(literal(&vec![Some("a"), None], true)?, "ARRAY['a', NULL]::text[]");
/// # Ok::<(), aiopg_core::Error>(())
/// ```
pub fn literal(value: &(dyn ToSql + Sync), standard_conforming_strings: bool) -> Result<String> {
    render(value, standard_conforming_strings, "the value")
}

/// The text form of a non-NULL value of type `ty` given in its binary form (`raw`), as
/// PostgreSQL would print it (`2024-01-31`, `1.50`, `{"a": 1}`); arrays come as an
/// `ARRAY[...]::type[]` constructor. `None` for a type mogrify does not know (see the
/// [module documentation](self)) or bytes that are not a valid value of the type.
///
/// ```
/// use aiopg_core::mogrify::text_form;
/// use aiopg_core::types::Type;
///
/// assert_eq!(text_form(&Type::INT4, &7i32.to_be_bytes()).as_deref(), Some("7"));
/// assert_eq!(text_form(&Type::INT4, b"xy"), None);
/// ```
pub fn text_form(ty: &Type, raw: &[u8]) -> Option<String> {
    if let Kind::Array(member) = ty.kind() {
        return render_array(member, raw, true, &sql_type(ty)).ok();
    }
    match bare(ty, raw).ok()? {
        Bare::Keyword(k) => Some(k.to_owned()),
        Bare::Number(n) | Bare::Text(n) => Some(n),
    }
}

// ---------------------------------------------------------------------------------------------
// Scanning for placeholders
// ---------------------------------------------------------------------------------------------

/// A `$n` the server would read as a parameter reference.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placeholder {
    /// Where `$n` is in the statement.
    span: Range<usize>,
    /// `n` as written (0 and out-of-range numbers are rejected later, with the parameter count).
    number: u64,
}

/// Finds the placeholders of `sql`, following PostgreSQL's lexer (`scan.l`) for everything that
/// can hide a `$n`: strings, quoted identifiers, dollar quotes, comments and names.
///
/// Unterminated strings and comments run to the end, as the server would read them (it then
/// reports the error when the statement runs).
fn placeholders(sql: &str, scs: bool) -> Result<Vec<Placeholder>> {
    let b = sql.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            // With standard_conforming_strings off, a backslash escapes in plain strings too.
            b'\'' => i = skip_string(b, i + 1, !scs),
            b'"' => i = skip_quoted_identifier(b, i + 1),
            b'-' if b.get(i + 1) == Some(&b'-') => i = line_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i + 2),
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let digits_end =
                    i + 1 + b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
                if b.get(digits_end).is_some_and(|&c| is_ident_start(c)) {
                    // The server rejects this too ("trailing junk after parameter"); replacing
                    // `$1` alone would silently glue the literal to the name.
                    return Err(Error::encode(
                        format!(
                            "the placeholder `{}` at byte {i} runs into a name: \
                             put a space or an operator after it",
                            &sql[i..digits_end]
                        ),
                        None,
                    ));
                }
                // More digits than fit are out of range whatever the parameter count is.
                let number = sql[i + 1..digits_end].parse::<u64>().unwrap_or(u64::MAX);
                found.push(Placeholder {
                    span: i..digits_end,
                    number,
                });
                i = digits_end;
            }
            b'$' => match dollar_tag(b, i) {
                Some(tag_end) => {
                    let tag = &b[i..tag_end];
                    i = match memchr::memmem::find(&b[tag_end..], tag) {
                        Some(at) => tag_end + at + tag.len(),
                        None => b.len(),
                    };
                }
                // A lone `$` (an error to the server): step over it.
                None => i += 1,
            },
            c if is_ident_start(c) => {
                // A name runs on over digits and `$`: `a$1` is a name, not `a` then `$1`.
                let end = i + b[i..].iter().take_while(|&&c| is_ident_cont(c)).count();
                if end - i == 1 && matches!(c, b'e' | b'E') && b.get(end) == Some(&b'\'') {
                    // An escape string: backslashes escape whatever the setting.
                    i = skip_string(b, end + 1, true);
                } else {
                    i = end;
                }
            }
            _ => i += 1,
        }
    }
    Ok(found)
}

/// Checks a placeholder number against the parameter count; returns the 0-based index.
fn param_index(number: u64, count: usize) -> Result<usize> {
    if number == 0 {
        return Err(Error::encode(
            "`$0` is not a parameter: placeholders count from $1",
            None,
        ));
    }
    match usize::try_from(number) {
        Ok(n) if n <= count => Ok(n - 1),
        _ => Err(Error::encode(
            format!(
                "the statement uses ${number}, but {count} parameter{} given",
                if count == 1 { " was" } else { "s were" }
            ),
            None,
        )),
    }
}

/// First byte of a name: PostgreSQL's `ident_start` (every non-ASCII byte counts as a letter).
fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// Later bytes of a name: `ident_cont`, which includes digits and `$`.
fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// If a dollar quote opens at `i` (`$$` or `$tag$`, the tag a name without `$` that cannot
/// start with a digit, so `$1` is never a tag), returns the index just past it.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if b.get(j).is_some_and(|&c| is_ident_start(c)) {
        j += b[j..]
            .iter()
            .take_while(|&&c| is_ident_start(c) || c.is_ascii_digit())
            .count();
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1)
}

/// Skips the rest of a `'...'` string whose body starts at `i`; returns the index past it.
/// `backslash` says whether a backslash escapes the next byte (escape strings, or any string
/// when standard_conforming_strings is off).
fn skip_string(b: &[u8], mut i: usize, backslash: bool) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' if backslash => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => match continuation(b, i + 1) {
                // `'a'<newline>'b'` is one string `ab`, and for an escape string the second part
                // is read with escape-string rules too: `E'a'\n'\'$1'` holds no placeholder.
                Some(next) => i = next,
                None => return i + 1,
            },
            _ => i += 1,
        }
    }
    b.len()
}

/// After a closing quote at `i - 1`: if whitespace with a newline (and possibly `--` comments)
/// and then a quote follow, the string continues (`quotecontinue` in scan.l); returns the index
/// past that quote.
fn continuation(b: &[u8], mut i: usize) -> Option<usize> {
    // Horizontal space and comments, then a newline...
    loop {
        match b.get(i) {
            Some(b' ' | b'\t' | b'\x0c' | b'\x0b') => i += 1,
            Some(b'-') if b.get(i + 1) == Some(&b'-') => i = line_end(b, i),
            _ => break,
        }
    }
    if !matches!(b.get(i), Some(b'\n' | b'\r')) {
        return None;
    }
    // ...then any whitespace and comments, then the quote.
    loop {
        match b.get(i) {
            Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'\x0b') => i += 1,
            Some(b'-') if b.get(i + 1) == Some(&b'-') => i = line_end(b, i),
            Some(b'\'') => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The index of the newline ending the line at `i` (or the end).
fn line_end(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&c| c == b'\n' || c == b'\r')
        .map_or(b.len(), |p| i + p)
}

/// Skips the rest of a `"..."` identifier (`""` is a quote inside it).
fn skip_quoted_identifier(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        if b[i] == b'"' {
            if b.get(i + 1) == Some(&b'"') {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// Skips the rest of a `/* */` comment, which nests in PostgreSQL (unlike the SQL standard).
fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 1;
    while i < b.len() {
        if b[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if b[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// Whether the literal would merge with what precedes the placeholder: `1$1` is `1` then `$1`
/// to the server, but `15::int4` is one number; `u&$1` is `u & $1`, but `u&'x'` is a Unicode
/// escape string; `'a'$1` would become one string with a quote in it.
fn needs_space_before(prev: Option<u8>) -> bool {
    prev.is_some_and(|c| c.is_ascii_digit() || matches!(c, b'.' | b'&' | b'\'' | b'"'))
}

/// A literal ending in a cast (`'{1}'::int4[]`) followed by `[` would take the subscript as part
/// of the type name, and one followed by `.` would be a syntax error: those get parentheses.
fn needs_parentheses(rest: &[u8]) -> bool {
    matches!(
        rest.iter().find(|c| !c.is_ascii_whitespace()),
        Some(b'[' | b'.')
    )
}

// ---------------------------------------------------------------------------------------------
// Rendering values
// ---------------------------------------------------------------------------------------------

/// The types tried, in order; the first the value encodes into is its type. Scalars come
/// before arrays (a value is one or the other), and within each group the order settles the
/// Rust types that accept several: `SystemTime` is a `timestamptz`, `&str` a `text`.
static CANDIDATES: [Type; 78] = [
    Type::BOOL,
    Type::INT2,
    Type::INT4,
    Type::INT8,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::TEXT,
    Type::VARCHAR,
    Type::BPCHAR,
    Type::NAME,
    Type::BYTEA,
    Type::CHAR,
    Type::OID,
    Type::JSONB,
    Type::JSON,
    Type::UUID,
    Type::DATE,
    Type::TIME,
    Type::TIMETZ,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMP,
    Type::INTERVAL,
    Type::NUMERIC,
    Type::INET,
    Type::CIDR,
    Type::MACADDR,
    Type::MACADDR8,
    Type::VARBIT,
    Type::BIT,
    Type::POINT,
    Type::BOX,
    Type::PATH,
    Type::PG_LSN,
    Type::INT4_RANGE,
    Type::INT8_RANGE,
    Type::NUM_RANGE,
    Type::TSTZ_RANGE,
    Type::TS_RANGE,
    Type::DATE_RANGE,
    Type::BOOL_ARRAY,
    Type::INT2_ARRAY,
    Type::INT4_ARRAY,
    Type::INT8_ARRAY,
    Type::FLOAT4_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::VARCHAR_ARRAY,
    Type::BPCHAR_ARRAY,
    Type::NAME_ARRAY,
    Type::BYTEA_ARRAY,
    Type::CHAR_ARRAY,
    Type::OID_ARRAY,
    Type::JSONB_ARRAY,
    Type::JSON_ARRAY,
    Type::UUID_ARRAY,
    Type::DATE_ARRAY,
    Type::TIME_ARRAY,
    Type::TIMETZ_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::TIMESTAMP_ARRAY,
    Type::INTERVAL_ARRAY,
    Type::NUMERIC_ARRAY,
    Type::INET_ARRAY,
    Type::CIDR_ARRAY,
    Type::MACADDR_ARRAY,
    Type::MACADDR8_ARRAY,
    Type::VARBIT_ARRAY,
    Type::BIT_ARRAY,
    Type::POINT_ARRAY,
    Type::BOX_ARRAY,
    Type::PATH_ARRAY,
    Type::PG_LSN_ARRAY,
    Type::INT4_RANGE_ARRAY,
    Type::INT8_RANGE_ARRAY,
    Type::NUM_RANGE_ARRAY,
    Type::TSTZ_RANGE_ARRAY,
    Type::TS_RANGE_ARRAY,
    Type::DATE_RANGE_ARRAY,
];

/// `hstore` is an extension type without a fixed OID, tried after [`CANDIDATES`];
/// `HashMap<String, Option<String>>`'s `accepts` checks only its name.
fn hstore_type() -> Type {
    Type::new("hstore".into(), 0, Kind::Simple, "public".into())
}

/// Why a value could not be written.
enum Fail {
    /// Text with a NUL byte, which PostgreSQL text cannot hold.
    Nul,
    /// The value's own encoding failed.
    Encode(BoxError),
    /// Anything else, with the cause.
    Other(BoxError),
}

impl<E: Into<BoxError>> From<E> for Fail {
    fn from(e: E) -> Fail {
        Fail::Other(e.into())
    }
}

/// A value's text in the form that fits inside `ARRAY[...]::t[]`, where the cast after the
/// array gives each element its type.
enum Bare {
    /// `true`/`false`: typed already, no cast needed.
    Keyword(&'static str),
    /// Decimal digits, maybe with a sign: needs a cast (and parentheses when negative, since
    /// `-5::int2` is `-(5::int2)`, and `-32768::int2` overflows).
    Number(String),
    /// The type's text form, to be quoted and cast.
    Text(String),
}

/// Writes one parameter as a literal, its type the first candidate it encodes into; `label`
/// names it in errors (`$2`).
fn render(value: &(dyn ToSql + Sync), scs: bool, label: &str) -> Result<String> {
    let hstore = hstore_type();
    let mut buf = BytesMut::new();
    for ty in CANDIDATES.iter().chain([&hstore]) {
        match render_into(value, ty, scs, &mut buf) {
            // Not this type: try the next one.
            Err(e) if e.is::<WrongType>() => continue,
            written => return written.map_err(|e| written_error(e, ty, label)),
        }
    }
    Err(Error::encode(
        format!(
            "{label}: mogrify cannot render this parameter as a SQL literal: its type is none \
             of those mogrify knows (the built-in scalar, range and array types, and hstore); \
             bind it instead"
        ),
        None,
    ))
}

/// Writes one parameter as a literal of type `ty`; `label` names it in errors.
fn render_as(value: &(dyn ToSql + Sync), ty: &Type, scs: bool, label: &str) -> Result<String> {
    render_into(value, ty, scs, &mut BytesMut::new()).map_err(|e| written_error(e, ty, label))
}

/// Encodes `value` as `ty` (into `buf`) and writes the literal. A [`WrongType`] error comes
/// back as it is, so that [`render`] can try the next candidate.
fn render_into(
    value: &(dyn ToSql + Sync),
    ty: &Type,
    scs: bool,
    buf: &mut BytesMut,
) -> Result<String, Fail> {
    buf.clear();
    let is_null = match value.to_sql_checked(ty, buf) {
        Ok(is_null) => is_null,
        Err(e) if e.is::<WrongType>() => return Err(Fail::Other(e)),
        Err(e) => return Err(Fail::Encode(e)),
    };
    let cast = sql_type(ty);
    match is_null {
        // A typed NULL: `NULL` alone would be `text` in a SELECT list.
        IsNull::Yes => Ok(format!("NULL::{cast}")),
        // A ToSql may send text for its type: that is its input form already.
        IsNull::No if matches!(value.encode_format(ty), Format::Text) => {
            let text = std::str::from_utf8(buf)?;
            let mut out = String::new();
            push_quoted(&mut out, text, scs)?;
            Ok(out + "::" + &cast)
        }
        IsNull::No => render_value(ty, buf, scs, &cast),
    }
}

impl Fail {
    /// A [`WrongType`] failure, which [`render`] treats as "try the next candidate".
    fn is<E: std::error::Error + 'static>(&self) -> bool {
        matches!(self, Fail::Other(e) if e.is::<E>())
    }
}

/// The error for a value that could not be written as `ty`.
fn written_error(fail: Fail, ty: &Type, label: &str) -> Error {
    match fail {
        Fail::Nul => Error::encode(
            format!(
                "{label}: the text holds a NUL byte (\\0), which no PostgreSQL text value \
                 can hold; remove it, or send binary data as bytea (Vec<u8>)"
            ),
            None,
        ),
        Fail::Encode(e) => Error::encode(
            format!("{label}: cannot convert the parameter to {}", ty.name()),
            Some(e),
        ),
        Fail::Other(e) => Error::encode(
            format!("{label}: mogrify cannot render this {} value", ty.name()),
            Some(e),
        ),
    }
}

/// The name to cast to.
fn sql_type(ty: &Type) -> String {
    match ty.kind() {
        Kind::Array(member) => format!("{}[]", sql_type(member)),
        _ => match *ty {
            // Unquoted, `char` is `bpchar(1)` and `bit` is `bit(1)`: the quoted names are the
            // types themselves, without a length.
            Type::CHAR => "\"char\"".into(),
            Type::BIT => "\"bit\"".into(),
            _ => ty.name().into(),
        },
    }
}

/// Writes a non-NULL value of type `ty` (binary in `raw`) as a literal cast to `cast`.
fn render_value(ty: &Type, raw: &[u8], scs: bool, cast: &str) -> Result<String, Fail> {
    if let Kind::Array(member) = ty.kind() {
        return render_array(member, raw, scs, cast);
    }
    let mut out = String::new();
    match bare(ty, raw)? {
        Bare::Keyword(k) => out.push_str(k),
        Bare::Number(n) if n.starts_with('-') => write!(out, "({n})::{cast}")?,
        Bare::Number(n) => write!(out, "{n}::{cast}")?,
        Bare::Text(t) => {
            push_quoted(&mut out, &t, scs)?;
            write!(out, "::{cast}")?;
        }
    }
    Ok(out)
}

/// Writes an array as `ARRAY[...]::t[]` (nested brackets for more dimensions).
///
/// The constructor rather than the `'{...}'` text form: elements are written as ordinary
/// literals with no second layer of array quoting, and the cast after the constructor converts
/// each element straight to the element type (so `'NaN'` becomes a float8, and `"char"` values
/// can be numbers, which the text form of servers before 15 cannot express).
fn render_array(member: &Type, raw: &[u8], scs: bool, cast: &str) -> Result<String, Fail> {
    let array = wire::array_from_sql(raw)?;
    let dims: Vec<wire::ArrayDimension> = array.dimensions().collect()?;
    let values: Vec<Option<&[u8]>> = array.values().collect()?;
    if dims.iter().any(|d| d.lower_bound != 1) {
        return Err("an array whose lower bound is not 1 has no ARRAY[...] form".into());
    }
    let count = dims.iter().try_fold(1usize, |n, d| {
        usize::try_from(d.len)
            .ok()
            .and_then(|len| n.checked_mul(len))
    });
    let mut out = String::from("ARRAY");
    if dims.is_empty() || count == Some(0) {
        // Only the cast gives an empty array its type: `ARRAY[]` alone is an error.
        out.push_str("[]");
    } else {
        if count != Some(values.len()) {
            return Err("the array's dimensions do not match its number of elements".into());
        }
        let mut values = values.into_iter();
        push_array_level(&mut out, &dims, &mut values, member, scs)?;
    }
    write!(out, "::{cast}")?;
    Ok(out)
}

/// Writes one bracketed level of an array: the elements, or the next level down.
fn push_array_level<'a>(
    out: &mut String,
    dims: &[wire::ArrayDimension],
    values: &mut impl Iterator<Item = Option<&'a [u8]>>,
    member: &Type,
    scs: bool,
) -> Result<(), Fail> {
    out.push('[');
    for k in 0..dims[0].len {
        if k > 0 {
            out.push_str(", ");
        }
        if dims.len() > 1 {
            push_array_level(out, &dims[1..], values, member, scs)?;
            continue;
        }
        match values.next().ok_or("too few array elements")? {
            None => out.push_str("NULL"),
            Some(raw) => match bare(member, raw)? {
                Bare::Keyword(k) => out.push_str(k),
                Bare::Number(n) => out.push_str(&n),
                Bare::Text(t) => push_quoted(out, &t, scs)?,
            },
        }
    }
    out.push(']');
    Ok(())
}

/// Writes `s` as a string constant: `'...'` with quotes doubled, or, when
/// standard_conforming_strings is off and `s` has a backslash, `E'...'` with backslashes doubled
/// too (an escape string reads the same under either setting).
fn push_quoted(out: &mut String, s: &str, scs: bool) -> Result<(), Fail> {
    if s.contains('\0') {
        return Err(Fail::Nul);
    }
    let escape = !scs && s.contains('\\');
    if escape {
        out.push('E');
    }
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' if escape => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    Ok(())
}

/// Decodes the binary value `raw` of scalar type `ty` into its text form.
fn bare(ty: &Type, raw: &[u8]) -> Result<Bare, Fail> {
    let text = match *ty {
        Type::BOOL => {
            return Ok(Bare::Keyword(if wire::bool_from_sql(raw)? {
                "true"
            } else {
                "false"
            }))
        }
        Type::INT2 => return Ok(Bare::Number(wire::int2_from_sql(raw)?.to_string())),
        Type::INT4 => return Ok(Bare::Number(wire::int4_from_sql(raw)?.to_string())),
        Type::INT8 => return Ok(Bare::Number(wire::int8_from_sql(raw)?.to_string())),
        // `"char"` from an integer: its text form cannot spell bytes >= 0x80 before
        // PostgreSQL 15 (the cast from int4 exists everywhere).
        Type::CHAR => return Ok(Bare::Number(wire::char_from_sql(raw)?.to_string())),
        Type::OID => wire::oid_from_sql(raw)?.to_string(),
        Type::FLOAT4 => float4_text(wire::float4_from_sql(raw)?),
        Type::FLOAT8 => float8_text(wire::float8_from_sql(raw)?),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON => {
            wire::text_from_sql(raw)?.to_owned()
        }
        Type::BYTEA => {
            let mut s = String::with_capacity(2 + 2 * raw.len());
            s.push_str("\\x");
            push_hex(&mut s, wire::bytea_from_sql(raw));
            s
        }
        Type::JSONB => match raw.split_first() {
            Some((1, json)) => std::str::from_utf8(json)?.to_owned(),
            _ => return Err("unknown jsonb binary version".into()),
        },
        Type::UUID => {
            let u = wire::uuid_from_sql(raw)?;
            let mut s = String::with_capacity(36);
            for (k, part) in [&u[..4], &u[4..6], &u[6..8], &u[8..10], &u[10..]]
                .into_iter()
                .enumerate()
            {
                if k > 0 {
                    s.push('-');
                }
                push_hex(&mut s, part);
            }
            s
        }
        Type::DATE => date_text(wire::date_from_sql(raw)?),
        Type::TIME => {
            let mut s = String::new();
            push_time_of_day(&mut s, wire::time_from_sql(raw)?)?;
            s
        }
        Type::TIMETZ => {
            let (us, zone) = match raw {
                [t @ .., z0, z1, z2, z3] if t.len() == 8 => (
                    wire::time_from_sql(t)?,
                    i32::from_be_bytes([*z0, *z1, *z2, *z3]),
                ),
                _ => return Err("invalid timetz length".into()),
            };
            let mut s = String::new();
            push_time_of_day(&mut s, us)?;
            // The binary zone counts seconds west of Greenwich; text offsets are east.
            push_utc_offset(&mut s, -i64::from(zone));
            s
        }
        Type::TIMESTAMP => timestamp_text(wire::timestamp_from_sql(raw)?, false),
        Type::TIMESTAMPTZ => timestamp_text(wire::timestamp_from_sql(raw)?, true),
        Type::INTERVAL => interval_text(raw)?,
        Type::NUMERIC => numeric_text(raw)?,
        Type::INET | Type::CIDR => {
            let inet = wire::inet_from_sql(raw)?;
            format!("{}/{}", inet.addr(), inet.netmask())
        }
        Type::MACADDR => mac_text(&wire::macaddr_from_sql(raw)?),
        Type::MACADDR8 if raw.len() == 8 => mac_text(raw),
        Type::MACADDR8 => return Err("invalid macaddr8 length".into()),
        Type::BIT | Type::VARBIT => {
            let bits = wire::varbit_from_sql(raw)?;
            let bytes = bits.bytes();
            (0..bits.len())
                .map(|k| match bytes.get(k / 8).map(|b| b >> (7 - k % 8) & 1) {
                    Some(1) => Ok('1'),
                    Some(_) => Ok('0'),
                    None => Err("bit string shorter than its length"),
                })
                .collect::<Result<String, _>>()?
        }
        Type::POINT => {
            let p = wire::point_from_sql(raw)?;
            point_text(p.x(), p.y())
        }
        Type::BOX => {
            let b = wire::box_from_sql(raw)?;
            let (hi, lo) = (b.upper_right(), b.lower_left());
            format!(
                "{},{}",
                point_text(hi.x(), hi.y()),
                point_text(lo.x(), lo.y())
            )
        }
        Type::PATH => {
            let path = wire::path_from_sql(raw)?;
            let points: Vec<String> = path
                .points()
                .map(|p| Ok(point_text(p.x(), p.y())))
                .collect()?;
            let (open, close) = if path.closed() {
                ("(", ")")
            } else {
                ("[", "]")
            };
            format!("{open}{}{close}", points.join(","))
        }
        Type::PG_LSN => {
            let lsn = wire::lsn_from_sql(raw)?;
            format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
        }
        Type::INT4_RANGE => range_text(raw, &Type::INT4)?,
        Type::INT8_RANGE => range_text(raw, &Type::INT8)?,
        Type::NUM_RANGE => range_text(raw, &Type::NUMERIC)?,
        Type::TS_RANGE => range_text(raw, &Type::TIMESTAMP)?,
        Type::TSTZ_RANGE => range_text(raw, &Type::TIMESTAMPTZ)?,
        Type::DATE_RANGE => range_text(raw, &Type::DATE)?,
        _ if ty.name() == "hstore" => hstore_text(raw)?,
        _ => return Err(format!("no text form for type {}", ty.name()).into()),
    };
    Ok(Bare::Text(text))
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
}

fn mac_text(bytes: &[u8]) -> String {
    let parts: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// A float8 as `float8in` reads it back bit for bit: Rust's `{:?}` writes the shortest digits
/// that round-trip (keeping `-0.0`'s sign); NaN and the infinities have their own words.
fn float8_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{v:?}")
    }
}

/// As [`float8_text`], with the shortest digits for an `f32` (`float4in` uses `strtof`).
fn float4_text(v: f32) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{v:?}")
    }
}

fn point_text(x: f64, y: f64) -> String {
    format!("({},{})", float8_text(x), float8_text(y))
}

const USECS_PER_SEC: i64 = 1_000_000;
const USECS_PER_DAY: i64 = 86_400 * USECS_PER_SEC;
/// Days from 1970-01-01 (where the calendar arithmetic counts from) to PostgreSQL's epoch,
/// 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// The proleptic Gregorian (year, month, day) of a day counted from 1970-01-01, in astronomical
/// years (year 0 is 1 BC). Howard Hinnant's `civil_from_days`, valid for any i32 day count.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Writes `YYYY-MM-DD` (at least four year digits: `44-03-15` would read as 2044) and returns
/// whether the date is BC, which the caller appends as ` BC` after any time.
fn push_date(s: &mut String, days_since_2000: i64) -> bool {
    let (year, month, day) = civil_from_days(days_since_2000 + PG_EPOCH_DAYS);
    // Astronomical year 0 is 1 BC.
    let bc = year <= 0;
    let year = if bc { 1 - year } else { year };
    let _ = write!(s, "{year:04}-{month:02}-{day:02}");
    bc
}

fn date_text(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        _ => {
            let mut s = String::new();
            if push_date(&mut s, i64::from(days)) {
                s.push_str(" BC");
            }
            s
        }
    }
}

/// Writes `HH:MM:SS[.ffffff]` for a time of day (24:00:00 included).
fn push_time_of_day(s: &mut String, us: i64) -> Result<(), Fail> {
    if !(0..=USECS_PER_DAY).contains(&us) {
        return Err("time of day out of range".into());
    }
    push_hms(s, us.unsigned_abs());
    Ok(())
}

/// Writes `H:MM:SS[.ffffff]` with at least two hour digits (any number of hours).
fn push_hms(s: &mut String, us: u64) {
    let secs = us / 1_000_000;
    let frac = us % 1_000_000;
    let _ = write!(
        s,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let digits = format!("{frac:06}");
        s.push('.');
        s.push_str(digits.trim_end_matches('0'));
    }
}

/// Writes a UTC offset east of Greenwich in seconds as `+HH:MM[:SS]`.
fn push_utc_offset(s: &mut String, east: i64) {
    let sign = if east < 0 { '-' } else { '+' };
    let a = east.unsigned_abs();
    let _ = write!(s, "{sign}{:02}:{:02}", a / 3600, a / 60 % 60);
    if !a.is_multiple_of(60) {
        let _ = write!(s, ":{:02}", a % 60);
    }
}

/// A timestamp (microseconds since 2000-01-01) in ISO form. A `timestamptz` is written in UTC
/// with an explicit `+00`, so that the session's `TimeZone` does not change the instant.
fn timestamp_text(us: i64, tz: bool) -> String {
    match us {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    let mut s = String::new();
    let bc = push_date(&mut s, us.div_euclid(USECS_PER_DAY));
    s.push(' ');
    push_hms(&mut s, us.rem_euclid(USECS_PER_DAY).unsigned_abs());
    if tz {
        s.push_str("+00");
    }
    if bc {
        s.push_str(" BC");
    }
    s
}

/// An interval (microseconds, days, months) in PostgreSQL's own input syntax.
///
/// Every field carries its sign: with `IntervalStyle = sql_standard` a single leading sign
/// would apply to all fields.
fn interval_text(raw: &[u8]) -> Result<String, Fail> {
    let raw: &[u8; 16] = raw.try_into().map_err(|_| "invalid interval length")?;
    let [u0, u1, u2, u3, u4, u5, u6, u7, d0, d1, d2, d3, m0, m1, m2, m3] = *raw;
    let us = i64::from_be_bytes([u0, u1, u2, u3, u4, u5, u6, u7]);
    let days = i32::from_be_bytes([d0, d1, d2, d3]);
    let months = i32::from_be_bytes([m0, m1, m2, m3]);
    // PostgreSQL 17's infinite intervals.
    if (us, days, months) == (i64::MAX, i32::MAX, i32::MAX) {
        return Ok("infinity".into());
    }
    if (us, days, months) == (i64::MIN, i32::MIN, i32::MIN) {
        return Ok("-infinity".into());
    }
    let mut parts = Vec::new();
    if months != 0 {
        parts.push(format!("{months:+} mons"));
    }
    if days != 0 {
        parts.push(format!("{days:+} days"));
    }
    if us == i64::MIN {
        // The server reads `-H:MM:SS` as a positive amount negated, which overflows here.
        parts.push(format!("{us} microseconds"));
    } else if us != 0 {
        let mut t = String::from(if us < 0 { "-" } else { "+" });
        push_hms(&mut t, us.unsigned_abs());
        parts.push(t);
    }
    if parts.is_empty() {
        parts.push("00:00:00".into());
    }
    Ok(parts.join(" "))
}

/// A numeric from its binary form (base-10000 digits, weight, sign, display scale) as a
/// decimal string with exactly `dscale` fraction digits, so that `1.50` keeps its scale.
fn numeric_text(raw: &[u8]) -> Result<String, Fail> {
    let word = |k: usize| -> Result<u16, Fail> {
        match raw.get(2 * k..2 * k + 2) {
            Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
            _ => Err("numeric value too short".into()),
        }
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    if raw.len() != 8 + 2 * ndigits || ndigits > i16::MAX as usize {
        return Err("invalid numeric length".into());
    }
    let digits = (0..ndigits)
        .map(|k| match word(4 + k)? {
            d @ 0..=9999 => Ok(d),
            _ => Err(Fail::from("invalid numeric digit")),
        })
        .collect::<Result<Vec<u16>, Fail>>()?;
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => return Err("invalid numeric sign".into()),
    };
    if dscale > 0x3FFF {
        return Err("invalid numeric scale".into());
    }
    // The base-10000 digit at position `k` (weight 0 is the units group).
    let digit = |k: i64| -> u16 {
        usize::try_from(k)
            .ok()
            .and_then(|k| digits.get(k).copied())
            .unwrap_or(0)
    };
    let mut s = String::new();
    if negative {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        let _ = write!(s, "{}", digit(0));
        for k in 1..=weight {
            let _ = write!(s, "{:04}", digit(k));
        }
    }
    if dscale > 0 {
        s.push('.');
        let start = s.len();
        let mut k = weight + 1;
        while s.len() - start < dscale {
            let _ = write!(s, "{:04}", digit(k));
            k += 1;
        }
        s.truncate(start + dscale);
    }
    Ok(s)
}

/// A range in its text form: `empty`, or bounds with `[`/`(` and `]`/`)`, each bound quoted
/// (a timestamp bound has a space and a comma would end it) or empty when unbounded.
fn range_text(raw: &[u8], member: &Type) -> Result<String, Fail> {
    let (lower, upper) = match wire::range_from_sql(raw)? {
        wire::Range::Empty => return Ok("empty".into()),
        wire::Range::Nonempty(lower, upper) => (lower, upper),
    };
    // Each bound: its bracket, and its text unless unbounded.
    let bound = |b: &wire::RangeBound<Option<&[u8]>>, brackets: [char; 2]| {
        let (bracket, value) = match b {
            wire::RangeBound::Inclusive(v) => (brackets[0], Some(v)),
            wire::RangeBound::Exclusive(v) => (brackets[1], Some(v)),
            wire::RangeBound::Unbounded => (brackets[1], None),
        };
        let text = match value {
            None => None,
            Some(v) => Some(match bare(member, v.ok_or("a range bound is NULL")?)? {
                Bare::Keyword(k) => k.to_owned(),
                Bare::Number(t) | Bare::Text(t) => t,
            }),
        };
        Ok::<_, Fail>((bracket, text))
    };
    let (open, lo) = bound(&lower, ['[', '('])?;
    let (close, hi) = bound(&upper, [']', ')'])?;
    let mut s = String::new();
    s.push(open);
    if let Some(lo) = lo {
        push_double_quoted(&mut s, &lo);
    }
    s.push(',');
    if let Some(hi) = hi {
        push_double_quoted(&mut s, &hi);
    }
    s.push(close);
    Ok(s)
}

/// `"..."` with `"` and `\` escaped by a backslash: the quoting of range bounds and hstore.
fn push_double_quoted(s: &mut String, text: &str) {
    s.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
}

/// An hstore as `"key"=>"value", "key"=>NULL`.
fn hstore_text(raw: &[u8]) -> Result<String, Fail> {
    let mut entries = wire::hstore_from_sql(raw)?;
    let mut s = String::new();
    while let Some((key, value)) = entries.next()? {
        if !s.is_empty() {
            s.push_str(", ");
        }
        push_double_quoted(&mut s, key);
        s.push_str("=>");
        match value {
            Some(v) => push_double_quoted(&mut s, v),
            None => s.push_str("NULL"),
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use bytes::BufMut;
    use proptest::prelude::*;

    use super::*;
    use crate::ErrorKind;

    /// A parameter of any type with given binary (or text) bytes; `None` is NULL.
    #[derive(Debug)]
    struct Raw {
        ty: Type,
        bytes: Option<Vec<u8>>,
        text: bool,
    }

    impl Raw {
        fn new(ty: Type, bytes: impl Into<Vec<u8>>) -> Raw {
            Raw {
                ty,
                bytes: Some(bytes.into()),
                text: false,
            }
        }
    }

    impl ToSql for Raw {
        fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
            match &self.bytes {
                Some(b) => {
                    out.extend_from_slice(b);
                    Ok(IsNull::No)
                }
                None => Ok(IsNull::Yes),
            }
        }

        fn accepts(_: &Type) -> bool {
            true
        }

        fn to_sql_checked(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
            if *ty != self.ty {
                return Err(Box::new(WrongType::new::<Raw>(ty.clone())));
            }
            self.to_sql(ty, out)
        }

        fn encode_format(&self, _: &Type) -> Format {
            if self.text {
                Format::Text
            } else {
                Format::Binary
            }
        }
    }

    /// Accepts `int4` but fails to encode.
    #[derive(Debug)]
    struct Broken;

    impl ToSql for Broken {
        fn to_sql(&self, _: &Type, _: &mut BytesMut) -> Result<IsNull, BoxError> {
            Err("broken on purpose".into())
        }

        fn accepts(ty: &Type) -> bool {
            *ty == Type::INT4
        }

        postgres_types::to_sql_checked!();
    }

    fn m(sql: &str, params: &[&(dyn ToSql + Sync)]) -> String {
        mogrify(sql, params, true).unwrap()
    }

    fn lit(v: &(dyn ToSql + Sync)) -> String {
        literal(v, true).unwrap()
    }

    fn lit_off(v: &(dyn ToSql + Sync)) -> String {
        literal(v, false).unwrap()
    }

    fn err(sql: &str, params: &[&(dyn ToSql + Sync)]) -> String {
        let e = mogrify(sql, params, true).expect_err(sql);
        assert_eq!(e.kind(), ErrorKind::Encode, "{e}");
        e.to_string()
    }

    fn bin(ty: Type, bytes: &[u8]) -> String {
        lit(&Raw::new(ty, bytes))
    }

    // --- scanning ---

    #[test]
    fn replaces_placeholders_in_order_and_reuses_them() {
        assert_eq!(
            m("SELECT $1, $2, $1", &[&1i32, &"a"]),
            "SELECT 1::int4, 'a'::text, 1::int4"
        );
        assert_eq!(m("SELECT $1::int8", &[&7i32]), "SELECT 7::int4::int8");
        assert_eq!(
            m("SELECT $1::int8+$2", &[&-7i32, &2i16]),
            "SELECT (-7)::int4::int8+2::int2"
        );
        assert_eq!(m("SELECT$1", &[&1i32]), "SELECT$1", "a name: `select$1`");
        assert_eq!(m("SELECT x=$1", &[&true]), "SELECT x=true");
        assert_eq!(m("SELECT ($1)", &[&false]), "SELECT (false)");
        assert_eq!(m("SELECT $01", &[&1i32]), "SELECT 1::int4");
        assert_eq!(m("", &[]), "");
        assert_eq!(
            m("no params", &[&1i32]),
            "no params",
            "unused parameters are fine"
        );
    }

    #[test]
    fn placeholders_inside_strings_are_text() {
        let p: &[&(dyn ToSql + Sync)] = &[&1i32];
        assert_eq!(m("SELECT '$1', $1", p), "SELECT '$1', 1::int4");
        assert_eq!(m("SELECT 'it''s $1', $1", p), "SELECT 'it''s $1', 1::int4");
        // With standard_conforming_strings on, a backslash is just a character.
        assert_eq!(m(r"SELECT '\', $1", p), r"SELECT '\', 1::int4");
        // Off, it escapes the quote: the string runs on.
        assert_eq!(
            mogrify(r"SELECT '\', $1'", p, false).unwrap(),
            r"SELECT '\', $1'"
        );
        assert_eq!(
            mogrify(r"SELECT '\\', $1", p, false).unwrap(),
            r"SELECT '\\', 1::int4"
        );
        // Escape strings escape in both modes.
        for scs in [true, false] {
            assert_eq!(
                mogrify(r"SELECT E'\', $1', $1", p, scs).unwrap(),
                r"SELECT E'\', $1', 1::int4"
            );
            assert_eq!(
                mogrify(r"SELECT e'\\', $1", p, scs).unwrap(),
                r"SELECT e'\\', 1::int4"
            );
            assert_eq!(
                mogrify(r"SELECT E'''$1', $1", p, scs).unwrap(),
                r"SELECT E'''$1', 1::int4"
            );
        }
        // A name ending in e is not an escape-string prefix.
        assert_eq!(m(r"SELECT some'\', $1", p), r"SELECT some'\', 1::int4");
        // Other prefixes are plain strings.
        assert_eq!(
            m("SELECT B'1', X'$1', N'$1', U&'$1', $1", p),
            "SELECT B'1', X'$1', N'$1', U&'$1', 1::int4"
        );
        // Unterminated: the rest is string.
        assert_eq!(m("SELECT 'abc $1", p), "SELECT 'abc $1");
    }

    #[test]
    fn string_continuation_keeps_escape_rules() {
        let p: &[&(dyn ToSql + Sync)] = &[&1i32];
        // `E'a'` newline `'\' $1'` is one escape string: the `\'` does not close it.
        assert_eq!(
            m("SELECT E'a'\n'\\' $1', $1", p),
            "SELECT E'a'\n'\\' $1', 1::int4"
        );
        assert_eq!(
            m("SELECT E'a' -- c\n  -- d\n'\\' $1', $1", p),
            "SELECT E'a' -- c\n  -- d\n'\\' $1', 1::int4"
        );
        // Without a newline, two strings: the second is a plain one.
        assert_eq!(m("SELECT E'a' '\\' $1", p), "SELECT E'a' '\\' 1::int4");
    }

    #[test]
    fn placeholders_inside_identifiers_comments_and_dollar_quotes_are_text() {
        let p: &[&(dyn ToSql + Sync)] = &[&1i32, &2i32];
        assert_eq!(
            m(r#"SELECT "$1", "a""$1", $2"#, p),
            r#"SELECT "$1", "a""$1", 2::int4"#
        );
        assert_eq!(
            m("SELECT $1 -- $2\n, $2", p),
            "SELECT 1::int4 -- $2\n, 2::int4"
        );
        assert_eq!(
            m("SELECT $1 -- $2\r, $2", p),
            "SELECT 1::int4 -- $2\r, 2::int4"
        );
        assert_eq!(m("SELECT 1 -- $2", p), "SELECT 1 -- $2");
        assert_eq!(m("SELECT /* $1 */ $2", p), "SELECT /* $1 */ 2::int4");
        assert_eq!(
            m("SELECT /* a /* $1 */ $1 */ $2", p),
            "SELECT /* a /* $1 */ $1 */ 2::int4"
        );
        assert_eq!(
            m("SELECT /* /* */ $1", p),
            "SELECT /* /* */ $1",
            "still inside"
        );
        assert_eq!(m("SELECT 1 /*/ $1 */ $2", p), "SELECT 1 /*/ $1 */ 2::int4");
        assert_eq!(m("SELECT $$ $1 $$, $2", p), "SELECT $$ $1 $$, 2::int4");
        assert_eq!(
            m("SELECT $a$ $1 $$ $b$ $a$, $2", p),
            "SELECT $a$ $1 $$ $b$ $a$, 2::int4"
        );
        assert_eq!(
            m("SELECT $é_1$ $1 $é_1$, $2", p),
            "SELECT $é_1$ $1 $é_1$, 2::int4"
        );
        assert_eq!(
            m("SELECT $$ unterminated $1", p),
            "SELECT $$ unterminated $1"
        );
        // `$1$` is not a tag: tags cannot start with a digit.
        assert_eq!(m("SELECT $1$", p), "SELECT 1::int4$");
        // A lone `$` or `$name` without a closing `$` is not a quote.
        assert_eq!(m("SELECT $a $1", p), "SELECT $a 1::int4");
        // Names run over `$` and digits.
        assert_eq!(
            m("SELECT a$1, é$1, _$1, $2", p),
            "SELECT a$1, é$1, _$1, 2::int4"
        );
        // Nothing glues to what precedes it.
        assert_eq!(m("SELECT 1$1", p), "SELECT 1 1::int4");
        assert_eq!(m("SELECT u&$1", &[&"x"]), "SELECT u& 'x'::text");
        assert_eq!(m("SELECT 'a'$1", &[&"x"]), "SELECT 'a' 'x'::text");
        // String after an identifier-quoted name, operators, casts.
        assert_eq!(m("SELECT $1||'$2'::text", p), "SELECT 1::int4||'$2'::text");
    }

    #[test]
    fn subscripts_and_fields_get_parentheses() {
        let v = vec![1i32, 2];
        assert_eq!(m("SELECT $1[1]", &[&v]), "SELECT (ARRAY[1, 2]::int4[])[1]");
        assert_eq!(
            m("SELECT $1 [1]", &[&v]),
            "SELECT (ARRAY[1, 2]::int4[]) [1]"
        );
        assert_eq!(m("SELECT $1.f", &[&1i32]), "SELECT (1::int4).f");
        assert_eq!(m("SELECT $1, 1", &[&1i32]), "SELECT 1::int4, 1");
    }

    #[test]
    fn bad_placeholders_are_encode_errors() {
        let e = err("SELECT $0", &[&1i32]);
        assert!(e.contains("$0"), "{e}");
        let e = err("SELECT $1, $3", &[&1i32, &2i32]);
        assert!(e.contains("$3") && e.contains("2 parameters"), "{e}");
        let e = err("SELECT $1", &[]);
        assert!(e.contains("$1") && e.contains("0 parameters"), "{e}");
        let e = err("SELECT $99999999999999999999999", &[&1i32]);
        assert!(e.contains("1 parameter was given"), "{e}");
        let e = err("SELECT $1abc", &[&1i32]);
        assert!(e.contains("$1") && e.contains("name"), "{e}");
        // Out-of-range placeholders in text are fine.
        assert_eq!(m("SELECT '$0', '$9'", &[]), "SELECT '$0', '$9'");
    }

    // --- rendering ---

    #[test]
    fn scalars_render_with_casts() {
        assert_eq!(lit(&true), "true");
        assert_eq!(lit(&false), "false");
        assert_eq!(lit(&5i16), "5::int2");
        assert_eq!(lit(&i16::MIN), "(-32768)::int2");
        assert_eq!(lit(&i32::MAX), "2147483647::int4");
        assert_eq!(lit(&i64::MIN), "(-9223372036854775808)::int8");
        assert_eq!(lit(&-5i8), "(-5)::\"char\"");
        assert_eq!(lit(&65i8), "65::\"char\"");
        assert_eq!(lit(&u32::MAX), "'4294967295'::oid");
        assert_eq!(lit(&1.5f64), "'1.5'::float8");
        assert_eq!(lit(&0.1f64), "'0.1'::float8");
        assert_eq!(lit(&-0.0f64), "'-0.0'::float8");
        assert_eq!(lit(&f64::NAN), "'NaN'::float8");
        assert_eq!(lit(&f64::INFINITY), "'Infinity'::float8");
        assert_eq!(lit(&f64::NEG_INFINITY), "'-Infinity'::float8");
        assert_eq!(lit(&5e-324f64), "'5e-324'::float8");
        assert_eq!(lit(&1e300f64), "'1e300'::float8");
        assert_eq!(lit(&0.1f32), "'0.1'::float4");
        assert_eq!(lit(&f32::MIN_POSITIVE), "'1.1754944e-38'::float4");
        assert_eq!(lit(&f32::NAN), "'NaN'::float4");
        assert_eq!(lit(&-0.0f32), "'-0.0'::float4");
    }

    #[test]
    fn nulls_keep_their_type() {
        assert_eq!(lit(&None::<i32>), "NULL::int4");
        assert_eq!(lit(&None::<bool>), "NULL::bool");
        assert_eq!(lit(&None::<&str>), "NULL::text");
        assert_eq!(lit(&None::<Vec<u8>>), "NULL::bytea");
        assert_eq!(lit(&None::<Vec<i64>>), "NULL::int8[]");
        assert_eq!(lit(&None::<i8>), "NULL::\"char\"");
        assert_eq!(lit(&Some(3i64)), "3::int8");
    }

    #[test]
    fn strings_follow_standard_conforming_strings() {
        assert_eq!(lit(&"it's"), "'it''s'::text");
        assert_eq!(lit(&String::from("a\\b")), r"'a\b'::text");
        assert_eq!(lit_off(&"a\\b'c"), r"E'a\\b''c'::text");
        assert_eq!(lit_off(&"no backslash: '"), "'no backslash: '''::text");
        assert_eq!(lit(&"héllo ✓ 𝄞 \n\t\r"), "'héllo ✓ 𝄞 \n\t\r'::text");
        assert_eq!(lit(&""), "''::text");
        assert_eq!(lit(&r"E'\x41'"), r"'E''\x41'''::text");
        assert_eq!(lit_off(&r"E'\x41'"), r"E'E''\\x41'''::text");
    }

    #[test]
    fn nul_in_text_is_a_clear_error() {
        for v in [&"a\0b" as &(dyn ToSql + Sync), &vec!["ok", "a\0"]] {
            let e = mogrify("SELECT $1", &[v], true).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Encode);
            let text = e.to_string();
            assert!(text.contains("$1") && text.contains("NUL"), "{text}");
            assert!(!text.contains("a\0"), "no value in messages: {text}");
        }
    }

    #[test]
    fn bytea_is_hex() {
        let v: Vec<u8> = vec![0, 0x0a, 0xff];
        assert_eq!(lit(&v), r"'\x000aff'::bytea");
        assert_eq!(lit_off(&v), r"E'\\x000aff'::bytea");
        assert_eq!(lit(&&b""[..]), r"'\x'::bytea");
    }

    #[test]
    fn arrays_use_the_constructor() {
        assert_eq!(lit(&vec![1i32, -2]), "ARRAY[1, -2]::int4[]");
        assert_eq!(lit(&Vec::<i32>::new()), "ARRAY[]::int4[]");
        assert_eq!(lit(&vec![Some(1i64), None]), "ARRAY[1, NULL]::int8[]");
        assert_eq!(lit(&vec![None::<i64>]), "ARRAY[NULL]::int8[]");
        assert_eq!(
            lit(&vec!["a'b", "{\"c\"}", "NULL", ""]),
            r#"ARRAY['a''b', '{"c"}', 'NULL', '']::text[]"#
        );
        assert_eq!(lit_off(&vec!["a\\"]), r"ARRAY[E'a\\']::text[]");
        assert_eq!(lit(&vec![true, false]), "ARRAY[true, false]::bool[]");
        assert_eq!(lit(&vec![f32::NAN, -0.0]), "ARRAY['NaN', '-0.0']::float4[]");
        assert_eq!(lit(&vec![-1i8, 0]), "ARRAY[-1, 0]::\"char\"[]");
        assert_eq!(lit(&vec![vec![1u8]]), r"ARRAY['\x01']::bytea[]");
        assert_eq!(lit(&&[1i16][..]), "ARRAY[1]::int2[]");
    }

    fn array_bytes(elem: &Type, dims: &[(i32, i32)], values: &[Option<i32>]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i32(dims.len() as i32);
        b.put_i32(i32::from(values.iter().any(Option::is_none)));
        b.put_u32(elem.oid());
        for &(len, lower) in dims {
            b.put_i32(len);
            b.put_i32(lower);
        }
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(4);
                    b.put_i32(*v);
                }
                None => b.put_i32(-1),
            }
        }
        b.to_vec()
    }

    #[test]
    fn multidimensional_arrays_nest() {
        let raw = array_bytes(
            &Type::INT4,
            &[(2, 1), (3, 1)],
            &[Some(1), Some(2), Some(3), Some(4), None, Some(6)],
        );
        assert_eq!(
            bin(Type::INT4_ARRAY, &raw),
            "ARRAY[[1, 2, 3], [4, NULL, 6]]::int4[]"
        );
        let raw = array_bytes(&Type::INT4, &[], &[]);
        assert_eq!(bin(Type::INT4_ARRAY, &raw), "ARRAY[]::int4[]");
        let raw = array_bytes(&Type::INT4, &[(2, 0)], &[Some(1), Some(2)]);
        let e = literal(&Raw::new(Type::INT4_ARRAY, raw), true).unwrap_err();
        assert!(e.to_string().contains("lower bound"), "{e}");
        let raw = array_bytes(&Type::INT4, &[(3, 1)], &[Some(1), Some(2)]);
        assert!(literal(&Raw::new(Type::INT4_ARRAY, raw), true).is_err());
    }

    #[test]
    fn times_dates_and_intervals() {
        let day = 86_400i64 * 1_000_000;
        let ts = |us: i64| us.to_be_bytes();
        assert_eq!(bin(Type::DATE, &0i32.to_be_bytes()), "'2000-01-01'::date");
        assert_eq!(
            bin(Type::DATE, &(-10_957i32).to_be_bytes()),
            "'1970-01-01'::date"
        );
        assert_eq!(
            bin(Type::DATE, &(-2_451_545i32).to_be_bytes()),
            "'4714-11-24 BC'::date"
        );
        assert_eq!(
            bin(Type::DATE, &(-730_119i32).to_be_bytes()),
            "'0001-01-01'::date"
        );
        assert_eq!(
            bin(Type::DATE, &(-730_120i32).to_be_bytes()),
            "'0001-12-31 BC'::date"
        );
        assert_eq!(bin(Type::DATE, &i32::MAX.to_be_bytes()), "'infinity'::date");
        assert_eq!(
            bin(Type::DATE, &i32::MIN.to_be_bytes()),
            "'-infinity'::date"
        );
        assert_eq!(
            bin(Type::DATE, &2_921_940i32.to_be_bytes()),
            "'10000-01-01'::date"
        );
        assert_eq!(bin(Type::TIME, &ts(0)), "'00:00:00'::time");
        assert_eq!(bin(Type::TIME, &ts(day)), "'24:00:00'::time");
        assert_eq!(
            bin(Type::TIME, &ts(3_723_000_450)),
            "'01:02:03.00045'::time"
        );
        assert!(literal(&Raw::new(Type::TIME, ts(-1)), true).is_err());
        let mut tz = ts(43_200_000_000).to_vec();
        tz.extend_from_slice(&(-19_815i32).to_be_bytes());
        assert_eq!(bin(Type::TIMETZ, &tz), "'12:00:00+05:30:15'::timetz");
        let mut tz = ts(1).to_vec();
        tz.extend_from_slice(&3600i32.to_be_bytes());
        assert_eq!(bin(Type::TIMETZ, &tz), "'00:00:00.000001-01:00'::timetz");
        assert_eq!(
            bin(Type::TIMESTAMP, &ts(0)),
            "'2000-01-01 00:00:00'::timestamp"
        );
        assert_eq!(
            bin(Type::TIMESTAMP, &ts(-1)),
            "'1999-12-31 23:59:59.999999'::timestamp"
        );
        assert_eq!(
            bin(Type::TIMESTAMPTZ, &ts(day + 500_000)),
            "'2000-01-02 00:00:00.5+00'::timestamptz"
        );
        assert_eq!(
            bin(Type::TIMESTAMPTZ, &ts(-211_813_488_000_000_000)),
            "'4714-11-24 00:00:00+00 BC'::timestamptz"
        );
        assert_eq!(bin(Type::TIMESTAMP, &ts(i64::MAX)), "'infinity'::timestamp");
        assert_eq!(
            bin(Type::TIMESTAMPTZ, &ts(i64::MIN)),
            "'-infinity'::timestamptz"
        );
        let interval = |us: i64, d: i32, mo: i32| {
            let mut v = us.to_be_bytes().to_vec();
            v.extend_from_slice(&d.to_be_bytes());
            v.extend_from_slice(&mo.to_be_bytes());
            bin(Type::INTERVAL, &v)
        };
        assert_eq!(interval(0, 0, 0), "'00:00:00'::interval");
        assert_eq!(
            interval(3_723_500_000, -2, 14),
            "'+14 mons -2 days +01:02:03.5'::interval"
        );
        assert_eq!(interval(-1, 0, 0), "'-00:00:00.000001'::interval");
        assert_eq!(
            interval(i64::MIN, 0, -1),
            "'-1 mons -9223372036854775808 microseconds'::interval"
        );
        assert_eq!(
            interval(i64::MAX, 0, 0),
            "'+2562047788:00:54.775807'::interval"
        );
        assert_eq!(
            interval(i64::MAX, i32::MAX, i32::MAX),
            "'infinity'::interval"
        );
        assert_eq!(
            interval(i64::MIN, i32::MIN, i32::MIN),
            "'-infinity'::interval"
        );
    }

    #[test]
    fn system_time_is_a_utc_timestamptz() {
        assert_eq!(lit(&UNIX_EPOCH), "'1970-01-01 00:00:00+00'::timestamptz");
        let t = UNIX_EPOCH + Duration::from_micros(946_684_800_000_001);
        assert_eq!(lit(&t), "'2000-01-01 00:00:00.000001+00'::timestamptz");
        assert_eq!(
            lit(&vec![UNIX_EPOCH]),
            "ARRAY['1970-01-01 00:00:00+00']::timestamptz[]"
        );
        let _ = SystemTime::now();
    }

    #[test]
    fn numeric_keeps_its_scale() {
        let num = |ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]| {
            let mut v = Vec::new();
            for w in [ndigits, weight as u16, sign, dscale].iter().chain(digits) {
                v.extend_from_slice(&w.to_be_bytes());
            }
            bin(Type::NUMERIC, &v)
        };
        assert_eq!(num(0, 0, 0, 0, &[]), "'0'::numeric");
        assert_eq!(num(0, 0, 0, 2, &[]), "'0.00'::numeric");
        assert_eq!(num(2, 0, 0x4000, 2, &[12, 3400]), "'-12.34'::numeric");
        assert_eq!(num(2, 1, 0, 0, &[1, 0]), "'10000'::numeric");
        assert_eq!(num(1, 2, 0, 0, &[5]), "'500000000'::numeric");
        assert_eq!(num(1, -2, 0, 8, &[5]), "'0.00000005'::numeric");
        assert_eq!(num(1, -1, 0, 5, &[1234]), "'0.12340'::numeric");
        assert_eq!(num(0, 0, 0xC000, 0, &[]), "'NaN'::numeric");
        assert_eq!(num(0, 0, 0xD000, 0, &[]), "'Infinity'::numeric");
        assert_eq!(num(0, 0, 0xF000, 0, &[]), "'-Infinity'::numeric");
        assert!(literal(
            &Raw::new(Type::NUMERIC, [0u8, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10]),
            true
        )
        .is_err());
    }

    #[test]
    fn other_scalar_types() {
        let uuid: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            bin(Type::UUID, &uuid),
            "'00010203-0405-0607-0809-0a0b0c0d0e0f'::uuid"
        );
        assert_eq!(
            bin(Type::JSON, br#"{"a": "it's"}"#),
            r#"'{"a": "it''s"}'::json"#
        );
        assert_eq!(
            bin(Type::JSONB, b"\x01[1, \"\\\\\"]"),
            r#"'[1, "\\"]'::jsonb"#
        );
        assert_eq!(
            lit_off(&Raw::new(Type::JSONB, &b"\x01\"\\\\\""[..])),
            r#"E'"\\\\"'::jsonb"#
        );
        assert!(literal(&Raw::new(Type::JSONB, &b"\x02{}"[..]), true).is_err());
        assert_eq!(
            lit(&"1.2.3.4".parse::<IpAddr>().unwrap()),
            "'1.2.3.4/32'::inet"
        );
        assert_eq!(lit(&"::1".parse::<IpAddr>().unwrap()), "'::1/128'::inet");
        assert_eq!(
            bin(Type::CIDR, &[2, 8, 1, 4, 10, 0, 0, 0]),
            "'10.0.0.0/8'::cidr"
        );
        assert_eq!(
            bin(Type::MACADDR, &[8, 0, 0x2b, 1, 2, 3]),
            "'08:00:2b:01:02:03'::macaddr"
        );
        assert_eq!(
            bin(Type::MACADDR8, &[8, 0, 0x2b, 1, 2, 3, 4, 5]),
            "'08:00:2b:01:02:03:04:05'::macaddr8"
        );
        assert_eq!(
            bin(Type::VARBIT, &[0, 0, 0, 10, 0b1010_0000, 0b0100_0000]),
            "'1010000001'::varbit"
        );
        assert_eq!(bin(Type::BIT, &[0, 0, 0, 0]), "''::\"bit\"");
        let mut point = 1.5f64.to_be_bytes().to_vec();
        point.extend_from_slice(&(-0.0f64).to_be_bytes());
        assert_eq!(bin(Type::POINT, &point), "'(1.5,-0.0)'::point");
        let mut bx = point.clone();
        bx.extend_from_slice(&point);
        assert_eq!(bin(Type::BOX, &bx), "'(1.5,-0.0),(1.5,-0.0)'::box");
        let mut path = vec![1u8, 0, 0, 0, 2];
        path.extend_from_slice(&bx);
        assert_eq!(bin(Type::PATH, &path), "'((1.5,-0.0),(1.5,-0.0))'::path");
        path[0] = 0;
        assert_eq!(bin(Type::PATH, &path), "'[(1.5,-0.0),(1.5,-0.0)]'::path");
        assert_eq!(
            bin(Type::PG_LSN, &0x16_B374_D848u64.to_be_bytes()),
            "'16/B374D848'::pg_lsn"
        );
        assert_eq!(bin(Type::NAME, b"n"), "'n'::name");
        let mut with_oid = Raw::new(Type::INT4, &b"12"[..]);
        with_oid.text = true;
        assert_eq!(
            lit(&with_oid),
            "'12'::int4",
            "text-format parameters are input text already"
        );
    }

    #[test]
    fn ranges() {
        // Lower inclusive (0x02), upper exclusive: 1 and 5.
        let mut r = vec![0x02u8];
        r.extend_from_slice(&4i32.to_be_bytes());
        r.extend_from_slice(&1i32.to_be_bytes());
        r.extend_from_slice(&4i32.to_be_bytes());
        r.extend_from_slice(&5i32.to_be_bytes());
        assert_eq!(bin(Type::INT4_RANGE, &r), r#"'["1","5")'::int4range"#);
        assert_eq!(bin(Type::INT4_RANGE, &[0x01]), "'empty'::int4range");
        // Lower unbounded (0x08), upper inclusive (0x04).
        let mut r = vec![0x08 | 0x04];
        r.extend_from_slice(&8i32.to_be_bytes());
        r.extend_from_slice(&0i64.to_be_bytes());
        assert_eq!(
            bin(Type::TSTZ_RANGE, &r),
            r#"'(,"2000-01-01 00:00:00+00"]'::tstzrange"#
        );
        let mut arr = BytesMut::new();
        arr.put_i32(1);
        arr.put_i32(0);
        arr.put_u32(Type::TSTZ_RANGE.oid());
        arr.put_i32(1);
        arr.put_i32(1);
        arr.put_i32(r.len() as i32);
        arr.extend_from_slice(&r);
        assert_eq!(
            bin(Type::TSTZ_RANGE_ARRAY, &arr),
            r#"ARRAY['(,"2000-01-01 00:00:00+00"]']::tstzrange[]"#
        );
    }

    #[test]
    fn hstore_by_name() {
        let mut h: HashMap<String, Option<String>> = HashMap::new();
        h.insert("k\"'".into(), Some("v\\".into()));
        assert_eq!(lit(&h), r#"'"k\"''"=>"v\\"'::hstore"#);
        h.clear();
        h.insert("n".into(), None);
        assert_eq!(lit(&h), r#"'"n"=>NULL'::hstore"#);
        assert_eq!(lit_off(&h), r#"'"n"=>NULL'::hstore"#);
    }

    #[test]
    fn unknown_types_and_failed_encodings_name_the_parameter() {
        let e = mogrify(
            "SELECT $1, $2",
            &[&1i32, &Raw::new(Type::MONEY, [0u8; 8])],
            true,
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Encode);
        let text = e.to_string();
        assert!(
            text.contains("$2") && text.contains("cannot render"),
            "{text}"
        );
        let e = mogrify("SELECT $1", &[&Broken], true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Encode);
        assert!(
            e.to_string().contains("$1") && e.to_string().contains("broken on purpose"),
            "{e}"
        );
        // Never used, never rendered.
        assert_eq!(m("SELECT $1", &[&1i32, &Broken]), "SELECT 1::int4");
        let e = literal(&Raw::new(Type::INT4, [0u8; 3]), true).unwrap_err();
        assert!(e.to_string().contains("int4"), "{e}");
    }

    #[test]
    fn calendar_matches_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(PG_EPOCH_DAYS), (2000, 1, 1));
        assert_eq!(civil_from_days(PG_EPOCH_DAYS + 59), (2000, 2, 29));
        assert_eq!(civil_from_days(-719_528), (0, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    // --- properties ---

    /// Hinnant's `days_from_civil`, the inverse of `civil_from_days`.
    fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let m = i64::from(m);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    fn days_in_month(y: i64, m: u32) -> u32 {
        match m {
            2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    /// Reads back a string constant (`'...'` or `E'...'`) at the start of `s`; returns the text
    /// and the rest.
    fn unquote(s: &str, scs: bool) -> (String, &str) {
        let (escape, body) = match s.strip_prefix("E'") {
            Some(body) => (true, body),
            None => (!scs, s.strip_prefix('\'').expect("a quote")),
        };
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' if escape => out.push(chars.next().expect("escaped char").1),
                '\'' => {
                    if body[i + 1..].starts_with('\'') {
                        chars.next();
                        out.push('\'');
                    } else {
                        return (out, &body[i + 1..]);
                    }
                }
                c => out.push(c),
            }
        }
        panic!("unterminated: {s}")
    }

    fn tricky_string() -> impl Strategy<Value = String> + Clone {
        prop::collection::vec(
            prop_oneof![
                Just("'".to_string()),
                Just("\\".to_string()),
                Just("E'".to_string()),
                Just("$1".to_string()),
                Just("$$".to_string()),
                Just("--".to_string()),
                Just("/*".to_string()),
                Just("*/".to_string()),
                Just("\"".to_string()),
                Just("\n".to_string()),
                any::<char>()
                    .prop_filter("no NUL", |c| *c != '\0')
                    .prop_map(String::from),
                "[a-z é✓]{0,3}",
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat())
    }

    /// A piece of SQL the scanner must leave alone, holding things that look like placeholders.
    fn opaque(scs: bool) -> impl Strategy<Value = String> {
        let body = tricky_string();
        prop_oneof![
            body.clone().prop_map(move |s| {
                let s = s.replace('\'', "''");
                let s = if scs { s } else { s.replace('\\', "\\\\") };
                format!("'{s}'")
            }),
            body.clone()
                .prop_map(|s| format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))),
            body.clone()
                .prop_map(|s| format!("\"{}\"", s.replace('"', "\"\""))),
            (body.clone(), "[a-z_]{0,3}").prop_map(|(s, tag)| {
                let s = s.replace('$', "¤");
                format!("${tag}${s}${tag}$")
            }),
            body.clone()
                .prop_map(|s| format!("--{}\n", s.replace(['\n', '\r'], " "))),
            (body.clone(), body).prop_map(|(a, b)| {
                let clean = |s: String| s.replace("/*", "/ *").replace("*/", "* /");
                // Spaces around, so that no `/*` or `*/` forms across the edges.
                let (a, b) = (clean(a), clean(b));
                format!("/* {a} /* {b} */ {a} */")
            }),
            "[a-z_][a-z0-9_$]{0,4}\\$[0-9]",
            Just("::int8".to_string()),
            Just("+".to_string()),
            Just("(".to_string()),
        ]
    }

    #[derive(Debug, Clone)]
    enum Piece {
        Param(usize),
        Opaque(String),
    }

    fn statement(scs: bool) -> impl Strategy<Value = Vec<Piece>> {
        prop::collection::vec(
            prop_oneof![
                (0usize..3).prop_map(Piece::Param),
                opaque(scs).prop_map(Piece::Opaque),
            ],
            0..10,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn scanner_replaces_exactly_the_real_placeholders(scs in any::<bool>(), pieces in statement(true), pieces_off in statement(false)) {
            let pieces = if scs { pieces } else { pieces_off };
            let params: [&(dyn ToSql + Sync); 3] = [&10i32, &"$1 'x' \\", &vec![None::<i64>]];
            let mut sql = String::new();
            let mut expected = String::new();
            for p in &pieces {
                // A separator that is neither whitespace nor a name, so that no two pieces
                // merge (a string continuation needs only whitespace between).
                sql.push_str(" , ");
                expected.push_str(" , ");
                match p {
                    Piece::Param(k) => {
                        sql.push_str(&format!("${}", k + 1));
                        expected.push_str(&literal(params[*k], scs).unwrap());
                    }
                    Piece::Opaque(s) => {
                        sql.push_str(s);
                        expected.push_str(s);
                    }
                }
            }
            let out = mogrify(&sql, &params, scs).unwrap();
            prop_assert_eq!(&out, &expected);
            // Rendered literals hide no placeholder of their own.
            prop_assert_eq!(mogrify(&out, &[], scs).unwrap(), out);
        }

        #[test]
        fn strings_read_back_and_hide_their_placeholders(s in tricky_string(), scs in any::<bool>()) {
            let l = literal(&s, scs).unwrap();
            let (text, rest) = unquote(&l, scs);
            prop_assert_eq!(&text, &s);
            prop_assert_eq!(rest, "::text");
            prop_assert_eq!(placeholders(&l, scs).unwrap(), vec![]);
            // With `false` the output reads the same under either setting.
            if !scs {
                prop_assert_eq!(unquote(&l, true).0, s);
            }
        }

        #[test]
        fn text_arrays_read_back(v in prop::collection::vec(prop::option::of(tricky_string()), 0..5), scs in any::<bool>()) {
            let l = literal(&v, scs).unwrap();
            let mut rest = l.strip_prefix("ARRAY[").unwrap();
            let mut back = Vec::new();
            while !rest.starts_with(']') {
                if let Some(r) = rest.strip_prefix("NULL") {
                    back.push(None);
                    rest = r;
                } else {
                    let (t, r) = unquote(rest, scs);
                    back.push(Some(t));
                    rest = r;
                }
                rest = rest.strip_prefix(", ").unwrap_or(rest);
            }
            prop_assert_eq!(rest, "]::text[]");
            prop_assert_eq!(back, v);
        }

        #[test]
        fn floats_read_back_bit_for_bit(bits in any::<u64>(), bits32 in any::<u32>()) {
            let v = f64::from_bits(bits);
            let text = float8_text(v);
            if v.is_nan() {
                prop_assert_eq!(text, "NaN");
            } else {
                prop_assert_eq!(text.replace("Infinity", "inf").parse::<f64>().unwrap().to_bits(), bits);
            }
            let v = f32::from_bits(bits32);
            let text = float4_text(v);
            if !v.is_nan() {
                prop_assert_eq!(text.replace("Infinity", "inf").parse::<f32>().unwrap().to_bits(), bits32);
            }
        }

        #[test]
        fn calendar_round_trips(days in -2_451_545i64..2_145_031_949) {
            let (y, m, d) = civil_from_days(days);
            prop_assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            prop_assert_eq!(days_from_civil(y, m, d), days);
            // The next day is the next calendar day.
            let (y2, m2, d2) = civil_from_days(days + 1);
            let expected = if d < days_in_month(y, m) { (y, m, d + 1) } else if m < 12 { (y, m + 1, 1) } else { (y + 1, 1, 1) };
            prop_assert_eq!((y2, m2, d2), expected);
        }

        #[test]
        fn integers_render_as_digits(v in any::<i64>(), w in any::<i16>()) {
            let l = lit(&v);
            let digits = l.trim_start_matches('(').split(')').next().unwrap().split("::").next().unwrap();
            prop_assert_eq!(digits.parse::<i64>().unwrap(), v);
            prop_assert_eq!(l.starts_with('('), v < 0);
            let l = lit(&w);
            prop_assert!(l.ends_with("::int2"));
        }
    }
}
