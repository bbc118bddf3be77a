use std::fmt;
use std::io;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorFields;

use super::SqlState;

/// The severity of a server error or notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Severity {
    /// `PANIC`
    Panic,
    /// `FATAL`
    Fatal,
    /// `ERROR`
    Error,
    /// `WARNING`
    Warning,
    /// `NOTICE`
    Notice,
    /// `DEBUG`
    Debug,
    /// `INFO`
    Info,
    /// `LOG`
    Log,
}

impl Severity {
    fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "PANIC" => Severity::Panic,
            "FATAL" => Severity::Fatal,
            "ERROR" => Severity::Error,
            "WARNING" => Severity::Warning,
            "NOTICE" => Severity::Notice,
            "DEBUG" => Severity::Debug,
            "INFO" => Severity::Info,
            "LOG" => Severity::Log,
            _ => return None,
        })
    }
}

/// Where in the query text a server error points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorPosition {
    /// A 1-based character position in the statement the client sent.
    Original(u32),
    /// A position in a query the server generated internally (for example inside a PL/pgSQL
    /// function).
    Internal {
        /// The 1-based character position.
        position: u32,
        /// The internally generated query.
        query: String,
    },
}

/// An error or notice sent by the server, with every field the server filled in.
///
/// Field meanings are PostgreSQL's ("Error and Notice Message Fields" in the protocol
/// documentation).
#[derive(Clone, PartialEq, Eq)]
pub struct DbError {
    severity: String,
    parsed_severity: Option<Severity>,
    code: SqlState,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
    position: Option<ErrorPosition>,
    where_: Option<String>,
    schema: Option<String>,
    table: Option<String>,
    column: Option<String>,
    datatype: Option<String>,
    constraint: Option<String>,
    file: Option<String>,
    line: Option<u32>,
    routine: Option<String>,
}

impl DbError {
    /// Parses the fields of an `ErrorResponse` or `NoticeResponse` message.
    #[doc(hidden)]
    pub fn parse(fields: &mut ErrorFields<'_>) -> io::Result<DbError> {
        let mut severity = None;
        let mut parsed_severity = None;
        let mut code = None;
        let mut message = None;
        let mut detail = None;
        let mut hint = None;
        let mut normal_position = None;
        let mut internal_position = None;
        let mut internal_query = None;
        let mut where_ = None;
        let mut schema = None;
        let mut table = None;
        let mut column = None;
        let mut datatype = None;
        let mut constraint = None;
        let mut file = None;
        let mut line = None;
        let mut routine = None;

        while let Some(field) = fields.next()? {
            // The server's text is in its client_encoding, which aiopg pins to UTF8; a lossy
            // conversion keeps a stray byte from hiding the whole error.
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'S' => severity = Some(value),
                b'C' => code = Some(SqlState::from_code(&value)),
                b'M' => message = Some(value),
                b'D' => detail = Some(value),
                b'H' => hint = Some(value),
                b'P' => normal_position = Some(parse_u32(&value, "P")?),
                b'p' => internal_position = Some(parse_u32(&value, "p")?),
                b'q' => internal_query = Some(value),
                b'W' => where_ = Some(value),
                b's' => schema = Some(value),
                b't' => table = Some(value),
                b'c' => column = Some(value),
                b'd' => datatype = Some(value),
                b'n' => constraint = Some(value),
                b'F' => file = Some(value),
                b'L' => line = Some(parse_u32(&value, "L")?),
                b'R' => routine = Some(value),
                b'V' => parsed_severity = Severity::parse(&value),
                // Fields added by later servers are ignored, as the protocol asks.
                _ => {}
            }
        }

        let missing = |f: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("error response without the `{f}` field"),
            )
        };
        let severity = severity.ok_or_else(|| missing("S"))?;
        let parsed_severity = parsed_severity.or_else(|| Severity::parse(&severity));
        let position = match normal_position {
            Some(p) => Some(ErrorPosition::Original(p)),
            None => match internal_position {
                Some(position) => Some(ErrorPosition::Internal {
                    position,
                    query: internal_query.ok_or_else(|| missing("q"))?,
                }),
                None => None,
            },
        };
        Ok(DbError {
            severity,
            parsed_severity,
            code: code.ok_or_else(|| missing("C"))?,
            message: message.ok_or_else(|| missing("M"))?,
            detail,
            hint,
            position,
            where_,
            schema,
            table,
            column,
            datatype,
            constraint,
            file,
            line,
            routine,
        })
    }

    /// The severity as the server sent it (possibly localized).
    pub fn severity(&self) -> &str {
        &self.severity
    }
    /// The severity, parsed from its non-localized form when the server sent it.
    pub fn parsed_severity(&self) -> Option<Severity> {
        self.parsed_severity
    }
    /// The SQLSTATE code.
    pub fn code(&self) -> &SqlState {
        &self.code
    }
    /// The primary, human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// An optional secondary message with more detail.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
    /// An optional suggestion of what to do about the problem.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
    /// Where in the query the error occurred.
    pub fn position(&self) -> Option<&ErrorPosition> {
        self.position.as_ref()
    }
    /// The context in which the error occurred (a call stack of PL functions, for example).
    pub fn where_(&self) -> Option<&str> {
        self.where_.as_deref()
    }
    /// The schema of the object the error is about.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }
    /// The table the error is about.
    pub fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }
    /// The column the error is about.
    pub fn column(&self) -> Option<&str> {
        self.column.as_deref()
    }
    /// The data type the error is about.
    pub fn datatype(&self) -> Option<&str> {
        self.datatype.as_deref()
    }
    /// The constraint the error is about.
    pub fn constraint(&self) -> Option<&str> {
        self.constraint.as_deref()
    }
    /// The server source file that reported the error.
    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }
    /// The line in that source file.
    pub fn line(&self) -> Option<u32> {
        self.line
    }
    /// The server routine that reported the error.
    pub fn routine(&self) -> Option<&str> {
        self.routine.as_deref()
    }
}

fn parse_u32(value: &str, field: &str) -> io::Result<u32> {
    value.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("error response field `{field}` is not a number"),
        )
    })
}

impl fmt::Debug for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("DbError");
        d.field("severity", &self.severity)
            .field("code", &self.code)
            .field("message", &self.message);
        macro_rules! opt {
            ($($name:ident),*) => {$(
                if let Some(v) = &self.$name { d.field(stringify!($name), v); }
            )*};
        }
        opt!(
            detail, hint, position, where_, schema, table, column, datatype, constraint, file,
            line, routine
        );
        d.finish()
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity,
            self.message,
            self.code.code()
        )?;
        if let Some(d) = &self.detail {
            write!(f, "\nDETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DbError {}
