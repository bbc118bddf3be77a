//! `mogrify`: parameters rendered as SQL literals (being written).
// TEMPORARY STUB (added by the lead so that aiopg-cursor compiles); the mogrify helper
// replaces this whole file.
#[allow(missing_docs)]
pub fn mogrify(
    _sql: &str,
    _params: &[&(dyn postgres_types::ToSql + Sync)],
    _standard_conforming_strings: bool,
) -> crate::Result<String> {
    Err(crate::Error::usage("mogrify is being written"))
}
