//! What `SAConnection::execute` takes: raw SQL (with parameters) or a sea-query statement.

use sea_query::{
    DeleteStatement, IndexCreateStatement, IndexDropStatement, InsertStatement,
    PostgresQueryBuilder, SelectStatement, TableAlterStatement, TableCreateStatement,
    TableDropStatement, TableTruncateStatement, UpdateStatement,
};
use sea_query_postgres::PostgresBinder;

use aiopg_conn::Param;

use crate::bind::Values;

/// A statement ready to run: its SQL and the values bound to its `$n` placeholders.
#[derive(Debug)]
pub enum Built<'a> {
    /// SQL written by hand, with borrowed parameters.
    Raw {
        /// The SQL, `$1`, `$2`, ... for parameters.
        sql: &'a str,
        /// The parameters.
        params: &'a [Param<'a>],
    },
    /// A query the builder made: placeholders and the values that go with them.
    Query {
        /// The SQL, with `$n` placeholders.
        sql: String,
        /// The values, bound as parameters (each checked against the parameter's type).
        values: Values,
    },
    /// A schema statement (DDL), which has no parameters.
    Schema(String),
}

impl Built<'_> {
    /// The SQL text.
    pub fn sql(&self) -> &str {
        match self {
            Built::Raw { sql, .. } => sql,
            Built::Query { sql, .. } => sql,
            Built::Schema(sql) => sql,
        }
    }
}

/// Anything [`SAConnection::execute`](crate::SAConnection::execute) runs: `&str` (no
/// parameters), `(&str, &[Param])`, or a sea-query statement built for PostgreSQL, whose
/// values are bound as parameters, never spliced into the SQL.
pub trait Executable {
    /// The statement's SQL and values.
    fn build(&self) -> Built<'_>;
}

impl Executable for str {
    fn build(&self) -> Built<'_> {
        Built::Raw {
            sql: self,
            params: &[],
        }
    }
}

impl Executable for String {
    fn build(&self) -> Built<'_> {
        self.as_str().build()
    }
}

impl<'p> Executable for (&'p str, &'p [Param<'p>]) {
    fn build(&self) -> Built<'_> {
        Built::Raw {
            sql: self.0,
            params: self.1,
        }
    }
}

macro_rules! query_statement {
    ($($t:ty),*) => {$(
        impl Executable for $t {
            fn build(&self) -> Built<'_> {
                let (sql, values) = self.build_postgres(PostgresQueryBuilder);
                Built::Query { sql, values: Values::new(values) }
            }
        }
    )*};
}

query_statement!(
    SelectStatement,
    InsertStatement,
    UpdateStatement,
    DeleteStatement
);

macro_rules! schema_statement {
    ($($t:ty),*) => {$(
        impl Executable for $t {
            fn build(&self) -> Built<'_> {
                Built::Schema(self.to_string(PostgresQueryBuilder))
            }
        }
    )*};
}

schema_statement!(
    TableCreateStatement,
    TableDropStatement,
    TableAlterStatement,
    TableTruncateStatement,
    IndexCreateStatement,
    IndexDropStatement
);

impl<T: Executable + ?Sized> Executable for &T {
    fn build(&self) -> Built<'_> {
        (**self).build()
    }
}
