//! Looking up types the client does not know (enums, composites, domains, ranges, arrays of
//! them, extension types such as hstore) in the server's catalog, once per connection.

use std::future::Future;
use std::pin::Pin;

use aiopg_core::types::{Field, Kind, Oid, Type};
use aiopg_core::{Error, Result};

use crate::Connection;

const TYPE_SQL: &str = "SELECT t.typname::text, t.typtype, t.typcategory, t.typelem, \
     t.typbasetype, t.typrelid, n.nspname::text, r.rngsubtype \
     FROM pg_catalog.pg_type t \
     JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
     LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid \
     WHERE t.oid = $1";
const ENUM_SQL: &str = "SELECT enumlabel::text FROM pg_catalog.pg_enum \
     WHERE enumtypid = $1 ORDER BY enumsortorder";
const FIELDS_SQL: &str = "SELECT attname::text, atttypid FROM pg_catalog.pg_attribute \
     WHERE attrelid = $1 AND NOT attisdropped AND attnum > 0 ORDER BY attnum";

/// Types nest (arrays of composites of domains...); past this depth the catalog is cyclic or
/// absurd, and the lookup stops with an error instead of recursing forever.
const MAX_DEPTH: usize = 16;

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Closes a prepared statement on the server unless defused (the statement got its handle).
pub(crate) struct CloseOnDrop<'a> {
    conn: &'a Connection,
    name: Option<String>,
}

impl<'a> CloseOnDrop<'a> {
    pub(crate) fn new(conn: &'a Connection, name: String) -> Self {
        CloseOnDrop {
            conn,
            name: Some(name),
        }
    }
    pub(crate) fn defuse(mut self) -> String {
        self.name.take().unwrap_or_default()
    }
}

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            self.conn.shared.lock().statements.close_later(name);
        }
    }
}

impl Connection {
    /// The full type for `ty`: itself when the client knows it, else looked up in the
    /// catalog (and remembered for the connection's life).
    pub(crate) async fn resolve_type(&self, ty: Type) -> Result<Type> {
        if Type::from_oid(ty.oid()).is_some() {
            return Ok(ty);
        }
        self.lookup(ty.oid(), 0).await
    }

    fn lookup(&self, oid: Oid, depth: usize) -> BoxFut<'_, Result<Type>> {
        Box::pin(async move {
            if let Some(t) = Type::from_oid(oid) {
                return Ok(t);
            }
            if let Some(t) = self.shared.lock().types.get(&oid) {
                return Ok(t.clone());
            }
            if depth > MAX_DEPTH {
                return Err(Error::protocol(format!(
                    "type {oid} nests deeper than {MAX_DEPTH} levels"
                )));
            }
            let rows = self.query(TYPE_SQL, &[&oid]).await?;
            let row = rows
                .first()
                .ok_or_else(|| Error::protocol(format!("the server has no type with OID {oid}")))?;
            let name: String = row.try_get(0)?;
            let typtype: i8 = row.try_get(1)?;
            let category: i8 = row.try_get(2)?;
            let elem: Oid = row.try_get(3)?;
            let base: Oid = row.try_get(4)?;
            let relid: Oid = row.try_get(5)?;
            let schema: String = row.try_get(6)?;
            let range_sub: Option<Oid> = row.try_get(7)?;
            let kind = match typtype as u8 {
                b'e' => {
                    let labels = self.query(ENUM_SQL, &[&oid]).await?;
                    Kind::Enum(
                        labels
                            .iter()
                            .map(|r| r.try_get::<String>(0))
                            .collect::<Result<_>>()?,
                    )
                }
                b'c' => {
                    let attrs = self.query(FIELDS_SQL, &[&relid]).await?;
                    let mut fields = Vec::with_capacity(attrs.len());
                    for a in &attrs {
                        let fname: String = a.try_get(0)?;
                        let ftype: Oid = a.try_get(1)?;
                        fields.push(Field::new(fname, self.lookup(ftype, depth + 1).await?));
                    }
                    Kind::Composite(fields)
                }
                b'd' => Kind::Domain(self.lookup(base, depth + 1).await?),
                b'r' => match range_sub {
                    Some(sub) => Kind::Range(self.lookup(sub, depth + 1).await?),
                    None => Kind::Simple,
                },
                b'p' => Kind::Pseudo,
                _ if category as u8 == b'A' && elem != 0 => {
                    Kind::Array(self.lookup(elem, depth + 1).await?)
                }
                _ => Kind::Simple,
            };
            let ty = Type::new(name, oid, kind, schema);
            self.shared.lock().types.insert(oid, ty.clone());
            Ok(ty)
        })
    }
}
