//! `#[derive(FromRow)]` for aiopg (being written).
#![forbid(unsafe_code)]
